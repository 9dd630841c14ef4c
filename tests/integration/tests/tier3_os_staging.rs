//! Tier 3: native OS update staging on a real disk. A sparse file on a loop device gets
//! upstream's layout (a FAT ESP, slot A and slot B each with usr-verity-sig, usr-verity and
//! usr partitions, A labelled with the running release), and the staging code writes a
//! fake release into it through `sfdisk` and the block device, as on the machine.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use incus_osd::platform::exec::RealCommands;
use incus_osd::system::update::stage::{
    parse_sfdisk_json, stage_native, uki_name, Arch, Kind, Partition, Request, StageError,
    SystemDisk, UKI_DIR,
};
use incus_osd_test_machine::{find_tool, tier3_or_return, LoopDevice};

const OS: &str = "IncusOS";
const RUN: &str = "202501010000";
const OLD: &str = "202412010000";
const NEW: &str = "202502010000";
const MIB: u64 = 1 << 20;
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Slot partition sizes (signature, verity, usr).
const SIZES: [u64; 3] = [MIB, 2 * MIB, 8 * MIB];

fn arch() -> Arch {
    Arch::native().expect("tier 3 runs on x86-64 or arm64")
}

/// Runs a tool (found in the sbin directories too), fails the test when it fails.
fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> String {
    let path = find_tool(tool).unwrap_or_else(|| panic!("{tool} missing"));
    let mut cmd = Command::new(path);
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Pseudo-random bytes (xorshift), different for every call.
fn random_bytes(len: usize) -> Vec<u8> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEED: AtomicU64 = AtomicU64::new(0);
    let mut x = SEED.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        ^ u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn read_at(dev: &Path, start: u64, len: u64) -> Vec<u8> {
    let mut f = File::open(dev).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).unwrap();
    buf
}

fn write_at(dev: &Path, start: u64, data: &[u8]) {
    let mut f = OpenOptions::new().write(true).open(dev).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// The ESP partition attached as its own loop device (partition device nodes need udev,
/// which a container may lack), formatted and mounted. Unmounted and detached on drop.
struct Esp {
    device: String,
    dir: Option<tempfile::TempDir>,
}

impl Esp {
    fn new(disk: &Path, part: &Partition) -> Esp {
        let device = run(
            "losetup",
            &[
                "--find",
                "--show",
                "--offset",
                &part.start.to_string(),
                "--sizelimit",
                &part.size.to_string(),
                disk.to_str().unwrap(),
            ],
            None,
        )
        .trim()
        .to_string();
        let mut esp = Esp { device, dir: None };
        let dir = tempfile::tempdir().unwrap();
        run("mkfs.vfat", &[&esp.device], None);
        let mount = |fs: &str| {
            Command::new(find_tool("mount").unwrap())
                .args(["-t", fs, &esp.device, dir.path().to_str().unwrap()])
                .output()
                .unwrap()
        };
        let out = mount("vfat");
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("unknown filesystem type"), "mount: {err}");
            // This kernel has no FAT driver (the machines this project runs on lack it, CI
            // included): the ESP's file operations (copy, fsync, rename, remove) run on
            // ext4 instead, said loudly. The GPT, the slots and the partition writes are
            // the real thing either way.
            let note = "TIER 3 NOTE: the kernel has no vfat; the ESP is ext4 in this run";
            let _ = writeln!(std::io::stderr(), "\n{note}\n");
            run("mkfs.ext4", &["-q", "-F", &esp.device], None);
            let out = mount("ext4");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        esp.dir = Some(dir);
        esp
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    fn ukis(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path().join(UKI_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Esp {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let umount = find_tool("umount").unwrap();
            let ok = Command::new(&umount)
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new(&umount).arg("--lazy").arg(dir.path()).status();
            }
        }
        let _ = Command::new(find_tool("losetup").unwrap())
            .args(["--detach", &self.device])
            .status();
    }
}

/// A disk with upstream's layout. Field order is drop order: the ESP goes before the disk.
struct Rig {
    esp: Esp,
    disk: LoopDevice,
    updates: tempfile::TempDir,
    /// What each slot partition held before staging, by partition number.
    before: Vec<(u32, Vec<u8>)>,
}

impl Rig {
    fn new() -> Rig {
        let disk = LoopDevice::new(64 * MIB).expect("loop device");
        let dev = disk.path().to_str().unwrap().to_string();
        let mut script = format!("label: gpt\nsize=16MiB, type={ESP_TYPE}, name=\"esp\"\n");
        for ver in [RUN, OLD] {
            for (kind, size) in Kind::ALL.into_iter().zip(SIZES) {
                script += &format!(
                    "size={}MiB, type={}, name=\"{}\"\n",
                    size / MIB,
                    arch().type_guid(kind),
                    kind.label(OS, ver)
                );
            }
        }
        run("sfdisk", &["-q", &dev], Some(&script));
        let parts = partitions(disk.path());
        let mut before = Vec::new();
        for p in &parts[1..] {
            let bytes = random_bytes(p.size as usize);
            write_at(disk.path(), p.start, &bytes);
            before.push((p.number, bytes));
        }
        let esp = Esp::new(disk.path(), &parts[0]);
        let uki_dir = esp.path().join(UKI_DIR);
        std::fs::create_dir_all(&uki_dir).unwrap();
        std::fs::write(uki_dir.join(format!("{OS}_{RUN}.efi")), b"running").unwrap();
        std::fs::write(uki_dir.join(format!("{OS}_{OLD}+0-3.efi")), b"old").unwrap();
        Rig {
            esp,
            disk,
            updates: tempfile::tempdir().unwrap(),
            before,
        }
    }

    /// Writes the downloaded files of `NEW` with these image sizes; returns their bytes
    /// (signature, verity, usr, UKI).
    fn download(&self, sizes: [u64; 3]) -> Vec<Vec<u8>> {
        let uuid = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";
        let a = arch().name();
        let names = [
            format!("{OS}_{NEW}.usr-{a}-verity-sig.{uuid}.raw"),
            format!("{OS}_{NEW}.usr-{a}-verity.{uuid}.raw"),
            format!("{OS}_{NEW}.usr-{a}.{uuid}.raw"),
            format!("{OS}_{NEW}.efi"),
        ];
        let lens = [sizes[0], sizes[1], sizes[2], 300 * 1024];
        names
            .iter()
            .zip(lens)
            .map(|(name, len)| {
                let bytes = random_bytes(len as usize);
                std::fs::write(self.updates.path().join(name), &bytes).unwrap();
                bytes
            })
            .collect()
    }

    fn stage(&self) -> Result<(), StageError> {
        let ops = SystemDisk::new(Arc::new(RealCommands));
        let req = Request {
            os_name: OS,
            version: NEW,
            running: RUN,
            arch: arch(),
            updates_dir: self.updates.path(),
            disk: self.disk.path(),
            esp: self.esp.path(),
        };
        stage_native(&ops, &req).map(|_| ())
    }

    fn before(&self, number: u32) -> &[u8] {
        &self.before.iter().find(|(n, _)| *n == number).unwrap().1
    }
}

fn partitions(disk: &Path) -> Vec<Partition> {
    let out = run("sfdisk", &["--json", disk.to_str().unwrap()], None);
    parse_sfdisk_json(out.as_bytes()).unwrap()
}

fn attrs(disk: &Path) -> Vec<Option<String>> {
    let out = run("sfdisk", &["--json", disk.to_str().unwrap()], None);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["attrs"].as_str().map(String::from))
        .collect()
}

fn labels(parts: &[Partition], numbers: [u32; 3]) -> Vec<String> {
    numbers
        .iter()
        .map(|n| parts.iter().find(|p| p.number == *n).unwrap().label.clone())
        .collect()
}

fn release_labels(ver: &str) -> Vec<String> {
    Kind::ALL.iter().map(|k| k.label(OS, ver)).collect()
}

#[test]
fn staging_writes_slot_b_labels_it_installs_the_uki_prunes_and_leaves_slot_a_untouched() {
    tier3_or_return!();
    let rig = Rig::new();
    // Odd sizes: the tail of each partition must come out zeroed.
    let files = rig.download([4096, 3 * MIB / 2 + 123, 6 * MIB + 7]);
    rig.stage().expect("staging");

    let dev = rig.disk.path();
    let parts = partitions(dev);
    // Slot A (partitions 2-4): bytes and labels as before.
    for n in [2, 3, 4] {
        let p = &parts[n as usize - 1];
        assert!(
            read_at(dev, p.start, p.size) == rig.before(n),
            "slot A partition {n} changed"
        );
    }
    assert_eq!(labels(&parts, [2, 3, 4]), release_labels(RUN));
    // Slot B (partitions 5-7): the images, zero to the end, the release's labels, read-only.
    for (n, image) in [5u32, 6, 7].into_iter().zip(&files) {
        let p = &parts[n as usize - 1];
        let bytes = read_at(dev, p.start, p.size);
        assert!(
            bytes[..image.len()] == image[..],
            "partition {n} does not hold its image"
        );
        assert!(
            bytes[image.len()..].iter().all(|&b| b == 0),
            "partition {n} keeps old bytes past its image"
        );
    }
    assert_eq!(labels(&parts, [5, 6, 7]), release_labels(NEW));
    let attrs = attrs(dev);
    assert_eq!(attrs[4..7], vec![Some("GUID:60".to_string()); 3]);
    assert_eq!(
        attrs[1..4],
        vec![None, None, None],
        "slot A's flags changed"
    );
    // The ESP: the running UKI and the new one with three tries; the old one pruned.
    let new_uki = uki_name(OS, NEW);
    assert_eq!(new_uki, format!("{OS}_{NEW}+3-0.efi"));
    let mut expected = vec![format!("{OS}_{RUN}.efi"), new_uki.clone()];
    expected.sort();
    assert_eq!(rig.esp.ukis(), expected);
    let uki_dir = rig.esp.path().join(UKI_DIR);
    assert_eq!(std::fs::read(uki_dir.join(&new_uki)).unwrap(), files[3]);
    assert_eq!(
        std::fs::read(uki_dir.join(format!("{OS}_{RUN}.efi"))).unwrap(),
        b"running"
    );
}

#[test]
fn staging_an_image_larger_than_its_partition_changes_nothing_on_the_disk_or_esp() {
    tier3_or_return!();
    let rig = Rig::new();
    rig.download([4096, MIB, SIZES[2] + 1]);
    let labels_before = labels(&partitions(rig.disk.path()), [5, 6, 7]);
    let err = rig.stage().unwrap_err();
    assert!(
        matches!(err, StageError::TooLarge { number: 7, .. }),
        "{err}"
    );
    let dev = rig.disk.path();
    let parts = partitions(dev);
    for n in 2..=7u32 {
        let p = &parts[n as usize - 1];
        assert!(
            read_at(dev, p.start, p.size) == rig.before(n),
            "partition {n} changed"
        );
    }
    assert_eq!(labels(&parts, [5, 6, 7]), labels_before);
    let mut expected = vec![format!("{OS}_{OLD}+0-3.efi"), format!("{OS}_{RUN}.efi")];
    expected.sort();
    assert_eq!(rig.esp.ukis(), expected);
}
