//! Running commands with a timeout, output captured.

use std::io::Read;
use std::process::{Command, Stdio};
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
    let mut child = Command::new(prog)
        .args(args)
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
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_t = std::thread::spawn(move || {
        let mut v = vec![];
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = vec![];
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(timed_out(argv, timeout));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(PlatformError(format!("waiting for {prog}: {e}"))),
        }
    };
    Ok(Output {
        status: status.code().unwrap_or(-1),
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
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
}
