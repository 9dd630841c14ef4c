//! Kernel facts for `GET /1.0/debug/kernel`.

use serde::Serialize;

use crate::platform::kernel::KernelFiles;

/// `GET /1.0/debug/kernel`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DebugKernel {
    pub version: String,
    pub architecture: String,
    pub cpu_baseline: String,
    pub modules: Vec<KernelModule>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KernelModule {
    pub name: String,
    pub dependencies: Vec<String>,
    pub in_use: bool,
}

/// Parses `/proc/modules`: `name size refcount users state address`. The fourth field
/// lists the modules that use this one (comma-separated, with a trailing comma, or `-`), so
/// each of those users depends on this module: a module's `dependencies` are the modules
/// whose lines name it. `in_use` is a reference count other than `0`. Modules come sorted
/// by name, dependencies too. `[permanent]` (a module that cannot be unloaded) is a marker,
/// not a module.
pub fn parse_modules(text: &str) -> Vec<KernelModule> {
    use std::collections::BTreeMap;
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut in_use: BTreeMap<String, bool> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [name, _size, refcount, users, ..] = f[..] else {
            continue;
        };
        deps.entry(name.to_string()).or_default();
        in_use.insert(name.to_string(), refcount != "0");
        if users == "-" {
            continue;
        }
        for user in users
            .split(',')
            .filter(|u| !u.is_empty() && !u.starts_with('['))
        {
            deps.entry(user.to_string())
                .or_default()
                .push(name.to_string());
        }
    }
    deps.into_iter()
        .map(|(name, mut dependencies)| {
            dependencies.sort();
            KernelModule {
                in_use: in_use.get(&name).copied().unwrap_or(false),
                name,
                dependencies,
            }
        })
        .collect()
}

/// The x86-64 micro-architecture level (`x86_64_v3`) from the dynamic loader's `--help`:
/// the first level it marks as supported (it lists them best first). `ld_help` is `None`
/// when the loader could not be run (not x86-64): no baseline. A loader that runs but marks
/// no level supported means the base level, `x86_64_v1`.
pub fn parse_cpu_baseline(ld_help: Option<&str>) -> String {
    let Some(help) = ld_help else {
        return String::new();
    };
    help.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let level = f.next()?;
            (level.starts_with("x86-64-v") && f.next()?.starts_with("(supported"))
                .then(|| level.replace('-', "_"))
        })
        .unwrap_or_else(|| "x86_64_v1".to_string())
}

/// Reads the kernel facts; `ld_help` is the loader's `--help` output (`None` when it could
/// not be run).
pub fn kernel(k: &KernelFiles, ld_help: Option<&str>) -> Result<DebugKernel, String> {
    let read = |rel: &str| -> Result<String, String> {
        let p = k.proc_path(rel);
        KernelFiles::read(&p)
            .map_err(|e| format!("{}: {e}", p.display()))?
            .map(|d| String::from_utf8_lossy(&d).trim().to_string())
            .ok_or_else(|| format!("missing {}", p.display()))
    };
    Ok(DebugKernel {
        version: read("sys/kernel/osrelease")?,
        architecture: std::env::consts::ARCH.to_string(),
        cpu_baseline: parse_cpu_baseline(ld_help),
        modules: parse_modules(&read("modules").unwrap_or_default()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_are_the_modules_a_module_uses() {
        // From a real /proc/modules: nf_tables is used by nft_chain_nat and nft_compat;
        // vhci_hcd uses usbip_core.
        let text = "\
nf_tables 364544 2 nft_chain_nat,nft_compat, Live 0x0000000000000000
nft_compat 20480 0 - Live 0x0000000000000000
nft_chain_nat 12288 0 - Live 0x0000000000000000
nf_conntrack 196608 1 nf_nat,[permanent], Live 0x0000000000000000
vhci_hcd 65536 0 - Live 0x0000000000000000
usbip_core 36864 1 vhci_hcd, Live 0x0000000000000000
short line
";
        let m = parse_modules(text);
        let by = |n: &str| m.iter().find(|x| x.name == n).unwrap().clone();
        let names: Vec<&str> = m.iter().map(|x| x.name.as_str()).collect();
        // nf_nat is named only as a user: it is listed (not in use: no line of its own).
        assert_eq!(
            names,
            [
                "nf_conntrack",
                "nf_nat",
                "nf_tables",
                "nft_chain_nat",
                "nft_compat",
                "usbip_core",
                "vhci_hcd"
            ]
        );
        assert!(by("nf_tables").dependencies.is_empty());
        assert!(by("nf_tables").in_use);
        assert_eq!(by("nft_compat").dependencies, ["nf_tables"]);
        assert_eq!(by("nft_chain_nat").dependencies, ["nf_tables"]);
        assert_eq!(by("vhci_hcd").dependencies, ["usbip_core"]);
        assert!(!by("vhci_hcd").in_use);
        assert!(by("usbip_core").dependencies.is_empty());
        assert_eq!(by("nf_nat").dependencies, ["nf_conntrack"]);
        assert!(!by("nf_nat").in_use);
    }

    #[test]
    fn the_baseline_is_the_first_supported_level_with_v1_as_fallback() {
        let help = "\
Subdirectories of glibc-hwcaps directories, in priority order:
  x86-64-v4
  x86-64-v3 (supported, searched)
  x86-64-v2 (supported, searched)
";
        assert_eq!(parse_cpu_baseline(Some(help)), "x86_64_v3");
        assert_eq!(
            parse_cpu_baseline(Some("Usage: ld.so [OPTION]...\n")),
            "x86_64_v1"
        );
        assert_eq!(parse_cpu_baseline(None), "");
    }
}
