//! The loader refuses broken or incompatible plugin libraries with a short reason naming
//! the failed check, and survives plugins that fail or panic in their constructor or hooks.
//!
//! Uses the fixture plugins of `tests/fixtures/*`, built by `cargo build --workspace`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use incus_osd::plugins::loader::{open, LoadError, PluginLibrary};
use incus_osd_harness::{built_plugin, Harness, HarnessHost};
use plugin_api::abi::HostHandle;
use serde_json::json;

// ---------------------------------------------------------------------------------------
// Helpers

fn fixture(name: &str) -> PathBuf {
    built_plugin(&format!("fixture_{}", name.replace('-', "_")))
}

#[track_caller]
fn refused(path: &Path) -> LoadError {
    match open(path) {
        Ok(lib) => panic!("{} was accepted: {lib:?}", path.display()),
        Err(e) => {
            eprintln!("{}: [{}] {e}", path.display(), e.check());
            e
        }
    }
}

#[track_caller]
fn opened(path: &Path) -> PluginLibrary {
    open(path).unwrap_or_else(|e| panic!("{}: [{}] {e}", path.display(), e.check()))
}

/// Instantiates `lib` with a fresh harness host, expecting the constructor to fail.
#[track_caller]
fn constructor_error(lib: &PluginLibrary) -> LoadError {
    let host = HarnessHost::new(&lib.manifest).expect("harness host");
    let handle: HostHandle = host.handle();
    match lib.instantiate(handle) {
        Ok(_) => panic!("{} was instantiated", lib.manifest.name),
        Err(e) => {
            eprintln!("{}: [{}] {e}", lib.manifest.name, e.check());
            e
        }
    }
}

/// `API_VERSION` with `f` applied to (major, minor).
fn api_version_with(f: impl FnOnce(u64, u64) -> (u64, u64)) -> String {
    let mut parts = plugin_api::API_VERSION
        .split('.')
        .map(|p| p.parse::<u64>().unwrap());
    let (major, minor) = f(parts.next().unwrap(), parts.next().unwrap());
    format!("{major}.{minor}.0")
}

// ---------------------------------------------------------------------------------------
// Static checks

#[test]
fn garbage_bytes_are_not_a_library() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("libincus_osd_plugin_x.so");
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 13) as u8).collect();
    std::fs::write(&path, garbage).unwrap();
    let err = refused(&path);
    assert_eq!(err.check(), "open", "{err}");
}

/// The C library this test process runs with, found through `/proc/self/maps`.
fn system_libc() -> PathBuf {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(PathBuf::from)
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libc.so") || n.starts_with("libc-"))
        })
        .expect("libc is mapped into the test process")
}

#[test]
fn a_real_library_that_is_not_a_plugin_has_no_version_symbol() {
    let libc = system_libc();
    let err = refused(&libc);
    assert_eq!(err.check(), "version-symbol", "{err}");
    assert!(
        err.to_string()
            .contains(plugin_api::version::VERSION_SYMBOL),
        "{err}"
    );
}

#[test]
fn a_library_without_abi_stable_header_is_refused() {
    let err = refused(&fixture("not-abi-stable"));
    assert_eq!(err.check(), "abi-header", "{err}");
}

#[test]
fn a_root_module_with_another_layout_is_refused_with_a_short_reason() {
    let err = refused(&fixture("layout-mismatch"));
    assert_eq!(err.check(), "layout", "{err}");
    let reason = err.to_string();
    eprintln!("layout-mismatch reason ({} chars): {reason}", reason.len());
    assert!(
        reason.len() < 400,
        "reason too long ({} chars): {reason}",
        reason.len()
    );
    assert!(
        !reason.contains('\n'),
        "reason spans several lines: {reason}"
    );
    // abi_stable compares the package a type comes from before its fields, so for a root
    // module declared in another crate the difference it names is the package.
    assert_eq!(
        reason,
        "root module layout mismatch: mismatched package: plugin has fixture-layout-mismatch, host has incus-osd-plugin-api"
    );
}

#[test]
fn a_plugin_for_a_newer_minor_version_is_refused_naming_both_versions() {
    let err = refused(&fixture("newer-minor"));
    assert_eq!(err.check(), "api-version", "{err}");
    let newer = api_version_with(|major, minor| (major, minor + 1));
    let msg = err.to_string();
    assert!(
        msg.contains(plugin_api::API_VERSION),
        "host version missing: {msg}"
    );
    assert!(
        msg.contains(&newer),
        "plugin version {newer} missing: {msg}"
    );
}

/// `tests/fixtures/older-minor` is built against `tests/fixtures/api-1.0`, the contract as
/// released at 1.0.0, before `HostOps` grew (`run_masked`, 1.1). The host loads it, and
/// every hook and host capability of 1.0 works for it: constructor, get, put (validation,
/// files, units, state, rollback), start, stop, routes (commands, file listing, stat, read,
/// directory creation, removal) and logs.
#[test]
fn a_plugin_built_for_an_older_minor_version_loads_and_all_it_knows_works() {
    use incus_osd_harness::{FileEffect, Reply, UnitCall, UnitOp};

    const UNIT: &str = "older-minor.service";
    const FILE: &str = "/etc/older-minor/greeting";
    let path = fixture("older-minor");
    let lib = opened(&path);
    assert_eq!(lib.manifest.api_version, "1.0.0");
    assert!(
        api_version_with(|major, minor| (major, minor)) != "1.0.0",
        "the host must be newer than the fixture's contract for this test to mean anything"
    );

    let plugin = Harness::load(&path).expect("a 1.0 plugin loads on this host");
    let host = plugin.host();
    let logs: Vec<String> = host.logs().into_iter().map(|l| l.message).collect();
    assert_eq!(logs, ["older-minor: built against plugin-api 1.0.0"]);

    // get and put: files, units and state.
    assert_eq!(
        plugin.get().expect("get"),
        json!({"state": {"file": null, "unit": "inactive"}, "config": {"greeting": ""}})
    );
    plugin
        .put(&json!({"config": {"greeting": "hello"}}))
        .expect("put");
    assert_eq!(host.read_file(FILE).as_deref(), Some(&b"hello"[..]));
    assert_eq!(
        host.file_effects(),
        [FileEffect::Written {
            path: FILE.into(),
            mode: 0o640
        }]
    );
    assert_eq!(host.unit_state(UNIT), "active");
    assert_eq!(host.state(), json!({"config": {"greeting": "hello"}}));
    assert_eq!(
        plugin.get().expect("get")["state"],
        json!({"file": "hello", "unit": "active"})
    );

    // A refused config and a failed update change nothing (Undo over the new host).
    host.clear_effects();
    let err = plugin
        .put(&json!({"config": {"greeting": "a\nb"}}))
        .expect_err("newline refused");
    assert_eq!(err.status, 400, "{err:?}");
    host.assert_untouched("refused put");
    host.fail_unit(UNIT, "unit older-minor.service failed");
    let err = plugin
        .put(&json!({"config": {"greeting": "other"}}))
        .expect_err("failing unit");
    assert_eq!(err.status, 500, "{err:?}");
    assert_eq!(host.read_file(FILE).as_deref(), Some(&b"hello"[..]));
    assert_eq!(host.state(), json!({"config": {"greeting": "hello"}}));
    host.clear_unit_failure(UNIT);

    // start and stop.
    host.clear_effects();
    plugin.start().expect("start");
    assert_eq!(
        host.units(),
        [UnitCall {
            op: UnitOp::Restart,
            unit: UNIT.into()
        }]
    );
    plugin.stop().expect("stop");

    // Routes: commands, plain and with 1.0's SDK-side redaction.
    host.on_command(&["greet"], Reply::ok("hi\n"));
    let out = plugin
        .invoke("run", br#"{"body": {"argv": ["greet", "x"]}}"#)
        .expect("run");
    assert_eq!(out, json!({"stdout": "hi\n"}));
    host.on_command(&["vpn"], Reply::fail(1, "bad key tskey-9"));
    let err = plugin
        .invoke(
            "run",
            br#"{"body": {"argv": ["vpn", "up", "tskey-9"], "secret": "tskey-9"}}"#,
        )
        .expect_err("failing command");
    assert_eq!(
        err.message.as_str(),
        "Failed to run: vpn up ***: exit status 1 (bad key ***)"
    );
    assert_eq!(
        host.commands(),
        [vec!["greet", "x"], vec!["vpn", "up", "tskey-9"]]
    );

    // Routes: the file capabilities.
    let seen = plugin.invoke("files", b"{}").expect("files");
    assert_eq!(
        seen,
        json!({
            "seen": {
                "list": ["greeting", "sub"],
                "stat": {"mode": 0o640},
                "exists": true,
                "read": "hello",
            },
            "after": false,
        })
    );
    assert!(host.read_file(FILE).is_none());
}

/// `tests/fixtures/older-app` is an application built against `tests/fixtures/api-1.2`,
/// the contract as released at 1.2.0, before 1.3 appended the host's file capabilities to
/// `HostOps` (descriptors, facts, chown, symlink, rename). The layout check lets it in,
/// and what it knows works: GET, PUT (files through the journal), backup, factory reset
/// and restore.
#[test]
fn an_application_built_for_1_2_loads_on_the_1_3_host_and_works() {
    let path = fixture("older-app");
    let lib = opened(&path);
    assert_eq!(lib.manifest.api_version, "1.2.0");
    assert_eq!(lib.manifest.kind, plugin_api::Kind::Application);
    assert!(
        api_version_with(|major, minor| (major, minor)) != "1.2.0",
        "the host must be newer than the fixture's contract for this test to mean anything"
    );

    let plugin = Harness::load(&path).expect("a 1.2 application loads on this host");
    let host = plugin.host();
    let logs: Vec<String> = host.logs().into_iter().map(|l| l.message).collect();
    assert_eq!(logs, ["older-app: built against plugin-api 1.2.0"]);
    assert_eq!(
        plugin.get().expect("get"),
        json!({"state": {"files": {}}, "config": {"greeting": "", "notes": []}})
    );
    plugin
        .put(&json!({"config": {"greeting": "hello", "notes": ["a", "b"]}}))
        .expect("put");
    let files = json!({"greeting": "hello", "notes/0": "a", "notes/1": "b"});
    assert_eq!(plugin.get().expect("get")["state"]["files"], files);

    let archive = plugin.backup(&json!({})).expect("backup");
    plugin.factory_reset().expect("factory reset");
    assert_eq!(plugin.get().expect("get")["state"]["files"], json!({}));
    plugin.restore(&archive).expect("restore");
    assert_eq!(plugin.get().expect("get")["state"]["files"], files);
}

/// `tests/fixtures/older-1-3` is an application built against `tests/fixtures/api-1.3`,
/// the contract as released at 1.3.0, before 1.4 appended the bundle field (`plugins`) to
/// the root module. Its root module is shorter than the host's: the layout check lets it
/// in, the missing field reads as "not a bundle", and it works as the one plugin it is.
#[test]
fn a_plugin_built_for_1_3_loads_on_the_1_4_host_as_one_plugin() {
    let path = fixture("older-1-3");
    let lib = incus_osd::plugins::loader::open_library(&path).expect("a 1.3 plugin opens");
    assert!(lib.bundled.is_empty(), "{lib:?}");
    assert_eq!(lib.plugins.len(), 1, "{lib:?}");
    assert_eq!(lib.plugins[0].manifest.api_version, "1.3.0");
    assert_eq!(lib.plugins[0].manifest.name, "older-1-3");
    assert!(
        api_version_with(|major, minor| (major, minor)) != "1.3.0",
        "the host must be newer than the fixture's contract for this test to mean anything"
    );
    let plugin = Harness::load(&path).expect("a 1.3 application loads on this host");
    plugin
        .put(&json!({"config": {"greeting": "hello"}}))
        .expect("put");
    assert_eq!(plugin.get().expect("get")["config"]["greeting"], "hello");
}

#[test]
fn a_plugin_for_another_major_version_is_refused() {
    let err = refused(&fixture("other-major"));
    assert_eq!(err.check(), "api-version", "{err}");
    let other = api_version_with(|major, _| (major + 1, 0));
    let msg = err.to_string();
    assert!(msg.contains("major"), "{msg}");
    assert!(
        msg.contains(plugin_api::API_VERSION) && msg.contains(&other),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------
// Constructors

#[test]
fn a_constructor_error_is_reported_with_the_plugins_message() {
    let lib = opened(&fixture("ctor-error"));
    assert_eq!(lib.manifest.name, "ctor-error");
    let err = constructor_error(&lib);
    assert_eq!(err.check(), "constructor", "{err}");
    assert!(
        err.to_string()
            .contains("ctor-error: cannot open /dev/fixture"),
        "{err}"
    );
}

#[test]
fn a_constructor_panic_is_caught_and_the_host_survives() {
    let lib = opened(&fixture("ctor-panic"));
    assert_eq!(lib.manifest.name, "ctor-panic");
    let err = constructor_error(&lib);
    assert_eq!(err.check(), "constructor", "{err}");
    let msg = err.to_string();
    assert!(msg.contains("panicked"), "{msg}");
    assert!(
        msg.contains("ctor-panic: deliberate panic in constructor"),
        "{msg}"
    );
    // Still alive, and the library can be tried again.
    let again = constructor_error(&lib);
    assert_eq!(again.check(), "constructor", "{again}");
}

// ---------------------------------------------------------------------------------------
// Hooks

#[test]
fn a_panicking_hook_is_a_500_and_the_plugin_keeps_working() {
    let path = fixture("faulty");
    let m = opened(&path).manifest;
    assert_eq!(m.name, "faulty");
    assert_eq!(m.kind, plugin_api::Kind::Service);
    assert_eq!(m.api_version, plugin_api::API_VERSION);
    assert_eq!(m.start_weight, 0);
    assert!(m.paths.is_empty() && m.routes.is_empty() && m.dependencies.is_empty());

    // The harness opens it through the same loader and instantiates it.
    let plugin = Harness::load(&path).expect("faulty loads");

    let first = plugin.get().expect("get");
    assert_eq!(first["state"]["calls"], 1, "{first}");
    assert_eq!(first["config"]["panic_on_get"], false, "{first}");

    plugin
        .put(&json!({"config": {"panic_on_get": true}}))
        .expect("put");
    let err = plugin.get().expect_err("get panics");
    eprintln!("faulty get: {err:?}");
    assert_eq!(err.status, 500, "{err:?}");
    assert!(err.message.contains("deliberate panic"), "{err:?}");
    assert!(err.message.contains("panicked"), "{err:?}");

    // Disabling the panic (and making update slow) works, and get answers again.
    let started = Instant::now();
    plugin
        .put(&json!({"config": {"panic_on_get": false, "sleep_ms": 50}}))
        .expect("second put");
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "update did not sleep"
    );
    let after = plugin.get().expect("get after the panic");
    assert_eq!(after["state"]["calls"], 3, "{after}");
    assert_eq!(after["config"]["sleep_ms"], 50, "{after}");

    // start panics on request too, and is contained the same way.
    plugin.start().expect("start");
    plugin
        .put(&json!({"config": {"panic_on_start": true}}))
        .expect("put");
    let err = plugin.start().expect_err("start panics");
    assert_eq!(err.status, 500, "{err:?}");
    assert!(err.message.contains("deliberate panic in start"), "{err:?}");
    plugin.get().expect("get after start panicked");
}
