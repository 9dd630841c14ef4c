//! PCI, GPU, USB and network devices from sysfs, named from `pci.ids`/`usb.ids`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::types::{
    Gpu, GpuCard, Network, NetworkCard, NetworkPort, Pci, PciDevice, Usb, UsbDevice, UsbInterface,
};
use super::{link_name, list, read_id, read_numa, read_str, read_u64};
use crate::platform::kernel::KernelFiles;

/// A `pci.ids`/`usb.ids` database: vendor names and their products' names by hex id.
#[derive(Debug, Default)]
pub struct IdDatabase {
    vendors: HashMap<String, (String, HashMap<String, String>)>,
}

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

    /// Vendor lines (`8086  Intel Corporation`) and, indented by one tab, their products;
    /// the class lists that follow the vendors (`C 02 ...`) end it.
    pub fn parse(text: &str) -> IdDatabase {
        let mut db = IdDatabase::default();
        let mut vendor: Option<String> = None;
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if line.starts_with("\t\t") {
                continue;
            }
            let Some((id, name)) = line.trim().split_once(char::is_whitespace) else {
                continue;
            };
            let (id, name) = (id.to_ascii_lowercase(), name.trim().to_string());
            if line.starts_with('\t') {
                if let Some(v) = vendor.as_ref().and_then(|v| db.vendors.get_mut(v)) {
                    v.1.insert(id, name);
                }
            } else if id.len() == 4 && id.chars().all(|c| c.is_ascii_hexdigit()) {
                db.vendors.insert(id.clone(), (name, HashMap::new()));
                vendor = Some(id);
            } else {
                break;
            }
        }
        db
    }

    /// (vendor name, product name); empty strings for unknown ids.
    pub fn names(&self, vendor: &str, product: &str) -> (String, String) {
        match self.vendors.get(&vendor.to_ascii_lowercase()) {
            Some((v, products)) => (
                v.clone(),
                products
                    .get(&product.to_ascii_lowercase())
                    .cloned()
                    .unwrap_or_default(),
            ),
            None => Default::default(),
        }
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
        let Ok(real) = std::fs::canonicalize(&device) else {
            continue;
        };
        let card = cards.entry(real.clone()).or_insert_with(|| {
            let subsystem = link_name(&device.join("subsystem"));
            let address = real
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let (vendor_id, product_id) = if subsystem == "usb" {
                (
                    read_id(&device.join("../idVendor")),
                    read_id(&device.join("../idProduct")),
                )
            } else {
                (
                    read_id(&device.join("vendor")),
                    read_id(&device.join("device")),
                )
            };
            let (vendor, product) = ids.names(&vendor_id, &product_id);
            NetworkCard {
                driver: link_name(&device.join("driver")),
                numa_node: read_numa(&device.join("numa_node")),
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
                UsbInterface {
                    class_id: hex("bInterfaceClass"),
                    subclass_id: hex("bInterfaceSubClass"),
                    number: hex("bInterfaceNumber"),
                    driver: link_name(&i.join("driver")),
                    ..Default::default()
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
