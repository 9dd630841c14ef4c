//! Tier 3: `DbusSystemd` against a real systemd booted in a container, and the same units
//! driven the way the daemon and its plugins drive them (the `Units` trait object behind a
//! `Platform`, and the plugin host handle's `unit` capability).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use abi_stable::std_types::{RResult, RStr};
use incus_osd::platform::exec::Refused;
use incus_osd::platform::systemd::{Systemd, UnitAction};
use incus_osd::platform::systemd_dbus::DbusSystemd;
use incus_osd::platform::{Mode, Platform};
use incus_osd::state::Store;
use incus_osd_integration::tier3::{show, systemd, wait_for};
use incus_osd_test_machine::{tier3_or_return, Machine};
use plugin_api::abi::UnitOp;

const SLEEPER: &str = "[Service]\nExecStart=/bin/sleep infinity\n";
const FAILING: &str = "[Service]\nType=oneshot\nExecStart=/bin/false\n";

/// Boots a machine with `units` (name, unit file) installed in `/etc/systemd/system` and
/// loaded by a daemon-reload over D-Bus.
async fn machine_with(units: &[(&str, &str)]) -> (Machine, DbusSystemd) {
    let m = tokio::task::spawn_blocking(Machine::boot)
        .await
        .unwrap()
        .expect("boot");
    eprintln!("machine {} booted in {:?}", m.name(), m.boot_duration());
    for (name, text) in units {
        m.write_file(format!("/etc/systemd/system/{name}"), text)
            .unwrap();
    }
    let sd = systemd(&m).await;
    sd.reload_daemon().await.expect("daemon-reload");
    (m, sd)
}

/// `ActiveState` through `DbusSystemd`, checked against `systemctl show` inside.
async fn state(m: &Machine, sd: &DbusSystemd, unit: &str) -> String {
    let ours = sd.active_state(unit).await.expect("active_state");
    assert_eq!(
        ours,
        show(m, unit, "ActiveState"),
        "{unit}: DbusSystemd and systemctl disagree"
    );
    ours
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_restart_of_a_real_unit_follow_systemd() {
    tier3_or_return!();
    let (m, sd) = machine_with(&[("t3-sleeper.service", SLEEPER)]).await;
    let unit = "t3-sleeper.service";
    assert_eq!(state(&m, &sd, unit).await, "inactive");

    sd.run_job(UnitAction::Start, unit).await.expect("start");
    // The job is awaited: active at once, no polling.
    assert_eq!(state(&m, &sd, unit).await, "active");
    let pid = show(&m, unit, "MainPID");
    assert_ne!(pid, "0");
    let comm = m.run_ok(&["cat", &format!("/proc/{pid}/comm")]).unwrap();
    assert_eq!(comm.trim(), "sleep");

    sd.run_job(UnitAction::Restart, unit)
        .await
        .expect("restart");
    assert_eq!(state(&m, &sd, unit).await, "active");
    let new_pid = show(&m, unit, "MainPID");
    assert_ne!(new_pid, "0");
    assert_ne!(new_pid, pid, "restart runs a new process");

    sd.run_job(UnitAction::Stop, unit).await.expect("stop");
    assert_eq!(state(&m, &sd, unit).await, "inactive");
    assert_eq!(show(&m, unit, "MainPID"), "0");
    // Stopping a stopped unit is a successful no-op job.
    sd.run_job(UnitAction::Stop, unit)
        .await
        .expect("stop again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_start_names_the_unit_and_the_job_result() {
    tier3_or_return!();
    let (m, sd) = machine_with(&[("t3-failing.service", FAILING)]).await;
    let err = sd
        .run_job(UnitAction::Start, "t3-failing.service")
        .await
        .unwrap_err();
    assert_eq!(
        err.0,
        "job to start t3-failing.service failed: result 'failed'"
    );
    assert_eq!(state(&m, &sd, "t3-failing.service").await, "failed");
    assert_eq!(show(&m, "t3-failing.service", "Result"), "exit-code");
}

/// A daemon whose process is gone right after its start job ended `done` did not start:
/// a `Type=simple` one that exits 0 (the unit ends `inactive`), and a `Type=forking` one
/// whose parent exits 0 and whose child then dies (the unit ends `inactive` or `failed`,
/// depending on whether systemd saw the child). A oneshot that did its work and ended
/// `inactive` did start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_is_gone_right_after_its_start_job_did_not_start() {
    tier3_or_return!();
    let (m, sd) = machine_with(&[
        ("t3-quits.service", "[Service]\nExecStart=/bin/true\n"),
        (
            "t3-forks-and-dies.service",
            "[Service]\nType=forking\nExecStart=/bin/sh -c '(sleep 0.1; exit 3) &'\n",
        ),
        (
            "t3-once.service",
            "[Service]\nType=oneshot\nExecStart=/bin/true\n",
        ),
    ])
    .await;
    let err = sd
        .run_job(UnitAction::Start, "t3-quits.service")
        .await
        .unwrap_err();
    assert_eq!(err.0, "t3-quits.service started but stopped right after");
    assert_eq!(state(&m, &sd, "t3-quits.service").await, "inactive");

    let err = sd
        .run_job(UnitAction::Start, "t3-forks-and-dies.service")
        .await
        .unwrap_err();
    assert!(
        [
            "t3-forks-and-dies.service started but stopped right after",
            "t3-forks-and-dies.service started but failed right after",
        ]
        .contains(&err.0.as_str()),
        "{}",
        err.0
    );
    assert_ne!(state(&m, &sd, "t3-forks-and-dies.service").await, "active");

    sd.run_job(UnitAction::Start, "t3-once.service")
        .await
        .expect("a oneshot that succeeded");
    assert_eq!(state(&m, &sd, "t3-once.service").await, "inactive");
    assert_eq!(show(&m, "t3-once.service", "Result"), "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_unit_cannot_start_and_reads_inactive() {
    tier3_or_return!();
    let (m, sd) = machine_with(&[]).await;
    let unit = "t3-no-such-unit.service";
    let err = sd.run_job(UnitAction::Start, unit).await.unwrap_err();
    assert!(
        err.0.starts_with(&format!("cannot start {unit}: ")),
        "{}",
        err.0
    );
    assert!(
        err.0.contains(&format!(
            "org.freedesktop.systemd1.NoSuchUnit: Unit {unit} not found"
        )),
        "{}",
        err.0
    );
    // LoadUnit: a unit with no file loads as not-found and reads inactive.
    assert_eq!(state(&m, &sd, unit).await, "inactive");
    assert_eq!(show(&m, unit, "LoadState"), "not-found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_and_garbage_collected_unit_reads_inactive() {
    tier3_or_return!();
    let (m, sd) = machine_with(&[("t3-gc.service", SLEEPER)]).await;
    let unit = "t3-gc.service";
    sd.run_job(UnitAction::Start, unit).await.expect("start");
    sd.run_job(UnitAction::Stop, unit).await.expect("stop");

    // Unreferenced and inactive: systemd unloads it, and GetUnit no longer knows it.
    let conn = m.connect().await.unwrap();
    let get_unit = |conn: zbus::Connection| async move {
        conn.call_method(
            Some("org.freedesktop.systemd1"),
            "/org/freedesktop/systemd1",
            Some("org.freedesktop.systemd1.Manager"),
            "GetUnit",
            &(unit,),
        )
        .await
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let gone = loop {
        match get_unit(conn.clone()).await {
            Err(zbus::Error::MethodError(name, msg, _)) => {
                break format!("{}: {}", name.as_str(), msg.unwrap_or_default())
            }
            Err(e) => panic!("GetUnit: {e}"),
            Ok(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{unit} was never garbage-collected"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(
        gone,
        format!("org.freedesktop.systemd1.NoSuchUnit: Unit {unit} not loaded.")
    );
    // GetUnit fails for it; active_state (LoadUnit) still answers.
    assert_eq!(sd.active_state(unit).await.unwrap(), "inactive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_sigkills_a_running_unit_and_it_reads_failed() {
    tier3_or_return!();
    let (m, sd) = machine_with(&[("t3-victim.service", SLEEPER)]).await;
    let unit = "t3-victim.service";
    sd.run_job(UnitAction::Start, unit).await.expect("start");
    let pid = show(&m, unit, "MainPID");
    sd.kill(unit).await.expect("kill");
    // The kill is a signal, not a job: wait for systemd to see the process die.
    let final_state = wait_for("the killed unit to settle", Duration::from_secs(10), || {
        let s = show(&m, unit, "ActiveState");
        (s != "active" && s != "deactivating").then_some(s)
    });
    assert_eq!(final_state, "failed");
    assert_eq!(show(&m, unit, "Result"), "signal");
    assert_eq!(sd.active_state(unit).await.unwrap(), "failed");
    assert!(
        m.run_ok(&["test", "-e", &format!("/proc/{pid}")]).is_err(),
        "the process {pid} is gone"
    );
    // With no process left, systemd accepts a kill of all the unit's processes as a
    // no-op: the state stays as it was.
    sd.kill(unit).await.expect("kill with nothing to kill");
    assert_eq!(state(&m, &sd, unit).await, "failed");
    // A unit systemd does not know cannot be killed, and the error says why.
    let err = sd.kill("t3-no-such-unit.service").await.unwrap_err();
    assert_eq!(
        err.0,
        "cannot kill t3-no-such-unit.service: \
         org.freedesktop.systemd1.NoSuchUnit: Unit t3-no-such-unit.service not loaded."
    );
}

/// A platform as the daemon builds it in live mode, with the machine's systemd as its
/// units (commands refused: not needed here).
fn live_platform(sd: DbusSystemd) -> Platform {
    Platform {
        mode: Mode::Live,
        units: Arc::new(sd),
        commands: Arc::new(Refused::new("not in this test")),
        kernel: incus_osd::platform::kernel::KernelFiles::host(),
        network: Arc::new(incus_osd::platform::network::fake::Unavailable::new(
            "not in this test",
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_and_the_plugin_host_handle_drive_real_units() {
    tier3_or_return!();
    let (m, sd) = machine_with(&[
        ("t3-plugin.service", SLEEPER),
        ("t3-plugin-failing.service", FAILING),
    ])
    .await;
    let platform = live_platform(sd);
    let m = Arc::new(m);

    // The Units trait object: synchronous, called from a blocking thread as the daemon does.
    let (p, mm) = (platform.clone(), m.clone());
    tokio::task::spawn_blocking(move || {
        let units: &dyn Systemd = p.units.as_ref();
        units.reachable().unwrap();
        let u = "t3-plugin.service";
        assert_eq!(units.unit(UnitAction::ActiveState, u).unwrap(), "inactive");
        assert_eq!(units.unit(UnitAction::Start, u).unwrap(), "");
        assert_eq!(units.unit(UnitAction::ActiveState, u).unwrap(), "active");
        let pid = show(&mm, u, "MainPID");
        assert_eq!(units.unit(UnitAction::Restart, u).unwrap(), "");
        assert_ne!(show(&mm, u, "MainPID"), pid);
        assert_eq!(units.unit(UnitAction::Stop, u).unwrap(), "");
        assert_eq!(units.unit(UnitAction::ActiveState, u).unwrap(), "inactive");
        let e = units
            .unit(UnitAction::Start, "t3-plugin-failing.service")
            .unwrap_err();
        assert_eq!(
            e.0,
            "job to start t3-plugin-failing.service failed: result 'failed'"
        );
        units.daemon_reload().unwrap();
    })
    .await
    .unwrap();

    // The host handle a plugin holds: the same units, through the ABI.
    let root = tempfile::tempdir().unwrap();
    let store = Store::load_or_create(&root.path().join("var/lib/incus-os")).unwrap();
    let manifest: plugin_api::Manifest = serde_json::from_value(serde_json::json!({
        "name": "t3probe",
        "kind": "service",
        "version": "1.0.0",
        "api_version": plugin_api::API_VERSION,
        "hooks": [],
    }))
    .unwrap();
    let (p, mm) = (platform.clone(), m.clone());
    let root_path = root.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let host = incus_osd::plugins::host::handle(
            &manifest,
            &root_path,
            Arc::new(Mutex::new(store)),
            &p,
            Arc::new(plugin_host::net::NoProgress),
        );
        let call = |op: UnitOp, u: &str| match host.unit(op, RStr::from(u)) {
            RResult::ROk(s) => Ok(s.to_string()),
            RResult::RErr(e) => Err((e.status, e.message.to_string())),
        };
        let u = "t3-plugin.service";
        assert_eq!(call(UnitOp::Start, u).unwrap(), "");
        assert_eq!(call(UnitOp::ActiveState, u).unwrap(), "active");
        assert_eq!(show(&mm, u, "ActiveState"), "active");
        let pid = show(&mm, u, "MainPID");
        assert_eq!(call(UnitOp::Kill, u).unwrap(), "");
        let settled = wait_for("the killed unit to settle", Duration::from_secs(10), || {
            let s = call(UnitOp::ActiveState, u).unwrap();
            (s != "active" && s != "deactivating").then_some(s)
        });
        assert_eq!(settled, "failed");
        assert!(mm.run_ok(&["test", "-e", &format!("/proc/{pid}")]).is_err());
        // A restart brings a failed unit back.
        assert_eq!(call(UnitOp::Restart, u).unwrap(), "");
        assert_eq!(call(UnitOp::ActiveState, u).unwrap(), "active");
        assert_eq!(call(UnitOp::Stop, u).unwrap(), "");
        assert_eq!(call(UnitOp::ActiveState, u).unwrap(), "inactive");
        assert_eq!(call(UnitOp::DaemonReload, "").unwrap(), "");

        let (status, msg) = call(UnitOp::Start, "t3-plugin-failing.service").unwrap_err();
        assert_eq!(status, 500);
        assert_eq!(
            msg,
            "job to start t3-plugin-failing.service failed: result 'failed'"
        );
        let (status, msg) = call(UnitOp::Start, "t3-nowhere.service").unwrap_err();
        assert_eq!(status, 500);
        assert!(
            msg.contains("NoSuchUnit: Unit t3-nowhere.service not found"),
            "{msg}"
        );
        assert_eq!(
            call(UnitOp::ActiveState, "t3-nowhere.service").unwrap(),
            "inactive"
        );
        // Names are checked before systemd is asked.
        let (status, msg) = call(UnitOp::Start, "../t3-plugin.service").unwrap_err();
        assert_eq!(status, 500);
        assert_eq!(msg, "invalid unit name '../t3-plugin.service'");
    })
    .await
    .unwrap();
}
