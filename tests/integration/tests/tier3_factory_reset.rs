//! Tier 3: factory reset and seeds on real block devices.
//!
//! A loop device is laid out as an installed disk (ESP, seed-data, the A/B slots, swap 9,
//! root 10, local-data 11) with the real `sgdisk`, its partition 2 holding a seed archive.
//! The daemon's reset code runs against a temporary root prefix whose `dev/` holds device
//! nodes of the real loop device and its seed partition (`mknod`, same numbers), so it
//! writes the real partition; `sgdisk -d 9 -d 10 -d 11` runs for real against the loop
//! device, and `sgdisk -p` shows the result. The hard reboot stays at the boundary: the
//! `b` lands in `<root>/proc/sysrq-trigger`, a plain file. There is no TPM under the root:
//! the reset allows the clear to fail (the clear itself is tested with swtpm in
//! `tier3_tpm.rs`).
//!
//! The seeds of a user's medium are read back from a real FAT file system (`mkfs.vfat -n
//! SEED_DATA` on a second loop device, filled by `mcopy`), read in process by the daemon's
//! lookup without mounting it (this kernel has no vfat).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use incus_osd::api::App;
use incus_osd::platform::exec::{Commands, Output, RealCommands};
use incus_osd::platform::{Mode, Platform, PlatformError};
use incus_osd::system::seed::{self, reset, Seeds};
use incus_osd_test_machine::{find_tool, tier3_or_return};
use serde_json::json;

const SIZE: u64 = 96 << 20;

/// A loop device over a sparse image (partitions scanned), detached when dropped.
struct LoopDisk {
    dev: String,
    name: String,
    _img: tempfile::NamedTempFile,
}

impl LoopDisk {
    fn new() -> LoopDisk {
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(SIZE).unwrap();
        let out = run(
            "losetup",
            &["-f", "--show", "-P", img.path().to_str().unwrap()],
        );
        let dev = out.trim().to_string();
        let name = dev.trim_start_matches("/dev/").to_string();
        LoopDisk {
            dev,
            name,
            _img: img,
        }
    }

    /// `major:minor` of the disk (`None`) or of one of its partitions, from sysfs.
    fn numbers(&self, part: Option<u32>) -> (u64, u64) {
        let path = match part {
            None => format!("/sys/block/{}/dev", self.name),
            Some(n) => format!("/sys/block/{0}/{0}p{n}/dev", self.name),
        };
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let (a, b) = text.trim().split_once(':').unwrap();
        (a.parse().unwrap(), b.parse().unwrap())
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(find_tool(tool).unwrap_or_else(|| PathBuf::from(tool)))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(out.status.success(), "{tool} {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// A block device node at `<root>/<rel>` with these numbers.
fn mknod(root: &Path, rel: &str, (major, minor): (u64, u64)) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    run(
        "mknod",
        &[
            p.to_str().unwrap(),
            "b",
            &major.to_string(),
            &minor.to_string(),
        ],
    );
}

/// The real tools; every command line recorded.
#[derive(Default)]
struct Recorded {
    calls: Mutex<Vec<String>>,
}

impl Commands for Recorded {
    fn run(
        &self,
        argv: &[String],
        stdin: &[u8],
        timeout: Duration,
    ) -> Result<Output, PlatformError> {
        self.calls.lock().unwrap().push(argv.join(" "));
        RealCommands.run(argv, stdin, timeout)
    }
}

fn tools() -> bool {
    for n in ["sgdisk", "mkfs.vfat", "mcopy", "losetup", "partx"] {
        if find_tool(n).is_none() {
            eprintln!("\ntier3_factory_reset: {n} is missing (tests/run-all installs gdisk, dosfstools and mtools)\n");
            assert!(!incus_osd_test_machine::under_ci(), "{n} missing under CI");
            return false;
        }
    }
    true
}

/// An app over a temporary root with the real commands and `disk` as its boot disk.
fn app(root: &Path, commands: Arc<Recorded>, disk: &str) -> Arc<App> {
    let store = incus_osd::state::Store::load_or_create(&root.join("var/lib/incus-os")).unwrap();
    let mut platform = Platform::for_root(root);
    platform.commands = commands;
    platform.mode = Mode::Live;
    let info = incus_osd::system::info::SystemInfo::read(
        root,
        &platform.kernel,
        incus_osd::system::info::OsRelease {
            name: "IncusOS".into(),
            version: "202511041601".into(),
        },
    );
    let mut app = App::new(
        root.to_path_buf(),
        Arc::new(Mutex::new(store)),
        Default::default(),
        info,
        platform,
    );
    app.install_disk = Some(PathBuf::from(disk));
    Arc::new(app)
}

#[tokio::test]
async fn a_reset_rewrites_the_seed_partition_and_deletes_partitions_9_to_11() {
    tier3_or_return!();
    if !tools() {
        return;
    }
    let disk = LoopDisk::new();
    // Upstream's layout, in small: ESP, seed-data, the A/B slots, swap, root, local-data.
    let layout: [(u32, &str, &str); 11] = [
        (1, "+8M", "esp"),
        (2, "+1M", "seed-data"),
        (3, "+2M", "usr-A-verity"),
        (4, "+8M", "usr-A"),
        (5, "+1M", "usr-A-signature"),
        (6, "+2M", "usr-B-verity"),
        (7, "+8M", "usr-B"),
        (8, "+1M", "usr-B-signature"),
        (9, "+4M", "swap"),
        (10, "+16M", "root"),
        (11, "0", "local-data"),
    ];
    let mut args = vec![];
    for (n, size, name) in layout {
        args.push(format!("-n{n}:0:{size}"));
        args.push(format!("-c{n}:{name}"));
    }
    args.push(disk.dev.clone());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("sgdisk", &args);
    run("partx", &["-u", &disk.dev]);

    // The installed seeds: a tar archive on partition 2.
    let existing = vec![
        (
            "network.yaml".to_string(),
            b"time:\n  timezone: Europe/Paris\n".to_vec(),
        ),
        (
            "incus.yaml".to_string(),
            b"apply_defaults: false\n".to_vec(),
        ),
    ];
    let part2 = format!("{}p2", disk.dev);
    std::fs::write(&part2, seed::build_archive(&existing).unwrap()).unwrap();

    let root = tempfile::tempdir().unwrap();
    mknod(
        root.path(),
        &format!("dev/{}", disk.name),
        disk.numbers(None),
    );
    mknod(
        root.path(),
        &format!("dev/{}p2", disk.name),
        disk.numbers(Some(2)),
    );
    std::fs::create_dir_all(root.path().join("proc")).unwrap();
    std::fs::create_dir_all(root.path().join("boot/swtpm")).unwrap();
    std::fs::write(root.path().join("boot/sb-disabled"), b"").unwrap();
    let commands = Arc::new(Recorded::default());
    let app = app(root.path(), commands.clone(), &disk.dev);

    // What the daemon's lookup reads before the reset: the archive on partition 2.
    let before = seed::lookup(root.path(), Some(&disk.dev));
    assert!(before.has("network") && before.has("incus"), "{before:?}");

    let request: reset::ResetRequest = serde_json::from_value(json!({
        "allow_tpm_reset_failure": true,
        "seeds": {"incus": {"apply_defaults": true}},
    }))
    .unwrap();
    reset::reset(&app, request).await.unwrap();
    reset::schedule_hard_reboot(root.path());

    // The real partition holds the merged seeds.
    // `sgdisk` had the kernel read the table again: wait for the partition's node.
    run("partx", &["-u", &disk.dev]);
    for _ in 0..50 {
        if Path::new(&part2).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let files = seed::read_archive(Path::new(&part2)).unwrap().unwrap();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["network.yaml", "incus.json"]);
    assert_eq!(files[1].1, br#"{"apply_defaults":true}"#);
    // Partitions 9, 10 and 11 are gone from the table; 1 to 8 are there.
    let table = run("sgdisk", &["-p", &disk.dev]);
    for n in 1..=8 {
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().next() == Some(&n.to_string())),
            "partition {n} missing:\n{table}"
        );
    }
    for name in ["swap", "root", "local-data"] {
        assert!(!table.contains(name), "{name} still there:\n{table}");
    }
    assert_eq!(
        *commands.calls.lock().unwrap(),
        [format!("sgdisk -d 9 -d 10 -d 11 {}", disk.dev)]
    );
    assert!(!root.path().join("boot/swtpm").exists());
    assert!(!root.path().join("boot/sb-disabled").exists());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        std::fs::read_to_string(root.path().join("proc/sysrq-trigger")).unwrap(),
        "b"
    );

    // A later start reads the new seeds from the partition (through a fresh node: the
    // re-read table gave the loop device's partitions new numbers, as a boot gives new
    // nodes).
    std::fs::remove_file(root.path().join(format!("dev/{}p2", disk.name))).unwrap();
    mknod(
        root.path(),
        &format!("dev/{}p2", disk.name),
        disk.numbers(Some(2)),
    );
    let after = seed::lookup(root.path(), Some(&disk.dev));
    let incus: seed::types::IncusSeed = after.get().unwrap().unwrap();
    assert!(incus.apply_defaults);
}

#[test]
fn seeds_are_read_from_a_fat_seed_data_medium_without_mounting_it() {
    tier3_or_return!();
    if !tools() {
        return;
    }
    let medium = LoopDisk::new();
    run("mkfs.vfat", &["-n", "SEED_DATA", &medium.dev]);
    // The user's files, as a desktop would copy them.
    let src = tempfile::tempdir().unwrap();
    std::fs::write(
        src.path().join("network.yaml"),
        "dns:\n  hostname: seeded\n",
    )
    .unwrap();
    std::fs::write(
        src.path().join("update.json"),
        "{\"check_frequency\": \"12h\"}",
    )
    .unwrap();
    std::fs::write(src.path().join("notes.txt"), "not a seed").unwrap();
    for f in ["network.yaml", "update.json", "notes.txt"] {
        let path = src.path().join(f);
        run("mcopy", &["-i", &medium.dev, path.to_str().unwrap(), "::/"]);
    }

    let root = tempfile::tempdir().unwrap();
    mknod(
        root.path(),
        &format!("dev/{}", medium.name),
        medium.numbers(None),
    );
    let label = root.path().join("dev/disk/by-label");
    std::fs::create_dir_all(&label).unwrap();
    std::os::unix::fs::symlink(format!("../../{}", medium.name), label.join("SEED_DATA")).unwrap();
    let seeds: Seeds = seed::lookup(root.path(), None);
    assert_eq!(seeds.source, medium.dev);
    let net: seed::types::NetworkSeed = seeds.get().unwrap().unwrap();
    assert_eq!(net.config.dns.unwrap().hostname, "seeded");
    let update: seed::types::UpdateSeed = seeds.get().unwrap().unwrap();
    assert_eq!(update.config.check_frequency, "12h");
    assert!(!seeds.has("notes"));
    // Nothing was mounted.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&format!("{} ", medium.dev)), "{mounts}");
}
