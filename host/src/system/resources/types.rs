//! The `GET /1.0/system/resources` document, in Incus's `api.Resources` field names.

use serde::Serialize;

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Resources {
    pub cpu: Cpu,
    pub memory: Memory,
    pub gpu: Gpu,
    pub network: Network,
    pub storage: Storage,
    pub usb: Usb,
    pub pci: Pci,
    pub system: System,
    pub load: Load,
    pub serial: Serial,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Cpu {
    pub architecture: String,
    pub sockets: Vec<CpuSocket>,
    pub total: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CpuSocket {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vendor: String,
    pub socket: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cache: Vec<CpuCache>,
    pub cores: Vec<CpuCore>,
    #[serde(skip_serializing_if = "is_zero")]
    pub frequency: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub frequency_minimum: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub frequency_turbo: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address_sizes: Option<CpuAddressSizes>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CpuAddressSizes {
    pub physical_bits: u64,
    pub virtual_bits: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CpuCache {
    pub level: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub size: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CpuCore {
    pub core: u64,
    pub cluster: u64,
    pub die: u64,
    pub threads: Vec<CpuThread>,
    #[serde(skip_serializing_if = "is_zero")]
    pub frequency: u64,
    pub flags: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CpuThread {
    pub id: i64,
    pub numa_node: u64,
    pub thread: u64,
    pub online: bool,
    pub isolated: bool,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Memory {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<MemoryNode>,
    pub hugepages_total: u64,
    pub hugepages_used: u64,
    pub hugepages_size: u64,
    pub used: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct MemoryNode {
    pub numa_node: u64,
    pub hugepages_used: u64,
    pub hugepages_total: u64,
    pub used: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Gpu {
    pub cards: Vec<GpuCard>,
    pub total: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct GpuCard {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub driver: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub driver_version: String,
    pub numa_node: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pci_address: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vendor: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vendor_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub product: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub product_id: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Network {
    pub cards: Vec<NetworkCard>,
    pub total: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct NetworkCard {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub driver: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub driver_version: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPort>,
    pub numa_node: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pci_address: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vendor: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vendor_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub product: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub product_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub usb_address: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct NetworkPort {
    pub id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub address: String,
    pub port: u64,
    pub protocol: String,
    pub auto_negotiation: bool,
    pub link_detected: bool,
    #[serde(skip_serializing_if = "is_zero")]
    pub link_speed: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub link_duplex: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Storage {
    pub disks: Vec<Disk>,
    pub total: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Disk {
    pub id: String,
    pub device: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub model: String,
    #[serde(rename = "type", skip_serializing_if = "String::is_empty")]
    pub kind: String,
    pub read_only: bool,
    pub size: u64,
    pub removable: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub wwn: String,
    pub numa_node: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub device_path: String,
    pub block_size: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub firmware_version: String,
    pub rpm: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub serial: String,
    pub device_id: String,
    pub partitions: Vec<Partition>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pci_address: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Partition {
    pub id: String,
    pub device: String,
    pub read_only: bool,
    pub size: u64,
    pub partition: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Usb {
    pub devices: Vec<UsbDevice>,
    pub total: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct UsbDevice {
    pub bus_address: u64,
    pub device_address: u64,
    pub serial: String,
    pub interfaces: Vec<UsbInterface>,
    pub vendor: String,
    pub vendor_id: String,
    pub product: String,
    pub product_id: String,
    pub speed: f64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct UsbInterface {
    pub class: String,
    pub class_id: u64,
    pub driver: String,
    pub driver_version: String,
    pub number: u64,
    pub subclass: String,
    pub subclass_id: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Pci {
    pub devices: Vec<PciDevice>,
    pub total: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PciDevice {
    pub driver: String,
    pub driver_version: String,
    pub numa_node: u64,
    pub pci_address: String,
    pub vendor: String,
    pub vendor_id: String,
    pub product: String,
    pub product_id: String,
    pub iommu_group: u64,
    pub vpd: PciVpd,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PciVpd {}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct System {
    pub uuid: String,
    pub vendor: String,
    pub product: String,
    pub family: String,
    pub version: String,
    pub sku: String,
    pub serial: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub firmware: Option<Firmware>,
    pub chassis: Option<Chassis>,
    pub motherboard: Option<Motherboard>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Firmware {
    pub vendor: String,
    pub date: String,
    pub version: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Chassis {
    pub vendor: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub serial: String,
    pub version: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Motherboard {
    pub vendor: String,
    pub product: String,
    pub serial: String,
    pub version: String,
}

/// Incus's load section has no JSON tags, so its keys are the Go field names (the third
/// average is the 15-minute one despite its name).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Load {
    #[serde(rename = "Average1Min")]
    pub average_1: f64,
    #[serde(rename = "Average5Min")]
    pub average_5: f64,
    #[serde(rename = "Average10Min")]
    pub average_15: f64,
    #[serde(rename = "Processes")]
    pub processes: i64,
}

/// Serial devices are not scanned: always empty.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Serial {
    pub devices: Vec<serde_json::Value>,
    pub total: u64,
}
