//! The shared pieces over the harness host: the daemon API client against a stand-in on
//! a unix socket, and the ZFS and unit steps as the command lines they run.

use std::time::Duration;

use crate::testing::{call_lines, calls, error, host, stand_in, sync};
use crate::{zfs, Api, Daemon};
use incus_osd_harness::testserver::Reply;
use incus_osd_harness::{argv, Reply as Cmd, UnitCall, UnitOp};
use serde_json::json;

const SOCKET: &str = "/run/demo/unix.socket";

fn api() -> Api {
    Api::new("Demo", SOCKET, Duration::from_secs(5))
}

#[test]
fn a_call_sends_json_over_the_socket_and_returns_the_metadata() {
    let (hh, host) = host("demo", &[]);
    let server = stand_in(&hh, SOCKET);
    server.handle("/1.0/things", sync(json!({"made": true})));
    let out = api()
        .post(&host, "/1.0/things?project=p", &json!({"name": "a"}))
        .unwrap();
    assert_eq!(out, json!({"made": true}));
    let (method, path, body) = calls(&server).remove(0);
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("POST", "/1.0/things?project=p")
    );
    assert_eq!(body, json!({"name": "a"}));
    let req = &server.requests()[0];
    assert_eq!(req.header("content-type"), Some("application/json"));
}

#[test]
fn a_daemon_error_names_the_daemon_the_call_and_its_text() {
    let (hh, host) = host("demo", &[]);
    let server = stand_in(&hh, SOCKET);
    server.handle("/1.0/networks", error(400, "Network name already in use"));
    let err = api()
        .post(&host, "/1.0/networks", &json!({"name": "incusbr0"}))
        .unwrap_err();
    assert_eq!(err.status, 500);
    assert_eq!(
        err.message,
        "Demo: POST /1.0/networks: Network name already in use"
    );
    // A 404 is "absent" for get_opt, any other error stays an error.
    server.handle("/1.0/profiles/x", error(404, "Profile not found"));
    assert_eq!(api().get_opt(&host, "/1.0/profiles/x").unwrap(), None);
    server.handle("/1.0/profiles/y", error(403, "not allowed"));
    assert_eq!(
        api().get_opt(&host, "/1.0/profiles/y").unwrap_err().message,
        "Demo: GET /1.0/profiles/y: not allowed"
    );
}

#[test]
fn an_async_answer_is_waited_for_and_a_failed_operation_is_an_error() {
    let (hh, host) = host("demo", &[]);
    let server = stand_in(&hh, SOCKET);
    let accepted = Reply::json(
        202,
        json!({"type": "async", "status_code": 100, "operation": "/1.0/operations/42",
               "metadata": {"id": "42"}})
        .to_string(),
    );
    server.handle("/1.0/cluster", accepted);
    server.handle(
        "/1.0/operations/42/wait",
        sync(json!({"id": "42", "status_code": 200, "metadata": {"ok": 1}})),
    );
    assert_eq!(
        api().put(&host, "/1.0/cluster", &json!({})).unwrap(),
        json!({"ok": 1})
    );
    assert_eq!(
        call_lines(&server),
        ["PUT /1.0/cluster", "GET /1.0/operations/42/wait"]
    );
    server.handle(
        "/1.0/operations/42/wait",
        sync(json!({"id": "42", "status_code": 400, "err": "Failed to join"})),
    );
    assert_eq!(
        api()
            .put(&host, "/1.0/cluster", &json!({}))
            .unwrap_err()
            .message,
        "Demo: PUT /1.0/cluster: Failed to join"
    );
}

#[test]
fn waiting_for_a_daemon_asks_until_it_answers_and_gives_up_with_the_reason() {
    let (hh, host) = host("demo", &[]);
    // Nothing listens yet: every attempt fails, the error says how many and why.
    let err = api()
        .wait_ready_with(&host, 3, Duration::from_millis(10))
        .unwrap_err();
    assert!(
        err.message.starts_with(
            "Demo did not answer on /run/demo/unix.socket after 3 attempts: Demo: GET /1.0:"
        ),
        "{}",
        err.message
    );
    let server = stand_in(&hh, SOCKET);
    server.handle("/1.0", error(503, "starting"));
    assert!(api()
        .wait_ready_with(&host, 2, Duration::from_millis(10))
        .is_err());
    assert_eq!(call_lines(&server), ["GET /1.0", "GET /1.0"]);
    server.handle("/1.0", sync(json!({})));
    api().wait_ready(&host).unwrap();
}

const DAEMON: Daemon = Daemon {
    name: "demo-app",
    display: "Demo",
    unit: "demo-app.service",
    socket: "/run/demo-app/unix.socket",
    binary: "demo-appd",
};

#[test]
fn a_first_start_creates_the_dataset_and_later_starts_mount_it() {
    let (hh, host) = host("demo-app", &["/var/lib/demo-app"]);
    hh.on_command(&["zfs", "list"], Cmd::fail(1, "dataset does not exist"));
    hh.on_command(&["zfs", "create"], Cmd::ok(""));
    DAEMON.start(&host, false).unwrap();
    assert_eq!(
        hh.commands(),
        [
            argv(&["zfs", "list", "-H", "-o", "name", "local/demo-app"]),
            argv(&[
                "zfs",
                "create",
                "-o",
                "mountpoint=/var/lib/demo-app/",
                "-o",
                "incusos:use=demo-app",
                "local/demo-app"
            ]),
        ]
    );
    assert_eq!(
        hh.unit_changes(),
        [UnitCall::new(UnitOp::Start, "demo-app.service")]
    );

    hh.clear_effects();
    hh.on_command(
        &["zfs", "mount"],
        Cmd::fail(
            1,
            "cannot mount 'local/demo-app': filesystem already mounted",
        ),
    );
    DAEMON.start(&host, true).unwrap();
    assert_eq!(hh.commands(), [argv(&["zfs", "mount", "local/demo-app"])]);
}

#[test]
fn a_mount_failure_stops_the_start_with_zfs_own_words() {
    let (hh, host) = host("demo-app", &["/var/lib/demo-app"]);
    hh.on_command(
        &["zfs", "mount"],
        Cmd::fail(1, "cannot open 'local/demo-app': dataset does not exist"),
    );
    let err = DAEMON.start(&host, true).unwrap_err();
    assert_eq!(
        err.message,
        "Failed to run: zfs mount local/demo-app: exit status 1 (cannot open 'local/demo-app': dataset does not exist)"
    );
    assert!(
        hh.unit_changes().is_empty(),
        "the unit must not start without its data"
    );
}

#[test]
fn a_wipe_unmounts_destroys_removes_and_recreates_the_dataset() {
    let (hh, host) = host("demo-app", &["/var/lib/demo-app"]);
    hh.put_file("/var/lib/demo-app/db/state.db", b"x", 0o600);
    hh.on_command(
        &["umount"],
        Cmd::fail(32, "umount: /var/lib/demo-app/: not mounted."),
    );
    hh.on_command(&["zfs"], Cmd::ok(""));
    DAEMON.wipe(&host).unwrap();
    assert_eq!(
        hh.commands(),
        [
            argv(&["umount", "/var/lib/demo-app/"]),
            argv(&["zfs", "destroy", "local/demo-app"]),
            argv(&[
                "zfs",
                "create",
                "-o",
                "mountpoint=/var/lib/demo-app/",
                "-o",
                "incusos:use=demo-app",
                "local/demo-app"
            ]),
        ]
    );
    assert!(!hh.real_path("/var/lib/demo-app").exists());
}

#[test]
fn reload_reads_units_again_and_restarts_and_the_version_is_the_binarys() {
    let (hh, host) = host("demo-app", &[]);
    DAEMON.reload(&host).unwrap();
    assert_eq!(
        hh.unit_changes(),
        [
            UnitCall::new(UnitOp::DaemonReload, ""),
            UnitCall::new(UnitOp::Restart, "demo-app.service")
        ]
    );
    assert!(DAEMON.running(&host).unwrap());
    hh.on_command(&["demo-appd", "--version"], Cmd::ok("1.2.3\n"));
    assert_eq!(DAEMON.friendly_version(&host).unwrap(), "1.2.3");
    assert_eq!(zfs::app_dataset("x"), "local/x");
}

#[test]
fn the_daemons_certificate_is_its_server_pair_when_both_files_exist() {
    let (hh, host) = host("demo-app", &[]);
    assert_eq!(DAEMON.certificate(&host).unwrap(), None);
    hh.put_file("/var/lib/demo-app/server.crt", b"CRT", 0o644);
    assert_eq!(
        DAEMON.certificate(&host).unwrap(),
        None,
        "a key is needed too"
    );
    hh.put_file("/var/lib/demo-app/server.key", b"KEY", 0o600);
    assert_eq!(
        DAEMON.certificate(&host).unwrap(),
        Some(("CRT".to_string(), "KEY".to_string()))
    );
}
