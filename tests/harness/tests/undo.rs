//! The SDK's `Undo` journal over the harness host: what a half-applied change leaves
//! behind after a rollback.

use std::time::Duration;

use incus_osd_harness::{Failure, FileEffect, HarnessHost, Reply, UnitOp};
use plugin_api::sdk::{Arg, Host, Undo};
use plugin_api::{Kind, Manifest};

const SECOND: Duration = Duration::from_secs(1);

fn host() -> (HarnessHost, Host) {
    let manifest = Manifest {
        name: "demo".into(),
        kind: Kind::Service,
        version: "1.0.0".into(),
        api_version: plugin_api::API_VERSION.into(),
        hooks: vec![],
        routes: vec![],
        dependencies: vec![],
        start_weight: 0,
        primary: false,
        paths: vec!["/etc/demo".into(), "/run/demo".into()],
        requires_application: None,
        variants: vec![],
        late_update_check: false,
        backup: None,
        debug_logs: vec![],
    };
    let hh = HarnessHost::new(&manifest).unwrap();
    let host = Host::from_handle(hh.handle());
    (hh, host)
}

fn mode(hh: &HarnessHost, p: &str) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(hh.real_path(p))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn rollback_restores_files_with_their_modes_and_removes_new_ones() {
    let (hh, host) = host();
    hh.put_file("/etc/demo/kept.conf", b"old\n", 0o640);
    let mut undo = Undo::new(&host);
    undo.write_file("/etc/demo/kept.conf", b"new\n", 0o600)
        .unwrap();
    undo.write_file("/etc/demo/kept.conf", b"newer\n", 0o600)
        .unwrap();
    undo.create_dir("/run/demo", 0o700).unwrap();
    undo.write_file("/run/demo/fresh", b"x", 0o600).unwrap();
    assert_eq!(hh.read_file("/etc/demo/kept.conf").unwrap(), b"newer\n");
    undo.rollback();
    assert_eq!(hh.read_file("/etc/demo/kept.conf").unwrap(), b"old\n");
    assert_eq!(mode(&hh, "/etc/demo/kept.conf"), 0o640);
    assert!(!hh.real_path("/run/demo").exists());
}

#[test]
fn a_removed_tree_comes_back() {
    let (hh, host) = host();
    hh.put_file("/etc/demo/a/one", b"1", 0o600);
    hh.put_file("/etc/demo/b", b"2", 0o644);
    let mut undo = Undo::new(&host);
    undo.remove("/etc/demo").unwrap();
    assert!(!hh.real_path("/etc/demo").exists());
    undo.remove("/etc/demo/never-there").unwrap();
    undo.rollback();
    assert_eq!(hh.read_file("/etc/demo/a/one").unwrap(), b"1");
    assert_eq!(mode(&hh, "/etc/demo/a/one"), 0o600);
    assert_eq!(hh.read_file("/etc/demo/b").unwrap(), b"2");
    assert_eq!(mode(&hh, "/etc/demo/b"), 0o644);
}

#[test]
fn units_return_to_their_previous_state() {
    let (hh, host) = host();
    hh.set_unit_state("running.service", "active");
    let mut undo = Undo::new(&host);
    undo.start_unit("stopped.service").unwrap();
    undo.stop_unit("running.service").unwrap();
    undo.restart_unit("stopped.service").unwrap();
    assert_eq!(hh.unit_state("stopped.service"), "active");
    assert_eq!(hh.unit_state("running.service"), "inactive");
    undo.rollback();
    assert_eq!(hh.unit_state("stopped.service"), "inactive");
    assert_eq!(hh.unit_state("running.service"), "active");
}

/// (The order of several steps: `rollback_runs_steps_newest_first_with_the_units_last`.)
#[test]
fn dropping_without_commit_rolls_back_files_and_compensations() {
    let (hh, host) = host();
    {
        let mut undo = Undo::new(&host);
        undo.write_file("/etc/demo/x", b"x", 0o600).unwrap();
        undo.on_rollback("log out", |h| {
            h.info("logged out");
            Ok(())
        });
        // Dropped without commit, as an early `?` return would.
    }
    assert!(hh.read_file("/etc/demo/x").is_none());
    assert!(hh.logs().iter().any(|l| l.message == "logged out"));
}

/// What probes registered with `on_rollback` saw, in the order they ran.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// A compensation that records `name` and what the files and the unit are at that moment.
fn probe(undo: &mut Undo, seen: &Seen, name: &'static str) {
    probe_at(undo, seen, name, false)
}

/// [`probe`], registered to run before the units are put back, or after them.
fn probe_at(undo: &mut Undo, seen: &Seen, name: &'static str, after_units: bool) {
    let seen = seen.clone();
    let run = move |h: &Host| {
        let file = |p: &str| {
            h.read_to_string(p)
                .unwrap()
                .unwrap_or_else(|| "-".to_string())
        };
        let line = format!(
            "{name}: a={} b={} unit={}",
            file("/etc/demo/a"),
            file("/etc/demo/b"),
            h.unit_active_state("demo.service").unwrap()
        );
        seen.lock().unwrap().push(line);
        Ok(())
    };
    if after_units {
        undo.on_rollback_after_units(name, run);
    } else {
        undo.on_rollback(name, run);
    }
}

/// Several steps of each kind: files and compensations come back newest first, each
/// compensation at its own place between the files, and the units after all of them.
#[test]
fn rollback_runs_steps_newest_first_with_the_units_last() {
    let (hh, host) = host();
    hh.put_file("/etc/demo/a", b"a0", 0o600);
    let seen = Seen::default();
    let mut undo = Undo::new(&host);
    probe(&mut undo, &seen, "first");
    undo.write_file("/etc/demo/a", b"a1", 0o600).unwrap();
    undo.start_unit("demo.service").unwrap();
    probe(&mut undo, &seen, "second");
    undo.write_file("/etc/demo/b", b"b1", 0o600).unwrap();
    undo.start_unit("other.service").unwrap();
    probe(&mut undo, &seen, "third");
    hh.clear_effects();
    undo.rollback();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            // Newest first: nothing put back yet.
            "third: a=a1 b=b1 unit=active",
            // b (written after "second") is gone; a not yet back; the unit still runs.
            "second: a=a1 b=- unit=active",
            // Every file is back, and the unit is still running: units come last.
            "first: a=a0 b=- unit=active",
        ]
    );
    // The files newest first, then the units newest first.
    assert_eq!(
        hh.file_effects(),
        [
            FileEffect::Removed {
                path: "/etc/demo/b".into()
            },
            FileEffect::Written {
                path: "/etc/demo/a".into(),
                mode: 0o600
            },
        ]
    );
    let stops: Vec<(UnitOp, String)> = hh
        .units()
        .into_iter()
        .filter(|c| c.op != UnitOp::ActiveState)
        .map(|c| (c.op, c.unit))
        .collect();
    assert_eq!(
        stops,
        [
            (UnitOp::Stop, "other.service".to_string()),
            (UnitOp::Stop, "demo.service".to_string()),
        ]
    );
    assert_eq!(hh.unit_state("demo.service"), "inactive");
    assert_eq!(hh.read_file("/etc/demo/a").unwrap(), b"a0");
}

/// Compensations registered with `on_rollback_after_units` run once every file and unit is
/// back (a unit this change stopped is running again), newest first among themselves;
/// plain compensations still run before the units.
#[test]
fn compensations_after_units_find_the_units_back() {
    let (hh, host) = host();
    hh.set_unit_state("demo.service", "active");
    let seen = Seen::default();
    let mut undo = Undo::new(&host);
    probe_at(&mut undo, &seen, "log in again", true);
    undo.stop_unit("demo.service").unwrap();
    probe(&mut undo, &seen, "plain");
    undo.write_file("/etc/demo/a", b"a1", 0o600).unwrap();
    probe_at(&mut undo, &seen, "newer", true);
    undo.rollback();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "plain: a=- b=- unit=inactive",
            "newer: a=- b=- unit=active",
            "log in again: a=- b=- unit=active",
        ]
    );
}

#[test]
fn commit_keeps_everything_and_failures_are_logged_not_hidden() {
    let (hh, host) = host();
    let mut undo = Undo::new(&host);
    undo.write_file("/etc/demo/x", b"x", 0o600).unwrap();
    undo.commit();
    assert_eq!(hh.read_file("/etc/demo/x").unwrap(), b"x");

    let mut undo = Undo::new(&host);
    undo.start_unit("flaky.service").unwrap();
    hh.fail_unit("flaky.service", "flaky cannot stop");
    undo.rollback();
    assert!(hh.logs().iter().any(|l| l
        .message
        .contains("undo: cannot put flaky.service back: flaky cannot stop")));
}

#[test]
fn read_link_resolves_relative_targets() {
    let (hh, host) = host();
    std::fs::create_dir_all(hh.real_path("/etc/demo/by-id")).unwrap();
    std::os::unix::fs::symlink("../../sdb", hh.real_path("/etc/demo/by-id/wwn-0x1")).unwrap();
    assert_eq!(
        host.read_link("/etc/demo/by-id/wwn-0x1")
            .unwrap()
            .as_deref(),
        Some("/etc/sdb")
    );
    assert_eq!(host.read_link("/etc/demo/by-id").unwrap(), None);
    assert_eq!(host.read_link("/etc/demo/none").unwrap(), None);
}

#[test]
fn starting_a_running_unit_is_not_undone_by_a_restart() {
    let (hh, host) = host();
    hh.set_unit_state("vpn.service", "active");
    let mut undo = Undo::new(&host);
    undo.start_unit("vpn.service").unwrap();
    hh.clear_effects();
    undo.rollback();
    assert!(hh.units().is_empty(), "{:?}", hh.units());
    assert_eq!(hh.unit_state("vpn.service"), "active");
}

/// `vpn up --auth-key tskey-123`, the key marked secret.
fn vpn_up() -> Vec<Arg> {
    vec![
        "vpn".into(),
        "up".into(),
        "--auth-key".into(),
        Arg::secret("tskey-123"),
    ]
}

#[test]
fn secret_arguments_are_masked_in_exit_errors_and_output() {
    let (hh, host) = host();
    hh.on_command(
        &["vpn", "up"],
        Reply {
            status: 1,
            stdout: "using tskey-123\n".into(),
            stderr: "bad key tskey-123".into(),
        },
    );
    let err = host.run_ok_masked(&vpn_up(), SECOND).unwrap_err();
    assert_eq!(
        err.message,
        "Failed to run: vpn up --auth-key ***: exit status 1 (bad key ***)"
    );
    let out = host.run_masked(&vpn_up(), SECOND).unwrap();
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("using ***\n", "bad key ***")
    );
    // The command itself ran with the key.
    assert_eq!(hh.commands()[0][3], "tskey-123");
}

#[test]
fn secret_arguments_are_masked_when_the_command_cannot_start_or_times_out() {
    let (hh, host) = host();
    hh.on_command_failure(&["vpn", "up"], Failure::Spawn);
    let err = host.run_ok_masked(&vpn_up(), SECOND).unwrap_err();
    assert_eq!(
        err.message,
        "Failed to run: vpn up --auth-key ***: No such file or directory (os error 2)"
    );
    hh.on_command_failure(&["vpn", "up"], Failure::Timeout);
    let err = host.run_ok_masked(&vpn_up(), SECOND).unwrap_err();
    assert_eq!(
        err.message,
        "Failed to run: vpn up --auth-key ***: timed out after 1.0s"
    );
    // Without the mark, the same failure shows the whole command line.
    let plain = host
        .run_ok(&["vpn", "up", "--auth-key", "tskey-123"], SECOND)
        .unwrap_err();
    assert!(plain.message.contains("tskey-123"), "{plain:?}");
}

#[test]
fn a_directory_in_the_way_is_refused_and_left_alone() {
    let (hh, host) = host();
    hh.put_file("/etc/demo/conf/inside", b"keep", 0o600);
    let mut undo = Undo::new(&host);
    let err = undo.write_file("/etc/demo/conf", b"x", 0o600).unwrap_err();
    assert!(err.message.contains("is not a regular file"), "{err}");
    undo.rollback();
    assert_eq!(hh.read_file("/etc/demo/conf/inside").unwrap(), b"keep");
}

#[test]
fn a_restarted_unit_comes_back_after_its_files() {
    let (hh, host) = host();
    hh.put_file("/etc/demo/d.conf", b"old", 0o600);
    hh.set_unit_state("d.service", "active");
    let mut undo = Undo::new(&host);
    undo.write_file("/etc/demo/d.conf", b"new", 0o600).unwrap();
    undo.restart_unit("d.service").unwrap();
    hh.clear_effects();
    undo.rollback();
    // The file is restored first, then the unit restarted to read it.
    let effects = hh.file_effects();
    assert_eq!(effects.len(), 1, "{effects:?}");
    let units = hh.units();
    assert_eq!(units.len(), 1, "{units:?}");
    assert_eq!(units[0].op, plugin_api::abi::UnitOp::Restart);
    assert_eq!(hh.read_file("/etc/demo/d.conf").unwrap(), b"old");
}

#[test]
fn assert_untouched_sees_what_happened_since_the_effects_were_cleared() {
    let (hh, host) = host();
    hh.assert_untouched("fresh");
    host.write_file("/etc/demo/x", b"x", 0o600).unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        hh.assert_untouched("after a write")
    }));
    assert!(caught.is_err(), "a write is noticed");
    hh.clear_effects();
    hh.assert_untouched("after clearing");
}

/// The harness host is the daemon's own `HostOps` implementation: a unit name systemd
/// would refuse (or one that climbs out of the unit namespace) never reaches the units
/// adapter, exactly as in the daemon.
#[test]
fn the_harness_applies_the_daemons_unit_name_check() {
    let (hh, host) = host();
    let err = host.start_unit("../../evil.service").unwrap_err();
    assert_eq!(err.status, 500);
    assert_eq!(err.message, "invalid unit name '../../evil.service'");
    let err = host.start_unit("demo.service\nExecStart=x").unwrap_err();
    assert!(err.message.starts_with("invalid unit name"), "{err:?}");
    assert!(hh.units().is_empty(), "{:?}", hh.units());
    host.start_unit("demo.service").unwrap();
    assert_eq!(hh.unit_state("demo.service"), "active");
}
