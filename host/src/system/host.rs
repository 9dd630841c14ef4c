//! A host handle for the daemon's own subsystems (logging today; network and storage next),
//! so that they change the machine through the same SDK [`Host`] and [`Undo`] journal as
//! plugins: a half-failed change is put back the same way everywhere.
//!
//! The handle is the one `HostOps` implementation plugins get
//! ([`plugin_host::PluginHost`]), named `incus-osd/<subsystem>`, over the platform's units
//! and commands, with writes limited to the paths the subsystem declares.
//!
//! [`Undo`]: plugin_api::Undo

use std::path::Path;
use std::sync::Arc;

use plugin_api::sdk::Host;
use plugin_host::{Adapters, PlatformError, PluginHost, StateSlot, TracingLog};
use serde_json::Value;

use crate::platform::files::RootFs;
use crate::platform::Platform;

/// The name host handles carry, before the subsystem's.
pub const NAME: &str = "incus-osd";

/// A host subsystem: its name (in log lines) and the OS paths it may write.
#[derive(Debug, Clone, Copy)]
pub struct Subsystem {
    pub name: &'static str,
    pub writable: &'static [&'static str],
}

/// Host subsystems keep their state in the daemon's state document, not in a plugin slot.
struct NoSlot;

impl StateSlot for NoSlot {
    fn load(&self, owner: &str) -> Result<Value, PlatformError> {
        Err(no_slot(owner))
    }
    fn save(&self, owner: &str, _: Value) -> Result<(), PlatformError> {
        Err(no_slot(owner))
    }
}

fn no_slot(owner: &str) -> PlatformError {
    PlatformError(format!(
        "{owner} keeps its state in the daemon's state document, not in a plugin state slot"
    ))
}

/// The SDK host for `subsystem`: files under `root` (writes limited to its paths), the
/// platform's units and commands (offline under a dev root, as for plugins).
pub fn handle(root: &Path, platform: &Platform, subsystem: &Subsystem) -> Host {
    let writable: Vec<String> = subsystem.writable.iter().map(|p| p.to_string()).collect();
    let adapters = Adapters {
        files: Arc::new(RootFs::restricted(root, &writable)),
        units: platform.units.clone(),
        commands: platform.commands.clone(),
        state: Arc::new(NoSlot),
        // Tagged like plugins' lines: `plugin=incus-osd/<subsystem>`.
        log: Arc::new(TracingLog),
        net: Arc::new(plugin_host::net::NoNet),
        progress: Arc::new(plugin_host::net::NoProgress),
    };
    let name = format!("{NAME}/{}", subsystem.name);
    Host::from_handle(PluginHost::handle(&name, &name, adapters))
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::Undo;

    const DEMO: Subsystem = Subsystem {
        name: "demo",
        writable: &["/etc/demo"],
    };

    #[test]
    fn undo_works_in_host_code_within_the_subsystems_paths() {
        let root = tempfile::tempdir().unwrap();
        let host = handle(root.path(), &Platform::for_root(root.path()), &DEMO);
        std::fs::create_dir_all(root.path().join("etc/demo")).unwrap();
        std::fs::write(root.path().join("etc/demo/a.conf"), "old").unwrap();

        let mut undo = Undo::new(&host);
        undo.write_file("/etc/demo/a.conf", b"new", 0o644).unwrap();
        undo.write_file("/etc/demo/b.conf", b"new", 0o644).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/demo/a.conf")).unwrap(),
            "new"
        );
        // Outside the declared paths: refused, nothing written.
        let e = undo.write_file("/etc/passwd", b"x", 0o644).unwrap_err();
        assert!(e.message.contains("outside"), "{e:?}");
        assert!(!root.path().join("etc/passwd").exists());
        // Units are the platform's: offline here, and they say so.
        let e = undo.restart_unit("demo.service").unwrap_err();
        assert!(e.message.contains("systemd is not reachable"), "{e:?}");

        undo.rollback();
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/demo/a.conf")).unwrap(),
            "old"
        );
        assert!(!root.path().join("etc/demo/b.conf").exists());
    }

    #[test]
    fn host_subsystems_have_no_plugin_state_slot() {
        let root = tempfile::tempdir().unwrap();
        let host = handle(root.path(), &Platform::for_root(root.path()), &DEMO);
        let e = host.load_state::<Value>().unwrap_err();
        assert!(
            e.message.contains("incus-osd/demo keeps its state"),
            "{e:?}"
        );
    }
}
