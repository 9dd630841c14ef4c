//! Test support for crash tests (feature `test-support`): run a job in a child process (the
//! test binary itself, re-invoked to run one ignored test) and kill it with SIGKILL at a
//! random moment, or under a resource limit that makes its writes fail half-way.
//!
//! The child side is an `#[ignore]`d test that starts with
//! `let Some(job) = crash::child_job() else { return };`; the parent starts it with
//! [`spawn_child`] naming that test by its full path (`module::tests::name`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable carrying the child's job.
pub const CHILD_ENV: &str = "INCUS_OSD_CRASH_CHILD";

/// The job this process was started for by [`spawn_child`], if it was.
pub fn child_job() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// Starts this test binary again, running only the ignored test `test` with job `job`.
/// Its standard output is piped (read it with `wait_with_output`).
pub fn spawn_child(test: &str, job: &str) -> Child {
    Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            test,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, job)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the child test process")
}

/// The child's report to its parent: a `RESULT <text>` line on standard output.
pub fn report(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "RESULT {text}").expect("write the result");
    out.flush().expect("flush the result");
}

/// A random number in `0..n` from the kernel's generator.
pub fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    crate::random::fill(&mut b).expect("random bytes");
    u64::from_le_bytes(b) % n.max(1)
}

/// Waits (up to 30 s) until `ready()` holds, then SIGKILLs `child` after a random delay
/// below `max_delay` and reaps it. Panics if the child exited on its own first.
pub fn kill_at_random(child: &mut Child, ready: impl Fn() -> bool, max_delay: Duration) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the child exited before it was ready: {status}");
        }
        assert!(Instant::now() < deadline, "the child never got ready");
        std::thread::sleep(Duration::from_micros(200));
    }
    let delay = random_below(max_delay.as_micros() as u64);
    std::thread::sleep(Duration::from_micros(delay));
    if let Ok(Some(status)) = child.try_wait() {
        panic!("the child exited before it was killed: {status}");
    }
    // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
    }
    let status = child.wait().expect("reap the child");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "the child ended otherwise: {status}"
    );
}

/// Limits the size of any file this process writes to `bytes` (`RLIMIT_FSIZE`), with
/// `SIGXFSZ` ignored so that a write past the limit fails with `EFBIG` half-way instead of
/// killing the process. For child processes only: it applies to the whole process.
pub fn limit_file_size(bytes: u64) {
    let lim = libc::rlimit {
        rlim_cur: bytes as libc::rlim_t,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setting a signal's disposition to SIG_IGN and a resource limit of this
    // process; both take plain values.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0, "setrlimit");
    }
}
