//! Figure 10: a 1 GiB application root backed up and restored through the daemon's real
//! endpoints, side by side with `tar -czf -` / `tar -xzf -` on the same tree.
//!
//! The `declared-backup` fixture (an application that declares its data directory, so the
//! host writes and restores its archives) is installed in the daemon's root as an install
//! leaves it: a stand-in image with a GPT header, the extension link, the install record.
//! Its data directory is filled with about 1 GiB of files (a few large ones, some medium,
//! thousands of small ones in subdirectories) of semi-compressible data (runs of text and
//! random bytes, about 2:1 under gzip -6).
//!
//! - Backup: `POST /1.0/applications/declared-backup/:backup` with the answer streamed to
//!   a file, vs `tar -czf - -C DIR .` into a file (GNU tar runs `gzip`, level 6 by
//!   default: the SDK writes level 6 too, so both compress alike).
//! - Restore: the daemon's archive uploaded to `POST .../:restore`, vs `tar -xzf -` of the
//!   same archive into an empty directory. The daemon answers once the upload is stored
//!   and extracted beside the data directory (every entry checked); it swaps the tree in
//!   one second later. The figure is the time to the answer: the extraction, not the swap.
//!
//! Throughput is the tree's bytes over the time; alternated (ours, tar, ours, tar), best
//! of each. The daemon's peak resident memory over its idle size is sampled during each
//! of its runs. The tree, the two archives, the daemon's stored upload and its extraction
//! need about 4 GB at once in `TMPDIR`.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::procs::{self, Peak};
use crate::report::{Report, Verdict};
use crate::stats::fmt_mb;
use crate::{idle_memory, loaded_plugins, STOP_GRACE};

/// The fixture library figure 10 loads.
pub const FIXTURE: &str = "fixture_declared_backup";
const APP: &str = "declared-backup";
/// The application's data directory (its manifest's `backup` root).
const DATA: &str = "var/lib/declared-backup";
const VERSION: &str = "202601010000";
/// About 1 GiB in all: large, medium and small files.
const LARGE: (usize, u64) = (4, 128 << 20);
const MEDIUM: (usize, u64) = (64, 4 << 20);
const SMALL_FILES: usize = 8192;
const SMALL_DIRS: usize = 64;
const SMALL_MAX: u64 = 64 << 10;
const RUNS: usize = 2;
pub const MIN_RATIO: f64 = 0.9;
pub const MAX_GROWTH: u64 = 64_000_000;
const NEED_FREE: u64 = 4_500_000_000;

/// xorshift64.
fn step(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Semi-compressible bytes: 64-byte pieces, each either random or a line of text.
fn fill(x: &mut u64, buf: &mut [u8]) {
    let text = b"incus-osd application data: the quick brown fox jumps over the lazy dog. ";
    for piece in buf.chunks_mut(64) {
        if step(x) >> 40 & 1 == 0 {
            for b in piece.iter_mut() {
                *b = (step(x) >> 24) as u8;
            }
        } else {
            piece.copy_from_slice(&text[..piece.len()]);
        }
    }
}

fn write_file(path: &Path, size: u64, x: &mut u64, block: &mut [u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        fill(x, &mut block[..n]);
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Fills `dir` with the tree; returns its file bytes and entries (files and directories).
fn make_tree(dir: &Path) -> Result<(u64, u64)> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut block = vec![0u8; 1 << 20];
    let (mut bytes, mut entries) = (0u64, 0u64);
    let dir_at = |rel: &str, entries: &mut u64| -> Result<PathBuf> {
        let p = dir.join(rel);
        std::fs::create_dir_all(&p)?;
        *entries += 1;
        Ok(p)
    };
    let large = dir_at("images", &mut entries)?;
    for i in 0..LARGE.0 {
        write_file(
            &large.join(format!("disk-{i}.img")),
            LARGE.1,
            &mut x,
            &mut block,
        )?;
        (bytes, entries) = (bytes + LARGE.1, entries + 1);
    }
    let medium = dir_at("blobs", &mut entries)?;
    for i in 0..MEDIUM.0 {
        write_file(
            &medium.join(format!("blob-{i:03}")),
            MEDIUM.1,
            &mut x,
            &mut block,
        )?;
        (bytes, entries) = (bytes + MEDIUM.1, entries + 1);
    }
    let mut small_dirs = vec![];
    for d in 0..SMALL_DIRS {
        small_dirs.push(dir_at(&format!("db/shard-{d:02}"), &mut entries)?);
    }
    entries += 1; // db
    for i in 0..SMALL_FILES {
        let size = step(&mut x) % SMALL_MAX + 1;
        let path = small_dirs[i % SMALL_DIRS].join(format!("row-{i:05}.json"));
        write_file(&path, size, &mut x, &mut block)?;
        (bytes, entries) = (bytes + size, entries + 1);
    }
    Ok((bytes, entries))
}

/// The file bytes and entries under `dir` (not counting `dir`).
fn tree_size(dir: &Path) -> Result<(u64, u64)> {
    let (mut bytes, mut entries) = (0, 0);
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let e = e?;
        let meta = e.metadata()?;
        entries += 1;
        if meta.is_dir() {
            let (b, n) = tree_size(&e.path())?;
            (bytes, entries) = (bytes + b, entries + n);
        } else {
            bytes += meta.len();
        }
    }
    Ok((bytes, entries))
}

/// Leaves the application installed in `root` as an install does (see the integration
/// tests' `Root::install_application`): the stand-in image, the link, the record.
fn install(root: &Path) -> Result<()> {
    let images = root.join("var/lib/incus-os-extensions").join(VERSION);
    std::fs::create_dir_all(&images)?;
    let mut image = vec![0u8; 1024];
    image[512..520].copy_from_slice(b"EFI PART");
    std::fs::write(images.join(format!("{APP}.raw")), image)?;
    let links = root.join("var/lib/extensions");
    std::fs::create_dir_all(&links)?;
    std::os::unix::fs::symlink(
        format!("/var/lib/incus-os-extensions/{VERSION}/{APP}.raw"),
        links.join(format!("{APP}.raw")),
    )?;
    let state = root.join("var/lib/incus-os/state.json");
    std::fs::create_dir_all(state.parent().context("no parent")?)?;
    let doc = serde_json::json!({
        "schema_version": 2,
        "applications": {APP: {"version": VERSION, "available_versions": [VERSION]}},
    });
    std::fs::write(&state, serde_json::to_vec_pretty(&doc)?)?;
    Ok(())
}

/// Reads an HTTP/1.1 answer's head; returns the status and whether the body is chunked.
fn read_head(r: &mut impl BufRead) -> Result<(u16, bool)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("a bad status line: {line:?}"))?;
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("the answer ended in its head");
        }
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            return Ok((status, chunked));
        }
        if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            chunked = true;
        }
    }
}

/// Copies a chunked body to `out`; an error if it ends before its last chunk.
fn dechunk(r: &mut impl BufRead, out: &mut impl Write) -> Result<u64> {
    let mut line = String::new();
    let mut total = 0;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("the body was cut off after {total} bytes");
        }
        let size = u64::from_str_radix(line.trim_end().split(';').next().unwrap_or(""), 16)
            .with_context(|| format!("a bad chunk size line: {line:?}"))?;
        if size == 0 {
            return Ok(total);
        }
        let n = io::copy(&mut r.by_ref().take(size), out)?;
        ensure!(n == size, "the body was cut off in a chunk");
        total += n;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
    }
}

fn request_head(path: &str, len: u64, content_type: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: {content_type}\r\n\
         content-length: {len}\r\nconnection: close\r\n\r\n"
    )
}

/// `POST :backup`, the archive streamed into `out`; the time to its last byte.
fn backup_ours(socket: &Path, out: &Path) -> Result<Duration> {
    let start = Instant::now();
    let mut s = UnixStream::connect(socket)?;
    let body = b"{}";
    let head = request_head(
        &format!("/1.0/applications/{APP}/:backup"),
        body.len() as u64,
        "application/json",
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut r = BufReader::with_capacity(1 << 20, s);
    let (status, chunked) = read_head(&mut r)?;
    let mut file = io::BufWriter::with_capacity(1 << 20, File::create(out)?);
    if status != 200 {
        let mut text = String::new();
        r.read_to_string(&mut text)?;
        bail!("POST :backup answered {status}: {}", text.trim());
    }
    if chunked {
        dechunk(&mut r, &mut file)?;
    } else {
        io::copy(&mut r, &mut file)?;
    }
    file.flush()?;
    Ok(start.elapsed())
}

/// `POST :restore` with `archive` uploaded; the time to the answer.
fn restore_ours(socket: &Path, archive: &Path) -> Result<Duration> {
    let start = Instant::now();
    let mut file = File::open(archive)?;
    let len = file.metadata()?.len();
    let mut s = UnixStream::connect(socket)?;
    let head = request_head(
        &format!("/1.0/applications/{APP}/:restore"),
        len,
        "application/gzip",
    );
    s.write_all(head.as_bytes())?;
    io::copy(&mut file, &mut s)?;
    let mut answer = String::new();
    BufReader::new(&s).read_to_string(&mut answer)?;
    let took = start.elapsed();
    let status = answer.split_whitespace().nth(1).unwrap_or_default();
    ensure!(
        status == "200",
        "POST :restore answered: {}",
        answer.lines().last().unwrap_or_default()
    );
    Ok(took)
}

fn tar(args: &[&str], stdin: Stdio, stdout: Stdio) -> Result<Duration> {
    let start = Instant::now();
    let st = Command::new("tar")
        .args(args)
        .stdin(stdin)
        .stdout(stdout)
        .status()
        .context("cannot run tar")?;
    ensure!(st.success(), "tar {} failed: {st}", args.join(" "));
    Ok(start.elapsed())
}

/// Waits until the daemon's restore staging beside the data directory is gone (it is
/// swapped in or removed a second after the answer).
fn wait_settled(root: &Path) -> Result<()> {
    let staged = root.join(format!("{DATA}.new"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while staged.exists() {
        ensure!(
            Instant::now() < deadline,
            "the restore staging {} is still there after 2 minutes",
            staged.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

struct Side {
    backup: Duration,
    restore: Duration,
}

pub async fn figure_10(report: &mut Report, daemon: &Path, plugins: &Path) -> Result<()> {
    let (mut proc, spawned) =
        procs::spawn_daemon_with(daemon, plugins, "daemon (declared-backup)", install)?;
    let socket = proc.socket.clone();
    crate::client::wait_served(&mut proc, &socket, spawned, true, crate::START_TIMEOUT).await?;
    let loaded = loaded_plugins(&proc.socket).await?;
    ensure!(
        loaded.iter().any(|n| n == APP),
        "the {APP} fixture is not loaded; loaded: {loaded:?}"
    );
    let free = procs::free_space(proc.root())?;
    ensure!(
        free >= NEED_FREE,
        "figure 10 needs {} free in {} (a 1 GiB tree, its archives and extractions), but only \
         {} is free there: point TMPDIR at a larger file system, or leave figure 10 out with \
         --figures",
        fmt_mb(NEED_FREE),
        proc.root().display(),
        fmt_mb(free)
    );
    let data = proc.root().join(DATA);
    eprintln!("10. writing a ~1 GiB application tree …");
    let (bytes, entries) = make_tree(&data)?;
    let work = tempfile::Builder::new()
        .prefix("incus-osd-bench-appbackup-")
        .tempdir()?;
    let ours_gz = work.path().join("ours.tar.gz");
    let tar_gz = work.path().join("tar.tar.gz");
    let extracted = work.path().join("extracted");
    let idle = idle_memory(&proc, &["/1.0", "/1.0/applications"]).await?;

    let mut best_ours = Side {
        backup: Duration::MAX,
        restore: Duration::MAX,
    };
    let mut best_tar = Side {
        backup: Duration::MAX,
        restore: Duration::MAX,
    };
    let (mut peak_backup, mut peak_restore): (Option<Peak>, Option<Peak>) = (None, None);
    let max = |a: Option<Peak>, b: Peak| Some(a.map_or(b, |a| if b.rss > a.rss { b } else { a }));
    for run in 1..=RUNS {
        eprintln!("10. run {run}/{RUNS}: POST :backup …");
        let watch = proc.watch_peak();
        let (s, out) = (socket.clone(), ours_gz.clone());
        let took = tokio::task::spawn_blocking(move || backup_ours(&s, &out)).await??;
        peak_backup = max(peak_backup, watch.finish()?);
        best_ours.backup = best_ours.backup.min(took);

        eprintln!("10. run {run}/{RUNS}: tar -czf - …");
        let out = File::create(&tar_gz)?;
        let dir = data.to_str().context("the data path is not text")?;
        let took = tar(&["-czf", "-", "-C", dir, "."], Stdio::null(), out.into())?;
        best_tar.backup = best_tar.backup.min(took);

        eprintln!("10. run {run}/{RUNS}: POST :restore …");
        let watch = proc.watch_peak();
        let (s, archive) = (socket.clone(), ours_gz.clone());
        let took = tokio::task::spawn_blocking(move || restore_ours(&s, &archive)).await??;
        peak_restore = max(peak_restore, watch.finish()?);
        best_ours.restore = best_ours.restore.min(took);
        wait_settled(proc.root())?;

        eprintln!("10. run {run}/{RUNS}: tar -xzf - …");
        std::fs::create_dir(&extracted)?;
        let into = extracted.to_str().context("the work path is not text")?;
        let took = tar(
            &["-xzf", "-", "-C", into],
            File::open(&ours_gz)?.into(),
            Stdio::null(),
        )?;
        best_tar.restore = best_tar.restore.min(took);
        // The daemon's archive, extracted by tar, is the tree.
        let got = tree_size(&extracted)?;
        ensure!(
            got == (bytes, entries),
            "the daemon's backup holds {} bytes in {} entries, the tree {bytes} in {entries}",
            got.0,
            got.1
        );
        std::fs::remove_dir_all(&extracted)?;
    }
    let ours_size = std::fs::metadata(&ours_gz)?.len();
    let tar_size = std::fs::metadata(&tar_gz)?.len();
    let tail = proc.log_tail();
    proc.check_running()
        .with_context(|| format!("the daemon died during figure 10{tail}"))?;
    proc.stop(STOP_GRACE);

    let rate = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    report.section(format!(
        "10. a {:.2} GB application root ({entries} entries) through POST :backup / :restore \
         vs tar -czf - / tar -xzf -, best of {RUNS} alternated",
        bytes as f64 / 1e9
    ));
    report.header("daemon", "tar");
    for (what, ours, theirs) in [
        ("backup (tree MB/s)", best_ours.backup, best_tar.backup),
        ("restore (tree MB/s)", best_ours.restore, best_tar.restore),
    ] {
        let ratio = rate(ours) / rate(theirs);
        report.row(
            what,
            format!("{:.0} MB/s", rate(ours)),
            format!("{:.0} MB/s", rate(theirs)),
            Some(ratio),
            Verdict::at_least(ratio, MIN_RATIO),
        );
    }
    for (what, peak) in [
        ("peak VmRSS growth, backup", peak_backup),
        ("peak VmRSS growth, restore", peak_restore),
    ] {
        let peak = peak.context("no run")?;
        let growth = peak.rss.saturating_sub(idle.rss);
        report.row(
            what,
            fmt_mb(growth),
            "-".into(),
            None,
            Verdict::budget(growth <= MAX_GROWTH, format!("<= {}", fmt_mb(MAX_GROWTH))),
        );
    }
    report.note(format!(
        "10. archives: ours {}, tar -czf {} (both gzip level 6); times: backup {:.2} s vs \
         {:.2} s, restore {:.2} s vs {:.2} s; the restore is timed to the daemon's answer \
         (upload stored, extracted and checked beside the data directory; the swap follows \
         one second later and is not timed); idle VmRSS {}; {}",
        fmt_mb(ours_size),
        fmt_mb(tar_size),
        best_ours.backup.as_secs_f64(),
        best_tar.backup.as_secs_f64(),
        best_ours.restore.as_secs_f64(),
        best_tar.restore.as_secs_f64(),
        fmt_mb(idle.rss),
        if peak_backup.is_some_and(|p| p.exact) {
            "peaks from VmHWM"
        } else {
            "peaks from VmRSS sampled every 5 ms (VmHWM could not be reset)"
        }
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunked_answer_is_copied_whole_and_a_cut_one_is_an_error() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/gzip\r\n\
            transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=1\r\n world\r\n0\r\n\r\n";
        let mut r = BufReader::new(&answer[..]);
        assert_eq!(read_head(&mut r).unwrap(), (200, true));
        let mut out = vec![];
        assert_eq!(dechunk(&mut r, &mut out).unwrap(), 11);
        assert_eq!(out, b"hello world");

        let cut = &answer[..answer.len() - 12];
        let mut r = BufReader::new(cut);
        read_head(&mut r).unwrap();
        let err = dechunk(&mut r, &mut vec![]).unwrap_err();
        assert!(err.to_string().contains("cut off"), "{err:#}");
    }

    #[test]
    fn the_tree_is_about_a_gib_of_semi_compressible_data() {
        let small = SMALL_FILES as u64 * SMALL_MAX / 2;
        let total = LARGE.0 as u64 * LARGE.1 + MEDIUM.0 as u64 * MEDIUM.1 + small;
        assert!((900 << 20..1200 << 20).contains(&total), "{total}");
        let mut x = 1;
        let mut buf = vec![0u8; 1 << 20];
        fill(&mut x, &mut buf);
        let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::default());
        gz.write_all(&buf).unwrap();
        let ratio = gz.finish().unwrap().len() as f64 / buf.len() as f64;
        assert!((0.3..0.8).contains(&ratio), "{ratio}");
    }
}
