//! `incus-osd-bench`: the daemon measured side by side with references, in one run, with
//! a budget and PASS/MISS next to each figure. Absolute times on a shared machine are
//! noise; the ratios are the result.
//!
//! Run it from the workspace root:
//!
//! ```text
//! cargo build --release --workspace && target/release/incus-osd-bench
//! ```
//!
//! It finds the daemon (`incus-osd`), the plugins (`libincus_osd_plugin_*.so`) and the
//! fixture plugins of figures 5-7, 9 and 10 (`libfixture_faulty.so`, `libfixture_backup_app.so`,
//! `libfixture_files_1_3.so`, `libfixture_declared_backup.so`) next
//! to its own executable; `--daemon PATH` and `--plugins DIR` override. Shorter runs:
//! `--duration 1 --requests 1000 --starts 5`; `--figures 5,6,7` runs only those figures.
//! Progress goes to stderr, the report to stdout. The exit status is 0 even when a budget
//! is missed (it is a report); non-zero only on errors.
//!
//! Figures:
//! 1. `GET /1.0` under load (N keep-alive connections, fixed duration): the daemon vs a
//!    bare hyper server answering the same bytes, both out-of-process, alternated
//!    (bare, daemon, bare, daemon), best of each.
//! 2. Plugin-dispatched `GET /1.0/services/iscsi` vs `GET /1.0`: sequential on one
//!    connection, interleaved in blocks.
//! 3. Start-up to a served `GET /1.0` with every plugin vs none (median).
//! 4. Idle resident memory with every plugin (and with none, and the bare server).
//! 5. Peak resident memory while 100 clients PUT 15 MiB bodies behind a slow change.
//! 6. Peak resident memory during 20 concurrent 64 MiB restore uploads (they are stored
//!    in `TMPDIR` under the daemon's root: 1.3 GB must be free there).
//! 7. `GET /1.0` latency, a PUT and resident memory with 2,000 idle connections open.
//! 8. A 1 GiB gzip image downloaded and verified over local HTTPS through the host's
//!    network client vs `curl | tee >(sha256sum) | gunzip`; our peak memory growth.
//! 9. A 300 MB file read by a loaded plugin through the host: the daemon's peak memory
//!    growth streaming it through a descriptor (1.3) vs moving it whole (1.2).
//! 10. A 1 GiB application root backed up (`POST :backup`) and restored (`POST :restore`)
//!     through the daemon vs `tar -czf -` / `tar -xzf -`; the daemon's peak memory growth.
//! 11. A system backup (`:backup`'s archive) of a state directory of 1,000 key and state
//!     files and a restore of it (checked, staged, swapped), the daemon's code in a child
//!     process, vs `tar -czf -` / `tar -xzf -`: throughput and peak RSS.
//!
//! Figures 5-7 are described in `pressure.rs`, figure 8 in `download.rs`, figure 9 in
//! `files.rs`, figure 10 in `appbackup.rs`, figure 11 in `sysbackup.rs`.
#![allow(clippy::print_stdout)]

mod appbackup;
mod bare;
mod client;
mod download;
mod files;
mod plugincost;
mod pressure;
mod procs;
mod report;
mod stats;
mod sysbackup;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use hyper::header::CONTENT_TYPE;

use client::{LoadRun, StartUp};
use procs::{Memory, PluginDirs, Proc};
use report::{Report, Verdict};
use stats::{fmt_dur, fmt_mb, fmt_rate, median};

/// Benchmarks the incus-osd daemon against references, side by side.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// Seconds of load per run in the throughput comparison (4 runs, alternating).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Concurrent keep-alive connections in the throughput comparison.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Sequential requests per path in the dispatch comparison.
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Daemon start-ups per plugin set in the start-up comparison.
    #[arg(long, default_value_t = 10)]
    starts: usize,
    /// The daemon binary [default: `incus-osd` next to this executable].
    #[arg(long)]
    daemon: Option<PathBuf>,
    /// Where to find the plugin and fixture libraries [default: the directory of this
    /// executable].
    #[arg(long)]
    plugins: Option<PathBuf>,
    /// The figures to run, comma-separated (1-11).
    #[arg(long, value_delimiter = ',', default_values_t = ALL_FIGURES)]
    figures: Vec<u8>,
    /// Internal: run as the bare reference server.
    #[arg(long, num_args = 2, value_names = ["SOCKET", "BODYFILE"], hide = true)]
    bare_server: Option<Vec<PathBuf>>,
    #[arg(long, default_value_t = 200, hide = true)]
    bare_status: u16,
    #[arg(long, default_value = "application/json", hide = true)]
    bare_content_type: String,
    /// Internal: open every plugin library of DIR without instantiating it (figure 4).
    #[arg(long, value_name = "DIR", hide = true)]
    open_child: Option<PathBuf>,
    /// Internal: figure 8's download in a child process.
    #[arg(long, num_args = 4, value_names = ["URL", "CA", "ROOT", "SHA256"], hide = true)]
    fetch_child: Option<Vec<String>>,
    /// Internal: figure 11's backup or restore in a child process.
    #[arg(long, num_args = 3, value_names = ["OP", "FROM", "TO"], hide = true)]
    sysbackup_child: Option<Vec<PathBuf>>,
}

const ALL_FIGURES: [u8; 11] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];

/// How long a process may take to serve before it is an error.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Sequential requests per block in figure 2.
const BLOCK: usize = 100;
/// Budgets.
const MIN_THROUGHPUT_RATIO: f64 = 0.8;
const MAX_P99_RATIO: f64 = 1.5;
const MAX_DISPATCH_P50_RATIO: f64 = 1.2;
const MAX_STARTUP_RATIO: f64 = 2.0;
const MAX_IDLE_RSS: u64 = 24_000_000;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(dir) = &args.open_child {
        return match plugincost::open_child(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("open child: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(op) = &args.sysbackup_child {
        return match sysbackup::child(op) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("system backup child: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(fetch) = &args.fetch_child {
        return match download::fetch_child(fetch) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("download child: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(bare) = &args.bare_server {
        return match bare::serve(
            &bare[0],
            &bare[1],
            args.bare_status,
            &args.bare_content_type,
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bare server: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Every spawned process is owned by a guard inside `run`: they are all gone by the
    // time it returns, error or not.
    match runtime.block_on(run(args)) {
        Ok(report) => {
            report.print();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Setup {
    daemon: PathBuf,
    /// Every plugin and none (figures 1-4).
    plugins: Option<PluginDirs>,
    /// The fixture plugins (figures 5-7).
    fixtures: Option<tempfile::TempDir>,
    /// The files-1-3 fixture (figure 9).
    files_fixture: Option<tempfile::TempDir>,
    /// The declared-backup fixture (figure 10).
    app_fixture: Option<tempfile::TempDir>,
}

fn setup(args: &Args) -> Result<Setup> {
    ensure!(
        args.duration.is_finite() && args.duration > 0.0,
        "--duration must be a positive number of seconds"
    );
    ensure!(args.connections > 0, "--connections must be at least 1");
    ensure!(args.requests > 0, "--requests must be at least 1");
    ensure!(args.starts > 0, "--starts must be at least 1");
    if let Some(f) = args.figures.iter().find(|f| !ALL_FIGURES.contains(f)) {
        bail!("--figures: there is no figure {f} (they are 1 to 11)");
    }
    let exe = std::env::current_exe().context("cannot find the bench's own executable")?;
    let exe_dir = exe
        .parent()
        .context("the bench's executable has no directory")?;
    let daemon = match &args.daemon {
        Some(d) => d.clone(),
        None => exe_dir.join("incus-osd"),
    };
    let wants = |figures: &[u8]| args.figures.iter().any(|f| figures.contains(f));
    // Figures 8 and 11 run without the daemon.
    if wants(&[1, 2, 3, 4, 5, 6, 7, 9, 10]) && !daemon.is_file() {
        bail!(
            "the daemon binary is missing ({}): run `cargo build --release --workspace` \
             first, or pass --daemon PATH",
            daemon.display()
        );
    }
    let source = args.plugins.as_deref().unwrap_or(exe_dir);
    let plugins = if wants(&[1, 2, 3, 4]) {
        Some(procs::stage_plugins(source)?)
    } else {
        None
    };
    let fixtures = if wants(&[5, 6, 7]) {
        Some(procs::stage_fixtures(source, &pressure::FIXTURES)?)
    } else {
        None
    };
    let files_fixture = if wants(&[9]) {
        Some(procs::stage_fixtures(source, &[files::FIXTURE])?)
    } else {
        None
    };
    let app_fixture = if wants(&[10]) {
        Some(procs::stage_fixtures(source, &[appbackup::FIXTURE])?)
    } else {
        None
    };
    Ok(Setup {
        daemon,
        plugins,
        fixtures,
        files_fixture,
        app_fixture,
    })
}

/// Spawns a daemon and waits until it reports ready.
async fn start_daemon(daemon: &Path, plugins: &Path, label: &str) -> Result<(Proc, StartUp)> {
    let (mut proc, spawned) = procs::spawn_daemon(daemon, plugins, label)?;
    let socket = proc.socket.clone();
    let s = client::wait_served(&mut proc, &socket, spawned, true, START_TIMEOUT).await?;
    Ok((proc, s))
}

/// The daemon's state directory under its root.
const STATE_DIR: &str = "var/lib/incus-os";

/// [`start_daemon`] with a state directory kept across starts, as on a real system (where
/// the plugin manifest cache in it lets an unchanged plugin set start without opening
/// the plugins that need not run): `state`'s files are copied into the fresh root before
/// the start and back once it served (the cache is written before it serves).
async fn start_daemon_keeping(
    daemon: &Path,
    plugins: &Path,
    label: &str,
    state: &Path,
) -> Result<(Proc, StartUp)> {
    let (mut proc, spawned) = procs::spawn_daemon_with(daemon, plugins, label, |root| {
        let dir = root.join(STATE_DIR);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        copy_files(state, &dir)
    })?;
    let socket = proc.socket.clone();
    let s = client::wait_served(&mut proc, &socket, spawned, true, START_TIMEOUT).await?;
    copy_files(&proc.root().join(STATE_DIR), state)?;
    Ok((proc, s))
}

/// Copies the regular files directly in `from` to `to`.
fn copy_files(from: &Path, to: &Path) -> Result<()> {
    for e in std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))
                .with_context(|| format!("cannot copy {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// A few requests on one connection, then the connection is closed.
async fn a_few_requests(socket: &Path, paths: &[&str]) -> Result<()> {
    let mut conn = client::connect(socket).await?;
    for _ in 0..10 {
        for p in paths {
            conn.get(&p.parse()?).await?;
        }
    }
    Ok(())
}

/// Resident memory after a few requests and 1 s idle.
async fn idle_memory(proc: &Proc, paths: &[&str]) -> Result<Memory> {
    a_few_requests(&proc.socket, paths).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    proc.memory()
}

/// The names of the loaded plugins; an error if any plugin failed to load.
async fn loaded_plugins(socket: &Path) -> Result<Vec<String>> {
    let reply = client::get_once(socket, "/1.0/plugins").await?;
    let doc: serde_json::Value =
        serde_json::from_slice(&reply.body).context("GET /1.0/plugins is not JSON")?;
    let failed = &doc["metadata"]["failed"];
    if failed.as_array().is_some_and(|f| !f.is_empty()) {
        bail!("plugins failed to load: {failed}");
    }
    Ok(doc["metadata"]["loaded"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

struct Best {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

fn best(runs: &[LoadRun]) -> Best {
    Best {
        rps: runs.iter().map(|r| r.requests_per_sec).fold(0.0, f64::max),
        p50: runs
            .iter()
            .map(|r| r.latencies.pct(50.0))
            .min()
            .unwrap_or_default(),
        p99: runs
            .iter()
            .map(|r| r.latencies.pct(99.0))
            .min()
            .unwrap_or_default(),
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-12)
}

async fn run(args: Args) -> Result<Report> {
    let Setup {
        daemon,
        plugins,
        fixtures,
        files_fixture,
        app_fixture,
    } = setup(&args)?;
    let want = |n: u8| args.figures.contains(&n);
    let mut report = Report::default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut libraries = plugins.as_ref().map_or(vec![], |p| p.names.clone());
    if fixtures.is_some() {
        libraries.extend(pressure::FIXTURES.map(|f| format!("lib{f}.so")));
    }
    if files_fixture.is_some() {
        libraries.push(format!("lib{}.so", files::FIXTURE));
    }
    if app_fixture.is_some() {
        libraries.push(format!("lib{}.so", appbackup::FIXTURE));
    }
    report.top(format!(
        "daemon: {}; plugin libraries: {}; {cpus} CPUs, load average {}{}",
        daemon.display(),
        libraries.join(", "),
        load_average(),
        if cfg!(debug_assertions) {
            "; DEBUG build of the bench: build with --release for meaningful figures"
        } else {
            ""
        }
    ));
    if args.figures.len() < ALL_FIGURES.len() {
        let mut figures = args.figures.clone();
        figures.sort_unstable();
        figures.dedup();
        report.top(format!(
            "figures run: {} (--figures)",
            figures
                .iter()
                .map(u8::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    let mut after_load = None;
    if let Some(plugins) = &plugins {
        if want(1) || want(2) {
            after_load = Some(figures_1_2(&args, &mut report, &daemon, plugins, want).await?);
        }
        if want(3) {
            figure_3(&args, &mut report, &daemon, plugins).await?;
        }
        if want(4) {
            figure_4(&mut report, &daemon, plugins, after_load).await?;
        }
    }
    if let Some(fixtures) = &fixtures {
        if want(5) {
            pressure::figure_5(&mut report, &daemon, fixtures.path()).await?;
        }
        if want(6) {
            pressure::figure_6(&mut report, &daemon, fixtures.path()).await?;
        }
        if want(7) {
            pressure::figure_7(&mut report, &daemon, fixtures.path()).await?;
        }
    }
    if want(8) {
        download::figure_8(&mut report)?;
    }
    if let Some(dir) = &files_fixture {
        files::figure_9(&mut report, &daemon, dir.path()).await?;
    }
    if let Some(dir) = &app_fixture {
        appbackup::figure_10(&mut report, &daemon, dir.path()).await?;
    }
    if want(11) {
        sysbackup::figure_11(&mut report)?;
    }
    report.note(format!(
        "load average at the end: {} (other work on the machine shifts figure 2 most)",
        load_average()
    ));
    Ok(report)
}

/// The daemon's answer to `GET /1.0`: what the bare server serves.
struct Reference {
    status: u16,
    content_type: String,
    body: bytes::Bytes,
}

async fn reference(socket: &Path) -> Result<(Reference, hyper::HeaderMap)> {
    let reply = client::get_once(socket, "/1.0").await?;
    ensure!(
        reply.status == hyper::StatusCode::OK,
        "the daemon answered GET /1.0 with {}",
        reply.status
    );
    let content_type = reply
        .headers
        .get(CONTENT_TYPE)
        .context("the daemon's GET /1.0 has no content-type")?
        .to_str()
        .context("the daemon's content-type is not text")?
        .to_string();
    Ok((
        Reference {
            status: reply.status.as_u16(),
            content_type,
            body: reply.body,
        },
        reply.headers,
    ))
}

async fn start_bare(reference: &Reference) -> Result<Proc> {
    let (mut proc, spawned) =
        procs::spawn_bare(reference.status, &reference.content_type, &reference.body)?;
    let socket = proc.socket.clone();
    client::wait_served(&mut proc, &socket, spawned, false, START_TIMEOUT).await?;
    Ok(proc)
}

/// Figures 1 and 2 (those `want` says), on one daemon with every plugin; its memory after.
async fn figures_1_2(
    args: &Args,
    report: &mut Report,
    daemon: &Path,
    plugins: &PluginDirs,
    want: impl Fn(u8) -> bool,
) -> Result<Memory> {
    let duration = Duration::from_secs_f64(args.duration);
    let warmup = (duration / 5).min(Duration::from_secs(1));
    // --- The daemon (every plugin) and the bare server with the daemon's exact response.
    eprintln!("starting the daemon with every plugin …");
    let (daemon_proc, _) = start_daemon(daemon, plugins.all.path(), "daemon (all plugins)").await?;
    let loaded = loaded_plugins(&daemon_proc.socket).await?;
    ensure!(
        loaded.len() == plugins.plugins,
        "{} plugins staged but {} loaded ({loaded:?})",
        plugins.plugins,
        loaded.len()
    );
    ensure!(
        loaded.iter().any(|n| n == "iscsi"),
        "the iscsi plugin is not loaded (figure 2 needs it); loaded: {loaded:?}"
    );

    if want(1) {
        let (reference, headers) = reference(&daemon_proc.socket).await?;
        let bare_proc = start_bare(&reference).await?;
        let bare_socket = bare_proc.socket.clone();
        let mirror = client::get_once(&bare_socket, "/1.0").await?;
        ensure!(
            mirror.status.as_u16() == reference.status
                && mirror.headers.get(CONTENT_TYPE) == headers.get(CONTENT_TYPE)
                && mirror.body == reference.body,
            "the bare server's response differs from the daemon's"
        );
        let header_names = |h: &hyper::HeaderMap| {
            let mut v: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
            v.sort_unstable();
            v.join(", ")
        };
        report.note(format!(
            "GET /1.0 response: {} {}, {} body bytes; headers daemon [{}], bare [{}]",
            reference.status,
            reference.content_type,
            reference.body.len(),
            header_names(&headers),
            header_names(&mirror.headers)
        ));

        // --- 1. Throughput and latency under load, alternating bare and daemon.
        let (mut bare_runs, mut daemon_runs) = (vec![], vec![]);
        for round in 1..=2 {
            for (label, socket, runs) in [
                ("bare", &bare_socket, &mut bare_runs),
                ("daemon", &daemon_proc.socket, &mut daemon_runs),
            ] {
                eprintln!(
                    "1. load run {round}/2, {label}: {} connections, {:.1} s (+{:.1} s warm-up) …",
                    args.connections,
                    duration.as_secs_f64(),
                    warmup.as_secs_f64()
                );
                let r = client::load(socket, "/1.0", args.connections, warmup, duration)
                    .await
                    .with_context(|| format!("load run against the {label} server"))?;
                report.note(format!(
                    "1. run {round} {label:<6}: {:>10}  p50 {:>9}  p99 {:>9}  ({} responses)",
                    fmt_rate(r.requests_per_sec),
                    fmt_dur(r.latencies.pct(50.0)),
                    fmt_dur(r.latencies.pct(99.0)),
                    r.latencies.len()
                ));
                runs.push(r);
            }
        }
        let (b, d) = (best(&bare_runs), best(&daemon_runs));
        report.section(format!(
            "1. GET /1.0, {} keep-alive connections, {} s per run, best of 2 runs per figure",
            args.connections, args.duration
        ));
        report.header("daemon", "bare hyper");
        let tput = d.rps / b.rps.max(1e-9);
        report.row(
            "requests/s",
            fmt_rate(d.rps),
            fmt_rate(b.rps),
            Some(tput),
            Verdict::at_least(tput, MIN_THROUGHPUT_RATIO),
        );
        report.row(
            "latency p50",
            fmt_dur(d.p50),
            fmt_dur(b.p50),
            Some(ratio(d.p50, b.p50)),
            Verdict::Info,
        );
        let p99 = ratio(d.p99, b.p99);
        report.row(
            "latency p99",
            fmt_dur(d.p99),
            fmt_dur(b.p99),
            Some(p99),
            Verdict::at_most(p99, MAX_P99_RATIO),
        );
        bare_proc.stop(STOP_GRACE);
    }

    if want(2) {
        // --- 2. Plugin dispatch vs a plain handler, sequential on one connection.
        eprintln!(
            "2. {} sequential requests each of GET /1.0/services/iscsi and GET /1.0 …",
            args.requests
        );
        let [dispatched, plain] = client::sequential_own_thread(
            &daemon_proc.socket,
            ["/1.0/services/iscsi", "/1.0"],
            args.requests,
            BLOCK,
        )?;
        report.section(format!(
            "2. sequential on 1 connection, {} requests each, interleaved in blocks of {BLOCK}",
            args.requests
        ));
        report.header("/services/iscsi", "/1.0");
        let p50 = ratio(dispatched.pct(50.0), plain.pct(50.0));
        report.row(
            "latency p50",
            fmt_dur(dispatched.pct(50.0)),
            fmt_dur(plain.pct(50.0)),
            Some(p50),
            Verdict::at_most(p50, MAX_DISPATCH_P50_RATIO),
        );
        report.row(
            "latency p99",
            fmt_dur(dispatched.pct(99.0)),
            fmt_dur(plain.pct(99.0)),
            Some(ratio(dispatched.pct(99.0), plain.pct(99.0))),
            Verdict::Info,
        );
    }
    let after_load = daemon_proc.memory()?;
    daemon_proc.stop(STOP_GRACE);
    Ok(after_load)
}

/// Cold starts per plugin set in figure 3.
const COLD_STARTS: usize = 5;

/// Figure 3: start-up, every plugin vs none, alternating. Cold starts (an empty state
/// directory each: no plugin manifest cache) are reported apart from warm ones, where each
/// set keeps one state directory across its starts, as a real system does (the cache holds
/// every library).
async fn figure_3(
    args: &Args,
    report: &mut Report,
    daemon: &Path,
    plugins: &PluginDirs,
) -> Result<()> {
    // Set 2: every plugin in a library of its own (information: what the bundle saves).
    let mut served = [vec![], vec![], vec![]];
    let mut ready = [vec![], vec![], vec![]];
    let mut colds = [vec![], vec![], vec![]];
    let sets = [
        (plugins.all.path(), "daemon (all plugins)"),
        (plugins.none.path(), "daemon (no plugins)"),
        (plugins.singles.path(), "daemon (one library per plugin)"),
    ];
    let states = [
        tempfile::tempdir().context("cannot create a state directory")?,
        tempfile::tempdir().context("cannot create a state directory")?,
        tempfile::tempdir().context("cannot create a state directory")?,
    ];
    let mut order = [0, 1, 2];
    // Cold: each start on a fresh state directory (no manifest cache), several of them, as
    // one sample is at the mercy of the machine.
    for i in 1..=COLD_STARTS {
        eprintln!("3. start-up, cold {i}/{COLD_STARTS} (empty state directory) …");
        for k in order {
            let (dir, label) = sets[k];
            let fresh = tempfile::tempdir().context("cannot create a state directory")?;
            let (proc, s) = start_daemon_keeping(daemon, dir, label, fresh.path()).await?;
            colds[k].push(s.served);
            proc.stop(STOP_GRACE);
        }
        order.reverse();
    }
    let cold = colds.map(median);
    // Warm: each set keeps its state directory; the first start of each fills the cache.
    for i in 0..=args.starts {
        if i > 0 {
            eprintln!("3. start-up {}/{} …", i, args.starts);
        }
        for k in order {
            let (dir, label) = sets[k];
            let (proc, s) = start_daemon_keeping(daemon, dir, label, states[k].path()).await?;
            if i > 0 {
                served[k].push(s.served);
                ready[k].extend(s.ready);
            }
            proc.stop(STOP_GRACE);
        }
        order.reverse();
    }
    let [served_all, served_none, served_singles] = served.map(median);
    let [ready_all, ready_none, _] = ready.map(median);
    report.section(format!(
        "3. start-up, spawn to first answer (median of {} warm starts; state directory kept)",
        args.starts
    ));
    report.header("all plugins", "no plugins");
    let st = ratio(served_all, served_none);
    report.row(
        "GET /1.0 served",
        fmt_dur(served_all),
        fmt_dur(served_none),
        Some(st),
        Verdict::at_most(st, MAX_STARTUP_RATIO),
    );
    report.row(
        "system_is_ready",
        fmt_dur(ready_all),
        fmt_dur(ready_none),
        Some(ratio(ready_all, ready_none)),
        Verdict::Info,
    );
    let cold_ratio = ratio(cold[0], cold[1]);
    report.row(
        "cold start (median)",
        fmt_dur(cold[0]),
        fmt_dur(cold[1]),
        Some(cold_ratio),
        Verdict::at_most(cold_ratio, MAX_STARTUP_RATIO),
    );
    report.note(format!(
        "3. cold starts (median of {COLD_STARTS}, each on an empty state directory: no \
         plugin manifest cache, every library opened): all plugins {}, no plugins {} \
         ({cold_ratio:.2}x)",
        fmt_dur(cold[0]),
        fmt_dur(cold[1]),
    ));
    report.note(format!(
        "3. one library per plugin instead ({} libraries): warm {} ({:.2}x), cold {} ({:.2}x)",
        plugins.plugins,
        fmt_dur(served_singles),
        ratio(served_singles, served_none),
        fmt_dur(cold[2]),
        ratio(cold[2], cold[1]),
    ));
    let n = plugins.plugins.max(1) as f64;
    report.note(format!(
        "3. per plugin ({} plugins in {}): {} to GET /1.0 served",
        plugins.plugins,
        plugins.names.join(", "),
        fmt_dur(served_all.saturating_sub(served_none).div_f64(n)),
    ));
    Ok(())
}

/// Figure 4: idle resident memory; `after_load` is the daemon's after figures 1-2.
async fn figure_4(
    report: &mut Report,
    daemon: &Path,
    plugins: &PluginDirs,
    after_load: Option<Memory>,
) -> Result<()> {
    eprintln!("4. idle memory …");
    // A cold start (every library opened, the manifest cache written), then the measured
    // warm one with the same state directory.
    let state = tempfile::tempdir().context("cannot create a state directory")?;
    let all_paths = ["/1.0", "/1.0/services", "/1.0/services/iscsi"];
    let (proc, _) = start_daemon_keeping(
        daemon,
        plugins.all.path(),
        "daemon (all plugins)",
        state.path(),
    )
    .await?;
    let mem_cold = idle_memory(&proc, &all_paths).await?;
    proc.stop(STOP_GRACE);
    let (proc, _) = start_daemon_keeping(
        daemon,
        plugins.all.path(),
        "daemon (all plugins)",
        state.path(),
    )
    .await?;
    let mem_all = idle_memory(&proc, &all_paths).await?;
    let (reference, _) = reference(&proc.socket).await?;
    proc.stop(STOP_GRACE);
    let (proc, _) = start_daemon(daemon, plugins.none.path(), "daemon (no plugins)").await?;
    let mem_none = idle_memory(&proc, &["/1.0", "/1.0/services"]).await?;
    proc.stop(STOP_GRACE);
    let proc = start_bare(&reference).await?;
    let mem_bare = idle_memory(&proc, &["/1.0"]).await?;
    proc.stop(STOP_GRACE);
    // The same plugins, one library each (what the bundle saves), cold then warm.
    let singles_state = tempfile::tempdir().context("cannot create a state directory")?;
    let mut mem_singles = vec![];
    for _ in 0..2 {
        let (proc, _) = start_daemon_keeping(
            daemon,
            plugins.singles.path(),
            "daemon (one library per plugin)",
            singles_state.path(),
        )
        .await?;
        mem_singles.push(idle_memory(&proc, &all_paths).await?);
        proc.stop(STOP_GRACE);
    }
    report
        .section("4. idle resident memory (VmRSS after a warm start-up, a few requests, 1 s idle)");
    report.header("all plugins", "no plugins");
    report.row(
        "VmRSS",
        fmt_mb(mem_all.rss),
        fmt_mb(mem_none.rss),
        None,
        Verdict::budget(
            mem_all.rss <= MAX_IDLE_RSS,
            format!("<= {}", fmt_mb(MAX_IDLE_RSS)),
        ),
    );
    report.row(
        "VmRSS after a cold start",
        fmt_mb(mem_cold.rss),
        fmt_mb(mem_none.rss),
        None,
        Verdict::budget(
            mem_cold.rss <= MAX_IDLE_RSS,
            format!("<= {}", fmt_mb(MAX_IDLE_RSS)),
        ),
    );
    let mut rows = vec![
        ("daemon, all plugins", mem_all),
        ("all plugins, cold start", mem_cold),
        ("one library per plugin", mem_singles[1]),
        ("  the same, cold start", mem_singles[0]),
        ("daemon, no plugins", mem_none),
        ("bare hyper server", mem_bare),
    ];
    rows.extend(after_load.map(|m| ("daemon after figures 1-2", m)));
    for (label, m) in rows {
        report.note(format!(
            "4. {label:<24}: VmRSS {:>8} (anon {:>8}, file {:>8}), {} threads",
            fmt_mb(m.rss),
            fmt_mb(m.anon),
            fmt_mb(m.file),
            m.threads
        ));
    }
    // Where a plugin's cost goes: opening its library (dlopen and the checks) vs the rest
    // (its constructor and what the daemon keeps for it).
    let per_plugin = mem_all.rss.saturating_sub(mem_none.rss) / plugins.plugins.max(1) as u64;
    for o in plugincost::measure(plugins.all.path())? {
        report.note(format!(
            "4. as shipped: {} ({} plugins): file {}, dlopen {:.2} ms, checks {:.2} ms, \
             VmRSS +{} opened; {} per plugin in the daemon",
            o.name,
            plugins.plugins,
            fmt_mb(o.file_size),
            o.dlopen_micros as f64 / 1000.0,
            o.check_micros as f64 / 1000.0,
            fmt_mb(o.rss),
            fmt_mb(per_plugin),
        ));
    }
    let opened = plugincost::measure(plugins.singles.path())?;
    let n = opened.len().max(1) as u64;
    let per_plugin = mem_singles[1].rss.saturating_sub(mem_none.rss) / n;
    let open_rss: u64 = opened.iter().map(|o| o.rss).sum();
    let dlopen_us: u64 = opened.iter().map(|o| o.dlopen_micros).sum();
    let check_us: u64 = opened.iter().map(|o| o.check_micros).sum();
    let files: u64 = opened.iter().map(|o| o.file_size).sum();
    let ms = |us: u64| us as f64 / 1000.0;
    report.note(format!(
        "4. one library per plugin ({n} libraries): VmRSS {} in the daemon per plugin, of \
         which opening the library \
         (no constructor) {}; opening takes {:.2} ms (dlopen {:.2} ms, the loader's checks \
         {:.2} ms); library files {} on average",
        fmt_mb(per_plugin),
        fmt_mb(open_rss / n),
        ms(dlopen_us + check_us) / n as f64,
        ms(dlopen_us) / n as f64,
        ms(check_us) / n as f64,
        fmt_mb(files / n),
    ));
    for o in &opened {
        report.note(format!(
            "4.   {:<50} file {:>8}  dlopen {:>5.2} ms, checks {:>5.2} ms, VmRSS +{}",
            o.name,
            fmt_mb(o.file_size),
            ms(o.dlopen_micros),
            ms(o.check_micros),
            fmt_mb(o.rss)
        ));
    }
    Ok(())
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` has them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
