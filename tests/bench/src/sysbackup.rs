//! Figure 11: a system backup of a state directory holding 1,000 key and state files, and a
//! restore of it, side by side with `tar -czf -` / `tar -xzf -` on the same tree.
//!
//! Ours runs the daemon's own code in a child process of this bench (a hidden option), so
//! that its peak memory is its own: the backup is what `POST /1.0/system/:backup` streams
//! (the state directory's files as flat entries, gzip level 6) written to a file; the
//! restore is what `POST /1.0/system/:restore` does with the stored upload before it
//! changes the machine (every entry checked and extracted into the sibling staging
//! directory, 0600) and the swap of the directories. The live steps of a restore (keys,
//! host name, applications, the reboot) are not part of it. tar extracts the same archive
//! into an empty directory.
//!
//! Throughput is the tree's bytes over the time, best of the runs, alternated (ours, tar);
//! peak RSS is each child's as GNU time reports it (tar's includes the gzip it runs).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::report::{Report, Verdict};
use crate::stats::fmt_mb;

const RUNS: usize = 3;
/// The files of the tree: zpool/luks keys (32 random bytes), PEM-like files (4 KiB),
/// plugin documents (64 KiB of JSON), and a 1 MiB state document: 1,000 in all.
const KEYS: usize = 600;
const PEMS: usize = 303;
const DOCS: usize = 96;
pub const MIN_RATIO: f64 = 0.5;
pub const MAX_RSS: u64 = 32_000_000;

fn step(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn random(x: &mut u64, n: usize) -> Vec<u8> {
    (0..n).map(|_| (step(x) >> 24) as u8).collect()
}

fn json(x: &mut u64, n: usize) -> Vec<u8> {
    let mut out = b"{\"config\": {".to_vec();
    let mut i = 0;
    while out.len() < n - 2 {
        out.extend(format!("\"key{i}\": \"value-{:016x}\", ", step(x)).as_bytes());
        i += 1;
    }
    out.truncate(n - 2);
    out.extend(b"}}");
    out
}

/// Writes the 1,000 files into `dir`; returns their bytes.
fn make_tree(dir: &Path) -> Result<u64> {
    std::fs::create_dir_all(dir)?;
    let mut x: u64 = 0x5851_f42d_4c95_7f2d;
    let mut total = 0u64;
    let mut put = |name: String, data: Vec<u8>| -> Result<()> {
        total += data.len() as u64;
        std::fs::write(dir.join(name), data).context("cannot write the tree")
    };
    for i in 0..KEYS {
        let name = if i % 2 == 0 {
            format!("zpool.pool{i:03}.key")
        } else {
            format!("luks.vol{i:03}.key")
        };
        put(name, random(&mut x, 32))?;
    }
    for i in 0..PEMS {
        let mut pem = b"-----BEGIN CERTIFICATE-----\n".to_vec();
        for line in random(&mut x, 3000).chunks(48) {
            for b in line {
                pem.push(
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                        [(*b & 63) as usize],
                );
            }
            pem.push(b'\n');
        }
        pem.extend(b"-----END CERTIFICATE-----\n");
        pem.resize(4096, b'\n');
        put(format!("tpm-auth.{i:03}.pem"), pem)?;
    }
    for i in 0..DOCS {
        put(format!("plugin.{i:02}.json"), json(&mut x, 64 << 10))?;
    }
    put("state.json".into(), json(&mut x, 1 << 20))?;
    Ok(total)
}

/// The bench's hidden child: `backup DIR OUT` or `restore ARCHIVE DIR`, with the daemon's
/// code.
pub fn child(args: &[PathBuf]) -> Result<()> {
    use incus_osd::system::backup::{self, apply, stage};
    let [op, a, b] = args else {
        bail!("usage: --sysbackup-child backup|restore A B");
    };
    match op.to_str() {
        Some("backup") => {
            let files = backup::state_files(a).map_err(anyhow::Error::msg)?;
            let mut out = std::io::BufWriter::new(File::create(b)?);
            backup::write_backup(files, vec![], &mut out).map_err(anyhow::Error::msg)?;
            out.flush()?;
        }
        Some("restore") => {
            let parent = b.parent().context("no parent")?;
            let mut staged = stage::stage(
                std::io::BufReader::new(File::open(a)?),
                b,
                parent,
                &stage::Skip::default(),
                &stage::Limits::default(),
            )
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
            apply::exchange(&staged.dir, b)?;
            staged.keep();
            std::fs::remove_dir_all(&staged.dir)?;
        }
        _ => bail!("unknown child operation {op:?}"),
    }
    Ok(())
}

/// GNU time, which reports a child's peak RSS (`wait4`'s `ru_maxrss`, the children it
/// waited for included). Measured from this bench directly, the figure would be this
/// process's own size: a child's maximum includes the parent's pages it was forked with.
const TIME: &str = "/usr/bin/time";

/// Runs `program args` under GNU time: its wall time and peak RSS.
fn measured(
    program: &Path,
    args: &[&std::ffi::OsStr],
    stdin: Stdio,
    stdout: Stdio,
) -> Result<(Duration, u64)> {
    let report = tempfile::NamedTempFile::new()?;
    let start = Instant::now();
    let status = Command::new(TIME)
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(report.path())
        .arg(program)
        .args(args)
        .stdin(stdin)
        .stdout(stdout)
        .status()
        .with_context(|| format!("cannot run {TIME} (GNU time, the `time` package)"))?;
    let took = start.elapsed();
    ensure!(status.success(), "{} failed: {status}", program.display());
    let text = std::fs::read_to_string(report.path())?;
    let kib: u64 = text
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("{TIME} said {text:?}"))?;
    Ok((took, kib * 1024))
}

fn ours(op: &str, a: &Path, b: &Path) -> Result<(Duration, u64)> {
    let exe = std::env::current_exe()?;
    measured(
        &exe,
        &[
            "--sysbackup-child".as_ref(),
            op.as_ref(),
            a.as_os_str(),
            b.as_os_str(),
        ],
        Stdio::null(),
        Stdio::null(),
    )
}

fn tar(args: &[&str], stdin: Stdio, stdout: Stdio) -> Result<(Duration, u64)> {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    measured(Path::new("tar"), &args, stdin, stdout)
}

#[derive(Clone, Copy)]
struct Best {
    time: Duration,
    rss: u64,
}

impl Best {
    fn new() -> Best {
        Best {
            time: Duration::MAX,
            rss: 0,
        }
    }
    fn add(&mut self, (t, rss): (Duration, u64)) {
        self.time = self.time.min(t);
        self.rss = self.rss.max(rss);
    }
}

/// The bytes of the regular files directly under `dir`, and their number.
fn flat_size(dir: &Path) -> Result<(u64, usize)> {
    let (mut bytes, mut n) = (0, 0);
    for e in std::fs::read_dir(dir)? {
        let m = e?.metadata()?;
        if m.is_file() {
            bytes += m.len();
            n += 1;
        }
    }
    Ok((bytes, n))
}

pub fn figure_11(report: &mut Report) -> Result<()> {
    let work = tempfile::Builder::new()
        .prefix("incus-osd-bench-sysbackup-")
        .tempdir()?;
    let state = work.path().join("lib/incus-os");
    eprintln!("11. writing a state directory of 1,000 files …");
    let bytes = make_tree(&state)?;
    let ours_gz = work.path().join("ours.tar.gz");
    let tar_gz = work.path().join("tar.tar.gz");
    let extracted = work.path().join("extracted");
    let (mut ob, mut or, mut tb, mut tr) = (Best::new(), Best::new(), Best::new(), Best::new());
    for run in 1..=RUNS {
        eprintln!("11. run {run}/{RUNS}");
        ob.add(ours("backup", &state, &ours_gz)?);
        let dir = state.to_str().context("the work path is not text")?;
        tb.add(tar(
            &["-czf", "-", "-C", dir, "."],
            Stdio::null(),
            File::create(&tar_gz)?.into(),
        )?);
        or.add(ours("restore", &ours_gz, &state)?);
        ensure!(
            flat_size(&state)? == (bytes, 1000),
            "the restored state directory is not the tree"
        );
        std::fs::create_dir(&extracted)?;
        let into = extracted.to_str().context("the work path is not text")?;
        tr.add(tar(
            &["-xzf", "-", "-C", into],
            File::open(&ours_gz)?.into(),
            Stdio::null(),
        )?);
        ensure!(
            flat_size(&extracted)? == (bytes, 1000),
            "tar did not find the tree in our archive"
        );
        std::fs::remove_dir_all(&extracted)?;
    }
    let rate = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    report.section(format!(
        "11. system backup / restore of a state directory of 1,000 files ({}) vs tar -czf - / \
         tar -xzf -, best of {RUNS} alternated",
        fmt_mb(bytes)
    ));
    report.header("ours", "tar");
    for (what, o, t) in [("backup (MB/s)", ob, tb), ("restore (MB/s)", or, tr)] {
        let ratio = rate(o.time) / rate(t.time);
        report.row(
            what,
            format!("{:.0} MB/s", rate(o.time)),
            format!("{:.0} MB/s", rate(t.time)),
            Some(ratio),
            Verdict::at_least(ratio, MIN_RATIO),
        );
    }
    for (what, o, t) in [("peak RSS, backup", ob, tb), ("peak RSS, restore", or, tr)] {
        report.row(
            what,
            fmt_mb(o.rss),
            fmt_mb(t.rss),
            Some(o.rss as f64 / t.rss.max(1) as f64),
            Verdict::budget(o.rss <= MAX_RSS, format!("<= {}", fmt_mb(MAX_RSS))),
        );
    }
    report.note(format!(
        "11. archives: ours {}, tar -czf {}; times: backup {:.3} s vs {:.3} s, restore {:.3} s \
         vs {:.3} s; ours is the daemon's code in a child process (backup: the flat entries \
         written to a file; restore: every entry checked and staged, then the directories \
         swapped), peak RSS from GNU time (tar's includes its gzip)",
        fmt_mb(std::fs::metadata(&ours_gz)?.len()),
        fmt_mb(std::fs::metadata(&tar_gz)?.len()),
        ob.time.as_secs_f64(),
        tb.time.as_secs_f64(),
        or.time.as_secs_f64(),
        tr.time.as_secs_f64(),
    ));
    Ok(())
}
