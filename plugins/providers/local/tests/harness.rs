//! The local provider as the daemon loads it, against the recording harness host: a
//! mirror directory under the harness root with an index signed at test time by the real
//! openssl, verified by the plugin through the real openssl.

use incus_osd_harness::{assert_conformance, built_plugin, control_character_cases, Harness};
use incus_osd_provider_common::testing::{gzip, sha256_hex, Pki};
use incus_osd_provider_common::trust::{ROOT_CA_PATH, UPDATE_CA_PATH};
use serde_json::{json, Value};

const LIB: &str = "incus_osd_plugin_provider_local";
const MIRROR: &str = "/media/usb";

fn context(channel: &str) -> Value {
    json!({"channel": channel, "architecture": "x86_64", "os_name": "IncusOS",
           "running_version": "202512010000"})
}

fn index() -> Value {
    let f = |arch: &str, component: &str, name: &str, kind: &str, sha: &str| {
        json!({"architecture": arch, "component": component, "filename": name,
               "sha256": sha, "size": 3, "type": kind})
    };
    json!({"format": "1.0", "updates": [
        {"format": "1.0", "channels": ["stable"], "version": "202601010000",
         "severity": "low", "published_at": "2026-01-01T00:00:00Z",
         "files": [
            f("x86_64", "os", "x86_64/IncusOS_202601010000.efi.gz", "update-efi", "aa"),
            f("aarch64", "os", "aarch64/IncusOS_202601010000.efi.gz", "update-efi", "bb"),
            f("x86_64", "incus", "x86_64/incus.raw.gz", "application", "cc"),
         ]}
    ]})
}

/// A plugin whose host has the PKI's trust files, runs bash and openssl for real, and a
/// mirror holding `signed` as its index.
fn mirror(pki: &Pki, signed: &[u8]) -> Harness {
    let h = Harness::load_built(LIB);
    let host = h.host();
    host.put_file(ROOT_CA_PATH, pki.root_pem().as_bytes(), 0o644);
    host.put_file(UPDATE_CA_PATH, pki.update_ca_pem().as_bytes(), 0o644);
    host.put_file(&format!("{MIRROR}/index.sjson"), signed, 0o644);
    host.on_command_real(&["bash"]);
    host.on_command_real(&["openssl"]);
    h.apply_config(&json!({"path": MIRROR}));
    h
}

fn lookup(
    h: &Harness,
    channel: &str,
    target: Value,
) -> Result<Value, incus_osd_harness::PluginError> {
    let input = json!({"context": context(channel), "target": target});
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
    let config = json!({"path": MIRROR, "update_ca": pki.update_ca_pem()});
    h.apply_config(&config);
    assert_eq!(h.get().unwrap()["config"], config);

    h.assert_config_refused(
        &json!({"path": "media/usb"}),
        "invalid path \"media/usb\": it must be an absolute path",
    );
    h.assert_config_refused(
        &json!({"path": MIRROR, "update_ca": "not a certificate"}),
        "invalid update_ca: no PEM certificate found",
    );
    let err = h
        .put_config(&json!({"server_url": "https://x"}))
        .unwrap_err();
    assert_eq!(err.status, 400);
    assert!(err.message.contains("server_url"), "{}", err.message);
    // A line break is fine in the PEM, not in the path.
    for case in control_character_cases(
        &config,
        &[("/path", "path"), ("/update_ca", "update_ca")],
        &["/update_ca"],
    ) {
        h.assert_config_refused(&case.config, &case.message);
    }
    assert_eq!(h.get().unwrap()["config"], config, "nothing half-applied");
}

#[test]
fn a_verified_index_offers_this_architectures_files() {
    let pki = Pki::new();
    let h = mirror(&pki, &pki.sign(index().to_string().as_bytes()));
    let os = lookup(&h, "stable", json!({"kind": "os"})).unwrap();
    assert_eq!(os["version"], "202601010000");
    assert_eq!(os["severity"], "low");
    let names: Vec<&str> = os["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["filename"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["x86_64/IncusOS_202601010000.efi.gz"]);
    let incus = lookup(
        &h,
        "stable",
        json!({"kind": "application", "name": "incus"}),
    )
    .unwrap();
    assert_eq!(incus["files"][0]["sha256"], "cc");
    assert_eq!(
        lookup(&h, "stable", json!({"kind": "secure-boot"})).unwrap(),
        Value::Null
    );
    // The signature was checked by openssl, with the message on its stdin.
    let calls = h.host().command_calls();
    assert_eq!(calls[0].argv[0..2], ["bash", "-c"]);
    assert!(calls[0].stdin.starts_with(b"MIME-Version"));
}

#[test]
fn a_wrong_channel_is_no_update_and_a_warning() {
    let pki = Pki::new();
    let h = mirror(&pki, &pki.sign(index().to_string().as_bytes()));
    assert_eq!(
        lookup(&h, "testing", json!({"kind": "os"})).unwrap(),
        Value::Null
    );
    let warnings = h.host().warnings();
    assert!(
        warnings.iter().any(|w| w.contains("\"testing\"")),
        "{warnings:?}"
    );
}

#[test]
fn a_tampered_index_is_refused() {
    let pki = Pki::new();
    let signed = String::from_utf8(pki.sign(index().to_string().as_bytes())).unwrap();
    let tampered = signed.replace("\"cc\"", "\"dd\"");
    assert_ne!(signed, tampered);
    let h = mirror(&pki, tampered.as_bytes());
    let err = lookup(&h, "stable", json!({"kind": "os"})).unwrap_err();
    assert_eq!(err.status, 500);
    assert!(
        err.message
            .starts_with("the update index signature is not valid: "),
        "{}",
        err.message
    );
}

#[test]
fn an_index_signed_through_another_intermediate_is_refused_unless_configured() {
    let pki = Pki::new();
    let h = mirror(
        &pki,
        &pki.sign_with_other_intermediate(index().to_string().as_bytes()),
    );
    let err = lookup(&h, "stable", json!({"kind": "os"})).unwrap_err();
    assert_eq!(
        err.message,
        "the update index is not signed through the expected update CA"
    );
    // update_ca replaces the shipped update CA.
    h.apply_config(&json!({"path": MIRROR, "update_ca": pki.other_ca_pem()}));
    assert!(lookup(&h, "stable", json!({"kind": "os"}))
        .unwrap()
        .is_object());
}

#[test]
fn missing_pieces_are_named() {
    let pki = Pki::new();
    // No stick: no update.
    let h = Harness::load_built(LIB);
    h.apply_config(&json!({"path": "/media/absent"}));
    assert_eq!(
        lookup(&h, "stable", json!({"kind": "os"})).unwrap(),
        Value::Null
    );
    // No path configured.
    let h = Harness::load_built(LIB);
    let err = lookup(&h, "stable", json!({"kind": "os"})).unwrap_err();
    assert_eq!(err.message, "the local provider has no path configured");
    // A directory without an index.
    let h = Harness::load_built(LIB);
    h.host().put_file(&format!("{MIRROR}/README"), b"x", 0o644);
    h.apply_config(&json!({"path": MIRROR}));
    let err = lookup(&h, "stable", json!({"kind": "os"})).unwrap_err();
    assert_eq!(
        err.message,
        "the mirror has no update index: /media/usb/index.sjson is missing"
    );
    // No shipped root CA.
    let h = mirror(&pki, &pki.sign(b"{}"));
    std::fs::remove_file(h.host().real_path(ROOT_CA_PATH)).unwrap();
    let err = lookup(&h, "stable", json!({"kind": "os"})).unwrap_err();
    assert_eq!(
        err.message,
        format!("cannot verify the update index: {ROOT_CA_PATH} is missing")
    );
}

#[test]
fn registration_is_unsupported_and_deregistering_does_nothing() {
    let h = Harness::load_built(LIB);
    let err = h.invoke("register", b"").unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (500, "registration unsupported")
    );
    h.invoke("deregister", b"").unwrap();
}

#[test]
fn fetch_checks_and_unpacks_the_files_from_the_mirror() {
    let efi = gzip(b"the new UKI");
    let index = json!({"format": "1.0", "updates": [{"channels": ["stable"],
        "version": "202601010000", "files": [{"architecture": "x86_64", "component": "os",
        "filename": "x86_64/IncusOS_202601010000.efi.gz", "sha256": sha256_hex(&efi),
        "size": efi.len(), "type": "update-efi"}]}]});
    let pki = Pki::new();
    let h = mirror(&pki, &pki.sign(index.to_string().as_bytes()));
    h.host().put_file(
        &format!("{MIRROR}/202601010000/x86_64/IncusOS_202601010000.efi.gz"),
        &efi,
        0o644,
    );
    let release = lookup(&h, "stable", json!({"kind": "os"})).unwrap();
    let order = json!({"context": context("stable"), "target": {"kind": "os"},
                       "release": release, "target_dir": "/var/lib/updates"});
    let out = h.invoke("fetch", order.to_string().as_bytes()).unwrap();
    assert_eq!(
        out["written"],
        json!(["/var/lib/updates/IncusOS_202601010000.efi"])
    );
    assert_eq!(
        h.host()
            .read_text("/var/lib/updates/IncusOS_202601010000.efi"),
        "the new UKI"
    );
    // A file that does not match its SHA-256 is refused and nothing is written.
    let mut bad = order.clone();
    bad["release"]["files"][0]["sha256"] = json!("00".repeat(32));
    bad["target_dir"] = json!("/var/lib/incus-os-extensions/x");
    let err = h.invoke("fetch", bad.to_string().as_bytes()).unwrap_err();
    assert!(
        err.message
            .starts_with("while downloading file:///media/usb/"),
        "{}",
        err.message
    );
    assert!(h
        .host()
        .read_file("/var/lib/incus-os-extensions/x/IncusOS_202601010000.efi")
        .is_none());
}
