//! The `gpu-support` application: GPU firmware, merged into `/usr/lib/firmware` as any
//! application image.
//!
//! Start reloads the GPU drivers already loaded ([`MODULES`]), so that they pick up the
//! firmware the image brings: for each module present under `/sys/module/`, every PCI
//! device bound to it (an entry of `/sys/bus/pci/drivers/<module>/` named like
//! `0000:03:00.0`) is unbound by writing its address to the driver's `unbind` file, then
//! `rmmod <module>` and `modprobe <module>`. Every step is best effort, as upstream's: a
//! failure is logged and the start goes on (a device that cannot be unbound does not stop
//! the others; a module that cannot be unloaded is not loaded again).
//!
//! It always counts as running, so an update reloads it (nothing to do) rather than
//! starting it again. No backup, no wipe (`:backup`, `:restore` and `:factory-reset` answer
//! `not supported`). The config is `{}`.
//!
//! Friendly version: the firmware bundle's version ([`FIRMWARE_VERSION`]) with the image
//! version, `20251111 [202511041800]`; when the file cannot be read, a warning is logged and
//! the host shows the image version.

use std::io::Write;

use incus_osd_application_common::version::with_image_version;
use incus_osd_application_common::COMMAND_TIMEOUT;
use plugin_api::abi::OpenFlags;
use plugin_api::application::AppContext;
use plugin_api::{Application, Error, Host, Result, Undo};
use serde::{Deserialize, Serialize};

/// The GPU drivers reloaded at start, in this order.
pub const MODULES: [&str; 5] = ["amdgpu", "i915", "intel_vpu", "nouveau", "xe"];

/// The file holding the firmware bundle's version.
pub const FIRMWARE_VERSION: &str = "/usr/lib/firmware/linux-firmware-gpu-version";

/// What the plugin writes: the `unbind` file of each driver in [`MODULES`], nothing else.
pub const PATHS: [&str; 5] = [
    "/sys/bus/pci/drivers/amdgpu/unbind",
    "/sys/bus/pci/drivers/i915/unbind",
    "/sys/bus/pci/drivers/intel_vpu/unbind",
    "/sys/bus/pci/drivers/nouveau/unbind",
    "/sys/bus/pci/drivers/xe/unbind",
];

/// The config: no keys (anything else is refused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

pub struct GpuSupport {
    host: Host,
}

/// The directory of a driver's bound devices.
fn driver_dir(module: &str) -> String {
    format!("/sys/bus/pci/drivers/{module}")
}

/// Whether a driver directory's entry is a bound device (a PCI address such as
/// `0000:03:00.0`), not one of the driver's own files (`bind`, `module`, `new_id`, ...).
pub fn is_pci_address(name: &str) -> bool {
    name.contains(':') && name.contains('.')
}

impl GpuSupport {
    /// Unbinds the device at `address` from `module`'s driver.
    fn unbind(&self, module: &str, address: &str) -> Result<()> {
        let path = format!("{}/unbind", driver_dir(module));
        let Some(mut file) = self.host.open(&path, OpenFlags::WRITE, 0)? else {
            return Err(Error::internal(format!("{path} does not exist")));
        };
        file.write_all(address.as_bytes())
            .map_err(|e| Error::internal(format!("cannot write {path}: {e}")))
    }

    /// Reloads `module` if it is loaded: its devices unbound, then unloaded and loaded
    /// again. Failures are logged, never returned.
    fn reload_module(&self, module: &str) {
        let warn = |what: &str, e: &Error| {
            self.host
                .warn(&format!("{what} (module {module}): {}", e.message));
        };
        match self.host.exists(&format!("/sys/module/{module}")) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => return warn("Failed to check kernel module", &e),
        }
        let devices = match self.host.list_dir(&driver_dir(module)) {
            Ok(entries) => entries.unwrap_or_default(),
            Err(e) => return warn("Failed to check kernel module", &e),
        };
        for address in devices.iter().filter(|n| is_pci_address(n)) {
            if let Err(e) = self.unbind(module, address) {
                warn(&format!("Failed to unbind device {address}"), &e);
            }
        }
        if let Err(e) = self.host.run_ok(&["rmmod", module], COMMAND_TIMEOUT) {
            return warn("Failed to unload kernel module", &e);
        }
        if let Err(e) = self.host.run_ok(&["modprobe", module], COMMAND_TIMEOUT) {
            return warn("Failed to load kernel module", &e);
        }
        self.host.info(&format!("Reloaded kernel module {module}"));
    }

    fn firmware_version(&self) -> Result<String> {
        let text = self.host.read_to_string(FIRMWARE_VERSION)?;
        let version = text.as_deref().map(str::trim).unwrap_or_default();
        if version.is_empty() {
            return Err(Error::internal(format!(
                "{FIRMWARE_VERSION} is missing or empty"
            )));
        }
        Ok(version.to_string())
    }
}

impl Application for GpuSupport {
    const NAME: &'static str = "gpu-support";
    /// Before the primary application, as upstream's.
    const START_WEIGHT: i32 = -1;
    const PATHS: &'static [&'static str] = &PATHS;

    type Config = Config;

    fn new(host: Host) -> Result<Self> {
        Ok(GpuSupport { host })
    }

    fn friendly_version(&self, ctx: &AppContext, _config: &Config) -> Result<String> {
        match self.firmware_version() {
            Ok(v) => Ok(with_image_version(&v, &ctx.version)),
            Err(e) => {
                self.host.warn(&format!(
                    "Cannot read the GPU firmware version: {}",
                    e.message
                ));
                Ok(String::new())
            }
        }
    }

    /// Reloads the loaded GPU drivers ([`MODULES`]); never fails.
    fn start(&self, _undo: &mut Undo, _ctx: &AppContext, _config: &Config) -> Result<()> {
        for module in MODULES {
            self.reload_module(module);
        }
        Ok(())
    }

    /// Always: the firmware is there as long as the image is merged.
    fn running(&self, _ctx: &AppContext, _config: &Config) -> Result<bool> {
        Ok(true)
    }
}

plugin_api::export_application!(GpuSupport);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writable_paths_are_the_unbind_files_of_the_modules() {
        let expected: Vec<String> = MODULES
            .iter()
            .map(|m| format!("{}/unbind", driver_dir(m)))
            .collect();
        assert_eq!(PATHS.to_vec(), expected);
    }

    #[test]
    fn only_pci_addresses_are_devices() {
        assert!(is_pci_address("0000:03:00.0"));
        for name in ["bind", "unbind", "new_id", "remove_id", "module", "uevent"] {
            assert!(!is_pci_address(name), "{name}");
        }
    }
}
