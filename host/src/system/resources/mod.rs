//! `GET /1.0/system/resources`: the hardware as Incus describes it (`api.Resources`), read
//! from `/proc`, `/sys` (with DMI under `/sys/class/dmi/id`) and, for vendor and product
//! names, the `pci.ids`/`usb.ids` databases under the root prefix. A missing file leaves its
//! field empty; only unreadable `/proc` or `/sys` roots are errors.

mod cpu;
mod devices;
mod memory;
mod storage;
mod system;
pub mod types;

use std::io;
use std::path::Path;

use crate::platform::kernel::KernelFiles;
pub use types::Resources;

pub use cpu::cpu;
pub use devices::{gpu, network, pci, usb, IdDatabase};
pub use memory::memory;
pub use storage::storage;
pub use system::{load, system};

/// Everything, from `kernel`'s `/proc` and `/sys` and the id databases under `root`.
pub fn get(kernel: &KernelFiles, root: &Path) -> io::Result<Resources> {
    for dir in [&kernel.proc, &kernel.sys] {
        std::fs::read_dir(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    }
    let pci_ids = IdDatabase::load(root, "pci.ids");
    let usb_ids = IdDatabase::load(root, "usb.ids");
    let cpuinfo = read_str(&kernel.proc_path("cpuinfo"));
    Ok(Resources {
        cpu: cpu(kernel),
        memory: memory(kernel),
        gpu: gpu(kernel, &pci_ids),
        network: network(kernel, &pci_ids),
        storage: storage(kernel, root),
        usb: usb(kernel, &usb_ids),
        pci: pci(kernel, &pci_ids),
        system: system(kernel, &cpuinfo),
        load: load(kernel),
        serial: Default::default(),
    })
}

/// A file's text, trimmed; empty when missing or unreadable.
fn read_str(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A file holding one unsigned number (decimal, or hex with `0x`).
fn read_u64(path: &Path) -> Option<u64> {
    let s = read_str(path);
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// A NUMA node file (`-1` when the machine has no NUMA): 0 unless a node is named.
fn read_numa(path: &Path) -> u64 {
    read_u64(path).unwrap_or(0)
}

/// The sorted entry names of a directory; empty when missing.
fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort_by_key(|n| natural(n));
    names
}

/// Sort key putting `cpu2` before `cpu10`.
fn natural(s: &str) -> (String, u64, String) {
    let head: String = s.chars().take_while(|c| !c.is_ascii_digit()).collect();
    let digits: String = s[head.len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let rest = s[head.len() + digits.len()..].to_string();
    (head, digits.parse().unwrap_or(0), rest)
}

/// The last component of a symlink's target (a device's `driver`, `subsystem`, ...).
fn link_name(path: &Path) -> String {
    std::fs::read_link(path)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// A sysfs hex id without its `0x` (`0x8086` → `8086`).
fn read_id(path: &Path) -> String {
    let s = read_str(path);
    s.strip_prefix("0x").unwrap_or(&s).to_string()
}
