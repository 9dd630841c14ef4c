//! Tier 3: `GET /1.0/debug/log` of the real daemon binary over a root whose journal is a
//! REAL `.journal` file (written by `systemd-journal-remote`) holding two boots, read by
//! the real `journalctl --root`.
//!
//! What `journalctl --root=<root>` does, as found on systemd 252 and pinned here:
//! * it reads every journal under `<root>/var/log/journal/<id>/` whose directory name is a
//!   128-bit id, whatever `<root>/etc/machine-id` says (a directory not named like an id
//!   is ignored);
//! * `-b 0` is the newest boot found in those files (with `--root`, journalctl cannot use
//!   the running kernel's boot id), `-b -1` the one before;
//! * a filter matching nothing prints nothing and exits 0 (so the API answers `[]`, as
//!   upstream expects); a boot offset that is not in the journal makes it fail (500).

use incus_osd_integration::tier3::messages;
use incus_osd_integration::{request, Daemon, Root};
use incus_osd_test_machine::{tier3_or_return, write_journal, JournalEntry, DEFAULT_REALTIME_US};
use serde_json::Value;

/// `Root::new()`'s machine id.
const MACHINE_ID: &str = "0123456789abcdef0123456789abcdef";
const BOOT_1: &str = "1111111111111111111111111111aaaa";
const BOOT_2: &str = "2222222222222222222222222222bbbb";
/// Boot 2 starts an hour after boot 1.
const BOOT_2_US: u64 = DEFAULT_REALTIME_US + 3_600_000_000;

fn daemon_entry(boot: &str, at_us: u64, msg: &str) -> JournalEntry {
    JournalEntry::new(msg)
        .boot(boot)
        .realtime_us(at_us)
        .unit("incus-osd.service")
        .identifier("incus-osd")
        .priority(6)
        .field("_MACHINE_ID", MACHINE_ID)
        .field("_PID", "412")
}

fn other_entry(boot: &str, at_us: u64, unit: &str, msg: &str) -> JournalEntry {
    let ident = unit.trim_end_matches(".service");
    JournalEntry::new(msg)
        .boot(boot)
        .realtime_us(at_us)
        .unit(unit)
        .identifier(ident)
        .priority(6)
        .field("_MACHINE_ID", MACHINE_ID)
}

/// Two boots, each with the daemon's entries interleaved with another unit's (and a unit
/// whose name merely starts with `incus-osd`).
fn two_boots() -> Vec<JournalEntry> {
    let s = 1_000_000;
    let (b1, b2) = (DEFAULT_REALTIME_US, BOOT_2_US);
    vec![
        daemon_entry(BOOT_1, b1, "INFO incus-osd starting (boot 1)"),
        other_entry(BOOT_1, b1 + s, "iscsid.service", "iscsid up (boot 1)"),
        daemon_entry(BOOT_1, b1 + 2 * s, "INFO System is ready (boot 1)"),
        daemon_entry(BOOT_1, b1 + 3 * s, "INFO System is shutting down (boot 1)"),
        daemon_entry(BOOT_2, b2, "INFO incus-osd starting (boot 2)"),
        other_entry(BOOT_2, b2 + s, "iscsid.service", "iscsid up (boot 2)"),
        other_entry(
            BOOT_2,
            b2 + 2 * s,
            "incus-osd-helper.service",
            "a different unit (boot 2)",
        ),
        daemon_entry(BOOT_2, b2 + 3 * s, "INFO System is ready (boot 2)"),
        daemon_entry(BOOT_2, b2 + 4 * s, "WARN last daemon entry (boot 2)"),
        other_entry(BOOT_2, b2 + 5 * s, "iscsid.service", "iscsid last (boot 2)"),
    ]
}

/// A root whose journal holds [`two_boots`] under `var/log/journal/<dir>/`.
fn root_with_journal(dir: &str) -> Root {
    let root = Root::new();
    let path = root
        .path()
        .join("var/log/journal")
        .join(dir)
        .join("system.journal");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    write_journal(&path, &two_boots()).expect("write the journal");
    root
}

async fn log(d: &Daemon, query: &str) -> (u16, Value) {
    request(&d.socket, "GET", &format!("/1.0/debug/log?{query}"), "").await
}

async fn log_ok(d: &Daemon, query: &str) -> Vec<Value> {
    let (status, v) = log(d, query).await;
    assert_eq!(status, 200, "?{query}: {v}");
    v["metadata"]
        .as_array()
        .unwrap_or_else(|| panic!("?{query}: metadata is not a list: {v}"))
        .clone()
}

fn msgs(entries: &[Value]) -> Vec<String> {
    messages(&Value::Array(entries.to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_log_reads_a_real_two_boot_journal() {
    tier3_or_return!();
    let root = root_with_journal(MACHINE_ID);
    let d = Daemon::start(&root, &[]);

    // The daemon's entries of the current (newest) boot only, as journald objects.
    let current = log_ok(&d, "unit=incus-osd").await;
    assert_eq!(
        msgs(&current),
        [
            "INFO incus-osd starting (boot 2)",
            "INFO System is ready (boot 2)",
            "WARN last daemon entry (boot 2)",
        ]
    );
    let stamps: Vec<&str> = current
        .iter()
        .map(|e| e["__REALTIME_TIMESTAMP"].as_str().unwrap())
        .collect();
    let want: Vec<String> = [0, 3, 4]
        .iter()
        .map(|i| (BOOT_2_US + i * 1_000_000).to_string())
        .collect();
    assert_eq!(stamps, want);
    for e in &current {
        assert_eq!(e["_SYSTEMD_UNIT"], "incus-osd.service", "{e}");
        assert_eq!(e["SYSLOG_IDENTIFIER"], "incus-osd", "{e}");
        assert_eq!(e["_BOOT_ID"], BOOT_2, "{e}");
        assert_eq!(e["_MACHINE_ID"], MACHINE_ID, "{e}");
        assert_eq!(e["PRIORITY"], "6", "{e}");
        assert!(e["__CURSOR"].is_string(), "{e}");
        assert!(e["__MONOTONIC_TIMESTAMP"].is_string(), "{e}");
    }
    // The explicit forms say the same: full unit name, boot 0, boot by id.
    for q in [
        "unit=incus-osd.service",
        "unit=incus-osd&boot=0",
        "unit=incus-osd.service&boot=0&entries=100",
        &format!("unit=incus-osd&boot={BOOT_2}"),
    ] {
        assert_eq!(log_ok(&d, q).await, current, "?{q}");
    }

    // The previous boot.
    let previous = log_ok(&d, "unit=incus-osd&boot=-1").await;
    assert_eq!(
        msgs(&previous),
        [
            "INFO incus-osd starting (boot 1)",
            "INFO System is ready (boot 1)",
            "INFO System is shutting down (boot 1)",
        ]
    );
    assert!(previous.iter().all(|e| e["_BOOT_ID"] == BOOT_1));
    assert_eq!(
        log_ok(&d, &format!("unit=incus-osd&boot={BOOT_1}")).await,
        previous
    );

    // entries=N keeps the last N.
    let last = log_ok(&d, "unit=incus-osd&entries=1").await;
    assert_eq!(msgs(&last), ["WARN last daemon entry (boot 2)"]);
    let last2 = log_ok(&d, "unit=incus-osd&boot=-1&entries=2").await;
    assert_eq!(
        msgs(&last2),
        [
            "INFO System is ready (boot 1)",
            "INFO System is shutting down (boot 1)"
        ]
    );

    // Without a unit: every unit of the current boot, in time order.
    let all = log_ok(&d, "").await;
    assert_eq!(
        msgs(&all),
        [
            "INFO incus-osd starting (boot 2)",
            "iscsid up (boot 2)",
            "a different unit (boot 2)",
            "INFO System is ready (boot 2)",
            "WARN last daemon entry (boot 2)",
            "iscsid last (boot 2)",
        ]
    );
    assert_eq!(
        msgs(&log_ok(&d, "unit=iscsid").await),
        ["iscsid up (boot 2)", "iscsid last (boot 2)"]
    );

    // since/until (as @epoch seconds, independent of the time zone).
    let ready_s = (BOOT_2_US + 3_000_000) / 1_000_000;
    assert_eq!(
        msgs(&log_ok(&d, &format!("unit=incus-osd&since=@{ready_s}")).await),
        [
            "INFO System is ready (boot 2)",
            "WARN last daemon entry (boot 2)"
        ]
    );
    assert_eq!(
        msgs(&log_ok(&d, &format!("unit=incus-osd&until=@{}", ready_s - 1)).await),
        ["INFO incus-osd starting (boot 2)"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_match_is_an_empty_list_and_bad_filters_are_refused() {
    tier3_or_return!();
    let root = root_with_journal(MACHINE_ID);
    let d = Daemon::start(&root, &[]);

    // journalctl prints nothing and exits 0 for a filter that matches nothing: `[]`.
    for q in [
        "unit=no-such-unit",
        "unit=incus-osd&since=@4000000000",
        "unit=iscsid&until=@1000000000",
    ] {
        let (status, v) = log(&d, q).await;
        assert_eq!(status, 200, "?{q}: {v}");
        assert_eq!(v["metadata"], serde_json::json!([]), "?{q}");
        assert_eq!(v["type"], "sync");
    }

    // Refused before journalctl runs: 400 with the reason.
    for (q, why) in [
        ("unit=--all", "invalid unit '--all'"),
        ("unit=a%20b", "invalid unit 'a b'"),
        (
            "boot=yesterday",
            "invalid boot 'yesterday' (expected an offset such as 0 or -1, or a boot ID)",
        ),
        (
            "entries=0",
            "invalid entries '0' (expected a positive number)",
        ),
        (
            "entries=-5",
            "invalid entries '-5' (expected a positive number)",
        ),
        (
            "entries=ten",
            "invalid entries 'ten' (expected a positive number)",
        ),
        ("since=--reverse", "invalid since '--reverse'"),
        ("until=-1h", "invalid until '-1h'"),
    ] {
        let (status, v) = log(&d, q).await;
        assert_eq!(status, 400, "?{q}: {v}");
        assert_eq!(v["error_code"], 400, "?{q}: {v}");
        assert_eq!(v["error"], why, "?{q}");
    }

    // A boot the journal does not have: journalctl fails, and the API says so (500).
    let (status, v) = log(&d, "unit=incus-osd&boot=-5").await;
    assert_eq!(status, 500, "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(err.starts_with("Failed to run: journalctl "), "{err}");
    assert!(err.contains("-b -5"), "{err}");
    assert!(err.contains("exit status 1"), "{err}");
    assert!(err.contains("No such boot ID in journal"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_directory_need_not_match_the_roots_machine_id() {
    tier3_or_return!();
    // Another machine's id: journalctl --root still reads it.
    let other = root_with_journal("fedcba9876543210fedcba9876543210");
    let d = Daemon::start(&other, &[]);
    assert_eq!(
        msgs(&log_ok(&d, "unit=incus-osd&entries=1").await),
        ["WARN last daemon entry (boot 2)"]
    );
    assert_eq!(log_ok(&d, "unit=incus-osd&boot=-1").await.len(), 3);
    drop(d);

    // A directory that is not named like an id is not a journal directory: there is no
    // boot at all, so even boot 0 cannot be selected.
    let odd = root_with_journal("not-a-machine-id");
    let d = Daemon::start(&odd, &[]);
    let (status, v) = log(&d, "unit=incus-osd").await;
    assert_eq!(status, 500, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("No such boot ID in journal"),
        "{v}"
    );

    // No journal at all: the same.
    let empty = Root::new();
    let d = Daemon::start(&empty, &[]);
    let (status, v) = log(&d, "").await;
    assert_eq!(status, 500, "{v}");
}
