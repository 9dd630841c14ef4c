//! A software TPM 2.0 (`swtpm socket`) on a loopback TCP port pair.

use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::process::{
    kill_and_reap, owned_by_dead_process, owned_tempdir, signal, terminate, tool,
};

const PREFIX: &str = "incus-osd-swtpm";

/// A running `swtpm socket --tpm2` with fresh state, already started up
/// (`--flags not-need-init,startup-clear`). Killed by PID on drop.
#[derive(Debug)]
pub struct Swtpm {
    child: Option<Child>,
    port: u16,
    state: tempfile::TempDir,
}

impl Swtpm {
    /// Starts one on a free port pair of 127.0.0.1 (server `N`, control `N + 1`) and waits
    /// until both accept connections.
    pub fn start() -> Result<Swtpm> {
        let mut last_err = None;
        for _ in 0..10 {
            let port = free_port_pair()?;
            match Swtpm::start_on(port) {
                Ok(s) => return Ok(s),
                // Another process may have taken the ports in between: try another pair.
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no free port pair")))
    }

    /// Starts one with its server on `port` and its control channel on `port + 1`.
    pub fn start_on(port: u16) -> Result<Swtpm> {
        let ctrl = port.checked_add(1).context("port + 1 overflows")?;
        sweep_stale();
        let state = owned_tempdir(PREFIX)?;
        let log = state.path().join("swtpm.log");
        let mut cmd = tool("swtpm");
        cmd.args(["socket", "--tpm2"])
            .arg(format!("--server=type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg(format!("--ctrl=type=tcp,port={ctrl},bindaddr=127.0.0.1"))
            .arg(format!("--tpmstate=dir={}", state.path().display()))
            .arg("--flags=not-need-init,startup-clear")
            .arg(format!("--log=file={},level=1", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(state.path().join("stderr.log"))?);
        let child = cmd.spawn().context("spawning swtpm")?;
        let mut s = Swtpm {
            child: Some(child),
            port,
            state,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in [port, ctrl] {
            loop {
                if let Some(st) = s.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    let err = std::fs::read_to_string(s.state.path().join("stderr.log"))
                        .unwrap_or_default();
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    bail!("swtpm exited ({st}): {} {}", err.trim(), log.trim());
                }
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, p));
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!("swtpm did not accept connections on 127.0.0.1:{p}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(s)
    }

    /// The TCTI string for tss-esapi / tpm2-tools: `swtpm:host=127.0.0.1,port=N`.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The TPM command port `N`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The control channel port `N + 1`.
    pub fn ctrl_port(&self) -> u16 {
        self.port + 1
    }

    /// The TPM's state directory (deleted on drop).
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Host PID of swtpm.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends one raw TPM 2.0 command over the server port and returns the response.
    pub fn transmit(&self, command: &[u8]) -> Result<Vec<u8>> {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(command)?;
        let mut header = [0u8; 10];
        s.read_exact(&mut header)?;
        let size = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
        if size < 10 {
            bail!("TPM response size {size} < 10");
        }
        let mut rest = vec![0u8; size - 10];
        s.read_exact(&mut rest)?;
        let mut out = header.to_vec();
        out.extend(rest);
        Ok(out)
    }

    /// Stops swtpm (SIGTERM by PID, SIGKILL after 2 s). Also done on drop.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(2));
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Its state is thrown away: no need to let it save anything.
            kill_and_reap(&mut c);
        }
    }
}

/// A port `N` of 127.0.0.1 such that `N` and `N + 1` are both free right now.
fn free_port_pair() -> Result<u16> {
    for _ in 0..100 {
        let a = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = a.local_addr()?.port();
        if port == u16::MAX {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return Ok(port);
        }
    }
    bail!("found no free port pair on 127.0.0.1")
}

/// Kills swtpm processes whose state directory belongs to a test process that died
/// without stopping them, and removes those directories.
fn sweep_stale() {
    let tmp = std::env::temp_dir();
    let Ok(rd) = std::fs::read_dir(&tmp) else {
        return;
    };
    let stale: Vec<std::path::PathBuf> = rd
        .flatten()
        .filter(|e| owned_by_dead_process(&e.file_name().to_string_lossy(), PREFIX))
        .map(|e| e.path())
        .collect();
    if stale.is_empty() {
        return;
    }
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_swtpm = args.first().is_some_and(|a| a.ends_with("swtpm"));
        if is_swtpm
            && stale.iter().any(|d| {
                let want = format!("--tpmstate=dir={}", d.display());
                args.contains(&want)
            })
        {
            signal(pid, libc::SIGKILL);
        }
    }
    for d in stale {
        let _ = std::fs::remove_dir_all(d);
    }
}
