//! Figures 5-7: the daemon under memory and connection pressure (the resource limits of
//! issue 7, items 7 and 8). Each figure runs its own daemon with the fixture plugins it
//! needs: `faulty` (a service whose PUT sleeps `sleep_ms`: the slow change) and
//! `backup-app` (an application with restore).
//!
//! 5. 100 clients each PUT a 15 MiB body to a service while a slow change of that service
//!    runs; peak resident memory over idle. Three ways: the length declared
//!    (`Content-Length`), chunked (no length), and bodies under the JSON limit (200 KiB),
//!    which reach the queue of waiting changes.
//! 6. 20 concurrent 64 MiB restore uploads to an application; peak resident memory over
//!    idle. Uploads are stored under the daemon's root (in `TMPDIR`) before the plugin
//!    reads them: 1.3 GB must be free there.
//! 7. 2,000 idle connections (connected, nothing sent), then `GET /1.0` latency, a PUT,
//!    and resident memory with them open, against the same daemon without them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use serde_json::json;
use tokio::task::JoinSet;

use crate::client::{self, Outcome, Upload};
use crate::procs::{self, Memory, Peak, Proc};
use crate::report::{Report, Verdict};
use crate::stats::{fmt_dur, fmt_mb, Latencies};
use crate::{idle_memory, loaded_plugins, start_daemon, BLOCK, STOP_GRACE};

/// Budget: peak resident memory over idle under queued changes and uploads (item 8).
pub const MAX_GROWTH: u64 = 128_000_000;

const MIB: usize = 1024 * 1024;
const CLIENTS: usize = 100;
const BIG_PUT: usize = 15 * MIB;
const SMALL_PUT: usize = 200 * 1024;
/// How long the slow change sleeps.
const SLOW_MS: u64 = 4000;
/// When the clients start, from the slow change's start.
const CLIENTS_AFTER: Duration = Duration::from_millis(300);
const RESTORES: usize = 20;
const RESTORE_SIZE: usize = 64 * MIB;
const IDLE_CONNS: usize = 2000;
/// Sequential requests per path for the latencies of figure 7.
const IDLE_REQUESTS: usize = 1000;
/// How long any one upload may take before it counts as unanswered.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// The fixture libraries figures 5-7 load, by their library stem.
pub const FIXTURES: [&str; 2] = ["fixture_faulty", "fixture_backup_app"];

/// One pressure run: the idle and peak memory and how the clients were answered.
struct Run {
    idle: Memory,
    peak: Peak,
    answers: Answers,
}

impl Run {
    fn growth(&self) -> u64 {
        self.peak.rss.saturating_sub(self.idle.rss)
    }

    fn peak_note(&self) -> String {
        if self.peak.exact {
            format!(
                "peak from VmHWM, sampled VmRSS max {}",
                fmt_mb(self.peak.sampled)
            )
        } else {
            "peak from VmRSS sampled every 5 ms (VmHWM could not be reset)".into()
        }
    }
}

/// The clients' answers by status (`413`, `503`, `no answer`): how many, when the last of
/// them came (from the start of the clients), and one error text.
struct Answers(BTreeMap<String, (usize, Duration, String)>);

impl Answers {
    fn new(outcomes: &[(Outcome, Duration)]) -> Answers {
        let mut by_status = BTreeMap::new();
        for (o, at) in outcomes {
            let e = by_status
                .entry(o.label())
                .or_insert_with(|| (0, Duration::ZERO, o.detail()));
            e.0 += 1;
            e.1 = e.1.max(*at);
        }
        Answers(by_status)
    }
}

impl std::fmt::Display for Answers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(status, (n, last, detail))| {
                let why = if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                };
                format!("{n} x {status} within {}{why}", fmt_dur(*last))
            })
            .collect();
        f.write_str(&parts.join("; "))
    }
}

/// Starts the daemon on `plugins` and checks that `name` loaded.
async fn daemon_with(daemon: &Path, plugins: &Path, name: &str) -> Result<Proc> {
    let (proc, _) = start_daemon(daemon, plugins, &format!("daemon ({name} fixture)")).await?;
    let loaded = loaded_plugins(&proc.socket).await?;
    ensure!(
        loaded.iter().any(|n| n == name),
        "the {name} fixture is not loaded; loaded: {loaded:?}"
    );
    Ok(proc)
}

/// `clients` concurrent uploads of `body`, all started at once; how they were answered.
async fn concurrent(
    socket: &Path,
    method: &'static str,
    path: &'static str,
    body: &Upload,
    clients: usize,
) -> Result<Answers> {
    let t0 = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let (socket, body) = (socket.to_path_buf(), body.clone());
        tasks.spawn(async move {
            let o = client::upload(&socket, method, path, &body, UPLOAD_TIMEOUT).await;
            (o, t0.elapsed())
        });
    }
    let mut out = Vec::with_capacity(clients);
    while let Some(r) = tasks.join_next().await {
        out.push(r.context("an upload task crashed")?);
    }
    Ok(Answers::new(&out))
}

/// A PUT body of `len` bytes: a valid config for `faulty` and a filler field.
fn put_body(len: usize) -> Bytes {
    let head = br#"{"config":{"sleep_ms":0},"pad":""#;
    let tail = br#""}"#;
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(head);
    v.resize(len - tail.len(), b'a');
    v.extend_from_slice(tail);
    Bytes::from(v)
}

/// `len` pseudo-random bytes (not an archive any plugin accepts).
fn noise(len: usize) -> Bytes {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

/// Figure 5, one way of sending: a daemon with `faulty`, its idle memory, then a slow
/// change and `CLIENTS` PUTs of `body` behind it.
async fn queued_puts(daemon: &Path, plugins: &Path, body: &Upload) -> Result<(Run, String)> {
    let proc = daemon_with(daemon, plugins, "faulty").await?;
    let idle = idle_memory(&proc, &["/1.0", "/1.0/services/faulty"]).await?;
    let watch = proc.watch_peak();
    let started = Instant::now();
    let slow = tokio::spawn({
        let socket = proc.socket.clone();
        let body = Upload::json(&json!({"config": {"sleep_ms": SLOW_MS}}));
        async move {
            let o = client::upload(
                &socket,
                "PUT",
                "/1.0/services/faulty",
                &body,
                UPLOAD_TIMEOUT,
            )
            .await;
            (o, started.elapsed())
        }
    });
    tokio::time::sleep(CLIENTS_AFTER).await;
    let answers = concurrent(&proc.socket, "PUT", "/1.0/services/faulty", body, CLIENTS).await?;
    let (slow, slow_end) = slow.await.context("the slow change's task crashed")?;
    let peak = watch.finish()?;
    proc.stop(STOP_GRACE);
    let slow_note = format!(
        "the slow change answered {} after {}",
        slow.label(),
        fmt_dur(slow_end)
    );
    Ok((
        Run {
            idle,
            peak,
            answers,
        },
        slow_note,
    ))
}

pub async fn figure_5(report: &mut Report, daemon: &Path, plugins: &Path) -> Result<()> {
    let big = put_body(BIG_PUT);
    let ways = [
        ("15 MiB, Content-Length", Upload::new(big.clone(), true)),
        ("15 MiB, chunked", Upload::new(big, false)),
        (
            "200 KiB (under the limit)",
            Upload::new(put_body(SMALL_PUT), true),
        ),
    ];
    let mut runs = vec![];
    for (label, body) in &ways {
        eprintln!("5. {CLIENTS} PUTs of {label} behind a slow change …");
        runs.push((label, queued_puts(daemon, plugins, body).await?));
    }
    report.section(format!(
        "5. {CLIENTS} clients PUT to a service while a slow change ({:.0} s) runs: peak VmRSS \
         over idle",
        SLOW_MS as f64 / 1000.0
    ));
    report.header("peak - idle", "idle VmRSS");
    for (label, (run, slow)) in &runs {
        let growth = run.growth();
        report.row(
            label,
            fmt_mb(growth),
            fmt_mb(run.idle.rss),
            None,
            Verdict::budget(growth <= MAX_GROWTH, format!("<= {}", fmt_mb(MAX_GROWTH))),
        );
        report.note(format!(
            "5. {label}: {}; {slow} (the clients started {} after it); {}",
            run.answers,
            fmt_dur(CLIENTS_AFTER),
            run.peak_note()
        ));
    }
    Ok(())
}

pub async fn figure_6(report: &mut Report, daemon: &Path, plugins: &Path) -> Result<()> {
    let tmp = std::env::temp_dir();
    let need = (RESTORES * RESTORE_SIZE + 256 * MIB) as u64;
    let free = procs::free_space(&tmp)?;
    ensure!(
        free >= need,
        "figure 6 stores {RESTORES} uploads of {} MiB under the daemon's root in {}, but only \
         {} is free there (it needs {}): point TMPDIR at a larger file system (a tmpfs will do: \
         its pages are not counted in the daemon's VmRSS), or leave figure 6 out with --figures",
        RESTORE_SIZE / MIB,
        tmp.display(),
        fmt_mb(free),
        fmt_mb(need)
    );
    eprintln!(
        "6. {RESTORES} concurrent restore uploads of {} MiB …",
        RESTORE_SIZE / MIB
    );
    let body = Upload::new(noise(RESTORE_SIZE), true);
    let proc = daemon_with(daemon, plugins, "backup-app").await?;
    let idle = idle_memory(&proc, &["/1.0", "/1.0/applications/backup-app"]).await?;
    let watch = proc.watch_peak();
    let answers = concurrent(
        &proc.socket,
        "POST",
        "/1.0/applications/backup-app/:restore",
        &body,
        RESTORES,
    )
    .await?;
    let peak = watch.finish()?;
    proc.stop(STOP_GRACE);
    let run = Run {
        idle,
        peak,
        answers,
    };
    report.section(format!(
        "6. {RESTORES} concurrent {} MiB restore uploads to an application: peak VmRSS over idle",
        RESTORE_SIZE / MIB
    ));
    report.header("peak - idle", "idle VmRSS");
    let growth = run.growth();
    report.row(
        &format!("{RESTORES} x {} MiB", RESTORE_SIZE / MIB),
        fmt_mb(growth),
        fmt_mb(run.idle.rss),
        None,
        Verdict::budget(growth <= MAX_GROWTH, format!("<= {}", fmt_mb(MAX_GROWTH))),
    );
    report.note(format!("6. {}; {}", run.answers, run.peak_note()));
    report.note(format!(
        "6. the archives are random bytes, which backup-app refuses at its first read: the \
         figure is the daemon's upload, storage and hand-off, not a plugin's own buffering; \
         uploads were stored under {}",
        tmp.display()
    ));
    Ok(())
}

/// A latency row of figure 7: with the idle connections open, and without.
fn dur_row(report: &mut Report, figure: &str, with: Duration, without: Duration) {
    report.row(
        figure,
        fmt_dur(with),
        fmt_dur(without),
        Some(with.as_secs_f64() / without.as_secs_f64().max(1e-12)),
        Verdict::Info,
    );
}

/// `GET /1.0` and `GET /1.0/services/faulty`, [`IDLE_REQUESTS`] each, sequential on one
/// connection.
fn get_latencies(socket: &Path) -> Result<[Latencies; 2]> {
    client::sequential_own_thread(
        socket,
        ["/1.0", "/1.0/services/faulty"],
        IDLE_REQUESTS,
        BLOCK,
    )
}

/// Connect and a first `GET /1.0` on the new connection, timed.
async fn first_get(socket: &Path) -> Result<Duration> {
    let t0 = Instant::now();
    let reply = client::get_once(socket, "/1.0").await?;
    let took = t0.elapsed();
    ensure!(
        reply.status == hyper::StatusCode::OK,
        "GET /1.0 answered {}",
        reply.status
    );
    Ok(took)
}

/// A small PUT, timed: its outcome and duration.
async fn small_put(socket: &Path) -> (Outcome, Duration) {
    let body = Upload::json(&json!({"config": {"sleep_ms": 0}}));
    let t0 = Instant::now();
    let o = client::upload(socket, "PUT", "/1.0/services/faulty", &body, UPLOAD_TIMEOUT).await;
    (o, t0.elapsed())
}

pub async fn figure_7(report: &mut Report, daemon: &Path, plugins: &Path) -> Result<()> {
    let nofile = incus_osd::platform::limits::raise_open_files()
        .context("cannot raise the bench's open-file limit")?;
    ensure!(
        nofile > IDLE_CONNS as u64 + 256,
        "figure 7 opens {IDLE_CONNS} connections, but the bench may only open {nofile} files \
         (raise `ulimit -Hn`)"
    );
    eprintln!("7. {IDLE_CONNS} idle connections …");
    let proc = daemon_with(daemon, plugins, "faulty").await?;
    let socket = proc.socket.clone();
    // Without idle connections.
    let mem_before = idle_memory(&proc, &["/1.0", "/1.0/services/faulty"]).await?;
    let first_before = first_get(&socket).await?;
    let [get_before, plugin_before] = get_latencies(&socket)?;
    let (put_before, put_before_took) = small_put(&socket).await;

    // With them.
    let opened_at = Instant::now();
    let mut idle = Vec::with_capacity(IDLE_CONNS);
    let mut refused = None;
    for _ in 0..IDLE_CONNS {
        match std::os::unix::net::UnixStream::connect(&socket) {
            Ok(s) => idle.push(s),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let opened = opened_at.elapsed();
    let connected = idle.len();
    // Let the daemon accept them all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mem_with = proc.memory()?;
    let first_with = first_get(&socket).await;
    let latencies_with = get_latencies(&socket);
    let (put_with, put_with_took) = small_put(&socket).await;
    let measured = opened_at.elapsed();
    let still_open = idle
        .iter()
        .filter(|s| {
            use std::io::Read;
            s.set_nonblocking(true).is_ok()
                && matches!((&**s).read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    drop(idle);
    proc.stop(STOP_GRACE);
    let first_with = first_with.context("GET /1.0 with the idle connections open")?;
    let [get_with, plugin_with] =
        latencies_with.context("GET latencies with the idle connections open")?;

    report.section(format!(
        "7. {IDLE_CONNS} idle connections open (connected, nothing sent); sequential GETs, \
         {IDLE_REQUESTS} per path (report only)"
    ));
    report.header(&format!("{IDLE_CONNS} idle"), "none");
    dur_row(
        report,
        "new connection + GET /1.0",
        first_with,
        first_before,
    );
    dur_row(
        report,
        "GET /1.0 p50",
        get_with.pct(50.0),
        get_before.pct(50.0),
    );
    dur_row(
        report,
        "GET /1.0 p99",
        get_with.pct(99.0),
        get_before.pct(99.0),
    );
    dur_row(
        report,
        "GET /1.0/services/faulty p50",
        plugin_with.pct(50.0),
        plugin_before.pct(50.0),
    );
    dur_row(report, "PUT (a change)", put_with_took, put_before_took);
    report.row(
        "VmRSS",
        fmt_mb(mem_with.rss),
        fmt_mb(mem_before.rss),
        Some(mem_with.rss as f64 / (mem_before.rss as f64).max(1.0)),
        Verdict::Info,
    );
    report.note(format!(
        "7. {connected} of {IDLE_CONNS} connections opened in {}{}; {still_open} still open \
         when measured ({} after opening; the daemon's header timeout closes idle ones later)",
        fmt_dur(opened),
        refused
            .map(|e| format!(" (then refused: {e})"))
            .unwrap_or_default(),
        fmt_dur(measured)
    ));
    report.note(format!(
        "7. PUT answered {} with them, {} without; {} threads with them, {} without",
        put_with.label(),
        put_before.label(),
        mem_with.threads,
        mem_before.threads
    ));
    Ok(())
}
