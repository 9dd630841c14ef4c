//! PCI, GPU, USB and network devices from sysfs, named from `pci.ids`/`usb.ids`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::types::{
    Gpu, GpuCard, Network, NetworkCard, NetworkPort, Pci, PciDevice, Usb, UsbDevice, UsbInterface,
};
use super::{link_name, list, read_id, read_numa, read_str, read_u64};
use crate::platform::kernel::KernelFiles;

/// A `pci.ids`/`usb.ids` database: vendors and device classes, each with its entries one
/// tab in (products, subclasses), by lower-case hex id.
#[derive(Debug, Default)]
pub struct IdDatabase {
    vendors: Names,
    classes: Names,
}

type Names = HashMap<String, (String, HashMap<String, String>)>;

impl IdDatabase {
    /// Where distributions put the databases, under the root prefix.
    const DIRS: [&'static str; 3] = ["usr/share/hwdata", "usr/share/misc", "usr/share"];

    /// The first `name` found under `root`; empty when there is none.
    pub fn load(root: &Path, name: &str) -> IdDatabase {
        Self::DIRS
            .iter()
            .find_map(|d| std::fs::read(root.join(d).join(name)).ok())
            .map(|b| IdDatabase::parse(&String::from_utf8_lossy(&b)))
            .unwrap_or_default()
    }

    /// Vendor lines (`8086  Intel Corporation`) and class lines (`C 03  Display
    /// controller`), with their entries indented by one tab; other sections are skipped.
    pub fn parse(text: &str) -> IdDatabase {
        let mut db = IdDatabase::default();
        // (is a class, id) of the section the indented lines belong to.
        let mut current: Option<(bool, String)> = None;
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() || line.starts_with("\t\t") {
                continue;
            }
            let (is_class, rest) = match line.strip_prefix("C ") {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let Some((id, name)) = rest.trim().split_once(char::is_whitespace) else {
                continue;
            };
            let (id, name) = (id.to_ascii_lowercase(), name.trim().to_string());
            if line.starts_with('\t') {
                let Some((class, parent)) = &current else {
                    continue;
                };
                let table = if *class {
                    &mut db.classes
                } else {
                    &mut db.vendors
                };
                if let Some(entry) = table.get_mut(parent) {
                    entry.1.insert(id, name);
                }
            } else if is_class || (id.len() == 4 && id.chars().all(|c| c.is_ascii_hexdigit())) {
                let table = if is_class {
                    &mut db.classes
                } else {
                    &mut db.vendors
                };
                table.insert(id.clone(), (name, HashMap::new()));
                current = Some((is_class, id));
            } else {
                current = None;
            }
        }
        db
    }

    fn lookup(table: &Names, id: &str, sub: &str) -> (String, String) {
        match table.get(&id.to_ascii_lowercase()) {
            Some((v, entries)) => (
                v.clone(),
                entries
                    .get(&sub.to_ascii_lowercase())
                    .cloned()
                    .unwrap_or_default(),
            ),
            None => Default::default(),
        }
    }

    /// (vendor name, product name); empty strings for unknown ids.
    pub fn names(&self, vendor: &str, product: &str) -> (String, String) {
        Self::lookup(&self.vendors, vendor, product)
    }

    /// (class name, subclass name) of two-digit hex ids; empty strings for unknown ones.
    pub fn class_names(&self, class: &str, subclass: &str) -> (String, String) {
        Self::lookup(&self.classes, class, subclass)
    }
}

/// A PCI function's directory under `/sys/bus/pci/devices`.
fn pci_device(dir: &Path, ids: &IdDatabase) -> PciDevice {
    let vendor_id = read_id(&dir.join("vendor"));
    let product_id = read_id(&dir.join("device"));
    let (vendor, product) = ids.names(&vendor_id, &product_id);
    PciDevice {
        driver: link_name(&dir.join("driver")),
        driver_version: read_str(&dir.join("driver/module/version")),
        numa_node: read_numa(&dir.join("numa_node")),
        pci_address: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        vendor,
        vendor_id,
        product,
        product_id,
        iommu_group: link_name(&dir.join("iommu_group")).parse().unwrap_or(0),
        vpd: Default::default(),
    }
}

fn pci_dirs(kernel: &KernelFiles) -> Vec<PathBuf> {
    let base = kernel.sys_path("bus/pci/devices");
    list(&base).into_iter().map(|n| base.join(n)).collect()
}

pub fn pci(kernel: &KernelFiles, ids: &IdDatabase) -> Pci {
    let devices: Vec<PciDevice> = pci_dirs(kernel)
        .iter()
        .map(|d| pci_device(d, ids))
        .collect();
    Pci {
        total: devices.len() as u64,
        devices,
    }
}

/// Display controllers (PCI class 0x03).
pub fn gpu(kernel: &KernelFiles, ids: &IdDatabase) -> Gpu {
    let cards: Vec<GpuCard> = pci_dirs(kernel)
        .iter()
        .filter(|d| read_str(&d.join("class")).starts_with("0x03"))
        .map(|d| {
            let p = pci_device(d, ids);
            GpuCard {
                driver: p.driver,
                driver_version: p.driver_version,
                numa_node: p.numa_node,
                pci_address: p.pci_address,
                vendor: p.vendor,
                vendor_id: p.vendor_id,
                product: p.product,
                product_id: p.product_id,
            }
        })
        .collect();
    Gpu {
        total: cards.len() as u64,
        cards,
    }
}

/// Interfaces backed by a device (`/sys/class/net/<name>/device`), one card per device
/// with its interfaces as ports.
pub fn network(kernel: &KernelFiles, ids: &IdDatabase) -> Network {
    let base = kernel.sys_path("class/net");
    let mut cards: BTreeMap<PathBuf, NetworkCard> = BTreeMap::new();
    for name in list(&base) {
        let dir = base.join(&name);
        let device = dir.join("device");
        let Ok(mut real) = std::fs::canonicalize(&device) else {
            continue;
        };
        let driver = link_name(&device.join("driver"));
        let driver_version = read_str(&device.join("driver/module/version"));
        // A virtio NIC's device is on the virtio bus; the card is its PCI parent.
        if link_name(&real.join("subsystem")) == "virtio" {
            if let Some(parent) = real.parent() {
                real = parent.to_path_buf();
            }
        }
        let card = cards.entry(real.clone()).or_insert_with(|| {
            let subsystem = link_name(&real.join("subsystem"));
            let address = real
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // A USB NIC's device is an interface; the ids are its USB device's.
            let (vendor_id, product_id) = match real.parent() {
                Some(usb) if subsystem == "usb" => (
                    read_id(&usb.join("idVendor")),
                    read_id(&usb.join("idProduct")),
                ),
                _ => (read_id(&real.join("vendor")), read_id(&real.join("device"))),
            };
            let (vendor, product) = ids.names(&vendor_id, &product_id);
            NetworkCard {
                driver,
                driver_version,
                numa_node: read_numa(&real.join("numa_node")),
                pci_address: if subsystem == "pci" {
                    address.clone()
                } else {
                    String::new()
                },
                usb_address: if subsystem == "usb" {
                    address
                } else {
                    String::new()
                },
                vendor,
                vendor_id,
                product,
                product_id,
                ..Default::default()
            }
        });
        // ARPHRD_INFINIBAND is 32; everything else here is treated as Ethernet.
        let protocol = if read_u64(&dir.join("type")) == Some(32) {
            "infiniband"
        } else {
            "ethernet"
        };
        let speed = read_str(&dir.join("speed"));
        card.ports.push(NetworkPort {
            address: read_str(&dir.join("address")),
            port: read_u64(&dir.join("dev_port")).unwrap_or(0),
            protocol: protocol.into(),
            auto_negotiation: false,
            link_detected: read_u64(&dir.join("carrier")) == Some(1),
            link_speed: speed.parse::<u64>().unwrap_or(0),
            link_duplex: read_str(&dir.join("duplex")),
            id: name,
        });
    }
    let cards: Vec<NetworkCard> = cards.into_values().collect();
    Network {
        total: cards.len() as u64,
        cards,
    }
}

/// USB devices (`/sys/bus/usb/devices/<bus>-<port>`, not their `:` interfaces).
pub fn usb(kernel: &KernelFiles, ids: &IdDatabase) -> Usb {
    let base = kernel.sys_path("bus/usb/devices");
    let names = list(&base);
    let mut devices = Vec::new();
    for name in names.iter().filter(|n| !n.contains(':')) {
        let dir = base.join(name);
        let vendor_id = read_str(&dir.join("idVendor"));
        if vendor_id.is_empty() {
            continue;
        }
        let product_id = read_str(&dir.join("idProduct"));
        let (vendor, product) = ids.names(&vendor_id, &product_id);
        let interfaces = names
            .iter()
            .filter(|n| n.starts_with(&format!("{name}:")))
            .map(|n| {
                let i = base.join(n);
                let hex = |f: &str| u64::from_str_radix(&read_str(&i.join(f)), 16).unwrap_or(0);
                let (class, subclass) = ids.class_names(
                    &read_str(&i.join("bInterfaceClass")),
                    &read_str(&i.join("bInterfaceSubClass")),
                );
                UsbInterface {
                    class,
                    class_id: hex("bInterfaceClass"),
                    subclass,
                    subclass_id: hex("bInterfaceSubClass"),
                    number: hex("bInterfaceNumber"),
                    driver: link_name(&i.join("driver")),
                    driver_version: read_str(&i.join("driver/module/version")),
                }
            })
            .collect();
        devices.push(UsbDevice {
            bus_address: read_u64(&dir.join("busnum")).unwrap_or(0),
            device_address: read_u64(&dir.join("devnum")).unwrap_or(0),
            serial: read_str(&dir.join("serial")),
            interfaces,
            vendor,
            vendor_id,
            product,
            product_id,
            speed: read_str(&dir.join("speed")).parse().unwrap_or(0.0),
        });
    }
    Usb {
        total: devices.len() as u64,
        devices,
    }
}
