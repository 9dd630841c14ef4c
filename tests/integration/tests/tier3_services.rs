//! Tier 3, the service plugins against the real machine: the built daemon and every plugin
//! in a booted Debian 12 (an nspawn container) that has the services' real packages
//! (`tier3::SERVICE_PACKAGES`, one cached rootfs variant), driven through the daemon's
//! socket; every unit's state is systemd's own `ActiveState`, read over D-Bus from the host.
//!
//! What runs for real and what is tested at the boundary, and why (the kernel of this test
//! host has no loadable modules, no device-mapper, no NVMe, no iSCSI transport, no USB/IP,
//! no watchdog, and nspawn withholds `CAP_SYS_RESOURCE`/`CAP_IPC_LOCK`):
//!
//! * ovn: for real — ovsdb-server, ovs-vswitchd and the generated ovn-controller unit run.
//! * lvm: lvmlockd runs for real; sanlock cannot (`cannot set the limits for memlock`:
//!   setrlimit is refused in the container) and wdmd cannot (`no watchdog device`). The
//!   files are checked with `lvmconfig` and systemd's own `EnvironmentFile=` parsing.
//! * iscsi: iscsid cannot run (`can not create NETLINK_ISCSI socket [Protocol not
//!   supported]`); the initiator name is checked against `iscsi-iname` and open-iscsi's own
//!   start-up checks (the unit's `ExecStartPre`).
//! * multipath: multipathd is skipped by systemd in a container
//!   (`ConditionVirtualization=!container`) and `multipath -r` fails without device-mapper:
//!   enabling and disabling must fail and roll back; the wwids path is checked with
//!   `multipath -t`.
//! * nvme, usbip: `modprobe` fails (no modules). With the modules declared built in (a
//!   `modules.builtin` written in the machine, what a kernel with them built in ships),
//!   the real `modprobe` succeeds and the rest runs for real: `nvme connect-all` then fails
//!   (no NVMe in the kernel), `usbip attach` too (no vhci driver).
//! * ceph: no units; the files are read back with `ceph-conf` and `ceph-authtool`.
//! * tailscale, netbird, linstor: no Debian package; stand-in units (and, where enabling
//!   needs it, stand-in CLIs) whose tests say so. The LINSTOR TOML is parsed by python3's
//!   `tomllib`, also as the stand-in satellite's `ExecStartPre`.
//!
//! Each test boots its own machine on its own [`Site`].

use std::path::PathBuf;
use std::time::{Duration, Instant};

use incus_osd::platform::systemd::UnitAction;
use incus_osd::platform::systemd_dbus::DbusSystemd;
use incus_osd_integration::request;
use incus_osd_integration::tier3::{
    boot_services_machine, edit_state, install_and_start, record_applications, show, socket,
    stand_in_unit, wait_system_ready, Site, UNIT,
};
use incus_osd_test_machine::{tier3_or_return, Machine};
use serde_json::{json, Value};

/// A machine with the services' packages, the daemon started through D-Bus and start-up
/// finished.
struct Env {
    site: Site,
    m: Machine,
    sd: DbusSystemd,
    sock: PathBuf,
}

/// Boots the services machine on `site`, runs `prepare` in it (stand-ins, modules...),
/// then starts the daemon.
async fn env_on(site: Site, prepare: impl FnOnce(&Machine) + Send + 'static) -> Env {
    let started = Instant::now();
    let (site, m) = tokio::task::spawn_blocking(move || {
        let m = boot_services_machine(&site);
        prepare(&m);
        (site, m)
    })
    .await
    .unwrap();
    eprintln!(
        "machine {} booted in {:?}, ready for the services in {:?}",
        m.name(),
        m.boot_duration(),
        started.elapsed()
    );
    let (sd, took) = install_and_start(&m).await;
    let sock = socket(&m);
    wait_system_ready(&sock).await;
    eprintln!("start job of {UNIT} done in {took:?}, start-up finished");
    Env { site, m, sd, sock }
}

async fn env(prepare: impl FnOnce(&Machine) + Send + 'static) -> Env {
    env_on(Site::new(), prepare).await
}

impl Env {
    async fn active(&self, unit: &str) -> String {
        self.sd.active_state(unit).await.unwrap()
    }

    async fn put(&self, service: &str, config: Value) -> (u16, Value) {
        let body = json!({ "config": config }).to_string();
        request(
            &self.sock,
            "PUT",
            &format!("/1.0/services/{service}"),
            &body,
        )
        .await
    }

    async fn put_ok(&self, service: &str, config: Value) {
        let (status, v) = self.put(service, config).await;
        assert_eq!(status, 200, "PUT {service}: {v}");
    }

    /// `GET /1.0/services/<service>` metadata (`{"config", "state"}`).
    async fn get(&self, service: &str) -> Value {
        let (status, v) = request(&self.sock, "GET", &format!("/1.0/services/{service}"), "").await;
        assert_eq!(status, 200, "GET {service}: {v}");
        v["metadata"].clone()
    }

    async fn config(&self, service: &str) -> Value {
        self.get(service).await["config"].clone()
    }

    /// A file inside the machine, read from the host.
    fn file(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.m.host_path(path)).ok()
    }

    fn mode(&self, path: &str) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(self.m.host_path(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .permissions()
            .mode()
            & 0o7777
    }

    fn exists(&self, path: &str) -> bool {
        self.m.host_path(path).symlink_metadata().is_ok()
    }

    /// A command inside the machine that must succeed; its stdout.
    fn run(&self, argv: &[&str]) -> String {
        self.m.run_ok(argv).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The daemon's journal (messages only), read inside the machine.
    fn daemon_log(&self) -> String {
        self.run(&["journalctl", "--no-pager", "-o", "cat", "-u", UNIT])
    }

    /// Waits until the daemon's journal has a line containing every one of `needles`.
    fn wait_log(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.daemon_log();
            if log.lines().any(|l| needles.iter().all(|n| l.contains(n))) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no line with {needles:?} in the daemon's log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the daemon through D-Bus (its stop hooks run).
    async fn stop_daemon(&self) {
        self.sd.run_job(UnitAction::Stop, UNIT).await.expect("stop");
    }

    /// Starts the daemon again through D-Bus and waits for the end of its start-up.
    async fn start_daemon(&self) {
        self.sd
            .run_job(UnitAction::Start, UNIT)
            .await
            .expect("start");
        wait_system_ready(&self.sock).await;
    }
}

/// Declares kernel modules built in, as a kernel with them built in ships them in
/// `/lib/modules/<release>/modules.builtin`; the real `modprobe` then succeeds for them.
/// The test host's kernel has no modules at all (`modprobe` otherwise says `Module <name>
/// not found in directory /lib/modules/<release>`).
fn declare_built_in(m: &Machine, modules: &[&str]) {
    let release = m.run_ok(&["uname", "-r"]).unwrap().trim().to_string();
    let dir = format!("/lib/modules/{release}");
    let list: String = modules.iter().map(|p| format!("kernel/{p}.ko\n")).collect();
    m.write_file(format!("{dir}/modules.builtin"), list)
        .unwrap();
    m.write_file(format!("{dir}/modules.order"), "").unwrap();
    m.run_ok(&["depmod", &release]).unwrap();
}

const NVME_MODULES: &[&str] = &[
    "drivers/nvme/host/nvme",
    "drivers/nvme/host/nvme-fabrics",
    "drivers/nvme/host/nvme-tcp",
    "drivers/nvme/host/nvme-fc",
];
const VHCI_HCD: &str = "drivers/usb/usbip/vhci-hcd";

/// iscsid cannot run here and its start sometimes waits on the PID file of its dead child
/// until systemd's 90 s default start timeout (longer than the daemon's 60 s plugin call
/// limit): a short start timeout keeps that wait to 2 s.
fn shorten_iscsid_start_timeout(m: &Machine) {
    m.write_file(
        "/etc/systemd/system/iscsid.service.d/tier3.conf",
        "[Service]\nTimeoutStartSec=2s\n",
    )
    .unwrap();
    m.run_ok(&["systemctl", "daemon-reload"]).unwrap();
}

fn is_lower_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts.iter().all(|p| is_lower_hex(p))
}

// --- application gating ------------------------------------------------------------------

/// ceph and linstor are listed only once the host's state document records their
/// applications (`applications.incus-ceph` / `applications.incus-linstor`); the daemon
/// reads it at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ceph_and_linstor_are_listed_only_once_their_applications_are_installed() {
    tier3_or_return!();
    let e = env(|_| {}).await;
    let all = [
        "ceph",
        "iscsi",
        "linstor",
        "lvm",
        "multipath",
        "netbird",
        "nvme",
        "ovn",
        "tailscale",
        "usbip",
    ];
    let urls =
        |names: &[&str]| -> Value { names.iter().map(|n| format!("/1.0/services/{n}")).collect() };
    let without: Vec<&str> = all
        .iter()
        .copied()
        .filter(|n| *n != "ceph" && *n != "linstor")
        .collect();

    let (status, v) = request(&e.sock, "GET", "/1.0/services", "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["metadata"], urls(&without));
    for name in ["ceph", "linstor"] {
        let (status, v) = request(&e.sock, "GET", &format!("/1.0/services/{name}"), "").await;
        assert_eq!(status, 404, "{name}: {v}");
        let (status, v) = e.put(name, json!({"enabled": false})).await;
        assert_eq!(status, 404, "{name}: {v}");
    }

    // The applications installed: recorded in the state, read at the next start.
    e.stop_daemon().await;
    record_applications(&e.site, &["incus-ceph", "incus-linstor"]);
    e.start_daemon().await;
    let (status, v) = request(&e.sock, "GET", "/1.0/services", "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["metadata"], urls(&all));
    assert_eq!(
        e.get("ceph").await,
        json!({"config": {"enabled": false, "clusters": {}}, "state": {}})
    );
    assert_eq!(
        e.get("linstor").await,
        json!({"config": {"enabled": false, "listen_address": ""}, "state": {}})
    );
    // Usable: a config is taken and kept.
    e.put_ok(
        "linstor",
        json!({"enabled": false, "listen_address": "192.0.2.10:3366"}),
    )
    .await;
    assert_eq!(
        e.config("linstor").await["listen_address"],
        "192.0.2.10:3366"
    );
}

// --- ceph (files only) -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ceph_files_are_read_back_by_ceph_conf_and_ceph_authtool() {
    tier3_or_return!();
    let site = Site::new();
    record_applications(&site, &["incus-ceph"]);
    let e = env_on(site, |_| {}).await;
    assert!(!e.exists("/etc/ceph/ceph.conf"));

    // Real keys, made by the real tool.
    let admin_key = e
        .run(&["ceph-authtool", "--gen-print-key"])
        .trim()
        .to_string();
    let backup_key = e
        .run(&["ceph-authtool", "--gen-print-key"])
        .trim()
        .to_string();
    let fsid = "1a2b3c4d-0000-4000-8000-00000000c3f1";
    let config = json!({
        "enabled": true,
        "clusters": {
            "ceph": {
                "fsid": fsid,
                "monitors": ["192.0.2.1:6789", "[2001:db8::2]:3300", "v2:192.0.2.3:3300"],
                "keyrings": {"admin": {"key": admin_key}},
                "client_config": {"rbd_cache": "false", "ms_mon_client_mode": "secure"}
            },
            "backup": {
                "fsid": "1a2b3c4d-0000-4000-8000-00000000b4c2",
                "monitors": ["mon.backup.example:6789"],
                "keyrings": {"incus": {"key": backup_key}},
                "client_config": null
            }
        }
    });
    e.put_ok("ceph", config.clone()).await;
    // The GET asks `ceph status` (bounded to 5 s: no monitor answers here).
    let got = e.get("ceph").await;
    assert_eq!(got["config"], config);
    assert_eq!(got["state"], json!({}));

    let lookup = |cluster: &str, name: &str, key: &str| {
        e.run(&[
            "ceph-conf",
            "-c",
            &format!("/etc/ceph/{cluster}.conf"),
            "--name",
            name,
            "--lookup",
            key,
        ])
        .trim()
        .to_string()
    };
    assert_eq!(
        lookup("ceph", "client.admin", "mon_host"),
        "192.0.2.1:6789,[2001:db8::2]:3300,v2:192.0.2.3:3300"
    );
    assert_eq!(lookup("ceph", "client.admin", "fsid"), fsid);
    // The [client] options apply to a client entity.
    assert_eq!(lookup("ceph", "client.admin", "rbd_cache"), "false");
    assert_eq!(
        lookup("ceph", "client.admin", "ms_mon_client_mode"),
        "secure"
    );
    assert_eq!(
        lookup("backup", "client.incus", "mon_host"),
        "mon.backup.example:6789"
    );
    assert_eq!(e.mode("/etc/ceph"), 0o755);
    assert_eq!(e.mode("/etc/ceph/ceph.conf"), 0o644);

    // The keyrings: where ceph looks first for the cluster and entity, and what
    // ceph-authtool lists.
    let keyring_path = e
        .run(&[
            "ceph-conf",
            "--cluster",
            "backup",
            "-c",
            "/etc/ceph/backup.conf",
            "--name",
            "client.incus",
            "--show-config-value",
            "keyring",
        ])
        .trim()
        .to_string();
    assert_eq!(
        keyring_path.split(',').next(),
        Some("/etc/ceph/backup.client.incus.keyring"),
        "{keyring_path}"
    );
    for (cluster, entity, key) in [
        ("ceph", "client.admin", &admin_key),
        ("backup", "client.incus", &backup_key),
    ] {
        let path = format!("/etc/ceph/{cluster}.{entity}.keyring");
        assert_eq!(e.mode(&path), 0o600, "{path}");
        let listed = e.run(&["ceph-authtool", "-l", &path]);
        assert_eq!(listed, format!("[{entity}]\n\tkey = {key}\n"), "{path}");
        let printed = e.run(&["ceph-authtool", &path, "-n", entity, "-p"]);
        assert_eq!(printed.trim(), key.as_str(), "{path}");
    }

    // Disabled: /etc/ceph is gone, the config kept.
    let mut off = config.clone();
    off["enabled"] = json!(false);
    e.put_ok("ceph", off.clone()).await;
    assert!(!e.exists("/etc/ceph"));
    assert_eq!(e.config("ceph").await, off);
}

// --- linstor (stand-in satellite) --------------------------------------------------------

const TOML_CHECK: &str = "/usr/bin/python3 -c \"import tomllib; tomllib.load(open('/etc/linstor/linstor_satellite.toml', 'rb'))\"";

/// The satellite's TOML as python3's `tomllib` reads it, as JSON.
fn satellite_toml(e: &Env) -> Value {
    let out = e.run(&[
        "python3",
        "-c",
        "import json, sys, tomllib; print(json.dumps(tomllib.load(open(sys.argv[1], 'rb'))))",
        "/etc/linstor/linstor_satellite.toml",
    ]);
    serde_json::from_str(&out).unwrap()
}

/// Debian 12 has no LINSTOR: `linstor-satellite.service` is a stand-in that only sleeps,
/// after checking (`ExecStartPre`) that its TOML parses. The machine has `openssl` but no
/// `keytool` (no Java), so switching to TLS fails at the keystore and must roll back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linstor_stand_in_satellite_gets_a_toml_tomllib_reads_and_a_failed_tls_switch_rolls_back() {
    tier3_or_return!();
    const SATELLITE: &str = "linstor-satellite.service";
    let site = Site::new();
    record_applications(&site, &["incus-linstor"]);
    let e = env_on(site, |m| {
        m.write_file(
            format!("/etc/systemd/system/{SATELLITE}"),
            stand_in_unit("linstor-satellite", Some(TOML_CHECK)),
        )
        .unwrap();
        m.run_ok(&["systemctl", "daemon-reload"]).unwrap();
    })
    .await;
    assert_eq!(e.active(SATELLITE).await, "inactive");

    // Plain, default address.
    e.put_ok("linstor", json!({"enabled": true})).await;
    assert_eq!(e.active(SATELLITE).await, "active");
    assert_eq!(
        satellite_toml(&e),
        json!({"netcom": {"type": "plain", "bind_address": "[::]", "port": 3366}})
    );
    assert_eq!(e.mode("/etc/linstor"), 0o700);
    assert_eq!(e.mode("/etc/linstor/linstor_satellite.toml"), 0o600);
    assert_eq!(
        e.file("/etc/drbd.conf").as_deref(),
        Some("include \"drbd.d/*.res\";\n")
    );
    assert_eq!(e.mode("/etc/drbd.d"), 0o755);

    // A listen address: restarted with the new file.
    let pid = show(&e.m, SATELLITE, "MainPID");
    let plain = json!({"enabled": true, "listen_address": "[2001:db8::10]:3370"});
    e.put_ok("linstor", plain.clone()).await;
    assert_eq!(e.active(SATELLITE).await, "active");
    assert_ne!(show(&e.m, SATELLITE, "MainPID"), pid);
    let plain_toml =
        json!({"netcom": {"type": "plain", "bind_address": "2001:db8::10", "port": 3370}});
    assert_eq!(satellite_toml(&e), plain_toml);
    let before: Vec<String> = e
        .run(&["ls", "-A", "/etc/linstor"])
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(before, ["linstor_satellite.toml"]);

    // TLS with a real certificate and key: openssl pkcs12 runs, keytool is missing.
    e.run(&[
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "/root/satellite.key",
        "-out",
        "/root/satellite.crt",
        "-subj",
        "/CN=t3-satellite",
        "-days",
        "2",
    ]);
    let cert = e.file("/root/satellite.crt").unwrap();
    let key = e.file("/root/satellite.key").unwrap();
    let tls = json!({
        "enabled": true,
        "listen_address": "[2001:db8::10]:3370",
        "tls_server_certificate": cert,
        "tls_server_key": key,
        "tls_trusted_certificates": [cert]
    });
    let pid = show(&e.m, SATELLITE, "MainPID");
    let (status, v) = e.put("linstor", tls).await;
    assert_eq!(status, 500, "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.starts_with("Failed to run: keytool -importkeystore"),
        "{error}"
    );
    // Nothing half-applied: the previous files (no TLS material, no keystore), the
    // satellite running again on them, the previous config.
    let after: Vec<String> = e
        .run(&["ls", "-A", "/etc/linstor"])
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(after, before);
    assert_eq!(satellite_toml(&e), plain_toml);
    assert_eq!(e.active(SATELLITE).await, "active");
    assert_ne!(
        show(&e.m, SATELLITE, "MainPID"),
        pid,
        "restarted on the old files"
    );
    assert_eq!(e.config("linstor").await, plain);

    // Disabled: stopped; the files stay (as upstream).
    e.put_ok("linstor", json!({"enabled": false})).await;
    assert_eq!(e.active(SATELLITE).await, "inactive");
    assert_eq!(satellite_toml(&e), plain_toml);
}

// --- ovn (real) --------------------------------------------------------------------------

fn external_id(e: &Env, key: &str) -> String {
    let out = e.run(&[
        "ovs-vsctl",
        "--if-exists",
        "get",
        "open_vswitch",
        ".",
        &format!("external_ids:{key}"),
    ]);
    out.trim().trim_matches('"').to_string()
}

/// The command line of a unit's main process.
fn cmdline(e: &Env, unit: &str) -> Vec<String> {
    let pid = show(&e.m, unit, "MainPID");
    let raw = std::fs::read(e.m.host_path(format!("/proc/{pid}/cmdline"))).unwrap();
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ovn_runs_ovsdb_ovs_vswitchd_and_the_generated_ovn_controller_for_real() {
    tier3_or_return!();
    const CONTROLLER: &str = "ovn-controller.service";
    const VSWITCHD: &str = "ovs-vswitchd.service";
    const OVSDB: &str = "ovsdb-server.service";
    let e = env(|_| {}).await;
    for unit in [CONTROLLER, VSWITCHD, OVSDB] {
        assert_eq!(e.active(unit).await, "inactive", "{unit}");
    }

    let config = json!({
        "enabled": true,
        "database": "tcp:192.0.2.1:6642,tcp:192.0.2.2:6642",
        "tunnel_address": "192.0.2.10",
        "tunnel_protocol": ""
    });
    e.put_ok("ovn", config.clone()).await;
    for unit in [CONTROLLER, VSWITCHD, OVSDB] {
        assert_eq!(e.active(unit).await, "active", "{unit}");
    }
    assert_eq!(e.config("ovn").await, config);
    // What ovsdb-server holds.
    assert_eq!(
        external_id(&e, "ovn-remote"),
        "tcp:192.0.2.1:6642,tcp:192.0.2.2:6642"
    );
    assert_eq!(external_id(&e, "ovn-encap-type"), "geneve");
    assert_eq!(external_id(&e, "ovn-encap-ip"), "192.0.2.10");
    assert_eq!(external_id(&e, "ovn-is-interconn"), "false");
    // No /etc/hostname in the machine: the machine id stands for it.
    assert_eq!(external_id(&e, "hostname"), e.site.machine_id);

    // The generated unit is the one systemd runs, systemd-analyze finds nothing to say,
    // and ovn-controller runs its command line and talks to the local OVS database.
    let unit_path = "/run/systemd/system/ovn-controller.service";
    assert_eq!(show(&e.m, CONTROLLER, "FragmentPath"), unit_path);
    let verify = e.m.run(&["systemd-analyze", "verify", unit_path]).unwrap();
    assert!(verify.success(), "{verify:?}");
    assert_eq!(verify.stderr.trim(), "", "{verify:?}");
    assert_eq!(
        cmdline(&e, CONTROLLER),
        [
            "/usr/bin/ovn-controller",
            "--pidfile",
            "unix:/run/openvswitch/db.sock"
        ]
    );
    // (Through its control socket: the unit gives it no pidfile for `-t ovn-controller`.)
    let ctl = format!(
        "/run/ovn/ovn-controller.{}.ctl",
        show(&e.m, CONTROLLER, "MainPID")
    );
    let status = e.run(&["ovn-appctl", "-t", &ctl, "connection-status"]);
    assert_eq!(
        status.trim(),
        "not connected",
        "no southbound database here"
    );
    // /etc/default/openvswitch-switch was read by the OVS units started after it.
    for unit in [VSWITCHD, OVSDB] {
        let args = cmdline(&e, unit);
        assert!(
            args.iter().any(|a| a == "-vsyslog:info") && args.iter().any(|a| a == "-vfile:off"),
            "{unit}: {args:?}"
        );
    }

    // Another tunnel address: the database updated, ovn-controller restarted.
    let pid = show(&e.m, CONTROLLER, "MainPID");
    let mut changed = config.clone();
    changed["tunnel_address"] = json!("192.0.2.11");
    changed["tunnel_protocol"] = json!("vxlan");
    changed["ic_chassis"] = json!(true);
    e.put_ok("ovn", changed.clone()).await;
    assert_eq!(external_id(&e, "ovn-encap-ip"), "192.0.2.11");
    assert_eq!(external_id(&e, "ovn-encap-type"), "vxlan");
    assert_eq!(external_id(&e, "ovn-is-interconn"), "true");
    assert_ne!(show(&e.m, CONTROLLER, "MainPID"), pid);
    assert_eq!(e.config("ovn").await, changed);

    // Reset restarts ovn-controller and ovs-vswitchd.
    let (controller, vswitchd) = (
        show(&e.m, CONTROLLER, "MainPID"),
        show(&e.m, VSWITCHD, "MainPID"),
    );
    let (status, v) = request(&e.sock, "POST", "/1.0/services/ovn/:reset", "").await;
    assert_eq!(status, 200, "{v}");
    assert_ne!(show(&e.m, CONTROLLER, "MainPID"), controller);
    assert_ne!(show(&e.m, VSWITCHD, "MainPID"), vswitchd);
    assert_eq!(e.active(CONTROLLER).await, "active");
    assert_eq!(e.active(VSWITCHD).await, "active");

    // Disabled: all three stopped.
    let mut off = changed.clone();
    off["enabled"] = json!(false);
    e.put_ok("ovn", off).await;
    for unit in [CONTROLLER, VSWITCHD, OVSDB] {
        assert_eq!(e.active(unit).await, "inactive", "{unit}");
    }
}

/// The generated unit stops ovn-controller with `ovn-appctl -t ovn-controller exit
/// --restart` (keep the datapath flows over a restart). `-t ovn-controller` finds the
/// daemon through `/run/ovn/ovn-controller.pid`, which ovn-controller writes only with
/// `--pidfile` (upstream's unit lacks it; ours has it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ovn_generated_unit_stops_ovn_controller_through_ovn_appctl() {
    tier3_or_return!();
    const CONTROLLER: &str = "ovn-controller.service";
    let e = env(|_| {}).await;
    let config = json!({"enabled": true, "database": "tcp:192.0.2.1:6642",
                        "tunnel_address": "192.0.2.10"});
    e.put_ok("ovn", config).await;
    assert_eq!(e.active(CONTROLLER).await, "active");
    e.put_ok("ovn", json!({"enabled": false})).await;
    assert_eq!(e.active(CONTROLLER).await, "inactive");
    // The last ExecStop run, as systemd recorded it.
    let stop = show(&e.m, CONTROLLER, "ExecStop");
    assert!(stop.contains("status=0"), "{stop}");
    let journal = e.run(&["journalctl", "--no-pager", "-o", "cat", "-u", CONTROLLER]);
    assert!(!journal.contains("cannot read pidfile"), "{journal}");
    assert!(journal.contains("Exiting ovn-controller"), "{journal}");
    // (systemd still sends SIGTERM to whatever remains once ExecStop returned; a
    // controller busy reconnecting may not have exited by then.)
}

// --- lvm ---------------------------------------------------------------------------------

const LVM_UNITS: [&str; 3] = ["lvmlockd.service", "sanlock.service", "wdmd.service"];

/// Enabled in the state before the daemon starts: the boot start writes the files and
/// keeps them although sanlock and wdmd cannot run here. lvmlockd runs for real; the files
/// are what `lvmconfig` and systemd (sanlock's `EnvironmentFile=`) read; disabling stops
/// lvmlockd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lvm_files_are_accepted_by_lvmconfig_and_systemd_and_lvmlockd_runs_for_real() {
    tier3_or_return!();
    let site = Site::new();
    edit_state(&site, |doc| {
        doc["plugins"]["lvm"] = json!({"config": {"enabled": true, "system_id": 42}});
    });
    let e = env_on(site, |_| {}).await;
    assert_eq!(
        e.get("lvm").await["config"],
        json!({"enabled": true, "system_id": 42})
    );
    assert_eq!(e.active("lvmlockd.service").await, "active");

    // lvmlocal.conf: valid, and what LVM's merged configuration now holds.
    assert_eq!(e.mode("/etc/lvm/lvmlocal.conf"), 0o600);
    let valid = e.run(&["lvmconfig", "--validate"]);
    assert!(valid.contains("LVM configuration valid"), "{valid}");
    let current = e.run(&[
        "lvmconfig",
        "--type",
        "current",
        "local/host_id",
        "global/use_lvmlockd",
        "devices/filter",
    ]);
    assert_eq!(
        current,
        "host_id=42\nuse_lvmlockd=1\nfilter=\"r|/dev/zd*|/dev/rbd*|/dev/nbd*|\"\n"
    );
    // /etc/default/sanlock as systemd reads an EnvironmentFile= (sanlock.service's).
    let opts = e.run(&[
        "systemd-run",
        "--wait",
        "--pipe",
        "--quiet",
        "-p",
        "EnvironmentFile=/etc/default/sanlock",
        "/bin/sh",
        "-c",
        "printf '%s' \"$sanlock_opts\"",
    ]);
    assert_eq!(opts, "-L -1");
    // Why sanlock and wdmd do not run: wdmd says so in the journal; sanlock (with the
    // options written, run by hand in the foreground) cannot raise its memlock limit, as
    // nspawn withholds CAP_SYS_RESOURCE and CAP_IPC_LOCK.
    let sanlock =
        e.m.run(&["timeout", "5", "sanlock", "daemon", "-D", "-L", "-1"])
            .unwrap();
    assert!(
        sanlock.stderr.contains("cannot set the limits for memlock"),
        "{sanlock:?}"
    );
    let wdmd = e.run(&[
        "journalctl",
        "--no-pager",
        "-o",
        "cat",
        "-u",
        "wdmd.service",
    ]);
    assert!(wdmd.contains("no watchdog device"), "{wdmd}");
    // Their Type=forking start jobs end `done`; the child then dies (`failed`), or exits
    // before systemd took it for the main process (`inactive`).
    for unit in ["sanlock.service", "wdmd.service"] {
        let state = e.active(unit).await;
        assert!(
            matches!(state.as_str(), "failed" | "inactive"),
            "{unit}: {state}"
        );
    }

    // Disabled: the lock manager and the three units stopped.
    e.put_ok("lvm", json!({"enabled": false, "system_id": 42}))
        .await;
    assert_eq!(e.active("lvmlockd.service").await, "inactive");
    for unit in LVM_UNITS {
        assert_ne!(e.active(unit).await, "active", "{unit}");
    }
    assert_eq!(
        e.config("lvm").await,
        json!({"enabled": false, "system_id": 42})
    );
}

/// sanlock and wdmd cannot run here, yet both are `Type=forking`: their start jobs end
/// `done` when the parent exits and the child dies right after. The PUT should then fail
/// and put everything back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lvm_enable_fails_and_rolls_back_when_sanlock_and_wdmd_cannot_run() {
    tier3_or_return!();
    let e = env(|_| {}).await;
    let lvmlocal = e.file("/etc/lvm/lvmlocal.conf");
    let sanlock = e.file("/etc/default/sanlock");
    let (status, v) = e.put("lvm", json!({"enabled": true, "system_id": 7})).await;
    let states = [
        e.active(LVM_UNITS[0]).await,
        e.active(LVM_UNITS[1]).await,
        e.active(LVM_UNITS[2]).await,
    ];
    assert_eq!(status, 500, "{v} {states:?}");
    assert_eq!(e.file("/etc/lvm/lvmlocal.conf"), lvmlocal);
    assert_eq!(e.file("/etc/default/sanlock"), sanlock);
    for unit in LVM_UNITS {
        assert_ne!(e.active(unit).await, "active", "{unit}");
    }
    assert_eq!(
        e.config("lvm").await,
        json!({"enabled": false, "system_id": 0})
    );
}

/// A wrapper in front of the real `tool` (first in the daemon's `PATH`): it runs
/// `/sbin/<tool>` with the daemon's arguments and passes its output and exit status on,
/// recording each call (`<args> -> <status>`) in `/run/stand-in/<tool>.calls` and the
/// last call's standard output in `/run/stand-in/<tool>.out`.
fn install_recording_wrapper(m: &Machine, tool: &str) {
    let path = format!("/usr/local/sbin/{tool}");
    let script = format!(
        "#!/bin/sh\n\
         # Records the daemon's calls of the real {tool} (tier-3 test).\n\
         mkdir -p /run/stand-in\n\
         /sbin/{tool} \"$@\" >/run/stand-in/{tool}.out 2>/run/stand-in/{tool}.err\n\
         status=$?\n\
         printf '%s -> %s\\n' \"$*\" \"$status\" >>/run/stand-in/{tool}.calls\n\
         cat /run/stand-in/{tool}.out\n\
         cat /run/stand-in/{tool}.err >&2\n\
         exit $status\n"
    );
    m.write_file(&path, script).unwrap();
    m.run_ok(&["chmod", "755", &path]).unwrap();
}

/// The state is read with `pvs`/`vgs --reportformat json_std`, which Debian 12's lvm2
/// (2.03.16) refuses; the plugin then reads plain `json` (numbers as strings). With no PV
/// or VG in the machine the state is `{}`, which is also what the plugin shows when the
/// tools fail or print no JSON; so the calls are recorded on their way to the real tools:
/// the GET ran each of them, the last run exited 0, and what it printed is a JSON report
/// with an empty list, i.e. the `{}` comes from the real tools' (empty) answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lvm_state_is_read_from_the_real_pvs_and_vgs() {
    tier3_or_return!();
    let e = env(|m| {
        install_recording_wrapper(m, "pvs");
        install_recording_wrapper(m, "vgs");
    })
    .await;
    e.run(&[
        "rm",
        "-f",
        "/run/stand-in/pvs.calls",
        "/run/stand-in/vgs.calls",
    ]);
    let state = e.get("lvm").await["state"].clone();
    for (tool, key) in [("pvs", "pv"), ("vgs", "vg")] {
        let calls = calls(&e, tool);
        let last = calls
            .last()
            .unwrap_or_else(|| panic!("the GET did not run {tool}"));
        assert!(
            matches!(
                last.as_str(),
                "--reportformat json_std -> 0" | "--reportformat json -> 0"
            ),
            "{tool}: {calls:?}, stderr {:?}",
            e.file(&format!("/run/stand-in/{tool}.err"))
        );
        let out = e.file(&format!("/run/stand-in/{tool}.out")).unwrap();
        let doc: Value =
            serde_json::from_str(&out).unwrap_or_else(|err| panic!("{tool}: {err}: {out}"));
        assert_eq!(doc["report"][0][key], json!([]), "{tool}: {doc}");
    }
    // No PV or VG in the machine: the lists are omitted, and nothing was logged as failed.
    assert_eq!(state, json!({}), "{state}");
}

// --- iscsi -------------------------------------------------------------------------------

const ISCSID: &str = "iscsid.service";
const INITIATOR_NAME: &str = "/etc/iscsi/initiatorname.iscsi";

/// Enabled in the state before the daemon starts: the boot start generates the initiator
/// name with the real `iscsi-iname` and keeps it although iscsid cannot run here
/// (asserted: no iSCSI transport in the kernel). open-iscsi's own start-up checks (the
/// unit's `ExecStartPre`) accept the file, and GET shows the name it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iscsi_initiator_name_from_iscsi_iname_is_accepted_by_open_iscsi_and_shown_by_get() {
    tier3_or_return!();
    let site = Site::new();
    edit_state(&site, |doc| {
        doc["plugins"]["iscsi"] = json!({"config": {"enabled": true, "targets": []}});
    });
    let e = env_on(site, shorten_iscsid_start_timeout).await;

    let content = e
        .file(INITIATOR_NAME)
        .expect("initiator name written at start");
    assert_eq!(e.mode(INITIATOR_NAME), 0o600);
    let name = content
        .strip_prefix("InitiatorName=")
        .and_then(|n| n.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("{content:?}"));
    // iscsi-iname's format: the prefix given, ':' and up to 12 hex digits (not
    // zero-padded), as another run of it shows.
    let prefix = "iqn.2004-10.org.linuxcontainers:01:";
    for iname in [
        name,
        e.run(&["iscsi-iname", "-p", &prefix[..prefix.len() - 1]])
            .trim(),
    ] {
        let suffix = iname
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{iname}"));
        assert!(is_lower_hex(suffix) && suffix.len() <= 12, "{iname}");
    }
    assert_eq!(e.get("iscsi").await["state"]["initiator_name"], json!(name));

    // iscsid's start ran open-iscsi's checks on the files first, and they passed.
    let pre = show(&e.m, ISCSID, "ExecStartPre");
    assert!(
        pre.contains("/lib/open-iscsi/startup-checks.sh")
            && pre.contains("code=exited ; status=0 "),
        "{pre}"
    );
    e.run(&["/lib/open-iscsi/startup-checks.sh"]);
    assert_eq!(e.file(INITIATOR_NAME).as_deref(), Some(content.as_str()));
    // Why iscsid does not run here.
    assert_ne!(e.active(ISCSID).await, "active");
    // (Run by hand with the unit and its socket stopped: the IPC socket is free then.)
    let why =
        e.m.run(&[
            "/bin/sh",
            "-c",
            "systemctl stop iscsid.service iscsid.socket; timeout 5 iscsid -f 2>&1; \
             systemctl start iscsid.socket",
        ])
        .unwrap();
    assert!(
        why.stdout
            .contains("can not create NETLINK_ISCSI socket [Protocol not supported]"),
        "{why:?}"
    );

    // Disabled: iscsid stopped, the name kept, the state no longer shows it.
    e.put_ok("iscsi", json!({"enabled": false, "targets": []}))
        .await;
    assert_ne!(e.active(ISCSID).await, "active");
    assert_eq!(e.file(INITIATOR_NAME).as_deref(), Some(content.as_str()));
    assert_eq!(e.get("iscsi").await["state"]["initiator_name"], "");
}

/// iscsid cannot run here. Its start either waits on a dead PID file (2 s here, see
/// [`shorten_iscsid_start_timeout`]) and fails, or ends `done` just before iscsid's child
/// exits: in both cases the PUT should fail and put everything back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iscsi_enable_fails_and_rolls_back_when_iscsid_cannot_run() {
    tier3_or_return!();
    let e = env(shorten_iscsid_start_timeout).await;
    let (status, v) = e.put("iscsi", json!({"enabled": true})).await;
    assert_eq!(status, 500, "{v}");
    assert!(v["error"].as_str().unwrap().contains(ISCSID), "{v}");
    assert!(!e.exists(INITIATOR_NAME));
    assert_ne!(e.active(ISCSID).await, "active");
    assert_eq!(
        e.config("iscsi").await,
        json!({"enabled": false, "targets": []})
    );
}

// --- multipath ---------------------------------------------------------------------------

const MULTIPATHD: &str = "multipathd.service";

/// systemd skips multipathd in a container (`ConditionVirtualization=!container`: the
/// start job ends `done`, the unit stays inactive) and `multipath -r` fails without
/// device-mapper: the PUT fails with multipath's own words and nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipath_enable_fails_without_device_mapper_and_rolls_back() {
    tier3_or_return!();
    let e = env(|_| {}).await;
    let (status, v) = e
        .put("multipath", json!({"enabled": true, "wwns": []}))
        .await;
    assert_eq!(status, 500, "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.starts_with("Failed to run: multipath -r: exit status 1")
            && error.contains("/dev/mapper/control: open failed"),
        "{error}"
    );
    assert!(!e.exists("/etc/multipath"));
    assert_eq!(e.active(MULTIPATHD).await, "inactive");
    assert_eq!(show(&e.m, MULTIPATHD, "ConditionResult"), "no");
    assert_eq!(
        e.get("multipath").await,
        json!({"config": {"enabled": false, "wwns": []},
               "state": {"controllers": [], "devices": null}})
    );
}

/// Enabled in the state before the daemon starts: the boot start keeps the WWID list
/// (where `multipath -t` says multipath reads it) although `multipath -r` fails; disabling
/// then fails at `multipath -r` too and puts the list back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipath_wwids_file_is_the_one_multipath_reads_and_a_failed_disable_rolls_back() {
    tier3_or_return!();
    let site = Site::new();
    edit_state(&site, |doc| {
        doc["plugins"]["multipath"] = json!({"config": {"enabled": true, "wwns": []}});
    });
    let e = env_on(site, |_| {}).await;
    e.wait_log(&["start failed", "plugin=multipath", "multipath -r"]);
    let wwids = "/etc/multipath/wwids";
    assert_eq!(e.file(wwids).as_deref(), Some(""));
    assert_eq!(e.mode("/etc/multipath"), 0o700);
    assert_eq!(e.mode(wwids), 0o600);
    let config = e.run(&["multipath", "-t"]);
    assert!(
        config
            .lines()
            .any(|l| l.trim() == "wwids_file \"/etc/multipath/wwids\""),
        "{config}"
    );

    let (status, v) = e
        .put("multipath", json!({"enabled": false, "wwns": []}))
        .await;
    assert_eq!(status, 500, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("Failed to run: multipath -r"),
        "{v}"
    );
    assert_eq!(e.file(wwids).as_deref(), Some(""));
    assert_eq!(e.mode(wwids), 0o600);
    assert_eq!(e.active(MULTIPATHD).await, "inactive");
    assert_eq!(
        e.config("multipath").await,
        json!({"enabled": true, "wwns": []})
    );
}

// --- nvme --------------------------------------------------------------------------------

fn ls(e: &Env, dir: &str) -> Vec<String> {
    e.run(&["ls", "-A", dir])
        .lines()
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvme_enable_fails_without_kernel_modules_and_changes_nothing() {
    tier3_or_return!();
    let e = env(|_| {}).await;
    let before = ls(&e, "/etc/nvme");
    let discovery = e.file("/etc/nvme/discovery.conf");
    let (status, v) = e.put("nvme", json!({"enabled": true, "targets": []})).await;
    assert_eq!(status, 500, "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.starts_with("Failed to run: modprobe nvme: exit status 1")
            && error.contains("Module nvme not found in directory /lib/modules/"),
        "{error}"
    );
    assert_eq!(ls(&e, "/etc/nvme"), before);
    assert_eq!(e.file("/etc/nvme/discovery.conf"), discovery);
    assert_eq!(
        e.get("nvme").await,
        json!({"config": {"enabled": false, "targets": []},
               "state": {"host_id": "", "host_nqn": "", "subsystems": []}})
    );
}

/// With the NVMe modules declared built in, enabling runs for real up to `nvme
/// connect-all`, which fails (no NVMe in the kernel): everything is put back. Then,
/// enabled in the state before the daemon starts, the boot start keeps the host NQN from
/// `nvme gen-hostnqn`, which is what `nvme show-hostnqn` reads and GET shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvme_with_modules_built_in_fails_at_connect_all_and_its_host_nqn_is_what_nvme_cli_reads() {
    tier3_or_return!();
    let e = env(|m| declare_built_in(m, NVME_MODULES)).await;
    let discovery = e.file("/etc/nvme/discovery.conf");
    assert!(discovery.is_some(), "nvme-cli ships one");
    let (status, v) = e.put("nvme", json!({"enabled": true, "targets": []})).await;
    assert_eq!(status, 500, "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.starts_with("Failed to run: nvme connect-all: exit status 1"),
        "{error}"
    );
    assert!(!e.exists("/etc/nvme/hostnqn"));
    assert!(!e.exists("/etc/nvme/hostid"));
    assert_eq!(e.file("/etc/nvme/discovery.conf"), discovery);
    assert_eq!(e.config("nvme").await["enabled"], false);

    // Boot start with nvme enabled keeps what it wrote.
    e.stop_daemon().await;
    edit_state(&e.site, |doc| {
        doc["plugins"]["nvme"] = json!({"config": {"enabled": true, "targets": []}});
    });
    e.start_daemon().await;
    e.wait_log(&["start failed", "plugin=nvme", "nvme connect-all"]);
    let state = e.get("nvme").await["state"].clone();
    let nqn = state["host_nqn"].as_str().unwrap();
    let uuid = nqn
        .strip_prefix("nqn.2014-08.org.nvmexpress:uuid:")
        .unwrap_or_else(|| panic!("{nqn}"));
    assert!(is_uuid(uuid), "{nqn}");
    assert_eq!(e.run(&["nvme", "show-hostnqn"]).trim(), nqn);
    assert_eq!(e.file("/etc/nvme/hostnqn").unwrap().trim(), nqn);
    let host_id = state["host_id"].as_str().unwrap();
    assert!(is_uuid(host_id), "{state}");
    assert_eq!(
        e.file("/etc/nvme/hostid").as_deref(),
        Some(format!("{host_id}\n").as_str())
    );
    for f in ["hostnqn", "hostid", "discovery.conf"] {
        assert_eq!(e.mode(&format!("/etc/nvme/{f}")), 0o600, "{f}");
    }
    assert_eq!(e.file("/etc/nvme/discovery.conf").as_deref(), Some(""));
}

// --- usbip -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usbip_enable_fails_without_the_vhci_hcd_module_and_stores_nothing() {
    tier3_or_return!();
    let e = env(|_| {}).await;
    let config = json!({"enabled": true, "targets": [{"address": "192.0.2.20", "bus_id": "1-1"}]});
    let (status, v) = e.put("usbip", config).await;
    assert_eq!(status, 500, "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.starts_with("Failed to run: modprobe vhci-hcd: exit status 1")
            && error.contains("Module vhci-hcd not found"),
        "{error}"
    );
    assert_eq!(
        e.config("usbip").await,
        json!({"enabled": false, "targets": []})
    );
}

/// With vhci-hcd declared built in, the real `modprobe` succeeds; `usbip attach` then
/// fails (no vhci driver in the kernel), which is only warned about, as upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usbip_with_vhci_hcd_built_in_stores_the_config_and_warns_about_devices_it_cannot_attach() {
    tier3_or_return!();
    let e = env(|m| declare_built_in(m, &[VHCI_HCD])).await;
    let config = json!({"enabled": true, "targets": [{"address": "192.0.2.20", "bus_id": "1-1"}]});
    e.put_ok("usbip", config.clone()).await;
    assert_eq!(e.config("usbip").await, config);
    let log = e.wait_log(&["unable to attach USB/IP device 1-1 from 192.0.2.20"]);
    assert!(log.contains("usbip attach -r 192.0.2.20 -b 1-1"), "{log}");
}

// --- tailscale and netbird (stand-ins) ---------------------------------------------------

/// A stand-in `tailscale` CLI: records each call, answers like the real CLI (which needs
/// tailscaled running) with a backend state that `logout` and `up` change.
const TAILSCALE_CLI: &str = r#"#!/bin/sh
# Stand-in for the tailscale CLI (tier-3 test; Debian 12 has no tailscale package).
mkdir -p /run/stand-in
printf '%s\n' "$*" >> /run/stand-in/tailscale.calls
if ! systemctl -q is-active tailscale.service; then
    echo "failed to connect to local tailscaled; it doesn't appear to be running" >&2
    exit 1
fi
backend=/run/stand-in/tailscale.backend
case "$1" in
logout) echo NeedsLogin > $backend ;;
up) echo Running > $backend ;;
status)
    printf '{"Version":"1.0.0-stand-in","BackendState":"%s","HaveNodeKey":true,"Self":{"ID":"n1","HostName":"t3","DNSName":"t3.tailnet.example.","OS":"linux","TailscaleIPs":["100.64.0.1"],"Online":true},"CurrentTailnet":{"Name":"tailnet.example","MagicDNSSuffix":"tailnet.example"}}\n' "$(cat $backend 2>/dev/null || echo NeedsLogin)"
    ;;
esac
"#;

/// A stand-in `netbird` CLI: records each call; fails like the real one without its daemon.
const NETBIRD_CLI: &str = r#"#!/bin/sh
# Stand-in for the netbird CLI (tier-3 test; Debian 12 has no netbird package).
mkdir -p /run/stand-in
printf '%s\n' "$*" >> /run/stand-in/netbird.calls
if ! systemctl -q is-active netbird.service; then
    echo "Error: failed to connect to daemon error: context deadline exceeded" >&2
    exit 1
fi
"#;

fn install_stand_in_unit(m: &Machine, unit: &str, what: &str) {
    m.write_file(
        format!("/etc/systemd/system/{unit}"),
        stand_in_unit(what, None),
    )
    .unwrap();
    m.run_ok(&["systemctl", "daemon-reload"]).unwrap();
}

fn install_stand_in_cli(m: &Machine, name: &str, script: &str) {
    let path = format!("/usr/local/bin/{name}");
    m.write_file(&path, script).unwrap();
    m.run_ok(&["chmod", "755", &path]).unwrap();
}

fn calls(e: &Env, name: &str) -> Vec<String> {
    e.file(&format!("/run/stand-in/{name}.calls"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// Debian 12 has no Tailscale: `tailscale.service` is a stand-in that only sleeps. Without
/// a `tailscale` CLI enabling fails and the unit is stopped again; with a stand-in CLI the
/// unit runs, the CLI gets upstream's commands, and disabling stops the unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailscale_stand_in_unit_without_a_cli_rolls_back_and_with_a_stand_in_cli_is_enabled() {
    tier3_or_return!();
    const TAILSCALE: &str = "tailscale.service";
    let e = env(|m| install_stand_in_unit(m, TAILSCALE, "tailscaled")).await;
    assert_eq!(e.active(TAILSCALE).await, "inactive");
    let config = json!({
        "enabled": true, "login_server": "https://headscale.example", "auth_key": "tskey-t3",
        "accept_routes": true, "accept_dns": false, "advertised_routes": ["192.0.2.0/24"],
        "advertise_exit_node": false, "exit_node": "", "exit_node_allow_lan_access": false,
        "serve_enabled": true, "serve_port": 8443, "serve_service": ""
    });

    // No CLI: the first command fails; the unit is stopped again, nothing stored.
    let (status, v) = e.put("tailscale", config.clone()).await;
    assert_eq!(status, 500, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("Failed to run: tailscale logout"),
        "{v}"
    );
    assert_eq!(e.active(TAILSCALE).await, "inactive");
    assert_eq!(e.config("tailscale").await["enabled"], false);

    // With the stand-in CLI.
    install_stand_in_cli(&e.m, "tailscale", TAILSCALE_CLI);
    e.put_ok("tailscale", config.clone()).await;
    assert_eq!(e.active(TAILSCALE).await, "active");
    assert_eq!(
        calls(&e, "tailscale"),
        [
            "logout",
            "up --reset --timeout 30s --auth-key tskey-t3 --login-server https://headscale.example",
            "set --advertise-routes=192.0.2.0/24 --accept-routes=true --accept-dns=false \
             --advertise-exit-node=false --exit-node= --exit-node-allow-lan-access=false",
            "serve reset",
            "serve --bg --https=8443 https+insecure://localhost:8443",
        ]
    );
    let got = e.get("tailscale").await;
    assert_eq!(got["config"], config);
    assert_eq!(got["state"]["backend_state"], "Running");
    assert_eq!(got["state"]["version"], "1.0.0-stand-in");
    assert_eq!(got["state"]["self"]["tailscale_ips"], json!(["100.64.0.1"]));

    let mut off = config.clone();
    off["enabled"] = json!(false);
    e.put_ok("tailscale", off.clone()).await;
    assert_eq!(e.active(TAILSCALE).await, "inactive");
    assert_eq!(e.config("tailscale").await, off);
}

/// Debian 12 has no NetBird: `netbird.service` is a stand-in that only sleeps. Without a
/// `netbird` CLI enabling fails and the unit is stopped again; with a stand-in CLI the
/// unit runs, the CLI gets `down` then `up` with the whole config, and disabling stops
/// the unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netbird_stand_in_unit_without_a_cli_rolls_back_and_with_a_stand_in_cli_is_enabled() {
    tier3_or_return!();
    const NETBIRD: &str = "netbird.service";
    let e = env(|m| install_stand_in_unit(m, NETBIRD, "netbird")).await;
    let config = json!({
        "enabled": true, "setup_key": "nb-setup-t3", "management_url": "https://nb.example",
        "admin_url": "", "anonymize": false, "block_inbound": true, "block_lan_access": false,
        "disable_client_routes": false, "disable_server_routes": false, "disable_dns": true,
        "disable_firewall": false, "dns_resolver_address": "",
        "external_ip_map": ["192.0.2.30"], "extra_dns_labels": null
    });

    let (status, v) = e.put("netbird", config.clone()).await;
    assert_eq!(status, 500, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("Failed to run: netbird down"),
        "{v}"
    );
    assert_eq!(e.active(NETBIRD).await, "inactive");
    assert_eq!(e.config("netbird").await["enabled"], false);

    install_stand_in_cli(&e.m, "netbird", NETBIRD_CLI);
    e.put_ok("netbird", config.clone()).await;
    assert_eq!(e.active(NETBIRD).await, "active");
    assert_eq!(
        calls(&e, "netbird"),
        [
            "down",
            "up --no-browser --setup-key nb-setup-t3 --management-url https://nb.example \
             --admin-url  --dns-resolver-address  --external-ip-map 192.0.2.30 \
             --extra-dns-labels  --block-inbound --disable-dns",
        ]
    );
    assert_eq!(e.config("netbird").await, config);

    let mut off = config.clone();
    off["enabled"] = json!(false);
    e.put_ok("netbird", off.clone()).await;
    assert_eq!(e.active(NETBIRD).await, "inactive");
    assert_eq!(e.config("netbird").await, off);
}

// --- restart -----------------------------------------------------------------------------

/// Several services enabled (ovn for real; tailscale, netbird and linstor on stand-ins;
/// ceph's files; usbip with vhci-hcd declared built in), the others given disabled
/// configs; then `incus-osd.service` is restarted through D-Bus. Every config survives,
/// every enabled service's units were stopped and brought back (new main PIDs), the
/// disabled ones' units stay inactive, and the new daemon logged each plugin's start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_daemon_keeps_every_service_config_and_brings_the_units_back() {
    tier3_or_return!();
    let site = Site::new();
    record_applications(&site, &["incus-ceph", "incus-linstor"]);
    let e = env_on(site, |m| {
        install_stand_in_unit(m, "tailscale.service", "tailscaled");
        install_stand_in_unit(m, "netbird.service", "netbird");
        m.write_file(
            "/etc/systemd/system/linstor-satellite.service",
            stand_in_unit("linstor-satellite", Some(TOML_CHECK)),
        )
        .unwrap();
        m.run_ok(&["systemctl", "daemon-reload"]).unwrap();
        install_stand_in_cli(m, "tailscale", TAILSCALE_CLI);
        install_stand_in_cli(m, "netbird", NETBIRD_CLI);
        declare_built_in(m, &[VHCI_HCD]);
    })
    .await;

    let ceph_key = e
        .run(&["ceph-authtool", "--gen-print-key"])
        .trim()
        .to_string();
    // (service, config, units that run when it is enabled)
    let services: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "ovn",
            json!({"enabled": true, "database": "tcp:192.0.2.1:6642",
                   "tunnel_address": "192.0.2.10", "tunnel_protocol": "geneve"}),
            vec![
                "ovn-controller.service",
                "ovs-vswitchd.service",
                "ovsdb-server.service",
            ],
        ),
        (
            "tailscale",
            json!({"enabled": true, "login_server": "", "auth_key": "tskey-restart",
                   "accept_routes": false, "accept_dns": true, "advertised_routes": null,
                   "advertise_exit_node": false, "exit_node": "",
                   "exit_node_allow_lan_access": false, "serve_enabled": false,
                   "serve_port": 0, "serve_service": ""}),
            vec!["tailscale.service"],
        ),
        (
            "netbird",
            json!({"enabled": true, "setup_key": "nb-restart", "management_url": "",
                   "admin_url": "", "anonymize": true, "block_inbound": false,
                   "block_lan_access": false, "disable_client_routes": false,
                   "disable_server_routes": false, "disable_dns": false,
                   "disable_firewall": false, "dns_resolver_address": "127.0.0.153:53",
                   "external_ip_map": null, "extra_dns_labels": ["t3"]}),
            vec!["netbird.service"],
        ),
        (
            "linstor",
            json!({"enabled": true, "listen_address": "192.0.2.10:3366"}),
            vec!["linstor-satellite.service"],
        ),
        (
            "ceph",
            json!({"enabled": true, "clusters": {"restart": {
                "fsid": "1a2b3c4d-0000-4000-8000-0000000000aa",
                "monitors": ["192.0.2.1:6789"],
                "keyrings": {"admin": {"key": ceph_key}},
                "client_config": {}}}}),
            vec![],
        ),
        ("usbip", json!({"enabled": true, "targets": []}), vec![]),
        // Disabled, with settings to keep.
        (
            "iscsi",
            json!({"enabled": false, "targets": [
                {"target": "iqn.2004-10.example:t3", "address": "192.0.2.40", "port": 3260}]}),
            vec!["iscsid.service"],
        ),
        (
            "lvm",
            json!({"enabled": false, "system_id": 9}),
            LVM_UNITS.to_vec(),
        ),
        (
            "multipath",
            json!({"enabled": false, "wwns": ["0x5abcdef123456001"]}),
            vec![MULTIPATHD],
        ),
        (
            "nvme",
            json!({"enabled": false, "targets": [
                {"transport": "tcp", "address": "192.0.2.50", "port": 4420}]}),
            vec![],
        ),
    ];
    for (name, config, _) in &services {
        e.put_ok(name, config.clone()).await;
        assert_eq!(&e.config(name).await, config, "{name}");
    }
    let mut pids = Vec::new();
    for (name, config, units) in &services {
        let enabled = config["enabled"] == true;
        for unit in units {
            let want = if enabled { "active" } else { "inactive" };
            assert_eq!(
                e.active(unit).await,
                want,
                "{name}: {unit} before the restart"
            );
            if enabled {
                pids.push((*unit, show(&e.m, unit, "MainPID")));
            }
        }
    }
    let ceph_conf = e.file("/etc/ceph/restart.conf").expect("ceph conf");
    let old_daemon = show(&e.m, UNIT, "MainPID");

    let t = Instant::now();
    e.sd.run_job(UnitAction::Restart, UNIT)
        .await
        .expect("restart");
    wait_system_ready(&e.sock).await;
    eprintln!("daemon restarted and ready in {:?}", t.elapsed());
    let new_daemon = show(&e.m, UNIT, "MainPID");
    assert_ne!(new_daemon, old_daemon);

    for (name, config, units) in &services {
        assert_eq!(&e.config(name).await, config, "{name} after the restart");
        let enabled = config["enabled"] == true;
        for unit in units {
            let want = if enabled { "active" } else { "inactive" };
            assert_eq!(
                e.active(unit).await,
                want,
                "{name}: {unit} after the restart"
            );
        }
    }
    for (unit, pid) in &pids {
        assert_ne!(&show(&e.m, unit, "MainPID"), pid, "{unit} was brought back");
    }
    // The files are back too (ceph's stop removed /etc/ceph, its start wrote it again).
    assert_eq!(
        e.file("/etc/ceph/restart.conf").as_deref(),
        Some(ceph_conf.as_str())
    );
    assert_eq!(
        e.run(&[
            "ceph-authtool",
            "/etc/ceph/restart.client.admin.keyring",
            "-n",
            "client.admin",
            "-p"
        ])
        .trim(),
        ceph_key
    );
    assert_eq!(external_id(&e, "ovn-remote"), "tcp:192.0.2.1:6642");

    // The old daemon stopped each plugin, the new one started each (once journald has
    // the new one's last start-up line).
    let lines = |pid: &str| -> Vec<String> {
        e.run(&["journalctl", "--no-pager", "-o", "json", "-u", UNIT])
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|j| j["_PID"] == pid)
            .map(|j| j["MESSAGE"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let new = loop {
        let new = lines(&new_daemon);
        if new.iter().any(|l| l.contains("INFO System is ready")) || Instant::now() > deadline {
            break new;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let old = lines(&old_daemon);
    for (name, _, _) in &services {
        let plugin = format!("plugin={name}");
        assert!(
            old.iter()
                .any(|l| l.contains("DEBUG stopped") && l.ends_with(&plugin)),
            "{name} not stopped:\n{}",
            old.join("\n")
        );
        assert!(
            new.iter()
                .any(|l| l.contains("DEBUG started") && l.ends_with(&plugin)),
            "{name} not started:\n{}",
            new.join("\n")
        );
    }
    assert!(
        !new.iter().any(|l| l.contains("start failed")),
        "{}",
        new.join("\n")
    );
}
