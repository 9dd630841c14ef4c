//! Test helpers for the applications' tests: a harness host for a manifest's paths, and
//! stand-ins for the daemons' APIs (test servers on their unix sockets under the harness
//! root, answering the calls the plugins make with fixed Incus-style answers).

use incus_osd_harness::testserver::{Reply, TestServer};
use incus_osd_harness::HarnessHost;
use plugin_api::{Host, Kind, Manifest};
use serde_json::{json, Value};

/// A recording harness host whose writable paths are `paths`, and the SDK host over it.
pub fn host(name: &str, paths: &[&str]) -> (HarnessHost, Host) {
    let manifest = Manifest {
        name: name.into(),
        kind: Kind::Application,
        version: "1.0.0".into(),
        api_version: plugin_api::API_VERSION.into(),
        hooks: vec![],
        routes: vec![],
        dependencies: vec![],
        start_weight: 0,
        primary: false,
        paths: paths.iter().map(|p| p.to_string()).collect(),
        requires_application: None,
        variants: vec![],
        late_update_check: false,
        backup: None,
        debug_logs: vec![],
    };
    let hh = HarnessHost::new(&manifest).expect("harness host");
    let host = Host::from_handle(hh.handle());
    (hh, host)
}

/// A stand-in daemon API listening on `socket` (an OS path) under the harness root.
pub fn stand_in(hh: &HarnessHost, socket: &str) -> TestServer {
    let real = hh.real_path(socket);
    std::fs::create_dir_all(real.parent().expect("socket directory")).expect("socket directory");
    TestServer::builder().unix(&real).start()
}

/// A `sync` answer with `metadata`.
pub fn sync(metadata: Value) -> Reply {
    Reply::json(
        200,
        json!({"type": "sync", "status": "Success", "status_code": 200, "metadata": metadata})
            .to_string(),
    )
}

/// An `error` answer.
pub fn error(code: u16, text: &str) -> Reply {
    Reply::json(
        code,
        json!({"type": "error", "error": text, "error_code": code}).to_string(),
    )
}

/// The requests a stand-in received: `(method, path[?query], body as JSON or null)`; a
/// body that is not JSON (a file upload) is its text as a JSON string.
pub fn calls(server: &TestServer) -> Vec<(String, String, Value)> {
    server
        .requests()
        .into_iter()
        .map(|r| {
            let path = if r.query.is_empty() {
                r.path
            } else {
                format!("{}?{}", r.path, r.query)
            };
            let body = if r.body.is_empty() {
                Value::Null
            } else {
                // A file upload's raw body: its text.
                serde_json::from_slice(&r.body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.body).into()))
            };
            (r.method, path, body)
        })
        .collect()
}

/// `(method, path[?query])` of [`calls`].
pub fn call_lines(server: &TestServer) -> Vec<String> {
    calls(server)
        .into_iter()
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect()
}
