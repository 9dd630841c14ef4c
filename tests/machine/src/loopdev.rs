//! Loop devices backed by sparse files.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{owned_by_dead_process, owned_tempdir, run_ok, tool};

const PREFIX: &str = "incus-osd-loop";
const MNT_PREFIX: &str = "incus-osd-mnt";

const TIMEOUT: Duration = Duration::from_secs(120);

/// A file system [`LoopDevice::mkfs`] can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filesystem {
    Ext4,
    Btrfs,
}

impl Filesystem {
    /// The `mount -t` type.
    pub fn fstype(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Btrfs => "btrfs",
        }
    }
}

/// A sparse file attached with `losetup --find --show`. Detached and deleted on drop.
#[derive(Debug)]
pub struct LoopDevice {
    device: PathBuf,
    dir: Option<tempfile::TempDir>,
    backing: PathBuf,
    filesystem: Option<Filesystem>,
}

impl LoopDevice {
    /// A sparse file of `size` bytes, attached.
    pub fn new(size: u64) -> Result<LoopDevice> {
        sweep_stale();
        let dir = owned_tempdir(PREFIX)?;
        let backing = dir.path().join("disk.img");
        let f = std::fs::File::create(&backing)?;
        f.set_len(size)
            .with_context(|| format!("sizing {} to {size} bytes", backing.display()))?;
        drop(f);
        let out = run_ok(
            tool("losetup").arg("--find").arg("--show").arg(&backing),
            TIMEOUT,
        )?;
        let device = PathBuf::from(out.trim());
        if !device.starts_with("/dev/") {
            bail!("losetup printed {out:?}, not a device");
        }
        Ok(LoopDevice {
            device,
            dir: Some(dir),
            backing,
            filesystem: None,
        })
    }

    /// [`LoopDevice::new`] then [`LoopDevice::mkfs`].
    pub fn with_filesystem(size: u64, fs: Filesystem) -> Result<LoopDevice> {
        let mut d = LoopDevice::new(size)?;
        d.mkfs(fs)?;
        Ok(d)
    }

    /// Formats the device (`mkfs.ext4 -q -F` / `mkfs.btrfs -q -f`). btrfs needs at least
    /// about 110 MiB.
    pub fn mkfs(&mut self, fs: Filesystem) -> Result<()> {
        let mut cmd = match fs {
            Filesystem::Ext4 => {
                let mut c = tool("mkfs.ext4");
                c.args(["-q", "-F"]);
                c
            }
            Filesystem::Btrfs => {
                let mut c = tool("mkfs.btrfs");
                c.args(["-q", "-f"]);
                c
            }
        };
        run_ok(cmd.arg(&self.device), TIMEOUT)?;
        self.filesystem = Some(fs);
        Ok(())
    }

    /// The block device, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.device
    }

    /// The sparse backing file.
    pub fn backing_file(&self) -> &Path {
        &self.backing
    }

    /// The file system made by [`LoopDevice::mkfs`], if any.
    pub fn filesystem(&self) -> Option<Filesystem> {
        self.filesystem
    }

    /// Mounts the device on a fresh temporary directory; unmounted on drop of the guard.
    pub fn mount(&self) -> Result<Mounted<'_>> {
        let dir = owned_tempdir(MNT_PREFIX)?;
        let mut cmd = tool("mount");
        if let Some(fs) = self.filesystem {
            cmd.args(["-t", fs.fstype()]);
        }
        run_ok(cmd.arg(&self.device).arg(dir.path()), TIMEOUT)?;
        Ok(Mounted {
            dir: Some(dir),
            _device: self,
        })
    }

    /// Detaches the device and deletes the file. Also done on drop. While something else
    /// still has the device open (a concurrent `smartctl` or `blkid`), the kernel only
    /// marks it to detach on last close: this waits (up to 10 s) until it did.
    pub fn detach(&mut self) -> Result<()> {
        let ours = self.backing_file().to_string_lossy().into_owned();
        let Some(dir) = self.dir.take() else {
            return Ok(());
        };
        let r = run_ok(tool("losetup").arg("--detach").arg(&self.device), TIMEOUT);
        drop(dir);
        r?;
        let name = self
            .device
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let backing = std::path::PathBuf::from(format!("/sys/block/{name}/loop/backing_file"));
        // Still ours: the device shows our file (a reused device shows another one).
        let attached =
            || std::fs::read_to_string(&backing).is_ok_and(|b| b.trim_start().starts_with(&ours));
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while attached() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if attached() {
            bail!(
                "{} is still attached 10 s after its detach",
                self.device.display()
            );
        }
        Ok(())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            eprintln!(
                "incus-osd-test-machine: detaching {}: {e:#}",
                self.device.display()
            );
        }
    }
}

/// A mounted [`LoopDevice`]; unmounted (and its mount point removed) on drop.
#[derive(Debug)]
pub struct Mounted<'a> {
    dir: Option<tempfile::TempDir>,
    _device: &'a LoopDevice,
}

impl Mounted<'_> {
    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), |d| d.path())
    }

    /// Unmounts now. Also done on drop.
    pub fn unmount(&mut self) -> Result<()> {
        let Some(dir) = self.dir.take() else {
            return Ok(());
        };
        let r = run_ok(tool("umount").arg(dir.path()), TIMEOUT);
        if r.is_err() {
            // Busy: detach lazily so the directory can go and the loop device can be freed.
            let _ = run_ok(tool("umount").arg("--lazy").arg(dir.path()), TIMEOUT);
        }
        drop(dir);
        r.map(|_| ())
    }
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("incus-osd-test-machine: unmounting: {e:#}");
        }
    }
}

/// Unmounts, detaches and deletes what test processes that were killed left behind: mounts
/// on `incus-osd-mnt-<dead pid>-*`, loop devices backed by `incus-osd-loop-<dead pid>-*`.
fn sweep_stale() {
    let tmp = std::env::temp_dir();
    let stale = |p: &str| {
        Path::new(p)
            .strip_prefix(&tmp)
            .ok()
            .and_then(|r| r.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
    };
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for line in mounts.lines() {
        if let Some(at) = line.split(' ').nth(1) {
            if stale(at).is_some_and(|n| owned_by_dead_process(&n, MNT_PREFIX)) {
                let _ = run_ok(tool("umount").arg("--lazy").arg(at), TIMEOUT);
            }
        }
    }
    let list = run_ok(
        tool("losetup").args(["--list", "--noheadings", "--raw", "--output=NAME,BACK-FILE"]),
        TIMEOUT,
    )
    .unwrap_or_default();
    for line in list.lines() {
        let Some((dev, back)) = line.split_once(' ') else {
            continue;
        };
        if stale(back.trim()).is_some_and(|n| owned_by_dead_process(&n, PREFIX)) {
            let _ = run_ok(tool("losetup").arg("--detach").arg(dev), TIMEOUT);
        }
    }
    if let Ok(rd) = std::fs::read_dir(&tmp) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owned_by_dead_process(&name, PREFIX) {
                let _ = std::fs::remove_dir_all(e.path());
            } else if owned_by_dead_process(&name, MNT_PREFIX) {
                // Only if empty: never recurse into something still mounted.
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
}
