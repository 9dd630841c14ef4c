//! The real daemon binary with the workspace's plugins and the negative fixtures, as
//! built (tier 2).

use incus_osd_integration::{get_ok, request, workspace_plugins, Daemon, Root};
use serde_json::{json, Value};

fn failures(plugins: &Value) -> Vec<(String, String, String)> {
    let mut v: Vec<(String, String, String)> = plugins["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let file = f["path"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string();
            (
                file,
                f["check"].as_str().unwrap().to_string(),
                f["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn every_workspace_plugin_loads_and_the_ported_service_is_served() {
    let root = Root::new();
    let plugins = workspace_plugins();
    assert!(!plugins.is_empty());
    for p in &plugins {
        std::fs::copy(p, root.plugin_dir().join(p.file_name().unwrap())).unwrap();
    }
    let d = Daemon::start(&root, &[]);
    let listing = get_ok(&d.socket, "/1.0/plugins").await;
    assert_eq!(listing["failed"], json!([]), "{listing}");
    assert_eq!(listing["loaded"].as_array().unwrap().len(), plugins.len());
    let services = get_ok(&d.socket, "/1.0/services").await;
    assert!(services
        .as_array()
        .unwrap()
        .contains(&json!("/1.0/services/iscsi")));
    for url in services.as_array().unwrap() {
        let v = get_ok(&d.socket, url.as_str().unwrap()).await;
        assert!(
            v["state"].is_object() && v["config"].is_object(),
            "{url}: {v}"
        );
    }
    let iscsi = get_ok(&d.socket, "/1.0/services/iscsi").await;
    assert_eq!(
        iscsi,
        json!({"state": {"initiator_name": ""}, "config": {"enabled": false, "targets": []}})
    );
    let env = get_ok(&d.socket, "/1.0").await["environment"].clone();
    assert_eq!(env["os_version"], "202511041601");
    assert_eq!(env["system_is_ready"], true);
}

#[tokio::test]
async fn broken_and_incompatible_plugins_are_refused_and_the_daemon_keeps_serving() {
    let root = Root::new();
    root.install_plugin(
        &incus_osd_integration::built_plugin("incus_osd_plugin_iscsi"),
        "iscsi",
    );
    root.install_plugin(
        &incus_osd_integration::built_plugin("incus_osd_plugin_iscsi"),
        "iscsi_copy",
    );
    root.install_fixture("faulty", "faulty");
    root.install_fixture("ctor_error", "ctor_error");
    root.install_fixture("ctor_panic", "ctor_panic");
    root.install_fixture("newer_minor", "newer_minor");
    root.install_fixture("other_major", "other_major");
    root.install_fixture("layout_mismatch", "layout_mismatch");
    root.install_fixture("not_abi_stable", "not_abi_stable");
    // Built against the contract as released at 1.0.0: loads on this newer host. Its file
    // name sorts first, so the current plugins are checked after it (which once failed).
    root.install_fixture("older_minor", "a_older_minor");
    std::fs::write(
        root.plugin_dir().join("libincus_osd_plugin_garbage.so"),
        b"definitely not ELF",
    )
    .unwrap();
    let d = Daemon::start(&root, &[]);

    let listing = get_ok(&d.socket, "/1.0/plugins").await;
    let loaded: Vec<&str> = listing["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(loaded, ["faulty", "iscsi", "older-minor"]);
    let failed = failures(&listing);
    let checks: Vec<(&str, &str)> = failed
        .iter()
        .map(|(f, c, _)| (f.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        checks,
        [
            ("libincus_osd_plugin_ctor_error.so", "constructor"),
            ("libincus_osd_plugin_ctor_panic.so", "constructor"),
            ("libincus_osd_plugin_garbage.so", "open"),
            ("libincus_osd_plugin_iscsi_copy.so", "duplicate-name"),
            ("libincus_osd_plugin_layout_mismatch.so", "layout"),
            ("libincus_osd_plugin_newer_minor.so", "api-version"),
            ("libincus_osd_plugin_not_abi_stable.so", "abi-header"),
            ("libincus_osd_plugin_other_major.so", "api-version"),
        ]
    );
    for (file, _, reason) in &failed {
        assert!(
            reason.len() < 400 && !reason.contains('\n'),
            "{file}: reason too long: {reason}"
        );
    }
    let reason = |f: &str| failed.iter().find(|x| x.0 == f).unwrap().2.clone();
    assert!(reason("libincus_osd_plugin_ctor_panic.so").contains("panicked"));
    assert!(reason("libincus_osd_plugin_iscsi_copy.so")
        .contains("a plugin of that name was already loaded from"));
    assert!(reason("libincus_osd_plugin_newer_minor.so").contains("too new"));
    assert!(reason("libincus_osd_plugin_other_major.so").contains("major"));
    // The log says the same, briefly.
    let log = d.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("plugin not loaded"))
        .collect();
    assert_eq!(lines.len(), 8, "{log}");
    assert!(lines.iter().all(|l| l.len() < 800), "{lines:#?}");

    // A panicking plugin: a 500, degraded, and everything else still served.
    let (s, _) = request(
        &d.socket,
        "PUT",
        "/1.0/services/faulty",
        r#"{"config":{"panic_on_get":true}}"#,
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = request(&d.socket, "GET", "/1.0/services/faulty", "").await;
    assert_eq!(s, 500);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("deliberate panic in get"),
        "{v}"
    );
    assert_eq!(
        get_ok(&d.socket, "/1.0/services/iscsi").await["config"]["enabled"],
        false
    );
    assert_eq!(
        get_ok(&d.socket, "/1.0").await["environment"]["os_name"],
        "IncusOS"
    );
    let listing = get_ok(&d.socket, "/1.0/plugins").await;
    let faulty = listing["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "faulty")
        .unwrap()
        .clone();
    assert!(faulty["degraded"]
        .as_str()
        .unwrap()
        .contains("deliberate panic"));
    // The upstream listings are untouched by the extension.
    assert_eq!(get_ok(&d.socket, "/").await, json!(["/1.0"]));
}

#[tokio::test]
async fn a_hung_plugin_call_times_out_and_the_daemon_keeps_serving() {
    let root = Root::new();
    root.install_fixture("faulty", "faulty");
    let mut d = Daemon::start(&root, &["--plugin-change-timeout", "0.5"]);
    let (s, v) = request(
        &d.socket,
        "PUT",
        "/1.0/services/faulty",
        r#"{"config":{"sleep_ms":5000}}"#,
    )
    .await;
    assert_eq!(s, 500, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("did not finish within 0.5s"),
        "{v}"
    );
    // Another mutating call waits for the hung one, then reports busy rather than hanging.
    let (s, v) = request(&d.socket, "PUT", "/1.0/services/faulty", r#"{"config":{}}"#).await;
    assert_eq!(s, 500, "{v}");
    assert!(v["error"].as_str().unwrap().contains("busy"), "{v}");
    // Reads and other endpoints are served meanwhile.
    assert_eq!(
        get_ok(&d.socket, "/1.0").await["environment"]["system_is_ready"],
        true
    );
    assert!(d.is_running());
    assert!(d.terminate().success());
}

#[tokio::test]
async fn a_panic_in_a_start_hook_is_logged_and_the_daemon_starts() {
    let root = Root::new();
    std::fs::create_dir_all(root.path().join("var/lib/incus-os")).unwrap();
    std::fs::write(
        root.state_file(),
        r#"{"schema_version": 1, "plugins": {"faulty": {"config": {"panic_on_start": true}}}}"#,
    )
    .unwrap();
    root.install_fixture("faulty", "faulty");
    let d = Daemon::start(&root, &[]);
    let log = d.log();
    assert!(
        log.contains("start failed") && log.contains("panic"),
        "{log}"
    );
    assert_eq!(
        get_ok(&d.socket, "/1.0").await["environment"]["system_is_ready"],
        true
    );
}

#[tokio::test]
async fn config_survives_a_restart_and_sigterm_stops_plugins_in_reverse_order() {
    let root = Root::new();
    root.install_plugin(
        &incus_osd_integration::built_plugin("incus_osd_plugin_iscsi"),
        "iscsi",
    );
    root.install_fixture("faulty", "faulty");
    let mut d = Daemon::start(&root, &[]);
    let cfg = json!({"enabled": false, "targets": [{"target": "iqn.2004-10.org.example:disk1", "address": "192.0.2.10", "port": 3260}]});
    let (s, v) = request(
        &d.socket,
        "PUT",
        "/1.0/services/iscsi",
        &json!({"config": cfg}).to_string(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let status = d.terminate();
    assert!(status.success(), "{status:?}");
    assert!(!root.socket().exists(), "socket removed at shutdown");
    let log = d.log();
    let pos = |needle: &str| {
        log.find(needle)
            .unwrap_or_else(|| panic!("{needle} not in log:\n{log}"))
    };
    // faulty (weight 0) starts before iscsi (weight 20); stops after it.
    assert!(
        pos("started plugin=faulty") < pos("started plugin=iscsi"),
        "{log}"
    );
    assert!(
        pos("stopped plugin=iscsi") < pos("stopped plugin=faulty"),
        "{log}"
    );

    let d = Daemon::start(&root, &[]);
    assert_eq!(
        get_ok(&d.socket, "/1.0/services/iscsi").await["config"],
        cfg
    );
}

#[tokio::test]
async fn a_second_daemon_on_the_same_socket_is_refused() {
    let root = Root::new();
    let first = Daemon::start(&root, &[]);
    let mut second = Daemon::spawn(&root, &[]);
    assert!(!second.wait_exit().success());
    assert!(
        second
            .log()
            .contains("another incus-osd is already serving on"),
        "{}",
        second.log()
    );
    // The first one is unharmed.
    assert_eq!(
        get_ok(&first.socket, "/1.0").await["environment"]["os_name"],
        "IncusOS"
    );
}

#[tokio::test]
async fn a_corrupt_state_file_stops_the_start_and_is_kept() {
    let root = Root::new();
    std::fs::create_dir_all(root.path().join("var/lib/incus-os")).unwrap();
    std::fs::write(root.state_file(), b"{\"schema_version\": 1, \"plugins\": ").unwrap();
    let mut d = Daemon::spawn(&root, &[]);
    assert!(!d.wait_exit().success());
    assert!(d.log().contains("is corrupt"), "{}", d.log());
    assert_eq!(
        std::fs::read(root.state_file()).unwrap(),
        b"{\"schema_version\": 1, \"plugins\": "
    );
    assert!(!root.socket().exists(), "no socket left behind");
}

#[tokio::test]
async fn tui_messages_land_in_the_daemon_log_at_their_level() {
    let root = Root::new();
    let d = Daemon::start(&root, &[]);
    for (level, text) in [
        ("INFO", "Test message one"),
        ("WARN", "Test message two"),
        ("ERROR", "Test message three"),
    ] {
        let body = json!({"level": level, "message": text}).to_string();
        let (s, v) = request(&d.socket, "POST", "/internal/tui/:write-message", &body).await;
        assert_eq!(s, 200, "{v}");
    }
    let log = d.log();
    // The daemon logs in `LEVEL message` form, which is what lands in the journal's MESSAGE.
    for needle in [
        "INFO Test message one",
        "WARN Test message two",
        "ERROR Test message three",
        "INFO System is ready",
    ] {
        assert!(log.contains(needle), "{needle} missing from:\n{log}");
    }
}

#[tokio::test]
async fn links_in_the_root_keep_start_hooks_and_puts_inside_it() {
    let root = Root::new();
    let outside = tempfile::tempdir().unwrap();
    let out = outside.path();
    let out_rel = out.strip_prefix("/").unwrap();
    // `var/lib` climbs out of the root with `..`: as in a chroot it stops at the root, so
    // it means `<root>/<outside's path>`, a mirror of the outside directory in the root.
    let mirror = root.path().join(out_rel);
    let state = br#"{"schema_version": 1, "plugins": {"iscsi": {"config": {"enabled": true, "targets": []}}}}"#;
    for base in [out, mirror.as_path()] {
        std::fs::create_dir_all(base.join("iscsi/nodes")).unwrap();
        std::fs::write(base.join("iscsi/nodes/keep"), b"keep").unwrap();
        std::fs::create_dir_all(base.join("incus-os")).unwrap();
        std::fs::write(base.join("incus-os/state.json"), state).unwrap();
    }
    std::fs::create_dir_all(root.path().join("var")).unwrap();
    std::os::unix::fs::symlink(
        format!("../../../../../../../../../../{}", out_rel.display()),
        root.path().join("var/lib"),
    )
    .unwrap();
    root.install_plugin(
        &incus_osd_integration::built_plugin("incus_osd_plugin_iscsi"),
        "iscsi",
    );
    root.install_plugin(
        &incus_osd_integration::built_plugin("incus_osd_plugin_usbip"),
        "usbip",
    );
    let d = Daemon::start(&root, &[]);
    // iscsi's start hook removes its state directory `/var/lib/iscsi`: that resolves to the
    // mirror, not under what iscsi declared, so the removal is refused with the reason.
    let log = d.log();
    let refusal = format!(
        "path \"/var/lib/iscsi\" resolves to \"/{}/iscsi\" through a symlink, outside what this plugin may write",
        out_rel.display()
    );
    assert!(log.contains(&refusal), "{log}");
    assert_eq!(
        std::fs::read(mirror.join("iscsi/nodes/keep")).unwrap(),
        b"keep"
    );
    // The daemon's own state follows the link inside the root: it loaded the mirror's.
    assert_eq!(
        get_ok(&d.socket, "/1.0/services/iscsi").await["config"]["enabled"],
        true
    );
    let (s, v) = request(
        &d.socket,
        "PUT",
        "/1.0/services/usbip",
        r#"{"config":{"enabled":false,"targets":[]}}"#,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let saved = std::fs::read_to_string(mirror.join("incus-os/state.json")).unwrap();
    assert!(saved.contains("usbip"), "{saved}");
    // Outside the root: exactly as before.
    assert_eq!(
        std::fs::read(out.join("iscsi/nodes/keep")).unwrap(),
        b"keep"
    );
    assert_eq!(
        std::fs::read(out.join("incus-os/state.json")).unwrap(),
        state
    );
    let mut names: Vec<_> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["incus-os", "iscsi"]);
}

/// Sets the permission bits of `p`.
fn chmod(p: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test]
async fn a_plugin_name_in_two_directories_loads_from_the_first_directory() {
    let root = Root::new();
    let iscsi = incus_osd_integration::built_plugin("incus_osd_plugin_iscsi");
    // The second directory's copy sorts first by name: the directory order decides.
    let second = root.path().join("more-plugins");
    std::fs::create_dir(&second).unwrap();
    root.install_plugin(&iscsi, "zz_iscsi");
    let refused = second.join("libincus_osd_plugin_aa_iscsi.so");
    std::fs::copy(&iscsi, &refused).unwrap();
    let d = Daemon::start(&root, &["--plugins", second.to_str().unwrap()]);
    let loaded_path = root.plugin_dir().join("libincus_osd_plugin_zz_iscsi.so");

    let listing = get_ok(&d.socket, "/1.0/plugins").await;
    let loaded = listing["loaded"].as_array().unwrap();
    assert_eq!(loaded.len(), 1, "{listing}");
    assert_eq!(loaded[0]["name"], "iscsi");
    assert_eq!(
        loaded[0]["path"],
        loaded_path.to_str().unwrap(),
        "{listing}"
    );
    let failed = listing["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{listing}");
    assert_eq!(failed[0]["path"], refused.to_str().unwrap());
    assert_eq!(failed[0]["check"], "duplicate-name");
    let reason = failed[0]["reason"].as_str().unwrap();
    for needle in [
        refused.to_str().unwrap(),
        loaded_path.to_str().unwrap(),
        "the first plugin directory wins",
    ] {
        assert!(reason.contains(needle), "{needle} missing from: {reason}");
    }
    // Loudly in the log too, with both paths.
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("plugin not loaded"))
        .unwrap_or_else(|| panic!("no refusal in the log:\n{log}"));
    assert!(
        line.contains(refused.to_str().unwrap()) && line.contains(loaded_path.to_str().unwrap()),
        "{line}"
    );
}

#[tokio::test]
async fn only_trusted_plugin_files_load_and_the_others_are_listed_with_the_reason() {
    let root = Root::new();
    let lib = |n: &str| incus_osd_integration::built_plugin(&format!("incus_osd_plugin_{n}"));
    let dir = root.plugin_dir();
    // As cargo builds it (owner: this user, umask-produced mode): loads.
    root.install_plugin(&lib("usbip"), "usbip");
    // Group-writable.
    root.install_plugin(&lib("iscsi"), "iscsi");
    chmod(&dir.join("libincus_osd_plugin_iscsi.so"), 0o775);
    // A symlink to a library that would load.
    std::os::unix::fs::symlink(lib("nvme"), dir.join("libincus_osd_plugin_nvme.so")).unwrap();
    // Owned by another user (only root can give a file away).
    root.install_plugin(&lib("lvm"), "lvm");
    let lvm = dir.join("libincus_osd_plugin_lvm.so");
    let as_root = std::os::unix::fs::chown(&lvm, Some(4242), None).is_ok();
    if !as_root {
        eprintln!("SKIPPED (needs root): a library owned by another user");
        std::fs::remove_file(&lvm).unwrap();
    }
    // A world-writable directory: refused as a whole.
    let open_dir = root.path().join("open-plugins");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::copy(
        lib("multipath"),
        open_dir.join("libincus_osd_plugin_multipath.so"),
    )
    .unwrap();
    chmod(&open_dir, 0o777);

    let d = Daemon::start(&root, &["--plugins", open_dir.to_str().unwrap()]);
    let listing = get_ok(&d.socket, "/1.0/plugins").await;
    let loaded: Vec<&str> = listing["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(loaded, ["usbip"], "{listing}");
    let failed = failures(&listing);
    let mut expected = vec![
        (
            "libincus_osd_plugin_iscsi.so",
            "writable by group (mode 0775)",
        ),
        ("libincus_osd_plugin_nvme.so", "is a symbolic link"),
        ("open-plugins", "writable by group and others (mode 0777)"),
    ];
    if as_root {
        expected.insert(1, ("libincus_osd_plugin_lvm.so", "is owned by uid 4242"));
    }
    assert_eq!(failed.len(), expected.len(), "{failed:#?}");
    for ((file, check, reason), (want_file, want_reason)) in failed.iter().zip(&expected) {
        assert_eq!((file.as_str(), check.as_str()), (*want_file, "trust"));
        assert!(reason.contains(want_reason), "{file}: {reason}");
    }
    // The daemon serves what did load.
    assert_eq!(
        get_ok(&d.socket, "/1.0/services/usbip").await["config"]["enabled"],
        false
    );
}
