//! Tier 3, end to end: the built daemon and every workspace plugin installed in a real
//! booted systemd (an nspawn container), started through D-Bus with the shipped unit file
//! (`Type=notify`), and driven through its socket, reached from the host through
//! `/proc/<pid>/root`.
//!
//! Each test boots its own machine on its own [`Site`] (machine id, journal and state in
//! host directories that outlive a boot). The unit gets one drop-in: debug logging of the
//! daemon's own crate (see `tier3::DROP_IN`).

use std::time::{Duration, Instant};

use incus_osd::platform::systemd::UnitAction;
use incus_osd_integration::tier3::{
    install_and_start, log_messages, messages, show, socket, wait_powered_off, Site, IMAGE_VERSION,
    NETLOGD_FAILING, UNIT,
};
use incus_osd_integration::{get_ok, request, workspace_plugins};
use incus_osd_test_machine::{tier3_or_return, Machine};
use serde_json::{json, Value};

const NETLOGD: &str = "systemd-netlogd.service";
const NETLOGD_CONF: &str = "/etc/systemd/netlogd.conf";

async fn boot(site: &Site) -> Machine {
    let b = site.builder();
    let m = tokio::task::spawn_blocking(move || b.boot().expect("boot"))
        .await
        .unwrap();
    eprintln!("machine {} booted in {:?}", m.name(), m.boot_duration());
    m
}

/// The plugin names, from the built libraries (`libincus_osd_plugin_<name>.so`).
fn plugin_names() -> Vec<String> {
    plugin_names_where(|_| true)
}

/// The plugins with a stop hook (providers have none): those the shutdown stops.
/// The plugins the registry stops at shutdown: those with a stop hook, except applications
/// (the applications subsystem stops the installed ones, first; none is installed here).
fn stopped_plugin_names() -> Vec<String> {
    plugin_names_where(|m| m.has(plugin_api::Hook::Stop) && m.kind != plugin_api::Kind::Application)
}

fn plugin_names_where(keep: impl Fn(&plugin_api::Manifest) -> bool) -> Vec<String> {
    // The names their manifests give (`libincus_osd_plugin_provider_images.so` is `images`).
    let mut v: Vec<String> = workspace_plugins()
        .iter()
        .map(|p| {
            plugin_host::loader::open(p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .manifest
        })
        .filter(|m| keep(m))
        .map(|m| m.name)
        .collect();
    v.sort();
    v
}

/// The daemon's own lines (`SYSLOG_IDENTIFIER=incus-osd`) of a journal listing, as the
/// upstream CLI keeps them.
fn daemon_lines(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e["SYSLOG_IDENTIFIER"] == "incus-osd")
        .map(|e| e["MESSAGE"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The machine's journal for the unit, read inside it.
fn unit_journal(m: &Machine) -> Vec<Value> {
    m.run_ok(&[
        "journalctl",
        "--no-pager",
        "-o",
        "json",
        "-b",
        "0",
        "-u",
        UNIT,
    ])
    .unwrap()
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect()
}

/// [`unit_journal`] once the daemon's `needle` line reached it (journald reads the
/// daemon's stdout stream on its own time), or after 10 s whatever it holds.
fn journal_with(m: &Machine, needle: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    tokio::task::block_in_place(|| loop {
        let j = unit_journal(m);
        if daemon_lines(&j).iter().any(|l| l.contains(needle)) || Instant::now() > deadline {
            return j;
        }
        std::thread::sleep(Duration::from_millis(50));
    })
}

/// `/1.0/debug/log?unit=incus-osd` once the daemon's "System is ready" reached the
/// journal (journald reads the daemon's stdout stream on its own time), or after 10 s.
async fn unit_log_once_ready(sock: &std::path::Path) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, v) = request(sock, "GET", "/1.0/debug/log?unit=incus-osd", "").await;
        assert_eq!(status, 200, "{v}");
        let entries = v["metadata"].as_array().unwrap().clone();
        let ready = daemon_lines(&entries)
            .iter()
            .any(|l| l.contains("INFO System is ready"));
        if ready || Instant::now() > deadline {
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn position(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{}", lines.join("\n")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unit_starts_the_daemon_which_reports_ready_to_systemd() {
    tier3_or_return!();
    let site = Site::new();
    let m = boot(&site).await;
    let (sd, took) = install_and_start(&m).await;
    eprintln!("start job of {UNIT} done in {took:?}");

    // Type=notify: the start job is done only after READY=1, so the unit is active at once.
    assert_eq!(show(&m, UNIT, "Type"), "notify");
    assert_eq!(sd.active_state(UNIT).await.unwrap(), "active");
    assert_eq!(show(&m, UNIT, "ActiveState"), "active");
    assert_eq!(show(&m, UNIT, "SubState"), "running");
    let pid = show(&m, UNIT, "MainPID");
    let exe = std::fs::read_link(m.host_path(format!("/proc/{pid}/exe"))).unwrap();
    assert_eq!(exe, std::path::Path::new("/usr/local/bin/incus-osd"));

    // The socket, from the host through /proc/<pid>/root.
    let sock = socket(&m);
    // READY=1 is sent once the API answers; start-up then finishes and says so.
    let mut env = get_ok(&sock, "/1.0").await["environment"].clone();
    for _ in 0..500 {
        if env["system_is_ready"] == true {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        env = get_ok(&sock, "/1.0").await["environment"].clone();
    }
    assert_eq!(env["system_is_ready"], true, "{env}");
    assert_eq!(env["os_name"], "IncusOS");
    assert_eq!(env["os_version"], IMAGE_VERSION);
    assert_eq!(env["machine_id"], site.machine_id.as_str());

    // Every workspace plugin loaded from /usr/lib/incus-osd/plugins.
    let plugins = get_ok(&sock, "/1.0/plugins").await;
    assert_eq!(plugins["failed"], json!([]), "{plugins}");
    let mut loaded: Vec<String> = plugins["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    loaded.sort();
    assert_eq!(loaded, plugin_names());

    // READY=1 (and its barrier) came before the daemon finished starting: systemd's
    // "Started" (the start job's end) precedes the daemon's "System is ready", which stays
    // the unit's last line as upstream's conformance test expects.
    let journal = journal_with(&m, "INFO System is ready");
    let ready = journal
        .iter()
        .position(|e| {
            e["SYSLOG_IDENTIFIER"] == "incus-osd"
                && e["MESSAGE"]
                    .as_str()
                    .is_some_and(|s| s.contains("INFO System is ready"))
        })
        .expect("the daemon logged System is ready");
    let started = journal
        .iter()
        .position(|e| e["JOB_TYPE"] == "start" && e["JOB_RESULT"] == "done")
        .expect("systemd logged the start job's end");
    assert!(started < ready, "{journal:#?}");
    assert_eq!(journal[ready]["_SYSTEMD_UNIT"], UNIT);
    assert_eq!(journal[ready]["_PID"], pid.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_log_shows_the_daemon_ready_then_the_messages_written_through_the_socket() {
    tier3_or_return!();
    let site = Site::new();
    let m = boot(&site).await;
    let (_sd, _) = install_and_start(&m).await;
    let sock = socket(&m);

    let entries = unit_log_once_ready(&sock).await;
    let ours = daemon_lines(&entries);
    assert!(
        ours.last().unwrap().contains("INFO System is ready"),
        "{ours:#?}"
    );
    for e in &entries {
        assert!(e["__REALTIME_TIMESTAMP"].is_string(), "{e}");
        assert!(e["MESSAGE"].is_string(), "{e}");
    }

    for (level, text) in [
        ("INFO", "Test message one"),
        ("WARN", "Test message two"),
        ("ERROR", "Test message three"),
    ] {
        let body = json!({"level": level, "message": text}).to_string();
        let (status, v) = request(&sock, "POST", "/internal/tui/:write-message", &body).await;
        assert_eq!(status, 200, "{level}: {v}");
    }
    // journald takes the lines from the daemon's stdout stream: wait for the third.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines = log_messages(&sock, "unit=incus-osd").await;
        if lines
            .last()
            .is_some_and(|l| l.contains("Test message three"))
            || Instant::now() > deadline
        {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let n = lines.len();
    assert!(n >= 3, "{lines:#?}");
    assert!(lines[n - 3].contains("INFO Test message one"), "{lines:#?}");
    assert!(lines[n - 2].contains("WARN Test message two"), "{lines:#?}");
    assert!(
        lines[n - 1].contains("ERROR Test message three"),
        "{lines:#?}"
    );
    // entries=3 gives the same three.
    let last3 = request(&sock, "GET", "/1.0/debug/log?unit=incus-osd&entries=3", "")
        .await
        .1["metadata"]
        .clone();
    assert_eq!(messages(&last3), lines[n - 3..]);
}

/// Upstream's TestIncusOSAPIDebug reads the last entry of `?unit=incus-osd` — all of
/// `journalctl -u incus-osd`, systemd's own messages about the unit included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_debug_check_the_last_unit_line_is_system_ready() {
    tier3_or_return!();
    let site = Site::new();
    let m = boot(&site).await;
    let (_sd, _) = install_and_start(&m).await;
    let lines = messages(&Value::Array(unit_log_once_ready(&socket(&m)).await));
    assert!(
        lines.last().unwrap().contains("INFO System is ready"),
        "got unexpected final log line: {:?}",
        lines.last()
    );
}

async fn logging(sock: &std::path::Path) -> Value {
    get_ok(sock, "/1.0/system/logging").await
}

async fn put_logging(
    sock: &std::path::Path,
    address: &str,
    protocol: &str,
    format: &str,
) -> (u16, Value) {
    let body = json!({"config": {"syslog": {
        "address": address, "protocol": protocol, "log_format": format}}});
    request(sock, "PUT", "/1.0/system/logging", &body.to_string()).await
}

fn conf(m: &Machine) -> Option<String> {
    std::fs::read_to_string(m.host_path(NETLOGD_CONF)).ok()
}

/// Debian 12 has no `systemd-netlogd`: the machine runs a stand-in unit of that name (a
/// service that only sleeps), so the restarts and stops are real systemd jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_restarts_a_stand_in_netlogd_unit_and_writes_its_config() {
    tier3_or_return!();
    let site = Site::new();
    let m = boot(&site).await;
    let (sd, _) = install_and_start(&m).await;
    let sock = socket(&m);

    assert_eq!(
        logging(&sock).await,
        json!({"config": {"syslog": {"address": "", "protocol": "", "log_format": ""}}, "state": {}})
    );
    assert_eq!(conf(&m), None);
    assert_eq!(sd.active_state(NETLOGD).await.unwrap(), "inactive");

    // Set: the file, exactly; the unit (re)started; the config as sent.
    let (status, v) = put_logging(&sock, "127.0.0.1", "tcp", "rfc5424").await;
    assert_eq!(status, 200, "{v}");
    let expected = "[Network]\nAddress=127.0.0.1\nProtocol=tcp\nLogFormat=rfc5424\n";
    assert_eq!(conf(&m).as_deref(), Some(expected));
    assert_eq!(sd.active_state(NETLOGD).await.unwrap(), "active");
    assert_eq!(show(&m, NETLOGD, "ActiveState"), "active");
    let first_pid = show(&m, NETLOGD, "MainPID");
    let sent =
        json!({"syslog": {"address": "127.0.0.1", "protocol": "tcp", "log_format": "rfc5424"}});
    assert_eq!(logging(&sock).await["config"], sent);

    // Set again (defaults left empty): a restart, a new process, defaults in the file only.
    let (status, v) = put_logging(&sock, "127.0.0.1", "", "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        conf(&m).as_deref(),
        Some("[Network]\nAddress=127.0.0.1\nProtocol=udp\nLogFormat=rfc5424\n")
    );
    assert_eq!(show(&m, NETLOGD, "ActiveState"), "active");
    assert_ne!(show(&m, NETLOGD, "MainPID"), first_pid, "restarted");
    assert_eq!(
        logging(&sock).await["config"],
        json!({"syslog": {"address": "127.0.0.1", "protocol": "", "log_format": ""}})
    );

    // Off: the file removed, the unit stopped.
    let (status, v) = put_logging(&sock, "", "", "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(conf(&m), None);
    assert_eq!(sd.active_state(NETLOGD).await.unwrap(), "inactive");
    assert_eq!(show(&m, NETLOGD, "ActiveState"), "inactive");
    assert_eq!(logging(&sock).await["config"]["syslog"]["address"], "");

    // On again, then a restart that fails: the previous file stays, the config too.
    let (status, v) = put_logging(&sock, "127.0.0.1", "tcp", "rfc5424").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(sd.active_state(NETLOGD).await.unwrap(), "active");
    m.write_file(format!("/etc/systemd/system/{NETLOGD}"), NETLOGD_FAILING)
        .unwrap();
    sd.reload_daemon().await.unwrap();
    let (status, v) = put_logging(&sock, "127.0.0.2", "udp", "rfc3339").await;
    assert_eq!(status, 500, "{v}");
    assert_eq!(
        v["error"],
        format!("job to restart {NETLOGD} failed: result 'failed'")
    );
    assert_eq!(conf(&m).as_deref(), Some(expected));
    assert_eq!(logging(&sock).await["config"], sent);
    assert_eq!(sd.active_state(NETLOGD).await.unwrap(), "failed");

    // A bad value never reaches the file or the unit.
    let (status, v) = put_logging(&sock, "127.0.0.1", "carrier-pigeon", "").await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(conf(&m).as_deref(), Some(expected));
    drop(sd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poweroff_answers_then_really_powers_the_machine_off() {
    tier3_or_return!();
    let site = Site::new();
    let mut m = boot(&site).await;
    let (_sd, _) = install_and_start(&m).await;
    let sock = socket(&m);

    let (status, v) = request(&sock, "POST", "/1.0/system/:poweroff", "").await;
    assert_eq!(status, 200, "{v}");
    let asked = Instant::now();
    let off = tokio::task::block_in_place(|| wait_powered_off(&mut m, Duration::from_secs(15)));
    assert!(
        off,
        "still running 15 s after :poweroff:\n{}",
        m.console_log()
    );
    eprintln!("powered off {:?} after the request", asked.elapsed());
    let console = m.console_log();
    assert!(
        console.contains("System Power Off") && console.contains("has been shut down"),
        "{console}"
    );
    assert!(!console.contains("being rebooted"), "{console}");

    // The journal (kept on the host) shows the shutdown sequence, in order, before the end.
    let journal = site.journal(&["-u", UNIT]);
    let lines = daemon_lines(&journal);
    let requested = position(&lines, "power action requested action=\"poweroff\"");
    let down = position(&lines, "INFO System is shutting down");
    assert!(requested < down);
    for name in stopped_plugin_names() {
        let stopped = lines
            .iter()
            .position(|l| l.contains("DEBUG stopped") && l.contains(&format!("plugin={name}")))
            .unwrap_or_else(|| panic!("plugin {name} not stopped:\n{}", lines.join("\n")));
        assert!(stopped > down, "{name}");
    }
    // Then systemd's own stop of the unit: SIGTERM, and the daemon's clean end.
    let term = position(&lines, "INFO SIGTERM received");
    assert!(down < term, "{lines:#?}");
    assert!(lines.last().unwrap().contains("INFO stopped"), "{lines:#?}");
    // State saved on the persistent state directory, the boot recorded.
    let state: Value = serde_json::from_slice(
        &std::fs::read(site.state_dir().join("state.json")).expect("state saved"),
    )
    .unwrap();
    assert_eq!(state["os"]["successful_boot"], true, "{state}");
    assert_eq!(state["os"]["running_release"], IMAGE_VERSION, "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_answers_then_really_reboots_and_the_previous_boot_is_in_the_log() {
    tier3_or_return!();
    let site = Site::new();
    let mut m = boot(&site).await;
    let (_sd, _) = install_and_start(&m).await;
    let sock = socket(&m);
    let first_boot = m
        .run_ok(&["cat", "/proc/sys/kernel/random/boot_id"])
        .unwrap()
        .trim()
        .replace('-', "");

    // A setting made before the reboot, to be found again after it.
    let (status, v) = put_logging(&sock, "127.0.0.1", "tcp", "rfc5424").await;
    assert_eq!(status, 200, "{v}");

    let (status, v) = request(&sock, "POST", "/1.0/system/:reboot", "").await;
    assert_eq!(status, 200, "{v}");
    let off = tokio::task::block_in_place(|| wait_powered_off(&mut m, Duration::from_secs(15)));
    assert!(
        off,
        "still running 15 s after :reboot:\n{}",
        m.console_log()
    );
    // nspawn ends a container that reboots (exit status 133, for a supervisor to start it
    // again) and says so.
    let console = m.console_log();
    assert!(
        console.contains("System Reboot") && console.contains("is being rebooted"),
        "{console}"
    );
    drop(_sd);
    drop(m);

    // "The system comes back": the same machine (id, journal, state) boots again.
    let m = boot(&site).await;
    let (_sd, _) = install_and_start(&m).await;
    let sock = socket(&m);
    let second_boot = m
        .run_ok(&["cat", "/proc/sys/kernel/random/boot_id"])
        .unwrap()
        .trim()
        .replace('-', "");
    assert_ne!(first_boot, second_boot);

    // READY=1 comes once the API answers: wait for start-up to finish.
    incus_osd_integration::tier3::wait_system_ready(&sock).await;
    let (status, v) = request(&sock, "GET", "/1.0/debug/log?unit=incus-osd&boot=-1", "").await;
    assert_eq!(status, 200, "{v}");
    let previous = v["metadata"].as_array().unwrap().clone();
    assert!(!previous.is_empty());
    assert!(previous
        .iter()
        .all(|e| e["_BOOT_ID"] == first_boot.as_str()));
    let lines = daemon_lines(&previous);
    let ready = position(&lines, "INFO System is ready");
    let requested = position(&lines, "power action requested action=\"reboot\"");
    let down = position(&lines, "INFO System is shutting down");
    assert!(ready < requested && requested < down, "{lines:#?}");

    let (status, v) = request(&sock, "GET", "/1.0/debug/log?unit=incus-osd", "").await;
    assert_eq!(status, 200, "{v}");
    let current = v["metadata"].as_array().unwrap();
    assert!(current
        .iter()
        .all(|e| e["_BOOT_ID"] == second_boot.as_str()));
    assert!(daemon_lines(current)
        .last()
        .unwrap()
        .contains("INFO System is ready"));
    // The state survived: the setting is served and applied again at start (the file
    // rewritten on the fresh /etc, the unit started).
    assert_eq!(
        logging(&sock).await["config"],
        json!({"syslog": {"address": "127.0.0.1", "protocol": "tcp", "log_format": "rfc5424"}})
    );
    assert_eq!(
        conf(&m).as_deref(),
        Some("[Network]\nAddress=127.0.0.1\nProtocol=tcp\nLogFormat=rfc5424\n")
    );
    assert_eq!(show(&m, NETLOGD, "ActiveState"), "active");
    // Only two boots exist.
    let (status, _) = request(&sock, "GET", "/1.0/debug/log?unit=incus-osd&boot=-2", "").await;
    assert_eq!(status, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_unit_stops_the_daemon_cleanly() {
    tier3_or_return!();
    let site = Site::new();
    let m = boot(&site).await;
    let (sd, _) = install_and_start(&m).await;
    let sock = socket(&m);
    assert!(sock.exists());
    let pid = show(&m, UNIT, "MainPID");

    let t = Instant::now();
    sd.run_job(UnitAction::Stop, UNIT).await.expect("stop");
    eprintln!("stop job done in {:?}", t.elapsed());
    assert_eq!(sd.active_state(UNIT).await.unwrap(), "inactive");
    assert_eq!(show(&m, UNIT, "Result"), "success");
    assert_eq!(show(&m, UNIT, "ExecMainStatus"), "0");
    assert!(!m.host_path(format!("/proc/{pid}")).exists());
    assert!(!sock.exists(), "the socket is removed");
    assert!(std::os::unix::net::UnixStream::connect(&sock).is_err());

    let lines = daemon_lines(&journal_with(&m, "INFO stopped"));
    let term = position(&lines, "INFO SIGTERM received");
    let down = position(&lines, "INFO shutting down");
    let last = lines.last().unwrap();
    assert!(term < down, "{lines:#?}");
    assert!(last.contains("INFO stopped"), "{lines:#?}");
    for name in stopped_plugin_names() {
        let stopped = lines
            .iter()
            .position(|l| l.contains("DEBUG stopped") && l.contains(&format!("plugin={name}")))
            .unwrap_or_else(|| panic!("plugin {name} not stopped:\n{}", lines.join("\n")));
        assert!(down < stopped && stopped < lines.len() - 1, "{name}");
    }
}
