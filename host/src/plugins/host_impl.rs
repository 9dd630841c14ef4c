//! The host handle the daemon gives each plugin: its capabilities, backed by the platform
//! and the state store, each tagged with the plugin's name.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROption, RResult, RSlice, RStr, RString, RVec};
use plugin_api::abi::{
    CommandOutput, CommandSpec, HostHandle, HostOps, HostOps_TO, LogLevel, PluginError, UnitOp,
};
use plugin_api::Manifest;

use crate::platform::files::RootFs;
use crate::platform::systemd::valid_unit_name;
use crate::platform::Platform;
use crate::state::Store;

/// One plugin's view of the host.
pub struct DaemonHost {
    name: String,
    fs: RootFs,
    store: Arc<Mutex<Store>>,
    platform: Platform,
}

impl DaemonHost {
    pub fn handle(
        manifest: &Manifest,
        root: &std::path::Path,
        store: Arc<Mutex<Store>>,
        platform: Platform,
    ) -> HostHandle {
        HostOps_TO::from_value(
            DaemonHost {
                name: manifest.name.clone(),
                fs: RootFs::restricted(root, &manifest.paths),
                store,
                platform,
            },
            TD_Opaque,
        )
    }
}

fn err(message: impl std::fmt::Display) -> PluginError {
    PluginError::new(500, message.to_string())
}

fn to_r<T, E: std::fmt::Display>(r: Result<T, E>) -> RResult<T, PluginError> {
    r.map_err(err).into()
}

impl HostOps for DaemonHost {
    fn log(&self, level: LogLevel, message: RStr<'_>) {
        let (plugin, message) = (self.name.as_str(), message.as_str());
        match level {
            LogLevel::Error => tracing::error!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Trace => tracing::trace!(plugin, "{message}"),
        }
    }

    fn state_load(&self) -> RResult<RString, PluginError> {
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let v = store
            .doc()
            .plugins
            .get(&self.name)
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        RResult::ROk(RString::from(v.to_string()))
    }

    fn state_save(&self, json: RStr<'_>) -> RResult<(), PluginError> {
        let value: serde_json::Value = match serde_json::from_str(json.as_str()) {
            Ok(v) => v,
            Err(e) => return RResult::RErr(err(format!("state is not valid JSON: {e}"))),
        };
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let name = self.name.clone();
        to_r(store.update(|d| {
            d.plugins.insert(name, value);
        }))
    }

    fn file_read(&self, path: RStr<'_>) -> RResult<ROption<RVec<u8>>, PluginError> {
        to_r(
            self.fs
                .read(path.as_str())
                .map(|o| o.map(RVec::from).into()),
        )
    }

    fn file_write(
        &self,
        path: RStr<'_>,
        data: RSlice<'_, u8>,
        mode: u32,
    ) -> RResult<(), PluginError> {
        tracing::debug!(plugin = %self.name, path = path.as_str(), mode = format_args!("{mode:o}"), "write file");
        to_r(self.fs.write(path.as_str(), data.as_slice(), mode))
    }

    fn dir_create(&self, path: RStr<'_>, mode: u32) -> RResult<(), PluginError> {
        to_r(self.fs.create_dir(path.as_str(), mode))
    }

    fn remove(&self, path: RStr<'_>) -> RResult<(), PluginError> {
        tracing::debug!(plugin = %self.name, path = path.as_str(), "remove");
        to_r(self.fs.remove(path.as_str()))
    }

    fn unit(&self, op: UnitOp, unit: RStr<'_>) -> RResult<RString, PluginError> {
        let unit = unit.as_str();
        if op == UnitOp::DaemonReload {
            tracing::info!(plugin = %self.name, "daemon-reload");
            return to_r(self.platform.units.daemon_reload().map(|_| RString::new()));
        }
        if !valid_unit_name(unit) {
            return RResult::RErr(PluginError::new(500, format!("invalid unit name '{unit}'")));
        }
        if op != UnitOp::ActiveState {
            tracing::info!(plugin = %self.name, unit, op = op.as_str(), "unit operation");
        }
        to_r(self.platform.units.unit(op, unit).map(RString::from))
    }

    fn dir_list(&self, path: RStr<'_>) -> RResult<ROption<RVec<RString>>, PluginError> {
        to_r(self.fs.list(path.as_str()).map(|o| {
            o.map(|names| names.into_iter().map(RString::from).collect())
                .into()
        }))
    }

    fn file_stat(
        &self,
        path: RStr<'_>,
    ) -> RResult<ROption<plugin_api::abi::FileStat>, PluginError> {
        to_r(
            self.fs
                .stat(path.as_str())
                .map(|o| o.map(to_abi_stat).into()),
        )
    }

    fn run(&self, spec: CommandSpec) -> RResult<CommandOutput, PluginError> {
        let argv: Vec<String> = spec.argv.iter().map(|a| a.to_string()).collect();
        tracing::debug!(plugin = %self.name, program = argv.first().map(String::as_str).unwrap_or(""), "run command");
        let timeout = Duration::from_millis(spec.timeout_ms.max(1));
        to_r(
            self.platform
                .commands
                .run(&argv, spec.stdin.as_slice(), timeout)
                .map(|o| CommandOutput {
                    status: o.status,
                    stdout: o.stdout.into(),
                    stderr: o.stderr.into(),
                }),
        )
    }
}

/// Converts the root view's stat into the ABI's.
pub fn to_abi_stat(s: crate::platform::files::Stat) -> plugin_api::abi::FileStat {
    use crate::platform::files::StatKind;
    use plugin_api::abi::FileKind;
    plugin_api::abi::FileStat {
        kind: match s.kind {
            StatKind::File => FileKind::File,
            StatKind::Dir => FileKind::Dir,
            StatKind::Symlink => FileKind::Symlink,
            StatKind::Other => FileKind::Other,
        },
        mode: s.mode,
        link_target: RString::from(s.link_target),
    }
}
