//! The system backup and restore against the running daemon: the applications' archives,
//! the upload, the checks, and the restore's changes under one [`Undo`] journal.
//!
//! A restore changes, in this order: applications the backup has and this machine lacks
//! are installed; each application's data is restored from its archive (the current data
//! archived first); the host name and time zone are set; the recovery keys are enrolled;
//! the staged state directory is swapped in and the state reloaded; applications this
//! machine has and the backup lacks are removed. A failure at any step rolls back every
//! step before it, in reverse (the removals come last because a removal wipes the
//! application's data and cannot be undone).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use plugin_api::sdk::archive;
use plugin_api::{Hook, Undo};
use plugin_host::app_backup;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::stage::{self, sibling, Limits, Skip, Staged};
use super::StateFile;
use crate::api::App;
use crate::plugins::{CallError, Plugin};
use crate::state::{Document, Store, STATE_FILE};
use crate::system::applications::manage;
use crate::system::network::files as netfiles;
use crate::system::security;

/// The largest upload a restore takes (the backup as sent, compressed).
pub const MAX_UPLOAD: u64 = 4 << 30;

/// Upstream's state file, imported when a backup has no `state.json`.
pub const UPSTREAM_STATE: &str = "state.txt";

/// The journal's host handle: the restore writes `/etc/hosts` with the host name.
const SUBSYSTEM: crate::system::host::Subsystem = crate::system::host::Subsystem {
    name: "backup",
    writable: &[netfiles::ETC_HOSTS],
};

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CallError> + Send + 'static,
) -> Result<T, CallError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CallError::internal(e.to_string()))?
}

/// The state directory (where `state.json` is).
pub fn state_dir(app: &App) -> PathBuf {
    app.with_state(|s| s.path().parent().map(Path::to_path_buf).unwrap_or_default())
}

/// What a backup streams: the state files and the applications' archives.
pub struct Backup {
    pub files: Vec<StateFile>,
    pub apps: Vec<(String, File, u64)>,
}

/// Everything a backup needs before its first byte, so that an error is a JSON answer:
/// the state saved, the state directory's files opened, and every installed application
/// that can back itself up archived into an anonymous file.
pub async fn prepare_backup(app: &Arc<App>) -> Result<Backup, CallError> {
    app.with_state(|s| if s.is_read_only() { Ok(()) } else { s.save() })
        .map_err(|e| CallError::internal(e.to_string()))?;
    let dir = state_dir(app);
    let d = dir.clone();
    let files = blocking(move || super::state_files(&d).map_err(CallError::internal)).await?;
    let mut apps = vec![];
    for (plugin, name) in manage::all_installed(app) {
        if let Some(file) = app_archive(app, &plugin).await? {
            let mut file = file;
            let size = file.stream_position().map_err(|e| {
                CallError::internal(format!("cannot store the backup of {name}: {e}"))
            })?;
            file.rewind().map_err(|e| {
                CallError::internal(format!("cannot store the backup of {name}: {e}"))
            })?;
            apps.push((name, file, size));
        }
    }
    Ok(Backup { files, apps })
}

/// The application's default (not complete) backup in an anonymous file under the state
/// directory's spool, left at its end; `None` when the application has no backup.
async fn app_archive(app: &Arc<App>, plugin: &Arc<Plugin>) -> Result<Option<File>, CallError> {
    let name = manage::context(app, plugin).name;
    let failed =
        |e: String| CallError::internal(format!("cannot back up application '{name}': {e}"));
    let spool = state_dir(app).join(super::RUNTIME_DIRS[0]);
    let mut file = blocking(move || {
        crate::platform::uploads::anonymous_file(&spool)
            .map_err(|e| CallError::internal(format!("cannot store the backup: {e}")))
    })
    .await?;
    if let Some(spec) = plugin.manifest.backup.clone() {
        let root = app.root.clone();
        // An application that has written no data yet has nothing to carry.
        let exists = crate::platform::files::RootFs::new(&root)
            .host_dir(&spec.root)
            .map_err(|e| failed(e.to_string()))?
            .is_some();
        if !exists {
            return Ok(None);
        }
        let file = blocking(move || {
            app_backup::write(&root, &spec, false, &mut file)
                .map_err(|e| CallError::new(e.status, e.message))?;
            Ok(file)
        })
        .await
        .map_err(|e| failed(e.message))?;
        return Ok(Some(file));
    }
    if !plugin.manifest.has(Hook::Backup) {
        return Ok(None);
    }
    let (mut rx, handle) = plugin.backup(Bytes::from_static(b"{}")).await;
    while let Some(chunk) = rx.recv().await {
        file.write_all(&chunk).map_err(|e| failed(e.to_string()))?;
    }
    handle
        .await
        .map_err(|e| failed(e.to_string()))?
        .map_err(|e| failed(e.message))?;
    Ok(Some(file))
}

/// Restores an application's data from its archive (rewound): a declared backup swapped
/// in around its units, then its `restored` hook; else the plugin's restore hook. The
/// restore time is recorded by the caller, in the document the restore leaves.
async fn restore_app(app: &Arc<App>, plugin: &Arc<Plugin>, file: File) -> Result<(), CallError> {
    let name = manage::context(app, plugin).name;
    let failed =
        |e: String| CallError::internal(format!("cannot restore application '{name}': {e}"));
    if let Some(spec) = plugin.manifest.backup.clone() {
        let (root, units) = (app.root.clone(), app.platform.units.clone());
        blocking(move || {
            let prepared = app_backup::prepare(
                &root,
                &spec,
                std::io::BufReader::new(file),
                &archive::Limits::default(),
            )
            .map_err(|e| CallError::new(e.status, e.message))?;
            prepared
                .apply(units.as_ref())
                .map(drop)
                .map_err(|e| CallError::new(e.status, e.message))
        })
        .await
        .map_err(|e| failed(e.message))?;
        manage::call(app, plugin, Hook::Restored)
            .await
            .map_err(|e| failed(e.message))?;
        return Ok(());
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, String>>(8);
    let mut file = tokio::fs::File::from_std(file);
    tokio::spawn(async move {
        loop {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            let chunk = match file.read_buf(&mut buf).await {
                Ok(0) => return,
                Ok(_) => Ok(buf.freeze()),
                Err(e) => Err(format!("cannot read the stored archive: {e}")),
            };
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                return;
            }
        }
    });
    plugin.restore(rx).await.map_err(|e| failed(e.message))
}

/// The roots a system restore is under way for: one at a time per daemon.
static RESTORING: std::sync::Mutex<BTreeSet<PathBuf>> = std::sync::Mutex::new(BTreeSet::new());

struct Restoring(PathBuf);

impl Restoring {
    fn take(root: &Path) -> Result<Restoring, CallError> {
        let mut set = RESTORING.lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(root.to_path_buf()) {
            return Err(CallError::new(
                409,
                "a system restore is already in progress",
            ));
        }
        Ok(Restoring(root.to_path_buf()))
    }
}

impl Drop for Restoring {
    fn drop(&mut self) {
        RESTORING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.0);
    }
}

/// How much of an upload is written between two free-space checks.
const ROOM_CHECK: usize = 4 << 20;

/// The request body in an anonymous file in `dir` (rewound), at most [`MAX_UPLOAD`]
/// bytes, leaving the disk's reserve free.
async fn spool(dir: &Path, body: Body, max: u64) -> Result<File, CallError> {
    let stored = |e: std::io::Error| CallError::internal(format!("cannot store the backup: {e}"));
    let d = dir.to_path_buf();
    let file = blocking(move || super::temp_file(&d).map_err(stored)).await?;
    let check = file.try_clone().map_err(stored)?;
    let mut out = tokio::fs::File::from_std(file);
    let mut stream = body.into_data_stream();
    let (mut total, mut since_check) = (0u64, 0usize);
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| CallError::new(400, format!("cannot read request body: {e}")))?;
        total += chunk.len() as u64;
        if total > max {
            return Err(CallError::new(
                413,
                format!(
                    "the backup is larger than {} MiB, the most a system restore accepts",
                    max >> 20
                ),
            ));
        }
        since_check += chunk.len();
        if since_check >= ROOM_CHECK {
            since_check = 0;
            if !crate::platform::uploads::has_room(&check).map_err(stored)? {
                return Err(CallError::new(
                    507,
                    "not enough free space on the state disk to store the backup",
                ));
            }
        }
        tokio::io::AsyncWriteExt::write_all(&mut out, &chunk)
            .await
            .map_err(stored)?;
    }
    let mut file = out.into_std().await;
    file.flush().map_err(stored)?;
    file.rewind().map_err(stored)?;
    Ok(file)
}

/// Whether `name` is a primary application: its plugin says so, or, with no plugin for it,
/// it is one of upstream's.
fn is_primary(app: &App, name: &str) -> bool {
    match manage::find(app, name) {
        Some(p) => p.manifest.primary,
        None => stage::UPSTREAM_PRIMARIES.contains(&name),
    }
}

/// The names a document installs (a record's variant name, or its plugin's).
fn installed_names(doc: &Document) -> BTreeSet<String> {
    doc.applications
        .iter()
        .filter(|(_, r)| !r.version.is_empty())
        .map(|(k, r)| {
            if r.name.is_empty() {
                k.clone()
            } else {
                r.name.clone()
            }
        })
        .collect()
}

/// Reads the staged state: `state.json` (upgraded as at a start), else upstream's
/// `state.txt` imported, else an empty document (as upstream).
fn staged_state(staged: &Staged) -> Result<Document, String> {
    let dir = &staged.dir;
    if dir.join(STATE_FILE).exists() {
        let store = Store::load_or_create(dir).map_err(|e| e.to_string())?;
        if store.is_read_only() {
            return Err(format!(
                "its state was written by a newer incus-osd (schema {}); this one knows {}",
                store.doc().schema_version,
                crate::state::SCHEMA_VERSION
            ));
        }
        return Ok(store.doc().clone());
    }
    match std::fs::read_to_string(dir.join(UPSTREAM_STATE)) {
        Ok(text) => crate::state::upstream::import(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Document::default()),
        Err(e) => Err(format!("cannot read {UPSTREAM_STATE}: {e}")),
    }
}

/// The wrapper upstream puts around the checks of the backup's state.
fn unprocessable(e: impl std::fmt::Display) -> CallError {
    CallError::internal(format!("unable to process state from backup: {e}"))
}

/// `POST /1.0/system/:restore`: everything checked before anything changes, then applied
/// under one journal. On success the caller asks for the reboot.
pub async fn restore(
    app: &Arc<App>,
    body: Body,
    skip: Skip,
    limits: Limits,
) -> Result<(), CallError> {
    let _one = Restoring::take(&app.root)?;
    // The restore ends in a reboot: it must be possible before anything is read.
    app.platform
        .units
        .reachable()
        .map_err(|e| CallError::new(503, format!("cannot reboot: {}", e.0)))?;
    let current = state_dir(app);
    let parent = current
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| CallError::internal("the state directory has no parent"))?;
    let upload = spool(&parent, body, MAX_UPLOAD).await?;
    let (c, p) = (current.clone(), parent.clone());
    let staged = blocking(move || {
        stage::stage(std::io::BufReader::new(upload), &c, &p, &skip, &limits)
            .map_err(|e| CallError::new(e.status(), e.message().to_string()))
    })
    .await?;
    let (staged, mut backup) = blocking(move || {
        let doc = staged_state(&staged).map_err(unprocessable)?;
        Ok((staged, doc))
    })
    .await?;
    if !staged.dir.join(STATE_FILE).exists() {
        // Upstream's one `Incus` record stands for `incus` and `incus-lts-7.0`: the variant
        // installed here is kept, so the restore does not swap one for the other.
        let live = app.with_state(|s| s.doc().applications.get("incus").map(|r| r.name.clone()));
        if let (Some(record), Some(name)) = (backup.applications.get_mut("incus"), live) {
            if record.name.is_empty() {
                record.name = name;
            }
        }
    }
    let names = installed_names(&backup);
    if let Some((app_name, _)) = staged.apps.iter().find(|(n, _)| !names.contains(n)) {
        return Err(CallError::new(
            400,
            format!("the backup holds data of application '{app_name}', which its state does not install"),
        ));
    }
    let app2 = app.clone();
    let tpm = blocking(move || {
        security::tpm_status(&app2.root, &app2.platform.kernel, &app2.security)
            .map_err(|e| unprocessable(format!("cannot read the TPM status: {e}")))
    })
    .await?;
    stage::validate(&backup, &tpm, |n| is_primary(app, n)).map_err(unprocessable)?;

    let _keys = app.security.change.lock().await;
    let handle = tokio::runtime::Handle::current();
    let app2 = app.clone();
    blocking(move || apply(&app2, &handle, staged, &backup, &skip, &current)).await
}

/// The changes, under one journal: see the module documentation for the order.
fn apply(
    app: &Arc<App>,
    rt: &tokio::runtime::Handle,
    mut staged: Staged,
    backup: &Document,
    skip: &Skip,
    current: &Path,
) -> Result<(), CallError> {
    let host = crate::system::host::handle(&app.root, &app.platform, &SUBSYSTEM);
    let mut undo = Undo::new(&host);
    let bak = sibling(current, ".bak");
    match steps(app, rt, &mut undo, &mut staged, backup, skip, current, &bak) {
        Ok(()) => {
            undo.commit();
            if let Err(e) = std::fs::remove_dir_all(&bak) {
                tracing::warn!(error = %e, path = %bak.display(), "cannot remove the previous state directory");
            }
            tracing::info!("system restore applied; rebooting");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(error = %e.message, "system restore failed: putting everything back");
            undo.rollback();
            Err(e)
        }
    }
}

fn compensation(e: impl std::fmt::Display) -> plugin_api::sdk::Error {
    plugin_api::sdk::Error::internal(e.to_string())
}

/// Reloads the state store from `dir`.
fn reload(app: &App, dir: &Path) -> Result<(), String> {
    let store = Store::load_or_create(dir).map_err(|e| e.to_string())?;
    app.with_state(|s| *s = store);
    Ok(())
}

/// Swaps two directories' contents in one step (`RENAME_EXCHANGE`); on a filesystem
/// without it, through a third name.
pub fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP) => {
            let tmp = sibling(a, ".swap");
            std::fs::rename(a, &tmp)?;
            if let Err(e) = std::fs::rename(b, a) {
                let _ = std::fs::rename(&tmp, a);
                return Err(e);
            }
            if let Err(e) = std::fs::rename(&tmp, b) {
                let _ = std::fs::rename(a, b);
                let _ = std::fs::rename(&tmp, a);
                return Err(e);
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[allow(clippy::too_many_arguments)]
fn steps(
    app: &Arc<App>,
    rt: &tokio::runtime::Handle,
    undo: &mut Undo,
    staged: &mut Staged,
    backup: &Document,
    skip: &Skip,
    current: &Path,
    bak: &Path,
) -> Result<(), CallError> {
    let live: BTreeSet<String> = manage::all_installed(app)
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    let wanted = installed_names(backup);

    // 1. Applications the backup has and this machine lacks.
    for name in wanted.difference(&live) {
        rt.block_on(manage::install(app, name)).map_err(|e| {
            CallError::internal(format!(
                "cannot install application '{name}': {}",
                e.message
            ))
        })?;
        let (app2, rt2, n) = (app.clone(), rt.clone(), name.clone());
        undo.on_rollback(&format!("install of application {name}"), move |_| {
            rt2.block_on(manage::remove(&app2, &n))
                .map_err(|e| compensation(e.message))
        });
    }

    // 2. Each application's data: the current data archived first, to put it back.
    let mut restored = vec![];
    for (name, file) in std::mem::take(&mut staged.apps) {
        let plugin = manage::installed_plugin(app, &name).map_err(|e| {
            CallError::internal(format!(
                "cannot restore application '{name}': {}",
                e.message
            ))
        })?;
        let before = if live.contains(&name) {
            rt.block_on(app_archive(app, &plugin))?
        } else {
            None
        };
        rt.block_on(restore_app(app, &plugin, file))?;
        restored.push(plugin.name().to_string());
        if let Some(mut before) = before {
            let (app2, rt2, p) = (app.clone(), rt.clone(), plugin.clone());
            undo.on_rollback(&format!("data of application {name}"), move |_| {
                before.rewind().map_err(compensation)?;
                rt2.block_on(restore_app(&app2, &p, before))
                    .map_err(|e| compensation(e.message))
            });
        }
    }

    // 3. Host name and time zone (as a network change sets them).
    let (hostname, timezone) = stage::host_settings(backup);
    let os = app.network.os().clone();
    if let Some(tz) = timezone {
        let before = os.timezone().map_err(|e| CallError::internal(e.0))?;
        if before != tz {
            os.set_timezone(&tz).map_err(|e| CallError::internal(e.0))?;
            let os2 = os.clone();
            undo.on_rollback("time zone", move |_| {
                os2.set_timezone(&before).map_err(|e| compensation(e.0))
            });
        }
    }
    if let Some(name) = hostname {
        let before = os.hostname().map_err(|e| CallError::internal(e.0))?;
        if before != name {
            os.set_hostname(&name)
                .map_err(|e| CallError::internal(e.0))?;
            let os2 = os.clone();
            undo.on_rollback("hostname", move |_| {
                os2.set_hostname(&before).map_err(|e| compensation(e.0))
            });
        }
        undo.write_file(
            netfiles::ETC_HOSTS,
            netfiles::etc_hosts(&name).as_bytes(),
            0o644,
        )
        .map_err(|e| CallError::internal(e.message))?;
    }

    // 4. Recovery keys: the volumes end up with exactly the backup's.
    if !skip.recovery_keys {
        let stored = app.with_state(|s| {
            s.doc()
                .system
                .security
                .config
                .encryption_recovery_keys
                .clone()
        });
        let wanted = &backup.system.security.config.encryption_recovery_keys;
        let plan = security::plan_keys(&stored, wanted).map_err(|(_, m)| CallError::internal(m))?;
        let cmds = app.platform.commands.clone();
        security::apply_keys(cmds.as_ref(), &app.root, &app.security, &plan)
            .map_err(CallError::internal)?;
        let app2 = app.clone();
        undo.on_rollback("recovery keys", move |_| {
            security::revert_keys(cmds.as_ref(), &app2.root, &app2.security, &plan);
            Ok(())
        });
    }

    // 5. The state: the document composed into the staged directory, swapped in.
    let live_doc = app.with_state(|s| s.doc().clone());
    let mut doc = stage::compose(&live_doc, backup, skip);
    let now = chrono::Utc::now().fixed_offset();
    for key in &restored {
        if let Some(r) = doc.applications.get_mut(key) {
            r.last_restored = Some(now);
        }
    }
    let mut bytes = serde_json::to_vec_pretty(&doc).expect("state serializes");
    bytes.push(b'\n');
    let path = staged.dir.join(STATE_FILE);
    write_synced(&path, &bytes)
        .map_err(|e| CallError::internal(format!("cannot write {}: {e}", path.display())))?;
    let _ = std::fs::remove_file(staged.dir.join(UPSTREAM_STATE));
    let _ = std::fs::remove_dir_all(bak);
    exchange(&staged.dir, current)
        .map_err(|e| CallError::internal(format!("cannot swap the restored state in: {e}")))?;
    staged.keep();
    if let Err(e) = std::fs::rename(&staged.dir, bak) {
        let _ = exchange(&staged.dir, current);
        return Err(CallError::internal(format!(
            "cannot move the previous state aside: {e}"
        )));
    }
    let (app2, cur, bak2) = (app.clone(), current.to_path_buf(), bak.to_path_buf());
    undo.on_rollback("state directory", move |_| {
        exchange(&bak2, &cur).map_err(compensation)?;
        let _ = std::fs::remove_dir_all(&bak2);
        reload(&app2, &cur).map_err(compensation)
    });
    reload(app, current)
        .map_err(|e| CallError::internal(format!("cannot load the restored state: {e}")))?;

    // 6. Applications this machine has and the backup lacks (their data is wiped: last).
    for name in live.difference(&wanted) {
        rt.block_on(manage::remove(app, name)).map_err(|e| {
            CallError::internal(format!("cannot remove application '{name}': {}", e.message))
        })?;
    }
    Ok(())
}

fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[tokio::test]
    async fn an_upload_over_the_cap_is_refused_and_one_under_it_is_stored_whole() {
        let dir = tempfile::tempdir().unwrap();
        let body = Body::from(vec![7u8; (2 << 20) + 1]);
        let e = spool(dir.path(), body, 2 << 20).await.unwrap_err();
        assert_eq!(e.status, 413);
        assert_eq!(
            e.message,
            "the backup is larger than 2 MiB, the most a system restore accepts"
        );
        let mut f = spool(dir.path(), Body::from(vec![7u8; 2 << 20]), 2 << 20)
            .await
            .unwrap();
        let mut back = vec![];
        f.read_to_end(&mut back).unwrap();
        assert_eq!(back, vec![7u8; 2 << 20]);
        // Unnamed: nothing is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn one_restore_at_a_time_per_root() {
        let first = Restoring::take(Path::new("/r1")).unwrap();
        let e = Restoring::take(Path::new("/r1")).err().unwrap();
        assert_eq!(
            (e.status, e.message.as_str()),
            (409, "a system restore is already in progress")
        );
        let _other = Restoring::take(Path::new("/r2")).unwrap();
        drop(first);
        Restoring::take(Path::new("/r1")).unwrap();
    }

    #[test]
    fn an_exchange_swaps_two_directories_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(a.join("x"), "a").unwrap();
        std::fs::write(b.join("x"), "b").unwrap();
        exchange(&a, &b).unwrap();
        assert_eq!(std::fs::read_to_string(a.join("x")).unwrap(), "b");
        exchange(&a, &b).unwrap();
        assert_eq!(std::fs::read_to_string(a.join("x")).unwrap(), "a");
    }
}
