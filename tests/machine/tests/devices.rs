//! Tier 3: swtpm, loop devices, network namespaces, journal files.

use incus_osd_test_machine::{
    journal_from_export, journal_from_text, tier3_or_return, Filesystem, JournalEntry, LoopDevice,
    NetNs, Swtpm,
};
use std::path::Path;
use std::process::Command;

#[test]
fn swtpm_answers_tpm2_commands() {
    tier3_or_return!();
    let tpm = Swtpm::start().expect("swtpm");
    assert_eq!(
        tpm.tcti(),
        format!("swtpm:host=127.0.0.1,port={}", tpm.port())
    );
    assert_eq!(tpm.ctrl_port(), tpm.port() + 1);
    // TPM2_GetRandom(8): tag TPM_ST_NO_SESSIONS, size 12, TPM_CC_GetRandom. It succeeds
    // only on a started-up TPM (startup-clear did that).
    let cmd = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8];
    let resp = tpm.transmit(&cmd).expect("transmit");
    assert_eq!(&resp[0..2], &[0x80, 0x01], "tag");
    assert_eq!(&resp[6..10], &[0, 0, 0, 0], "TPM_RC_SUCCESS: {resp:02x?}");
    assert_eq!(
        u16::from_be_bytes([resp[10], resp[11]]),
        8,
        "8 random bytes"
    );

    // Two at once get their own ports and state.
    let other = Swtpm::start().expect("second swtpm");
    assert_ne!(other.port(), tpm.port());
    assert_ne!(other.state_dir(), tpm.state_dir());

    let pid = tpm.pid();
    let state = tpm.state_dir().to_path_buf();
    drop(tpm);
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "swtpm killed");
    assert!(!state.exists(), "state removed");
}

#[test]
fn loop_device_with_ext4_mounts_and_unmounts() {
    tier3_or_return!();
    let dev = LoopDevice::with_filesystem(64 << 20, Filesystem::Ext4).expect("loop device");
    let device = dev.path().to_path_buf();
    let backing = dev.backing_file().to_path_buf();
    assert!(device.to_string_lossy().starts_with("/dev/loop"));
    // Sparse: far fewer blocks than its size.
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(&backing).unwrap();
    assert_eq!(md.len(), 64 << 20);
    assert!(md.blocks() * 512 < md.len());

    let mut mnt = dev.mount().expect("mount");
    let at = mnt.path().to_path_buf();
    std::fs::write(at.join("f"), "data").unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(at.to_str().unwrap()))
        .expect("mounted");
    assert!(
        line.starts_with(&format!("{} ", device.display())),
        "{line}"
    );
    assert!(line.contains(" ext4 "), "{line}");
    mnt.unmount().unwrap();
    drop(mnt);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(at.to_str().unwrap()));

    // Mounted again, the data is still there.
    {
        let again = dev.mount().unwrap();
        assert_eq!(
            std::fs::read_to_string(again.path().join("f")).unwrap(),
            "data"
        );
    }
    drop(dev);
    assert!(!backing.exists(), "backing file deleted");
    let out = Command::new("losetup")
        .arg("--list")
        .arg("--noheadings")
        .arg("--output=NAME,BACK-FILE")
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        !list.contains(backing.to_str().unwrap()),
        "loop device detached: {list}"
    );
}

#[test]
fn loop_device_with_btrfs() {
    tier3_or_return!();
    let dev = LoopDevice::with_filesystem(128 << 20, Filesystem::Btrfs).expect("btrfs");
    let m = dev.mount().expect("mount btrfs");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(mounts
        .lines()
        .any(|l| l.contains(m.path().to_str().unwrap()) && l.contains(" btrfs ")));
}

#[test]
fn netns_with_veth_pair_and_bridge() {
    tier3_or_return!();
    let host_links_before = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let ns = NetNs::new().expect("netns");
    ns.add_veth("t3a", "t3b").unwrap();
    ns.add_bridge("t3br").unwrap();
    ns.add_veth("t3c", "t3d").unwrap();
    ns.set_master("t3c", "t3br").unwrap();
    let links = ns.links().unwrap();
    for l in ["lo", "t3a", "t3b", "t3br", "t3c", "t3d"] {
        assert!(links.iter().any(|x| x == l), "{l} in {links:?}");
    }
    assert_eq!(ns.master_of("t3c").unwrap().as_deref(), Some("t3br"));
    ns.add_address("t3a", "192.0.2.1/24").unwrap();
    ns.add_address("t3b", "192.0.2.2/24").unwrap();
    let out = ns
        .exec_ok(&["ip", "-o", "addr", "show", "dev", "t3a"])
        .unwrap();
    assert!(out.contains("192.0.2.1/24"), "{out}");

    // A pair between two namespaces.
    let other = NetNs::new().unwrap();
    ns.add_veth_to("t3x", &other, "t3y").unwrap();
    assert!(other.links().unwrap().iter().any(|l| l == "t3y"));

    // Nothing leaked into the host's namespace.
    let host_links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&host_links.stdout).lines().count(),
        String::from_utf8_lossy(&host_links_before.stdout)
            .lines()
            .count()
    );

    let name = ns.name().to_string();
    drop(ns);
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&name));
}

fn journalctl(file: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new("journalctl")
        .arg(format!("--file={}", file.display()))
        .args(["-o", "json", "--no-pager"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "journalctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const BOOT_1: &str = "1111111111111111111111111111aaaa";
const BOOT_2: &str = "2222222222222222222222222222bbbb";

#[test]
fn journal_builder_yields_a_readable_file_with_two_boots() {
    tier3_or_return!();
    let file = journal_from_text(&[
        JournalEntry::new("first boot starts")
            .boot(BOOT_1)
            .unit("incus-osd.service")
            .priority(6),
        JournalEntry::new("first boot error")
            .boot(BOOT_1)
            .priority(3),
        JournalEntry::new("second boot starts")
            .boot(BOOT_2)
            .unit("incus-osd.service")
            .identifier("incus-osd"),
        JournalEntry::new("line one\nline two").boot(BOOT_2),
    ])
    .expect("journal");
    assert_eq!(file.extension().unwrap(), "journal");

    let all = journalctl(&file, &[]);
    let messages: Vec<&str> = all.iter().map(|e| e["MESSAGE"].as_str().unwrap()).collect();
    assert_eq!(
        messages,
        [
            "first boot starts",
            "first boot error",
            "second boot starts",
            "line one\nline two"
        ]
    );
    assert_eq!(all[0]["_SYSTEMD_UNIT"], "incus-osd.service");
    assert_eq!(all[1]["PRIORITY"], "3");

    let out = Command::new("journalctl")
        .arg(format!("--file={}", file.display()))
        .args(["--list-boots", "--no-pager"])
        .output()
        .unwrap();
    let boots = String::from_utf8_lossy(&out.stdout);
    assert!(boots.contains(BOOT_1) && boots.contains(BOOT_2), "{boots}");

    let previous = journalctl(&file, &["-b", "-1"]);
    assert_eq!(previous.len(), 2);
    assert!(previous.iter().all(|e| e["_BOOT_ID"] == BOOT_1));
    let current = journalctl(&file, &["-b", "0"]);
    assert_eq!(current.len(), 2);
    assert!(current.iter().all(|e| e["_BOOT_ID"] == BOOT_2));
    let unit = journalctl(&file, &["-u", "incus-osd.service"]);
    assert_eq!(unit.len(), 2);

    let dir = file.dir().to_path_buf();
    drop(file);
    assert!(!dir.exists());
}

#[test]
fn journal_from_export_fixture_text() {
    tier3_or_return!();
    let text = "\
__REALTIME_TIMESTAMP=1700000000000000
__MONOTONIC_TIMESTAMP=1000
_BOOT_ID=1111111111111111111111111111aaaa
MESSAGE=from a fixture
PRIORITY=4

";
    let file = journal_from_export(text.as_bytes()).unwrap();
    let all = journalctl(&file, &[]);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["MESSAGE"], "from a fixture");
    assert_eq!(all[0]["__REALTIME_TIMESTAMP"], "1700000000000000");
}
