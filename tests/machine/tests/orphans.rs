//! Tier 3: what a test process leaves when it is SIGKILLed (no Drop runs) is cleaned up by
//! the next one.

use incus_osd_test_machine::{tier3_or_return, Filesystem, LoopDevice, Machine, NetNs, Swtpm};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const READY_ENV: &str = "INCUS_OSD_T3_ORPHAN_READY";

/// Run only as the child of `killed_test_process_leftovers_are_swept`: takes resources,
/// reports them, and waits to be killed.
#[test]
#[ignore = "helper: run by killed_test_process_leftovers_are_swept"]
fn orphan_helper() {
    let Some(ready) = std::env::var_os(READY_ENV) else {
        return;
    };
    let m = Machine::boot().unwrap();
    let tpm = Swtpm::start().unwrap();
    let dev = LoopDevice::with_filesystem(16 << 20, Filesystem::Ext4).unwrap();
    let mnt = dev.mount().unwrap();
    let ns = NetNs::new().unwrap();
    let report = format!(
        "{}\n{}\n{}\n{}\n{}\n{}\n",
        m.pid(),
        m.nspawn_pid(),
        tpm.pid(),
        dev.path().display(),
        mnt.path().display(),
        ns.name()
    );
    std::fs::write(Path::new(&ready).with_extension("tmp"), report).unwrap();
    std::fs::rename(Path::new(&ready).with_extension("tmp"), &ready).unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn killed_test_process_leftovers_are_swept() {
    tier3_or_return!();
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "orphan_helper", "--nocapture"])
        .env(READY_ENV, &ready)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready.exists() {
        assert!(child.try_wait().unwrap().is_none(), "helper exited early");
        assert!(Instant::now() < deadline, "helper never got ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = std::fs::read_to_string(&ready).unwrap();
    let v: Vec<&str> = report.lines().collect();
    let (pid1, nspawn, swtpm, dev, mnt, ns) = (v[0], v[1], v[2], v[3], v[4], v[5]);
    child.kill().unwrap(); // SIGKILL, by PID: no Drop runs
    child.wait().unwrap();
    for pid in [pid1, nspawn, swtpm] {
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} survives its test process until swept"
        );
    }

    // Creating new resources sweeps the dead process's ones.
    drop(Machine::boot().unwrap());
    drop(Swtpm::start().unwrap());
    drop(LoopDevice::new(1 << 20).unwrap());
    drop(NetNs::new().unwrap());

    // Gone, or a zombie waiting for init to reap it (its parent, the test process, died).
    let running = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, r)| !r.starts_with('Z'))
        })
    };
    let gone = |pid: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while running(pid) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    };
    assert!(gone(pid1), "container PID 1 {pid1} swept");
    assert!(gone(nspawn), "nspawn {nspawn} swept");
    assert!(gone(swtpm), "swtpm {swtpm} swept");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(mnt), "mount {mnt} swept");
    let loops = Command::new("losetup")
        .args(["--list", "--noheadings"])
        .output()
        .unwrap();
    let loops = String::from_utf8_lossy(&loops.stdout);
    assert!(
        !loops
            .lines()
            .any(|l| l.split_whitespace().next() == Some(dev)),
        "{dev} detached: {loops}"
    );
    assert!(
        !Path::new("/run/netns").join(ns).exists(),
        "netns {ns} swept"
    );
}
