//! Running commands with a timeout, output captured.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::PlatformError;

/// A command's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit status, -1 when killed by a signal.
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

pub trait Commands: Send + Sync {
    fn run(
        &self,
        argv: &[String],
        stdin: &[u8],
        timeout: Duration,
    ) -> Result<Output, PlatformError>;
}

/// Runs commands on this machine.
pub struct RealCommands;

impl Commands for RealCommands {
    fn run(
        &self,
        argv: &[String],
        stdin: &[u8],
        timeout: Duration,
    ) -> Result<Output, PlatformError> {
        run_with_timeout(argv, stdin, timeout)
    }
}

/// Refuses every command, saying why (offline mode).
pub struct Refused {
    reason: String,
}

impl Refused {
    pub fn new(reason: &str) -> Self {
        Refused {
            reason: reason.to_string(),
        }
    }
}

impl Commands for Refused {
    fn run(&self, argv: &[String], _: &[u8], _: Duration) -> Result<Output, PlatformError> {
        Err(PlatformError(format!(
            "cannot run {}: {}",
            argv.first().map(String::as_str).unwrap_or("(nothing)"),
            self.reason
        )))
    }
}

/// The error of a command that could not be started. (Secret arguments are masked by
/// `PluginHost`, in this text as in every other about a plugin's command.)
pub fn spawn_failed(argv: &[String], e: &std::io::Error) -> PlatformError {
    PlatformError(format!("Failed to run: {}: {e}", argv.join(" ")))
}

/// The error of a command killed at its timeout.
pub fn timed_out(argv: &[String], timeout: Duration) -> PlatformError {
    PlatformError(format!(
        "Failed to run: {}: timed out after {:.1}s",
        argv.join(" "),
        timeout.as_secs_f64()
    ))
}

/// Spawns `argv`, feeds `stdin`, captures both outputs, kills the process at `timeout`.
pub fn run_with_timeout(
    argv: &[String],
    stdin: &[u8],
    timeout: Duration,
) -> Result<Output, PlatformError> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| PlatformError("empty command".into()))?;
    // Its own process group, so a timeout kills what it started too.
    let mut child = Command::new(prog)
        .args(args)
        .process_group(0)
        .stdin(if stdin.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_failed(argv, &e))?;
    if let Some(mut input) = child.stdin.take() {
        let data = stdin.to_vec();
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = input.write_all(&data);
        });
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let out = collect(child.stdout.take().expect("piped"), done_tx.clone());
    let err = collect(child.stderr.take().expect("piped"), done_tx);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() >= deadline => {
                kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                return Err(timed_out(argv, timeout));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(PlatformError(format!("waiting for {prog}: {e}"))),
        }
    };
    // The output ends when every holder of the pipes closed them; a process the command
    // left running in the background may hold them on: wait at most until the deadline,
    // then answer with what was read.
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    let take =
        |b: &Arc<Mutex<Vec<u8>>>| std::mem::take(&mut *b.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Output {
        status: status.code().unwrap_or(-1),
        stdout: take(&out),
        stderr: take(&err),
    })
}

/// Reads `pipe` to its end on a thread, into a buffer the caller can take at any time;
/// `done` is sent at the end.
fn collect(mut pipe: impl Read + Send + 'static, done: Sender<()>) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let theirs = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => theirs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&chunk[..n]),
            }
        }
        let _ = done.send(());
    });
    buf
}

/// SIGKILL to the process group `pgid` (a command started with `process_group(0)`).
#[allow(unsafe_code)] // audited: kill(2) with a negative pid and a constant signal
fn kill_group(pgid: u32) {
    if let Ok(pgid) = i32::try_from(pgid) {
        // SAFETY: a plain system call on integers.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn output_status_and_stdin_are_passed() {
        let o = run_with_timeout(
            &argv(&["sh", "-c", "cat; echo oops >&2; exit 3"]),
            b"hello",
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(o.status, 3);
        assert_eq!(o.stdout, b"hello");
        assert_eq!(o.stderr, b"oops\n");
    }

    #[test]
    fn a_slow_command_is_killed_at_its_timeout() {
        let e =
            run_with_timeout(&argv(&["sleep", "30"]), b"", Duration::from_millis(100)).unwrap_err();
        assert!(e.0.contains("timed out"), "{e}");
    }

    #[test]
    fn a_missing_program_is_a_clear_error() {
        let e = run_with_timeout(
            &argv(&["/nonexistent/tool", "-x"]),
            b"",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            e.0.starts_with("Failed to run: /nonexistent/tool -x:"),
            "{e}"
        );
    }

    #[test]
    fn a_background_child_holding_the_output_does_not_outlive_the_timeout() {
        let t = Instant::now();
        let o = run_with_timeout(
            &argv(&["sh", "-c", "echo started; sleep 30 & exit 0"]),
            b"",
            Duration::from_millis(500),
        )
        .unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert_eq!((o.status, o.stdout.as_slice()), (0, &b"started\n"[..]));
    }

    #[test]
    fn a_timeout_kills_what_the_command_started() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("late");
        let script = format!("(sleep 1; touch {}) & sleep 30", marker.display());
        let e = run_with_timeout(
            &argv(&["sh", "-c", &script]),
            b"",
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(e.0.contains("timed out"), "{e}");
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            !marker.exists(),
            "the background child survived the timeout"
        );
    }
}
