//! The built `openfga` plugin as the daemon loads it (through the harness): its manifest,
//! the conformance checks, and each hook reaching the domain logic, its token and restored
//! tokens saved as its config. OpenFGA cannot run here: its units are recorded, ZFS scripted.

use incus_osd_harness::{
    assert_conformance, built_plugin, CheckStatus, FileEffect, Harness, HarnessHost, Reply,
    UnitCall, UnitOp,
};
use plugin_api::application::{AppContext, BackupSpec};
use plugin_api::Hook;
use serde_json::{json, Value};

const LIB: &str = "incus_osd_plugin_application_openfga";

fn ctx(initialized: bool) -> Vec<u8> {
    serde_json::to_vec(&AppContext {
        name: "openfga".into(),
        version: "202511041800".into(),
        initialized,
        ..Default::default()
    })
    .unwrap()
}

/// ZFS and umount answer success; Incus (the primary) has its certificate.
fn with_primary(hh: &HarnessHost) {
    for prefix in [&["zfs"][..], &["umount"]] {
        hh.on_command(prefix, Reply::ok(""));
    }
    hh.put_file("/var/lib/incus/server.crt", b"INCUS CHAIN", 0o644);
    hh.put_file("/var/lib/incus/server.key", b"INCUS KEY", 0o600);
}

fn load_with(setup: impl FnOnce(&HarnessHost)) -> Harness {
    Harness::load_with(built_plugin(LIB), setup).expect("the openfga plugin loads")
}

fn tokens(h: &Harness) -> Vec<String> {
    serde_json::from_value(h.get().unwrap()["config"]["api_tokens"].clone()).unwrap()
}

fn sync_section() -> Value {
    json!({"sources": [{"name": "corp", "type": "ldap", "ldap": {"url": "ldaps://dc"}}]})
}

#[test]
fn the_manifest_starts_after_the_primary_and_declares_upstreams_backup() {
    let h = Harness::load_built(LIB);
    let m = h.manifest();
    assert_eq!(m.name, "openfga");
    assert!(!m.primary && !m.late_update_check);
    assert_eq!(m.start_weight, 1);
    assert!(m.variants.is_empty() && m.dependencies.is_empty());
    assert_eq!(
        m.backup,
        Some(BackupSpec {
            root: "/var/lib/openfga/".into(),
            excluded: vec![],
            excluded_unless_complete: vec![],
            units: vec!["openfga.service".into(), "openfga-sync.service".into()],
        })
    );
    assert!(m.has(Hook::Wipe) && m.has(Hook::Restored));
    assert!(!m.has(Hook::Action));
}

#[test]
fn plugin_check_passes_with_the_backup_round_trip() {
    let outcomes = assert_conformance(built_plugin(LIB));
    let br = outcomes
        .iter()
        .find(|o| o.name == "backup-restore")
        .unwrap();
    assert_eq!(br.status, CheckStatus::Passed, "{br:?}");
    assert!(
        br.detail
            .starts_with("declared backup of /var/lib/openfga/")
            && br.detail.contains("gave back the same GET and data"),
        "{br:?}"
    );
    let put = outcomes
        .iter()
        .find(|o| o.name == "put-round-trip")
        .unwrap();
    assert!(
        put.detail.contains(
            "refused with nothing changed (500 at least one API token must be specified)"
        ),
        "{put:?}"
    );
}

#[test]
fn initialization_saves_one_new_token_as_the_config_and_links_the_config_file() {
    let h = Harness::load_built(LIB);
    h.invoke("initialize", &ctx(false)).unwrap();
    let t = tokens(&h);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].len(), 26);
    assert!(h
        .host()
        .read_text("/var/lib/openfga/config.yaml")
        .contains(&format!("- \"{}\"", t[0])));
    assert!(h.host().file_effects().contains(&FileEffect::Symlinked {
        path: "/etc/openfga/config.yaml".into(),
        target: "/var/lib/openfga/config.yaml".into(),
    }));
    assert_eq!(
        std::fs::read_link(h.host().real_path("/etc/openfga/config.yaml")).unwrap(),
        std::path::Path::new("/var/lib/openfga/config.yaml")
    );
}

#[test]
fn a_put_without_tokens_is_upstreams_500_and_changes_nothing() {
    let h = Harness::load_built(LIB);
    h.invoke("initialize", &ctx(false)).unwrap();
    h.host().clear_effects();
    let before = h.get().unwrap();
    let err = h.put_config(&json!({"api_tokens": []})).unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (500, "at least one API token must be specified")
    );
    h.host().assert_untouched("no tokens");
    assert_eq!(h.get().unwrap(), before);
}

#[test]
fn a_put_rewrites_the_config_and_the_sync_file_and_restarts_both_units() {
    let h = Harness::load_built(LIB);
    h.invoke("initialize", &ctx(false)).unwrap();
    h.host().clear_effects();
    let config = json!({"api_tokens": ["A", "B"], "sync": sync_section()});
    h.put_config(&config).unwrap();
    assert_eq!(h.get().unwrap()["config"], config);
    let sync: Value =
        serde_json::from_str(&h.host().read_text("/var/lib/openfga/sync.yaml")).unwrap();
    assert_eq!(sync["openfga"]["api_token"], "A");
    assert_eq!(
        h.host().unit_changes(),
        [
            UnitCall::new(UnitOp::DaemonReload, ""),
            UnitCall::new(UnitOp::Restart, "openfga.service"),
            UnitCall::new(UnitOp::Restart, "openfga-sync.service"),
        ]
    );
}

#[test]
fn start_serves_the_primarys_certificate_and_refuses_without_one() {
    let h = load_with(with_primary);
    h.invoke("start", &ctx(true)).unwrap();
    assert_eq!(
        h.host().read_text("/var/lib/openfga/server.crt"),
        "INCUS CHAIN"
    );
    assert_eq!(
        h.host().read_text("/var/lib/openfga/server.key"),
        "INCUS KEY"
    );
    assert_eq!(h.host().mode("/var/lib/openfga/server.key"), 0o400);
    // A cluster certificate wins over Incus' own.
    h.host()
        .put_file("/var/lib/incus/cluster.crt", b"CLUSTER CHAIN", 0o644);
    h.host()
        .put_file("/var/lib/incus/cluster.key", b"CLUSTER KEY", 0o600);
    h.invoke("start", &ctx(true)).unwrap();
    assert_eq!(
        h.host().read_text("/var/lib/openfga/server.crt"),
        "CLUSTER CHAIN"
    );

    let h = load_with(|hh| hh.on_command(&["zfs"], Reply::ok("")));
    let err = h.invoke("start", &ctx(true)).unwrap_err();
    assert_eq!(
        err.message,
        "no initialized primary application provides a server certificate"
    );
    assert!(h.host().unit_changes().is_empty());
}

/// The round trip a user makes: tokens and sync saved, backed up, factory reset (a new
/// token), restored: the tokens come back from the restored config file and the sync
/// section from the restored sync file.
#[test]
fn a_restore_after_a_factory_reset_brings_the_tokens_and_the_sync_section_back() {
    let h = load_with(with_primary);
    h.invoke("start", &ctx(false)).unwrap();
    h.invoke("initialize", &ctx(false)).unwrap();
    let config = json!({"api_tokens": ["KEEP1", "KEEP2"], "sync": sync_section()});
    h.put_config(&config).unwrap();
    let archive = h.backup(&json!({})).unwrap();

    h.factory_reset().unwrap();
    let fresh = tokens(&h);
    assert_eq!(fresh.len(), 1);
    assert!(!fresh.contains(&"KEEP1".to_string()));
    assert_eq!(h.get().unwrap()["config"].get("sync"), None);

    h.restore(&archive).unwrap();
    let restored = h.get().unwrap()["config"].clone();
    assert_eq!(restored["api_tokens"], config["api_tokens"]);
    // The reset forgot the section as sent: it comes back as the restored file has it,
    // completed to reach this OpenFGA (what upstream's GET always shows), and a PUT of it
    // is accepted as it is.
    assert_eq!(restored["sync"]["sources"], sync_section()["sources"]);
    assert_eq!(restored["sync"]["openfga"]["api_token"], "KEEP1");
    h.put_config(&restored).unwrap();
    assert_eq!(h.get().unwrap()["config"], restored);
    assert!(h
        .host()
        .read_text("/var/lib/openfga/config.yaml")
        .contains("- \"KEEP2\""));
}

#[test]
fn a_wipe_clears_the_config_and_removes_the_link() {
    let h = load_with(with_primary);
    h.invoke("initialize", &ctx(false)).unwrap();
    h.invoke("wipe", &ctx(true)).unwrap();
    assert_eq!(h.get().unwrap()["config"], json!({"api_tokens": []}));
    assert!(std::fs::symlink_metadata(h.host().real_path("/etc/openfga/config.yaml")).is_err());
    assert!(!h.host().real_path("/var/lib/openfga").exists());
}
