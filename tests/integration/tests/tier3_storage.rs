//! Tier 3: storage on real block devices. Loop devices stand in for drives (admitted by
//! the test switch), read through the real sysfs, with the real `smartctl`, `blkdiscard`
//! and `cryptsetup` run against them.
//!
//! The root prefix is a temporary directory whose `sys/block`, `sys/class/block` and
//! `sys/dev/block` are links to this machine's sysfs; udev's records for the loop devices
//! (`run/udev/data/b7:<n>`) and their by-id links (`dev/disk/by-id/...` pointing to the
//! real `/dev/loop<n>`) are written by the test, as udev would write them. The daemon
//! gives commands OS paths (`/dev/disk/by-id/...`, `/var/lib/incus-os/...`): for the
//! library tests, the commands adapter here resolves those under the root prefix before
//! running the real tool, and records the command lines as the daemon gave them.
//!
//! What cannot run here: this kernel has no device-mapper, so opening a LUKS mapping
//! (`cryptsetup open`) fails; the encryption test checks that step at the boundary (the
//! command line, and the header accepting the stored key through `--test-passphrase`).
//! There is no ZFS either: pool commands are covered by the router tests with recorded
//! `zpool`/`zfs` answers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use incus_osd::platform::exec::{Commands, Output, RealCommands};
use incus_osd::platform::{Mode, PlatformError};
use incus_osd::system::host::{self, Subsystem};
use incus_osd::system::storage::drives::Options;
use incus_osd::system::storage::service::Machine;
use incus_osd_integration::{request, Daemon, Root};
use incus_osd_test_machine::{find_tool, tier3_or_return};

const SIZE: u64 = 64 << 20;

/// A loop device over a sparse image, detached when dropped.
struct LoopDisk {
    dev: String,
    name: String,
    major_minor: String,
    _img: tempfile::NamedTempFile,
}

impl LoopDisk {
    fn new() -> LoopDisk {
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(SIZE).unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(img.path())
            .output()
            .expect("losetup");
        assert!(out.status.success(), "losetup: {out:?}");
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let name = dev.trim_start_matches("/dev/").to_string();
        let major_minor = std::fs::read_to_string(format!("/sys/block/{name}/dev"))
            .unwrap()
            .trim()
            .to_string();
        LoopDisk {
            dev,
            name,
            major_minor,
            _img: img,
        }
    }

    fn write_at(&self, offset: u64, data: &[u8]) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.dev)
            .unwrap();
        f.write_all_at(data, offset).unwrap();
        f.sync_all().unwrap();
    }

    fn read_at(&self, offset: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&self.dev).unwrap();
        let mut buf = vec![0; len];
        f.read_exact_at(&mut buf, offset).unwrap();
        buf
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

fn link(root: &Path, at: &str, target: &str) {
    let p = root.join(at);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, p).unwrap();
}

/// Makes `root` show this machine's block devices and `disk` under the by-id name `id`.
fn expose(root: &Path, disk: &LoopDisk, id: &str) {
    if !root.join("sys/block").exists() {
        link(root, "sys/block", "/sys/block");
        link(root, "sys/class/block", "/sys/class/block");
        link(root, "sys/dev/block", "/sys/dev/block");
    }
    let record = root.join(format!("run/udev/data/b{}", disk.major_minor));
    std::fs::create_dir_all(record.parent().unwrap()).unwrap();
    std::fs::write(record, format!("S:disk/by-id/{id}\nE:ID_SERIAL={id}\n")).unwrap();
    link(root, &format!("dev/disk/by-id/{id}"), &disk.dev);
    link(root, &format!("dev/{}", disk.name), &disk.dev);
}

/// The real tools, with the daemon's OS paths resolved under the root prefix; every
/// command line is recorded as the daemon gave it.
struct Rooted {
    root: PathBuf,
    calls: Mutex<Vec<String>>,
}

impl Commands for Rooted {
    fn run(
        &self,
        argv: &[String],
        stdin: &[u8],
        timeout: Duration,
    ) -> Result<Output, PlatformError> {
        self.calls.lock().unwrap().push(argv.join(" "));
        let argv: Vec<String> = argv
            .iter()
            .map(|a| {
                if a.starts_with("/dev/") || a.starts_with("/var/lib/incus-os/") {
                    self.root
                        .join(a.trim_start_matches('/'))
                        .display()
                        .to_string()
                } else {
                    a.clone()
                }
            })
            .collect();
        RealCommands.run(&argv, stdin, timeout)
    }
}

struct Lib {
    root: tempfile::TempDir,
    commands: Arc<Rooted>,
    host: plugin_api::sdk::Host,
}

const SUB: Subsystem = Subsystem {
    name: "storage",
    writable: &[],
};

impl Lib {
    fn new() -> Lib {
        let root = tempfile::tempdir().unwrap();
        let commands = Arc::new(Rooted {
            root: root.path().to_path_buf(),
            calls: Mutex::new(vec![]),
        });
        let mut platform = incus_osd::platform::Platform::for_root(root.path());
        platform.commands = commands.clone();
        platform.mode = Mode::Live;
        let host = host::handle(root.path(), &platform, &SUB);
        Lib {
            root,
            commands,
            host,
        }
    }
    fn machine(&self) -> Machine<'_> {
        Machine {
            root: self.root.path(),
            host: &self.host,
            opts: Options {
                admit_loop_devices: true,
            },
        }
    }
    fn calls(&self) -> Vec<String> {
        self.commands.calls.lock().unwrap().clone()
    }
    fn changes(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| {
                !c.starts_with("zpool status")
                    && !c.starts_with("smartctl")
                    && !c.starts_with("multipath")
            })
            .collect()
    }
}

fn tools(names: &[&str]) -> bool {
    for n in names {
        if find_tool(n).is_none() {
            eprintln!("\ntier3_storage: {n} is missing (tests/scripts/setup-tier3 installs it)\n");
            assert!(!incus_osd_test_machine::under_ci(), "{n} missing under CI");
            return false;
        }
    }
    true
}

#[tokio::test]
async fn loop_devices_are_listed_through_get_only_with_the_test_switch() {
    tier3_or_return!();
    let disk = LoopDisk::new();
    let root = Root::new();
    let id = "scsi-incus_loop_disk1";
    expose(root.path(), &disk, id);
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["metadata"]["state"]["drives"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect()
    };
    {
        let _d = Daemon::start(&root, &[]);
        let (s, v) = request(&root.socket(), "GET", "/1.0/system/storage", "").await;
        assert_eq!(s, 200, "{v}");
        assert!(ids(&v).is_empty(), "{v}");
    }
    let d = Daemon::start(&root, &["--test-admit-loop-devices"]);
    let (s, v) = request(&root.socket(), "GET", "/1.0/system/storage", "").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(ids(&v), [format!("/dev/disk/by-id/{id}")]);
    let drive = &v["metadata"]["state"]["drives"][0];
    assert_eq!(drive["capacity_in_bytes"], SIZE);
    assert_eq!(drive["boot"], false);
    assert_eq!(drive["removable"], false);
    assert_eq!(drive["remote"], false);
    assert!(drive.get("member_pool").is_none() && drive.get("encrypted").is_none());
    assert_eq!(v["metadata"]["config"]["scrub_schedule"], "0 4 * * 0");
    assert!(d.log().contains("--test-admit-loop-devices"), "{}", d.log());
}

#[test]
fn the_real_smartctl_finds_no_smart_on_a_loop_device() {
    tier3_or_return!();
    if !tools(&["smartctl"]) {
        return;
    }
    let disk = LoopDisk::new();
    let lib = Lib::new();
    let id = "scsi-incus_loop_disk1";
    expose(lib.root.path(), &disk, id);
    let drives = lib.machine().drives(&[]);
    assert_eq!(drives.len(), 1, "{drives:?}");
    let d = &drives[0];
    assert_eq!(d.id, format!("/dev/disk/by-id/{id}"));
    assert_eq!(d.smart, None, "{d:?}");
    assert_eq!(d.capacity_in_bytes, SIZE as i64);
    assert!(
        d.model_name.is_empty() && d.serial_number.is_empty(),
        "{d:?}"
    );
    assert!(
        lib.calls()
            .contains(&format!("smartctl -aj /dev/{}", disk.name)),
        "{:?}",
        lib.calls()
    );
}

#[test]
fn wiping_a_loop_device_discards_it_after_the_markers_prove_the_discard_works() {
    tier3_or_return!();
    if !tools(&["blkdiscard", "smartctl"]) {
        return;
    }
    let disk = LoopDisk::new();
    let lib = Lib::new();
    let id = "scsi-incus_loop_disk1";
    expose(lib.root.path(), &disk, id);
    // Data well away from the first and last MiB (which the zeroing fallback clears).
    disk.write_at(10 << 20, b"PAYLOAD-IN-THE-MIDDLE");
    disk.write_at(0, b"SIGNATURE");
    lib.machine()
        .wipe_drive(&format!("/dev/disk/by-id/{id}"), false)
        .unwrap();
    // Secure discard is not supported on a loop device; the plain one is, and it
    // cleared the markers, so it counts.
    let by_id = format!("/dev/disk/by-id/{id}");
    assert_eq!(
        lib.changes(),
        [
            format!("blkdiscard -f -s {by_id}"),
            format!("blkdiscard -f {by_id}")
        ]
    );
    assert!(disk.read_at(10 << 20, 21).iter().all(|b| *b == 0));
    assert!(disk.read_at(0, 9).iter().all(|b| *b == 0));
    assert!(disk.read_at(SIZE / 2, 5).iter().all(|b| *b == 0));
    assert!(disk.read_at(SIZE - 5, 5).iter().all(|b| *b == 0));
    // An unknown id is refused before anything runs.
    let before = lib.changes().len();
    assert_eq!(
        lib.machine().wipe_drive("/dev/disk/by-id/nope", false),
        Err("drive '/dev/disk/by-id/nope' doesn't exist".into())
    );
    assert_eq!(lib.changes().len(), before);
}

#[test]
fn encrypting_a_loop_device_formats_real_luks_with_the_stored_key_open_at_the_boundary_no_device_mapper(
) {
    tier3_or_return!();
    if !tools(&["cryptsetup", "blkdiscard", "smartctl"]) {
        return;
    }
    let disk = LoopDisk::new();
    let lib = Lib::new();
    let id = "scsi-incus_loop_disk1";
    let by_id = format!("/dev/disk/by-id/{id}");
    expose(lib.root.path(), &disk, id);
    // Importing a key for a drive that is not LUKS: cryptsetup's words, no key kept.
    let key_b64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let e = lib
        .machine()
        .import_encrypted_drive(&by_id, key_b64)
        .unwrap_err();
    assert!(e.contains("is not a valid LUKS device"), "{e}");
    let key = lib
        .root
        .path()
        .join(format!("var/lib/incus-os/luks.{id}.key"));
    assert!(!key.exists());

    let result = lib.machine().encrypt_drive(&by_id, false);
    let keyfile = format!("/var/lib/incus-os/luks.{id}.key");
    let changes = lib.changes();
    let n = changes.len();
    assert_eq!(
        changes[n - 2..],
        [
            format!("cryptsetup luksFormat -q {by_id} {keyfile}"),
            format!("cryptsetup open --type=luks -d {keyfile} {by_id} luks-{id}"),
        ]
    );
    // The open needs device-mapper, which this kernel lacks: that step fails here, with
    // cryptsetup's own error.
    let e = result.unwrap_err();
    assert!(
        e.starts_with(&format!(
            "Failed to run: cryptsetup open --type=luks -d {keyfile} {by_id} luks-{id}"
        )),
        "{e}"
    );
    // The drive is LUKS now, and the stored 32-byte key opens its header.
    assert_eq!(std::fs::read(&key).unwrap().len(), 32);
    let ok = Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "-d"])
        .arg(&key)
        .arg(&disk.dev)
        .status()
        .unwrap();
    assert!(ok.success());
    // Listed as encrypted (its key is there).
    let drives = lib.machine().drives(&[]);
    assert!(drives[0].encrypted);
    assert_eq!(drives[0].encrypted_id, format!("/dev/mapper/luks-{id}"));
    // Wiping it deletes the key (no mapping is open to close) and clears the header.
    lib.machine().wipe_drive(&by_id, false).unwrap();
    assert!(!key.exists());
    let is_luks = Command::new("cryptsetup")
        .args(["isLuks", &disk.dev])
        .status()
        .unwrap();
    assert!(!is_luks.success(), "the LUKS header survived the wipe");
}
