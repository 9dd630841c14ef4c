//! Tier-3 support shared by `tier3_*.rs`: the daemon and the workspace's plugins installed
//! in a real booted systemd (an nspawn [`Machine`]), on host directories that outlive one
//! boot so a reboot can be followed by a second boot of the "same" machine.
//!
//! Every helper here assumes the caller already passed `tier3_or_return!()`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use incus_osd::platform::systemd::UnitAction;
use incus_osd::platform::systemd_dbus::DbusSystemd;
use incus_osd_test_machine::{Machine, MachineBuilder};
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
        for d in [
            "journal",
            "state",
            "plugins",
            "extension-images",
            "extensions",
        ] {
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

    /// The host directory bound at `/var/lib/incus-os-extensions` (application images).
    pub fn images_dir(&self) -> PathBuf {
        self.path().join("extension-images")
    }

    /// The host directory bound at `/var/lib/extensions` (the links systemd-sysext merges).
    pub fn links_dir(&self) -> PathBuf {
        self.path().join("extensions")
    }

    /// Adds the built fixture library `libfixture_<stem>.so` to the plugins every boot of
    /// the site loads, as `libincus_osd_plugin_<name>.so`. Before the machine boots (or
    /// before [`Site::install_in_usr`]).
    pub fn add_fixture(&self, stem: &str, name: &str) {
        let lib = crate::built_plugin(&format!("fixture_{stem}"));
        let to = self
            .path()
            .join("plugins")
            .join(format!("libincus_osd_plugin_{name}.so"));
        std::fs::copy(&lib, to).unwrap_or_else(|e| panic!("copying {}: {e}", lib.display()));
    }

    /// The machine's binds: the daemon binary and the plugins read-only, the OS identity
    /// read-only, the machine id, journal, state, application images and links read-write.
    pub fn builder(&self) -> MachineBuilder {
        let p = self.path();
        self.common_builder()
            .bind_ro(daemon_binary(), "/usr/local/bin/incus-osd")
            .bind_ro(p.join("plugins"), "/usr/lib/incus-osd/plugins")
            .bind_ro(p.join("os-release"), "/usr/lib/os-release")
    }

    /// For a machine that merges system extensions over `/usr`: loop devices, and nothing
    /// bound under `/usr`, since a merge hides it (systemd-sysext mounts an overlay whose
    /// lower layer is the `/usr` directory without the mounts on it; a bound file then
    /// shows as the empty mount point). Call [`Site::install_in_usr`] once booted.
    pub fn sysext_builder(&self) -> MachineBuilder {
        self.common_builder().loop_devices()
    }

    /// Copies the daemon binary, the plugins and the OS identity into the machine's `/usr`
    /// (its writable overlay), where [`Site::builder`] binds them.
    pub fn install_in_usr(&self, m: &Machine) {
        let p = self.path();
        let mut copies = vec![
            (daemon_binary(), "/usr/local/bin/incus-osd".to_string()),
            (p.join("os-release"), "/usr/lib/os-release".to_string()),
        ];
        for e in std::fs::read_dir(p.join("plugins")).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            copies.push((e.path(), format!("/usr/lib/incus-osd/plugins/{name}")));
        }
        for (from, to) in copies {
            let dst = m.host_path(&to);
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            // A symlink (`/etc/os-release` points at it) or a stale file goes first.
            let _ = std::fs::remove_file(&dst);
            std::fs::copy(&from, &dst)
                .unwrap_or_else(|e| panic!("copying {} to {to}: {e}", from.display()));
        }
    }

    fn common_builder(&self) -> MachineBuilder {
        let p = self.path();
        Machine::builder()
            .bind(p.join("machine-id"), "/etc/machine-id")
            .bind(self.journal_dir(), "/var/log/journal")
            .bind(self.state_dir(), "/var/lib/incus-os")
            .bind(self.images_dir(), "/var/lib/incus-os-extensions")
            .bind(self.links_dir(), "/var/lib/extensions")
            .boot_timeout(Duration::from_secs(30))
            // A ceiling for a hung command, not a measure: stopping Open vSwitch and OVN
            // once took more than 30 s on a loaded CI host.
            .command_timeout(Duration::from_secs(90))
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
/// and starts the daemon through D-Bus. `Type=notify`: the start job completes once the
/// daemon sent `READY=1` (its API answers); this then waits until start-up finished
/// (`system_is_ready`). Returns the connection and how long the start job took.
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
    if let Err(e) = sd.run_job(UnitAction::Start, UNIT).await {
        panic!(
            "starting {UNIT}: {e}\n{}",
            m.run(&["journalctl", "--no-pager", "-u", UNIT])
                .map(|o| o.stdout)
                .unwrap_or_default()
        );
    }
    let job = started.elapsed();
    wait_system_ready(&socket(m)).await;
    (sd, job)
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

// --- Services on a real machine (`tier3_services.rs`) -------------------------------------

/// The Debian 12 packages of the services' real tools and daemons, installed in one cached
/// rootfs variant (`tailscale`, `netbird` and `linstor-satellite` have no Debian package:
/// stand-in units take their place). `python3` reads the LINSTOR TOML (`tomllib`), `kmod`
/// gives `modprobe` and `depmod`.
pub const SERVICE_PACKAGES: &[&str] = &[
    "open-iscsi",
    "lvm2",
    "lvm2-lockd",
    "sanlock",
    "multipath-tools",
    "nvme-cli",
    "ovn-host",
    "openvswitch-switch",
    "usbip",
    "ceph-common",
    "python3",
    "kmod",
];

/// Units the packages start at boot (Debian enables them) and that the services own: they
/// are stopped before a test so that enabling a service is what starts them.
pub const SERVICE_UNITS_STARTED_AT_BOOT: &[&str] = &[
    "ovn-host.service",
    "ovn-controller.service",
    "openvswitch-switch.service",
    "ovs-vswitchd.service",
    "ovsdb-server.service",
    "lvmlocks.service",
    "lvmlockd.service",
    "sanlock.service",
    "wdmd.service",
];

/// A stand-in unit for a daemon Debian 12 does not package: a service that only sleeps,
/// so that its start and stop are real systemd jobs. `exec_start_pre` (if any) runs first,
/// as the real daemon's own checks would.
pub fn stand_in_unit(what: &str, exec_start_pre: Option<&str>) -> String {
    let pre = exec_start_pre
        .map(|c| format!("ExecStartPre={c}\n"))
        .unwrap_or_default();
    format!(
        "[Unit]\nDescription=stand-in for {what} (tier-3 test; Debian 12 has no such package)\n\n\
         [Service]\n{pre}ExecStart=/bin/sleep infinity\n"
    )
}

/// Boots a machine of [`SERVICE_PACKAGES`] on `site` (blocking) and brings it to the state
/// of a fresh IncusOS for the services: the units of [`SERVICE_UNITS_STARTED_AT_BOOT`]
/// stopped and their failures reset, and the host identities the packages' maintainer
/// scripts generated in the cached tree (`/etc/iscsi/initiatorname.iscsi`,
/// `/etc/nvme/hostnqn`, `/etc/nvme/hostid`) removed, so the services create their own.
pub fn boot_services_machine(site: &Site) -> Machine {
    let m = site
        .builder()
        .packages(SERVICE_PACKAGES)
        .boot()
        .expect("boot the services machine");
    let mut stop = vec!["systemctl", "stop"];
    stop.extend_from_slice(SERVICE_UNITS_STARTED_AT_BOOT);
    m.run_ok(&stop)
        .expect("stop the units the packages started");
    m.run_ok(&["systemctl", "reset-failed"]).unwrap();
    m.run_ok(&[
        "rm",
        "-f",
        "/etc/iscsi/initiatorname.iscsi",
        "/etc/nvme/hostnqn",
        "/etc/nvme/hostid",
    ])
    .unwrap();
    m
}

/// Changes the host's state document (`state.json` on the site's `/var/lib/incus-os`),
/// creating it if needed. Only while the daemon is not running: it saves its own copy.
pub fn edit_state(site: &Site, f: impl FnOnce(&mut Value)) {
    let path = site.state_dir().join("state.json");
    let mut doc = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).expect("state.json"),
        Err(_) => serde_json::json!({"schema_version": 1}),
    };
    f(&mut doc);
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
}

/// Installs applications as an install leaves them (what `ceph` and `linstor` are gated
/// on: the host counts an application installed when its record, link and image all
/// exist): a stand-in image of each at [`IMAGE_VERSION`]
/// (`/var/lib/incus-os-extensions/<version>/<name>.raw`, built with
/// [`crate::sysext::StandIn`], no unit), its link in `/var/lib/extensions`, its record in
/// the state. Only while the daemon is not running (see [`edit_state`]).
///
/// A machine of [`Site::builder`] has no loop devices to merge them with (the gating
/// needs only the record, link and image); the images are real all the same, so a
/// machine that can merge them ([`Site::sysext_builder`]) does.
pub fn record_applications(site: &Site, names: &[&str]) {
    let build = tempfile::tempdir().expect("build dir");
    for name in names {
        let image = crate::sysext::StandIn::new(name, IMAGE_VERSION, &[]).build(build.path());
        let dir = site.images_dir().join(IMAGE_VERSION);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&image, dir.join(format!("{name}.raw"))).unwrap();
        let link = site.links_dir().join(format!("{name}.raw"));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(
            format!("/var/lib/incus-os-extensions/{IMAGE_VERSION}/{name}.raw"),
            &link,
        )
        .unwrap();
    }
    edit_state(site, |doc| {
        for name in names {
            doc["applications"][*name] = serde_json::json!({
                "version": IMAGE_VERSION,
                "available_versions": [IMAGE_VERSION],
            });
        }
    });
}

/// Waits until `GET /1.0` says start-up finished (every plugin's start hook ran): the
/// daemon answers, and so tells systemd it is ready, before that.
pub async fn wait_system_ready(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, v) = request(socket, "GET", "/1.0", "").await;
        if status == 200 && v["metadata"]["environment"]["system_is_ready"] == true {
            return;
        }
        assert!(Instant::now() < deadline, "system not ready: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
