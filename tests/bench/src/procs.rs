//! Spawned processes (the daemon, the bare server) behind a guard that kills them when
//! dropped, their temporary roots, and the plugin directories.
#![allow(unsafe_code)] // audited: bench support: process resource queries through libc

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

/// A spawned process; killed (and reaped) on drop if still running. Its temporary
/// directory (root, socket, log) is removed after it is gone.
pub struct Proc {
    pub label: String,
    pub socket: PathBuf,
    child: Child,
    log: PathBuf,
    // Dropped after `drop` ran, i.e. after the process is dead.
    _dir: TempDir,
}

impl Proc {
    /// The process's temporary directory: the daemon's root.
    pub fn root(&self) -> &Path {
        self._dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early ({status}){}", self.label, self.log_tail());
        }
        Ok(())
    }

    /// The end of the process's log, for error messages (empty when there is none).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            return String::new();
        }
        let tail = &lines[lines.len().saturating_sub(15)..];
        format!("; its log ends:\n  {}", tail.join("\n  "))
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.pid(), libc::SIGTERM);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        // Drop kills and reaps whatever is left.
    }

    /// Resident memory from `/proc/<pid>/status`.
    pub fn memory(&self) -> Result<Memory> {
        read_memory(self.pid())
    }

    /// Starts watching the peak resident memory from now on: the kernel's high-water mark
    /// (`VmHWM`) is reset to the current size (`/proc/<pid>/clear_refs`), and a thread
    /// samples `VmRSS` every few milliseconds as a cross-check (and as the figure when the
    /// reset is not allowed).
    pub fn watch_peak(&self) -> PeakWatch {
        let pid = self.pid();
        let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut max = 0;
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(m) = read_memory(pid) {
                        max = max.max(m.rss);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                max
            }
        });
        PeakWatch {
            pid,
            reset,
            stop,
            sampler,
        }
    }
}

/// A peak-memory watch started by [`Proc::watch_peak`].
pub struct PeakWatch {
    pid: u32,
    reset: bool,
    stop: Arc<AtomicBool>,
    sampler: std::thread::JoinHandle<u64>,
}

/// The peak resident memory over a watch.
#[derive(Debug, Clone, Copy)]
pub struct Peak {
    /// The figure: `VmHWM` since the watch started, or the sampled maximum when the
    /// high-water mark could not be reset.
    pub rss: u64,
    /// The largest `VmRSS` the sampler saw.
    pub sampled: u64,
    /// Whether `rss` is the kernel's high-water mark.
    pub exact: bool,
}

impl PeakWatch {
    pub fn finish(self) -> Result<Peak> {
        self.stop.store(true, Ordering::Relaxed);
        let sampled = self
            .sampler
            .join()
            .map_err(|_| anyhow::anyhow!("the memory sampler panicked"))?;
        let hwm = read_memory(self.pid)?.peak;
        Ok(if self.reset {
            Peak {
                rss: hwm.max(sampled),
                sampled,
                exact: true,
            }
        } else {
            Peak {
                rss: sampled,
                sampled,
                exact: false,
            }
        })
    }
}

/// Resident memory of process `pid` from `/proc/<pid>/status`.
pub fn read_memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let field = |name: &str| -> Result<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(':'))
            .with_context(|| format!("no {name} in {path}"))?;
        let n: u64 = line[name.len() + 1..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("cannot parse {line:?}"))?;
        Ok(n)
    };
    Ok(Memory {
        rss: field("VmRSS")? * 1024,
        peak: field("VmHWM")? * 1024,
        anon: field("RssAnon")? * 1024,
        file: field("RssFile")? * 1024,
        threads: field("Threads")?,
    })
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet (the `Child`
        // still owns it), so it cannot have been reused.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Resident memory of a process, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss: u64,
    /// The high-water mark of `rss` (`VmHWM`).
    pub peak: u64,
    pub anon: u64,
    pub file: u64,
    pub threads: u64,
}

fn temp_dir(prefix: &str) -> Result<TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("cannot create a temporary directory")
}

/// Spawns the daemon over a fresh temporary root with an OS identity, serving on
/// `ROOT/run/incus-os/unix.socket`, loading plugins from `plugins`.
pub fn spawn_daemon(daemon: &Path, plugins: &Path, label: &str) -> Result<(Proc, Instant)> {
    spawn_daemon_with(daemon, plugins, label, |_| Ok(()))
}

/// [`spawn_daemon`], with `prepare` run on the root before the daemon starts.
pub fn spawn_daemon_with(
    daemon: &Path,
    plugins: &Path,
    label: &str,
    prepare: impl FnOnce(&Path) -> Result<()>,
) -> Result<(Proc, Instant)> {
    let dir = temp_dir("incus-osd-bench-root-")?;
    let root = dir.path();
    let write = |rel: &str, data: &str| -> Result<()> {
        let p = root.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, data).with_context(|| format!("cannot write {}", p.display()))
    };
    write(
        "lib/os-release",
        "NAME=\"IncusOS\"\nID=incus-os\nIMAGE_VERSION=202511041601\n",
    )?;
    write("etc/machine-id", "0123456789abcdef0123456789abcdef\n")?;
    write("proc/uptime", "123.45 67.89\n")?;
    prepare(root)?;
    let socket = root.join("run/incus-os/unix.socket");
    let log = root.join("bench-daemon.log");
    let mut cmd = Command::new(daemon);
    cmd.arg("--root")
        .arg(root)
        .arg("--socket")
        .arg(&socket)
        .arg("--plugins")
        .arg(plugins)
        .env("INCUS_OSD_LOG", "info");
    spawn(cmd, dir, socket, log, label)
}

/// Spawns this binary as the bare server answering `status`, `content_type`, `body`.
pub fn spawn_bare(status: u16, content_type: &str, body: &[u8]) -> Result<(Proc, Instant)> {
    let dir = temp_dir("incus-osd-bench-bare-")?;
    let socket = dir.path().join("bare.socket");
    let body_file = dir.path().join("body");
    std::fs::write(&body_file, body).context("cannot write the bare server's body")?;
    let log = dir.path().join("bench-bare.log");
    let exe = std::env::current_exe().context("cannot find the bench's own executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--bare-server")
        .arg(&socket)
        .arg(&body_file)
        .arg("--bare-status")
        .arg(status.to_string())
        .arg("--bare-content-type")
        .arg(content_type);
    spawn(cmd, dir, socket, log, "bare hyper server")
}

fn spawn(
    mut cmd: Command,
    dir: TempDir,
    socket: PathBuf,
    log: PathBuf,
    label: &str,
) -> Result<(Proc, Instant)> {
    let log_file = File::create(&log).context("cannot create a log file")?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file));
    let spawned = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {label} ({:?})", cmd.get_program()))?;
    Ok((
        Proc {
            label: label.to_string(),
            socket,
            child,
            log,
            _dir: dir,
        },
        spawned,
    ))
}

/// The plugin directories: every plugin as a system ships them (the first-party bundle
/// when `source` has one), every plugin in a library of its own, and none.
pub struct PluginDirs {
    pub all: TempDir,
    pub singles: TempDir,
    pub none: TempDir,
    /// The library files in `all`.
    pub names: Vec<String>,
    /// How many plugins `all` carries.
    pub plugins: usize,
}

/// Stages the plugin libraries of `source` (the daemon's naming rules): its bundles
/// (`libincus_osd_bundle_*.so`) into `all` when there are any, else its plugin libraries
/// (`libincus_osd_plugin_*.so`); the plugin libraries into `singles`.
pub fn stage_plugins(source: &Path) -> Result<PluginDirs> {
    let files = incus_osd::plugins::loader::scan_dir(source)
        .with_context(|| format!("cannot list {}", source.display()))?;
    let is_bundle = |f: &Path| {
        f.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(incus_osd::plugins::loader::is_bundle_file_name)
    };
    let (bundles, singles): (Vec<PathBuf>, Vec<PathBuf>) =
        files.into_iter().partition(|f| is_bundle(f));
    if singles.is_empty() {
        bail!(
            "no plugin libraries (libincus_osd_plugin_*.so) in {}: run `cargo build --release \
             --workspace` first, or pass --plugins DIR",
            source.display()
        );
    }
    let all = temp_dir("incus-osd-bench-plugins-")?;
    let single_dir = temp_dir("incus-osd-bench-singles-")?;
    let none = temp_dir("incus-osd-bench-noplugins-")?;
    let copy = |f: &Path, to: &Path| -> Result<String> {
        let name = f.file_name().context("plugin file without a name")?;
        std::fs::copy(f, to.join(name)).with_context(|| format!("cannot copy {}", f.display()))?;
        Ok(name.to_string_lossy().into_owned())
    };
    for f in &singles {
        copy(f, single_dir.path())?;
    }
    let shipped = if bundles.is_empty() {
        &singles
    } else {
        &bundles
    };
    let mut names = vec![];
    let mut plugins = 0;
    for f in shipped {
        names.push(copy(f, all.path())?);
        plugins += incus_osd::plugins::loader::open_library(f)
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?
            .plugins
            .len();
    }
    Ok(PluginDirs {
        all,
        singles: single_dir,
        none,
        names,
        plugins,
    })
}

/// Copies the fixture libraries `lib<stem>.so` of `source` into a fresh directory under
/// plugin file names (`libincus_osd_plugin_<stem>.so`), as the daemon's plugin directory.
pub fn stage_fixtures(source: &Path, stems: &[&str]) -> Result<TempDir> {
    let dir = temp_dir("incus-osd-bench-fixtures-")?;
    for stem in stems {
        let from = source.join(format!("lib{stem}.so"));
        if !from.is_file() {
            bail!(
                "the fixture library {} is missing: run `cargo build --release --workspace` \
                 first, or pass --plugins DIR",
                from.display()
            );
        }
        let to = dir.path().join(format!("libincus_osd_plugin_{stem}.so"));
        std::fs::copy(&from, &to).with_context(|| format!("cannot copy {}", from.display()))?;
    }
    Ok(dir)
}

/// Bytes free for an unprivileged user on the file system holding `dir`.
pub fn free_space(dir: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .with_context(|| format!("bad path {}", dir.display()))?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statvfs, both alive for the
    // duration of the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot stat the file system of {}", dir.display()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}
