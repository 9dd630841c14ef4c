//! The operations-center application over the recording harness host: initialization
//! against a stand-in for Operations Center's API on its unix socket, and its lifecycle.

use incus_osd_application_common::testing::{call_lines, calls, error, host, stand_in, sync};
use incus_osd_harness::testserver::TestServer;
use incus_osd_harness::{argv, HarnessHost, Reply, UnitCall, UnitOp};
use incus_osd_plugin_application_operations_center::{self as oc, Seed, DAEMON};
use plugin_api::Host;
use serde_json::json;

const CERT: &str = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
const CERT_FP: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
const FIB_TRIE: &str = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 192.0.2.9\n        /32 host LOCAL\n";

fn oc_host() -> (HarnessHost, Host) {
    host("operations-center", &oc::PATHS)
}

fn stand_in_oc(hh: &HarnessHost) -> TestServer {
    let server = stand_in(hh, DAEMON.socket);
    for path in [
        "/1.0",
        "/1.0/system/settings",
        "/1.0/system/certificate",
        "/1.0/system/network",
        "/1.0/system/security",
        "/1.0/system/updates",
    ] {
        server.handle(path, sync(json!({})));
    }
    server
}

#[test]
fn a_full_seed_is_applied_settings_first_and_updates_last() {
    let (hh, host) = oc_host();
    hh.put_file("/proc/net/fib_trie", FIB_TRIE.as_bytes(), 0o444);
    let server = stand_in_oc(&hh);
    let seed: Seed = serde_json::from_value(json!({
        "trusted_client_certificates": [CERT],
        "preseed": {
            "system_settings": {"log_level": "debug"},
            "system_certificate": {"certificate": "C", "key": "K"},
            "system_security": {"oidc": {"issuer": "https://id"}},
            "system_updates": {"source": "https://images.example", "filter_expression": ""},
        }
    }))
    .unwrap();
    oc::initialize(&host, Some(&seed)).unwrap();
    assert_eq!(
        call_lines(&server),
        [
            "GET /1.0",
            "PUT /1.0/system/settings",
            "POST /1.0/system/certificate",
            "PUT /1.0/system/network",
            "PUT /1.0/system/security",
            "PUT /1.0/system/updates",
        ]
    );
    let c = calls(&server);
    assert_eq!(c[1].2, json!({"log_level": "debug"}));
    assert_eq!(
        c[3].2,
        json!({"operations_center_address": "https://192.0.2.9:8443",
               "rest_server_address": "[::]:8443"})
    );
    assert_eq!(
        c[4].2,
        json!({"oidc": {"issuer": "https://id"}, "trusted_tls_client_cert_fingerprints": [CERT_FP]})
    );
    assert_eq!(
        c[5].2,
        json!({"source": "https://images.example", "filter_expression": ""})
    );
}

#[test]
fn without_an_address_operations_center_points_at_itself_on_localhost() {
    let (hh, host) = oc_host();
    let server = stand_in_oc(&hh);
    // Empty settings are not sent.
    let seed: Seed = serde_json::from_value(json!({"preseed": {"system_settings": {}}})).unwrap();
    oc::initialize(&host, Some(&seed)).unwrap();
    assert_eq!(call_lines(&server), ["GET /1.0", "PUT /1.0/system/network"]);
    assert_eq!(
        calls(&server)[1].2,
        json!({"operations_center_address": "https://127.0.0.1:8443",
               "rest_server_address": "[::]:8443"})
    );
}

#[test]
fn a_daemon_error_stops_initialization_with_its_text() {
    let (hh, host) = oc_host();
    let server = stand_in_oc(&hh);
    server.handle("/1.0/system/security", error(500, "database is locked"));
    let seed = Seed {
        trusted_client_certificates: vec![CERT.into()],
        ..Seed::default()
    };
    let err = oc::initialize(&host, Some(&seed)).unwrap_err();
    assert_eq!(
        err.message,
        "Operations Center: PUT /1.0/system/security: database is locked"
    );
    assert!(!call_lines(&server).contains(&"PUT /1.0/system/updates".to_string()));
}

#[test]
fn its_lifecycle_uses_its_own_unit_dataset_and_binary() {
    let (hh, host) = oc_host();
    hh.on_command(&["zfs", "mount"], Reply::ok(""));
    DAEMON.restart(&host, true).unwrap();
    assert_eq!(
        hh.commands(),
        [argv(&["zfs", "mount", "local/operations-center"])]
    );
    assert_eq!(
        hh.unit_changes(),
        [UnitCall::new(UnitOp::Restart, "operations-center.service")]
    );
    hh.on_command(&["operations-centerd", "--version"], Reply::ok("0.3.0\n"));
    assert_eq!(DAEMON.friendly_version(&host).unwrap(), "0.3.0");
    server_address(&hh, &host);
}

fn server_address(hh: &HarnessHost, host: &Host) {
    let server = stand_in(hh, DAEMON.socket);
    server.handle(
        "/1.0/system/network",
        sync(json!({"rest_server_address": "[::]:8443"})),
    );
    assert_eq!(oc::listen_address(host).unwrap(), "[::]:8443");
}

#[test]
fn the_backup_spec_is_upstreams() {
    let spec = oc::backup_spec();
    assert_eq!(spec.root, "/var/lib/operations-center/");
    assert_eq!(spec.excluded_unless_complete, ["updates"]);
    assert_eq!(spec.units, ["operations-center.service"]);
    let paths: Vec<String> = oc::PATHS.iter().map(|p| p.to_string()).collect();
    spec.validate(&paths).unwrap();
}
