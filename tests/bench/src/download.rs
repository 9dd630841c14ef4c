//! Figure 8: a 1 GiB gzip image downloaded and verified from a local HTTPS server (the
//! harness's test server, private CA) through the host's network client
//! (`plugin_host::net::Client` and its download pipeline: SHA-256, gunzip, atomic file),
//! side by side with `curl -s --cacert CA URL | tee >(sha256sum >/dev/null) | gunzip > file`
//! on the same file, alternated (ours, curl, ours, curl), best of each.
//!
//! The image is made once per run in a temporary directory from semi-compressible data
//! (runs of text and random bytes, about 2:1). Our download runs in a child process (this
//! executable, `--fetch-child`) that reports its own peak resident memory over its
//! resident size before the download: the memory the pipeline costs, whatever the file's
//! size.

use std::io::{self, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use incus_osd_harness::testserver::TestServer;
use plugin_api::net::{Download, Request, Tls};
use plugin_host::files::RootFs;
use plugin_host::net::{Client, Net, NoProgress, Proxies};
use sha2::{Digest, Sha256};

use crate::procs::read_memory;
use crate::report::{Report, Verdict};
use crate::stats::fmt_mb;

/// The compressed size of the image.
const IMAGE: u64 = 1 << 30;
const MIN_RATIO: f64 = 0.9;
const MAX_GROWTH: u64 = 32_000_000;
const RUNS: usize = 2;

/// What the child reports, one line: `<seconds> <rss before> <peak> <written> <sha256>`.
struct Fetched {
    took: Duration,
    growth: u64,
    written: u64,
}

/// `--fetch-child URL CA_FILE ROOT SHA256`: downloads URL to `ROOT/image.raw` through the
/// client and the pipeline, and prints what [`Fetched`] reads.
pub fn fetch_child(args: &[String]) -> Result<()> {
    let [url, ca, root, sha] = args else {
        bail!("--fetch-child takes URL CA_FILE ROOT SHA256");
    };
    let ca = std::fs::read_to_string(ca).context("cannot read the CA file")?;
    let client = Client::with_proxies(root, Proxies::default());
    let files = RootFs::new(root);
    let mut request = Request::get(url.as_str());
    request.tls = Tls {
        ca_pem: Some(ca),
        ..Tls::default()
    };
    let download = Download {
        request,
        target: "/image.raw".into(),
        mode: 0o644,
        sha256: sha.clone(),
        gunzip: true,
        max_bytes: 0,
    };
    let pid = std::process::id();
    // Reset the high-water mark to the current size (where allowed).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = read_memory(pid)?.rss;
    let start = Instant::now();
    let r = client
        .download("bench", &download, &files, &NoProgress)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let took = start.elapsed();
    let peak = read_memory(pid)?.peak;
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{} {before} {peak} {} {}",
        took.as_secs_f64(),
        r.written,
        r.sha256
    )?;
    Ok(())
}

fn ours(url: &str, ca: &Path, root: &Path, sha: &str) -> Result<Fetched> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .arg("--fetch-child")
        .args([
            url,
            ca.to_str().context("CA path")?,
            root.to_str().context("root")?,
            sha,
        ])
        .output()
        .context("cannot run the download child")?;
    ensure!(
        out.status.success(),
        "the download child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = text.split_whitespace().collect();
    ensure!(f.len() == 5, "unexpected child output {text:?}");
    let secs: f64 = f[0].parse()?;
    let before: u64 = f[1].parse()?;
    let peak: u64 = f[2].parse()?;
    let written: u64 = f[3].parse()?;
    ensure!(f[4] == sha, "the child's SHA-256 {} is not {sha}", f[4]);
    std::fs::remove_file(root.join("image.raw"))?;
    Ok(Fetched {
        took: Duration::from_secs_f64(secs),
        growth: peak.saturating_sub(before),
        written,
    })
}

fn curl(url: &str, ca: &Path, out: &Path) -> Result<(Duration, u64)> {
    let script = format!(
        "set -o pipefail; curl -s --cacert '{}' '{url}' | tee >(sha256sum >/dev/null) | gunzip > '{}'",
        ca.display(),
        out.display()
    );
    let start = Instant::now();
    let st = Command::new("bash")
        .args(["-c", &script])
        .status()
        .context("cannot run bash")?;
    let took = start.elapsed();
    ensure!(st.success(), "the curl pipeline failed: {st}");
    let len = std::fs::metadata(out)?.len();
    std::fs::remove_file(out)?;
    Ok((took, len))
}

/// xorshift64.
fn step(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Writes the image: gzip (fastest level) of semi-compressible data until the compressed
/// size reaches [`IMAGE`]. Returns its SHA-256 and the uncompressed size.
fn make_image(path: &Path) -> Result<(String, u64)> {
    struct Tee<W> {
        inner: W,
        hash: Sha256,
        len: u64,
    }
    impl<W: Write> Write for Tee<W> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = self.inner.write(buf)?;
            self.hash.update(&buf[..n]);
            self.len += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }
    let file = io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let tee = Tee {
        inner: file,
        hash: Sha256::new(),
        len: 0,
    };
    let mut gz = flate2::write::GzEncoder::new(tee, flate2::Compression::fast());
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut block = vec![0u8; 1 << 20];
    let mut plain = 0u64;
    while gz.get_ref().len < IMAGE {
        for piece in block.chunks_mut(64) {
            if step(&mut x) >> 40 & 1 == 0 {
                // Random bytes, from the same generator (no repeats for gzip to find).
                for b in piece.iter_mut() {
                    *b = (step(&mut x) >> 24) as u8;
                }
            } else {
                let text = b"incus-osd image block: the quick brown fox jumps over the lazy dog ";
                piece.copy_from_slice(&text[..piece.len()]);
            }
        }
        gz.write_all(&block)?;
        plain += block.len() as u64;
    }
    let tee = gz.finish()?;
    let sha = tee
        .hash
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut file = tee.inner;
    file.flush()?;
    Ok((sha, plain))
}

pub fn figure_8(report: &mut Report) -> Result<()> {
    let site = tempfile::Builder::new()
        .prefix("incus-osd-bench-download-")
        .tempdir()?;
    eprintln!("8. making a 1 GiB gzip image …");
    let (sha, plain) = make_image(&site.path().join("image.raw.gz"))?;
    let server = TestServer::https(site.path());
    let ca = site.path().join("ca.pem");
    std::fs::write(&ca, server.ca_pem())?;
    let url = server.url("/image.raw.gz");
    let out = tempfile::Builder::new()
        .prefix("incus-osd-bench-target-")
        .tempdir()?;
    let mut best_ours: Option<Fetched> = None;
    let mut best_curl = Duration::MAX;
    let mut max_growth = 0;
    for run in 1..=RUNS {
        eprintln!("8. run {run}/{RUNS}: Client …");
        let f = ours(&url, &ca, out.path(), &sha)?;
        ensure!(
            f.written == plain,
            "we wrote {} bytes, not {plain}",
            f.written
        );
        max_growth = max_growth.max(f.growth);
        if best_ours.as_ref().is_none_or(|b| f.took < b.took) {
            best_ours = Some(f);
        }
        eprintln!("8. run {run}/{RUNS}: curl | tee >(sha256sum) | gunzip …");
        let (took, len) = curl(&url, &ca, &out.path().join("curl.raw"))?;
        ensure!(
            len == plain,
            "curl's pipeline wrote {len} bytes, not {plain}"
        );
        best_curl = best_curl.min(took);
    }
    let ours = best_ours.context("no run")?;
    let rate = |d: Duration| IMAGE as f64 / d.as_secs_f64() / 1e6;
    let ratio = rate(ours.took) / rate(best_curl);
    report.section(format!(
        "8. download and verify a 1 GiB gzip image ({:.2} GB uncompressed) over local HTTPS: \
         Client + pipeline vs curl | tee >(sha256sum) | gunzip",
        plain as f64 / 1e9
    ));
    report.header("ours", "curl pipeline");
    report.row(
        "throughput (served bytes)",
        format!("{:.0} MB/s", rate(ours.took)),
        format!("{:.0} MB/s", rate(best_curl)),
        Some(ratio),
        Verdict::at_least(ratio, MIN_RATIO),
    );
    report.row(
        "peak VmRSS growth",
        fmt_mb(max_growth),
        "-".into(),
        None,
        Verdict::budget(
            max_growth <= MAX_GROWTH,
            format!("<= {}", fmt_mb(MAX_GROWTH)),
        ),
    );
    report.note(format!(
        "8. best of {RUNS} runs each, alternated: ours {:.2} s, curl {:.2} s; the server runs \
         in the bench process on the same CPUs for both",
        ours.took.as_secs_f64(),
        best_curl.as_secs_f64()
    ));
    Ok(())
}
