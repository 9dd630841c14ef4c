//! The migration-manager application over the recording harness host: its lifecycle as
//! the commands and unit operations it causes, and initialization against a stand-in for
//! Migration Manager's API on its unix socket.

use incus_osd_application_common::testing::{call_lines, calls, error, host, stand_in, sync};
use incus_osd_harness::testserver::TestServer;
use incus_osd_harness::{argv, Event, HarnessHost, Reply, UnitCall, UnitOp};
use incus_osd_plugin_application_migration_manager::{self as mm, Seed, DAEMON};
use plugin_api::Host;
use serde_json::json;

/// A PEM block whose DER is the bytes of "hello" (SHA-256 below).
const CERT: &str = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
const CERT_FP: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
const FIB_TRIE: &str = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 192.0.2.2\n        /32 host LOCAL\n";

fn mm_host() -> (HarnessHost, Host) {
    host("migration-manager", &mm::PATHS)
}

/// A stand-in for Migration Manager's API accepting every call initialization makes.
fn stand_in_mm(hh: &HarnessHost) -> TestServer {
    let server = stand_in(hh, DAEMON.socket);
    for path in [
        "/1.0",
        "/1.0/system/certificate",
        "/1.0/system/network",
        "/1.0/system/security",
    ] {
        server.handle(path, sync(json!({})));
    }
    server
}

#[test]
fn a_seeded_initialization_sets_certificate_network_and_trusted_fingerprints_in_order() {
    let (hh, host) = mm_host();
    hh.put_file("/proc/net/fib_trie", FIB_TRIE.as_bytes(), 0o444);
    let server = stand_in_mm(&hh);
    let seed: Seed = serde_json::from_value(json!({
        "trusted_client_certificates": [CERT],
        "apply_defaults": true,
        "preseed": {
            "system_certificate": {"certificate": "C", "key": "K"},
            "system_security": {"trusted_tls_client_cert_fingerprints": ["abc"],
                                "oidc": {"issuer": "https://id"}},
        }
    }))
    .unwrap();
    mm::initialize(&host, Some(&seed)).unwrap();
    assert_eq!(
        call_lines(&server),
        [
            "GET /1.0",
            "POST /1.0/system/certificate",
            "PUT /1.0/system/network",
            "PUT /1.0/system/security",
        ]
    );
    let c = calls(&server);
    assert_eq!(c[1].2, json!({"certificate": "C", "key": "K"}));
    assert_eq!(
        c[2].2,
        json!({"address": "[::]:8443", "worker_endpoint": "https://192.0.2.2:8443"})
    );
    assert_eq!(
        c[3].2,
        json!({"trusted_tls_client_cert_fingerprints": ["abc", CERT_FP],
               "oidc": {"issuer": "https://id"}})
    );
    assert_eq!(mm::seeded_client_certificates(Some(&seed)), [CERT]);
}

#[test]
fn without_a_seed_only_the_network_defaults_are_applied() {
    let (hh, host) = mm_host();
    let server = stand_in_mm(&hh);
    mm::initialize(&host, None).unwrap();
    assert_eq!(call_lines(&server), ["GET /1.0", "PUT /1.0/system/network"]);
    // No management address yet: no worker endpoint is made up.
    assert_eq!(calls(&server)[1].2, json!({"address": "[::]:8443"}));
}

#[test]
fn seeded_network_settings_win_over_the_defaults() {
    let (hh, host) = mm_host();
    hh.put_file("/proc/net/fib_trie", FIB_TRIE.as_bytes(), 0o444);
    let server = stand_in_mm(&hh);
    let seed: Seed = serde_json::from_value(json!({
        "preseed": {"system_network": {"address": "10.0.0.5:9443",
                                       "worker_endpoint": "https://mm.example:9443"}}
    }))
    .unwrap();
    mm::initialize(&host, Some(&seed)).unwrap();
    assert_eq!(
        calls(&server)[1].2,
        json!({"address": "10.0.0.5:9443", "worker_endpoint": "https://mm.example:9443"})
    );
}

#[test]
fn a_daemon_error_stops_initialization_with_its_text() {
    let (hh, host) = mm_host();
    let server = stand_in_mm(&hh);
    server.handle("/1.0/system/network", error(400, "Failed to parse address"));
    let seed = Seed {
        trusted_client_certificates: vec![CERT.into()],
        ..Seed::default()
    };
    let err = mm::initialize(&host, Some(&seed)).unwrap_err();
    assert_eq!(
        err.message,
        "Migration Manager: PUT /1.0/system/network: Failed to parse address"
    );
    assert_eq!(call_lines(&server), ["GET /1.0", "PUT /1.0/system/network"]);
}

#[test]
fn a_seeded_certificate_that_does_not_parse_is_refused_before_any_call() {
    let (hh, host) = mm_host();
    let server = stand_in_mm(&hh);
    let seed = Seed {
        trusted_client_certificates: vec![CERT.into(), "not a certificate".into()],
        ..Seed::default()
    };
    let err = mm::initialize(&host, Some(&seed)).unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (400, "no PEM certificate found (seed index 1)")
    );
    assert!(server.requests().is_empty());
}

#[test]
fn a_trusted_certificate_joins_the_fingerprints_once() {
    let (hh, host) = mm_host();
    let server = stand_in_mm(&hh);
    server.handle(
        "/1.0/system/security",
        sync(json!({"trusted_tls_client_cert_fingerprints": ["abc"], "oidc": {}})),
    );
    DAEMON.add_trusted_certificate(&host, CERT).unwrap();
    assert_eq!(
        call_lines(&server),
        ["GET /1.0/system/security", "PUT /1.0/system/security"]
    );
    assert_eq!(
        calls(&server)[1].2,
        json!({"trusted_tls_client_cert_fingerprints": ["abc", CERT_FP], "oidc": {}})
    );
    // Already trusted: nothing is written.
    server.handle(
        "/1.0/system/security",
        sync(json!({"trusted_tls_client_cert_fingerprints": [CERT_FP]})),
    );
    DAEMON.add_trusted_certificate(&host, CERT).unwrap();
    assert_eq!(call_lines(&server).len(), 3);
    server.handle("/1.0/system/network", sync(json!({"address": "[::]:8443"})));
    assert_eq!(mm::listen_address(&host).unwrap(), "[::]:8443");
}

#[test]
fn the_first_start_creates_its_dataset_then_starts_the_unit() {
    let (hh, host) = mm_host();
    hh.on_command(&["zfs", "list"], Reply::fail(1, "dataset does not exist"));
    hh.on_command(&["zfs", "create"], Reply::ok(""));
    DAEMON.start(&host, false).unwrap();
    assert_eq!(
        hh.events(),
        [
            Event::Command(argv(&[
                "zfs",
                "list",
                "-H",
                "-o",
                "name",
                "local/migration-manager"
            ])),
            Event::Command(argv(&[
                "zfs",
                "create",
                "-o",
                "mountpoint=/var/lib/migration-manager/",
                "-o",
                "incusos:use=migration-manager",
                "local/migration-manager"
            ])),
            Event::Unit(UnitCall::new(UnitOp::Start, "migration-manager.service")),
        ]
    );
    hh.clear_effects();
    DAEMON.stop(&host).unwrap();
    assert_eq!(
        hh.unit_changes(),
        [UnitCall::new(UnitOp::Stop, "migration-manager.service")]
    );
}

#[test]
fn a_wipe_destroys_and_recreates_the_dataset() {
    let (hh, host) = mm_host();
    hh.put_file("/var/lib/migration-manager/db.sqlite", b"x", 0o600);
    hh.on_command(&["umount"], Reply::ok(""));
    hh.on_command(&["zfs"], Reply::ok(""));
    DAEMON.wipe(&host).unwrap();
    let cmds: Vec<Vec<String>> = hh.commands();
    assert_eq!(cmds[0], argv(&["umount", "/var/lib/migration-manager/"]));
    assert_eq!(
        cmds[1],
        argv(&["zfs", "destroy", "local/migration-manager"])
    );
    assert_eq!(cmds[2][..2], argv(&["zfs", "create"]));
    assert!(!hh
        .real_path("/var/lib/migration-manager/db.sqlite")
        .exists());
}

#[test]
fn the_friendly_version_is_the_daemons_and_the_backup_spec_is_upstreams() {
    let (hh, host) = mm_host();
    hh.on_command(&["migration-managerd", "--version"], Reply::ok("0.9.1\n"));
    assert_eq!(DAEMON.friendly_version(&host).unwrap(), "0.9.1");
    let spec = mm::backup_spec();
    assert_eq!(spec.root, "/var/lib/migration-manager/");
    assert_eq!(spec.excluded_unless_complete, ["artifacts"]);
    assert_eq!(spec.units, ["migration-manager.service"]);
    let paths: Vec<String> = mm::PATHS.iter().map(|p| p.to_string()).collect();
    spec.validate(&paths).unwrap();
    let unknown = serde_json::from_value::<Seed>(json!({"preseed": {"system_update": {}}}));
    assert!(unknown.is_err());
}
