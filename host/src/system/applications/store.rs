//! The application image store and what systemd-sysext merges over `/usr`.
//!
//! Images are downloaded (by the update runner) to `/var/lib/incus-os-extensions/<ver>/<app>.raw`,
//! one directory per release. The image in use is the one the symlink
//! `/var/lib/extensions/<app>.raw` points to; `systemd-sysext refresh` merges it, and a
//! `daemon-reload` makes systemd see the units it brings.
//!
//! Every change goes through the SDK [`Host`] of the `applications` host subsystem (writes
//! limited to the two directories above) and its [`Undo`] journal. The journal has no
//! symlink step (and the plugin ABI no symlink call), so a link is swapped here with plain
//! calls on the directory [`RootFs`] resolved inside the root: the new link is made under a
//! temporary name and renamed over the old one (atomic: the name always points somewhere),
//! and an explicit compensation puts the previous link back on rollback. A failed refresh
//! or daemon-reload rolls back: the previous links are back and merged again.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use plugin_api::abi::FileKind;
use plugin_api::sdk::{Error, Host, Result};
use plugin_api::Undo;

use super::versions::{self, Choice, Inputs, Rule};
use crate::platform::files::{self, RootFs};
use crate::platform::Platform;
use crate::system::host::{handle, Subsystem};

/// Where images are kept, one directory per release.
pub const IMAGES_DIR: &str = crate::system::update::runner::EXTENSIONS_DIR;
/// Where systemd-sysext looks for the images to merge.
pub const ACTIVE_DIR: &str = "/var/lib/extensions";
/// The host subsystem: its log name and the paths it writes.
pub const SUBSYSTEM: Subsystem = Subsystem {
    name: "applications",
    writable: &[ACTIVE_DIR, IMAGES_DIR],
};
/// How long `systemd-sysext refresh` may take (it unmerges and merges every image).
pub const REFRESH_TIMEOUT: Duration = Duration::from_secs(120);
/// Where a GPT header starts, for 512-byte and 4096-byte sectors.
const GPT_OFFSETS: [u64; 2] = [512, 4096];
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";

/// The image of `app` downloaded with release `version`.
pub fn image_path(version: &str, app: &str) -> String {
    format!("{IMAGES_DIR}/{version}/{app}.raw")
}

/// The link systemd-sysext merges for `app`.
pub fn link_path(app: &str) -> String {
    format!("{ACTIVE_DIR}/{app}.raw")
}

/// An installed application and the version the state records for it ("" when none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub name: String,
    pub recorded: String,
}

/// What the version choice needs to know of the OS (see [`Inputs`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsFacts {
    pub running: String,
    pub other: String,
    /// The previous boot's release ("" when unknown, or when this boot already refreshed:
    /// pass the running release then).
    pub prior: String,
    pub from_backup: bool,
}

/// What a refresh did for one application: the caller records `version` and `available`
/// in the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activated {
    pub name: String,
    pub version: String,
    pub rule: Rule,
    pub available: Vec<String>,
    /// Local versions deleted: corrupt ones and those no longer available.
    pub removed: Vec<String>,
}

/// A name usable as one path component (an application or a version directory).
fn plain_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::bad_request(format!("invalid {what} name {name:?}")));
    }
    Ok(())
}

fn fs_err(e: files::FsError) -> Error {
    Error::internal(e.to_string())
}

/// The image store under a root prefix.
#[derive(Clone)]
pub struct Store {
    host: Host,
    files: RootFs,
}

impl Store {
    /// The store under `root`, acting through `platform` (offline under a dev root: the
    /// refresh is then refused and says so).
    pub fn new(root: &Path, platform: &Platform) -> Store {
        let writable: Vec<String> = SUBSYSTEM.writable.iter().map(|p| p.to_string()).collect();
        Store {
            host: handle(root, platform, &SUBSYSTEM),
            files: RootFs::restricted(root, &writable),
        }
    }

    /// The SDK host the store acts through.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The versions whose directory holds an image of `app` (any kind of entry: see
    /// [`Store::verify`]), sorted by name.
    pub fn local_versions(&self, app: &str) -> Result<Vec<String>> {
        plain_name("application", app)?;
        let mut out = vec![];
        for v in self.host.list_dir(IMAGES_DIR)?.unwrap_or_default() {
            if files::temp_target(std::ffi::OsStr::new(&v)).is_some() {
                continue;
            }
            let is_dir = self
                .host
                .stat(&format!("{IMAGES_DIR}/{v}"))?
                .is_some_and(|st| st.kind == FileKind::Dir);
            if is_dir && self.host.exists(&image_path(&v, app))? {
                out.push(v);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Checks the image of `app` for `version` before it may be activated: the version
    /// directory is a real directory (not a symlink), the image a regular file (not a
    /// symlink, so it cannot lead out of the store), not empty, and a GPT disk image (the
    /// header at sector 1 for 512 or 4096-byte sectors), which the signed images are.
    ///
    /// Upstream also runs `systemd-dissect --validate` and checks the dm-verity root hash
    /// signature in the image's third partition against a certificate in the EFI `db` and
    /// the kernel keyring; neither is done here (see docs/applications.md).
    pub fn verify(&self, app: &str, version: &str) -> Result<()> {
        plain_name("application", app)?;
        plain_name("version", version)?;
        let path = image_path(version, app);
        let bad = |why: &str| Err(Error::internal(format!("image {path} {why}")));
        match self.host.stat(&format!("{IMAGES_DIR}/{version}"))? {
            Some(st) if st.kind == FileKind::Dir => {}
            Some(st) if st.kind == FileKind::Symlink => {
                return bad("is in a version directory that is a symlink")
            }
            _ => return bad("does not exist"),
        }
        match self.host.stat(&path)? {
            None => return bad("does not exist"),
            Some(st) if st.kind == FileKind::Symlink => {
                return bad(&format!("is a symlink (to {})", st.link_target))
            }
            Some(st) if st.kind != FileKind::File => return bad("is not a regular file"),
            Some(_) => {}
        }
        let Some(file) = self.files.open_file(&path).map_err(fs_err)? else {
            return bad("does not exist");
        };
        let len = file
            .metadata()
            .map_err(|e| Error::internal(format!("stat {path}: {e}")))?
            .len();
        if len == 0 {
            return bad("is empty");
        }
        let gpt = GPT_OFFSETS.iter().any(|&off| {
            let mut sig = [0u8; 8];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut sig, off).is_ok()
                && &sig == GPT_SIGNATURE
        });
        if !gpt {
            return bad("is not a disk image (no GPT header)");
        }
        Ok(())
    }

    /// The version the link of `app` points to, when it points to an image in the store;
    /// `None` when there is no link or it points elsewhere.
    pub fn active_version(&self, app: &str) -> Result<Option<String>> {
        plain_name("application", app)?;
        let Some(target) = self.host.read_link(&link_path(app))? else {
            return Ok(None);
        };
        let version = target
            .strip_prefix(&format!("{IMAGES_DIR}/"))
            .and_then(|rest| rest.strip_suffix(&format!("/{app}.raw")))
            .filter(|v| !v.contains('/'));
        Ok(version.map(str::to_string))
    }

    /// Points the link of `app` at its image for `version` (verified first). On rollback
    /// the previous link (or its absence) is back.
    pub fn activate(&self, undo: &mut Undo, app: &str, version: &str) -> Result<()> {
        self.verify(app, version)?;
        undo.create_dir(ACTIVE_DIR, 0o755)?;
        self.swap_link(undo, app, Some(&image_path(version, app)))
    }

    /// Removes the link of `app`; on rollback it is back.
    pub fn deactivate(&self, undo: &mut Undo, app: &str) -> Result<()> {
        plain_name("application", app)?;
        self.swap_link(undo, app, None)
    }

    /// Sets the link named `<app>.raw` in [`ACTIVE_DIR`] to `target` (or removes it), with
    /// the compensation that puts the previous one back.
    fn swap_link(&self, undo: &mut Undo, app: &str, target: Option<&str>) -> Result<()> {
        let path = link_path(app);
        let previous = match self.host.stat(&path)? {
            None => None,
            Some(st) if st.kind == FileKind::Symlink => Some(st.link_target.to_string()),
            Some(_) => {
                return Err(Error::internal(format!(
                    "{path} exists and is not a symlink: refusing to replace it"
                )))
            }
        };
        if previous.as_deref() == target {
            return Ok(());
        }
        if previous.is_none() && target.is_none() {
            return Ok(());
        }
        set_link(&self.files, &path, target)?;
        let files = self.files.clone();
        undo.on_rollback(&format!("put back {path}"), move |_| {
            set_link(&files, &path, previous.as_deref())
        });
        Ok(())
    }

    /// `systemd-sysext refresh`, a check that every linked application is merged, then
    /// `systemctl daemon-reload`, through the platform's commands and units (refused
    /// offline, saying so).
    ///
    /// The check is needed because systemd-sysext skips an image it finds incompatible (its
    /// extension release names another OS, say) with a log line only, and still exits 0:
    /// without it such an install would be recorded with nothing merged.
    pub fn refresh(&self) -> Result<()> {
        let failed =
            |what: String| Error::internal(format!("cannot refresh system extensions: {what}"));
        let linked = self.linked()?;
        let out = self
            .host
            .run(&["systemd-sysext", "refresh"], REFRESH_TIMEOUT)
            .map_err(|e| failed(e.message))?;
        // Its log lines, on one line.
        let said = out
            .stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        if out.status != 0 {
            let mut msg = format!(
                "Failed to run: systemd-sysext refresh: exit status {}",
                out.status
            );
            if !said.is_empty() {
                msg.push_str(&format!(" ({said})"));
            }
            return Err(failed(msg));
        }
        let status = self
            .host
            .run_ok(
                &["systemd-sysext", "status", "--json=short"],
                REFRESH_TIMEOUT,
            )
            .map_err(|e| failed(e.message))?;
        let merged = merged_extensions(&status).map_err(failed)?;
        let missing: Vec<&str> = linked
            .iter()
            .filter(|n| !merged.contains(n))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            let mut msg = format!("systemd-sysext did not merge {}", missing.join(", "));
            if !said.is_empty() {
                msg.push_str(&format!(" ({said})"));
            }
            return Err(failed(msg));
        }
        self.host
            .daemon_reload()
            .map_err(|e| Error::internal(format!("cannot reload systemd units: {}", e.message)))
    }

    /// The applications whose link is in [`ACTIVE_DIR`] (what a refresh must merge), sorted.
    fn linked(&self) -> Result<Vec<String>> {
        let mut out = vec![];
        for entry in self.host.list_dir(ACTIVE_DIR)?.unwrap_or_default() {
            let Some(app) = entry.strip_suffix(".raw") else {
                continue;
            };
            let is_link = self
                .host
                .stat(&format!("{ACTIVE_DIR}/{entry}"))?
                .is_some_and(|st| st.kind == FileKind::Symlink);
            if is_link && plain_name("application", app).is_ok() {
                out.push(app.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes the local images of `app` whose version is not in `keep` (version
    /// directories left empty go too). Not journaled: images are large and this runs only
    /// once the new links are merged. Returns the versions removed.
    pub fn remove_versions(&self, app: &str, keep: &[String]) -> Result<Vec<String>> {
        let mut removed = vec![];
        for v in self.local_versions(app)? {
            if keep.contains(&v) {
                continue;
            }
            self.remove_image(app, &v)?;
            removed.push(v);
        }
        Ok(removed)
    }

    fn remove_image(&self, app: &str, version: &str) -> Result<()> {
        self.host.remove(&image_path(version, app))?;
        let dir = format!("{IMAGES_DIR}/{version}");
        if self.host.list_dir(&dir)?.is_some_and(|e| e.is_empty()) {
            self.host.remove(&dir)?;
        }
        Ok(())
    }

    /// The whole cycle, at boot and after an install, update or version switch: for each
    /// installed application, verify its local images (corrupt ones are deleted, except
    /// the recorded version, which is only logged and not activated), choose the version
    /// ([`versions::choose`]), point its link there; remove the links of applications no
    /// longer installed; refresh and reload. Any failure up to there puts every link back
    /// (and merges them again when the refresh had run). Then the images no longer
    /// available are deleted.
    pub fn refresh_extensions(&self, apps: &[Installed], os: &OsFacts) -> Result<Vec<Activated>> {
        let mut plan: Vec<(Installed, Choice, Vec<String>)> = vec![];
        for app in apps {
            plain_name("application", &app.name)?;
            let mut good = vec![];
            let mut removed = vec![];
            for v in self.local_versions(&app.name)? {
                match self.verify(&app.name, &v) {
                    Ok(()) => good.push(v),
                    Err(e) if v == app.recorded => {
                        tracing::warn!(application = %app.name, version = %v, error = %e.message, "the current image is corrupt, keeping it but not activating it");
                    }
                    Err(e) => {
                        tracing::warn!(application = %app.name, version = %v, error = %e.message, "deleting a corrupt image");
                        self.remove_image(&app.name, &v)?;
                        removed.push(v);
                    }
                }
            }
            let choice = versions::choose(&Inputs {
                recorded: &app.recorded,
                on_disk: &good,
                running: &os.running,
                other_os: &os.other,
                prior: &os.prior,
                from_backup: os.from_backup,
            })
            .ok_or_else(|| {
                Error::internal(format!(
                    "no on-disk sysext image found for application '{}'",
                    app.name
                ))
            })?;
            plan.push((app.clone(), choice, removed));
        }

        let mut undo = Undo::new(&self.host);
        let refreshed = merge_again_on_rollback(&mut undo);
        for (app, choice, _) in &plan {
            self.activate(&mut undo, &app.name, &choice.version)?;
        }
        // Only links: a regular image placed here by hand is left alone (as upstream).
        for app in self.linked()? {
            if !plan.iter().any(|(a, _, _)| a.name == app) {
                self.deactivate(&mut undo, &app)?;
            }
        }
        refreshed.store(true, Ordering::SeqCst);
        if let Err(e) = self.refresh() {
            undo.rollback();
            return Err(e);
        }
        undo.commit();

        let mut out = vec![];
        for (app, choice, mut removed) in plan {
            tracing::info!(application = %app.name, version = %choice.version, rule = ?choice.rule, "system extension active");
            // A corrupt recorded image is kept for a look (as upstream), not deleted.
            let mut keep = choice.available.clone();
            keep.push(app.recorded.clone());
            match self.remove_versions(&app.name, &keep) {
                Ok(r) => removed.extend(r),
                Err(e) => {
                    tracing::warn!(application = %app.name, error = %e.message, "cannot delete images no longer available")
                }
            }
            out.push(Activated {
                name: app.name,
                version: choice.version,
                rule: choice.rule,
                available: choice.available,
                removed,
            });
        }
        Ok(out)
    }

    /// Uninstalls `app`'s image: its link goes and the merge is refreshed (a failure puts
    /// the link back and merges it again), then every local version is deleted.
    pub fn remove_application(&self, app: &str) -> Result<()> {
        let mut undo = Undo::new(&self.host);
        let refreshed = merge_again_on_rollback(&mut undo);
        self.deactivate(&mut undo, app)?;
        refreshed.store(true, Ordering::SeqCst);
        if let Err(e) = self.refresh() {
            undo.rollback();
            return Err(e);
        }
        undo.commit();
        self.remove_versions(app, &[]).map(drop)
    }
}

/// The extensions merged over any hierarchy, from `systemd-sysext status --json=short`:
/// a list of `{"hierarchy", "extensions", "since"}`, `extensions` being a list of names or
/// the string `none`.
fn merged_extensions(status: &str) -> std::result::Result<Vec<String>, String> {
    let bad = || {
        format!(
            "cannot read what systemd-sysext status says: {}",
            status.trim()
        )
    };
    let v: serde_json::Value = serde_json::from_str(status).map_err(|_| bad())?;
    let mut out = vec![];
    for h in v.as_array().ok_or_else(bad)? {
        match &h["extensions"] {
            serde_json::Value::Array(names) => {
                for n in names {
                    out.push(n.as_str().ok_or_else(bad)?.to_string());
                }
            }
            serde_json::Value::String(_) => {}
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

/// Sets the symlink at `os_path` to `target` (or removes it when `None`), atomically: in
/// the directory resolved inside the root, a link under a temporary name, renamed over
/// the name. The directory must really be `os_path`'s parent under the root (not reached
/// through a symlink elsewhere).
fn set_link(fs: &RootFs, os_path: &str, target: Option<&str>) -> Result<()> {
    let io = |what: &str, e: std::io::Error| Error::internal(format!("{what} {os_path}: {e}"));
    let (dir, name) = fs.parent_of(os_path).map_err(fs_err)?;
    let via = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    // Where the directory really is, against where it should be.
    let real = std::fs::read_link(&via).map_err(|e| io("resolve", e))?;
    let root = std::fs::canonicalize(fs.root()).map_err(|e| io("resolve the root for", e))?;
    let parent = Path::new(os_path).parent().unwrap_or(Path::new("/"));
    let expected = root.join(parent.strip_prefix("/").unwrap_or(parent));
    if real != expected {
        return Err(Error::internal(format!(
            "{} resolves to {} through a symlink, refusing to change {os_path}",
            parent.display(),
            real.display()
        )));
    }
    let at = |n: &std::ffi::OsStr| via.join(n);
    match target {
        None => match std::fs::remove_file(at(&name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", e)),
        },
        Some(target) => {
            let tmp = files::temp_name(&name).map_err(|e| io("name a link for", e))?;
            std::os::unix::fs::symlink(target, at(&tmp)).map_err(|e| io("link", e))?;
            if let Err(e) = std::fs::rename(at(&tmp), at(&name)) {
                let _ = std::fs::remove_file(at(&tmp));
                return Err(io("replace", e));
            }
        }
    }
    // Durable: the directory's entries on disk.
    std::fs::File::open(&via)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync the directory of", e))
}

/// Registers, first in `undo` so that it runs last on rollback, a step that merges the
/// previous system extensions again once their links are back: but only if a refresh had
/// changed what was merged (the returned flag, set by the caller once it refreshed).
fn merge_again_on_rollback(undo: &mut Undo) -> Arc<AtomicBool> {
    let refreshed = Arc::new(AtomicBool::new(false));
    let again = refreshed.clone();
    undo.on_rollback("merge the previous system extensions again", move |host| {
        if !again.load(Ordering::SeqCst) {
            return Ok(());
        }
        host.run_ok(&["systemd-sysext", "refresh"], REFRESH_TIMEOUT)?;
        host.daemon_reload()
    });
    refreshed
}

#[cfg(test)]
mod tests;
