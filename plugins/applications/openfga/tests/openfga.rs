//! The openfga application over the recording harness host: its files under the harness
//! root, its units, and its ZFS and tool commands as they run.

use incus_osd_application_common::testing::host;
use incus_osd_harness::{argv, Event, FileEffect, HarnessHost, Reply, UnitCall, UnitOp};
use incus_osd_plugin_application_openfga::{self as openfga, Config};
use plugin_api::{Host, Undo};
use serde_json::{json, Map, Value};

fn fga_host() -> (HarnessHost, Host) {
    host("openfga", &openfga::PATHS)
}

/// The link from where OpenFGA looks to the config file, made through the host.
fn linked() -> FileEffect {
    FileEffect::Symlinked {
        path: "/etc/openfga/config.yaml".into(),
        target: "/var/lib/openfga/config.yaml".into(),
    }
}

fn tokens(t: &[&str]) -> Config {
    Config {
        api_tokens: t.iter().map(|s| s.to_string()).collect(),
        sync: None,
    }
}

fn sync_config() -> Map<String, Value> {
    json!({
        "daemon": {"interval": "5m"},
        "sources": [{"name": "corp", "type": "ldap",
                     "ldap": {"url": "ldaps://dc.example", "group_base_dn": "ou=g"}}],
        "openfga": {"authoritative": true, "url": "https://elsewhere"},
    })
    .as_object()
    .unwrap()
    .clone()
}

fn apply(host: &Host, config: &Config) -> plugin_api::Result<()> {
    let mut undo = Undo::new(host);
    let res = openfga::apply_config(host, &mut undo, config);
    match res {
        Ok(()) => undo.commit(),
        Err(_) => undo.rollback(),
    }
    res
}

#[test]
fn the_config_has_upstreams_field_names() {
    let c: Config = serde_json::from_value(json!({"api_tokens": ["a"], "sync": null})).unwrap();
    assert_eq!(c, tokens(&["a"]));
    assert_eq!(
        serde_json::to_value(tokens(&["a"])).unwrap(),
        json!({"api_tokens": ["a"]})
    );
    assert!(serde_json::from_value::<Config>(json!({"tokens": ["a"]})).is_err());
}

#[test]
fn a_config_without_tokens_is_refused_with_upstreams_text_and_nothing_changes() {
    let (hh, host) = fga_host();
    hh.put_file("/var/lib/openfga/config.yaml", b"old", 0o600);
    let err = apply(&host, &tokens(&[])).unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (500, "at least one API token must be specified")
    );
    hh.assert_untouched("no tokens");
    assert_eq!(hh.read_text("/var/lib/openfga/config.yaml"), "old");
}

#[test]
fn tokens_become_preshared_keys_in_a_private_config_linked_from_etc() {
    let (hh, host) = fga_host();
    apply(&host, &tokens(&["TOKEN1", "TOKEN2"])).unwrap();
    let text = hh.read_text("/var/lib/openfga/config.yaml");
    assert_eq!(
        text,
        "authn:\n  method: preshared\n  preshared:\n    keys:\n      - \"TOKEN1\"\n      - \"TOKEN2\"\n\
grpc:\n  addr: \"localhost:55123\"\n  tls:\n    enabled: true\n    cert: \"/var/lib/openfga/server.crt\"\n    key: \"/var/lib/openfga/server.key\"\n\
http:\n  addr: \":8444\"\n  tls:\n    enabled: true\n    cert: \"/var/lib/openfga/server.crt\"\n    key: \"/var/lib/openfga/server.key\"\n"
    );
    assert_eq!(hh.mode("/var/lib/openfga/config.yaml"), 0o600);
    assert!(hh.read_file("/var/lib/openfga/sync.yaml").is_none());
    assert!(
        hh.file_effects().contains(&linked()),
        "{:?}",
        hh.file_effects()
    );
    assert_eq!(
        std::fs::read_link(hh.real_path("/etc/openfga/config.yaml")).unwrap(),
        std::path::Path::new("/var/lib/openfga/config.yaml")
    );
    assert_eq!(
        hh.unit_changes(),
        [
            UnitCall::new(UnitOp::DaemonReload, ""),
            UnitCall::new(UnitOp::Restart, "openfga.service"),
            UnitCall::new(UnitOp::Restart, "openfga-sync.service"),
        ]
    );
    // The link now exists: left alone.
    hh.clear_effects();
    apply(&host, &tokens(&["TOKEN3"])).unwrap();
    assert!(!hh.file_effects().contains(&linked()));
}

#[test]
fn a_sync_section_is_completed_to_reach_this_openfga_and_removed_when_dropped() {
    let (hh, host) = fga_host();
    let config = Config {
        api_tokens: vec!["FIRST".into(), "SECOND".into()],
        sync: Some(sync_config()),
    };
    apply(&host, &config).unwrap();
    assert_eq!(hh.mode("/var/lib/openfga/sync.yaml"), 0o600);
    let written: Value = serde_json::from_str(&hh.read_text("/var/lib/openfga/sync.yaml")).unwrap();
    assert_eq!(
        written,
        json!({
            "daemon": {"interval": "5m", "state_dir": "/var/lib/openfga/sync-state"},
            "sources": [{"name": "corp", "type": "ldap",
                         "ldap": {"url": "ldaps://dc.example", "group_base_dn": "ou=g"}}],
            "openfga": {"authoritative": true, "url": "https://127.0.0.1:8444",
                        "api_token": "FIRST", "insecure_skip_verify": true},
        })
    );
    // GET shows it back as written.
    assert_eq!(
        openfga::read_sync(&host).unwrap(),
        Some(written.as_object().unwrap().clone())
    );
    apply(&host, &tokens(&["FIRST"])).unwrap();
    assert!(hh.read_file("/var/lib/openfga/sync.yaml").is_none());
    assert_eq!(openfga::read_sync(&host).unwrap(), None);
}

#[test]
fn a_sync_section_openfga_sync_would_refuse_is_refused_before_anything_changes() {
    let (hh, host) = fga_host();
    let cases = [
        (
            json!({"sources": []}),
            "at least one source must be configured",
        ),
        (
            json!({"sources": [{"name": "a", "type": "ldap", "ldap": {}},
                               {"name": "a", "type": "ldap", "ldap": {}}]}),
            "duplicate source name \"a\"",
        ),
        (
            json!({"sources": [{"name": "a", "type": "okta"}]}),
            "source \"a\" has unsupported type \"okta\"",
        ),
        (
            json!({"sources": [{"name": "a", "type": "zitadel"}]}),
            "source \"a\" is missing its \"zitadel\" section",
        ),
    ];
    for (sync, text) in cases {
        let config = Config {
            api_tokens: vec!["T".into()],
            sync: Some(sync.as_object().unwrap().clone()),
        };
        let err = apply(&host, &config).unwrap_err();
        assert_eq!(err.message, text);
        hh.assert_untouched(text);
    }
}

#[test]
fn a_failed_restart_puts_the_previous_files_back() {
    let (hh, host) = fga_host();
    apply(&host, &tokens(&["OLD"])).unwrap();
    let before = hh.read_text("/var/lib/openfga/config.yaml");
    hh.fail_unit("openfga.service", "openfga.service failed");
    let config = Config {
        api_tokens: vec!["NEW".into()],
        sync: Some(sync_config()),
    };
    assert!(apply(&host, &config).is_err());
    assert_eq!(hh.read_text("/var/lib/openfga/config.yaml"), before);
    assert!(hh.read_file("/var/lib/openfga/sync.yaml").is_none());
}

#[test]
fn initialization_makes_one_random_token_and_applies_it() {
    let (hh, host) = fga_host();
    let mut undo = Undo::new(&host);
    let config = openfga::initialize(&host, &mut undo).unwrap();
    undo.commit();
    assert_eq!(config.api_tokens.len(), 1);
    assert_eq!(config.api_tokens[0].len(), 26);
    assert!(hh.real_path("/etc/openfga").is_dir());
    let text = hh.read_text("/var/lib/openfga/config.yaml");
    assert!(
        text.contains(&format!("- \"{}\"", config.api_tokens[0])),
        "{text}"
    );
    let mut undo = Undo::new(&host);
    let other = openfga::initialize(&host, &mut undo).unwrap();
    undo.commit();
    assert_ne!(config.api_tokens, other.api_tokens);
}

#[test]
fn after_a_restore_the_tokens_come_back_from_the_config_file() {
    let (hh, host) = fga_host();
    hh.put_file(
        "/var/lib/openfga/config.yaml",
        b"authn:\n    method: preshared\n    preshared:\n        keys:\n            - RESTORED1\n            - RESTORED2\n",
        0o600,
    );
    let mut undo = Undo::new(&host);
    let tokens = openfga::restored(&host, &mut undo).unwrap();
    undo.commit();
    assert_eq!(tokens, ["RESTORED1", "RESTORED2"]);
    assert!(
        hh.file_effects().contains(&linked()),
        "{:?}",
        hh.file_effects()
    );
    assert_eq!(
        std::fs::read_link(hh.real_path("/etc/openfga/config.yaml")).unwrap(),
        std::path::Path::new("/var/lib/openfga/config.yaml")
    );
    // A backup without the file: an error saying so.
    hh.put_file("/var/lib/openfga/config.yaml", b"", 0o600);
    std::fs::remove_file(hh.real_path("/var/lib/openfga/config.yaml")).unwrap();
    let mut undo = Undo::new(&host);
    let err = openfga::restored(&host, &mut undo).unwrap_err();
    undo.rollback();
    assert_eq!(
        err.message,
        "/var/lib/openfga/config.yaml is missing from the backup"
    );
}

#[test]
fn start_prepares_storage_copies_the_primarys_certificate_and_starts_both_units() {
    let (hh, host) = fga_host();
    hh.on_command(&["zfs", "list"], Reply::fail(1, "dataset does not exist"));
    hh.on_command(&["zfs", "create"], Reply::ok(""));
    let mut undo = Undo::new(&host);
    openfga::start(&host, &mut undo, false, Some(("CHAIN", "KEY"))).unwrap();
    undo.commit();
    let changes: Vec<Event> = hh
        .events()
        .into_iter()
        .filter(|e| !matches!(e, Event::Unit(c) if c.op == UnitOp::ActiveState))
        .collect();
    assert_eq!(
        changes,
        [
            Event::Command(argv(&["zfs", "list", "-H", "-o", "name", "local/openfga"])),
            Event::Command(argv(&[
                "zfs",
                "create",
                "-o",
                "mountpoint=/var/lib/openfga/",
                "-o",
                "incusos:use=openfga",
                "local/openfga"
            ])),
            Event::File(FileEffect::written("/var/lib/openfga/server.key", 0o400)),
            Event::File(FileEffect::written("/var/lib/openfga/server.crt", 0o644)),
            Event::Unit(UnitCall::new(UnitOp::Start, "openfga.service")),
            Event::Unit(UnitCall::new(UnitOp::Start, "openfga-sync.service")),
        ]
    );
    assert_eq!(hh.read_text("/var/lib/openfga/server.key"), "KEY");
    assert_eq!(hh.read_text("/var/lib/openfga/server.crt"), "CHAIN");
    assert!(openfga::running(&host).unwrap());
}

#[test]
fn without_a_primary_certificate_openfga_does_not_start() {
    let (hh, host) = fga_host();
    hh.on_command(&["zfs", "mount"], Reply::ok(""));
    let mut undo = Undo::new(&host);
    let err = openfga::start(&host, &mut undo, true, None).unwrap_err();
    undo.rollback();
    assert_eq!(
        err.message,
        "no initialized primary application provides a server certificate"
    );
    assert!(hh.unit_changes().is_empty());
}

#[test]
fn stop_reload_and_restart_touch_the_right_units() {
    let (hh, host) = fga_host();
    openfga::stop(&host).unwrap();
    openfga::reload(&host).unwrap();
    openfga::restart(&host).unwrap();
    assert_eq!(
        hh.unit_changes(),
        [
            UnitCall::new(UnitOp::Stop, "openfga-sync.service"),
            UnitCall::new(UnitOp::Stop, "openfga.service"),
            UnitCall::new(UnitOp::DaemonReload, ""),
            UnitCall::new(UnitOp::Restart, "openfga.service"),
            UnitCall::new(UnitOp::Restart, "openfga-sync.service"),
            UnitCall::new(UnitOp::Restart, "openfga.service"),
        ]
    );
}

#[test]
fn the_friendly_version_is_read_from_openfgas_standard_error() {
    let (hh, host) = fga_host();
    hh.on_command(
        &["openfga", "version"],
        Reply {
            status: 0,
            stdout: String::new(),
            stderr: "2025/01/01 OpenFGA version `1.8.9` build from `abc` on `2025-01-01`\n".into(),
        },
    );
    assert_eq!(
        openfga::friendly_version(&host, "202601010000").unwrap(),
        "1.8.9 [202601010000]"
    );
    hh.on_command(&["openfga", "version"], Reply::ok("1.8.9\n"));
    assert_eq!(
        openfga::friendly_version(&host, "x").unwrap_err().message,
        "unable to determine OpenFGA version"
    );
}

#[test]
fn a_wipe_removes_the_link_and_destroys_the_dataset_without_recreating_it() {
    let (hh, host) = fga_host();
    hh.put_file("/var/lib/openfga/config.yaml", b"x", 0o600);
    std::fs::create_dir_all(hh.real_path("/etc/openfga")).unwrap();
    std::os::unix::fs::symlink(
        "/var/lib/openfga/config.yaml",
        hh.real_path("/etc/openfga/config.yaml"),
    )
    .unwrap();
    hh.on_command(&["umount"], Reply::ok(""));
    hh.on_command(&["zfs", "destroy"], Reply::ok(""));
    openfga::wipe(&host).unwrap();
    assert_eq!(
        hh.commands(),
        [
            argv(&["umount", "/var/lib/openfga/"]),
            argv(&["zfs", "destroy", "local/openfga"]),
        ]
    );
    assert!(!hh.real_path("/etc/openfga/config.yaml").exists());
    assert!(!hh.real_path("/var/lib/openfga").exists());
}

#[test]
fn the_backup_spec_is_upstreams() {
    let spec = openfga::backup_spec();
    assert_eq!(spec.root, "/var/lib/openfga/");
    assert!(spec.excluded.is_empty() && spec.excluded_unless_complete.is_empty());
    assert_eq!(spec.units, ["openfga.service", "openfga-sync.service"]);
    let paths: Vec<String> = openfga::PATHS.iter().map(|p| p.to_string()).collect();
    spec.validate(&paths).unwrap();
}
