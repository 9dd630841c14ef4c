//! Kernel settings (`/1.0/system/kernel`): blacklisted modules, sysctl values, PCI
//! passthrough to `vfio-pci`, SR-IOV virtual functions, zram swap and the CPU frequency
//! governor.
//!
//! A change is checked in full before anything is touched ([`validate`], reading the
//! kernel's facts under the platform's `/proc` and `/sys`), then applied step by step in
//! an [`Undo`] journal through the subsystem's own host handle: config files are
//! journaled, and every sysfs value written registers a compensation that writes the
//! previous value back. A step that fails puts back everything done before it, and the
//! config is stored only once every step succeeded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use plugin_api::sdk::{self, Host};
use plugin_api::Undo;
use serde::{Deserialize, Serialize};

use super::host::{self, Subsystem};
use crate::platform::kernel::KernelFiles;
use crate::platform::{Mode, Platform};

pub const BLACKLIST_CONF: &str = "/etc/modprobe.d/99-blacklist-modules.conf";
pub const SYSCTL_CONF: &str = "/etc/sysctl.d/99-local-sysctl.conf";
/// The file older releases wrote; removed whenever the sysctl file is written.
pub const LEGACY_SYSCTL_CONF: &str = "/etc/sysctl.d/99-local-network-sysctl.conf";
pub const PASSTHROUGH_CONF: &str = "/etc/modprobe.d/99-local-device-passthrough.conf";
pub const SYSCTL_UNIT: &str = "systemd-sysctl.service";

const TIMEOUT: Duration = Duration::from_secs(60);

/// The kernel subsystem's host handle writes only its three config files (and the legacy
/// one it removes).
pub const SUBSYSTEM: Subsystem = Subsystem {
    name: "kernel",
    writable: &[
        BLACKLIST_CONF,
        SYSCTL_CONF,
        LEGACY_SYSCTL_CONF,
        PASSTHROUGH_CONF,
    ],
};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KernelConfig {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub console: Vec<Console>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blacklist_modules: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pci: Option<Pci>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Console {
    pub device: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub baud_rate: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cpu {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scaling_governor: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Memory {
    pub persistent_hugepages: i64,
    pub zram_swap_size: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Network {
    #[serde(skip_serializing_if = "is_zero")]
    pub buffer_size: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub netdev_max_backlog: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub queuing_discipline: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tcp_congestion_algorithm: String,
    #[serde(skip_serializing_if = "is_false")]
    pub tcp_mtu_probing: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pci {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub passthrough: Vec<Passthrough>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sriov: Vec<Sriov>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Passthrough {
    pub vendor_id: String,
    pub product_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pci_address: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sriov {
    pub pci_address: String,
    pub vf_count: i64,
}

/// The live part of `/1.0/system/kernel`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KernelState {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryState>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MemoryState {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zram_swap: Option<ZramSwap>,
}

/// Sizes in bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ZramSwap {
    pub disk_size: i64,
    /// Upstream's spelling of the key.
    pub incompressed_size: i64,
    pub compressed_size: i64,
    pub compression_ratio: f64,
    pub total_memory_use: i64,
}

/// The zram swap device's statistics from `/sys/block/zram0` (`disksize`, and `mm_stat`:
/// original data, compressed data, memory used), `None` when there is no such device.
pub fn state(kernel: &KernelFiles) -> Result<KernelState, String> {
    let dir = kernel.sys_path("block/zram0");
    let read = |name: &str| -> Result<Option<String>, String> {
        let p = dir.join(name);
        KernelFiles::read(&p)
            .map(|d| d.map(|d| String::from_utf8_lossy(&d).into_owned()))
            .map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let Some(disksize) = read("disksize")? else {
        return Ok(KernelState::default());
    };
    let num = |s: &str| -> Result<i64, String> {
        s.trim()
            .parse::<i64>()
            .map_err(|_| format!("unexpected zram statistic '{}'", s.trim()))
    };
    let disk_size = num(&disksize)?;
    let mm = read("mm_stat")?.unwrap_or_default();
    let fields: Vec<&str> = mm.split_whitespace().collect();
    let field = |i: usize| fields.get(i).map_or(Ok(0), |f| num(f));
    let (data, compr, total) = (field(0)?, field(1)?, field(2)?);
    let ratio = if total > 0 {
        data as f64 / total as f64
    } else {
        0.0
    };
    Ok(KernelState {
        memory: Some(MemoryState {
            zram_swap: Some(ZramSwap {
                disk_size,
                incompressed_size: data,
                compressed_size: compr,
                compression_ratio: ratio,
                total_memory_use: total,
            }),
        }),
    })
}

/// Parses a size such as `4GiB`, `512MB`, `1000` (bytes) into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid zram swap size '{s}'");
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit {
        "" | "B" => 1.0,
        "kB" | "KB" | "K" => 1e3,
        "MB" | "M" => 1e6,
        "GB" | "G" => 1e9,
        "TB" | "T" => 1e12,
        "PB" | "P" => 1e15,
        "KiB" => 1024.0,
        "MiB" => 1024f64.powi(2),
        "GiB" => 1024f64.powi(3),
        "TiB" => 1024f64.powi(4),
        "PiB" => 1024f64.powi(5),
        _ => return Err(bad()),
    };
    let bytes = n * mult;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit())
}

fn read_text(p: &Path) -> Result<Option<String>, String> {
    KernelFiles::read(p)
        .map(|d| d.map(|d| String::from_utf8_lossy(&d).into_owned()))
        .map_err(|e| format!("cannot read {}: {e}", p.display()))
}

/// `[a b c]`, as upstream lists the allowed values.
fn listed(v: &[&str]) -> String {
    format!("[{}]", v.join(" "))
}

/// Checks a config against itself and this machine's kernel, in upstream's order, before
/// anything is touched.
pub fn validate(c: &KernelConfig, kernel: &KernelFiles) -> Result<(), String> {
    let mem = c.memory.clone().unwrap_or_default();
    let net = c.network.clone().unwrap_or_default();
    if mem.persistent_hugepages < 0 {
        return Err("persistent hugepages count cannot be negative".into());
    }
    if net.buffer_size < 0 {
        return Err("buffer size cannot be negative".into());
    }
    if net.netdev_max_backlog < 0 {
        return Err("netdev max backlog cannot be negative".into());
    }
    if !net.tcp_congestion_algorithm.is_empty() {
        let p = kernel.proc_path("sys/net/ipv4/tcp_available_congestion_control");
        let text = read_text(&p)?.unwrap_or_default();
        let available: Vec<&str> = text.split_whitespace().collect();
        if !available.contains(&net.tcp_congestion_algorithm.as_str()) {
            return Err(format!(
                "unsupported tcp_congestion_control value, must be one of {}",
                listed(&available)
            ));
        }
    }
    let pci = c.pci.clone().unwrap_or_default();
    for p in &pci.passthrough {
        if !is_hex(&p.vendor_id) {
            return Err(format!("Vendor ID '{}' is invalid", p.vendor_id));
        }
        if !is_hex(&p.product_id) {
            return Err(format!("Product ID '{}' is invalid", p.product_id));
        }
        if !valid_pci_address(&p.pci_address) {
            return Err(format!("PCI address '{}' is invalid", p.pci_address));
        }
    }
    for s in &pci.sriov {
        if s.vf_count < 0 {
            return Err("SR-IOV virtual function count cannot be negative".into());
        }
        let dev = pci_device(kernel, &s.pci_address);
        if s.pci_address.is_empty() || !valid_pci_address(&s.pci_address) || !dev.exists() {
            return Err(format!("PCI device \"{}\" not found", s.pci_address));
        }
        let Some(total) = read_text(&dev.join("sriov_totalvfs"))? else {
            return Err(format!(
                "PCI device \"{}\" doesn't support SR-IOV",
                s.pci_address
            ));
        };
        let max: i64 = total.trim().parse().map_err(|_| {
            format!(
                "PCI device \"{}\" reports an unreadable sriov_totalvfs '{}'",
                s.pci_address,
                total.trim()
            )
        })?;
        if s.vf_count > max {
            return Err(format!(
                "PCI device \"{}\" supports at most {max} SR-IOV virtual functions",
                s.pci_address
            ));
        }
    }
    if !mem.zram_swap_size.is_empty() {
        parse_size(&mem.zram_swap_size)?;
    }
    let governor = c.cpu.as_ref().map_or("", |c| c.scaling_governor.as_str());
    if !governor.is_empty() {
        let p = kernel.sys_path("devices/system/cpu/cpu0/cpufreq/scaling_available_governors");
        let Some(text) = read_text(&p)? else {
            return Err("CPU frequency scaling isn't available on this system".into());
        };
        let available: Vec<&str> = text.split_whitespace().collect();
        if !available.contains(&governor) {
            return Err(format!(
                "unsupported scaling governor, must be one of {}",
                listed(&available)
            ));
        }
    }
    Ok(())
}

/// An empty address (none given) or `dddd:bb:dd.f` of hex digits: nothing that could leave
/// `/sys/bus/pci/devices`.
fn valid_pci_address(a: &str) -> bool {
    a.is_empty()
        || (a.len() <= 32
            && a.chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.'))
}

fn pci_device(kernel: &KernelFiles, address: &str) -> PathBuf {
    kernel.sys_path("bus/pci/devices").join(address)
}

/// `99-blacklist-modules.conf`, `None` when no module is blacklisted.
pub fn render_blacklist(c: &KernelConfig) -> Option<String> {
    let lines: String = c
        .blacklist_modules
        .iter()
        .filter(|m| !m.is_empty())
        .map(|m| format!("blacklist {m}\n"))
        .collect();
    (!c.blacklist_modules.is_empty()).then_some(lines)
}

/// `99-local-sysctl.conf`: always written, so that clearing a value brings back the
/// kernel's default.
pub fn render_sysctl(c: &KernelConfig) -> String {
    let mem = c.memory.clone().unwrap_or_default();
    let net = c.network.clone().unwrap_or_default();
    let mut s = format!("vm.nr_hugepages = {}\n", mem.persistent_hugepages);
    if net.buffer_size != 0 {
        let b = net.buffer_size;
        s += &format!(
            "net.ipv4.tcp_rmem = 4096 65536 {b}\nnet.ipv4.tcp_wmem = 4096 65536 {b}\n\
             net.core.rmem_max = {b}\nnet.core.wmem_max = {b}\n"
        );
    }
    let backlog = if net.netdev_max_backlog == 0 {
        1000
    } else {
        net.netdev_max_backlog
    };
    s += &format!("net.core.netdev_max_backlog = {backlog}\n");
    s += &format!(
        "net.ipv4.tcp_mtu_probing = {}\n",
        u8::from(net.tcp_mtu_probing)
    );
    if !net.queuing_discipline.is_empty() {
        s += &format!("net.core.default_qdisc = {}\n", net.queuing_discipline);
    }
    if !net.tcp_congestion_algorithm.is_empty() {
        s += &format!(
            "net.ipv4.tcp_congestion_control = {}\n",
            net.tcp_congestion_algorithm
        );
    }
    s
}

/// `99-local-device-passthrough.conf`, `None` without passthrough devices.
pub fn render_passthrough(c: &KernelConfig) -> Option<String> {
    let list = &c.pci.as_ref()?.passthrough;
    if list.is_empty() {
        return None;
    }
    let ids: Vec<String> = list
        .iter()
        .map(|p| format!("{}:{}", p.vendor_id, p.product_id))
        .collect();
    Some(format!("options vfio-pci ids={}\n", ids.join(",")))
}

/// Writes a sysfs or procfs value (an existing file, never created; the kernel ignores
/// the truncation, stand-ins in tests need it).
fn write_kernel_value(path: &Path, value: &str) -> sdk::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| sdk::Error::internal(format!("cannot write {}: {e}", path.display())))
}

/// Writes `value` to a kernel file and journals a write of `previous` back.
fn write_journaled(undo: &mut Undo, path: &Path, value: &str, previous: String) -> sdk::Result<()> {
    write_kernel_value(path, value)?;
    let p = path.to_path_buf();
    undo.on_rollback(&format!("restore {}", path.display()), move |_| {
        write_kernel_value(&p, &previous)
    });
    Ok(())
}

fn run(host: &Host, argv: &[&str]) -> sdk::Result<String> {
    host.run_ok(argv, TIMEOUT)
}

/// Every step of a change, in upstream's order, journaled in `undo`.
fn steps(
    undo: &mut Undo,
    host: &Host,
    root: &Path,
    kernel: &KernelFiles,
    c: &KernelConfig,
) -> sdk::Result<()> {
    // Blacklisted modules, each unloaded if it can be (a module in use stays loaded).
    match render_blacklist(c) {
        None => undo.remove(BLACKLIST_CONF)?,
        Some(text) => {
            undo.write_file(BLACKLIST_CONF, text.as_bytes(), 0o644)?;
            for m in c.blacklist_modules.iter().filter(|m| !m.is_empty()) {
                if let Err(e) = host.run_ok(&["/sbin/rmmod", m], TIMEOUT) {
                    tracing::debug!(module = %m, error = %e.message, "module not unloaded");
                }
            }
        }
    }

    // sysctl values, loaded by systemd-sysctl.
    undo.remove(LEGACY_SYSCTL_CONF)?;
    undo.write_file(SYSCTL_CONF, render_sysctl(c).as_bytes(), 0o644)?;
    undo.restart_unit(SYSCTL_UNIT)?;

    // The passthrough file follows the config even without a `pci` part (upstream leaves
    // it as it was then).
    let pci = c.pci.clone().unwrap_or_default();
    passthrough(undo, kernel, c, &pci)?;
    for s in &pci.sriov {
        sriov(undo, kernel, s)?;
    }

    if let Some(mem) = &c.memory {
        zram(host, root, kernel, &mem.zram_swap_size)?;
    }

    let governor = c.cpu.as_ref().map_or("", |c| c.scaling_governor.as_str());
    if !governor.is_empty() {
        for path in governor_files(kernel)? {
            let previous = read_text(&path)
                .map_err(sdk::Error::internal)?
                .unwrap_or_default();
            write_journaled(undo, &path, &format!("{governor}\n"), previous)?;
        }
    }
    Ok(())
}

/// The passthrough file, then each device with an address is unbound from its driver and
/// its IDs given to `vfio-pci` (best effort, as upstream: a device that cannot be moved
/// now is bound to `vfio-pci` at the next boot). Rollback binds it back to its driver.
fn passthrough(
    undo: &mut Undo,
    kernel: &KernelFiles,
    c: &KernelConfig,
    pci: &Pci,
) -> sdk::Result<()> {
    match render_passthrough(c) {
        None => return undo.remove(PASSTHROUGH_CONF),
        Some(text) => undo.write_file(PASSTHROUGH_CONF, text.as_bytes(), 0o644)?,
    }
    for p in pci.passthrough.iter().filter(|p| !p.pci_address.is_empty()) {
        let dev = pci_device(kernel, &p.pci_address);
        let driver = std::fs::read_link(dev.join("driver"))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
        let Some(driver) = driver.filter(|d| d != "vfio-pci") else {
            continue;
        };
        if let Err(e) =
            write_kernel_value(&dev.join("driver/unbind"), &format!("{}\n", p.pci_address))
        {
            tracing::warn!(device = %p.pci_address, error = %e.message, "cannot unbind the device");
            continue;
        }
        let bind = kernel
            .sys_path("bus/pci/drivers")
            .join(&driver)
            .join("bind");
        let address = p.pci_address.clone();
        undo.on_rollback(&format!("bind {address} back to {driver}"), move |_| {
            write_kernel_value(&bind, &format!("{address}\n"))
        });
        let new_id = kernel.sys_path("bus/pci/drivers/vfio-pci/new_id");
        let ids = format!("{} {}\n", p.vendor_id, p.product_id);
        if let Err(e) = write_kernel_value(&new_id, &ids) {
            tracing::warn!(device = %p.pci_address, error = %e.message, "cannot hand the device to vfio-pci");
            continue;
        }
        let remove_id = kernel.sys_path("bus/pci/drivers/vfio-pci/remove_id");
        undo.on_rollback("remove the vfio-pci id", move |_| {
            write_kernel_value(&remove_id, &ids)
        });
    }
    Ok(())
}

/// Sets a device's virtual function count (through 0: the kernel changes it only from 0).
/// Rollback sets the previous count back the same way.
fn sriov(undo: &mut Undo, kernel: &KernelFiles, s: &Sriov) -> sdk::Result<()> {
    let path = pci_device(kernel, &s.pci_address).join("sriov_numvfs");
    let current = read_text(&path)
        .map_err(sdk::Error::internal)?
        .unwrap_or_default()
        .trim()
        .to_string();
    let wanted = s.vf_count.to_string();
    if current == wanted {
        return Ok(());
    }
    if current != "0" {
        write_kernel_value(&path, "0\n")?;
    }
    let p = path.clone();
    undo.on_rollback(&format!("restore {}", path.display()), move |_| {
        write_kernel_value(&p, "0\n")?;
        if current != "0" && !current.is_empty() {
            write_kernel_value(&p, &format!("{current}\n"))?;
        }
        Ok(())
    });
    write_kernel_value(&path, &format!("{wanted}\n"))
}

/// Every CPU's `cpufreq/scaling_governor`, in CPU order.
fn governor_files(kernel: &KernelFiles) -> sdk::Result<Vec<PathBuf>> {
    let dir = kernel.sys_path("devices/system/cpu");
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| sdk::Error::internal(format!("cannot list {}: {e}", dir.display())))?;
    let mut cpus: Vec<(u32, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: u32 = name.strip_prefix("cpu")?.parse().ok()?;
            let f = e.path().join("cpufreq/scaling_governor");
            f.exists().then_some((n, f))
        })
        .collect();
    cpus.sort();
    Ok(cpus.into_iter().map(|(_, p)| p).collect())
}

/// zram swap of `size` (empty: left as it is; zero: removed), as upstream: the device is
/// reset and set up again. Not journaled: swap that was turned off is not turned back on.
fn zram(host: &Host, root: &Path, kernel: &KernelFiles, size: &str) -> sdk::Result<()> {
    if size.is_empty() {
        return Ok(());
    }
    let bytes = parse_size(size).map_err(sdk::Error::internal)?;
    run(host, &["modprobe", "zram"])?;
    if root.join("dev/zram0").exists() || kernel.sys_path("block/zram0").exists() {
        let swaps = read_text(&kernel.proc_path("swaps"))
            .map_err(sdk::Error::internal)?
            .unwrap_or_default();
        if swaps.contains("/dev/zram0") {
            run(host, &["swapoff", "/dev/zram0"])?;
        }
        zramctl(host, &["--reset", "/dev/zram0"])?;
    }
    if bytes == 0 {
        return Ok(());
    }
    zramctl(host, &["--find"])?;
    let size = bytes.to_string();
    zramctl(
        host,
        &["/dev/zram0", "--algorithm", "zstd", "--size", &size],
    )?;
    run(host, &["mkswap", "/dev/zram0"])?;
    run(host, &["swapon", "--priority", "100", "/dev/zram0"])?;
    Ok(())
}

/// `zramctl`, tried up to ten times: it often answers "Device or resource busy" at first.
fn zramctl(host: &Host, args: &[&str]) -> sdk::Result<String> {
    let mut argv = vec!["zramctl"];
    argv.extend_from_slice(args);
    let mut last = None;
    for attempt in 0..10 {
        match run(host, &argv) {
            Ok(out) => return Ok(out),
            Err(e) => last = Some(e),
        }
        if attempt < 9 {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Err(last.unwrap_or_else(|| sdk::Error::internal("zramctl failed")))
}

/// One kernel change at a time, whoever makes it (a PUT, start-up).
static CHANGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Refuses at once, before anything is touched, where the machine is not this one's to
/// change (a dev or test root without commands) or systemd cannot be driven.
pub fn require_live(platform: &Platform) -> Result<(), String> {
    if let Mode::Offline(why) = &platform.mode {
        return Err(format!("cannot apply the kernel configuration: {why}"));
    }
    platform
        .units
        .reachable()
        .map_err(|e| format!("cannot restart {SYSCTL_UNIT}: {e}"))
}

/// Applies `c` (validated by the caller), then `save`s it. If any step fails, `save`
/// included, everything done is put back and the error returned.
pub async fn change(
    root: PathBuf,
    platform: Platform,
    c: KernelConfig,
    save: impl FnOnce(&KernelConfig) -> Result<(), String> + Send + 'static,
) -> Result<(), String> {
    let guard = CHANGES.lock().await;
    tokio::task::spawn_blocking(move || {
        let _guard = guard;
        // Checked again under the lock: the machine may have changed since.
        validate(&c, &platform.kernel)?;
        let host = host::handle(&root, &platform, &SUBSYSTEM);
        let mut undo = Undo::new(&host);
        steps(&mut undo, &host, &root, &platform.kernel, &c).map_err(|e| e.message)?;
        save(&c)?;
        undo.commit();
        Ok(())
    })
    .await
    .map_err(|e| format!("the kernel change crashed: {e}"))?
}

/// Applies the stored config at start; what is done is kept even if a step fails.
/// Start-up's console step (upstream's, before the API): every configured console with a
/// baud rate gets it (`stty -F <device> <baud>`). Returns what failed, one line each;
/// upstream stops its start on the first failure, here the others still get theirs and
/// the daemon goes on.
pub fn set_console_speeds(
    cmds: &dyn crate::platform::exec::Commands,
    consoles: &[Console],
) -> Vec<String> {
    let mut failed = vec![];
    for c in consoles.iter().filter(|c| c.baud_rate != 0) {
        let argv = vec![
            "/usr/bin/stty".to_string(),
            "-F".to_string(),
            c.device.clone(),
            c.baud_rate.to_string(),
        ];
        match cmds.run(&argv, b"", Duration::from_secs(10)) {
            Ok(out) if out.status == 0 => {}
            Ok(out) => failed.push(format!(
                "{}: {}",
                c.device,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => failed.push(format!("{}: {}", c.device, e.0)),
        }
    }
    failed
}

pub async fn apply_stored(
    root: PathBuf,
    platform: Platform,
    c: KernelConfig,
) -> Result<(), String> {
    let guard = CHANGES.lock().await;
    tokio::task::spawn_blocking(move || {
        let _guard = guard;
        validate(&c, &platform.kernel)?;
        let host = host::handle(&root, &platform, &SUBSYSTEM);
        Undo::kept(&host, |undo| {
            steps(undo, &host, &root, &platform.kernel, &c)
        })
        .map_err(|e| e.message)
    })
    .await
    .map_err(|e| format!("the kernel change crashed: {e}"))?
}

#[cfg(test)]
mod tests;
