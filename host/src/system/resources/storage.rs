//! Disks: `/sys/block`, listing only block devices backed by hardware (ones with a
//! `device`), so loop, zram, device-mapper and md devices are left out.

use std::collections::HashMap;
use std::path::Path;

use super::types::{Disk, Partition, Storage};
use super::{link_name, list, read_numa, read_str, read_u64};
use crate::platform::kernel::KernelFiles;

/// Sizes in `/sys/block` are in 512-byte sectors whatever the device's block size.
const SECTOR: u64 = 512;

/// The disks; their udev names (`device_id`, `device_path`) come from the `/dev/disk/by-id`
/// and `/dev/disk/by-path` links under `root`.
pub fn storage(kernel: &KernelFiles, root: &Path) -> Storage {
    let by_id = udev_links(&root.join("dev/disk/by-id"));
    let by_path = udev_links(&root.join("dev/disk/by-path"));
    let base = kernel.sys_path("block");
    let mut disks = Vec::new();
    for id in list(&base) {
        let dir = base.join(&id);
        let device = dir.join("device");
        if !device.exists() {
            continue;
        }
        let mut d = disk(&id, &dir, &device);
        d.device_id = by_id.get(&id).cloned().unwrap_or_default();
        d.device_path = by_path.get(&id).cloned().unwrap_or_default();
        disks.push(d);
    }
    Storage {
        total: disks.len() as u64,
        disks,
    }
}

/// Device name → the name of a udev link to it (`../../sda`); the last in sorted order
/// when there are several.
fn udev_links(dir: &Path) -> HashMap<String, String> {
    list(dir)
        .into_iter()
        .filter_map(|name| {
            let target = std::fs::read_link(dir.join(&name)).ok()?;
            let dev = target.file_name()?.to_string_lossy().into_owned();
            Some((dev, name))
        })
        .collect()
}

fn disk(id: &str, dir: &Path, device: &Path) -> Disk {
    let mut kind = link_name(&device.join("subsystem"));
    // SCSI peripheral type 5 is an optical drive.
    if kind == "scsi" && read_str(&device.join("type")) == "5" {
        kind = "cdrom".into();
    }
    let wwn = Some(read_str(&dir.join("wwid")))
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| read_str(&device.join("wwid")));
    let partitions = list(dir)
        .into_iter()
        .filter(|p| dir.join(p).join("partition").exists())
        .map(|p| {
            let pd = dir.join(&p);
            Partition {
                device: read_str(&pd.join("dev")),
                read_only: read_u64(&pd.join("ro")) == Some(1),
                size: read_u64(&pd.join("size")).unwrap_or(0) * SECTOR,
                partition: read_u64(&pd.join("partition")).unwrap_or(0),
                id: p,
            }
        })
        .collect();
    Disk {
        id: id.to_string(),
        device: read_str(&dir.join("dev")),
        model: read_str(&device.join("model")),
        kind,
        read_only: read_u64(&dir.join("ro")) == Some(1),
        size: read_u64(&dir.join("size")).unwrap_or(0) * SECTOR,
        removable: read_u64(&dir.join("removable")) == Some(1),
        wwn,
        numa_node: read_numa(&device.join("numa_node")),
        block_size: read_u64(&dir.join("queue/logical_block_size")).unwrap_or(0),
        firmware_version: Some(read_str(&device.join("firmware_rev")))
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| read_str(&device.join("rev"))),
        // Unknown speed: 1 for a spinning disk, 0 for a solid-state one.
        rpm: read_u64(&dir.join("queue/rotational")).unwrap_or(0),
        serial: read_str(&device.join("serial")),
        partitions,
        ..Default::default()
    }
}
