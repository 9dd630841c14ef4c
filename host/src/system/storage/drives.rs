//! The drive inventory, read from sysfs and udev's database (no `lsblk` text), with
//! SMART data from `smartctl --json` answers.
//!
//! Everything is read under the daemon's root prefix: `/sys/block`, `/sys/class/block`,
//! `/sys/dev/block` and udev's `/run/udev/data/b<major>:<minor>` records, whose `S:`
//! lines are the device's `/dev` symlinks and whose `E:` lines its properties.
//!
//! Which devices count as drives follows upstream: every whole block device except RAM
//! disks, floppies, loop devices, NBD, DRBD, zvols and Ceph RBD (by major number), those
//! without a stable by-id name, and the virtual media of server BMCs. Loop devices are
//! admitted only when [`Options::admit_loop_devices`] is set, a switch for tests, where
//! loop devices stand in for drives.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::model::Smart;

/// Majors that are never drives: RAM disk, floppy, loop, NBD, DRBD, zvol, Ceph RBD.
const NOT_DRIVES: [u32; 7] = [1, 2, 7, 43, 147, 230, 251];
const LOOP_MAJOR: u32 = 7;

/// by-id prefixes of BMC virtual media (Dell, HP, Cisco, Asus/AMI, iDRAC).
const BMC_PREFIXES: [&str; 5] = [
    "usb-Linux_Virtual_",
    "usb-Generic-_SD_MMC_CRW",
    "usb-Cisco_",
    "usb-AMI_Virtual_",
    "usb-iDRAC_Virtual_",
];

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Lists loop devices as drives (tests only: loop devices stand in for disks).
    pub admit_loop_devices: bool,
}

/// A whole block device as sysfs and udev describe it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel name (`sda`, `nvme0n1`).
    pub name: String,
    pub major: u32,
    pub minor: u32,
    pub size_bytes: i64,
    pub removable: bool,
    /// Where `/sys/class/block/<name>` points (`../../devices/pci.../block/sda`).
    pub sys_path: String,
    /// udev's `/dev` symlinks, relative to `/dev` (`disk/by-id/...`).
    pub links: Vec<String>,
    /// udev's properties (`ID_WWN`, `ID_SERIAL`...).
    pub props: BTreeMap<String, String>,
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn rooted(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

/// udev's record of a block device: its symlinks and properties.
pub fn udev_record(root: &Path, major: u32, minor: u32) -> (Vec<String>, BTreeMap<String, String>) {
    let mut links = Vec::new();
    let mut props = BTreeMap::new();
    let text = read(&rooted(root, &format!("/run/udev/data/b{major}:{minor}"))).unwrap_or_default();
    for line in text.lines() {
        if let Some(link) = line.strip_prefix("S:") {
            links.push(link.to_string());
        } else if let Some((k, v)) = line.strip_prefix("E:").and_then(|kv| kv.split_once('=')) {
            props.insert(k.to_string(), v.to_string());
        }
    }
    links.sort();
    (links, props)
}

/// The whole block devices that may be drives, sorted by kernel name.
pub fn block_devices(root: &Path, opts: Options) -> Vec<BlockDevice> {
    let Ok(entries) = std::fs::read_dir(rooted(root, "/sys/block")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        let Some((major, minor)) = read(&dir.join("dev")).and_then(|d| {
            let (a, b) = d.split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        }) else {
            continue;
        };
        if NOT_DRIVES.contains(&major) && !(major == LOOP_MAJOR && opts.admit_loop_devices) {
            continue;
        }
        let sectors: i64 = read(&dir.join("size"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let sys_path = std::fs::read_link(rooted(root, &format!("/sys/class/block/{name}")))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (links, props) = udev_record(root, major, minor);
        out.push(BlockDevice {
            removable: read(&dir.join("removable")).as_deref() == Some("1"),
            size_bytes: sectors * 512,
            name,
            major,
            minor,
            sys_path,
            links,
            props,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The device's stable name: its first by-id (else by-path) symlink in sorted order,
/// skipping LVM's uuid links in favour of one naming the drive. `physical` skips
/// device-mapper devices (their links do not name a drive).
pub fn stable_id(dev: &BlockDevice, physical: bool) -> Option<String> {
    if physical && dev.name.starts_with("dm-") {
        return None;
    }
    dev.links
        .iter()
        .filter(|l| !l.starts_with("disk/by-id/lvm-pv-uuid-"))
        .find(|l| l.starts_with("disk/by-id/") || l.starts_with("disk/by-path/"))
        .map(|l| format!("/dev/{l}"))
}

pub fn is_bmc(id: &str) -> bool {
    let base = id.rsplit('/').next().unwrap_or(id);
    BMC_PREFIXES.iter().any(|p| base.starts_with(p))
}

/// Remote (Fibre Channel, NVMe over fabrics): a SCSI disk behind an `rport-`, an NVMe
/// namespace whose controller is not under PCI. (A multipath namespace sits in the
/// virtual subsystem; its `device/<controller>` link says where the controller is.)
pub fn is_remote(root: &Path, dev: &BlockDevice) -> bool {
    if dev.name.starts_with("sd") {
        return dev.sys_path.contains("/rport-");
    }
    if dev.name.starts_with("nvme") {
        let controller = split_nvme(&dev.name).and_then(|(ctrl, _)| {
            std::fs::read_link(rooted(
                root,
                &format!("/sys/class/block/{}/device/{ctrl}", dev.name),
            ))
            .ok()
        });
        let place = controller
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| dev.sys_path.clone());
        return !place.contains("/pci");
    }
    false
}

/// NVMe native multipath: the namespace has more than one controller path in its
/// subsystem (`nvme-subsystem/nvme-subsysN/nvmeXcYnZ` entries).
pub fn nvme_paths(root: &Path, dev: &BlockDevice) -> usize {
    if !dev.sys_path.contains("/nvme-subsystem/") {
        return 1;
    }
    let Some((ctrl, ns)) = split_nvme(&dev.name) else {
        return 0;
    };
    let class = rooted(root, &format!("/sys/class/block/{}", dev.name));
    let Some(subsystem) = std::fs::canonicalize(&class)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    else {
        return 0;
    };
    // Each controller of the subsystem (`nvme0`, `nvme1`...) holds one path node
    // (`nvme0c0n1`, `nvme0c1n1`) per namespace it reaches.
    let is_path = |n: &str| {
        n.strip_prefix(&format!("{ctrl}c"))
            .and_then(|rest| rest.strip_suffix(&ns))
            .is_some_and(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_digit()))
    };
    let Ok(controllers) = std::fs::read_dir(&subsystem) else {
        return 0;
    };
    controllers
        .flatten()
        .filter(|c| c.file_name().to_string_lossy().starts_with("nvme"))
        .filter_map(|c| std::fs::read_dir(c.path()).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|e| is_path(&e.file_name().to_string_lossy()))
        .count()
}

/// `nvme0n1` → (`nvme0`, `n1`).
fn split_nvme(name: &str) -> Option<(String, String)> {
    let at = name.rfind('n')?;
    let (ctrl, ns) = name.split_at(at);
    if !ctrl.starts_with("nvme") || ns.len() < 2 || !ns[1..].chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((ctrl.to_string(), ns.to_string()))
}

/// The kernel names of the disks a device sits on: itself, the disk of a partition, the
/// disks under a device-mapper device (its `slaves`, followed down).
pub fn disks_under(root: &Path, major: u32, minor: u32) -> Vec<String> {
    let mut out = Vec::new();
    let link = rooted(root, &format!("/sys/dev/block/{major}:{minor}"));
    let Ok(target) = std::fs::read_link(&link) else {
        return out;
    };
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    walk_down(root, &name, &mut out, 0);
    out.sort();
    out.dedup();
    out
}

fn walk_down(root: &Path, name: &str, out: &mut Vec<String>, depth: usize) {
    if depth > 8 {
        return;
    }
    let class = rooted(root, &format!("/sys/class/block/{name}"));
    // A partition: its disk is the parent directory of its sysfs node.
    if class.join("partition").exists() {
        if let Ok(target) = std::fs::read_link(&class) {
            if let Some(parent) = target.parent().and_then(|p| p.file_name()) {
                walk_down(root, &parent.to_string_lossy(), out, depth + 1);
            }
        }
        return;
    }
    let slaves: Vec<String> = std::fs::read_dir(class.join("slaves"))
        .map(|es| {
            es.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if slaves.is_empty() {
        out.push(name.to_string());
    } else {
        for s in slaves {
            walk_down(root, &s, out, depth + 1);
        }
    }
}

/// What a `smartctl -aj` answer says about a drive. smartctl exits non-zero for drives
/// without SMART (a virtual disk), so its answer is read whatever the exit status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmartFacts {
    pub bus: String,
    pub model_family: String,
    pub model_name: String,
    pub serial_number: String,
    pub smart: Option<Smart>,
}

fn num(v: &serde_json::Value, path: &[&str]) -> i64 {
    let mut v = v;
    for p in path {
        match v.get(p) {
            Some(x) => v = x,
            None => return 0,
        }
    }
    v.as_i64().unwrap_or(0)
}

/// Reads a `smartctl --json -a` answer (smartctl's documented JSON schema).
pub fn smart_facts(json: &str) -> SmartFacts {
    if json.trim().is_empty() {
        return SmartFacts::default();
    }
    let v: serde_json::Value = match serde_json::from_str(json) {
        Ok(v) => v,
        Err(e) => {
            return SmartFacts {
                smart: Some(Smart {
                    error: format!("Bad SMART data from drive: {e}"),
                    ..Default::default()
                }),
                ..Default::default()
            }
        }
    };
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let mut bus = v
        .get("device")
        .and_then(|d| d.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("")
        .to_string();
    // smartctl names SATA behind a SAT layer "sat".
    if bus == "sat" {
        bus = "sata".into();
    }
    let or = |a: String, b: &str| if a.is_empty() { s(b) } else { a };
    let model_family = or(s("model_family"), "scsi_vendor");
    let model_name = or(s("model_name"), "scsi_product");
    let available = v
        .get("smart_support")
        .and_then(|x| x.get("available"))
        .and_then(|x| x.as_bool())
        .unwrap_or(false);
    let smart = available.then(|| {
        let flag = |a: &str, b: &str| {
            v.get(a)
                .and_then(|x| x.get(b))
                .and_then(|x| x.as_bool())
                .unwrap_or(false)
        };
        let nvme = |k: &str| num(&v, &["nvme_smart_health_information_log", k]).max(0);
        let mut ata: BTreeMap<String, i64> = BTreeMap::new();
        if let Some(table) = v
            .get("ata_smart_attributes")
            .and_then(|a| a.get("table"))
            .and_then(|t| t.as_array())
        {
            for attr in table {
                let name = attr.get("name").and_then(|n| n.as_str()).unwrap_or("");
                ata.insert(name.to_string(), num(attr, &["raw", "value"]));
            }
        }
        let a = |k: &str| ata.get(k).copied().unwrap_or(0).max(0);
        Smart {
            enabled: flag("smart_support", "enabled"),
            passed: flag("smart_status", "passed"),
            error: String::new(),
            power_on_hours: num(&v, &["power_on_time", "hours"]).max(0),
            data_units_read: nvme("data_units_read"),
            data_units_written: nvme("data_units_written"),
            available_spare: nvme("available_spare"),
            percentage_used: nvme("percentage_used"),
            raw_read_error_rate: a("Raw_Read_Error_Rate"),
            seek_error_rate: a("Seek_Error_Rate"),
            reallocated_sectors: a("Reallocated_Sector_Ct"),
        }
    });
    SmartFacts {
        bus,
        model_family,
        model_name,
        serial_number: s("serial_number"),
        smart,
    }
}

/// WWN fields: a `0x` WWN from udev names `wwn-<wwn>`; an NVMe identifier only when its
/// `nvme-<id>` link exists.
pub fn wwn(dev: &BlockDevice) -> (String, String) {
    let Some(w) = dev.props.get("ID_WWN").filter(|w| !w.is_empty()) else {
        return Default::default();
    };
    if w.starts_with("0x") {
        return (w.clone(), format!("/dev/disk/by-id/wwn-{w}"));
    }
    let nvme = format!("disk/by-id/nvme-{w}");
    if dev.name.starts_with("nvme") && dev.links.contains(&nvme) {
        return (w.clone(), format!("/dev/{nvme}"));
    }
    Default::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A sysfs + udev tree under a temporary root.
    struct Tree {
        dir: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Tree {
            Tree {
                dir: tempfile::tempdir().unwrap(),
            }
        }
        fn root(&self) -> &Path {
            self.dir.path()
        }
        fn file(&self, path: &str, text: &str) {
            let p = rooted(self.root(), path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        fn link(&self, path: &str, target: &str) {
            let p = rooted(self.root(), path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            symlink(target, p).unwrap();
        }
        /// A whole disk at `devpath` (under /sys/devices) with udev links.
        /// `parent` is the sysfs directory the node sits in (`.../block` for most disks,
        /// the subsystem itself for a multipath NVMe namespace).
        fn disk(
            &self,
            name: &str,
            dev: &str,
            sectors: u64,
            parent: &str,
            links: &[&str],
            props: &[&str],
        ) {
            let node = format!("/sys/devices/{parent}/{name}");
            self.file(&format!("{node}/dev"), &format!("{dev}\n"));
            self.file(&format!("{node}/size"), &format!("{sectors}\n"));
            self.file(&format!("{node}/removable"), "0\n");
            self.link(
                &format!("/sys/block/{name}"),
                &format!("../devices/{parent}/{name}"),
            );
            self.link(
                &format!("/sys/class/block/{name}"),
                &format!("../../devices/{parent}/{name}"),
            );
            self.link(
                &format!("/sys/dev/block/{dev}"),
                &format!("../../devices/{parent}/{name}"),
            );
            let mut record = String::new();
            for l in links {
                record.push_str(&format!("S:{l}\n"));
            }
            for p in props {
                record.push_str(&format!("E:{p}\n"));
            }
            self.file(&format!("/run/udev/data/b{dev}"), &record);
        }
    }

    fn sample() -> Tree {
        let t = Tree::new();
        t.disk(
            "sda",
            "8:0",
            20971520,
            "pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block",
            &[
                "disk/by-id/ata-QEMU_HARDDISK_QM00001",
                "disk/by-id/wwn-0x5000c500a1b2c3d4",
                "disk/by-path/pci-0000:00:1f.2-ata-1",
            ],
            &["ID_WWN=0x5000c500a1b2c3d4", "ID_BUS=ata"],
        );
        t.disk(
            "sdb",
            "8:16",
            2048,
            "platform/host5/rport-5:0-0/target5:0:0/5:0:0:0/block",
            &["disk/by-id/scsi-FC_LUN"],
            &[],
        );
        t.disk(
            "loop0",
            "7:0",
            4096,
            "virtual/block",
            &["disk/by-id/test-loop0"],
            &[],
        );
        t.disk(
            "sr0",
            "11:0",
            0,
            "pci0000:00/usb1/1-1/block",
            &["disk/by-id/usb-iDRAC_Virtual_CD"],
            &[],
        );
        t.disk(
            "zd0",
            "230:0",
            100,
            "virtual/block",
            &["disk/by-id/zvol"],
            &[],
        );
        t.disk("mmcblk0boot0", "179:8", 100, "platform/mmc/block", &[], &[]);
        t.disk(
            "nvme0n1",
            "259:0",
            1000,
            "virtual/nvme-subsystem/nvme-subsys0",
            &[
                "disk/by-id/nvme-eui.0025388b91b3c1a2",
                "disk/by-id/nvme-Samsung_SSD_980_S1",
            ],
            &["ID_WWN=eui.0025388b91b3c1a2"],
        );
        // Two controllers reach the namespace: two paths.
        t.file(
            "/sys/devices/virtual/nvme-subsystem/nvme-subsys0/nvme0/nvme0c0n1/dev",
            "",
        );
        t.file(
            "/sys/devices/virtual/nvme-subsystem/nvme-subsys0/nvme1/nvme0c1n1/dev",
            "",
        );
        t.file(
            "/sys/devices/virtual/nvme-subsystem/nvme-subsys0/nvme1/nvme0c1n2/dev",
            "",
        );
        t
    }

    #[test]
    fn drives_are_whole_devices_but_ram_loop_zvol_and_the_like() {
        let t = sample();
        let names: Vec<String> = block_devices(t.root(), Options::default())
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(names, ["mmcblk0boot0", "nvme0n1", "sda", "sdb", "sr0"]);
        let with_loop: Vec<String> = block_devices(
            t.root(),
            Options {
                admit_loop_devices: true,
            },
        )
        .into_iter()
        .map(|d| d.name)
        .collect();
        assert_eq!(
            with_loop,
            ["loop0", "mmcblk0boot0", "nvme0n1", "sda", "sdb", "sr0"]
        );
    }

    #[test]
    fn a_drive_reads_its_size_links_wwn_and_place() {
        let t = sample();
        let devs = block_devices(t.root(), Options::default());
        let sda = devs.iter().find(|d| d.name == "sda").unwrap();
        assert_eq!(sda.size_bytes, 20971520 * 512);
        assert_eq!(
            stable_id(sda, true).as_deref(),
            Some("/dev/disk/by-id/ata-QEMU_HARDDISK_QM00001")
        );
        assert_eq!(
            wwn(sda),
            (
                "0x5000c500a1b2c3d4".into(),
                "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4".into()
            )
        );
        assert!(!is_remote(t.root(), sda));
        let sdb = devs.iter().find(|d| d.name == "sdb").unwrap();
        assert!(is_remote(t.root(), sdb), "behind an FC rport");
        let nvme = devs.iter().find(|d| d.name == "nvme0n1").unwrap();
        assert!(is_remote(t.root(), nvme), "its controller is a fabrics one");
        // The same namespace reached through a PCI controller is local.
        t.link(
            "/sys/devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1/device/nvme0",
            "../../../../pci0000:00/0000:00:04.0/nvme/nvme0",
        );
        assert!(!is_remote(t.root(), nvme));
        assert_eq!(wwn(nvme).1, "/dev/disk/by-id/nvme-eui.0025388b91b3c1a2");
        assert_eq!(nvme_paths(t.root(), nvme), 2);
        assert_eq!(nvme_paths(t.root(), sda), 1);
        let mmc = devs.iter().find(|d| d.name == "mmcblk0boot0").unwrap();
        assert_eq!(stable_id(mmc, true), None, "no stable name: not a drive");
        let sr0 = devs.iter().find(|d| d.name == "sr0").unwrap();
        assert!(is_bmc(&stable_id(sr0, true).unwrap()));
        assert!(!is_bmc("/dev/disk/by-id/ata-QEMU_HARDDISK_QM00001"));
    }

    #[test]
    fn lvm_uuid_links_and_device_mapper_devices_are_not_drive_names() {
        let dev = BlockDevice {
            name: "sdc".into(),
            links: vec![
                "disk/by-id/lvm-pv-uuid-abc".into(),
                "disk/by-id/scsi-SATA_disk_123".into(),
            ],
            ..Default::default()
        };
        assert_eq!(
            stable_id(&dev, true).as_deref(),
            Some("/dev/disk/by-id/scsi-SATA_disk_123")
        );
        let dm = BlockDevice {
            name: "dm-0".into(),
            links: vec!["disk/by-id/dm-name-root".into()],
            ..Default::default()
        };
        assert_eq!(stable_id(&dm, true), None);
        assert_eq!(
            stable_id(&dm, false).as_deref(),
            Some("/dev/disk/by-id/dm-name-root")
        );
    }

    #[test]
    fn the_disks_under_a_partition_or_a_mapped_device_are_found() {
        let t = sample();
        // sda2, a partition of sda, and dm-0 over sda2 (the encrypted root).
        let part = "pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda/sda2";
        t.file(&format!("/sys/devices/{part}/partition"), "2\n");
        t.link("/sys/class/block/sda2", &format!("../../devices/{part}"));
        t.link("/sys/dev/block/8:2", &format!("../../devices/{part}"));
        t.file("/sys/devices/virtual/block/dm-0/dev", "252:0\n");
        t.link("/sys/class/block/dm-0", "../../devices/virtual/block/dm-0");
        t.link("/sys/dev/block/252:0", "../../devices/virtual/block/dm-0");
        t.link(
            "/sys/devices/virtual/block/dm-0/slaves/sda2",
            "../../../../pci0000:00/x/sda2",
        );
        assert_eq!(disks_under(t.root(), 252, 0), ["sda"]);
        assert_eq!(disks_under(t.root(), 8, 2), ["sda"]);
        assert_eq!(disks_under(t.root(), 8, 16), ["sdb"]);
        assert!(disks_under(t.root(), 9, 9).is_empty());
    }

    #[test]
    fn smart_answers_are_read_for_sata_and_nvme_and_their_absence() {
        let sata = r#"{"json_format_version":[1,0],"smartctl":{"version":[7,3],"exit_status":0},
            "device":{"name":"/dev/sda","info_name":"/dev/sda [SAT]","type":"sat","protocol":"ATA"},
            "model_family":"Seagate IronWolf","model_name":"ST4000VN008-2DR166","serial_number":"ZDH1ABCD",
            "smart_support":{"available":true,"enabled":true},"smart_status":{"passed":true},
            "power_on_time":{"hours":12345},
            "ata_smart_attributes":{"revision":10,"table":[
              {"id":1,"name":"Raw_Read_Error_Rate","value":83,"raw":{"value":215645184,"string":"215645184"}},
              {"id":5,"name":"Reallocated_Sector_Ct","value":100,"raw":{"value":0,"string":"0"}},
              {"id":7,"name":"Seek_Error_Rate","value":90,"raw":{"value":987654,"string":"987654"}}]}}"#;
        let f = smart_facts(sata);
        assert_eq!(f.bus, "sata");
        assert_eq!(f.model_family, "Seagate IronWolf");
        assert_eq!(f.serial_number, "ZDH1ABCD");
        let s = f.smart.unwrap();
        assert!(s.enabled && s.passed);
        assert_eq!(s.power_on_hours, 12345);
        assert_eq!(s.raw_read_error_rate, 215645184);
        assert_eq!(s.seek_error_rate, 987654);
        assert_eq!(s.reallocated_sectors, 0);
        let shown = serde_json::to_value(&s).unwrap();
        assert!(
            shown.get("reallocated_sectors").is_none(),
            "zero is left out"
        );

        let nvme = r#"{"device":{"name":"/dev/nvme0","type":"nvme","protocol":"NVMe"},
            "model_name":"Samsung SSD 980 PRO 1TB","serial_number":"S5GXNX0T","smart_support":{"available":true,"enabled":true},
            "smart_status":{"passed":true,"nvme":{"value":0}},"power_on_time":{"hours":800},
            "nvme_smart_health_information_log":{"critical_warning":0,"available_spare":100,"percentage_used":2,
              "data_units_read":12345678,"data_units_written":23456789}}"#;
        let f = smart_facts(nvme);
        assert_eq!(f.bus, "nvme");
        assert_eq!(f.model_family, "");
        let s = f.smart.unwrap();
        assert_eq!((s.available_spare, s.percentage_used), (100, 2));
        assert_eq!(
            (s.data_units_read, s.data_units_written),
            (12345678, 23456789)
        );

        // SCSI/SAS: vendor and product stand in for family and model.
        let sas = r#"{"device":{"name":"/dev/sdb","type":"scsi","protocol":"SCSI"},"scsi_vendor":"SEAGATE",
            "scsi_product":"ST1200MM0009","serial_number":"W3A0XYZ","smart_support":{"available":true,"enabled":true},
            "smart_status":{"passed":true},"power_on_time":{"hours":41000,"minutes":3}}"#;
        let f = smart_facts(sas);
        assert_eq!(
            (f.model_family.as_str(), f.model_name.as_str()),
            ("SEAGATE", "ST1200MM0009")
        );
        assert_eq!(f.smart.unwrap().power_on_hours, 41000);

        // A virtual disk: no SMART support, no smart block.
        let virt =
            r#"{"device":{"name":"/dev/loop0","type":"scsi"},"smart_support":{"available":false}}"#;
        assert_eq!(smart_facts(virt).smart, None);
        assert_eq!(smart_facts(""), SmartFacts::default());
        let bad = smart_facts("{not json");
        assert!(bad
            .smart
            .unwrap()
            .error
            .starts_with("Bad SMART data from drive: "));
    }
}
