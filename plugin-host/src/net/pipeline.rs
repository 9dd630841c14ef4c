//! The download pipeline: a body, as it arrives, goes through SHA-256 (of the bytes as
//! served), optionally gunzip, a size cap, and into an atomic file
//! ([`crate::files::AtomicWrite`]) that replaces the target only once the body is
//! complete and verified.
//!
//! Two threads share the work: the caller's reads the body and hashes it, a second one
//! decompresses and writes, with a few 256 KiB buffers in flight between them (a couple of
//! MiB at most, whatever the file's size).

use std::io::{self, Read, Write};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread;

use flate2::read::MultiGzDecoder;
use plugin_api::net::{Download, DownloadResult};
use sha2::{Digest, Sha256};

use crate::files::AtomicWrite;
use crate::net::Progress;
use crate::PlatformError;

/// Bytes read from the body at a time.
const CHUNK: usize = 256 * 1024;
/// Buffers queued between the reading and the writing thread.
const IN_FLIGHT: usize = 4;
/// Progress is reported about this often (and once at the end).
pub const PROGRESS_EVERY: u64 = 8 * 1024 * 1024;

/// How a download failed on the reading side.
enum ReadFail {
    /// The body could not be read (the message says why).
    Body(io::Error),
    /// The writing side stopped (its own error says why).
    WriterGone,
}

/// Streams `body` (whose length the server announced as `total`, when it did) into
/// `file`, checking it against `download`'s SHA-256, gzip and size settings; commits the
/// file only when everything passed. Every error names the URL and the target; on error
/// the target is left as it was (the temporary file goes with `file`).
pub fn save(
    plugin: &str,
    download: &Download,
    body: &mut dyn Read,
    total: Option<u64>,
    file: Box<dyn AtomicWrite>,
    progress: &dyn Progress,
) -> Result<DownloadResult, PlatformError> {
    let fail = |what: String| {
        PlatformError(format!(
            "download of {} to {}: {what}",
            super::shown_url(&download.request.url),
            download.target
        ))
    };
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT);
    let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
    let (read, written) = thread::scope(|s| {
        let writer = s.spawn(|| write_side(rx, back_tx, file, download));
        let read = read_side(plugin, download, body, total, tx, back_rx, progress);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err("the writing thread panicked".to_string()));
        (read, written)
    });
    let (received, sha) = match read {
        Ok(r) => r,
        Err(ReadFail::Body(e)) => return Err(fail(e.to_string())),
        Err(ReadFail::WriterGone) => {
            return Err(fail(
                written.err().unwrap_or_else(|| "the writer stopped".into()),
            ))
        }
    };
    let (file, written) = written.map_err(fail)?;
    if let Some(total) = total {
        if received != total {
            return Err(fail(format!(
                "the body was cut short: got {received} of {total} bytes"
            )));
        }
    }
    if !download.sha256.is_empty() && !download.sha256.eq_ignore_ascii_case(&sha) {
        return Err(fail(format!(
            "SHA-256 mismatch: expected {}, got {sha}",
            download.sha256
        )));
    }
    file.commit().map_err(|e| fail(e.to_string()))?;
    Ok(DownloadResult {
        received,
        written,
        sha256: sha,
    })
}

/// Reads the body, hashes it, hands the buffers to the writer, reports progress.
fn read_side(
    plugin: &str,
    download: &Download,
    body: &mut dyn Read,
    total: Option<u64>,
    tx: SyncSender<Vec<u8>>,
    back: Receiver<Vec<u8>>,
    progress: &dyn Progress,
) -> Result<(u64, String), ReadFail> {
    let mut hash = Sha256::new();
    let mut received = 0u64;
    let mut next_report = PROGRESS_EVERY;
    loop {
        let mut buf = back
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        buf.resize(CHUNK, 0);
        let mut filled = 0;
        // Fill the buffer (fewer, larger hand-overs), stopping at the end of the body.
        while filled < CHUNK {
            match body.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadFail::Body(e)),
            }
            if filled >= CHUNK / 4 {
                break;
            }
        }
        if filled == 0 {
            break;
        }
        buf.truncate(filled);
        hash.update(&buf);
        received += filled as u64;
        tx.send(buf).map_err(|_| ReadFail::WriterGone)?;
        if received >= next_report {
            progress.progress(plugin, &download.target, received, total);
            while next_report <= received {
                next_report += PROGRESS_EVERY;
            }
        }
    }
    drop(tx);
    progress.progress(plugin, &download.target, received, total);
    Ok((received, hex(&hash.finalize())))
}

/// Decompresses (when asked) and writes what the reader hands over. Returns the
/// uncommitted file and how many bytes went into it.
fn write_side(
    rx: Receiver<Vec<u8>>,
    back: Sender<Vec<u8>>,
    file: Box<dyn AtomicWrite>,
    download: &Download,
) -> Result<(Box<dyn AtomicWrite>, u64), String> {
    let mut out = Capped {
        file,
        written: 0,
        max: download.max_bytes,
        target: &download.target,
    };
    if download.gunzip {
        let mut gz = MultiGzDecoder::new(Chunks {
            rx,
            back,
            cur: Vec::new(),
            pos: 0,
        });
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match gz.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("the body is not valid gzip: {e}")),
            };
            out.write(&buf[..n])?;
        }
    } else {
        for buf in rx {
            out.write(&buf)?;
            let _ = back.send(buf);
        }
    }
    Ok((out.file, out.written))
}

/// The file with the `max_bytes` cap and clear texts for a full disk.
struct Capped<'a> {
    file: Box<dyn AtomicWrite>,
    written: u64,
    max: u64,
    target: &'a str,
}

impl Capped<'_> {
    fn write(&mut self, data: &[u8]) -> Result<(), String> {
        let after = self.written + data.len() as u64;
        if self.max > 0 && after > self.max {
            return Err(format!(
                "the file would be larger than the limit of {} bytes",
                self.max
            ));
        }
        self.file
            .write_all(data)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                    format!("no space left on the device for {}: {e}", self.target)
                }
                Some(libc::EFBIG) => {
                    format!("{} would be too large for its filesystem: {e}", self.target)
                }
                _ => format!("writing {}: {e}", self.target),
            })?;
        self.written = after;
        Ok(())
    }
}

/// The reader's buffers as one stream (for the gzip decoder); used buffers go back.
struct Chunks {
    rx: Receiver<Vec<u8>>,
    back: Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(next) => {
                    let used = std::mem::replace(&mut self.cur, next);
                    if used.capacity() > 0 {
                        let _ = self.back.send(used);
                    }
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
