//! A minimal NTP server (RFC 5905 server mode, this machine's clock as a stratum-1
//! reference) on a thread inside a [`crate::NetNs`], so a machine's timesyncd can
//! synchronise against it.

use anyhow::{bail, Context, Result};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::NetNs;

/// Seconds from 1900 (NTP's era) to 1970.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// Answers NTP client requests on UDP port 123 of an address in a namespace; stopped on
/// drop.
#[derive(Debug)]
pub struct NtpServer {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NtpServer {
    /// Binds `address:123` inside `ns` (the address must already be on a link there).
    pub fn start(ns: &NetNs, address: &str) -> Result<NtpServer> {
        let path = ns.path();
        let bind = format!("{address}:123");
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU32::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop2, answered2) = (stop.clone(), answered.clone());
        let thread = std::thread::spawn(move || {
            let socket = (|| -> Result<UdpSocket> {
                let f = std::fs::File::open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                // SAFETY: setns on a descriptor we own, for this thread only (a network
                // namespace may be joined by one thread of a multi-threaded process).
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("joining {}", path.display()));
                }
                let s = UdpSocket::bind(&bind).with_context(|| format!("binding {bind}"))?;
                s.set_read_timeout(Some(Duration::from_millis(100)))?;
                Ok(s)
            })();
            let socket = match socket {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let mut buf = [0u8; 512];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = answer(&buf[..n]) {
                    if socket.send_to(&reply, peer).is_ok() {
                        answered2.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(NtpServer {
                stop,
                answered,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => bail!("the NTP server thread did not start"),
        }
    }

    /// How many requests it answered.
    pub fn answered(&self) -> u32 {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for NtpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Now as a 64-bit NTP timestamp (seconds since 1900, binary fraction).
fn ntp_now() -> [u8; 8] {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = (d.as_secs() + NTP_UNIX_OFFSET) as u32;
    let frac = ((u64::from(d.subsec_nanos()) << 32) / 1_000_000_000) as u32;
    let mut ts = [0u8; 8];
    ts[..4].copy_from_slice(&secs.to_be_bytes());
    ts[4..].copy_from_slice(&frac.to_be_bytes());
    ts
}

/// The server reply to a client request (mode 3); `None` for anything else.
fn answer(req: &[u8]) -> Option<[u8; 48]> {
    if req.len() < 48 || req[0] & 0x7 != 3 {
        return None;
    }
    let now = ntp_now();
    let mut r = [0u8; 48];
    r[0] = (4 << 3) | 4; // no leap warning, version 4, server
    r[1] = 1; // stratum 1
    r[2] = req[2]; // the client's poll interval
    r[3] = (-20i8) as u8; // precision about a microsecond
    r[12..16].copy_from_slice(b"LOCL");
    r[16..24].copy_from_slice(&now); // reference time
    r[24..32].copy_from_slice(&req[40..48]); // origin: the client's transmit time
    r[32..40].copy_from_slice(&now); // receive
    r[40..48].copy_from_slice(&ntp_now()); // transmit
    Some(r)
}
