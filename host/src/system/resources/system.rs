//! DMI (`/sys/class/dmi/id`) and the load.

use super::read_str;
use super::types::{Chassis, Firmware, Load, Motherboard, System};
use crate::platform::kernel::KernelFiles;

/// The machine as its firmware's DMI tables describe it. `type` is `virtual-machine` when
/// the CPU reports a hypervisor, else `physical`.
pub fn system(kernel: &KernelFiles, cpuinfo: &str) -> System {
    let dmi = kernel.sys_path("class/dmi/id");
    let f = |name: &str| read_str(&dmi.join(name));
    let virtualised = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|w| w == "hypervisor"));
    System {
        uuid: f("product_uuid"),
        vendor: f("sys_vendor"),
        product: f("product_name"),
        family: f("product_family"),
        version: f("product_version"),
        sku: f("product_sku"),
        serial: f("product_serial"),
        kind: if virtualised {
            "virtual-machine"
        } else {
            "physical"
        }
        .into(),
        firmware: Some(Firmware {
            vendor: f("bios_vendor"),
            date: f("bios_date"),
            version: f("bios_version"),
        }),
        chassis: Some(Chassis {
            vendor: f("chassis_vendor"),
            kind: chassis_type(&f("chassis_type")).into(),
            serial: f("chassis_serial"),
            version: f("chassis_version"),
        }),
        motherboard: Some(Motherboard {
            vendor: f("board_vendor"),
            product: f("board_name"),
            serial: f("board_serial"),
            version: f("board_version"),
        }),
    }
}

/// The SMBIOS chassis type names (DMI `chassis_type` is the number).
fn chassis_type(number: &str) -> &'static str {
    const NAMES: [&str; 36] = [
        "Other",
        "Unknown",
        "Desktop",
        "Low Profile Desktop",
        "Pizza Box",
        "Mini Tower",
        "Tower",
        "Portable",
        "Laptop",
        "Notebook",
        "Hand Held",
        "Docking Station",
        "All in One",
        "Sub Notebook",
        "Space-saving",
        "Lunch Box",
        "Main Server Chassis",
        "Expansion Chassis",
        "SubChassis",
        "Bus Expansion Chassis",
        "Peripheral Chassis",
        "RAID Chassis",
        "Rack Mount Chassis",
        "Sealed-case PC",
        "Multi-system chassis",
        "Compact PCI",
        "Advanced TCA",
        "Blade",
        "Blade Enclosure",
        "Tablet",
        "Convertible",
        "Detachable",
        "IoT Gateway",
        "Embedded PC",
        "Mini PC",
        "Stick PC",
    ];
    number
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("")
}

/// `/proc/loadavg`'s 1, 5 and 15 minute averages, and the processes (`/proc/<pid>`).
pub fn load(kernel: &KernelFiles) -> Load {
    let text = read_str(&kernel.proc_path("loadavg"));
    let fields: Vec<&str> = text.split_whitespace().collect();
    let avg = |i: usize| fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    Load {
        average_1: avg(0),
        average_5: avg(1),
        average_15: avg(2),
        processes: super::list(&kernel.proc)
            .iter()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            .count() as i64,
    }
}
