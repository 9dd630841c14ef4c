//! The linstor plugin as the daemon loads it, against the recording harness host.

use incus_osd_harness::{
    argv, assert_conformance, built_plugin, control_character_cases, FileEffect, Harness, Reply,
    UnitCall, UnitOp,
};
use serde_json::{json, Value};

const SATELLITE: &str = "linstor-satellite.service";

/// A throw-away P-256 test key and its self-signed certificate (CN=server01), and the
/// controller's certificate (CN=linstor-controller), as `openssl req -x509` writes them.
const SERVER_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg1xAoz25ypKsGPSVa
xLPTmFGKpHbCN7z5VknLgWlsBt+hRANCAAR64rO7+XGthHFQa6XGXYES033tXsOA
f2Lm+awYnmEPRmRvAwGNmAbGMEYiBs08eKvWtj4LVS3zwRoiVCPvlpoZ
-----END PRIVATE KEY-----
";
const SERVER_CRT: &str = "-----BEGIN CERTIFICATE-----
MIIBezCCASGgAwIBAgIUbhMkAWUADeCYfFnjLQm1OaJPpOswCgYIKoZIzj0EAwIw
EzERMA8GA1UEAwwIc2VydmVyMDEwHhcNMjYxMTI3MTMzNDQ1WhcNMzYxMTI0MTMz
NDQ1WjATMREwDwYDVQQDDAhzZXJ2ZXIwMTBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABHris7v5ca2EcVBrpcZdgRLTfe1ew4B/Yub5rBieYQ9GZG8DAY2YBsYwRiIG
zTx4q9a2PgtVLfPBGiJUI++WmhmjUzBRMB0GA1UdDgQWBBScnVHNtUpZLoy4jrQm
WU2dZ9D56DAfBgNVHSMEGDAWgBScnVHNtUpZLoy4jrQmWU2dZ9D56DAPBgNVHRMB
Af8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIQDSnPMKzR2nkCNpeV+j+LHiNchQ
BBKFSgceKbA/pFigygIgHbqmogrT9LGemPyUW2svQNDB9sedbqMr8rX5jIVhfEk=
-----END CERTIFICATE-----
";
const CONTROLLER_CRT: &str = "-----BEGIN CERTIFICATE-----
MIIBjjCCATWgAwIBAgIUBZ8tA2JfELOaZFrkw4Fbe6QQnNYwCgYIKoZIzj0EAwIw
HTEbMBkGA1UEAwwSbGluc3Rvci1jb250cm9sbGVyMB4XDTI2MTEyNzEzMzQ0NVoX
DTM2MTEyNDEzMzQ0NVowHTEbMBkGA1UEAwwSbGluc3Rvci1jb250cm9sbGVyMFkw
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE3XGtYqxRQ1+zSmFlyKNYundB48p29EvR
owCJK8p2vbKNlPdeHLayMnT+FNRkMfbAZ65FbqLnPXdAyOHMdn76OqNTMFEwHQYD
VR0OBBYEFMl4iYixhSI9EVhlU+yz1zz4+YKnMB8GA1UdIwQYMBaAFMl4iYixhSI9
EVhlU+yz1zz4+YKnMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIg
YDd9OsbsHRzZUe0x81gvczVQ5QzUSMzblxFLaTle8yACIDjVrmHp703wAhmvdKAd
UIsHjbMSQ+DNmrqC+sI3rVdZ
-----END CERTIFICATE-----
";
/// `openssl ecparam -genkey` output: parameters, then a SEC1 key.
const EC_KEY_WITH_PARAMS: &str = "-----BEGIN EC PARAMETERS-----
BggqhkjOPQMBBw==
-----END EC PARAMETERS-----
-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIJTQN61mP6SnJd/tioJWbNiECQuam7A+9/goOVAw3XLuoAoGCCqGSM49
AwEHoUQDQgAEbf4qh/QxXD+RQqOw53jcR/jqmyUu5DxhEcLZkZ00eMUdKqTFYF7o
V1p5Nwd0RKjyMQMiIOQwgHYyEgW9N7usYw==
-----END EC PRIVATE KEY-----
";
/// The distinctive middle of the keys, to look for in logs and messages.
const KEY_MARKERS: [&str; 2] = [
    "xLPTmFGKpHbCN7z5VknLgWlsBt+hRANCAAR64rO7",
    "MHcCAQEEIJTQN61mP6SnJd",
];

const PLAIN_TOML: &str = r#"[netcom]
  type = "plain"
  bind_address = "[::]"
  port = 3366
"#;

const TLS_TOML: &str = r#"[netcom]
  type = "ssl"
  bind_address = "[::]"
  port = 3367

  server_certificate="/etc/linstor/server.jks"
  trusted_certificates="/etc/linstor/trusted.jks"
  key_password="linstor"
  keystore_password="linstor"
  truststore_password="linstor"
  ssl_protocol="TLSv1.3"
"#;

const LIB: &str = "incus_osd_plugin_linstor";

/// A plugin whose host answers openssl and keytool successfully.
fn scripted() -> Harness {
    let h = Harness::load_built(LIB);
    h.host().on_command(&["openssl", "pkcs12"], Reply::ok(""));
    h.host().on_command(
        &["keytool", "-importkeystore"],
        Reply::ok("Importing keystore /etc/linstor/server.p12 to /etc/linstor/server.jks...\nEntry for alias certificate successfully imported.\nImport command completed:  1 entries successfully imported, 0 entries failed or cancelled\n"),
    );
    h.host().on_command(
        &["keytool", "-keystore"],
        Reply::ok("Certificate was added to keystore\n"),
    );
    h
}

fn plain(enabled: bool, listen_address: &str) -> Value {
    json!({"enabled": enabled, "listen_address": listen_address})
}

fn tls(enabled: bool) -> Value {
    json!({
        "enabled": enabled,
        "listen_address": "",
        "tls_server_certificate": SERVER_CRT,
        "tls_server_key": SERVER_KEY,
        "tls_trusted_certificates": [CONTROLLER_CRT, SERVER_CRT],
    })
}

fn keystore_commands() -> Vec<Vec<String>> {
    vec![
        argv(&[
            "openssl",
            "pkcs12",
            "-export",
            "-in",
            "/etc/linstor/server.crt",
            "-inkey",
            "/etc/linstor/server.key",
            "-out",
            "/etc/linstor/server.p12",
            "-name",
            "certificate",
            "-password",
            "pass:linstor",
        ]),
        argv(&[
            "keytool",
            "-importkeystore",
            "-srckeystore",
            "/etc/linstor/server.p12",
            "-srcstoretype",
            "pkcs12",
            "-destkeystore",
            "/etc/linstor/server.jks",
            "-srcstorepass",
            "linstor",
            "-deststorepass",
            "linstor",
        ]),
        argv(&[
            "keytool",
            "-keystore",
            "/etc/linstor/trusted.jks",
            "-importcert",
            "-file",
            "/etc/linstor/trusted.crt",
            "-alias",
            "trusted",
            "-deststorepass",
            "linstor",
            "-noprompt",
        ]),
    ]
}

fn unit(op: UnitOp) -> UnitCall {
    UnitCall::new(op, SATELLITE)
}

fn dir_entries(h: &Harness, os_path: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(h.host().real_path(os_path))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn generic_checks_pass() {
    assert_conformance(built_plugin(LIB));
}

#[test]
fn fresh_get_is_exactly_the_default() {
    let h = Harness::load_built(LIB);
    assert_eq!(
        h.get_raw().unwrap(),
        r#"{"state":{},"config":{"enabled":false,"listen_address":""}}"#
    );
    assert!(h.host().commands().is_empty());
    assert!(h.host().units().is_empty());
}

#[test]
fn enabling_in_plain_mode_writes_the_config_and_starts_the_satellite() {
    let h = Harness::load_built(LIB);
    let cfg = plain(true, "");
    h.put_config(&cfg).unwrap();

    let host = h.host();
    // Nothing to clear on a fresh system: no remove of the absent /etc/linstor is issued.
    assert_eq!(
        host.file_effects(),
        [
            FileEffect::dir_created("/etc/linstor", 0o700),
            FileEffect::written("/etc/linstor/linstor_satellite.toml", 0o600),
            FileEffect::dir_created("/etc/drbd.d", 0o755),
            FileEffect::written("/etc/drbd.conf", 0o644),
        ]
    );
    assert_eq!(
        h.host().read_text("/etc/linstor/linstor_satellite.toml"),
        PLAIN_TOML
    );
    assert_eq!(h.host().mode("/etc/linstor"), 0o700);
    assert_eq!(h.host().mode("/etc/linstor/linstor_satellite.toml"), 0o600);
    assert_eq!(
        h.host().read_text("/etc/drbd.conf"),
        "include \"drbd.d/*.res\";\n"
    );
    assert_eq!(h.host().mode("/etc/drbd.conf"), 0o644);
    assert_eq!(h.host().mode("/etc/drbd.d"), 0o755);
    assert!(host.commands().is_empty());
    assert_eq!(
        host.units(),
        [unit(UnitOp::ActiveState), unit(UnitOp::Start)]
    );
    assert_eq!(host.unit_state(SATELLITE), "active");
    assert_eq!(host.state(), json!({ "config": cfg }));
    assert_eq!(host.save_count(), 1);
    assert_eq!(
        h.get_raw().unwrap(),
        r#"{"state":{},"config":{"enabled":true,"listen_address":""}}"#
    );
}

#[test]
fn enabling_with_tls_writes_the_pem_files_and_builds_the_keystores() {
    let h = scripted();
    let cfg = tls(true);
    h.put_config(&cfg).unwrap();

    let host = h.host();
    assert_eq!(
        host.file_effects(),
        [
            FileEffect::dir_created("/etc/linstor", 0o700),
            FileEffect::written("/etc/linstor/linstor_satellite.toml", 0o600),
            FileEffect::written("/etc/linstor/server.crt", 0o600),
            FileEffect::written("/etc/linstor/server.key", 0o600),
            FileEffect::written("/etc/linstor/trusted.crt", 0o600),
            FileEffect::dir_created("/etc/drbd.d", 0o755),
            FileEffect::written("/etc/drbd.conf", 0o644),
        ]
    );
    assert_eq!(
        h.host().read_text("/etc/linstor/linstor_satellite.toml"),
        TLS_TOML
    );
    assert_eq!(h.host().read_text("/etc/linstor/server.crt"), SERVER_CRT);
    assert_eq!(h.host().read_text("/etc/linstor/server.key"), SERVER_KEY);
    assert_eq!(
        h.host().read_text("/etc/linstor/trusted.crt"),
        format!("{CONTROLLER_CRT}\n{SERVER_CRT}")
    );
    for f in ["server.crt", "server.key", "trusted.crt"] {
        assert_eq!(h.host().mode(&format!("/etc/linstor/{f}")), 0o600, "{f}");
    }
    assert_eq!(host.commands(), keystore_commands());
    // The key is only ever passed as a file.
    for call in host.command_calls() {
        assert!(call.stdin.is_empty());
        assert!(!call.argv.concat().contains(KEY_MARKERS[0]));
    }
    assert_eq!(
        host.units(),
        [unit(UnitOp::ActiveState), unit(UnitOp::Start)]
    );
    assert_eq!(host.state(), json!({ "config": cfg }));
    assert_eq!(h.get().unwrap()["config"], cfg);
    h.host().assert_not_logged(&KEY_MARKERS);
}

#[test]
fn the_listen_address_sets_bind_address_and_port() {
    for (address, tls_mode, toml_head) in [
        (
            "10.0.0.10:3366",
            false,
            "[netcom]\n  type = \"plain\"\n  bind_address = \"10.0.0.10\"\n  port = 3366\n",
        ),
        (
            "[fd00::10]:7000",
            true,
            "[netcom]\n  type = \"ssl\"\n  bind_address = \"fd00::10\"\n  port = 7000\n",
        ),
        (
            "[::]:3370",
            false,
            "[netcom]\n  type = \"plain\"\n  bind_address = \"::\"\n  port = 3370\n",
        ),
    ] {
        let h = scripted();
        let mut cfg = if tls_mode { tls(true) } else { plain(true, "") };
        cfg["listen_address"] = json!(address);
        h.put_config(&cfg).unwrap();
        let toml = h.host().read_text("/etc/linstor/linstor_satellite.toml");
        assert!(toml.starts_with(toml_head), "{address}: {toml}");
        assert_eq!(toml.contains("ssl_protocol"), tls_mode, "{address}");
    }
}

#[test]
fn an_existing_drbd_d_is_kept_and_etc_linstor_is_recreated() {
    let h = Harness::load_built(LIB);
    let host = h.host();
    host.put_file("/etc/drbd.d/r0.res", b"resource r0 {}\n", 0o644);
    host.put_file("/etc/linstor/stale.toml", b"old\n", 0o600);
    h.put_config(&plain(true, "")).unwrap();
    assert!(!host
        .file_effects()
        .contains(&FileEffect::dir_created("/etc/drbd.d", 0o755)));
    assert_eq!(h.host().read_text("/etc/drbd.d/r0.res"), "resource r0 {}\n");
    assert_eq!(dir_entries(&h, "/etc/linstor"), ["linstor_satellite.toml"]);
}

#[test]
fn every_config_field_round_trips() {
    let h = scripted();
    let mut cfg = tls(false);
    cfg["listen_address"] = json!("192.0.2.1:3367");
    h.put_config(&cfg).unwrap();
    assert_eq!(h.get().unwrap()["config"], cfg);
    h.put_config(&tls(true)).unwrap();
    assert_eq!(h.get().unwrap()["config"], tls(true));
    // Empty TLS fields are omitted, as upstream's omitempty does; null reads as empty.
    h.put_config(
        &json!({"enabled": false, "listen_address": null, "tls_server_certificate": "",
                "tls_server_key": null, "tls_trusted_certificates": []}),
    )
    .unwrap();
    assert_eq!(
        h.get_raw().unwrap(),
        r#"{"state":{},"config":{"enabled":false,"listen_address":""}}"#
    );
}

/// Each string field of a full config with a control character added is a 400 naming the
/// field that changes nothing. The PEM
/// fields are files: line breaks belong there, other control characters do not.
#[test]
fn control_characters_are_refused_in_every_string_field() {
    let full = {
        let mut c = tls(true);
        c["listen_address"] = json!("10.0.0.10:3367");
        c
    };
    let fields = [
        ("/listen_address", "listen_address"),
        ("/tls_server_certificate", "tls_server_certificate"),
        ("/tls_server_key", "tls_server_key"),
        ("/tls_trusted_certificates/0", "tls_trusted_certificates[0]"),
        ("/tls_trusted_certificates/1", "tls_trusted_certificates[1]"),
    ];
    // Files hold line breaks; NUL, escape sequences and DEL do not belong there.
    let text = [
        "/tls_server_certificate",
        "/tls_server_key",
        "/tls_trusted_certificates/0",
        "/tls_trusted_certificates/1",
    ];
    for case in control_character_cases(&full, &fields, &text) {
        let h = scripted();
        let err = h.assert_config_refused(&case.config, &case.message);
        for marker in KEY_MARKERS {
            assert!(!err.message.contains(marker), "{}", case.field);
        }
        assert_eq!(h.host().state(), Value::Null, "{}", case.field);
    }
}

#[test]
fn valid_pem_variants_are_accepted() {
    let h = Harness::load_built(LIB);
    let cfg = json!({
        "enabled": false,
        "listen_address": "",
        // A chain, CRLF line ends and blank lines between blocks.
        "tls_server_certificate": format!("{SERVER_CRT}\n{CONTROLLER_CRT}").replace('\n', "\r\n"),
        "tls_server_key": EC_KEY_WITH_PARAMS,
        "tls_trusted_certificates": [CONTROLLER_CRT],
    });
    h.put_config(&cfg).unwrap();
    assert_eq!(h.get().unwrap()["config"], cfg);
    let mut rsa = cfg.clone();
    rsa["tls_server_key"] = json!(SERVER_KEY
        .replace("BEGIN PRIVATE KEY", "BEGIN RSA PRIVATE KEY")
        .replace("END PRIVATE KEY", "END RSA PRIVATE KEY"));
    h.put_config(&rsa).unwrap();
}

#[test]
fn invalid_configs_are_refused_with_400_and_change_nothing() {
    let with = |field: &str, value: Value| {
        let mut c = tls(true);
        c[field] = value;
        c
    };
    let listen = |a: &str| plain(true, a);
    let bad_address = |a: &str| {
        format!("listen_address: invalid address {a:?} (expected <IPv4>:<port> or [<IPv6>]:<port>)")
    };
    let encrypted_legacy = "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,81FF2FB44AB00DA18A2DDF53DE316070\n\nMHcCAQEEIJTQN61mP6SnJd/tioJWbNiECQuam7A+9/goOVAw3XLuoAoGCCqGSM49\n-----END EC PRIVATE KEY-----\n";
    let mut cases: Vec<(Value, String)> = vec![];
    for a in [
        "10.0.0.10",
        "10.0.0.10:",
        "10.0.0.10:0",
        "10.0.0.10:65536",
        "10.0.0.10:03366",
        "10.0.0.10:x",
        ":3366",
        "fd00::10:3366",
        "[fd00::10]",
        "[10.0.0.10]:3366",
        "[fd00::10%eth0]:3366",
        "server01:3366",
    ] {
        cases.push((listen(a), bad_address(a)));
    }
    cases.push((
        listen("10.0.0.10:3366\"\nx = 1"),
        "listen_address: line breaks, NUL and other control characters are not allowed".into(),
    ));
    let tls_together =
        "(tls_server_certificate, tls_server_key and tls_trusted_certificates go together)";
    cases.extend([
        (
            json!({"enabled": true, "listen_address": "", "tls_server_certificate": SERVER_CRT}),
            format!("tls_server_key is required for TLS {tls_together}"),
        ),
        (
            with("tls_trusted_certificates", json!([])),
            format!("tls_trusted_certificates is required for TLS {tls_together}"),
        ),
        (
            json!({"enabled": true, "listen_address": "", "tls_trusted_certificates": [SERVER_CRT]}),
            format!("tls_server_certificate is required for TLS {tls_together}"),
        ),
        (
            with("tls_server_certificate", json!("hello")),
            "tls_server_certificate: not a PEM certificate: line 1: text outside a PEM block".into(),
        ),
        (
            with("tls_server_certificate", json!(format!("{SERVER_CRT}subject=CN=x\n"))),
            "tls_server_certificate: not a PEM certificate: line 11: text outside a PEM block".into(),
        ),
        (
            with("tls_server_certificate", json!(SERVER_KEY)),
            "tls_server_certificate: unexpected PEM block type PRIVATE KEY (expected CERTIFICATE)".into(),
        ),
        (
            with("tls_server_certificate", json!(SERVER_CRT.replace("-----END CERTIFICATE-----\n", ""))),
            "tls_server_certificate: not a PEM certificate: the CERTIFICATE block is not closed".into(),
        ),
        (
            with("tls_server_certificate", json!(SERVER_CRT.replace("END CERTIFICATE", "END X509 CRL"))),
            "tls_server_certificate: not a PEM certificate: line 10: END X509 CRL does not close BEGIN CERTIFICATE".into(),
        ),
        (
            with("tls_server_certificate", json!(SERVER_CRT.replace("MIIB", "MI*B"))),
            "tls_server_certificate: not a PEM certificate: the CERTIFICATE block is not valid base64".into(),
        ),
        (
            with("tls_server_certificate", json!("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")),
            "tls_server_certificate: not a PEM certificate: the CERTIFICATE block is not valid base64".into(),
        ),
        (
            with("tls_server_certificate", json!("\n\n")),
            "tls_server_certificate: not a PEM certificate: no PEM block found".into(),
        ),
        (
            with("tls_server_key", json!(SERVER_CRT)),
            "tls_server_key: unexpected PEM block type CERTIFICATE (expected an unencrypted PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)".into(),
        ),
        (
            with("tls_server_key", json!(SERVER_KEY.replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY"))),
            "tls_server_key: unexpected PEM block type ENCRYPTED PRIVATE KEY (expected an unencrypted PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)".into(),
        ),
        (
            with("tls_server_key", json!(encrypted_legacy)),
            "tls_server_key: not a PEM private key: line 2: PEM headers are not supported (encrypted keys cannot be used)".into(),
        ),
        (
            with("tls_server_key", json!(format!("{SERVER_KEY}{EC_KEY_WITH_PARAMS}"))),
            "tls_server_key: expected exactly one private key block, found 2".into(),
        ),
        (
            with("tls_server_key", json!("-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n")),
            "tls_server_key: expected exactly one private key block, found 0".into(),
        ),
        (
            with("tls_server_key", json!(format!("{SERVER_KEY}garbage"))),
            "tls_server_key: not a PEM private key: line 6: text outside a PEM block".into(),
        ),
        (
            with("tls_trusted_certificates", json!([CONTROLLER_CRT, "x"])),
            "tls_trusted_certificates 1: not a PEM certificate: line 1: text outside a PEM block".into(),
        ),
        (
            with("tls_trusted_certificates", json!([SERVER_KEY])),
            "tls_trusted_certificates 0: unexpected PEM block type PRIVATE KEY (expected CERTIFICATE)".into(),
        ),
        (
            with("tls_trusted_certificates", json!([CONTROLLER_CRT, SERVER_CRT, CONTROLLER_CRT])),
            "tls_trusted_certificates 2: duplicate of certificate 0".into(),
        ),
    ]);
    for (cfg, message) in &cases {
        for enabled in [true, false] {
            let mut cfg = cfg.clone();
            cfg["enabled"] = json!(enabled);
            let h = scripted();
            let err = h.assert_config_refused(&cfg, message);
            for marker in KEY_MARKERS {
                assert!(!err.message.contains(marker), "{message}");
            }
            let host = h.host();
            assert!(!host.root().join("etc").exists(), "{message}");
            assert_eq!(host.state(), Value::Null, "{message}");
            h.host().assert_not_logged(&KEY_MARKERS);
        }
    }
}

#[test]
fn disabling_stops_the_satellite_and_leaves_the_files() {
    let h = scripted();
    let host = h.host();
    h.put_config(&tls(true)).unwrap();
    host.clear_effects();

    h.put_config(&tls(false)).unwrap();
    assert_eq!(
        host.units(),
        [unit(UnitOp::ActiveState), unit(UnitOp::Stop)]
    );
    assert_eq!(host.unit_state(SATELLITE), "inactive");
    assert!(host.file_effects().is_empty());
    assert!(host.commands().is_empty());
    assert_eq!(
        h.host().read_text("/etc/linstor/linstor_satellite.toml"),
        TLS_TOML
    );
    assert_eq!(host.state(), json!({ "config": tls(false) }));

    // Staying disabled does nothing.
    host.clear_effects();
    h.put_config(&plain(false, "")).unwrap();
    assert!(host.units().is_empty());
    assert!(host.file_effects().is_empty());
}

#[test]
fn an_update_stops_and_rebuilds_everything() {
    let h = scripted();
    let host = h.host();
    h.put_config(&tls(true)).unwrap();
    host.clear_effects();

    h.put_config(&plain(true, "10.0.0.10:3366")).unwrap();
    assert_eq!(
        host.units(),
        [
            unit(UnitOp::ActiveState),
            unit(UnitOp::Stop),
            unit(UnitOp::Start)
        ]
    );
    assert!(host.commands().is_empty());
    assert_eq!(
        host.file_effects(),
        [
            FileEffect::removed("/etc/linstor"),
            FileEffect::dir_created("/etc/linstor", 0o700),
            FileEffect::written("/etc/linstor/linstor_satellite.toml", 0o600),
            FileEffect::written("/etc/drbd.conf", 0o644),
        ]
    );
    assert_eq!(dir_entries(&h, "/etc/linstor"), ["linstor_satellite.toml"]);
    assert_eq!(host.unit_state(SATELLITE), "active");
}

#[test]
fn a_failing_keystore_import_puts_everything_back() {
    let h = scripted();
    let host = h.host();
    host.put_file(
        "/etc/linstor/linstor_satellite.toml",
        PLAIN_TOML.as_bytes(),
        0o600,
    );
    host.put_file("/etc/linstor/server.jks", b"\xfe\xed\xfe\xed old", 0o644);
    host.on_command(
        &["keytool", "-importkeystore"],
        Reply::fail(
            1,
            "keytool error: java.io.IOException: keystore password was incorrect",
        ),
    );
    let err = h.put_config(&tls(true)).unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (
            500,
            "Failed to run: keytool -importkeystore -srckeystore /etc/linstor/server.p12 \
             -srcstoretype pkcs12 -destkeystore /etc/linstor/server.jks -srcstorepass linstor \
             -deststorepass linstor: exit status 1 (keytool error: java.io.IOException: \
             keystore password was incorrect)"
        )
    );
    assert_eq!(host.commands(), keystore_commands()[..2]);
    // The previous /etc/linstor is back with its modes, the DRBD files were never
    // written, and the satellite, never reached, was not touched.
    assert_eq!(
        dir_entries(&h, "/etc/linstor"),
        ["linstor_satellite.toml", "server.jks"]
    );
    assert_eq!(
        h.host().read_text("/etc/linstor/linstor_satellite.toml"),
        PLAIN_TOML
    );
    assert_eq!(
        host.read_file("/etc/linstor/server.jks").unwrap(),
        b"\xfe\xed\xfe\xed old"
    );
    assert_eq!(h.host().mode("/etc/linstor/server.jks"), 0o644);
    assert!(host.read_file("/etc/linstor/server.key").is_none());
    assert!(!host.real_path("/etc/drbd.d").exists());
    assert!(!host.real_path("/etc/drbd.conf").exists());
    assert!(host.units().is_empty());
    assert_eq!(host.unit_state(SATELLITE), "inactive");
    assert_eq!(host.state(), Value::Null);
    assert_eq!(host.save_count(), 0);
    h.host().assert_not_logged(&KEY_MARKERS);
}

#[test]
fn a_failing_satellite_start_puts_everything_back() {
    let h = Harness::load_built(LIB);
    let host = h.host();
    host.put_file("/etc/drbd.conf", b"# site config\n", 0o644);
    host.fail_unit(SATELLITE, "Job for linstor-satellite.service failed");
    let err = h.put_config(&plain(true, "")).unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (500, "Job for linstor-satellite.service failed")
    );
    assert!(!host.real_path("/etc/linstor").exists());
    assert_eq!(h.host().read_text("/etc/drbd.conf"), "# site config\n");
    assert!(!host.real_path("/etc/drbd.d").exists());
    assert_eq!(
        host.units(),
        [
            unit(UnitOp::ActiveState),
            unit(UnitOp::Start),
            unit(UnitOp::Stop)
        ]
    );
    assert_eq!(host.state(), Value::Null);
}

#[test]
fn a_failing_update_brings_the_old_config_back() {
    let h = scripted();
    let host = h.host();
    let old = plain(true, "10.0.0.10:3366");
    h.put_config(&old).unwrap();
    let old_toml = h.host().read_text("/etc/linstor/linstor_satellite.toml");
    host.on_command(
        &["openssl", "pkcs12"],
        Reply::fail(1, "Could not read private key from /etc/linstor/server.key"),
    );
    host.clear_effects();

    let err = h.put_config(&tls(true)).unwrap_err();
    assert_eq!(err.status, 500);
    assert!(err
        .message
        .starts_with("Failed to run: openssl pkcs12 -export"));
    // The satellite was active: it is restarted once its files are back.
    assert_eq!(
        host.units(),
        [
            unit(UnitOp::ActiveState),
            unit(UnitOp::Stop),
            unit(UnitOp::Restart)
        ]
    );
    assert_eq!(host.unit_state(SATELLITE), "active");
    assert_eq!(
        h.host().read_text("/etc/linstor/linstor_satellite.toml"),
        old_toml
    );
    assert_eq!(dir_entries(&h, "/etc/linstor"), ["linstor_satellite.toml"]);
    assert_eq!(host.state(), json!({ "config": old }));
    assert_eq!(host.save_count(), 1);
    h.host().assert_not_logged(&KEY_MARKERS);
}

#[test]
fn a_failing_save_is_undone() {
    let h = scripted();
    let host = h.host();
    host.fail_next_save("disk full");
    let err = h.put_config(&tls(true)).unwrap_err();
    assert_eq!((err.status, err.message.as_str()), (500, "disk full"));
    assert_eq!(host.units().last().unwrap(), &unit(UnitOp::Stop));
    assert_eq!(host.unit_state(SATELLITE), "inactive");
    assert_eq!(host.state(), Value::Null);
    assert_eq!(h.get().unwrap()["config"], plain(false, ""));
}

#[test]
fn boot_start_brings_the_satellite_up_and_shutdown_stops_it() {
    let h = scripted();
    let host = h.host();
    host.set_saved_config(&tls(true));
    h.start().unwrap();
    assert_eq!(
        h.host().read_text("/etc/linstor/linstor_satellite.toml"),
        TLS_TOML
    );
    assert_eq!(host.commands(), keystore_commands());
    assert_eq!(
        host.units(),
        [unit(UnitOp::ActiveState), unit(UnitOp::Start)]
    );
    assert_eq!(host.save_count(), 0);

    host.clear_effects();
    h.stop().unwrap();
    assert_eq!(host.units(), [unit(UnitOp::Stop)]);
    assert!(host.file_effects().is_empty());
    h.host().assert_not_logged(&KEY_MARKERS);
}

#[test]
fn boot_start_and_stop_do_nothing_when_disabled() {
    let h = scripted();
    h.host().set_saved_config(&tls(false));
    h.start().unwrap();
    h.stop().unwrap();
    let host = h.host();
    host.assert_untouched("boot_start_and_stop_do_nothing_when_disabled");
}
