//! Recovery mode: a volume labelled `RESCUE_DATA` (a USB stick, an ISO) found at start-up.
//!
//! At every start the daemon looks for `/dev/disk/by-partlabel/RESCUE_DATA`, then
//! `/dev/disk/by-label/RESCUE_DATA` (under its root prefix). When one is there it is read
//! in process as FAT, else ISO 9660 ([`crate::platform::volume`]; upstream mounts it
//! read-only as vfat, then iso9660: reading it needs no mount and no file system in the
//! kernel, and cannot write to it), and:
//!
//! 1. `hotfix.sh.sig`, a script signed through the support CA, is verified and run as
//!    `POST /1.0/debug/:run-script` runs one ([`crate::system::script`]); its output is
//!    logged.
//! 2. `update/update.sjson`, an update's description signed through the update CA, is
//!    verified; an update older than the running release is refused; each listed file for
//!    this architecture (or for any) must match its SHA-256 and is gunzipped (`.gz`) or
//!    copied into the debug provider's directory (`/root/updates`), with a `RELEASE` file
//!    naming the version. A missing file is skipped; at least one must be there. On any
//!    error the directory is removed again.
//!
//! Later in start-up, where the start-up update check
//! runs (the services and the storage are up, as installing an application needs them),
//! [`apply_prepared_update`] selects the `debug` provider, runs a start-up check through
//! the update engine (which stages an OS update and reboots into it, and installs or
//! updates applications), restores the selected provider and removes the directory.
//!
//! Failures are logged; the daemon always goes on starting (a recovery volume that fails
//! must not keep the machine from booting).

use std::io::Read;
use std::path::{Path, PathBuf};

use incus_osd_provider_common::signature::Names;
use incus_osd_provider_common::trust::UPDATE_CA_PATH;
use incus_osd_provider_common::Update;
use sha2::{Digest as _, Sha256};

use crate::api::App;
use crate::platform::exec::Commands;
use crate::platform::files::RootFs;
use crate::platform::volume::{self, Volume};
use crate::system::script;
use crate::system::update::versions;

#[cfg(test)]
mod tests;

/// The volume's label (a GPT partition label or a file system label).
pub const LABEL: &str = "RESCUE_DATA";
/// Where the debug provider reads its release (its `DEBUG_PATH`).
pub const UPDATES_DIR: &str = "/root/updates";
/// The signed script on the volume.
pub const HOTFIX: &str = "hotfix.sh.sig";
/// The signed update description on the volume.
pub const UPDATE_SJSON: &str = "update/update.sjson";

const UPDATE_NAMES: Names = Names {
    message: "recovery update",
    ca: "update CA",
};

/// The recovery volume's device under `root`, if there is one.
pub fn find_device(root: &Path) -> Option<PathBuf> {
    ["by-partlabel", "by-label"]
        .iter()
        .map(|by| root.join("dev/disk").join(by).join(LABEL))
        .find(|p| p.exists())
}

/// Opens the recovery volume on `device` for reading, in process (FAT or ISO 9660; see
/// [`crate::platform::volume`]): nothing is mounted and nothing can be written to it.
pub fn open(device: &Path) -> Result<Box<dyn Volume>, String> {
    volume::open(device).map_err(|e| format!("cannot read the recovery volume: {e}"))
}

/// Verifies and runs the volume's `hotfix.sh.sig` when there is one; returns its output.
pub fn run_hotfix(
    cmds: &dyn Commands,
    root: &Path,
    volume: &dyn Volume,
) -> Result<Option<String>, String> {
    let signed = match volume.read(HOTFIX, script::BODY_LIMIT as u64) {
        Ok(Some(data)) => data,
        Ok(None) => return Ok(None),
        Err(e) => return Err(format!("cannot read {HOTFIX}: {e}")),
    };
    tracing::info!("the recovery volume holds a hotfix script, verifying its signature");
    script::run_signed(cmds, root, &signed)
        .map(Some)
        .map_err(|e| e.status_and_message().1)
}

/// Verifies the volume's `update/update.sjson` and brings the update's files for `arch`
/// (`x86_64`, `aarch64`) into [`UPDATES_DIR`] under `root` with a `RELEASE` file. Returns
/// the update's version, `None` when the volume holds no update. An update older than
/// `running` is refused. On an error nothing is left in [`UPDATES_DIR`].
pub fn prepare_update(
    cmds: &dyn Commands,
    root: &Path,
    volume: &dyn Volume,
    running: &str,
    arch: &str,
) -> Result<Option<String>, String> {
    let signed = match volume.read(UPDATE_SJSON, script::BODY_LIMIT as u64) {
        Ok(Some(data)) => data,
        Ok(None) => return Ok(None),
        Err(e) => return Err(format!("cannot read {UPDATE_SJSON}: {e}")),
    };
    tracing::info!("the recovery volume holds an update, verifying its signature");
    let content = script::verify_with(cmds, root, &signed, UPDATE_CA_PATH, UPDATE_NAMES)
        .map_err(|e| e.status_and_message().1)?;
    let update: Update = serde_json::from_slice(&content)
        .map_err(|e| format!("the recovery update is not valid: {e}"))?;
    if !versions::is_version(&update.version) {
        return Err(format!(
            "the recovery update has an invalid version {:?}",
            update.version
        ));
    }
    if versions::is_newer(running, &update.version) {
        return Err(format!(
            "refusing to apply update version ({}) that is older than the running version ({running})",
            update.version
        ));
    }
    tracing::info!(version = %update.version, "checking and copying the recovery update's files");
    let fs = RootFs::new(root);
    let copied = copy_files(&fs, volume, &update, arch);
    let result = copied.and_then(|n| {
        if n == 0 {
            return Err("the recovery volume holds none of the update's files".to_string());
        }
        fs.write(
            &format!("{UPDATES_DIR}/RELEASE"),
            format!("{}\n", update.version).as_bytes(),
            0o644,
        )
        .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => Ok(Some(update.version)),
        Err(e) => {
            remove_updates(root);
            Err(e)
        }
    }
}

/// Checks and copies the files of `update` for `arch`; returns how many were there.
fn copy_files(
    fs: &RootFs,
    volume: &dyn Volume,
    update: &Update,
    arch: &str,
) -> Result<usize, String> {
    let mut copied = 0;
    for file in &update.files {
        if !file.architecture.is_empty() && file.architecture != arch {
            continue;
        }
        incus_osd_provider_common::fetch::check_file_name(file).map_err(|e| e.message)?;
        let source = format!("update/{}", file.filename);
        let read_err = |e: std::io::Error| format!("cannot read {}: {e}", file.filename);
        let Some(data) = volume.open(&source).map_err(read_err)? else {
            tracing::warn!(file = %file.filename, "the recovery volume lacks an update file, skipping it");
            continue;
        };
        let base = file.filename.rsplit('/').next().unwrap_or(&file.filename);
        let (name, gz) = match base.strip_suffix(".gz") {
            Some(n) => (n, true),
            None => (base, false),
        };
        let target = format!("{UPDATES_DIR}/{name}");
        let mut out = fs
            .create_atomic(&target, 0o644)
            .map_err(|e| e.to_string())?;
        // One pass over the file: hashed as it is read and unpacked into a temporary file,
        // which replaces the target only when the hash matches (dropped otherwise).
        let mut hashed = Hashing {
            inner: std::io::BufReader::new(data),
            hash: Sha256::new(),
        };
        let unpacked = if gz {
            std::io::copy(&mut flate2::read::GzDecoder::new(&mut hashed), &mut out)
        } else {
            std::io::copy(&mut hashed, &mut out)
        };
        // What the unpacking left unread (a gzip trailer, or all of a bad file) counts too.
        std::io::copy(&mut hashed, &mut std::io::sink()).map_err(read_err)?;
        let hash: String = hashed
            .hash
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if !hash.eq_ignore_ascii_case(&file.sha256) {
            return Err(format!("sha256 mismatch for file {}", file.filename));
        }
        unpacked.map_err(|e| format!("cannot unpack {}: {e}", file.filename))?;
        plugin_host::files::AtomicWrite::commit(Box::new(out)).map_err(|e| e.to_string())?;
        copied += 1;
    }
    Ok(copied)
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Removes [`UPDATES_DIR`] (logged when it fails).
pub fn remove_updates(root: &Path) {
    if let Err(e) = RootFs::new(root).remove(UPDATES_DIR) {
        tracing::warn!(error = %e, "cannot remove {UPDATES_DIR}");
    }
}

/// What start-up does first: when a recovery volume is there, read it, run its hotfix,
/// prepare its update. Returns the version of a prepared update (for
/// [`apply_prepared_update`]).
pub async fn check_at_start(app: &App) -> Option<String> {
    let device = find_device(&app.root)?;
    tracing::info!(device = %device.display(), "recovery volume detected");
    let commands = app.platform.commands.clone();
    let root = app.root.clone();
    let running = app.info.os().version.clone();
    let done = tokio::task::spawn_blocking(move || {
        let volume = match open(&device) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "recovery failed");
                return None;
            }
        };
        tracing::info!(file_system = volume.kind(), "reading the recovery volume");
        match run_hotfix(commands.as_ref(), &root, volume.as_ref()) {
            Ok(Some(output)) => tracing::info!(output = %output, "hotfix script completed"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "recovery hotfix failed"),
        }
        match prepare_update(
            commands.as_ref(),
            &root,
            volume.as_ref(),
            &running,
            std::env::consts::ARCH,
        ) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "recovery update failed");
                None
            }
        }
    })
    .await;
    done.unwrap_or_else(|e| {
        tracing::error!(error = %e, "recovery failed");
        None
    })
}

/// Applies the update [`check_at_start`] prepared: the `debug` provider selected for one
/// start-up check through the update engine, then the selection restored and
/// [`UPDATES_DIR`] removed.
pub async fn apply_prepared_update(app: &std::sync::Arc<App>, version: &str) {
    tracing::info!(
        version,
        "applying the recovery update through the debug provider"
    );
    let before = crate::system::provider::selection(app);
    let select = |doc: crate::system::provider::ProviderDoc| {
        app.with_state(|s| s.update(|d| d.system.provider = doc))
    };
    let debug = crate::system::provider::ProviderDoc {
        name: "debug".to_string(),
        registered: false,
    };
    match select(debug) {
        Ok(()) => {
            let kind = crate::system::update::schedule::CheckKind::Startup;
            if let Err(e) = crate::system::update::runner::check(app, kind, false, false).await {
                tracing::error!(error = %e, "recovery update failed");
            }
            if let Err(e) = select(before) {
                tracing::error!(error = %e, "cannot restore the update provider after recovery");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot select the debug provider for recovery"),
    }
    remove_updates(&app.root);
    tracing::info!("recovery actions completed");
}
