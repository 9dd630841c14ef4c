//! A real systemd, booted in a `systemd-nspawn` container.
//!
//! # How
//!
//! `systemd-nspawn --boot --private-network --register=no --keep-unit --volatile=overlay
//! --console=read-only --link-journal=no --machine=<unique> -D <cached rootfs>`:
//!
//! * `--volatile=overlay` puts a tmpfs overlay over the read-only cached tree, so every
//!   machine starts clean and nothing is copied or left on disk. (`--ephemeral` works too
//!   but copies the whole tree on this ext4 host — about 1 s per boot — and deleting the
//!   copy on exit is slow with `discard`.)
//! * `--private-network` gives it a network namespace with only `lo`; no veth leaks into
//!   the host's namespace (`--network-veth` would). Link it to a [`crate::NetNs`] with
//!   [`crate::NetNs::add_veth_to_pid`] when a test needs a network.
//! * `--register=no --keep-unit`: the host has no systemd to register with.
//! * nspawn is first moved into a private cgroup (see the `cgroup` module): without a
//!   host systemd, nspawn nests the container's cgroup tree in the cgroup it was started
//!   from, which parallel machines would otherwise share.
//!
//! The container's PID 1 is the child of nspawn that lives in another PID namespace and
//! runs `systemd`. The machine is ready when its system bus, reached from the host at
//! `/proc/<pid 1>/root/run/dbus/system_bus_socket`, reports the manager's `SystemState`
//! as `running` (or `degraded`).
//!
//! # Timings measured here
//!
//! On this 2-core host (Debian 12, systemd 252, hybrid cgroups, ext4), debug build:
//!
//! * the base rootfs builds once in 35–50 s (debootstrap), a variant with extra packages
//!   in about 5 s more (`open-iscsi`: 5–6 s); ~160 MB and ~190 MB under `target/tier3/`;
//! * a boot, from spawning nspawn to `SystemState` `running`, takes 0.19–0.25 s alone,
//!   0.27 s each for two in parallel, 0.35–0.45 s while other tests run beside it
//!   (`--ephemeral` instead: ~1 s, plus a slow delete of the copy);
//! * a stop (SIGKILL of the container's PID 1, nspawn's exit, cgroup removal) ~40 ms.
//!
//! [`Machine::boot_duration`] reports each boot.

use anyhow::{anyhow, bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::cgroup::{Cgroup, PREFIX};
use crate::process::{
    kill_and_reap, output_with_input, owned_by_dead_process, owned_tempdir, signal, wait_timeout,
    CommandOutput, PidFd,
};
use crate::rootfs::{in_cgroup, tail};

const LOG_PREFIX: &str = "incus-osd-machine";
const SYSTEMD_DEST: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER_IFACE: &str = "org.freedesktop.systemd1.Manager";

/// Where [`MachineBuilder::loop_devices`] mounts the kernel's devtmpfs inside the machine.
pub const HOST_DEVTMPFS: &str = "/run/host-devtmpfs";
/// How many loop device numbers [`MachineBuilder::loop_devices`] links (`/dev/loop0` up):
/// the host's kernel numbers them, and other tests may hold some.
pub const LOOP_DEVICES: u32 = 256;
/// Partitions per loop device linked (`p1`..`p4`).
const LOOP_PARTITIONS: u32 = 4;

/// Configures and boots a [`Machine`].
#[derive(Debug, Clone)]
pub struct MachineBuilder {
    packages: Vec<String>,
    binds: Vec<(String, PathBuf, PathBuf)>,
    loop_devices: bool,
    boot_timeout: Duration,
    command_timeout: Duration,
}

impl Default for MachineBuilder {
    fn default() -> Self {
        MachineBuilder::new()
    }
}

impl MachineBuilder {
    pub fn new() -> MachineBuilder {
        MachineBuilder {
            packages: Vec::new(),
            binds: Vec::new(),
            loop_devices: false,
            boot_timeout: Duration::from_secs(60),
            command_timeout: Duration::from_secs(120),
        }
    }

    /// Extra Debian packages preinstalled in the machine (a cached rootfs variant is built
    /// on first use).
    pub fn packages(mut self, packages: &[&str]) -> MachineBuilder {
        self.packages
            .extend(packages.iter().map(|p| (*p).to_string()));
        self
    }

    /// Host path `src` mounted read-only at `dst` inside the machine.
    pub fn bind_ro(mut self, src: impl AsRef<Path>, dst: impl AsRef<Path>) -> MachineBuilder {
        self.binds.push((
            "--bind-ro".into(),
            src.as_ref().to_path_buf(),
            dst.as_ref().to_path_buf(),
        ));
        self
    }

    /// Host path `src` mounted read-write at `dst` inside the machine.
    pub fn bind(mut self, src: impl AsRef<Path>, dst: impl AsRef<Path>) -> MachineBuilder {
        self.binds.push((
            "--bind".into(),
            src.as_ref().to_path_buf(),
            dst.as_ref().to_path_buf(),
        ));
        self
    }

    /// Lets the machine attach loop devices and see their partitions, as `systemd-sysext`
    /// and `systemd-dissect` do with a raw disk image. nspawn gives the container a private
    /// `/dev` with a fixed set of nodes, but a loop device is numbered by the host's kernel
    /// when it is allocated (`LOOP_CTL_GET_FREE` on `/dev/loop-control`), and the node of
    /// each partition on it (`/dev/loopNpM`, major 259, a minor chosen then) appears only
    /// in the kernel's devtmpfs; systemd opens both by those names. So:
    /// `/dev/loop-control` is bound in; `/dev/loop0` up to [`LOOP_DEVICES`] are made as
    /// real block nodes (systemd 252 opens them with `O_NOFOLLOW` and refuses a symlink);
    /// the kernel's devtmpfs is mounted read-only at [`HOST_DEVTMPFS`] inside and
    /// `/dev/loopNp1`..`p4` are symlinks into it (dangling until the kernel makes the
    /// partition; systemd follows these). Only those names are added to the container's
    /// `/dev`. This relies on the container's device access not being restricted (no host
    /// systemd confines nspawn here: the test runs it with `--keep-unit`). Loop devices
    /// systemd leaves attached go with the container (autoclear).
    pub fn loop_devices(mut self) -> MachineBuilder {
        self.loop_devices = true;
        self
    }

    /// How long to wait for `running`/`degraded` (default 60 s).
    pub fn boot_timeout(mut self, timeout: Duration) -> MachineBuilder {
        self.boot_timeout = timeout;
        self
    }

    /// Deadline of each [`Machine::run`] (default 120 s).
    pub fn command_timeout(mut self, timeout: Duration) -> MachineBuilder {
        self.command_timeout = timeout;
        self
    }

    /// Builds the rootfs if needed, boots the machine and waits until its systemd is
    /// `running` or `degraded`.
    pub fn boot(self) -> Result<Machine> {
        let pkgs: Vec<&str> = self.packages.iter().map(String::as_str).collect();
        let rootfs = crate::rootfs::rootfs(&pkgs)?;
        Machine::start(self, rootfs)
    }
}

/// A booted container running systemd as its PID 1. Stopped (by PID) on drop.
#[derive(Debug)]
pub struct Machine {
    name: String,
    nspawn: Option<Child>,
    pid: u32,
    pid1_fd: Option<PidFd>,
    root: PathBuf,
    bus_address: String,
    rootfs: PathBuf,
    log_dir: tempfile::TempDir,
    cgroup: Option<Cgroup>,
    boot_duration: Duration,
    command_timeout: Duration,
}

impl Machine {
    /// Boots a machine from the base rootfs: `Machine::builder().boot()`.
    pub fn boot() -> Result<Machine> {
        MachineBuilder::new().boot()
    }

    pub fn builder() -> MachineBuilder {
        MachineBuilder::new()
    }

    fn start(b: MachineBuilder, rootfs: PathBuf) -> Result<Machine> {
        let name = crate::unique_name("t3");
        sweep_stale_logs();
        let log_dir = owned_tempdir(LOG_PREFIX)?;
        let log_path = log_dir.path().join("console.log");
        let log = fs::File::create(&log_path)?;
        let cgroup = Cgroup::create(&format!("{PREFIX}-{}", &name[3..]))?;
        let started = Instant::now();

        let nspawn = crate::find_tool("systemd-nspawn").context("systemd-nspawn not found")?;
        let mut cmd = in_cgroup(&cgroup);
        cmd.arg(nspawn)
            .args([
                "--boot",
                "--private-network",
                "--register=no",
                "--keep-unit",
                "--volatile=overlay",
                "--console=read-only",
                "--link-journal=no",
                &format!("--machine={name}"),
            ])
            .arg("-D")
            .arg(&rootfs);
        for (flag, src, dst) in &b.binds {
            for p in [src, dst] {
                if p.to_string_lossy().contains(':') {
                    bail!("bind mount path with ':' is not supported: {}", p.display());
                }
            }
            cmd.arg(format!("{flag}={}:{}", src.display(), dst.display()));
        }
        if b.loop_devices {
            cmd.arg("--bind=/dev/loop-control");
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().context("spawning systemd-nspawn")?;

        let mut m = Machine {
            name,
            pid: 0,
            pid1_fd: None,
            root: PathBuf::new(),
            bus_address: String::new(),
            nspawn: Some(child),
            rootfs,
            log_dir,
            cgroup: Some(cgroup),
            boot_duration: Duration::ZERO,
            command_timeout: b.command_timeout,
        };
        // On error `m` is dropped, which stops whatever started.
        let deadline = started + b.boot_timeout;
        m.pid = m.wait_for_pid1(deadline).map_err(|e| m.boot_error(e))?;
        m.pid1_fd = PidFd::open(m.pid);
        m.root = PathBuf::from(format!("/proc/{}/root", m.pid));
        m.bus_address = format!("unix:path=/proc/{}/root/run/dbus/system_bus_socket", m.pid);
        m.wait_running(deadline).map_err(|e| m.boot_error(e))?;
        if b.loop_devices {
            m.link_loop_devices().map_err(|e| m.boot_error(e))?;
        }
        m.boot_duration = started.elapsed();
        Ok(m)
    }

    /// See [`MachineBuilder::loop_devices`].
    fn link_loop_devices(&self) -> Result<()> {
        self.run_ok(&["mkdir", "-p", HOST_DEVTMPFS])?;
        self.run_ok(&[
            "mount",
            "-t",
            "devtmpfs",
            "-o",
            "ro,nosuid,noexec",
            "devtmpfs",
            HOST_DEVTMPFS,
        ])
        .context("mounting the kernel's devtmpfs in the machine")?;
        let dev = self.host_path("/dev");
        let shift = loop_part_shift();
        for n in 0..LOOP_DEVICES {
            let node = dev.join(format!("loop{n}"));
            if node.symlink_metadata().is_err() {
                mknod_block(&node, 7, n << shift)?;
            }
            for p in 1..=LOOP_PARTITIONS {
                let name = format!("loop{n}p{p}");
                let link = dev.join(&name);
                if link.symlink_metadata().is_ok() {
                    continue;
                }
                std::os::unix::fs::symlink(format!("{HOST_DEVTMPFS}/{name}"), &link)
                    .with_context(|| format!("linking {}", link.display()))?;
            }
        }
        Ok(())
    }

    fn boot_error(&self, e: anyhow::Error) -> anyhow::Error {
        e.context(format!(
            "booting machine {} from {}; console:\n{}",
            self.name,
            self.rootfs.display(),
            tail(&self.console_log(), 40)
        ))
    }

    fn nspawn_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.nspawn
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn wait_for_pid1(&mut self, deadline: Instant) -> Result<u32> {
        let nspawn_pid = self.nspawn_pid();
        let own_ns = fs::read_link("/proc/self/ns/pid")?;
        loop {
            if let Some(st) = self.nspawn_exited() {
                bail!("systemd-nspawn exited ({st}) before the container started");
            }
            for c in children(nspawn_pid) {
                let other_ns =
                    fs::read_link(format!("/proc/{c}/ns/pid")).is_ok_and(|ns| ns != own_ns);
                let comm = fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default();
                if other_ns && comm.trim() == "systemd" {
                    return Ok(c);
                }
            }
            if Instant::now() >= deadline {
                bail!("no container PID 1 running systemd under nspawn {nspawn_pid}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn wait_running(&mut self, deadline: Instant) -> Result<()> {
        let socket = self.root.join("run/dbus/system_bus_socket");
        loop {
            if let Some(st) = self.nspawn_exited() {
                bail!("systemd-nspawn exited ({st}) during boot");
            }
            if socket.exists() {
                break;
            }
            if Instant::now() >= deadline {
                bail!("{} did not appear", socket.display());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let address = self.bus_address.clone();
        on_runtime(async move {
            // dbus.socket exists before dbus-daemon runs, and a connection can fail while
            // the bus starts: retry until the deadline, reporting the last problem.
            let pause = || tokio::time::sleep(Duration::from_millis(10));
            let mut last = String::from("no answer yet");
            let until = tokio::time::Instant::from_std(deadline);
            use tokio::time::timeout_at;
            let mut conn = None;
            while Instant::now() < deadline {
                let c = match conn.take() {
                    Some(c) => c,
                    None => match timeout_at(until, connect(&address)).await {
                        Ok(Ok(c)) => c,
                        Err(_) => break,
                        Ok(Err(e)) => {
                            last = format!("connecting: {e}");
                            pause().await;
                            continue;
                        }
                    },
                };
                match timeout_at(until, system_state(&c)).await {
                    Err(_) => break,
                    Ok(Ok(state)) => match state.as_str() {
                        "running" | "degraded" => return Ok(()),
                        "maintenance" | "stopping" | "offline" => {
                            bail!("system state is {state}")
                        }
                        _ => last = format!("system state {state}"),
                    },
                    Ok(Err(e)) => last = format!("reading SystemState: {e}"),
                }
                conn = Some(c);
                pause().await;
            }
            bail!("systemd not running/degraded within the boot timeout ({last})")
        })?
    }

    /// The machine name (also its hostname): `t3-<test pid>-<n>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Host PID of the container's PID 1 (its systemd).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Host PID of the `systemd-nspawn` process.
    pub fn nspawn_pid(&self) -> u32 {
        self.nspawn.as_ref().map_or(0, Child::id)
    }

    /// The container's root as seen from the host: `/proc/<pid 1>/root`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path inside the container as reachable from the host (`root()` joined with it).
    pub fn host_path(&self, inside: impl AsRef<Path>) -> PathBuf {
        let p = inside.as_ref();
        self.root.join(p.strip_prefix("/").unwrap_or(p))
    }

    /// The container's system bus, for D-Bus clients on the host:
    /// `unix:path=/proc/<pid 1>/root/run/dbus/system_bus_socket`.
    pub fn bus_address(&self) -> &str {
        &self.bus_address
    }

    /// The cached rootfs the machine runs from (read-only; writes go to a tmpfs overlay).
    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }

    /// How long `boot` took, from spawning nspawn to `running`/`degraded`.
    pub fn boot_duration(&self) -> Duration {
        self.boot_duration
    }

    /// The container's console output so far (systemd's boot messages).
    pub fn console_log(&self) -> String {
        fs::read_to_string(self.log_dir.path().join("console.log")).unwrap_or_default()
    }

    /// Connects to the container's system bus (`async`: call it from a tokio runtime).
    pub async fn connect(&self) -> zbus::Result<zbus::Connection> {
        connect(&self.bus_address).await
    }

    /// The manager's `SystemState`, read over the bus (synchronous; usable from any
    /// context: the call runs on a private runtime thread).
    pub fn system_state(&self) -> Result<String> {
        let address = self.bus_address.clone();
        on_runtime(async move {
            let conn = connect(&address).await?;
            system_state(&conn).await
        })?
    }

    /// Runs a command inside the container — all its namespaces, its root, a clean
    /// environment (`PATH`, `HOME=/root`, `LANG=C.UTF-8`) — and returns its output,
    /// whatever its exit status. Runs via `nsenter`; the process stays in the test's cgroup.
    pub fn run(&self, args: &[&str]) -> Result<CommandOutput> {
        self.run_with_input(args, None)
    }

    /// [`Machine::run`] with `input` fed on stdin.
    pub fn run_with_input(&self, args: &[&str], input: Option<&[u8]>) -> Result<CommandOutput> {
        if args.is_empty() {
            bail!("run: empty command");
        }
        let mut cmd = crate::process::tool("nsenter");
        cmd.arg(format!("--target={}", self.pid))
            .args(["--all", "--root", "--wd", "--"])
            .args([
                "/usr/bin/env",
                "-i",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root",
                "LANG=C.UTF-8",
                "TERM=dumb",
                "SYSTEMD_PAGER=",
            ])
            .args(args);
        output_with_input(&mut cmd, input, self.command_timeout)
    }

    /// Runs a command inside the container and returns its stdout; fails on a non-zero
    /// exit, with its stderr.
    pub fn run_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        out.into_result(&format!("{:?} in machine {}", args, self.name))
    }

    /// `run_ok(["/bin/sh", "-c", script])`.
    pub fn sh(&self, script: &str) -> Result<String> {
        self.run_ok(&["/bin/sh", "-c", script])
    }

    /// Writes a file inside the container (through [`Machine::root`]), creating parent
    /// directories.
    pub fn write_file(&self, inside: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> Result<()> {
        let p = self.host_path(inside);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&p, contents).with_context(|| format!("writing {}", p.display()))
    }

    /// Stops the machine: SIGKILL to its PID 1 (which ends the whole container), waits
    /// for nspawn by PID (SIGKILL to it too after 10 s), removes its cgroups. Idempotent;
    /// also done on drop.
    pub fn stop(&mut self) -> Result<()> {
        let mut result = Ok(());
        if let Some(mut child) = self.nspawn.take() {
            if child.try_wait().ok().flatten().is_none() {
                match &self.pid1_fd {
                    Some(fd) => fd.signal(libc::SIGKILL),
                    None if self.pid != 0 => signal(self.pid, libc::SIGKILL),
                    // Not booted yet: nspawn itself (its container dies with it).
                    None => signal(child.id(), libc::SIGKILL),
                }
            }
            match wait_timeout(&mut child, Duration::from_secs(10)) {
                Ok(Some(_)) => {}
                _ => {
                    result = Err(anyhow!(
                        "systemd-nspawn {} did not exit after its container was killed",
                        child.id()
                    ));
                    kill_and_reap(&mut child);
                }
            }
        }
        if let Some(mut cg) = self.cgroup.take() {
            cg.destroy();
        }
        result
    }

    /// Stops the machine the polite way: SIGTERM to nspawn, which asks the container's
    /// systemd to halt; falls back to [`Machine::stop`] after `timeout`.
    pub fn shutdown(&mut self, timeout: Duration) -> Result<()> {
        if let Some(child) = self.nspawn.as_mut() {
            if child.try_wait().ok().flatten().is_none() {
                signal(child.id(), libc::SIGTERM);
                let _ = wait_timeout(child, timeout);
            }
        }
        self.stop()
    }

    /// Whether nspawn is still running.
    pub fn is_running(&mut self) -> bool {
        self.nspawn.is_some() && self.nspawn_exited().is_none()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("incus-osd-test-machine: stopping {}: {e:#}", self.name);
        }
    }
}

/// How many minor-number bits each loop device keeps for its own partitions: the loop
/// driver's `max_part` rounded up to a power of two (0 by default: minor = number).
fn loop_part_shift() -> u32 {
    let max_part: u32 = fs::read_to_string("/sys/module/loop/parameters/max_part")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    u32::BITS - max_part.leading_zeros()
}

/// A block device node `major:minor` at `path` (mode 0660).
fn mknod_block(path: &Path, major: u32, minor: u32) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call; mknod only reads it.
    let r = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFBLK | 0o660,
            libc::makedev(major, minor),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mknod {} b {major} {minor}", path.display()));
    }
    Ok(())
}

/// Direct children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    if let Ok(s) = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        return s
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
    }
    // Kernels without CONFIG_PROC_CHILDREN: scan /proc.
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(c) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = fs::read_to_string(format!("/proc/{c}/stat")).unwrap_or_default();
        // pid (comm) state ppid ...: comm may contain spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(c);
        }
    }
    out
}

async fn connect(address: &str) -> zbus::Result<zbus::Connection> {
    zbus::connection::Builder::address(address)?.build().await
}

async fn system_state(conn: &zbus::Connection) -> Result<String> {
    let reply = conn
        .call_method(
            Some(SYSTEMD_DEST),
            SYSTEMD_PATH,
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &(MANAGER_IFACE, "SystemState"),
        )
        .await?;
    let value: zbus::zvariant::OwnedValue = reply.body().deserialize()?;
    Ok(String::try_from(value)?)
}

/// Runs `fut` to completion on a fresh current-thread tokio runtime in its own thread, so
/// it works whether or not the caller is inside a runtime.
pub(crate) fn on_runtime<F>(fut: F) -> Result<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(fut))
    })
    .join()
    .map_err(|_| anyhow!("runtime thread panicked"))?
}

/// Console logs of machines whose test process was killed.
fn sweep_stale_logs() {
    let Ok(rd) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in rd.flatten() {
        if owned_by_dead_process(&e.file_name().to_string_lossy(), LOG_PREFIX) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}
