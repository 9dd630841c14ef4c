//! The storage subsystem at work: reading drives and pools, and running the pool and
//! drive operations through the platform's commands (`zpool`, `zfs`, `smartctl`,
//! `cryptsetup`, `sgdisk`, `blkdiscard`), under the daemon's root prefix.
//!
//! Every decision is made by the pure modules ([`super::pools`], [`super::zpool`],
//! [`super::drives`]); this module only gathers their inputs and runs their steps.

use std::path::{Path, PathBuf};
use std::time::Duration;

use plugin_api::sdk::Host;

use super::drives::{self, BlockDevice, Options};
use super::model::{Drive, Pool, RootPartition, StorageState};
use super::pools::{self, Disks, Step};
use super::zpool;

/// How long a pool command may take (creating a pool on slow disks, a replace).
pub(super) const ZFS_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a read (status, SMART) may take.
pub(super) const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory of the daemon's key files.
pub const KEYS_DIR: &str = "/var/lib/incus-os";

/// The storage subsystem's view of the machine.
pub struct Machine<'a> {
    pub root: &'a Path,
    pub host: &'a Host,
    pub opts: Options,
}

/// Why a command could not give an answer.
pub(super) enum Ran {
    /// It ran; its standard output.
    Out(String),
    /// It ran and failed: `<argv>: <stderr or status>`.
    Failed(String),
    /// It could not run at all (not installed, or commands are off under a dev root).
    Absent(String),
}

impl Machine<'_> {
    pub(super) fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    pub(super) fn run(&self, argv: &[&str], timeout: Duration) -> Ran {
        match self.host.run(argv, timeout) {
            Ok(out) if out.status == 0 => Ran::Out(out.stdout),
            Ok(out) => {
                let why = if out.stderr.trim().is_empty() {
                    format!("exit status {}", out.status)
                } else {
                    format!("exit status {} ({})", out.status, out.stderr.trim())
                };
                Ran::Failed(format!("Failed to run: {}: {why}", argv.join(" ")))
            }
            Err(e) => Ran::Absent(e.to_string()),
        }
    }

    /// Runs a command that must succeed.
    pub(super) fn run_ok(&self, argv: &[&str], timeout: Duration) -> Result<String, String> {
        match self.run(argv, timeout) {
            Ran::Out(s) => Ok(s),
            Ran::Failed(e) | Ran::Absent(e) => Err(e),
        }
    }

    // --- pools -------------------------------------------------------------------

    /// `zpool status` of every pool; `None` when ZFS is not there to ask.
    pub(super) fn status(&self) -> Result<Option<String>, String> {
        match self.run(&["zpool", "status", "-jp", "--json-int"], READ_TIMEOUT) {
            Ran::Out(s) => Ok(Some(s)),
            Ran::Failed(e) => Err(e),
            Ran::Absent(e) => {
                tracing::debug!(error = %e, "zpool cannot run: no pools to show");
                Ok(None)
            }
        }
    }

    pub fn pool_exists(&self, name: &str) -> Result<bool, String> {
        Ok(match self.status()? {
            Some(s) => zpool::pool_names(&s)?.iter().any(|n| n == name),
            None => false,
        })
    }

    pub(super) fn key_exists(&self, file: &str) -> bool {
        self.path(file).symlink_metadata().is_ok()
    }

    /// One pool, complete (key status, special small blocks, volumes, managed).
    fn read_pool(&self, status: &str, name: &str) -> Result<Pool, String> {
        let mut p = zpool::pool(status, name)?;
        let get = self.run_ok(&["zfs", "get", "keystatus", name, "-j"], READ_TIMEOUT)?;
        p.encryption_key_status = zpool::keystatus(&get, name)?;
        if let Some(special) = p.special.as_mut() {
            let v = self.run_ok(
                &[
                    "zfs",
                    "get",
                    "special_small_blocks",
                    "-H",
                    "-o",
                    "value",
                    name,
                ],
                READ_TIMEOUT,
            )?;
            special.special_small_blocks_size_in_kb = zpool::small_blocks_kb(&v)?;
        }
        let list = self.run_ok(
            &[
                "zfs",
                "list",
                "-r",
                "-d1",
                name,
                "-o",
                "name,quota,used,incusos:use",
                "-j",
                "--json-int",
            ],
            READ_TIMEOUT,
        )?;
        p.volumes = zpool::volumes(&list, name)?;
        p.managed = self.key_exists(&pools::key_file(name));
        Ok(p)
    }

    pub fn pools(&self) -> Result<Vec<Pool>, String> {
        let Some(status) = self.status()? else {
            return Ok(Vec::new());
        };
        zpool::pool_names(&status)?
            .iter()
            .map(|n| self.read_pool(&status, n))
            .collect()
    }

    pub fn pool(&self, name: &str) -> Result<Pool, String> {
        let status = self
            .status()?
            .ok_or_else(|| format!("zpool '{name}' doesn't exist"))?;
        self.read_pool(&status, name)
    }

    // --- drives ------------------------------------------------------------------

    /// The device the root prefix's file system is on.
    fn root_device(&self) -> Option<(u32, u32)> {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(self.root).ok()?.dev();
        Some((libc::major(dev), libc::minor(dev)))
    }

    /// Kernel names of the disks the system runs from.
    fn boot_disks(&self) -> Vec<String> {
        match self.root_device() {
            Some((major, minor)) => drives::disks_under(self.root, major, minor),
            None => Vec::new(),
        }
    }

    fn multipath(&self, dev: &BlockDevice) -> bool {
        if dev.name.starts_with("nvme") && drives::nvme_paths(self.root, dev) > 1 {
            return true;
        }
        let path = format!("/dev/{}", dev.name);
        matches!(
            self.run(&["multipath", "-c", &path], READ_TIMEOUT),
            Ran::Out(_)
        )
    }

    fn smart(&self, dev: &BlockDevice) -> drives::SmartFacts {
        let path = format!("/dev/{}", dev.name);
        // smartctl's exit status is a bit mask (no SMART, failing attributes...); its
        // JSON says what it found either way.
        match self.host.run(&["smartctl", "-aj", &path], READ_TIMEOUT) {
            Ok(out) => drives::smart_facts(&out.stdout),
            Err(_) => drives::SmartFacts::default(),
        }
    }

    /// Every drive, sorted by id, with the pool it belongs to.
    pub fn drives(&self, pools: &[Pool]) -> Vec<Drive> {
        let boot = self.boot_disks();
        let mut out = Vec::new();
        for dev in drives::block_devices(self.root, self.opts) {
            let Some(id) = drives::stable_id(&dev, true) else {
                continue;
            };
            if drives::is_bmc(&id) {
                continue;
            }
            let facts = self.smart(&dev);
            let (wwn, wwn_id) = drives::wwn(&dev);
            let base = id.rsplit('/').next().unwrap_or(&id).to_string();
            let encrypted = self.key_exists(&luks_key_file(&base));
            out.push(Drive {
                member_pool: member_pool(pools, &id, &dev.links),
                boot: boot.contains(&dev.name),
                multipath: self.multipath(&dev),
                remote: drives::is_remote(self.root, &dev),
                removable: dev.removable,
                capacity_in_bytes: dev.size_bytes,
                model_family: facts.model_family,
                model_name: facts.model_name,
                serial_number: facts.serial_number,
                bus: facts.bus,
                smart: facts.smart,
                wwn,
                wwn_id,
                encrypted,
                encrypted_id: if encrypted {
                    format!("/dev/mapper/luks-{base}")
                } else {
                    String::new()
                },
                id,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    pub fn root_partition(&self) -> RootPartition {
        let space = std::fs::File::open(self.root)
            .and_then(|f| crate::platform::uploads::space(&f))
            .unwrap_or((0, 0));
        RootPartition {
            size_in_bytes: space.1 as i64,
            available_in_bytes: space.0 as i64,
        }
    }

    pub fn state(&self) -> Result<StorageState, String> {
        let pools = self.pools()?;
        Ok(StorageState {
            drives: self.drives(&pools),
            pools,
            root_partition: self.root_partition(),
        })
    }

    // --- changes -----------------------------------------------------------------

    /// Creates `pool` or brings an existing one to it.
    pub fn apply_pool(&self, pool: &Pool) -> Result<(), String> {
        // One `zpool status` both says whether the pool exists and describes it.
        if let Some(status) = self.status()?.filter(|_| !pool.name.is_empty()) {
            if zpool::pool_names(&status)?.contains(&pool.name) {
                let current = self.read_pool(&status, &pool.name)?;
                let steps = pools::plan_update(&current, pool, self)?;
                return self.run_steps(&steps);
            }
        }
        let plan = pools::plan_create(
            pool,
            false,
            self.key_exists(&pools::key_file(&pool.name)),
            self,
        )?;
        self.create(&plan)
    }

    pub(super) fn create(&self, plan: &pools::CreatePlan) -> Result<(), String> {
        write_key(&self.path(&plan.key_file))?;
        let args: Vec<&str> = plan.create.iter().map(String::as_str).collect();
        let mut argv = vec!["zpool"];
        argv.extend(&args);
        let result = match self.run(&argv, ZFS_TIMEOUT) {
            Ran::Out(_) => Ok(()),
            Ran::Failed(e) if e.contains(pools::MIXED_SIZES_MARK) => {
                if plan.allow_mixed_dev_sizes {
                    argv.push("-f");
                    self.run_ok(&argv, ZFS_TIMEOUT).map(drop)
                } else {
                    Err(pools::MIXED_SIZES_REFUSED.to_string())
                }
            }
            Ran::Failed(e) | Ran::Absent(e) => Err(e),
        };
        if let Err(e) = result {
            // The pool does not exist: neither does its key.
            let _ = std::fs::remove_file(self.path(&plan.key_file));
            return Err(e);
        }
        self.run_steps(&plan.after)
    }

    pub fn run_steps(&self, steps: &[Step]) -> Result<(), String> {
        for step in steps {
            tracing::info!(step = ?step, "storage");
            match step {
                Step::Zpool(args) => self.tool("zpool", args)?,
                Step::Zfs(args) => self.tool("zfs", args)?,
                Step::Wipe(dev) => super::wipe::clear(self, dev, false)?,
                Step::PartitionForLocal(disk) => self.partition_for_local(disk)?,
            }
        }
        Ok(())
    }

    fn tool(&self, tool: &str, args: &[String]) -> Result<(), String> {
        let mut argv = vec![tool];
        argv.extend(args.iter().map(String::as_str));
        self.run_ok(&argv, ZFS_TIMEOUT).map(drop)
    }

    fn partition_for_local(&self, disk: &str) -> Result<(), String> {
        self.run_ok(&["sgdisk", "-n", "11:69826560:", disk], ZFS_TIMEOUT)?;
        self.run_ok(&["udevadm", "settle"], READ_TIMEOUT)?;
        let part = pools::local_partition(disk);
        for _ in 0..40 {
            if self.path(&part).symlink_metadata().is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "timed out waiting for new partition '{part}' to appear"
        ))
    }

    /// Runs a discard tool on a device (used by the wipe).
    pub(super) fn discard(&self, argv: &[&str]) -> bool {
        matches!(self.run(argv, ZFS_TIMEOUT), Ran::Out(_))
    }
}

/// Where the key of an encrypted drive lives (`<name>`: the by-id base name).
pub fn luks_key_file(name: &str) -> String {
    format!("{KEYS_DIR}/luks.{name}.key")
}

/// The pool a drive belongs to: its by-id name (or any of its links) among a pool's
/// members, degraded ones included; for `local`, its data partition.
fn member_pool(pools: &[Pool], id: &str, links: &[String]) -> String {
    let names: Vec<String> = std::iter::once(id.to_string())
        .chain(links.iter().map(|l| format!("/dev/{l}")))
        .collect();
    for p in pools {
        let mut members: Vec<&String> = p
            .devices
            .iter()
            .chain(&p.log)
            .chain(&p.cache)
            .chain(&p.devices_degraded)
            .chain(&p.log_degraded)
            .chain(&p.cache_degraded)
            .chain(&p.special_degraded)
            .collect();
        if let Some(s) = &p.special {
            members.extend(&s.devices);
        }
        let hit = members.iter().any(|m| {
            names
                .iter()
                .any(|n| *m == n || (p.name == pools::LOCAL && **m == pools::local_partition(n)))
        });
        if hit {
            return p.name.clone();
        }
    }
    String::new()
}

/// Writes 32 random bytes to a new key file (mode 0600); an existing file is an error.
pub fn write_key(path: &Path) -> Result<(), String> {
    let mut key = [0u8; 32];
    getrandom::getrandom(&mut key).map_err(|e| format!("cannot generate a key: {e}"))?;
    write_key_bytes(path, &key)
}

/// Writes `key` to a new key file (mode 0600), durably.
pub fn write_key_bytes(path: &Path, key: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(key)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

impl Disks for Machine<'_> {
    fn to_id(&self, device: &str) -> Result<String, String> {
        if device.is_empty() {
            return Err("empty string provided for device path".into());
        }
        if device.starts_with("/dev/disk/by-id/") {
            return Ok(device.to_string());
        }
        // Follow a /dev symlink (by-path, by-uuid...) to its kernel name.
        let node = self.path(device);
        let name = std::fs::canonicalize(&node)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| device.rsplit('/').next().unwrap_or(device).to_string());
        let dev = std::fs::read_to_string(self.path(&format!("/sys/class/block/{name}/dev")))
            .ok()
            .and_then(|d| {
                let (a, b) = d.trim().split_once(':')?;
                Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?))
            });
        let Some((major, minor)) = dev else {
            return Err(format!("unable to determine device ID for {device}"));
        };
        let (links, _) = drives::udev_record(self.root, major, minor);
        let bd = BlockDevice {
            name,
            major,
            minor,
            links,
            ..Default::default()
        };
        drives::stable_id(&bd, false)
            .ok_or_else(|| format!("unable to determine device ID for {device}"))
    }

    fn system_disk(&self) -> Result<String, String> {
        let disks = self.boot_disks();
        let name = disks
            .first()
            .ok_or_else(|| "cannot find the disk the system runs from".to_string())?;
        self.to_id(&format!("/dev/{name}"))
    }

    fn present(&self, device: &str) -> bool {
        self.path(device).exists()
    }
}

#[cfg(test)]
mod tests {
    //! The storage subsystem against scripted commands: `zpool`/`zfs` answer with JSON in
    //! the layout OpenZFS prints, and every command line the subsystem runs is recorded
    //! and checked exactly (this kernel has no ZFS).

    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::platform::Platform;
    use crate::system::host::{self, Subsystem};
    use crate::testing::Script;

    const SUB: Subsystem = Subsystem {
        name: "storage",
        writable: &[],
    };

    /// A root with sda (the system disk, whose partition 11 is `local`'s) and sdb, sdc.
    struct Env {
        root: tempfile::TempDir,
        script: Script,
        host: Host,
    }

    fn file(root: &Path, path: &str, text: &str) {
        crate::testing::fake_file(root, path, text)
    }

    fn env() -> Env {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        crate::testing::fake_disks(r);
        let script = Script::default();
        crate::testing::plain_drives(&script);
        let mut platform = Platform::for_root(r);
        platform.commands = Arc::new(script.clone());
        let host = host::handle(r, &platform, &SUB);
        Env { root, script, host }
    }

    impl Env {
        fn machine(&self) -> Machine<'_> {
            Machine {
                root: self.root.path(),
                host: &self.host,
                opts: Options::default(),
            }
        }
        fn exists(&self, path: &str) -> bool {
            self.root.path().join(path.trim_start_matches('/')).exists()
        }
    }

    fn status_json(pools: &[(&str, serde_json::Value)]) -> String {
        let mut ps = serde_json::Map::new();
        for (name, top) in pools {
            ps.insert(
                name.to_string(),
                json!({"name": name, "state": "ONLINE", "vdevs": {*name: {"name": name, "vdevs": top}},
                       "error_count": 0}),
            );
        }
        json!({"output_version": {"command": "zpool status", "vers_major": 0, "vers_minor": 1}, "pools": ps})
            .to_string()
    }

    fn d(name: &str) -> serde_json::Value {
        json!({"name": name, "vdev_type": "disk", "state": "ONLINE",
               "alloc_space": 1000, "total_space": 10200547328u64, "def_space": 10200547328u64})
    }

    fn keystatus(pool: &str, v: &str) -> String {
        json!({"datasets": {pool: {"properties": {"keystatus": {"value": v}}}}}).to_string()
    }

    fn list(pool: &str) -> String {
        json!({"datasets": {pool: {"properties": {}}}}).to_string()
    }

    #[test]
    fn the_state_shows_drives_by_id_with_their_pool_and_the_boot_drive() {
        let e = env();
        e.script
            .on(
                "zpool status",
                0,
                &status_json(&[(
                    "local",
                    json!({"scsi-incus_root-part11": d("scsi-incus_root-part11")}),
                )]),
                "",
            )
            .on("zfs get keystatus", 0, &keystatus("local", "available"), "")
            .on("zfs list", 0, &list("local"), "");
        let m = e.machine();
        let s = m.state().unwrap();
        let ids: Vec<&str> = s.drives.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "/dev/disk/by-id/scsi-incus_disk1",
                "/dev/disk/by-id/scsi-incus_disk2",
                "/dev/disk/by-id/scsi-incus_root"
            ]
        );
        let root = &s.drives[2];
        assert!(root.boot);
        assert_eq!(root.member_pool, "local");
        assert_eq!(root.capacity_in_bytes, 2097152 * 512);
        assert_eq!(root.smart, None, "no SMART on this drive");
        assert!(!s.drives[0].boot);
        assert_eq!(s.drives[0].member_pool, "");
        assert_eq!(s.pools.len(), 1);
        assert_eq!(s.pools[0].kind, "zfs-raid0");
        assert_eq!(s.pools[0].encryption_key_status, "available");
        assert!(!s.pools[0].managed, "no key file");
        assert!(s.root_partition.size_in_bytes > 0);
    }

    #[test]
    fn without_zfs_there_are_no_pools_but_drives_still_show() {
        let e = env();
        let s = e.machine().state().unwrap();
        assert!(s.pools.is_empty());
        assert_eq!(s.drives.len(), 3);
        // A zpool that runs and fails is an error, not an empty list.
        e.script.on("zpool status", 1, "", "kernel module missing");
        assert_eq!(
            e.machine().state().unwrap_err(),
            "Failed to run: zpool status -jp --json-int: exit status 1 (kernel module missing)"
        );
    }

    #[test]
    fn a_new_pool_is_created_with_a_fresh_key_and_exactly_upstreams_command() {
        let e = env();
        e.script
            .on("zpool status", 0, &status_json(&[]), "")
            .on("zpool create", 0, "", "");
        let pool = Pool {
            name: "tank".into(),
            kind: "zfs-raid1".into(),
            devices: vec!["/dev/sdb".into(), "/dev/disk/by-id/scsi-incus_disk2".into()],
            ..Default::default()
        };
        e.machine().apply_pool(&pool).unwrap();
        assert_eq!(
            e.script.changes(),
            ["zpool create -o ashift=12 -O mountpoint=none -O encryption=aes-256-gcm -O keyformat=raw -O keylocation=file:///var/lib/incus-os/zpool.tank.key tank mirror /dev/disk/by-id/scsi-incus_disk1 /dev/disk/by-id/scsi-incus_disk2"]
        );
        let key = e.root.path().join("var/lib/incus-os/zpool.tank.key");
        assert_eq!(std::fs::read(&key).unwrap().len(), 32);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn mixed_sizes_are_refused_unless_allowed_and_a_failed_create_leaves_no_key() {
        let e = env();
        let mixed = "invalid vdev specification\nuse '-f' to override the following errors:\nmirror contains devices of different sizes";
        e.script
            .on("zpool status", 0, &status_json(&[]), "")
            .on("zpool create", 1, "", mixed);
        let mut pool = Pool {
            name: "tank".into(),
            kind: "zfs-raid1".into(),
            devices: vec!["/dev/sdb".into(), "/dev/sdc".into()],
            ..Default::default()
        };
        assert_eq!(
            e.machine().apply_pool(&pool).unwrap_err(),
            pools::MIXED_SIZES_REFUSED
        );
        assert!(!e.exists("/var/lib/incus-os/zpool.tank.key"));
        pool.allow_mixed_dev_sizes = true;
        // The same refusal again, then the retry with -f succeeds.
        e.script
            .on("zpool create", 1, "", mixed)
            .on("zpool create", 0, "", "");
        e.machine().apply_pool(&pool).unwrap();
        let changes = e.script.changes();
        assert_eq!(changes.len(), 3);
        assert!(changes[2].ends_with(" -f"), "{changes:?}");
        assert!(e.exists("/var/lib/incus-os/zpool.tank.key"));
    }

    #[test]
    fn an_existing_pool_is_changed_step_by_step_and_the_old_device_wiped() {
        let e = env();
        e.script
            .on(
                "zpool status",
                0,
                &status_json(&[("tank", json!({"scsi-incus_disk1": d("scsi-incus_disk1")}))]),
                "",
            )
            .on("zfs get keystatus", 0, &keystatus("tank", "available"), "")
            .on("zfs list", 0, &list("tank"), "")
            .on("zpool replace", 0, "", "")
            .on("blkdiscard", 1, "", "not a block device");
        file(e.root.path(), "/dev/sdb", "old pool data");
        let pool = Pool {
            name: "tank".into(),
            kind: "zfs-raid0".into(),
            devices: vec!["/dev/sdc".into()],
            ..Default::default()
        };
        e.machine().apply_pool(&pool).unwrap();
        assert_eq!(
            e.script.changes(),
            ["zpool replace tank /dev/disk/by-id/scsi-incus_disk1 /dev/disk/by-id/scsi-incus_disk2"]
        );
        // The replaced drive (a plain file here) was cleared.
        let old = std::fs::read(e.root.path().join("dev/sdb")).unwrap();
        assert!(old.iter().all(|b| *b == 0) && old.len() == 13, "{old:?}");
    }

    #[test]
    fn a_refused_change_runs_nothing() {
        let e = env();
        e.script
            .on("zpool status", 0, &status_json(&[("tank", json!({"mirror-0": {"name": "mirror-0", "vdev_type": "mirror", "state": "ONLINE",
                "vdevs": {"scsi-incus_disk1": d("scsi-incus_disk1")}}}))]), "")
            .on("zfs get keystatus", 0, &keystatus("tank", "available"), "")
            .on("zfs list", 0, &list("tank"), "");
        let pool = Pool {
            name: "tank".into(),
            kind: "zfs-raid1".into(),
            devices: vec!["/dev/sdb".into(), "/dev/sdc".into(), "/dev/sda".into()],
            ..Default::default()
        };
        assert!(e
            .machine()
            .apply_pool(&pool)
            .unwrap_err()
            .starts_with("expanding a pool can only"));
        assert!(e.script.changes().is_empty());
    }
}
