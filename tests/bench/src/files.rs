//! Figure 9: a 300 MB file read by a loaded plugin through the host (contract 1.3): the
//! daemon's peak resident memory over idle while the `files-1-3` fixture streams the file
//! through the descriptor `HostOps::file_open` hands it (`POST
//! /1.0/services/files-1-3/:sum`), next to the same file moved whole across the boundary by
//! 1.2's `HostOps::file_read` (`:read`), each in a fresh daemon. The file is written
//! under the daemon's root (in `TMPDIR`: 300 MB must be free there), its checksum
//! computed as it is written, and both answers must match it.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::client::{self, Outcome, Upload};
use crate::procs::{self, Memory, Peak};
use crate::report::{Report, Verdict};
use crate::stats::fmt_mb;
use crate::{idle_memory, loaded_plugins, start_daemon, STOP_GRACE};

/// The fixture library figure 9 loads.
pub const FIXTURE: &str = "fixture_files_1_3";
const SIZE: u64 = 300_000_000;
/// Budget: the streamed read costs a few MB (a 64 KiB buffer, the request), not the file.
pub const MAX_GROWTH: u64 = 8_000_000;
const TIMEOUT: Duration = Duration::from_secs(300);
const FILE: &str = "/srv/big.img";

/// Writes [`SIZE`] bytes of noise to `path` and returns their FNV-1a, as the fixture
/// computes it.
fn write_file(path: &Path) -> Result<String> {
    std::fs::create_dir_all(path.parent().context("no parent")?)?;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    let (mut x, mut hash, mut left) = (0x9e37_79b9_7f4a_7c15u64, 0xcbf2_9ce4_8422_2325u64, SIZE);
    while left > 0 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        let n = left.min(8) as usize;
        for &b in &bytes[..n] {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        out.write_all(&bytes[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(format!("{hash:016x}"))
}

/// One read in a fresh daemon: its idle memory and the peak during `POST :<op>`.
async fn one_read(daemon: &Path, plugins: &Path, op: &str) -> Result<(Memory, Peak)> {
    let (proc, _) = start_daemon(daemon, plugins, "daemon (files-1-3 fixture)").await?;
    let loaded = loaded_plugins(&proc.socket).await?;
    ensure!(
        loaded.iter().any(|n| n == "files-1-3"),
        "the files-1-3 fixture is not loaded; loaded: {loaded:?}"
    );
    let path = proc.root().join(FILE.trim_start_matches('/'));
    let free = procs::free_space(proc.root())?;
    ensure!(
        free >= SIZE + (64 << 20),
        "figure 9 writes a {} file under the daemon's root in {}, but only {} is free there: \
         point TMPDIR at a larger file system, or leave figure 9 out with --figures",
        fmt_mb(SIZE),
        proc.root().display(),
        fmt_mb(free)
    );
    let want = write_file(&path)?;
    let idle = idle_memory(&proc, &["/1.0", "/1.0/services/files-1-3"]).await?;
    let watch = proc.watch_peak();
    let outcome = client::upload(
        &proc.socket,
        "POST",
        &format!("/1.0/services/files-1-3/:{op}"),
        &Upload::json(&json!({"path": FILE})),
        TIMEOUT,
    )
    .await;
    let peak = watch.finish()?;
    let tail = proc.log_tail();
    proc.stop(STOP_GRACE);
    let Outcome::Answered { status: 200, body } = &outcome else {
        bail!("POST :{op} answered {outcome:?}{tail}");
    };
    let doc: Value = serde_json::from_str(body).context("the answer is not JSON")?;
    let got = &doc["metadata"];
    ensure!(
        got["size"] == json!(SIZE) && got["fnv"] == json!(want),
        "POST :{op} read the file wrong: {got} (expected size {SIZE}, fnv {want})"
    );
    Ok((idle, peak))
}

pub async fn figure_9(report: &mut Report, daemon: &Path, plugins: &Path) -> Result<()> {
    eprintln!("9. a {} file read through the host …", fmt_mb(SIZE));
    let (idle, streamed) = one_read(daemon, plugins, "sum").await?;
    let (whole_idle, whole) = one_read(daemon, plugins, "read").await?;
    let growth = streamed.rss.saturating_sub(idle.rss);
    let whole_growth = whole.rss.saturating_sub(whole_idle.rss);
    report.section(format!(
        "9. a {} file read by a plugin through the host: peak VmRSS over idle",
        fmt_mb(SIZE)
    ));
    report.header("1.3 file_open", "1.2 file_read");
    report.row(
        "streamed through the fd",
        fmt_mb(growth),
        fmt_mb(whole_growth),
        None,
        Verdict::budget(growth <= MAX_GROWTH, format!("<= {}", fmt_mb(MAX_GROWTH))),
    );
    report.note(format!(
        "9. idle VmRSS {}; {}",
        fmt_mb(idle.rss),
        if streamed.exact {
            "peaks from VmHWM"
        } else {
            "peaks from VmRSS sampled every 5 ms (VmHWM could not be reset)"
        }
    ));
    Ok(())
}
