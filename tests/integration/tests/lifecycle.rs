//! The daemon's start and stop, as built (tier 2): signals, start hooks that block or kill
//! the daemon, stop hooks that block, and bounded calls into a stuck plugin.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use incus_osd_integration::{built_plugin, get_ok, request, Daemon, Root};
use serde_json::{json, Value};

/// A root with the faulty fixture (its saved config `faulty`) and iscsi, an unrelated
/// plugin.
fn root_with(faulty: Value) -> Root {
    let root = Root::new();
    std::fs::create_dir_all(root.path().join("var/lib/incus-os")).unwrap();
    std::fs::write(
        root.state_file(),
        json!({"schema_version": 1, "plugins": {"faulty": {"config": faulty}}}).to_string(),
    )
    .unwrap();
    root.install_fixture("faulty", "faulty");
    root.install_plugin(&built_plugin("incus_osd_plugin_iscsi"), "iscsi");
    root
}

/// `GET /1.0` over a plain blocking socket: true once the API answers 200.
fn answers(root: &Root) -> bool {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(root.socket()) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /1.0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

fn wait_answering(d: &mut Daemon, root: &Root) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !answers(root) {
        assert!(d.is_running(), "daemon died:\n{}", d.log());
        assert!(Instant::now() < deadline, "no answer:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn wait_log(d: &Daemon, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !d.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{needle:?} not logged:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The last line of the log is the clean-stop line.
fn assert_stopped_cleanly(d: &Daemon) {
    let log = d.log();
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.ends_with(" INFO stopped"),
        "last line {last:?} of:\n{log}"
    );
}

fn plugin(listing: &Value, name: &str) -> Value {
    listing["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} not loaded: {listing}"))
        .clone()
}

#[test]
fn sigterm_as_soon_as_the_api_answers_stops_the_daemon_cleanly() {
    for i in 0..20 {
        // Every other time a start hook is still running when the signal comes.
        let root = root_with(json!({"start_sleep_ms": if i % 2 == 0 { 300 } else { 0 }}));
        let mut d = Daemon::spawn(&root, &[]);
        wait_answering(&mut d, &root);
        let status = d.terminate();
        assert_eq!(status.code(), Some(0), "run {i}: {status:?}\n{}", d.log());
        assert_stopped_cleanly(&d);
        assert!(!root.socket().exists(), "run {i}: socket left behind");
    }
}

#[tokio::test]
async fn a_blocked_start_hook_delays_only_its_own_plugin() {
    let root = root_with(json!({"start_sleep_ms": 6000}));
    let mut d = Daemon::spawn(&root, &["--plugin-change-timeout", "3"]);
    wait_answering(&mut d, &root);
    wait_log(&d, "started plugin=iscsi", Duration::from_secs(10));
    // iscsi started and takes changes while faulty's start hook blocks.
    let t = Instant::now();
    let (s, v) = request(
        &d.socket,
        "PUT",
        "/1.0/services/iscsi",
        r#"{"config": {"enabled": false, "targets": []}}"#,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let listing = get_ok(&d.socket, "/1.0/plugins").await;
    assert_eq!(plugin(&listing, "faulty")["state"], "starting", "{listing}");
    assert_eq!(plugin(&listing, "iscsi")["state"], "started", "{listing}");
    assert_eq!(
        get_ok(&d.socket, "/1.0").await["environment"]["system_is_ready"],
        false
    );
    // The start hook gives up at --plugin-change-timeout; then the system is ready.
    wait_log(&d, "System is ready", Duration::from_secs(10));
    let log = d.log();
    let gave_up = log
        .find("start failed")
        .unwrap_or_else(|| panic!("no 'start failed':\n{log}"));
    assert!(gave_up < log.find("System is ready").unwrap(), "{log}");
    let faulty = plugin(&get_ok(&d.socket, "/1.0/plugins").await, "faulty");
    assert!(
        faulty["degraded"]
            .as_str()
            .unwrap()
            .contains("'start' did not finish within 3s"),
        "{faulty}"
    );
    let status = d.terminate();
    assert_eq!(status.code(), Some(0), "{}", d.log());
    assert_stopped_cleanly(&d);
}

#[tokio::test]
async fn a_start_hook_that_killed_the_daemon_is_not_run_again_and_the_api_can_fix_it() {
    let root = root_with(json!({"abort_on_start": true}));
    // First start: faulty's start hook aborts the process.
    let mut d = Daemon::spawn(&root, &[]);
    let status = d.wait_exit();
    assert!(!status.success(), "{status:?}");
    assert!(
        !d.log().contains("System is ready"),
        "the hook ran during start-up:\n{}",
        d.log()
    );

    // Second start: up, with faulty left out and saying why; the rest works.
    let mut d = Daemon::start(&root, &[]);
    let listing = get_ok(&d.socket, "/1.0/plugins").await;
    let faulty = plugin(&listing, "faulty");
    assert_eq!(faulty["state"], "not-started", "{faulty}");
    let why = faulty["degraded"].as_str().unwrap();
    assert!(
        why.contains("start hook was running when the daemon last ended"),
        "{why}"
    );
    assert!(why.contains("restart the daemon"), "{why}");
    // iscsi's start hook runs beside faulty's: if it was running at the crash, it is a
    // suspect too and left out once, saying so. Either way it is served.
    let iscsi = plugin(&listing, "iscsi");
    assert!(
        iscsi["state"] == "started"
            || (iscsi["state"] == "not-started"
                && iscsi["degraded"]
                    .as_str()
                    .is_some_and(|d| d.contains("start hook was running"))),
        "{iscsi}"
    );
    assert!(get_ok(&d.socket, "/1.0/services/iscsi").await["config"].is_object());
    // The API fixes the config; the plugin stays out until the daemon restarts.
    let (s, v) = request(
        &d.socket,
        "PUT",
        "/1.0/services/faulty",
        r#"{"config": {"abort_on_start": false}}"#,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let faulty = plugin(&get_ok(&d.socket, "/1.0/plugins").await, "faulty");
    assert!(faulty["degraded"].is_string(), "{faulty}");
    assert_eq!(d.terminate().code(), Some(0), "{}", d.log());
    assert!(
        !d.log().contains("stopped plugin=faulty"),
        "a plugin that never started is not stopped:\n{}",
        d.log()
    );

    // Third start: both started again, healthy.
    let d = Daemon::start(&root, &[]);
    let listing = get_ok(&d.socket, "/1.0/plugins").await;
    for name in ["faulty", "iscsi"] {
        let p = plugin(&listing, name);
        assert_eq!(p["state"], "started", "{p}");
        assert!(p.get("degraded").is_none(), "{p}");
    }
    assert!(d.log().contains("started plugin=faulty"), "{}", d.log());
}

/// Fires `n` GETs at `path` at once; returns how many were refused with a 503 within
/// `within` (the others stay stuck until the tasks are aborted).
async fn stuck_gets(
    socket: &std::path::Path,
    path: &str,
    n: usize,
    within: Duration,
) -> (usize, Vec<tokio::task::JoinHandle<()>>, String) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (socket, path, tx) = (socket.to_path_buf(), path.to_string(), tx.clone());
            tokio::spawn(async move {
                let (s, v) = request(&socket, "GET", &path, "").await;
                let _ = tx.send((s, v["error"].as_str().unwrap_or_default().to_string()));
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + within;
    let (mut refused, mut message) = (0, String::new());
    while let Ok(Some((s, e))) = tokio::time::timeout_at(deadline, rx.recv()).await {
        assert_eq!(s, 503, "{e}");
        refused += 1;
        message = e;
    }
    (refused, tasks, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_stuck_plugin_cannot_starve_the_others() {
    let root = root_with(json!({"get_sleep_ms": 60000}));
    let d = Daemon::start(&root, &[]);
    let (refused, tasks, message) = stuck_gets(
        &d.socket,
        "/1.0/services/faulty",
        600,
        Duration::from_secs(3),
    )
    .await;
    // 32 reads run (stuck); the rest are refused at once, saying why.
    assert_eq!(refused, 600 - 32, "{message}");
    assert!(
        message.contains("plugin 'faulty' already has 32 calls in flight"),
        "{message}"
    );
    // Another plugin, and the daemon itself, answer as before.
    for path in ["/1.0/services/iscsi", "/1.0", "/1.0/plugins"] {
        let t = Instant::now();
        get_ok(&d.socket, path).await;
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{path}: {:?}",
            t.elapsed()
        );
    }
    let (s, v) = request(
        &d.socket,
        "PUT",
        "/1.0/services/iscsi",
        r#"{"config": {"enabled": false, "targets": []}}"#,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    for t in tasks {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_600_stuck_reads_in_flight_still_stops_promptly() {
    let root = root_with(json!({"get_sleep_ms": 60000}));
    let mut d = Daemon::start(&root, &[]);
    let (_, tasks, _) = stuck_gets(
        &d.socket,
        "/1.0/services/faulty",
        600,
        Duration::from_secs(3),
    )
    .await;
    let t = Instant::now();
    let status = tokio::task::block_in_place(|| d.terminate());
    // The drain deadline (10 s) cuts the stuck reads; the stop hooks still run.
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert_eq!(status.code(), Some(0), "{}", d.log());
    assert!(d.log().contains("stopped plugin=faulty"), "{}", d.log());
    assert_stopped_cleanly(&d);
    for t in tasks {
        t.abort();
    }
}

#[test]
fn a_blocked_stop_hook_does_not_hold_the_shutdown() {
    let root = root_with(json!({"stop_sleep_ms": 120000}));
    let mut d = Daemon::start(&root, &[]);
    let t = Instant::now();
    let status = d.terminate();
    // The stop hook deadline is 15 s, far below the 300 s change timeout.
    assert!(t.elapsed() < Duration::from_secs(25), "{:?}", t.elapsed());
    assert_eq!(status.code(), Some(0), "{}", d.log());
    let log = d.log();
    assert!(
        log.contains("stop failed") && log.contains("'stop' did not finish within 15s"),
        "{log}"
    );
    assert!(log.contains("stopped plugin=iscsi"), "{log}");
    assert_stopped_cleanly(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_queuing_behind_a_slow_change_are_bounded() {
    let root = root_with(json!({}));
    let d = Daemon::start(&root, &[]);
    let slow = tokio::spawn({
        let socket = d.socket.clone();
        async move {
            request(
                &socket,
                "PUT",
                "/1.0/services/faulty",
                r#"{"config": {"sleep_ms": 3000}}"#,
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let puts: Vec<_> = (0..100)
        .map(|i| {
            let socket = d.socket.clone();
            tokio::spawn(async move {
                let body = json!({"config": {"sleep_ms": i}}).to_string();
                let (s, v) = request(&socket, "PUT", "/1.0/services/faulty", &body).await;
                (s, v, Instant::now())
            })
        })
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    for p in puts {
        let (s, v, at) = p.await.unwrap();
        match s {
            200 => ok += 1,
            503 => {
                refused += 1;
                let e = v["error"].as_str().unwrap();
                assert!(
                    e.contains("busy: 4 changes are already running or waiting"),
                    "{e}"
                );
                assert!(
                    at - t < Duration::from_secs(2),
                    "refused late: {:?}",
                    at - t
                );
            }
            _ => panic!("{s}: {v}"),
        }
    }
    // One change runs, three wait their turn; the other 97 hold nothing.
    assert_eq!((ok, refused), (3, 97));
    assert_eq!(slow.await.unwrap().0, 200);
}
