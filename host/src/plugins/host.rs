//! The host handle the daemon gives each plugin: the shared `HostOps` implementation
//! (`plugin_host::PluginHost`) over the daemon's real adapters.

use std::path::Path;
use std::sync::{Arc, Mutex};

use plugin_api::abi::HostHandle;
use plugin_api::Manifest;
use plugin_host::{Adapters, PlatformError, PluginHost, StateSlot, TracingLog};
use serde_json::Value;

use crate::platform::files::RootFs;
use crate::platform::Platform;
use crate::state::Store;

/// Plugins' state documents, kept in the daemon's state store under `plugins`, by slot key
/// (`plugin_host::state_key`: `<name>` for a service, `<kind>/<name>` for the others).
pub struct StoreSlot(pub Arc<Mutex<Store>>);

impl StateSlot for StoreSlot {
    fn load(&self, slot: &str) -> Result<Value, PlatformError> {
        let store = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Ok(store
            .doc()
            .plugins
            .get(slot)
            .cloned()
            .unwrap_or(Value::Null))
    }

    fn save(&self, slot: &str, value: Value) -> Result<(), PlatformError> {
        let mut store = self.0.lock().unwrap_or_else(|p| p.into_inner());
        store
            .update(|d| {
                d.plugins.insert(slot.to_string(), value);
            })
            .map_err(|e| PlatformError(e.to_string()))
    }
}

/// The adapters behind a plugin's handle: files under `root` limited to the manifest's
/// paths, the platform's systemd and commands, the state store, `tracing`, the network
/// client (unix sockets and `file://` downloads resolved under `root`).
pub fn adapters(
    manifest: &Manifest,
    root: &Path,
    store: Arc<Mutex<Store>>,
    platform: &Platform,
    progress: Arc<dyn plugin_host::net::Progress>,
) -> Adapters {
    Adapters {
        files: Arc::new(RootFs::restricted(root, &manifest.paths)),
        units: platform.units.clone(),
        commands: platform.commands.clone(),
        state: Arc::new(StoreSlot(store)),
        log: Arc::new(TracingLog),
        net: Arc::new(plugin_host::net::Client::new(root)),
        progress,
    }
}

/// The host handle for a plugin.
pub fn handle(
    manifest: &Manifest,
    root: &Path,
    store: Arc<Mutex<Store>>,
    platform: &Platform,
    progress: Arc<dyn plugin_host::net::Progress>,
) -> HostHandle {
    PluginHost::plugin_handle(
        manifest,
        adapters(manifest, root, store, platform, progress),
    )
}
