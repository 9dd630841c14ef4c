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

/// Parses `/proc/modules`: `name size refcount deps state address`, deps comma-separated
/// (with a trailing comma) or `-`.
pub fn parse_modules(text: &str) -> Vec<KernelModule> {
    let mut v: Vec<KernelModule> = text
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let name = f.next()?.to_string();
            let _size = f.next()?;
            let refcount: i64 = f.next()?.parse().ok()?;
            let deps = f.next().unwrap_or("-");
            let dependencies = if deps == "-" {
                vec![]
            } else {
                deps.split(',')
                    .filter(|d| !d.is_empty())
                    .map(str::to_string)
                    .collect()
            };
            Some(KernelModule {
                name,
                dependencies,
                in_use: refcount > 0,
            })
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// The highest x86-64 micro-architecture level the dynamic loader reports as supported
/// (`ld-linux-x86-64.so.2 --help` lists `x86-64-vN (supported, searched)`).
pub fn parse_cpu_baseline(ld_help: &str) -> String {
    ld_help
        .lines()
        .filter(|l| l.contains("(supported"))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.starts_with("x86-64-v"))
        .max()
        .unwrap_or_default()
        .to_string()
}

/// Reads the kernel facts; `ld_help` is the loader's `--help` output (empty off x86-64).
pub fn kernel(k: &KernelFiles, ld_help: &str) -> Result<DebugKernel, String> {
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
    fn modules_are_parsed_from_a_real_proc_modules() {
        let text = "\
nf_tables 364544 2 nft_chain_nat,nft_compat, Live 0x0000000000000000
vhci_hcd 65536 0 - Live 0x0000000000000000
usbip_core 36864 1 vhci_hcd, Live 0x0000000000000000
";
        let m = parse_modules(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].name, "nf_tables");
        assert_eq!(m[0].dependencies, ["nft_chain_nat", "nft_compat"]);
        assert!(m[0].in_use);
        let vhci = m.iter().find(|x| x.name == "vhci_hcd").unwrap();
        assert!(!vhci.in_use && vhci.dependencies.is_empty());
    }

    #[test]
    fn the_baseline_is_the_highest_supported_level() {
        let help = "\
Subdirectories of glibc-hwcaps directories, in priority order:
  x86-64-v4
  x86-64-v3 (supported, searched)
  x86-64-v2 (supported, searched)
";
        assert_eq!(parse_cpu_baseline(help), "x86-64-v3");
        assert_eq!(parse_cpu_baseline(""), "");
    }
}
