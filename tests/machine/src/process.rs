//! Running helper commands with a deadline, and stopping processes by PID.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What a command printed and how it ended.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// `Ok(stdout)` when the command succeeded, else an error carrying its stderr.
    pub fn into_result(self, what: &str) -> Result<String> {
        if self.status.success() {
            Ok(self.stdout)
        } else {
            bail!(
                "{what} failed ({}): {}{}",
                self.status,
                self.stderr.trim(),
                if self.stdout.trim().is_empty() {
                    String::new()
                } else {
                    format!("\nstdout: {}", self.stdout.trim())
                }
            )
        }
    }
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` (stdin from /dev/null unless set) and collects its output; kills it by PID
/// if it outlives `timeout`.
pub(crate) fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<CommandOutput> {
    output_with_input(cmd, None, timeout)
}

/// As [`output_with_timeout`], feeding `input` on stdin.
pub(crate) fn output_with_input(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<CommandOutput> {
    let what = describe(cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().with_context(|| format!("spawning {what}"))?;
    let writer = match (input, child.stdin.take()) {
        (Some(data), Some(mut stdin)) => {
            let data = data.to_vec();
            Some(std::thread::spawn(move || {
                use std::io::Write;
                let _ = stdin.write_all(&data);
            }))
        }
        _ => None,
    };
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let status = match wait_timeout(&mut child, timeout)? {
        Some(s) => s,
        None => {
            kill_and_reap(&mut child);
            bail!("{what} did not finish within {timeout:?}; killed it");
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Ok(CommandOutput {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

fn reader<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `cmd` and returns its stdout, failing on a non-zero exit.
pub(crate) fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let what = describe(cmd);
    output_with_timeout(cmd, timeout)?.into_result(&what)
}

/// Polls `child` until it exits or `timeout` passes (`Ok(None)`).
pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `sig` to one process by PID; a process that is already gone is not an error.
pub(crate) fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions; pid is a positive, single PID.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// SIGKILLs `child` by PID and reaps it.
pub(crate) fn kill_and_reap(child: &mut Child) {
    if child.try_wait().ok().flatten().is_none() {
        signal(child.id(), libc::SIGKILL);
        let _ = child.wait();
    }
}

/// SIGTERMs `child` by PID, waits up to `grace`, then SIGKILLs it; always reaps it.
pub(crate) fn terminate(child: &mut Child, grace: Duration) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    signal(child.id(), libc::SIGTERM);
    if !matches!(wait_timeout(child, grace), Ok(Some(_))) {
        kill_and_reap(child);
    }
}

/// Whether a process with this PID exists (zombies included).
pub(crate) fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Command for a root tool, resolved through [`crate::find_tool`] so that a test whose
/// `PATH` lacks the sbin directories still finds it.
pub(crate) fn tool(name: &str) -> Command {
    Command::new(crate::find_tool(name).unwrap_or_else(|| name.into()))
}

/// A pidfd: signals through it reach the process it was opened for, never a later process
/// that reused its PID.
#[derive(Debug)]
pub(crate) struct PidFd(std::os::fd::OwnedFd);

impl PidFd {
    /// `pidfd_open(pid)`; `None` where the kernel lacks it or the process is gone.
    pub(crate) fn open(pid: u32) -> Option<PidFd> {
        use std::os::fd::FromRawFd;
        let pid = libc::pid_t::try_from(pid).ok()?;
        // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
        // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
        Some(PidFd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends `sig`; a process that already exited is not an error.
    pub(crate) fn signal(&self, sig: libc::c_int) {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal on a descriptor we own, with no siginfo (NULL).
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
    }
}

/// Whether `name` is `<prefix>-<pid>-...` for a `<pid>` that no longer runs: the leftover
/// of a test process that was killed before its guards could clean up.
pub(crate) fn owned_by_dead_process(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.split('-').next())
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|pid| !pid_alive(pid))
}

/// A temporary directory named `<prefix>-<our pid>-<random>`, so that
/// [`owned_by_dead_process`] can recognise it later.
pub(crate) fn owned_tempdir(prefix: &str) -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("{prefix}-{}-", std::process::id()))
        .tempdir()
}
