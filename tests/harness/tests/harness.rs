//! The harness itself: its host's recording and refusals, loading, the generic checks and
//! the `incus-osd-plugin-check` command. Plugins come from the workspace build
//! (`cargo build --workspace`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use incus_osd_harness::{
    argv, built_plugin, run_generic_checks, CheckStatus, FileEffect, Harness, HarnessHost,
    LogLevel, LogLine, Reply, UnitCall, UnitOp, CHECKS,
};
use plugin_api::{Host, Kind, Manifest};
use plugin_host::loader::LoadError;
use serde_json::{json, Value};

fn iscsi() -> PathBuf {
    built_plugin("incus_osd_plugin_iscsi")
}

fn manifest(paths: &[&str]) -> Manifest {
    Manifest {
        name: "test".into(),
        kind: Kind::Service,
        version: "1.0.0".into(),
        api_version: plugin_api::API_VERSION.into(),
        hooks: vec![plugin_api::Hook::Get],
        routes: vec![],
        dependencies: vec![],
        start_weight: 0,
        primary: false,
        paths: paths.iter().map(|p| p.to_string()).collect(),
        requires_application: None,
        variants: vec![],
        late_update_check: false,
        backup: None,
        debug_logs: vec![],
    }
}

/// A harness host and an SDK view of its handle (what a plugin would hold).
fn host(paths: &[&str]) -> (HarnessHost, Host) {
    let h = HarnessHost::new(&manifest(paths)).unwrap();
    let sdk = Host::from_handle(h.handle());
    (h, sdk)
}

fn garbage_library() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("libincus_osd_plugin_garbage.so");
    std::fs::write(&path, b"not an ELF file").unwrap();
    (dir, path)
}

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn built_plugin_finds_the_workspace_build() {
    let p = iscsi();
    assert!(p.is_file());
    assert_eq!(p.file_name().unwrap(), "libincus_osd_plugin_iscsi.so");
}

#[test]
fn built_plugin_panics_clearly_when_missing() {
    let err =
        std::panic::catch_unwind(|| built_plugin("incus_osd_plugin_never_built")).unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(
        msg.contains(
            "libincus_osd_plugin_never_built.so not built: run `cargo build --workspace` first"
        ),
        "{msg}"
    );
}

#[test]
fn a_load_failure_carries_the_loaders_reason() {
    let (_dir, path) = garbage_library();
    let err = Harness::load(&path).unwrap_err();
    let load = err
        .downcast_ref::<LoadError>()
        .expect("a LoadError in the chain");
    assert_eq!(load.check(), "open");
    assert!(format!("{err:#}").starts_with("cannot load "), "{err:#}");
}

#[test]
fn loading_the_same_library_twice_gives_independent_instances() {
    let a = Harness::load(iscsi()).unwrap();
    let b = Harness::load(iscsi()).unwrap();
    assert_ne!(a.host().root(), b.host().root());
    let cfg = json!({"enabled": false, "targets": [
        {"target": "iqn.2024-01.com.example:a", "address": "10.0.0.1", "port": 0}
    ]});
    a.put(&json!({ "config": cfg })).unwrap();
    assert_eq!(a.get().unwrap()["config"], cfg);
    assert_eq!(a.host().save_count(), 1);
    assert_eq!(
        b.get().unwrap()["config"],
        json!({"enabled": false, "targets": []})
    );
    assert_eq!(b.host().state(), Value::Null);
    assert_eq!(b.host().save_count(), 0);
}

#[test]
fn invoke_passes_errors_through() {
    let h = Harness::load(iscsi()).unwrap();
    assert_eq!(h.manifest().name, "iscsi");
    let err = h.invoke("nope", b"").unwrap_err();
    assert_eq!(err.status, 501, "{err:?}");
    assert_eq!(
        h.invoke_raw("get", b"").unwrap(),
        h.get_raw().unwrap().into_bytes()
    );
    // iscsi has no backup/restore: the streams still reach the plugin and back.
    assert_eq!(h.backup(&json!({})).unwrap_err().status, 500);
    assert_eq!(h.restore(b"").unwrap_err().status, 500);
}

#[test]
fn files_land_under_the_root_and_only_declared_paths_are_writable() {
    let (h, sdk) = host(&["/etc/test", "/var/lib/test"]);
    sdk.write_file("/etc/test/a/b.conf", b"x=1\n", 0o640)
        .unwrap();
    sdk.create_dir("/var/lib/test/d", 0o700).unwrap();
    sdk.remove("/var/lib/test/d").unwrap();
    assert_eq!(h.read_file("/etc/test/a/b.conf").unwrap(), b"x=1\n");
    assert!(h.real_path("/etc/test/a/b.conf").starts_with(h.root()));
    assert_eq!(
        sdk.read_file("/etc/test/a/b.conf").unwrap().unwrap(),
        b"x=1\n"
    );
    assert_eq!(sdk.read_file("/etc/test/missing").unwrap(), None);

    for refused in ["/etc/passwd", "/etc/testing", "/var/lib/test/../../x"] {
        let err = sdk.write_file(refused, b"", 0o644).unwrap_err();
        assert_eq!(err.status, 500, "{refused}: {err}");
        assert!(sdk.remove(refused).is_err(), "{refused}");
        assert!(sdk.create_dir(refused, 0o755).is_err(), "{refused}");
    }
    assert!(!h.root().join("etc/passwd").exists());
    // Reading is not restricted (other than `..`).
    h.put_file("/etc/os-release", b"ID=incus-os\n", 0o644);
    assert_eq!(
        sdk.read_to_string("/etc/os-release").unwrap().unwrap(),
        "ID=incus-os\n"
    );

    assert_eq!(
        h.file_effects(),
        [
            FileEffect::Written {
                path: "/etc/test/a/b.conf".into(),
                mode: 0o640
            },
            FileEffect::DirCreated {
                path: "/var/lib/test/d".into(),
                mode: 0o700
            },
            FileEffect::Removed {
                path: "/var/lib/test/d".into()
            },
        ]
    );
    assert_eq!(h.files_written(), ["/etc/test/a/b.conf"]);
    assert_eq!(h.files_removed(), ["/var/lib/test/d"]);
}

#[test]
fn a_manifest_without_paths_may_write_nothing() {
    let (h, sdk) = host(&[]);
    let err = sdk.write_file("/etc/x", b"", 0o644).unwrap_err();
    assert!(err.message.contains("no paths declared"), "{err}");
    assert!(h.file_effects().is_empty());
}

#[test]
fn commands_answer_from_the_script_and_are_all_recorded() {
    let (h, sdk) = host(&[]);
    let err = sdk.run(&["foo", "--bar"], SECOND).unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (500, "command not scripted in the harness: foo --bar")
    );

    h.on_command(&["tool"], Reply::ok("generic\n"));
    h.on_command(&["tool", "status"], Reply::ok("specific\n"));
    h.on_command(&["tool", "fail"], Reply::fail(3, "boom\n"));
    assert_eq!(sdk.run(&["tool", "x"], SECOND).unwrap().stdout, "generic\n");
    assert_eq!(
        sdk.run(&["tool", "status", "-v"], SECOND).unwrap().stdout,
        "specific\n"
    );
    let out = sdk.run(&["tool", "fail"], SECOND).unwrap();
    assert_eq!((out.status, out.stderr.as_str()), (3, "boom\n"));
    assert_eq!(
        sdk.run_ok(&["tool", "fail"], SECOND).unwrap_err().message,
        "Failed to run: tool fail: exit status 3 (boom)"
    );

    // A later registration of the same prefix wins; one-shot answers come first.
    h.on_command(&["tool"], Reply::ok("newer\n"));
    h.on_command_times(&["tool"], 2, Reply::fail(1, "not yet"));
    assert_eq!(sdk.run(&["tool"], SECOND).unwrap().status, 1);
    assert_eq!(sdk.run(&["tool", "status"], SECOND).unwrap().status, 1);
    assert_eq!(sdk.run(&["tool"], SECOND).unwrap().stdout, "newer\n");
    // A prefix longer than the argv does not match.
    assert!(sdk.run(&["to"], SECOND).is_err());

    let calls = h.command_calls();
    assert_eq!(calls.len(), 9);
    assert_eq!(calls[0].argv, ["foo", "--bar"]);
    assert_eq!(calls[0].timeout_ms, 1000);
    assert_eq!(h.commands()[1], ["tool", "x"]);
}

#[test]
fn units_keep_an_active_state_and_can_be_made_to_fail() {
    let (h, sdk) = host(&[]);
    let u = "x.service";
    assert_eq!(sdk.unit_active_state(u).unwrap(), "inactive");
    sdk.start_unit(u).unwrap();
    assert_eq!(sdk.unit_active_state(u).unwrap(), "active");
    sdk.stop_unit(u).unwrap();
    assert_eq!(h.unit_state(u), "inactive");
    sdk.restart_unit(u).unwrap();
    assert_eq!(h.unit_state(u), "active");
    sdk.unit(UnitOp::Reload, u).unwrap();
    assert_eq!(h.unit_state(u), "active");

    h.fail_unit(u, "Job for x.service failed");
    let err = sdk.restart_unit(u).unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (500, "Job for x.service failed")
    );
    assert_eq!(sdk.unit_active_state(u).unwrap(), "failed");
    assert!(sdk.stop_unit(u).is_err());
    h.clear_unit_failure(u);
    sdk.stop_unit(u).unwrap();
    h.set_unit_state("y.service", "active");
    assert_eq!(sdk.unit_active_state("y.service").unwrap(), "active");

    let ops: Vec<UnitOp> = h.units().iter().map(|c| c.op).collect();
    assert_eq!(
        ops,
        [
            UnitOp::ActiveState,
            UnitOp::Start,
            UnitOp::ActiveState,
            UnitOp::Stop,
            UnitOp::Restart,
            UnitOp::Reload,
            UnitOp::Restart,
            UnitOp::ActiveState,
            UnitOp::Stop,
            UnitOp::Stop,
            UnitOp::ActiveState,
        ]
    );
    assert_eq!(
        h.units()[1],
        UnitCall {
            op: UnitOp::Start,
            unit: u.into()
        }
    );
}

#[test]
fn the_state_document_and_its_saves_are_tracked() {
    let (h, sdk) = host(&[]);
    assert_eq!(h.state(), Value::Null);
    assert_eq!(sdk.load_state::<Value>().unwrap(), Value::Null);
    sdk.save_state(&json!({"config": {"a": 1}})).unwrap();
    assert_eq!(h.state(), json!({"config": {"a": 1}}));
    assert_eq!(h.save_count(), 1);

    h.fail_next_save("disk full");
    let err = sdk.save_state(&json!({"config": {"a": 2}})).unwrap_err();
    assert_eq!((err.status, err.message.as_str()), (500, "disk full"));
    assert_eq!(h.state(), json!({"config": {"a": 1}}));
    assert_eq!(h.save_count(), 1);
    sdk.save_state(&json!({"config": {"a": 3}})).unwrap();
    assert_eq!(h.save_count(), 2);

    h.set_state(json!({"config": {"a": 4}}));
    assert_eq!(
        sdk.load_state::<Value>().unwrap(),
        json!({"config": {"a": 4}})
    );
    assert_eq!(h.save_count(), 2);
}

#[test]
fn a_failed_save_fails_the_put_and_keeps_the_old_config() {
    let h = Harness::load(iscsi()).unwrap();
    h.host().fail_next_save("disk full");
    let err = h
        .put(&json!({"config": {"enabled": false, "targets": []}}))
        .unwrap_err();
    assert_eq!((err.status, err.message.as_str()), (500, "disk full"));
    assert_eq!(h.host().state(), Value::Null);
}

#[test]
fn logs_are_recorded_and_effects_can_be_cleared() {
    let (h, sdk) = host(&["/etc/test"]);
    sdk.warn("careful");
    sdk.info("hello");
    assert_eq!(
        h.logs(),
        [
            LogLine {
                level: LogLevel::Warn,
                message: "careful".into()
            },
            LogLine {
                level: LogLevel::Info,
                message: "hello".into()
            },
        ]
    );
    sdk.write_file("/etc/test/x", b"", 0o600).unwrap();
    sdk.start_unit("x.service").unwrap();
    let _ = sdk.run(&["x"], SECOND);
    sdk.save_state(&json!({})).unwrap();
    h.clear_effects();
    assert!(h.logs().is_empty());
    assert!(h.units().is_empty());
    assert!(h.file_effects().is_empty());
    assert!(h.commands().is_empty());
    assert_eq!(h.unit_state("x.service"), "active");
    assert_eq!(h.save_count(), 1);
}

#[test]
fn load_with_prepares_the_host_before_the_constructor() {
    let h = Harness::load_with(iscsi(), |host| {
        host.set_state(json!({"config": {"enabled": true, "targets": []}}));
        host.put_file(
            "/etc/iscsi/initiatorname.iscsi",
            b"InitiatorName=iqn.2004-10.org.linuxcontainers:01:x\n",
            0o600,
        );
    })
    .unwrap();
    assert_eq!(
        h.get().unwrap(),
        json!({
            "state": {"initiator_name": "iqn.2004-10.org.linuxcontainers:01:x"},
            "config": {"enabled": true, "targets": []}
        })
    );
}

#[test]
fn generic_checks_pass_on_iscsi_and_skip_missing_hooks() {
    let outcomes = run_generic_checks(iscsi());
    let names: Vec<&str> = outcomes.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, CHECKS);
    for o in &outcomes {
        let expected = if o.name == "backup-restore" || o.name == "provider-ops" {
            CheckStatus::Skipped
        } else {
            CheckStatus::Passed
        };
        assert_eq!(o.status, expected, "{o:?}");
    }
    assert_eq!(
        outcomes[0].detail,
        format!(
            "service iscsi 0.1.0 (plugin-api {})",
            plugin_api::API_VERSION
        )
    );
    assert!(outcomes[6].detail.contains("backup"), "{:?}", outcomes[6]);
}

#[test]
fn generic_checks_report_a_library_that_does_not_load() {
    let (_dir, path) = garbage_library();
    let outcomes = run_generic_checks(&path);
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0].name, "manifest");
    assert_eq!(outcomes[0].status, CheckStatus::Failed);
    assert!(
        outcomes[0]
            .detail
            .starts_with("open check failed: not a loadable shared library"),
        "{:?}",
        outcomes[0]
    );
}

fn check_cli(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_incus-osd-plugin-check"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[test]
fn the_cli_prints_one_line_per_check_and_a_summary() {
    let lib = iscsi();
    let (code, out) = check_cli(&[lib.as_os_str()]);
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("== {}", lib.display()));
    assert_eq!(lines[1], "PASS manifest");
    assert_eq!(lines[6], "PASS reset");
    assert!(lines[7].starts_with("SKIP backup-restore: "), "{out}");
    assert_eq!(*lines.last().unwrap(), "6 passed, 0 failed, 2 skipped");
}

#[test]
fn the_cli_fails_when_a_library_does_not_load() {
    let lib = iscsi();
    let (_dir, garbage) = garbage_library();
    let (code, out) = check_cli(&[garbage.as_os_str(), lib.as_os_str()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL manifest: open check failed: not a loadable shared library"),
        "{out}"
    );
    assert_eq!(out.lines().last().unwrap(), "6 passed, 1 failed, 2 skipped");
}

#[test]
fn the_cli_speaks_json() {
    let lib = iscsi();
    let (code, out) = check_cli(&["--json".as_ref(), lib.as_os_str()]);
    assert_eq!(code, 0, "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (doc["passed"].clone(), doc["failed"].clone()),
        (json!(6), json!(0))
    );
    assert_eq!(doc["skipped"], 2);
    assert_eq!(doc["libraries"][0]["checks"][0]["name"], "manifest");
    assert_eq!(doc["libraries"][0]["checks"][0]["status"], "pass");
}

/// A failing check makes the command fail and says why; a skipped one is counted apart.
#[test]
fn the_cli_reports_a_failed_check_with_its_reason() {
    let lib = built_plugin("fixture_nc_bad_json");
    let (code, out) = check_cli(&[lib.as_os_str()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("\nFAIL bad-json: `{not json`: PUT succeeded ({}) instead of answering 400"),
        "{out}"
    );
    assert!(out.contains("\nSKIP backup-restore: "), "{out}");
    assert_eq!(out.lines().last().unwrap(), "5 passed, 1 failed, 2 skipped");
}

#[test]
fn the_cli_wants_at_least_one_path() {
    let (code, _) = check_cli(&[]);
    assert_eq!(code, 2);
}

/// What a panicking `f` said.
fn panic_text(f: impl FnOnce()) -> String {
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_err();
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

const NO_ADDRESS: &str = "target 0: address is empty";

fn no_address() -> Value {
    json!({"enabled": true, "targets": [
        {"target": "iqn.2024-01.com.example:a", "address": "", "port": 3260}
    ]})
}

#[test]
fn load_built_loads_the_workspace_build_and_panics_with_the_reason() {
    let h = Harness::load_built("incus_osd_plugin_iscsi");
    assert_eq!(h.manifest().name, "iscsi");
    assert_eq!(h.path(), iscsi());
    let msg = panic_text(|| {
        Harness::load_built("incus_osd_plugin_never_built");
    });
    assert!(
        msg.contains("libincus_osd_plugin_never_built.so not built"),
        "{msg}"
    );
}

#[test]
fn put_config_sends_the_config_and_apply_config_forgets_its_effects() {
    let h = Harness::load_built("incus_osd_plugin_iscsi");
    let cfg = json!({"enabled": false, "targets": []});
    h.put_config(&cfg).unwrap();
    assert_eq!(h.get().unwrap()["config"], cfg);
    assert_eq!(h.host().save_count(), 1);

    let other = json!({"enabled": false, "targets": [
        {"target": "iqn.2024-01.com.example:a", "address": "10.0.0.1", "port": 0}
    ]});
    h.apply_config(&other);
    assert_eq!(h.host().state(), json!({ "config": other }));
    assert_eq!(h.host().save_count(), 2);
    // The effects of the applied PUT are forgotten: nothing since.
    h.host().assert_untouched("after apply_config");

    let msg = panic_text(|| h.apply_config(&no_address()));
    assert!(msg.contains(&format!("failed: 400 {NO_ADDRESS}")), "{msg}");
}

#[test]
fn assert_config_refused_takes_a_clean_refusal_and_returns_it() {
    let h = Harness::load_built("incus_osd_plugin_iscsi");
    h.host()
        .set_saved_config(&json!({"enabled": false, "targets": []}));
    let err = h.assert_config_refused(&no_address(), NO_ADDRESS);
    assert_eq!((err.status, err.message.as_str()), (400, NO_ADDRESS));
}

#[test]
fn assert_config_refused_fails_on_an_accepted_config_or_another_message() {
    let h = Harness::load_built("incus_osd_plugin_iscsi");
    let msg = panic_text(|| {
        h.assert_config_refused(&json!({"enabled": false, "targets": []}), NO_ADDRESS);
    });
    assert!(msg.contains("was accepted"), "{msg}");
    let msg = panic_text(|| {
        h.assert_config_refused(&no_address(), "something else");
    });
    assert!(msg.contains(NO_ADDRESS), "{msg}");
}

#[test]
fn assert_config_refused_fails_when_the_refusal_left_a_trace() {
    // A fixture that saves the config it then refuses.
    let h = Harness::load_built("fixture_nc_dirty_refusal");
    let bad = json!({"enabled": "yes"});
    let message = h.put_config(&bad).unwrap_err().message;
    let h = Harness::load_built("fixture_nc_dirty_refusal");
    let msg = panic_text(|| {
        h.assert_config_refused(&bad, &message);
    });
    assert!(msg.contains(&format!("{message}: state saved")), "{msg}");
}

#[test]
fn host_helpers_read_files_logs_and_unit_changes() {
    let (h, sdk) = host(&["/etc/test"]);
    sdk.write_file("/etc/test/a", b"text\n", 0o640).unwrap();
    sdk.create_dir("/etc/test/d", 0o700).unwrap();
    assert_eq!(h.read_text("/etc/test/a"), "text\n");
    assert_eq!(h.mode("/etc/test/a"), 0o640);
    assert_eq!(h.mode("/etc/test/d"), 0o700);
    let msg = panic_text(|| {
        h.read_text("/etc/test/missing");
    });
    assert!(msg.contains("/etc/test/missing is missing"), "{msg}");
    assert_eq!(
        h.file_effects(),
        [
            FileEffect::written("/etc/test/a", 0o640),
            FileEffect::dir_created("/etc/test/d", 0o700),
        ]
    );
    sdk.remove("/etc/test/a").unwrap();
    assert_eq!(
        h.file_effects().last().unwrap(),
        &FileEffect::removed("/etc/test/a")
    );

    sdk.warn("first");
    sdk.info("not a warning");
    sdk.warn("second");
    sdk.error("broken");
    assert_eq!(h.warnings(), ["first", "second"]);
    assert_eq!(h.logged(LogLevel::Error), ["broken"]);
    h.assert_not_logged(&["tskey-123"]);
    let msg = panic_text(|| h.assert_not_logged(&["tskey-123", "cond"]));
    assert!(
        msg.contains("a secret was logged") && msg.contains("second"),
        "{msg}"
    );

    sdk.unit_active_state("x.service").unwrap();
    sdk.start_unit("x.service").unwrap();
    sdk.unit_active_state("x.service").unwrap();
    sdk.stop_unit("x.service").unwrap();
    assert_eq!(
        h.unit_changes(),
        [
            UnitCall::new(UnitOp::Start, "x.service"),
            UnitCall::new(UnitOp::Stop, "x.service"),
        ]
    );
    assert_eq!(h.units().len(), 4);
    assert_eq!(
        argv(&["a", "b c"]),
        vec!["a".to_string(), "b c".to_string()]
    );
}

#[test]
fn set_saved_config_is_what_the_plugin_starts_from() {
    let h = Harness::load_with(iscsi(), |host| {
        host.set_saved_config(&json!({"enabled": false, "targets": [
            {"target": "iqn.2024-01.com.example:a", "address": "10.0.0.1", "port": 0}
        ]}));
    })
    .unwrap();
    assert_eq!(
        h.get().unwrap()["config"]["targets"][0]["address"],
        "10.0.0.1"
    );
    assert_eq!(h.host().save_count(), 0);
}
