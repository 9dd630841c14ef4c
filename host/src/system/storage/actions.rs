//! The storage actions (`/1.0/system/storage/:<action>`) and the boot-time unlock and
//! import, on a [`Machine`]: drive wipes and LUKS encryption, volumes, pool deletion,
//! import and scrubbing. Refusals carry upstream's texts. Commands name devices by their
//! OS paths (`/dev/disk/by-id/...`) and key files by theirs (`/var/lib/incus-os/...`);
//! files are read and written under the root prefix.

use base64::Engine;

use super::model::Pool;
use super::pools;
use super::service::{luks_key_file, write_key, write_key_bytes, Machine, Ran, KEYS_DIR};
use super::service::{READ_TIMEOUT, ZFS_TIMEOUT};
use super::wipe;

/// `:scrub-pool` on a pool whose scrub runs (409).
pub const SCRUB_IN_PROGRESS: &str = "scrub already in progress";

/// The system drive's data partition, where `local` is created.
const LOCAL_DATA: &str = "/dev/disk/by-partlabel/local-data";
/// How often the resilver of a repaired `local` is looked at.
const RESILVER_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// The prefix every drive id an encryption action takes must have.
const BY_ID: &str = "/dev/disk/by-id/";

/// Why an action failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A scrub of the pool is running (409).
    ScrubRunning,
    /// Anything else (500, upstream's status for every action failure).
    Failed(String),
}

impl From<String> for Refusal {
    fn from(s: String) -> Self {
        Refusal::Failed(s)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::ScrubRunning => f.write_str(SCRUB_IN_PROGRESS),
            Refusal::Failed(s) => f.write_str(s),
        }
    }
}

/// The base name of a by-id path (`scsi-0QEMU_..._disk1`).
fn base_name(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

/// A LUKS drive's mapping name (`luks-<by-id name>`) and its OS path.
fn mapping(id: &str) -> (String, String) {
    let name = format!("luks-{}", base_name(id));
    let path = format!("/dev/mapper/{name}");
    (name, path)
}

/// Decodes a base64 key with Go's wording for bad input.
fn decode_key(key: &str) -> Result<Vec<u8>, String> {
    use base64::DecodeError;
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|e| {
            let at = match e {
                DecodeError::InvalidByte(at, _) | DecodeError::InvalidLastSymbol(at, _) => at,
                DecodeError::InvalidLength(at) => at,
                DecodeError::InvalidPadding => key.len(),
            };
            format!("illegal base64 data at input byte {at}")
        })
}

/// Whether a pool's last scrub is still running.
pub fn scrubbing(pool: &Pool) -> bool {
    pool.last_scrub
        .as_ref()
        .is_some_and(|s| s.state == "IN_PROGRESS")
}

impl Machine<'_> {
    // --- drives ------------------------------------------------------------------

    /// `:wipe-drive`: refuses the boot drive, a pool member and an unknown id; closes the
    /// drive's LUKS mapping and deletes its key, then clears it.
    pub fn wipe_drive(&self, id: &str, secure: bool) -> Result<(), String> {
        let pools = self.pools()?;
        let drives = self.drives(&pools);
        let drive = drives
            .iter()
            .find(|d| d.id == id)
            .ok_or_else(|| format!("drive '{id}' doesn't exist"))?;
        if drive.boot {
            return Err("cannot wipe boot drive".into());
        }
        if !drive.member_pool.is_empty() {
            return Err(format!(
                "cannot wipe drive belonging to pool '{}'",
                drive.member_pool
            ));
        }
        let key = luks_key_file(base_name(id));
        if self.key_exists(&key) {
            let (_, dev) = mapping(id);
            if self.path(&dev).exists() {
                self.run_ok(&["cryptsetup", "close", &dev], READ_TIMEOUT)?;
            }
            std::fs::remove_file(self.path(&key))
                .map_err(|e| format!("cannot remove {key}: {e}"))?;
        }
        wipe::clear(self, id, secure)
    }

    /// Opens a LUKS drive with its key file as `luks-<name>` (nothing to do when the
    /// mapping is there).
    fn unlock(&self, id: &str) -> Result<(), String> {
        let (name, dev) = mapping(id);
        if self.path(&dev).exists() {
            return Ok(());
        }
        let key = luks_key_file(base_name(id));
        self.run_ok(
            &["cryptsetup", "open", "--type=luks", "-d", &key, id, &name],
            ZFS_TIMEOUT,
        )
        .map(drop)
    }

    /// `:encrypt-drive`: wipes the drive, gives it a fresh 32-byte key, formats it as LUKS
    /// with that key and opens it. A failed format leaves no key behind.
    pub fn encrypt_drive(&self, id: &str, secure: bool) -> Result<(), String> {
        if !id.starts_with(BY_ID) {
            return Err("invalid disk id".into());
        }
        self.wipe_drive(id, secure)?;
        let key = luks_key_file(base_name(id));
        write_key(&self.path(&key))?;
        if let Err(e) = self.run_ok(&["cryptsetup", "luksFormat", "-q", id, &key], ZFS_TIMEOUT) {
            let _ = std::fs::remove_file(self.path(&key));
            return Err(e);
        }
        self.unlock(id)
    }

    /// `:import-encrypted-drive`: stores the given key (base64 of 32 bytes) and opens the
    /// drive with it; the key is removed again when it does not open the drive.
    pub fn import_encrypted_drive(&self, id: &str, key: &str) -> Result<(), String> {
        if !id.starts_with(BY_ID) {
            return Err("invalid disk id".into());
        }
        let raw = decode_key(key)?;
        if raw.len() != 32 {
            return Err(format!(
                "expected a 32 byte raw encryption key, got {} bytes",
                raw.len()
            ));
        }
        let file = luks_key_file(base_name(id));
        let path = self.path(&file);
        // A key already there (an earlier import) is replaced.
        let _ = std::fs::remove_file(&path);
        write_key_bytes(&path, &raw)?;
        if let Err(e) = self.unlock(id) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(())
    }

    /// `:cleanup-root`: keeps only the newest journal file and empties `/var/cache`.
    pub fn cleanup_root(&self) -> Result<(), String> {
        self.run_ok(&["journalctl", "--vacuum-files=1"], ZFS_TIMEOUT)?;
        let cache = self.path("/var/cache");
        let entries = match std::fs::read_dir(&cache) {
            Ok(es) => es,
            // Nothing cached: nothing to empty.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot read /var/cache: {e}")),
        };
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot read /var/cache: {e}"))?;
            let path = entry.path();
            let is_dir = entry
                .file_type()
                .map(|t| t.is_dir())
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let removed = if is_dir {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| {
                format!(
                    "cannot remove /var/cache/{}: {e}",
                    entry.file_name().to_string_lossy()
                )
            })?;
        }
        Ok(())
    }

    // --- volumes -----------------------------------------------------------------

    /// `:create-volume`: `zfs create <pool>/<name>` tagged with its use; linstor volumes
    /// are unencrypted (linstor encrypts itself), a positive quota is set.
    pub fn create_volume(
        &self,
        pool: &str,
        name: &str,
        quota: i64,
        usage: &str,
    ) -> Result<(), String> {
        let dataset = format!("{pool}/{name}");
        let mut argv = vec![
            "zfs".to_string(),
            "create".into(),
            dataset,
            "-o".into(),
            format!("incusos:use={usage}"),
        ];
        if usage == "linstor" {
            argv.extend(["-o".into(), "encryption=off".into()]);
        }
        if quota > 0 {
            argv.extend(["-o".into(), format!("quota={quota}")]);
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.run_ok(&argv, ZFS_TIMEOUT).map(drop)
    }

    /// `:delete-volume`: `zfs destroy <pool>/<name>`, with `-R` (its snapshots and clones
    /// too) when forced.
    pub fn delete_volume(&self, pool: &str, name: &str, force: bool) -> Result<(), String> {
        let dataset = format!("{pool}/{name}");
        let mut argv = vec!["zfs", "destroy", &dataset];
        if force {
            argv.push("-R");
        }
        self.run_ok(&argv, ZFS_TIMEOUT).map(drop)
    }

    // --- pools -------------------------------------------------------------------

    /// `:delete-pool`: destroys the pool, deletes its key and wipes every former member.
    /// A pool that is gone while its key is still there only loses the key.
    pub fn delete_pool(&self, name: &str) -> Result<(), String> {
        if name == pools::LOCAL {
            return Err(format!("cannot destroy special zpool '{}'", pools::LOCAL));
        }
        let key = pools::key_file(name);
        if !self.pool_exists(name)? {
            if !self.key_exists(&key) {
                return Err(format!("cannot destroy zpool '{name}': no such pool"));
            }
            return std::fs::remove_file(self.path(&key))
                .map_err(|e| format!("cannot remove {key}: {e}"));
        }
        let pool = self.pool(name)?;
        self.run_ok(&["zpool", "destroy", name], ZFS_TIMEOUT)?;
        match std::fs::remove_file(self.path(&key)) {
            Ok(()) => {}
            // An unmanaged (imported unencrypted) pool has none.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {key}: {e}")),
        }
        let special = pool.special.as_ref().map(|s| &s.devices[..]).unwrap_or(&[]);
        let members = pool
            .devices
            .iter()
            .chain(&pool.log)
            .chain(&pool.cache)
            .chain(special)
            .chain(&pool.devices_degraded)
            .chain(&pool.log_degraded)
            .chain(&pool.cache_degraded)
            .chain(&pool.special_degraded);
        for dev in members {
            // A member that was pulled out (a degraded one) has nothing left to clear.
            if self.path(dev).symlink_metadata().is_err() {
                tracing::info!(device = %dev, "former pool member is gone: not wiped");
                continue;
            }
            self.wipe_drive(dev, false)?;
        }
        Ok(())
    }

    /// `:import-pool`: imports the pool; an unencrypted one needs no key (and stays
    /// unmanaged); an encrypted one must use a raw 32-byte key, which is stored and
    /// loaded. Any failure after the import exports the pool again.
    pub fn import_pool(&self, name: &str, key: &str) -> Result<(), String> {
        self.run_ok(&["zpool", "import", name], ZFS_TIMEOUT)?;
        let result = self.adopt_imported(name, key);
        if result.is_err() {
            let _ = self.run(&["zpool", "export", "-f", name], ZFS_TIMEOUT);
        }
        result
    }

    fn adopt_imported(&self, name: &str, key: &str) -> Result<(), String> {
        let get = |prop: &str| {
            self.run_ok(
                &["zfs", "get", prop, "-H", "-o", "value", name],
                READ_TIMEOUT,
            )
            .map(|v| v.trim().to_string())
        };
        if get("encryption")? == "off" {
            if key.is_empty() {
                tracing::warn!("Unencrypted storage pool '{name}' has been imported");
                return Ok(());
            }
            return Err(format!(
                "attempted to import unencrypted pool '{name}', but an encryption key was provided"
            ));
        }
        if get("keyformat")? != "raw" {
            return Err(format!(
                "refusing to import encrypted pool '{name}' that doesn't use a raw encryption key"
            ));
        }
        let raw = decode_key(key)?;
        if raw.len() != 32 {
            return Err(format!(
                "expected a 32 byte raw encryption key for pool '{name}', got {} bytes",
                raw.len()
            ));
        }
        let file = pools::key_file(name);
        let path = self.path(&file);
        let _ = std::fs::remove_file(&path);
        write_key_bytes(&path, &raw)?;
        let loaded = self
            .run_ok(
                &["zfs", "set", &format!("keylocation=file://{file}"), name],
                ZFS_TIMEOUT,
            )
            .and_then(|_| self.run_ok(&["zfs", "load-key", name], ZFS_TIMEOUT));
        if let Err(e) = loaded {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(())
    }

    /// `:scrub-pool`: starts a scrub, refused (409) while one runs.
    pub fn scrub_pool(&self, name: &str) -> Result<(), Refusal> {
        if !self.pool_exists(name)? {
            return Err(Refusal::Failed(format!("zpool '{name}' doesn't exist")));
        }
        if scrubbing(&self.pool(name)?) {
            return Err(Refusal::ScrubRunning);
        }
        self.run_ok(&["zpool", "scrub", name], ZFS_TIMEOUT)?;
        Ok(())
    }

    // --- boot --------------------------------------------------------------------

    /// The names after `prefix` and before `.key` of the key files (sorted).
    fn keyed(&self, prefix: &str) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.path(KEYS_DIR))
            .map(|es| {
                es.flatten()
                    .filter_map(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        n.strip_prefix(prefix)
                            .and_then(|r| r.strip_suffix(".key"))
                            .filter(|r| !r.is_empty())
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// The keys this machine holds for encrypted drives, base64 by the drive's by-id name
    /// (the security state's `drive_recovery_keys`).
    pub fn drive_keys(&self) -> Result<std::collections::BTreeMap<String, String>, String> {
        self.keys("luks.")
    }

    /// The keys this machine holds for pools, base64 by pool name (the security state's
    /// `pool_recovery_keys`).
    pub fn pool_keys(&self) -> Result<std::collections::BTreeMap<String, String>, String> {
        self.keys("zpool.")
    }

    fn keys(&self, prefix: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
        self.keyed(prefix)
            .into_iter()
            .map(|name| {
                let file = format!("{KEYS_DIR}/{prefix}{name}.key");
                let key = std::fs::read(self.path(&file))
                    .map_err(|e| format!("cannot read {file}: {e}"))?;
                Ok((name, base64::engine::general_purpose::STANDARD.encode(key)))
            })
            .collect()
    }

    /// At boot: opens every drive that has a LUKS key, then imports every pool that has a
    /// key file and loads its key, then grows `local` when its partition grew. A drive or
    /// pool that is missing is logged and skipped; the first other failure is returned
    /// (after the remaining steps were tried).
    pub fn load_at_boot(&self) -> Result<(), String> {
        let mut first: Option<String> = None;
        let mut fail = |e: String| {
            tracing::warn!(error = %e, "storage start-up step failed");
            first.get_or_insert(e);
        };
        for name in self.keyed("luks.") {
            let id = format!("{BY_ID}{name}");
            if self.path(&id).symlink_metadata().is_err() {
                tracing::warn!(id, "Couldn't find encrypted drive");
                continue;
            }
            if let Err(e) = self.unlock(&id) {
                tracing::warn!(id, error = %e, "Couldn't unlock encrypted drive");
            }
        }
        for pool in self.keyed("zpool.") {
            match self.run(&["zpool", "import", &pool], ZFS_TIMEOUT) {
                Ran::Out(_) => {}
                Ran::Failed(e)
                    if e.contains(&format!("cannot import '{pool}': no such pool available")) =>
                {
                    tracing::warn!(
                        "Unable to import storage pool '{pool}', its contents will be unavailable"
                    );
                    continue;
                }
                Ran::Failed(e)
                    if e.contains(&format!(
                        "cannot import '{pool}': a pool with that name already exists"
                    )) => {}
                Ran::Failed(e) | Ran::Absent(e) => {
                    fail(e);
                    continue;
                }
            }
            match self.run(&["zfs", "load-key", &pool], ZFS_TIMEOUT) {
                Ran::Out(_) => {}
                Ran::Failed(e) if e.contains("Key load error: Key already loaded for") => {}
                Ran::Failed(e) | Ran::Absent(e) => fail(e),
            }
        }
        if let Err(e) = self.ensure_local() {
            fail(e);
        }
        if let Err(e) = self.expand_local_if_grown() {
            fail(e);
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// When ZFS runs and there is no `local` pool after the keyed pools were imported: a
    /// `local` left by an earlier install is imported and exported again (its key is not
    /// here: `:import-pool` takes it); otherwise this is the first boot, and `local` is
    /// created on the system drive's data partition.
    fn ensure_local(&self) -> Result<(), String> {
        let Some(status) = self.status()? else {
            return Ok(());
        };
        if super::zpool::pool_names(&status)?
            .iter()
            .any(|n| n == pools::LOCAL)
        {
            return Ok(());
        }
        match self.run(&["zpool", "import", pools::LOCAL], ZFS_TIMEOUT) {
            Ran::Out(_) => {
                let repaired = self.repair_imported_local();
                let exported = self
                    .run_ok(&["zpool", "export", pools::LOCAL], ZFS_TIMEOUT)
                    .map(drop);
                return repaired.and(exported);
            }
            Ran::Absent(e) => return Err(e),
            Ran::Failed(_) => {}
        }
        let pool = Pool {
            name: pools::LOCAL.into(),
            kind: "zfs-raid0".into(),
            devices: vec![LOCAL_DATA.into()],
            ..Default::default()
        };
        let plan = pools::plan_create(
            &pool,
            false,
            self.key_exists(&pools::key_file(pools::LOCAL)),
            self,
        )?;
        tracing::info!("creating storage pool 'local'");
        self.create(&plan)
    }

    /// A `local` left by an earlier install, just imported (its key is not here): when it
    /// is a degraded mirror that lost its system-drive member (the system drive was
    /// replaced and the OS installed again) and the surviving member is another disk, the
    /// lost member is replaced by this install's data partition and the resilver waited
    /// for, so the pool is whole when the operator imports it with its key. A pool that
    /// lost its other disk is only reported.
    fn repair_imported_local(&self) -> Result<(), String> {
        let read = || -> Result<Pool, String> {
            let status = self
                .status()?
                .ok_or("zpool 'local' is gone after its import")?;
            super::zpool::pool(&status, pools::LOCAL)
        };
        let local = read()?;
        if !(local.state == "DEGRADED"
            && local.devices.len() == 1
            && local.devices_degraded.len() == 1)
        {
            tracing::warn!(
                "Storage pool 'local' is missing its encryption key: import it with its key (:import-pool)"
            );
            return Ok(());
        }
        let data = pools::Disks::to_id(self, LOCAL_DATA)?;
        if local.devices[0] == data {
            tracing::warn!(
                "Storage pool 'local' is degraded; the second non-system drive appears to be missing"
            );
            return Ok(());
        }
        tracing::info!(
            "Attempting to recover storage pool 'local' using existing non-system drive"
        );
        let lost = local.devices_degraded[0]
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        self.run_ok(
            &["zpool", "replace", pools::LOCAL, &lost, &data],
            ZFS_TIMEOUT,
        )?;
        // Exported mid-resilver, the pool would come back degraded at its import.
        loop {
            let local = read()?;
            if local.state == "ONLINE" {
                tracing::info!("Storage pool 'local' recovered");
                return Ok(());
            }
            std::thread::sleep(RESILVER_POLL);
        }
    }

    /// When systemd-repart grew the data partition this boot, lets a single-disk `local`
    /// use the new space.
    fn expand_local_if_grown(&self) -> Result<(), String> {
        let grown = matches!(
            self.run(
                &[
                    "journalctl",
                    "-b",
                    "-u",
                    "systemd-repart",
                    "-g",
                    "Growing existing partition 10",
                ],
                READ_TIMEOUT,
            ),
            Ran::Out(ref s) if !s.trim().is_empty()
        );
        if !grown || !self.pool_exists(pools::LOCAL)? {
            return Ok(());
        }
        let local = self.pool(pools::LOCAL)?;
        if local.kind != "zfs-raid0" || local.devices.len() != 1 {
            return Ok(());
        }
        tracing::info!("Expanding 'local' pool to utilize new disk capacity");
        self.run_ok(
            &["zpool", "set", "autoexpand=on", pools::LOCAL],
            ZFS_TIMEOUT,
        )?;
        self.run_ok(
            &["zpool", "online", "-e", pools::LOCAL, &local.devices[0]],
            ZFS_TIMEOUT,
        )
        .map(drop)
    }
}
