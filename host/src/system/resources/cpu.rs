//! CPUs: topology from `/sys/devices/system/cpu`, names and flags from `/proc/cpuinfo`.

use std::collections::{BTreeMap, HashMap, HashSet};

use std::path::Path;

use super::types::{Cpu, CpuAddressSizes, CpuCache, CpuCore, CpuSocket, CpuThread};
use super::{list, read_str, read_u64};
use crate::platform::kernel::KernelFiles;

/// One `/proc/cpuinfo` block's facts, by processor number.
#[derive(Default, Clone)]
struct Info {
    vendor: String,
    name: String,
    flags: Vec<String>,
    mhz: u64,
    address_sizes: Option<CpuAddressSizes>,
}

fn cpuinfo(text: &str) -> HashMap<i64, Info> {
    let mut out = HashMap::new();
    for block in text.split("\n\n") {
        let mut id = None;
        let mut info = Info::default();
        for line in block.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k.trim() {
                "processor" => id = v.parse().ok(),
                "vendor_id" | "CPU implementer" if info.vendor.is_empty() => {
                    info.vendor = v.to_string()
                }
                "model name" | "cpu model" => info.name = v.to_string(),
                "flags" | "Features" => {
                    info.flags = v.split_whitespace().map(String::from).collect()
                }
                // `39 bits physical, 48 bits virtual`
                "address sizes" => {
                    let bits = |kind: &str| {
                        v.split(',')
                            .find(|p| p.trim().ends_with(kind))
                            .and_then(|p| p.split_whitespace().next()?.parse().ok())
                    };
                    if let (Some(p), Some(vb)) = (bits("physical"), bits("virtual")) {
                        info.address_sizes = Some(CpuAddressSizes {
                            physical_bits: p,
                            virtual_bits: vb,
                        });
                    }
                }
                "cpu MHz" => info.mhz = v.parse::<f64>().map(|f| f as u64).unwrap_or(0),
                _ => {}
            }
        }
        if let Some(id) = id {
            out.insert(id, info);
        }
    }
    out
}

/// A CPU's caches (`cache/indexN`): level, type and size in bytes (sysfs says `32K`).
fn caches(dir: &Path) -> Vec<CpuCache> {
    list(dir)
        .iter()
        .filter(|n| n.starts_with("index"))
        .filter_map(|n| {
            let d = dir.join(n);
            let level = read_u64(&d.join("level"))?;
            let size = read_str(&d.join("size"));
            let size = match size.strip_suffix('K') {
                Some(k) => k.parse::<u64>().ok().map(|k| k * 1024),
                None => size.parse().ok(),
            };
            let kind = read_str(&d.join("type"));
            Some(CpuCache {
                level,
                kind: if kind.is_empty() {
                    "Unknown".into()
                } else {
                    kind
                },
                size: size.unwrap_or(0),
            })
        })
        .collect()
}

/// A kernel CPU list (`0-3,8`) as a set.
fn cpu_list(text: &str) -> HashSet<i64> {
    let mut out = HashSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) {
                    out.extend(a..=b);
                }
            }
            None => out.extend(part.parse::<i64>().ok()),
        }
    }
    out
}

/// A socket's cores by (die, cluster, core), each with its threads as (id, NUMA node, MHz).
type Cores = BTreeMap<(u64, u64, u64), Vec<(i64, u64, u64)>>;

/// Sockets, their cores and the cores' threads; `total` counts threads.
pub fn cpu(kernel: &KernelFiles) -> Cpu {
    let base = kernel.sys_path("devices/system/cpu");
    let info = cpuinfo(&std::fs::read_to_string(kernel.proc_path("cpuinfo")).unwrap_or_default());
    let isolated = cpu_list(&read_str(&base.join("isolated")));
    let mut sockets: BTreeMap<u64, Cores> = BTreeMap::new();
    let mut online = HashSet::new();
    let mut total = 0;
    for name in list(&base) {
        let Some(id) = name.strip_prefix("cpu").and_then(|n| n.parse::<i64>().ok()) else {
            continue;
        };
        let dir = base.join(&name);
        let topo = dir.join("topology");
        // cpu0 usually has no `online` file: it cannot be taken offline.
        if read_u64(&dir.join("online")).unwrap_or(1) == 1 {
            online.insert(id);
        }
        let socket = read_u64(&topo.join("physical_package_id")).unwrap_or(0);
        let core = read_u64(&topo.join("core_id")).unwrap_or(id as u64);
        let die = read_u64(&topo.join("die_id")).unwrap_or(0);
        let cluster = read_u64(&topo.join("cluster_id")).unwrap_or(0);
        let numa = list(&dir)
            .iter()
            .find_map(|n| n.strip_prefix("node").and_then(|n| n.parse().ok()))
            .unwrap_or(0);
        // Frequencies in MHz (sysfs says kHz).
        let cur = read_u64(&dir.join("cpufreq/scaling_cur_freq"))
            .map(|k| k / 1000)
            .or_else(|| info.get(&id).map(|i| i.mhz))
            .unwrap_or(0);
        sockets
            .entry(socket)
            .or_default()
            .entry((die, cluster, core))
            .or_default()
            .push((id, numa, cur));
        total += 1;
    }
    let mut out = Cpu {
        architecture: std::env::consts::ARCH.to_string(),
        sockets: Vec::new(),
        total,
    };
    for (socket, cores) in sockets {
        let first = cores.values().next().and_then(|t| t.first()).map(|t| t.0);
        let first_info = first
            .and_then(|id| info.get(&id))
            .cloned()
            .unwrap_or_default();
        let freq_file = |rel: &str| {
            first
                .and_then(|id| read_u64(&base.join(format!("cpu{id}/cpufreq/{rel}"))))
                .map(|k| k / 1000)
                .unwrap_or(0)
        };
        let mut s = CpuSocket {
            name: first_info.name.clone(),
            vendor: first_info.vendor.clone(),
            socket,
            frequency_minimum: freq_file("cpuinfo_min_freq"),
            frequency_turbo: freq_file("cpuinfo_max_freq"),
            cache: first
                .map(|id| caches(&base.join(format!("cpu{id}/cache"))))
                .unwrap_or_default(),
            address_sizes: first_info.address_sizes.clone(),
            ..Default::default()
        };
        let mut freqs = Vec::new();
        for ((die, cluster, core), mut threads) in cores {
            threads.sort();
            let freq = threads.iter().map(|t| t.2).max().unwrap_or(0);
            if freq > 0 {
                freqs.push(freq);
            }
            s.cores.push(CpuCore {
                core,
                cluster,
                die,
                frequency: freq,
                flags: info
                    .get(&threads[0].0)
                    .map(|i| i.flags.clone())
                    .unwrap_or_default(),
                threads: threads
                    .iter()
                    .enumerate()
                    .map(|(n, (id, numa, _))| CpuThread {
                        id: *id,
                        numa_node: *numa,
                        thread: n as u64,
                        online: online.contains(id),
                        isolated: isolated.contains(id),
                    })
                    .collect(),
            });
        }
        if !freqs.is_empty() {
            s.frequency = freqs.iter().sum::<u64>() / freqs.len() as u64;
        }
        out.sockets.push(s);
    }
    out
}
