//! The `operations-center` provider plugin as built, selected on the daemon against an
//! Operations Center stand-in (the harness's test server answering the registration
//! endpoint with a fixed Incus-style reply): it registers, and, as upstream, it cannot be
//! left for another provider.

use incus_osd_harness::testserver::{Reply, TestServer};
use incus_osd_integration::{built_plugin, get_ok, request, Daemon, Root};
use serde_json::{json, Value};

/// The kernel's IPv4 trie of a machine whose address is 192.0.2.2 (read under the root).
const FIB: &str = "Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 192.0.2.0/24 2 0 2
           |-- 192.0.2.2
              /32 host LOCAL
";

/// The stand-in: only `POST /1.0/provisioning/servers`, which the registration calls.
fn standin() -> TestServer {
    let oc = TestServer::builder().tls13_only().start();
    let answer = json!({"type": "sync", "status": "Success", "status_code": 200,
                        "operation": "", "error_code": 0, "error": "",
                        "metadata": {"certificate": ""}});
    oc.handle(
        "/1.0/provisioning/servers",
        Reply::json(200, answer.to_string()),
    );
    oc
}

fn root() -> Root {
    let root = Root::new();
    root.install_plugin(
        &built_plugin("incus_osd_plugin_provider_images"),
        "provider_images",
    );
    root.install_plugin(
        &built_plugin("incus_osd_plugin_provider_operations_center"),
        "provider_operations_center",
    );
    let fib = root.path().join("proc/net/fib_trie");
    std::fs::create_dir_all(fib.parent().unwrap()).unwrap();
    std::fs::write(fib, FIB).unwrap();
    root
}

async fn put(d: &Daemon, body: Value) -> (u16, Value) {
    request(&d.socket, "PUT", "/1.0/system/provider", &body.to_string()).await
}

#[tokio::test]
async fn selecting_operations_center_registers_and_it_cannot_be_left() {
    let oc = standin();
    let root = root();
    let d = Daemon::start(&root, &[]);
    // The server's own certificate, pinned: the daemon needs no public CA for it.
    let config = json!({"server_url": oc.url(""), "server_token": "t0ken",
                        "server_certificate": oc.cert_pem()});
    let (s, v) = put(
        &d,
        json!({"config": {"name": "operations-center", "config": config}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let selected = get_ok(&d.socket, "/1.0/system/provider").await;
    assert_eq!(
        selected,
        json!({"config": {"name": "operations-center", "config": config},
               "state": {"registered": true}})
    );
    let posts: Vec<_> = oc
        .requests()
        .into_iter()
        .filter(|r| r.path == "/1.0/provisioning/servers")
        .collect();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].query, "token=t0ken");
    let body: Value = serde_json::from_slice(&posts[0].body).unwrap();
    assert_eq!(body["connection_url"], "https://192.0.2.2:8443");
    assert!(!body["name"].as_str().unwrap().is_empty(), "{body}");

    // Upstream's answer when switching away, and nothing changes.
    let (s, v) = put(&d, json!({"config": {"name": "images"}})).await;
    assert_eq!(
        (s, v["error"].as_str().unwrap()),
        (500, "deregistration unsupported")
    );
    assert_eq!(get_ok(&d.socket, "/1.0/system/provider").await, selected);
    assert_eq!(oc.requests().len(), 1, "the server was not called again");
}
