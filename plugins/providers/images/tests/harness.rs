//! The images provider as the daemon loads it, against the recording harness host (with
//! the host's real network client) and a local test server holding an index signed at
//! test time by the real openssl.

use incus_osd_harness::testserver::{Reply, TestServer};
use incus_osd_harness::{assert_conformance, built_plugin, control_character_cases, Harness};
use incus_osd_provider_common::testing::{gzip, sha256_hex, Pki};
use incus_osd_provider_common::trust::{ROOT_CA_PATH, UPDATE_CA_PATH};
use serde_json::{json, Value};

const LIB: &str = "incus_osd_plugin_provider_images";
const VER: &str = "202601010000";

fn context(channel: &str) -> Value {
    json!({"channel": channel, "architecture": "x86_64", "os_name": "IncusOS",
           "running_version": "202512010000"})
}

/// A server directory with an `os/` tree: the signed index and one release holding a
/// gzipped UKI and an application.
struct Site {
    pki: Pki,
    dir: tempfile::TempDir,
    server: TestServer,
}

const UKI: &[u8] = b"the new UKI";

impl Site {
    fn new() -> Site {
        let pki = Pki::new();
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join(format!("os/{VER}/x86_64"));
        std::fs::create_dir_all(&release).unwrap();
        let efi = gzip(UKI);
        std::fs::write(release.join(format!("IncusOS_{VER}.efi.gz")), &efi).unwrap();
        let index = json!({"format": "1.0", "updates": [{"format": "1.0",
            "channels": ["stable"], "version": VER, "severity": "none",
            "files": [{"architecture": "x86_64", "component": "os",
                       "filename": format!("x86_64/IncusOS_{VER}.efi.gz"),
                       "sha256": sha256_hex(&efi), "size": efi.len(), "type": "update-efi"}]}]});
        let site = Site {
            server: TestServer::http(dir.path()),
            pki,
            dir,
        };
        site.publish(index.to_string().as_bytes());
        site
    }

    fn publish(&self, index: &[u8]) {
        std::fs::write(self.dir.path().join("os/index.sjson"), self.pki.sign(index)).unwrap();
    }

    fn url(&self) -> String {
        self.server.url("/os")
    }

    /// How many times the index was asked for.
    fn index_requests(&self) -> usize {
        self.server
            .requests()
            .iter()
            .filter(|r| r.path == "/os/index.sjson")
            .count()
    }

    /// A plugin trusting this site's PKI, configured for the server.
    fn plugin(&self) -> Harness {
        let h = Harness::load_built(LIB);
        let host = h.host();
        host.put_file(ROOT_CA_PATH, self.pki.root_pem().as_bytes(), 0o644);
        host.put_file(UPDATE_CA_PATH, self.pki.update_ca_pem().as_bytes(), 0o644);
        host.on_command_real(&["bash"]);
        host.on_command_real(&["openssl"]);
        h.apply_config(&json!({"server_url": self.url()}));
        h
    }
}

fn lookup(h: &Harness, target: Value) -> Result<Value, incus_osd_harness::PluginError> {
    let input = json!({"context": context("stable"), "target": target});
    h.invoke("lookup", input.to_string().as_bytes())
        .map(|v| v["release"].clone())
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
    let pki = Pki::new();
    let config = json!({"server_url": "https://mirror.example.org/os",
                        "update_ca": pki.update_ca_pem(),
                        "authentication_by_query_param": "false"});
    h.apply_config(&config);
    assert_eq!(h.get().unwrap()["config"], config);

    h.assert_config_refused(
        &json!({"server_url": "mirror.example.org"}),
        "invalid server_url \"mirror.example.org\": it must start with https:// or http://",
    );
    h.assert_config_refused(
        &json!({"server_url": "https://x/os?a=b"}),
        "invalid server_url \"https://x/os?a=b\": it must not have a query or a fragment",
    );
    h.assert_config_refused(
        &json!({"update_ca": "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n"}),
        "invalid update_ca: a PEM certificate is not valid base64",
    );
    h.assert_config_refused(
        &json!({"authentication_by_query_param": "yes"}),
        "invalid authentication_by_query_param \"yes\": it must be \"true\" or \"false\"",
    );
    let fields = [
        (
            "/authentication_by_query_param",
            "authentication_by_query_param",
        ),
        ("/server_url", "server_url"),
        ("/update_ca", "update_ca"),
    ];
    for case in control_character_cases(&config, &fields, &["/update_ca"]) {
        h.assert_config_refused(&case.config, &case.message);
    }
    let err = h.put_config(&json!({"path": "/media/usb"})).unwrap_err();
    assert_eq!(err.status, 400);
    assert!(
        err.message.contains("unknown field `path`"),
        "{}",
        err.message
    );
    // A token is taken as it is (registration uses it).
    let with_token = json!({"token": "abc", "authentication_by_query_param": "true"});
    h.apply_config(&with_token);
    assert_eq!(h.get().unwrap()["config"], with_token);
}

#[test]
fn lookup_verifies_the_index_and_fetch_unpacks_the_checked_file() {
    let site = Site::new();
    let h = site.plugin();
    let release = lookup(&h, json!({"kind": "os"})).unwrap();
    assert_eq!(release["version"], VER);
    let index_req = &site.server.requests()[0];
    assert_eq!(index_req.path, "/os/index.sjson");
    assert_eq!(index_req.header("user-agent"), Some("IncusOS/202512010000"));

    let order = json!({"context": context("stable"), "target": {"kind": "os"},
                       "release": release, "target_dir": "/var/lib/updates"});
    let out = h.invoke("fetch", order.to_string().as_bytes()).unwrap();
    let target = format!("/var/lib/updates/IncusOS_{VER}.efi");
    assert_eq!(out["written"], json!([target]));
    assert_eq!(h.host().read_file(&target).unwrap(), UKI);
    let file_req = site.server.requests().pop().unwrap();
    assert_eq!(
        file_req.path,
        format!("/os/{VER}/x86_64/IncusOS_{VER}.efi.gz")
    );
    assert_eq!(file_req.header("user-agent"), Some("IncusOS/202512010000"));

    // A wrong SHA-256: refused, the target elsewhere never appears.
    let mut bad = order.clone();
    bad["release"]["files"][0]["sha256"] = json!("00".repeat(32));
    bad["target_dir"] = json!("/var/lib/incus-os-extensions/x");
    let err = h.invoke("fetch", bad.to_string().as_bytes()).unwrap_err();
    assert!(
        err.message
            .starts_with(&format!("while downloading {}/{VER}/", site.url())),
        "{}",
        err.message
    );
    assert!(h
        .host()
        .read_file(&format!("/var/lib/incus-os-extensions/x/IncusOS_{VER}.efi"))
        .is_none());
}

#[test]
fn the_index_is_cached_until_cleared_or_the_config_changes() {
    let site = Site::new();
    let h = site.plugin();
    lookup(&h, json!({"kind": "os"})).unwrap();
    assert_eq!(
        lookup(&h, json!({"kind": "application", "name": "incus"})).unwrap(),
        Value::Null
    );
    assert_eq!(site.index_requests(), 1, "the second lookup used the cache");
    h.invoke("clear-cache", b"").unwrap();
    lookup(&h, json!({"kind": "os"})).unwrap();
    assert_eq!(site.index_requests(), 2);
    // Another config (the same server with a trailing slash) starts afresh.
    h.apply_config(&json!({"server_url": format!("{}/", site.url())}));
    lookup(&h, json!({"kind": "os"})).unwrap();
    assert_eq!(site.index_requests(), 3);
}

#[test]
fn a_tampered_index_from_the_server_is_refused() {
    let site = Site::new();
    let signed =
        String::from_utf8(std::fs::read(site.dir.path().join("os/index.sjson")).unwrap()).unwrap();
    std::fs::write(
        site.dir.path().join("os/index.sjson"),
        signed.replace("\"stable\"", "\"stabla\""),
    )
    .unwrap();
    let h = site.plugin();
    let err = lookup(&h, json!({"kind": "os"})).unwrap_err();
    assert!(
        err.message
            .starts_with("the update index signature is not valid: "),
        "{}",
        err.message
    );
    // Nothing was cached: a good index is read on the next lookup.
    site.publish(br#"{"format":"1.0","updates":[]}"#);
    assert_eq!(lookup(&h, json!({"kind": "os"})).unwrap(), Value::Null);
}

#[test]
fn a_missing_index_is_tried_five_times() {
    let site = Site::new();
    site.server
        .handle("/os/index.sjson", Reply::new(404, "not here"));
    let h = site.plugin();
    let err = lookup(&h, json!({"kind": "os"})).unwrap_err();
    assert_eq!(
        err.message,
        format!(
            "cannot get {}/index.sjson: server failed to return expected file",
            site.url()
        )
    );
    assert_eq!(site.index_requests(), 5);
}

#[test]
fn registration_needs_a_token_and_deregistering_only_forgets() {
    let h = Harness::load_built(LIB);
    let err = h.invoke("register", b"").unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (500, "registration unsupported")
    );
    let err = h
        .invoke("refresh", br#"{"cause":"system-is-ready"}"#)
        .unwrap_err();
    assert_eq!(err.message, "registration unsupported");
    h.invoke("deregister", b"").unwrap();
    h.host().assert_untouched("deregister");
}
