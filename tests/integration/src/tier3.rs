//! Tier-3 support shared by `tier3_*.rs`: the daemon and the workspace's plugins installed
//! in a real booted systemd (an nspawn [`Machine`]), on host directories that outlive one
//! boot so a reboot can be followed by a second boot of the "same" machine.
//!
//! Every helper here assumes the caller already passed `tier3_or_return!()`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use incus_osd::platform::systemd_dbus::DbusSystemd;
use incus_osd_test_machine::{Machine, MachineBuilder};
use plugin_api::abi::UnitOp;
use serde_json::Value;

use crate::{daemon_binary, request, workspace_plugins};

/// The daemon's unit, as shipped.
pub const UNIT: &str = "incus-osd.service";
/// Where the daemon serves inside the machine.
pub const SOCKET: &str = "/run/incus-os/unix.socket";
/// The image version of the test OS identity.
pub const IMAGE_VERSION: &str = "202511041601";
/// The shipped unit file, read from the repository.
pub fn unit_file() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../host/systemd/incus-osd.service");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// The drop-in the tests add to the shipped unit: debug logging for the daemon's own crate
/// only, so the journal shows each plugin's start and stop (other crates, zbus among them,
/// stay at `info`).
pub const DROP_IN: &str = "[Service]\nEnvironment=INCUS_OSD_LOG=info,incus_osd=debug\n";

/// A stand-in for `systemd-netlogd.service` (Debian 12 has no such package): a service that
/// only sleeps, so that the daemon's restart and stop of it are real jobs.
pub const NETLOGD_STAND_IN: &str =
    "[Unit]\nDescription=stand-in for systemd-netlogd (tier-3 test)\n\n[Service]\nExecStart=/bin/sleep infinity\n";

/// The same stand-in, made to fail its start (a oneshot whose command fails: the start job
/// ends with result `failed`).
pub const NETLOGD_FAILING: &str =
    "[Unit]\nDescription=failing stand-in for systemd-netlogd (tier-3 test)\n\n[Service]\nType=oneshot\nExecStart=/bin/false\n";

/// The host side of one test machine that may boot more than once: its machine id, its
/// journal directory and the daemon's state directory live in a host temporary directory
/// bound into every boot, so a second boot sees the first one's journal and state.
pub struct Site {
    dir: tempfile::TempDir,
    pub machine_id: String,
}

impl Default for Site {
    fn default() -> Self {
        Self::new()
    }
}

impl Site {
    pub fn new() -> Site {
        let dir = tempfile::Builder::new()
            .prefix("incus-osd-tier3-site-")
            .tempdir()
            .expect("site dir");
        let machine_id = random_id();
        let p = dir.path();
        std::fs::write(p.join("machine-id"), format!("{machine_id}\n")).unwrap();
        std::fs::write(
            p.join("os-release"),
            format!(
                "NAME=\"IncusOS\"\nID=incus-os\nPRETTY_NAME=\"IncusOS (tier-3 test)\"\nIMAGE_VERSION={IMAGE_VERSION}\n"
            ),
        )
        .unwrap();
        for d in ["journal", "state", "plugins"] {
            std::fs::create_dir(p.join(d)).unwrap();
        }
        // The plugins, copied once into one directory bound as a whole.
        for lib in workspace_plugins() {
            std::fs::copy(&lib, p.join("plugins").join(lib.file_name().unwrap())).unwrap();
        }
        Site { dir, machine_id }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The host directory bound at `/var/log/journal`.
    pub fn journal_dir(&self) -> PathBuf {
        self.path().join("journal")
    }

    /// The host directory bound at `/var/lib/incus-os`.
    pub fn state_dir(&self) -> PathBuf {
        self.path().join("state")
    }

    /// The machine's binds: the daemon binary and the plugins read-only, the OS identity
    /// read-only, the machine id, journal and state read-write.
    pub fn builder(&self) -> MachineBuilder {
        let p = self.path();
        Machine::builder()
            .bind_ro(daemon_binary(), "/usr/local/bin/incus-osd")
            .bind_ro(p.join("plugins"), "/usr/lib/incus-osd/plugins")
            .bind_ro(p.join("os-release"), "/usr/lib/os-release")
            .bind(p.join("machine-id"), "/etc/machine-id")
            .bind(self.journal_dir(), "/var/log/journal")
            .bind(self.state_dir(), "/var/lib/incus-os")
            .boot_timeout(Duration::from_secs(30))
            .command_timeout(Duration::from_secs(30))
    }

    /// Boots the machine (blocking; call it from `spawn_blocking` in async tests).
    pub fn boot(&self) -> Machine {
        let m = self.builder().boot().expect("boot the machine");
        eprintln!("machine {} booted in {:?}", m.name(), m.boot_duration());
        m
    }

    /// The daemon's journal entries as journald stored them, read on the host with
    /// `journalctl --directory` (works while the machine is down).
    pub fn journal(&self, extra: &[&str]) -> Vec<Value> {
        let dir = self.journal_dir().join(&self.machine_id);
        let journalctl = incus_osd_test_machine::find_tool("journalctl").expect("journalctl");
        let out = std::process::Command::new(journalctl)
            .arg(format!("--directory={}", dir.display()))
            .args(["--no-pager", "-o", "json"])
            .args(extra)
            .output()
            .expect("journalctl");
        assert!(
            out.status.success(),
            "journalctl --directory={}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("journal entry"))
            .collect()
    }
}

/// 32 random hex digits (a machine id).
pub fn random_id() -> String {
    let mut buf = [0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("/dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Connects to the machine's systemd from the host.
pub async fn systemd(m: &Machine) -> DbusSystemd {
    DbusSystemd::connect(Some(m.bus_address()))
        .await
        .unwrap_or_else(|e| panic!("D-Bus to {}: {e}", m.name()))
}

/// Installs the shipped unit (plus [`DROP_IN`]) and the netlogd stand-in, reloads systemd
/// and starts the daemon through D-Bus. `Type=notify`: the start job completes only once
/// the daemon sent `READY=1`. Returns the connection and how long the start job took.
pub async fn install_and_start(m: &Machine) -> (DbusSystemd, Duration) {
    m.write_file(format!("/etc/systemd/system/{UNIT}"), unit_file())
        .unwrap();
    m.write_file(format!("/etc/systemd/system/{UNIT}.d/tier3.conf"), DROP_IN)
        .unwrap();
    m.write_file(
        "/etc/systemd/system/systemd-netlogd.service",
        NETLOGD_STAND_IN,
    )
    .unwrap();
    let sd = systemd(m).await;
    sd.reload_daemon().await.expect("daemon-reload");
    let started = Instant::now();
    if let Err(e) = sd.run_job(UnitOp::Start, UNIT).await {
        panic!(
            "starting {UNIT}: {e}\n{}",
            m.run(&["journalctl", "--no-pager", "-u", UNIT])
                .map(|o| o.stdout)
                .unwrap_or_default()
        );
    }
    (sd, started.elapsed())
}

/// The daemon's socket as reachable from the host (through `/proc/<pid>/root`).
pub fn socket(m: &Machine) -> PathBuf {
    m.host_path(SOCKET)
}

/// `systemctl show -p <prop> --value <unit>` inside the machine: systemd's own view.
pub fn show(m: &Machine, unit: &str, prop: &str) -> String {
    m.run_ok(&["systemctl", "show", "-p", prop, "--value", unit])
        .unwrap_or_else(|e| panic!("systemctl show {prop} {unit}: {e:#}"))
        .trim()
        .to_string()
}

/// Polls `f` every 20 ms until it returns `Some`, panicking with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (up to `timeout`) for systemd-nspawn to exit; true if it did.
pub fn wait_powered_off(m: &mut Machine, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while m.is_running() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The `MESSAGE`s of `/1.0/debug/log?<query>`, in journal order; panics unless 200.
pub async fn log_messages(socket: &Path, query: &str) -> Vec<String> {
    let (status, v) = request(socket, "GET", &format!("/1.0/debug/log?{query}"), "").await;
    assert_eq!(status, 200, "GET /1.0/debug/log?{query}: {v}");
    messages(&v["metadata"])
}

/// The `MESSAGE` of each entry of a journal listing.
pub fn messages(entries: &Value) -> Vec<String> {
    entries
        .as_array()
        .unwrap_or_else(|| panic!("not a list of entries: {entries}"))
        .iter()
        .map(|e| e["MESSAGE"].as_str().unwrap_or_default().to_string())
        .collect()
}
