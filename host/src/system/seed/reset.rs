//! `POST /1.0/system/:factory-reset`: the machine starts over from its seeds.
//!
//! Order: everything checked and the new seed archive built (nothing changed yet), every
//! plugin's factory-reset hook, the archive written over the seed partition (partition 2 of
//! the boot disk), the TPM cleared, the swtpm state and the Secure Boot opt-out removed,
//! partitions 9, 10 and 11 (swap, root, local-data) deleted, the disks synced; the answer
//! goes out, and a second later the hard reboot (`b` to `/proc/sysrq-trigger`). A step
//! that fails ends the reset there: when the seed write fails, nothing else is done.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use plugin_api::{Hook, Kind};
use serde::Deserialize;
use serde_json::Value;

use super::{build_archive, device, partition_path, read_archive, SeedFiles, EXTENSIONS};
use crate::api::{ApiError, App};

/// The partitions a reset deletes (swap, root, local-data); first boot recreates them.
pub const DATA_PARTITIONS: [u32; 3] = [9, 10, 11];
/// How long after the answer the machine hard-reboots.
pub const REBOOT_DELAY: Duration = Duration::from_secs(1);
/// The hard reboot's trigger (under the root prefix).
pub const SYSRQ_TRIGGER: &str = "proc/sysrq-trigger";

/// The request body (`SystemReset`); unknown fields are ignored, as upstream.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ResetRequest {
    pub allow_tpm_reset_failure: bool,
    pub seeds: BTreeMap<String, Value>,
    pub wipe_existing_seeds: bool,
}

/// Checks the provided seeds: each is a JSON object under a plain file name. Returns them
/// as archive entries (`<name>.json`).
pub fn provided_seeds(seeds: &BTreeMap<String, Value>) -> Result<SeedFiles, String> {
    let mut out = vec![];
    for (name, value) in seeds {
        let plain = !name.is_empty()
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !plain {
            return Err(format!("seed name {name:?} is not a valid file name"));
        }
        match value {
            Value::Null => return Err(format!("seed data for '{name}' is not defined")),
            Value::Object(_) => {}
            _ => return Err(format!("seed data for '{name}' is not a JSON object")),
        }
        let bytes = serde_json::to_vec(value).map_err(|e| e.to_string())?;
        out.push((format!("{name}.json"), bytes));
    }
    Ok(out)
}

/// The new seed set: the existing files (unless wiping) without any
/// `<name>.json|yaml|yml` of a provided seed, then the provided ones.
pub fn merge(existing: SeedFiles, provided: SeedFiles, wipe: bool) -> SeedFiles {
    let mut out: SeedFiles = if wipe {
        vec![]
    } else {
        let replaced: Vec<String> = provided
            .iter()
            .flat_map(|(f, _)| {
                let name = f.trim_end_matches(".json").to_string();
                EXTENSIONS.iter().map(move |e| format!("{name}.{e}"))
            })
            .collect();
        existing
            .into_iter()
            .filter(|(f, _)| !replaced.contains(f))
            .collect()
    };
    out.extend(provided);
    out
}

/// Writes `archive` over the start of the partition at `path` (a block device; a file in
/// tests) and flushes it to the disk.
fn write_partition(path: &Path, archive: &[u8]) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    f.write_all(archive)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Every plugin's part in a factory reset, before anything else changes: installed
/// applications are stopped and their data wiped (as `:factory-reset` does, without the
/// start that follows it there), and any plugin declaring [`Hook::FactoryReset`] runs it.
/// A failure is logged and the reset goes on (the data partitions go anyway).
pub async fn run_plugin_hooks(app: &App) {
    use crate::system::applications::manage;
    let plugins: Vec<_> = app.registry.start_order();
    for plugin in plugins {
        let installed =
            plugin.manifest.kind == Kind::Application && manage::record(app, &plugin).is_some();
        let result = if installed && plugin.manifest.has(Hook::Wipe) {
            match manage::call(app, &plugin, Hook::Stop).await {
                Ok(_) => manage::call(app, &plugin, Hook::Wipe).await.map(drop),
                Err(e) => Err(e),
            }
        } else if plugin.manifest.has(Hook::FactoryReset)
            && (plugin.manifest.kind != Kind::Application || installed)
        {
            let input = if plugin.manifest.kind == Kind::Application {
                serde_json::to_vec(&manage::context(app, &plugin)).unwrap_or_default()
            } else {
                b"{}".to_vec()
            };
            plugin
                .hook(Hook::FactoryReset, input.into())
                .await
                .map(drop)
        } else {
            continue;
        };
        match result {
            Ok(()) => tracing::info!(plugin = %plugin.name(), "plugin factory reset done"),
            Err(e) => tracing::error!(
                plugin = %plugin.name(),
                error = %e.message,
                "plugin factory reset failed; the system reset goes on"
            ),
        }
    }
}

/// Carries out a factory reset up to (not including) the reboot. Errors are the API's.
pub async fn reset(app: &Arc<App>, request: ResetRequest) -> Result<(), ApiError> {
    let provided = provided_seeds(&request.seeds).map_err(ApiError::bad_request)?;
    let disk = crate::system::update::runner::install_disk(app)
        .map_err(|e| ApiError::internal(format!("cannot find the boot disk: {e}")))?
        .display()
        .to_string();
    let seed_os_path = partition_path(&disk, super::SEED_PARTITION);
    let seed_dev = device(&app.root, &seed_os_path).ok_or_else(|| {
        ApiError::internal(format!("the seed partition {seed_os_path} does not exist"))
    })?;
    let existing = if request.wipe_existing_seeds {
        vec![]
    } else {
        read_archive(&seed_dev)
            .map_err(|e| ApiError::internal(format!("cannot read the existing seeds: {e}")))?
            .unwrap_or_default()
    };
    let archive = build_archive(&merge(existing, provided, request.wipe_existing_seeds))
        .map_err(ApiError::internal)?;
    // One reset at a time, and no recovery-key change while it runs.
    let _change = app.security.change.lock().await;
    tracing::warn!(disk = %disk, "factory reset requested");

    run_plugin_hooks(app).await;

    let app2 = app.clone();
    let allow_tpm_failure = request.allow_tpm_reset_failure;
    tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
        let app = app2;
        write_partition(&seed_dev, &archive)
            .map_err(|e| ApiError::internal(format!("cannot write the seeds: {e}")))?;
        let cleared = app.security.open_tpm(&app.root).and_then(|mut t| t.clear());
        match cleared {
            Ok(()) => tracing::info!("TPM cleared"),
            Err(e) if allow_tpm_failure => {
                tracing::warn!(error = %e, "cannot clear the TPM; going on as asked")
            }
            Err(e) => return Err(ApiError::internal(format!("cannot reset the TPM: {e}"))),
        }
        remove(&app.root.join("boot/swtpm"))?;
        remove(&app.root.join("boot/sb-disabled"))?;
        let mut argv = vec!["sgdisk".to_string()];
        for n in DATA_PARTITIONS {
            argv.extend(["-d".to_string(), n.to_string()]);
        }
        argv.push(disk);
        crate::system::security::luks::run(&*app.platform.commands, &argv, b"")
            .map_err(ApiError::internal)?;
        rustix::fs::sync();
        Ok(())
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(())
}

/// Removes a file or a directory tree; a missing one is fine.
fn remove(path: &Path) -> Result<(), ApiError> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(|e| ApiError::internal(format!("cannot remove {}: {e}", path.display())))
}

/// The hard reboot, [`REBOOT_DELAY`] after the answer: `b` written to the root's
/// `/proc/sysrq-trigger` (no unit stops, nothing is saved: the data partitions are gone).
pub fn schedule_hard_reboot(root: &Path) {
    let trigger = root.join(SYSRQ_TRIGGER);
    tokio::spawn(async move {
        tokio::time::sleep(REBOOT_DELAY).await;
        tracing::warn!("factory reset: rebooting now");
        if let Err(e) = std::fs::write(&trigger, b"b") {
            tracing::error!(path = %trigger.display(), error = %e, "cannot trigger the reboot");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn files(names: &[&str]) -> SeedFiles {
        names
            .iter()
            .map(|n| (n.to_string(), b"x".to_vec()))
            .collect()
    }

    #[test]
    fn provided_seeds_must_be_objects() {
        let ok = provided_seeds(&BTreeMap::from([(
            "incus".into(),
            json!({"apply_defaults": true}),
        )]))
        .unwrap();
        assert_eq!(
            ok,
            vec![(
                "incus.json".to_string(),
                br#"{"apply_defaults":true}"#.to_vec()
            )]
        );
        let e = provided_seeds(&BTreeMap::from([("network".into(), Value::Null)])).unwrap_err();
        assert_eq!(e, "seed data for 'network' is not defined");
        let e = provided_seeds(&BTreeMap::from([("network".into(), json!([1]))])).unwrap_err();
        assert_eq!(e, "seed data for 'network' is not a JSON object");
        for bad in ["../x", ".hidden", "a/b", ""] {
            assert!(
                provided_seeds(&BTreeMap::from([(bad.into(), json!({}))])).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn provided_seeds_replace_every_extension_of_their_name_unless_wiping() {
        let existing = files(&["network.yaml", "incus.yml", "incus.json", "update.json"]);
        let provided = files(&["incus.json"]);
        let names = |f: SeedFiles| f.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(
            names(merge(existing.clone(), provided.clone(), false)),
            ["network.yaml", "update.json", "incus.json"]
        );
        assert_eq!(names(merge(existing, provided, true)), ["incus.json"]);
    }
}
