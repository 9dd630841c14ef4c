//! `/proc/meminfo` and the NUMA nodes' `meminfo`.

use std::collections::HashMap;

use super::types::{Memory, MemoryNode};
use super::{list, read_str};
use crate::platform::kernel::KernelFiles;

/// `key → value` of a meminfo text, in the file's unit (kB for sizes). Node files prefix
/// each line with `Node N`.
fn parse(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let l = match l.strip_prefix("Node ") {
                Some(rest) => rest.split_once(' ')?.1,
                None => l,
            };
            let (k, v) = l.split_once(':')?;
            let n = v.split_whitespace().next()?.parse().ok()?;
            Some((k.trim().to_string(), n))
        })
        .collect()
}

/// Totals in bytes; used is total minus free, page cache and buffers.
pub fn memory(kernel: &KernelFiles) -> Memory {
    let info = parse(&read_str(&kernel.proc_path("meminfo")));
    let kb = |k: &str| info.get(k).copied().unwrap_or(0) * 1024;
    let n = |k: &str| info.get(k).copied().unwrap_or(0);
    let total = kb("MemTotal");
    let page = kb("Hugepagesize");
    let mut nodes = Vec::new();
    let node_dir = kernel.sys_path("devices/system/node");
    for name in list(&node_dir) {
        let Some(id) = name.strip_prefix("node").and_then(|n| n.parse().ok()) else {
            continue;
        };
        let ni = parse(&read_str(&node_dir.join(&name).join("meminfo")));
        let g = |k: &str| ni.get(k).copied().unwrap_or(0);
        nodes.push(MemoryNode {
            numa_node: id,
            hugepages_used: g("HugePages_Total").saturating_sub(g("HugePages_Free")) * page,
            hugepages_total: g("HugePages_Total") * page,
            used: g("MemUsed") * 1024,
            total: g("MemTotal") * 1024,
        });
    }
    Memory {
        nodes,
        hugepages_total: n("HugePages_Total") * page,
        hugepages_used: n("HugePages_Total").saturating_sub(n("HugePages_Free")) * page,
        hugepages_size: page,
        used: total
            .saturating_sub(kb("MemFree"))
            .saturating_sub(kb("Cached"))
            .saturating_sub(kb("Buffers")),
        total,
    }
}
