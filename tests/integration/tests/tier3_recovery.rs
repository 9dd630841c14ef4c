//! Tier 3: recovery mode against real volumes. A file system made by the real
//! `mkfs.vfat -n RESCUE_DATA` (or `mkfs.ext4 -L RESCUE_DATA`) on a loop device, its label
//! read back by `blkid`, linked under the root prefix's `dev/disk/by-label/` as udev would
//! link it, its files put there by the real `mcopy`; the daemon's recovery code reads it in
//! process (nothing mounted), runs the signed hotfix and copies the signed update's files.
//!
//! The certificates are provider-common's test PKI: its root CA, its update CA, and its
//! second intermediate standing in for the support CA.
//!
//! Reading in process is why this runs whole on a kernel without vfat or iso9660.

use std::path::Path;
use std::process::Command;

use incus_osd::platform::exec::RealCommands;
use incus_osd::system::recovery;
use incus_osd_provider_common::testing::{gzip, sha256_hex, Pki};
use incus_osd_provider_common::trust::{ROOT_CA_PATH, SUPPORT_CA_PATH, UPDATE_CA_PATH};
use incus_osd_test_machine::{find_tool, tier3_or_return, LoopDevice};

const RUNNING: &str = "202511041601";
const NEW: &str = "202601010000";

/// A loop device over a sparse image (the test machine's, detached when dropped) and its
/// path as text.
struct LoopDisk {
    dev: String,
    _device: LoopDevice,
}

impl LoopDisk {
    fn new(size: u64) -> LoopDisk {
        let device = LoopDevice::new(size).expect("a loop device");
        LoopDisk {
            dev: device.path().to_string_lossy().into_owned(),
            _device: device,
        }
    }
}

fn run(tool: &str, args: &[&str]) -> String {
    let path = find_tool(tool).unwrap_or_else(|| panic!("{tool} is not installed"));
    let out = Command::new(path).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{tool} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A root prefix with the certificates shipped and `disk` linked as the recovery volume.
fn root_with(pki: &Pki, disk: &LoopDisk) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (path, pem) in [
        (ROOT_CA_PATH, pki.root_pem()),
        (UPDATE_CA_PATH, pki.update_ca_pem()),
        (SUPPORT_CA_PATH, pki.other_ca_pem()),
    ] {
        let p = root.path().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, pem).unwrap();
    }
    let link = root.path().join("dev/disk/by-label/RESCUE_DATA");
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&disk.dev, &link).unwrap();
    root
}

/// What the stick holds: a hotfix leaving `marker` behind, and an update of [`NEW`].
fn stick_files(pki: &Pki, marker: &Path) -> Vec<(String, Vec<u8>)> {
    let arch = std::env::consts::ARCH;
    let script = format!(
        "#!/bin/sh\necho fixed > '{}'\necho hotfix from the stick\n",
        marker.display()
    );
    let efi = gzip(b"the efi from the stick");
    let efi_name = format!("{arch}/IncusOS_{NEW}.efi.gz");
    let update = serde_json::json!({
        "format": "1.0",
        "channels": ["stable"],
        "version": NEW,
        "files": [{
            "architecture": arch,
            "component": "os",
            "filename": efi_name,
            "sha256": sha256_hex(&efi),
            "size": efi.len(),
            "type": "update-efi",
        }],
    });
    vec![
        (
            "hotfix.sh.sig".to_string(),
            pki.sign_with_other_intermediate(script.as_bytes()),
        ),
        (format!("update/{efi_name}"), efi),
        (
            "update/update.sjson".to_string(),
            pki.sign(update.to_string().as_bytes()),
        ),
    ]
}

#[test]
fn a_vfat_stick_labelled_rescue_data_is_read_in_place_and_left_unchanged() {
    tier3_or_return!();
    let disk = LoopDisk::new(32 << 20);
    run("mkfs.vfat", &["-n", "RESCUE_DATA", &disk.dev]);
    assert_eq!(
        run("blkid", &["-o", "value", "-s", "LABEL", &disk.dev]).trim(),
        "RESCUE_DATA"
    );
    let pki = Pki::new();
    let root = root_with(&pki, &disk);
    let dev = recovery::find_device(root.path()).expect("the volume is found");
    assert!(dev.ends_with("dev/disk/by-label/RESCUE_DATA"));

    // Fill the stick as whoever made it would, with mtools (nothing mounted).
    let scratch = tempfile::tempdir().unwrap();
    let marker = scratch.path().join("marker");
    let src = tempfile::tempdir().unwrap();
    for (name, data) in stick_files(&pki, &marker) {
        let p = src.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    let hotfix = src.path().join("hotfix.sh.sig");
    let update = src.path().join("update");
    run(
        "mcopy",
        &[
            "-s",
            "-i",
            &disk.dev,
            &hotfix.to_string_lossy(),
            &update.to_string_lossy(),
            "::/",
        ],
    );
    let before = std::fs::read(&disk.dev).unwrap();

    let volume = recovery::open(&dev).expect("read");
    assert_eq!(volume.kind(), "vfat");
    let out = recovery::run_hotfix(&RealCommands, root.path(), volume.as_ref()).unwrap();
    assert_eq!(out.as_deref(), Some("hotfix from the stick\n"));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "fixed\n");

    let version = recovery::prepare_update(
        &RealCommands,
        root.path(),
        volume.as_ref(),
        RUNNING,
        std::env::consts::ARCH,
    )
    .unwrap();
    assert_eq!(version.as_deref(), Some(NEW));
    let updates = root.path().join("root/updates");
    assert_eq!(
        std::fs::read_to_string(updates.join(format!("IncusOS_{NEW}.efi"))).unwrap(),
        "the efi from the stick"
    );
    assert_eq!(
        std::fs::read_to_string(updates.join("RELEASE")).unwrap(),
        format!("{NEW}\n")
    );
    drop(volume);
    assert!(
        std::fs::read(&disk.dev).unwrap() == before,
        "the stick was written to"
    );
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!info.contains(&disk.dev), "the stick was mounted: {info}");
}

#[test]
fn a_volume_that_is_neither_fat_nor_iso9660_is_refused_with_a_clear_error() {
    tier3_or_return!();
    let disk = LoopDisk::new(32 << 20);
    run("mkfs.ext4", &["-q", "-L", "RESCUE_DATA", &disk.dev]);
    let pki = Pki::new();
    let root = root_with(&pki, &disk);
    let dev = recovery::find_device(root.path()).expect("the volume is found");
    let e = recovery::open(&dev).err().expect("refused");
    assert!(
        e.starts_with("cannot read the recovery volume: ")
            && e.ends_with("holds neither a FAT nor an ISO 9660 file system"),
        "{e}"
    );
}
