//! Tier 3: a real systemd booted in a container.

use incus_osd_test_machine::{tier3_or_return, Machine};
use std::path::Path;
use std::time::{Duration, Instant};
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

async fn manager_call<B>(conn: &zbus::Connection, method: &str, body: &B) -> zbus::Message
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    conn.call_method(Some(DEST), PATH, Some(MANAGER), method, body)
        .await
        .unwrap_or_else(|e| panic!("{method}: {e}"))
}

async fn property(conn: &zbus::Connection, path: &str, iface: &str, name: &str) -> OwnedValue {
    let reply = conn
        .call_method(
            Some(DEST),
            path,
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &(iface, name),
        )
        .await
        .unwrap_or_else(|e| panic!("Get {iface}.{name}: {e}"));
    reply.body().deserialize().unwrap()
}

async fn active_state(conn: &zbus::Connection, unit: &str) -> String {
    let reply = manager_call(conn, "LoadUnit", &(unit,)).await;
    let path: OwnedObjectPath = reply.body().deserialize().unwrap();
    let v = property(
        conn,
        path.as_str(),
        "org.freedesktop.systemd1.Unit",
        "ActiveState",
    )
    .await;
    String::try_from(v).unwrap()
}

/// Waits (up to 10 s) for `unit` to reach `want`.
async fn wait_state(conn: &zbus::Connection, unit: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = active_state(conn, unit).await;
        if state == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{unit} stayed {state}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_and_runs_a_real_unit_over_dbus() {
    tier3_or_return!();
    let mut m = tokio::task::spawn_blocking(Machine::boot)
        .await
        .unwrap()
        .expect("boot");
    eprintln!("machine {} booted in {:?}", m.name(), m.boot_duration());
    assert_eq!(m.root(), Path::new(&format!("/proc/{}/root", m.pid())));
    assert_eq!(
        m.bus_address(),
        format!(
            "unix:path=/proc/{}/root/run/dbus/system_bus_socket",
            m.pid()
        )
    );

    let conn = m.connect().await.expect("connect to the container's bus");
    let state = property(&conn, PATH, MANAGER, "SystemState").await;
    let state = String::try_from(state).unwrap();
    assert!(
        state == "running" || state == "degraded",
        "SystemState {state}"
    );
    // It is the container's systemd, not some other: it says it runs in nspawn.
    let virt = String::try_from(property(&conn, PATH, MANAGER, "Virtualization").await).unwrap();
    assert_eq!(virt, "systemd-nspawn");

    // A unit written through the root path, loaded by a daemon-reload over D-Bus.
    m.write_file(
        "/run/systemd/system/t3-probe.service",
        "[Service]\nType=simple\nExecStart=/bin/sleep infinity\n",
    )
    .unwrap();
    manager_call(&conn, "Reload", &()).await;
    manager_call(&conn, "StartUnit", &("t3-probe.service", "replace")).await;
    wait_state(&conn, "t3-probe.service", "active").await;

    // The same, seen from inside.
    let out = m
        .run_ok(&["systemctl", "is-active", "t3-probe.service"])
        .unwrap();
    assert_eq!(out.trim(), "active");
    let pid = m
        .run_ok(&[
            "systemctl",
            "show",
            "-p",
            "MainPID",
            "--value",
            "t3-probe.service",
        ])
        .unwrap();
    assert_ne!(pid.trim(), "0");
    assert_eq!(
        m.run_ok(&["hostname"]).unwrap().trim(),
        m.name(),
        "run() executes inside the container"
    );

    manager_call(&conn, "StopUnit", &("t3-probe.service", "replace")).await;
    wait_state(&conn, "t3-probe.service", "inactive").await;
    drop(conn);

    // Stop: its processes and nspawn are gone.
    let (pid1, nspawn) = (m.pid(), m.nspawn_pid());
    let stopping = Instant::now();
    m.stop().unwrap();
    eprintln!("machine stopped in {:?}", stopping.elapsed());
    assert!(!Path::new(&format!("/proc/{pid1}")).exists(), "PID 1 gone");
    assert!(
        !Path::new(&format!("/proc/{nspawn}")).exists(),
        "nspawn gone"
    );
}

#[test]
fn system_state_and_run_from_a_plain_test() {
    tier3_or_return!();
    let m = Machine::boot().expect("boot");
    eprintln!("machine {} booted in {:?}", m.name(), m.boot_duration());
    let state = m.system_state().unwrap();
    assert!(state == "running" || state == "degraded", "{state}");
    let out = m
        .run(&["sh", "-c", "echo out; echo err >&2; exit 3"])
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
    assert!(m.run_ok(&["false"]).is_err());
    // Only lo: --private-network, no link into the host.
    let links = m.run_ok(&["ip", "-o", "link"]).unwrap();
    assert_eq!(links.lines().count(), 1, "{links}");
    let out = m.run_with_input(&["cat"], Some(b"fed on stdin")).unwrap();
    assert_eq!(out.stdout, "fed on stdin");
}

#[test]
fn two_machines_are_independent() {
    tier3_or_return!();
    let started = Instant::now();
    let a = std::thread::spawn(Machine::boot);
    let b = std::thread::spawn(Machine::boot);
    let a = a.join().unwrap().expect("boot a");
    let mut b = b.join().unwrap().expect("boot b");
    eprintln!(
        "two machines booted in parallel in {:?} ({:?} and {:?})",
        started.elapsed(),
        a.boot_duration(),
        b.boot_duration()
    );
    assert_ne!(a.pid(), b.pid());
    assert_ne!(a.name(), b.name());

    a.write_file("/run/only-in-a", "a").unwrap();
    assert!(a.host_path("/run/only-in-a").exists());
    assert!(!b.host_path("/run/only-in-a").exists());
    // Files written by one do not reach the cached rootfs either.
    assert!(!a.rootfs().join("run/only-in-a").exists());
    a.sh("echo x > /etc/written-in-a").unwrap();
    assert!(!a.rootfs().join("etc/written-in-a").exists());
    assert!(b.sh("test -e /etc/written-in-a").is_err());

    // Each systemd has its own cgroup tree.
    let cg_a = std::fs::read_to_string(format!("/proc/{}/cgroup", a.pid())).unwrap();
    let cg_b = std::fs::read_to_string(format!("/proc/{}/cgroup", b.pid())).unwrap();
    assert_ne!(cg_a, cg_b);

    b.stop().unwrap();
    let state = a.system_state().unwrap();
    assert!(state == "running" || state == "degraded", "{state}");
    assert!(b.system_state().is_err());
}

#[test]
fn binds_are_visible_inside() {
    tier3_or_return!();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello"), "from the host").unwrap();
    let rw = tempfile::tempdir().unwrap();
    let m = Machine::builder()
        .bind_ro(dir.path(), "/mnt/ro")
        .bind(rw.path(), "/mnt/rw")
        .boot()
        .expect("boot");
    assert_eq!(m.sh("cat /mnt/ro/hello").unwrap(), "from the host");
    assert!(m.sh("touch /mnt/ro/nope").is_err(), "read-only bind");
    m.sh("echo back > /mnt/rw/file").unwrap();
    assert_eq!(
        std::fs::read_to_string(rw.path().join("file")).unwrap(),
        "back\n"
    );
}

#[test]
fn a_panicking_test_leaves_nothing_running() {
    tier3_or_return!();
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::thread::spawn(move || {
        let m = Machine::boot().expect("boot");
        tx.send((m.pid(), m.nspawn_pid())).unwrap();
        panic!("intentional panic (checks that Drop stops the machine)");
    })
    .join();
    assert!(r.is_err());
    let (pid1, nspawn) = rx.recv().unwrap();
    assert!(!Path::new(&format!("/proc/{pid1}")).exists());
    assert!(!Path::new(&format!("/proc/{nspawn}")).exists());
}

#[test]
fn extra_packages_are_preinstalled() {
    tier3_or_return!();
    let m = Machine::builder()
        .packages(&["open-iscsi"])
        .boot()
        .expect("boot with open-iscsi");
    let out = m.run_ok(&["iscsiadm", "--version"]).unwrap();
    assert!(out.contains("iscsiadm"), "{out}");
    assert!(m
        .rootfs()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .contains("open-iscsi"));
}
