//! The debug provider as the daemon loads it, against the recording harness host.

use incus_osd_harness::{assert_conformance, built_plugin, Harness};
use serde_json::{json, Value};

const LIB: &str = "incus_osd_plugin_provider_debug";
const VER: &str = "202601020304";

fn context() -> Value {
    json!({"channel": "stable", "architecture": "x86_64", "os_name": "IncusOS",
           "running_version": "202512010000"})
}

fn lookup(h: &Harness, target: Value) -> Result<Value, incus_osd_harness::PluginError> {
    let input = json!({"context": context(), "target": target});
    h.invoke("lookup", input.to_string().as_bytes())
        .map(|v| v["release"].clone())
}

fn names(release: &Value) -> Vec<String> {
    release["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["filename"].as_str().unwrap().to_string())
        .collect()
}

/// `/root/updates` with a release: the OS files, a full image, files of another
/// version, two applications and the Secure Boot keys.
fn with_release() -> Harness {
    let h = Harness::load_built(LIB);
    let host = h.host();
    host.put_file(
        "/root/updates/RELEASE",
        format!("{VER}\n").as_bytes(),
        0o644,
    );
    for name in [
        format!("IncusOS_{VER}.efi"),
        format!("IncusOS_{VER}.usr-x86-64.aaaa.raw"),
        format!("IncusOS_{VER}.usr-x86-64-verity.bbbb.raw"),
        format!("IncusOS_{VER}.usr-x86-64-verity-sig.cccc.raw"),
        format!("IncusOS_{VER}.raw"),
        "IncusOS_202501010000.efi".to_string(),
        "incus.raw".to_string(),
        "debug.raw".to_string(),
        format!("SecureBootKeys_{VER}.tar"),
        "SecureBootKeys_202501010000.tar".to_string(),
    ] {
        host.put_file(&format!("/root/updates/{name}"), name.as_bytes(), 0o644);
    }
    h
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
fn the_config_is_empty_and_anything_else_is_refused() {
    let h = Harness::load_built(LIB);
    assert_eq!(h.get().unwrap(), json!({"state": {}, "config": {}}));
    h.apply_config(&json!({}));
    let err = h
        .put_config(&json!({"server_url": "https://x"}))
        .unwrap_err();
    assert_eq!(err.status, 400);
    assert!(err.message.contains("server_url"), "{}", err.message);
    h.host().assert_untouched("refused config");
}

#[test]
fn no_directory_means_no_update() {
    let h = Harness::load_built(LIB);
    for target in [json!({"kind": "os"}), json!({"kind": "secure-boot"})] {
        assert_eq!(lookup(&h, target).unwrap(), Value::Null);
    }
}

#[test]
fn the_os_update_is_the_versions_files_without_the_full_image() {
    let h = with_release();
    let release = lookup(&h, json!({"kind": "os"})).unwrap();
    assert_eq!(release["version"], VER);
    assert_eq!(
        names(&release),
        [
            format!("IncusOS_{VER}.efi"),
            format!("IncusOS_{VER}.usr-x86-64-verity-sig.cccc.raw"),
            format!("IncusOS_{VER}.usr-x86-64-verity.bbbb.raw"),
            format!("IncusOS_{VER}.usr-x86-64.aaaa.raw"),
        ]
    );
    let types: Vec<&str> = release["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "update-efi",
            "update-usr-verity-signature",
            "update-usr-verity",
            "update-usr"
        ]
    );
    // Another OS name has no update here.
    let input = json!({"context": {"os_name": "OtherOS", "architecture": "x86_64"},
                       "target": {"kind": "os"}});
    let other = h.invoke("lookup", input.to_string().as_bytes()).unwrap();
    assert_eq!(other["release"], Value::Null);
}

#[test]
fn applications_and_secure_boot_keys_are_found_by_name() {
    let h = with_release();
    let incus = lookup(&h, json!({"kind": "application", "name": "incus"})).unwrap();
    assert_eq!(names(&incus), ["incus.raw"]);
    assert_eq!(incus["files"][0]["type"], "application");
    assert_eq!(
        lookup(&h, json!({"kind": "application", "name": "openfga"})).unwrap(),
        Value::Null
    );
    let sb = lookup(&h, json!({"kind": "secure-boot"})).unwrap();
    assert_eq!(names(&sb), [format!("SecureBootKeys_{VER}.tar")]);
}

#[test]
fn a_directory_without_a_release_file_is_an_error() {
    let h = Harness::load_built(LIB);
    h.host().put_file("/root/updates/incus.raw", b"x", 0o644);
    let err = lookup(&h, json!({"kind": "os"})).unwrap_err();
    assert_eq!(err.status, 500);
    assert_eq!(
        err.message,
        "cannot read /root/updates/RELEASE: it is missing"
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
    let err = h
        .invoke("refresh", br#"{"cause":"system-is-ready"}"#)
        .unwrap_err();
    assert_eq!(err.message, "registration unsupported");
    h.invoke("deregister", b"").unwrap();
    h.invoke("clear-cache", b"").unwrap();
    h.host().assert_untouched("registration");
}

#[test]
fn fetch_copies_the_files_into_the_target_directory() {
    let h = with_release();
    let release = lookup(&h, json!({"kind": "os"})).unwrap();
    let order = json!({"context": context(), "target": {"kind": "os"}, "release": release,
                       "target_dir": "/var/lib/updates"});
    let out = h.invoke("fetch", order.to_string().as_bytes()).unwrap();
    let written: Vec<&str> = out["written"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(written.len(), 4);
    for path in written {
        let name = path.strip_prefix("/var/lib/updates/").unwrap();
        assert_eq!(h.host().read_text(path), name, "{path}");
    }
}
