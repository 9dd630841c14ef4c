//! The operations-center provider as the daemon loads it, against the recording harness
//! host (with the host's real network client) and an Operations Center stand-in
//! ([`standin::OcStandIn`]) over HTTPS or over the local unix socket.

mod standin;

use incus_osd_harness::testserver::{ConnectProxy, Reply, TestServer};
use incus_osd_harness::{assert_conformance, built_plugin, control_character_cases, Harness};
use incus_osd_plugin_provider_operations_center::address::FIB_TRIE;
use incus_osd_plugin_provider_operations_center::{
    CLIENT_CERT_PATH, CLIENT_KEY_PATH, LOCAL_SOCKET, TRUSTED_CLIENT_CERT_PATH,
};
use incus_osd_provider_common::testing::gzip;
use serde_json::{json, Value};
use standin::{error, sync, File, OcStandIn, SELF, SELF_REGISTER, SERVERS, UPDATES, UUID};

const LIB: &str = "incus_osd_plugin_provider_operations_center";
const VER: &str = "202601010000";
const UKI: &[u8] = b"the new UKI";
const TOKEN: &str = "a-token/with&odd=chars";

/// The kernel's IPv4 trie of a machine whose address is 192.0.2.2.
const FIB: &str = "Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 127.0.0.0/8 2 0 2
           |-- 127.0.0.1
              /32 host LOCAL
     +-- 192.0.2.0/24 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
";

fn context() -> Value {
    json!({"channel": "stable", "architecture": "x86_64", "os_name": "IncusOS",
           "running_version": "202512010000", "machine_id": "0123456789abcdef",
           "hostname": "node1"})
}

fn registration(cause: &str) -> Vec<u8> {
    json!({"context": context(), "cause": cause})
        .to_string()
        .into_bytes()
}

/// The plugin on a machine with a management address.
fn plugin() -> Harness {
    let h = Harness::load_built(LIB);
    h.host().put_file(FIB_TRIE, FIB.as_bytes(), 0o444);
    h
}

/// The config for `oc`, its certificate pinned.
fn pinned(oc: &OcStandIn) -> Value {
    json!({"server_url": oc.url(), "server_token": TOKEN,
           "server_certificate": oc.server.cert_pem()})
}

fn publish_os(oc: &OcStandIn) -> Vec<u8> {
    let efi = gzip(UKI);
    oc.publish(
        VER,
        &["stable", "testing"],
        &[
            File {
                filename: &format!("x86_64/IncusOS_{VER}.efi.gz"),
                data: &efi,
                component: "os",
                kind: "update-efi",
                architecture: "x86_64",
            },
            File {
                filename: &format!("aarch64/IncusOS_{VER}.efi.gz"),
                data: b"other architecture",
                component: "os",
                kind: "update-efi",
                architecture: "aarch64",
            },
            File {
                filename: "x86_64/incus.raw.gz",
                data: b"incus",
                component: "incus",
                kind: "application",
                architecture: "x86_64",
            },
        ],
    );
    efi
}

fn lookup(h: &Harness, target: Value) -> Result<Value, incus_osd_harness::PluginError> {
    let input = json!({"context": context(), "target": target});
    h.invoke("lookup", input.to_string().as_bytes())
        .map(|v| v["release"].clone())
}

fn body(r: &incus_osd_harness::testserver::RecordedRequest) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

#[test]
fn passes_the_generic_checks() {
    let outcomes = assert_conformance(built_plugin(LIB));
    let skipped: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.skipped())
        .map(|o| o.name.as_str())
        .collect();
    assert_eq!(skipped, ["reset", "backup-restore"], "{outcomes:#?}");
}

#[test]
fn the_config_round_trips_and_bad_values_are_refused() {
    let h = Harness::load_built(LIB);
    assert_eq!(h.get().unwrap(), json!({"state": {}, "config": {}}));
    let oc = OcStandIn::https();
    let config = pinned(&oc);
    h.apply_config(&config);
    assert_eq!(h.get().unwrap()["config"], config);

    h.assert_config_refused(
        &json!({"server_url": "oc.example.org"}),
        "invalid server_url \"oc.example.org\": it must start with https:// or http://",
    );
    h.assert_config_refused(
        &json!({"server_certificate": "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n"}),
        "invalid server_certificate: a PEM certificate is not valid base64",
    );
    h.assert_config_refused(
        &json!({"server_certificate": "not a certificate"}),
        "invalid server_certificate: no PEM certificate found",
    );
    let fields = [
        ("/server_certificate", "server_certificate"),
        ("/server_token", "server_token"),
        ("/server_url", "server_url"),
    ];
    for case in control_character_cases(&config, &fields, &["/server_certificate"]) {
        h.assert_config_refused(&case.config, &case.message);
    }
    let err = h.put_config(&json!({"token": "abc"})).unwrap_err();
    assert_eq!(err.status, 400);
    assert!(
        err.message.contains("unknown field `token`"),
        "{}",
        err.message
    );
    assert_eq!(h.get().unwrap()["config"], config);
}

#[test]
fn without_the_local_server_the_url_and_token_are_required_when_used() {
    let h = plugin();
    // Saving an incomplete config is fine (upstream checks when it loads the provider)...
    h.apply_config(&json!({"server_token": TOKEN}));
    // ...using it is not.
    for (op, input) in [
        ("register", registration("")),
        ("refresh", registration("")),
        (
            "lookup",
            json!({"context": context(), "target": {"kind": "os"}})
                .to_string()
                .into_bytes(),
        ),
    ] {
        let err = h.invoke(op, &input).unwrap_err();
        assert_eq!(
            (err.status, err.message.as_str()),
            (500, "no operations center URL provided"),
            "{op}"
        );
    }
    h.apply_config(&json!({"server_url": "https://oc.example.org"}));
    let err = h.invoke("register", &registration("")).unwrap_err();
    assert_eq!(err.message, "no operations center token provided");
}

#[test]
fn registering_with_a_token_posts_the_machine_and_keeps_the_certificate() {
    let oc = OcStandIn::https_with_client_certificates();
    let (oc_cert, _) = oc.server.client_cert("operations-center");
    oc.server
        .handle(SERVERS, sync(json!({"certificate": oc_cert})));
    // The system proxy is never used for Operations Center.
    let proxy = ConnectProxy::start();
    std::env::set_var("https_proxy", proxy.url());
    let h = plugin();
    h.apply_config(&pinned(&oc));

    // Without the primary application's client certificate, the server refuses us.
    let err = h.invoke("register", &registration("")).unwrap_err();
    assert!(
        err.message
            .starts_with(&format!("POST {}{SERVERS}: ", oc.url())),
        "{}",
        err.message
    );
    assert!(
        !err.message.contains("odd"),
        "the token is not shown: {}",
        err.message
    );

    let (cert, key) = oc.server.client_cert("node1");
    h.host().put_file(CLIENT_CERT_PATH, cert.as_bytes(), 0o644);
    h.host().put_file(CLIENT_KEY_PATH, key.as_bytes(), 0o600);
    h.invoke("register", &registration("")).unwrap();
    let posts = oc.requests_to(SERVERS);
    assert_eq!(posts.len(), 1);
    let post = &posts[0];
    assert_eq!(post.method, "POST");
    assert_eq!(post.query, "token=a-token%2Fwith%26odd%3Dchars");
    assert_eq!(
        body(post),
        json!({"name": "node1", "connection_url": "https://192.0.2.2:8443"})
    );
    assert_eq!(post.header("content-type"), Some("application/json"));
    assert_eq!(
        h.host().read_text(TRUSTED_CLIENT_CERT_PATH),
        oc_cert,
        "the certificate Operations Center connects with is kept"
    );
    assert!(oc.requests_to(SELF_REGISTER).is_empty());
    assert!(proxy.connects().is_empty(), "{:?}", proxy.connects());
}

#[test]
fn without_a_management_address_registration_is_unsupported() {
    let oc = OcStandIn::https();
    let h = Harness::load_built(LIB);
    h.apply_config(&pinned(&oc));
    let err = h.invoke("register", &registration("")).unwrap_err();
    assert_eq!(err.message, "registration unsupported");
    assert!(oc.server.requests().is_empty());
}

#[test]
fn a_refresh_sends_the_cause_and_is_retried() {
    let oc = OcStandIn::https();
    let h = plugin();
    h.apply_config(&pinned(&oc));
    h.invoke("refresh", &registration("os-update-applied"))
        .unwrap();
    let puts = oc.requests_to(SELF);
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].method, "PUT");
    assert_eq!(
        body(&puts[0]),
        json!({"connection_url": "https://192.0.2.2:8443", "cause": "os-update-applied"})
    );

    oc.server.handle(SELF, error(503, "busy"));
    let err = h
        .invoke("refresh", &registration("network-config-changed"))
        .unwrap_err();
    assert_eq!(err.message, "error from operations center: busy");
    assert_eq!(oc.requests_to(SELF).len(), 1 + 5, "five attempts");
}

#[test]
fn deregistration_is_unsupported() {
    let oc = OcStandIn::https();
    let h = plugin();
    h.apply_config(&pinned(&oc));
    let err = h.invoke("deregister", &registration("")).unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (500, "deregistration unsupported")
    );
    assert!(oc.server.requests().is_empty());
    h.host().assert_untouched("deregister");
}

#[test]
fn lookup_finds_the_channels_update_and_fetch_checks_what_it_downloads() {
    let oc = OcStandIn::https();
    publish_os(&oc);
    let h = plugin();
    h.apply_config(&pinned(&oc));

    let release = lookup(&h, json!({"kind": "os"})).unwrap();
    assert_eq!(release["version"], VER);
    assert_eq!(release["severity"], "low");
    let names: Vec<&str> = release["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["filename"].as_str().unwrap())
        .collect();
    assert_eq!(names, [format!("x86_64/IncusOS_{VER}.efi.gz")]);
    let list = oc.requests_to(UPDATES);
    assert_eq!((list.len(), list[0].query.as_str()), (1, "recursion=1"));
    assert_eq!(oc.requests_to(&format!("{UPDATES}/{UUID}/files")).len(), 1);
    // Applications come from the same (cached) update.
    let incus = lookup(&h, json!({"kind": "application", "name": "incus"})).unwrap();
    assert_eq!(incus["files"][0]["filename"], "x86_64/incus.raw.gz");
    assert_eq!(
        lookup(&h, json!({"kind": "secure-boot"})).unwrap(),
        Value::Null
    );
    assert_eq!(oc.requests_to(UPDATES).len(), 1, "cached");

    let order = json!({"context": context(), "target": {"kind": "os"},
                       "release": release, "target_dir": "/var/lib/updates"});
    let out = h.invoke("fetch", order.to_string().as_bytes()).unwrap();
    let target = format!("/var/lib/updates/IncusOS_{VER}.efi");
    assert_eq!(out["written"], json!([target]));
    assert_eq!(h.host().read_file(&target).unwrap(), UKI);
    let download = oc.server.requests().pop().unwrap();
    assert_eq!(
        download.path,
        format!("{UPDATES}/{UUID}/files/x86_64/IncusOS_{VER}.efi.gz")
    );

    // A wrong SHA-256: refused, nothing written.
    let mut bad = order.clone();
    bad["release"]["files"][0]["sha256"] = json!("00".repeat(32));
    bad["target_dir"] = json!("/var/lib/incus-os-extensions/x");
    let err = h.invoke("fetch", bad.to_string().as_bytes()).unwrap_err();
    assert!(
        err.message.starts_with(&format!(
            "while downloading {}{UPDATES}/{UUID}/files/",
            oc.url()
        )),
        "{}",
        err.message
    );
    assert!(h
        .host()
        .read_file(&format!("/var/lib/incus-os-extensions/x/IncusOS_{VER}.efi"))
        .is_none());

    // Clearing the cache asks again.
    h.invoke("clear-cache", b"").unwrap();
    lookup(&h, json!({"kind": "os"})).unwrap();
    assert_eq!(oc.requests_to(UPDATES).len(), 2);
}

#[test]
fn nothing_on_the_channel_is_no_update() {
    let oc = OcStandIn::https();
    publish_os(&oc);
    let h = plugin();
    h.apply_config(&pinned(&oc));
    let input = json!({"context": {"channel": "lts", "architecture": "x86_64"},
                       "target": {"kind": "os"}});
    let out = h.invoke("lookup", input.to_string().as_bytes()).unwrap();
    assert_eq!(out, json!({"release": null}));
    assert!(
        oc.requests_to(&format!("{UPDATES}/{UUID}/files"))
            .is_empty(),
        "no file list of an update not chosen"
    );
}

#[test]
fn a_pin_the_server_no_longer_matches_is_dropped_once_the_public_cas_trust_it() {
    let oc = OcStandIn::https();
    publish_os(&oc);
    let h = plugin();
    let mut config = pinned(&oc);
    config["server_certificate"] = json!(OcStandIn::https().server.cert_pem());
    h.apply_config(&config);

    // The public CAs do not trust the stand-in either: an error, and the pin is kept.
    let err = lookup(&h, json!({"kind": "os"})).unwrap_err();
    assert!(
        err.message.starts_with(&format!(
            "without the pinned certificate (server_certificate): GET {}{UPDATES}: ",
            oc.url()
        )),
        "{}",
        err.message
    );
    assert_eq!(h.get().unwrap()["config"], config);

    // Once the server's certificate is publicly trusted, the lookup works and the pin
    // is gone from the saved config.
    h.host().trust_as_public_ca(&oc.server.ca_pem());
    let release = lookup(&h, json!({"kind": "os"})).unwrap();
    assert_eq!(release["version"], VER);
    let mut without = config.clone();
    without
        .as_object_mut()
        .unwrap()
        .remove("server_certificate");
    assert_eq!(h.get().unwrap()["config"], without);
    assert!(
        h.host()
            .warnings()
            .iter()
            .any(|w| w.contains("server_certificate was removed")),
        "{:?}",
        h.host().warnings()
    );
    // The next call needs no second try.
    let before = oc.server.requests().len();
    h.invoke("clear-cache", b"").unwrap();
    lookup(&h, json!({"kind": "os"})).unwrap();
    assert_eq!(oc.server.requests().len(), before + 2);
}

#[test]
fn a_server_speaking_older_tls_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let old = TestServer::builder().dir(dir.path()).tls12_only().start();
    let h = plugin();
    h.apply_config(&json!({"server_url": old.url(""), "server_token": TOKEN,
                           "server_certificate": old.cert_pem()}));
    let err = lookup(&h, json!({"kind": "os"})).unwrap_err();
    assert!(err.message.contains("TLS handshake"), "{}", err.message);
    assert!(old.requests().is_empty());
}

#[test]
fn answers_that_are_not_sync_are_refused() {
    let oc = OcStandIn::https();
    let h = plugin();
    h.apply_config(&pinned(&oc));
    for (reply, message) in [
        (
            Reply::json(200, r#"{"type":"async","status_code":100,"metadata":{}}"#),
            "bad response from operations center: type \"async\" with status code 100",
        ),
        (
            Reply::new(200, "<html>hello</html>"),
            "bad response from operations center: HTTP 200 without an Incus-style JSON body",
        ),
        (
            error(403, "not authorized"),
            "error from operations center: not authorized",
        ),
        (
            sync(json!({"not": "a list"})),
            "bad response from operations center: the update list: ",
        ),
    ] {
        oc.server.handle(UPDATES, reply);
        let err = lookup(&h, json!({"kind": "os"})).unwrap_err();
        assert_eq!(err.status, 500);
        assert!(err.message.starts_with(message), "{}", err.message);
    }
    // An update whose identifier would leave its URL.
    oc.server.handle(
        UPDATES,
        sync(json!([{"uuid": "../../servers", "version": VER, "channels": ["stable"]}])),
    );
    let err = lookup(&h, json!({"kind": "os"})).unwrap_err();
    assert_eq!(
        err.message,
        "bad response from operations center: refusing the update identifier \"../../servers\""
    );
}

#[test]
fn the_local_operations_center_is_reached_over_its_socket_with_no_config() {
    let h = plugin();
    let oc = OcStandIn::unix(&h.host().real_path(LOCAL_SOCKET));
    publish_os(&oc);
    assert_eq!(h.get().unwrap()["config"], json!({}));

    h.invoke("register", &registration("")).unwrap();
    let posts = oc.requests_to(SELF_REGISTER);
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].method, "POST");
    assert_eq!(
        body(&posts[0]),
        json!({"name": "node1", "connection_url": "https://192.0.2.2:8443"})
    );
    assert!(h.host().read_file(TRUSTED_CLIENT_CERT_PATH).is_none());

    h.invoke("refresh", &registration("system-is-ready"))
        .unwrap();
    assert_eq!(body(&oc.requests_to(SELF)[0])["cause"], "system-is-ready");

    let release = lookup(&h, json!({"kind": "os"})).unwrap();
    let order = json!({"context": context(), "target": {"kind": "os"},
                       "release": release, "target_dir": "/var/lib/updates"});
    h.invoke("fetch", order.to_string().as_bytes()).unwrap();
    assert_eq!(
        h.host()
            .read_file(&format!("/var/lib/updates/IncusOS_{VER}.efi"))
            .unwrap(),
        UKI
    );
}

#[test]
fn the_hosts_management_addresses_come_before_the_first_global_one() {
    let oc = OcStandIn::https();
    let h = plugin();
    h.apply_config(&pinned(&oc));
    let mut ctx = context();
    ctx["management_addresses"] = json!(["2001:db8::7", "198.51.100.7"]);
    let reg = json!({"context": ctx, "cause": ""})
        .to_string()
        .into_bytes();
    h.invoke("refresh", &reg).unwrap();
    // The host's first (it lists IPv4 first; an IPv6 one is bracketed).
    assert_eq!(
        body(&oc.requests_to(SELF)[0])["connection_url"],
        "https://[2001:db8::7]:8443"
    );
    // A machine with a management address but none in the context (an older host): the
    // first global address, as before.
    h.invoke("refresh", &registration("")).unwrap();
    assert_eq!(
        body(&oc.requests_to(SELF)[1])["connection_url"],
        "https://192.0.2.2:8443"
    );
}
