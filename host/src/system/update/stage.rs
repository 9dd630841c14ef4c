//! Staging a downloaded, verified OS release into the inactive A/B slot.
//!
//! The layout is the one the image's `systemd-sysupdate` transfer definitions describe: each
//! slot is three GPT partitions (usr verity signature, usr verity, usr) found by their
//! Discoverable Partitions type for the machine's architecture and named after the version
//! they hold (`<OS>_<ver>_verity_sig`, `<OS>_<ver>_verity`, `<OS>_<ver>`; `_empty` when
//! free); the UKI goes to `<ESP>/EFI/Linux/` as `<OS>_<ver>+3-0.efi` (boot counting with
//! three tries), at most two UKIs of the OS are kept, and the running version is protected.
//!
//! Debian 12 ships no `systemd-sysupdate`. [`stage`] runs it when the machine has it (the
//! binary and at least one transfer definition), and otherwise stages natively with
//! [`stage_native`]: the table is read with `sfdisk --json`, images are written at the
//! partitions' offsets on the disk device with plain writes and an fsync, labels and the
//! read-only flag are set with `sfdisk --part-label` / `--part-attrs`. Every touch of the
//! machine goes through [`DiskOps`], so the decisions are tested without root.
//!
//! Writing through the disk device rather than `/dev/<disk>N` needs no partition device
//! nodes (a container without udev has none); the partition devices keep their own page
//! cache, so the new bytes are read through them only once it is dropped (after the reboot
//! that uses the slot).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::platform::exec::Commands;

/// Where downloaded and verified update files wait to be staged.
pub const UPDATES_DIR: &str = "/var/lib/updates";
/// The UKI directory, relative to the ESP.
pub const UKI_DIR: &str = "EFI/Linux";
/// Boot-counting tries a freshly staged UKI gets.
pub const TRIES_LEFT: u32 = 3;
/// The label of a slot partition that holds nothing usable.
pub const EMPTY_LABEL: &str = "_empty";
/// The `systemd-sysupdate` binary, used only when present.
pub const SYSUPDATE: &str = "/usr/lib/systemd/systemd-sysupdate";
/// Where `systemd-sysupdate` reads transfer definitions.
pub const SYSUPDATE_DIRS: &[&str] = &[
    "/etc/sysupdate.d",
    "/run/sysupdate.d",
    "/usr/local/lib/sysupdate.d",
    "/usr/lib/sysupdate.d",
];

/// GPT attribute bit 60, "read-only", as `sfdisk --part-attrs` spells it.
const READ_ONLY_ATTR: &str = "GUID:60";
const SFDISK_TIMEOUT: Duration = Duration::from_secs(60);
const SYSUPDATE_TIMEOUT: Duration = Duration::from_secs(3600);
const COPY_CHUNK: usize = 1 << 20;

/// The machine architecture, as `systemd-sysupdate`'s `%a` names it in file names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Arm64,
}

impl Arch {
    /// The architecture this daemon was built for, if it is one the OS ships.
    pub fn native() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }

    /// `x86-64` or `arm64`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86-64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The Discoverable Partitions type GUID of `kind` on this architecture (lowercase).
    pub fn type_guid(self, kind: Kind) -> &'static str {
        match (self, kind) {
            (Arch::X86_64, Kind::Usr) => "8484680c-9521-48c6-9c11-b0720656f69e",
            (Arch::X86_64, Kind::Verity) => "77ff5f63-e7b6-4633-acf4-1565b864c0e6",
            (Arch::X86_64, Kind::VeritySig) => "e7bb33fb-06cf-4e81-8273-e543b413e2e2",
            (Arch::Arm64, Kind::Usr) => "b0e01050-ee5f-4390-949a-9101b17104e9",
            (Arch::Arm64, Kind::Verity) => "6e11a4e7-fbca-4ded-b9e9-e1a512bb664e",
            (Arch::Arm64, Kind::VeritySig) => "c23ce4ff-44bd-4b00-b2d4-b41b3419e02a",
        }
    }
}

/// One of the three partitions of a slot, in the order they are staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    VeritySig,
    Verity,
    Usr,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::VeritySig, Kind::Verity, Kind::Usr];

    /// The partition type's name (`usr-verity-sig`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Kind::VeritySig => "usr-verity-sig",
            Kind::Verity => "usr-verity",
            Kind::Usr => "usr",
        }
    }

    /// The partition label of version `ver` of `os`.
    pub fn label(self, os: &str, ver: &str) -> String {
        match self {
            Kind::VeritySig => format!("{os}_{ver}_verity_sig"),
            Kind::Verity => format!("{os}_{ver}_verity"),
            Kind::Usr => format!("{os}_{ver}"),
        }
    }

    /// What follows `<OS>_<ver>.usr-<arch>` in the downloaded image's name.
    fn file_infix(self) -> &'static str {
        match self {
            Kind::VeritySig => "-verity-sig",
            Kind::Verity => "-verity",
            Kind::Usr => "",
        }
    }
}

/// A GPT partition as the table describes it (offsets in bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based partition number.
    pub number: u32,
    /// The type GUID, lowercase.
    pub type_guid: String,
    pub label: String,
    /// Byte offset on the disk.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Every touch of the machine staging makes. Errors are plain text; the caller adds which
/// step failed.
pub trait DiskOps: Send + Sync {
    /// The `systemd-sysupdate` binary when the machine has it and transfer definitions.
    fn sysupdate(&self) -> Option<PathBuf>;
    /// `systemd-sysupdate update <version>`.
    fn run_sysupdate(&self, tool: &Path, version: &str) -> Result<(), String>;
    /// The GPT partitions of `disk`.
    fn partitions(&self, disk: &Path) -> Result<Vec<Partition>, String>;
    /// Writes `image` at the start of `part` on `disk`, zeroes the rest of the partition,
    /// and syncs.
    fn write_partition(&self, disk: &Path, part: &Partition, image: &Path) -> Result<(), String>;
    /// Sets the GPT read-only attribute of partition `number`.
    fn set_read_only(&self, disk: &Path, number: u32) -> Result<(), String>;
    /// Sets the GPT name of partition `number`.
    fn set_label(&self, disk: &Path, number: u32, label: &str) -> Result<(), String>;
    /// The names of the files in `dir`.
    fn list_dir(&self, dir: &Path) -> Result<Vec<String>, String>;
    /// The size of a file in bytes.
    fn file_size(&self, path: &Path) -> Result<u64, String>;
    /// Copies `src` to `dir/temp`, syncs it, renames it to `dir/name`, syncs `dir`.
    fn install_file(&self, src: &Path, dir: &Path, temp: &str, name: &str) -> Result<(), String>;
    /// Removes `dir/name` (absent is fine).
    fn remove_file(&self, dir: &Path, name: &str) -> Result<(), String>;
}

/// What to stage and where.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The OS name in file names and labels (`IncusOS`).
    pub os_name: &'a str,
    /// The release to stage (12 digits).
    pub version: &'a str,
    /// The running release: its slot and UKIs are never touched.
    pub running: &'a str,
    pub arch: Arch,
    /// Where the downloaded files are ([`UPDATES_DIR`]).
    pub updates_dir: &'a Path,
    /// The install disk (a block device holding both slots).
    pub disk: &'a Path,
    /// The ESP mount point (`/boot`).
    pub esp: &'a Path,
}

/// How a release was staged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staged {
    /// By `systemd-sysupdate`, found on the machine.
    Sysupdate { tool: PathBuf },
    /// Natively.
    Native(NativeStaged),
}

/// What native staging did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeStaged {
    /// The partitions written, in [`Kind::ALL`] order.
    pub partitions: Vec<u32>,
    /// The UKI's file name in `<ESP>/EFI/Linux`.
    pub uki: String,
    /// UKI files (and leftovers of interrupted stagings) removed from `<ESP>/EFI/Linux`.
    pub removed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    #[error("invalid OS name {0:?}")]
    BadName(String),
    #[error("invalid OS version {0:?}: expected 12 digits")]
    BadVersion(String),
    #[error("version {0} is the running version; nothing to stage")]
    AlreadyRunning(String),
    #[error("no {what} for version {version} in {dir}")]
    MissingFile {
        what: String,
        version: String,
        dir: String,
    },
    #[error("more than one {what} for version {version} in {dir}: {first} and {second}")]
    AmbiguousFile {
        what: String,
        version: String,
        dir: String,
        first: String,
        second: String,
    },
    #[error("{disk} has {found} {kind} partitions for {arch}; A/B staging needs exactly two")]
    Layout {
        disk: String,
        kind: &'static str,
        arch: &'static str,
        found: usize,
    },
    #[error(
        "no single {kind} partition on {disk} is labelled {label:?} (the running version): \
         cannot tell which slot is running"
    )]
    NoRunningSlot {
        disk: String,
        kind: &'static str,
        label: String,
    },
    #[error(
        "{file} ({size} bytes) does not fit partition {number} ({capacity} bytes); nothing was written"
    )]
    TooLarge {
        file: String,
        size: u64,
        number: u32,
        capacity: u64,
    },
    #[error("{step}: {reason}")]
    Step { step: String, reason: String },
}

fn step(what: impl Into<String>) -> impl FnOnce(String) -> StageError {
    let step = what.into();
    move |reason| StageError::Step { step, reason }
}

/// Stages `req.version` through `systemd-sysupdate` when the machine has it, natively
/// otherwise. The downloaded files are checked to be there either way.
pub fn stage(ops: &dyn DiskOps, req: &Request<'_>) -> Result<Staged, StageError> {
    validate(req)?;
    find_images(ops, req)?;
    if let Some(tool) = ops.sysupdate() {
        tracing::info!(version = req.version, tool = %tool.display(), "staging the OS update with systemd-sysupdate");
        ops.run_sysupdate(&tool, req.version)
            .map_err(step("systemd-sysupdate"))?;
        return Ok(Staged::Sysupdate { tool });
    }
    stage_native(ops, req).map(Staged::Native)
}

/// The downloaded files of one release.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Images {
    /// In [`Kind::ALL`] order.
    parts: [PathBuf; 3],
    uki: PathBuf,
}

/// Stages `req.version` into the slot that does not hold `req.running`.
///
/// Nothing is written until every check passed: the four files are there, the disk has
/// exactly two partitions of each kind, exactly one of each carries the running version's
/// label, the other is the target, each image fits its target, and the ESP's UKI directory
/// is readable. Then, in this order:
///
/// 1. Every UKI of the OS in `<ESP>/EFI/Linux` that is not the running version's is removed,
///    with leftovers of interrupted stagings. A crash here leaves the running UKI, so the
///    machine boots the running version; nothing points at the target slot any more.
/// 2. The three target partitions are labelled `_empty`. A crash leaves a slot nothing
///    picks (no UKI for it, and its labels say it is free).
/// 3. The three images are written (signature, verity, usr), each zero-padded to its
///    partition's end and synced. A crash leaves the slot labelled `_empty`.
/// 4. Each target partition is marked read-only and gets its real label. A crash leaves
///    some labels real and some `_empty`, and still no UKI: the slot is never booted.
/// 5. The UKI is copied to a temporary name, synced, and renamed to `<OS>_<ver>+3-0.efi`.
///    The rename is the commit point: before it the next boot is the running version,
///    after it systemd-boot picks the new release (three tries, then back to the running
///    one).
///
/// The running slot's partitions and the running version's UKIs are never written,
/// relabelled or removed, whatever fails. Running it again after any failure redoes the
/// whole staging.
pub fn stage_native(ops: &dyn DiskOps, req: &Request<'_>) -> Result<NativeStaged, StageError> {
    validate(req)?;
    let images = find_images(ops, req)?;
    let disk = req.disk.display().to_string();
    let table = ops
        .partitions(req.disk)
        .map_err(step(format!("reading the partition table of {disk}")))?;
    let mut targets = Vec::with_capacity(3);
    for (kind, image) in Kind::ALL.into_iter().zip(&images.parts) {
        let target = target_partition(&table, req, kind)?;
        let size = ops
            .file_size(image)
            .map_err(step(format!("reading the size of {}", image.display())))?;
        if size > target.size {
            return Err(StageError::TooLarge {
                file: image.display().to_string(),
                size,
                number: target.number,
                capacity: target.size,
            });
        }
        targets.push((kind, target, image));
    }
    let uki_dir = req.esp.join(UKI_DIR);
    let present = ops
        .list_dir(&uki_dir)
        .map_err(step(format!("listing {}", uki_dir.display())))?;
    let stale = stale_ukis(&present, req.os_name, req.running);
    let uki = uki_name(req.os_name, req.version);
    tracing::info!(
        version = req.version,
        running = req.running,
        partitions = ?targets.iter().map(|(_, p, _)| p.number).collect::<Vec<_>>(),
        "staging the OS update natively into the inactive slot"
    );

    // 1. Nothing may boot the target slot while it is rewritten.
    for name in &stale {
        ops.remove_file(&uki_dir, name)
            .map_err(step(format!("removing {}", uki_dir.join(name).display())))?;
    }
    // 2. Invalidate the target slot.
    for (kind, part, _) in &targets {
        ops.set_label(req.disk, part.number, EMPTY_LABEL)
            .map_err(step(format!(
                "marking {} partition {} of {disk} empty",
                kind.name(),
                part.number
            )))?;
    }
    // 3. Write the images.
    for (kind, part, image) in &targets {
        ops.write_partition(req.disk, part, image)
            .map_err(step(format!(
                "writing {} to {} partition {} of {disk}",
                image.display(),
                kind.name(),
                part.number
            )))?;
    }
    // 4. Name the slot after the release.
    for (kind, part, _) in &targets {
        let label = kind.label(req.os_name, req.version);
        ops.set_read_only(req.disk, part.number)
            .map_err(step(format!(
                "marking {} partition {} of {disk} read-only",
                kind.name(),
                part.number
            )))?;
        ops.set_label(req.disk, part.number, &label)
            .map_err(step(format!(
                "labelling {} partition {} of {disk} {label}",
                kind.name(),
                part.number
            )))?;
    }
    // 5. Commit: the UKI appears under its final name in one rename.
    let temp = temp_name(&uki);
    ops.install_file(&images.uki, &uki_dir, &temp, &uki)
        .map_err(step(format!(
            "installing {} as {}",
            images.uki.display(),
            uki_dir.join(&uki).display()
        )))?;
    tracing::info!(version = req.version, uki = %uki, "OS update staged");
    Ok(NativeStaged {
        partitions: targets.iter().map(|(_, p, _)| p.number).collect(),
        uki,
        removed: stale,
    })
}

fn validate(req: &Request<'_>) -> Result<(), StageError> {
    let name_ok = !req.os_name.is_empty()
        && req
            .os_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !name_ok {
        return Err(StageError::BadName(req.os_name.to_string()));
    }
    if req.version.len() != 12 || !req.version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(StageError::BadVersion(req.version.to_string()));
    }
    if req.version == req.running {
        return Err(StageError::AlreadyRunning(req.version.to_string()));
    }
    Ok(())
}

/// The UKI's name for `ver`: boot counting with [`TRIES_LEFT`] tries, none done (the
/// sysupdate definitions' first target pattern).
pub fn uki_name(os: &str, ver: &str) -> String {
    format!("{os}_{ver}+{TRIES_LEFT}-0.efi")
}

/// Where the UKI is copied before its rename. Names starting with a dot are ignored by
/// systemd-boot.
fn temp_name(uki: &str) -> String {
    format!(".{uki}.tmp")
}

/// The version in a UKI file name of `os` (`<os>_<ver>.efi`, `<os>_<ver>+L.efi`,
/// `<os>_<ver>+L-D.efi`), or `None` for any other file.
pub fn uki_version<'a>(name: &'a str, os: &str) -> Option<&'a str> {
    let rest = name
        .strip_prefix(os)?
        .strip_prefix('_')?
        .strip_suffix(".efi")?;
    let (ver, counter) = match rest.split_once('+') {
        Some((v, c)) => (v, Some(c)),
        None => (rest, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let counter_ok = counter.is_none_or(|c| match c.split_once('-') {
        Some((l, d)) => digits(l) && digits(d),
        None => digits(c),
    });
    (!ver.is_empty() && !ver.contains(['/', '+']) && counter_ok).then_some(ver)
}

/// The files of `<ESP>/EFI/Linux` to remove before staging: every UKI of `os` but the
/// running version's, and temporary copies of interrupted stagings. Other files (another
/// OS's UKIs) are left alone.
fn stale_ukis(present: &[String], os: &str, running: &str) -> Vec<String> {
    let temp_prefix = format!(".{os}_");
    let mut stale: Vec<String> = present
        .iter()
        .filter(|n| match uki_version(n, os) {
            Some(v) => v != running,
            None => n.starts_with(&temp_prefix) && n.ends_with(".efi.tmp"),
        })
        .cloned()
        .collect();
    stale.sort();
    stale
}

/// The partition of `kind` to write: of exactly two, the one not labelled with the running
/// version.
fn target_partition(
    table: &[Partition],
    req: &Request<'_>,
    kind: Kind,
) -> Result<Partition, StageError> {
    let guid = req.arch.type_guid(kind);
    let of_kind: Vec<&Partition> = table
        .iter()
        .filter(|p| p.type_guid.eq_ignore_ascii_case(guid))
        .collect();
    if of_kind.len() != 2 {
        return Err(StageError::Layout {
            disk: req.disk.display().to_string(),
            kind: kind.name(),
            arch: req.arch.name(),
            found: of_kind.len(),
        });
    }
    let running = kind.label(req.os_name, req.running);
    match (of_kind[0].label == running, of_kind[1].label == running) {
        (true, false) => Ok(of_kind[1].clone()),
        (false, true) => Ok(of_kind[0].clone()),
        _ => Err(StageError::NoRunningSlot {
            disk: req.disk.display().to_string(),
            kind: kind.name(),
            label: running,
        }),
    }
}

/// Finds the four downloaded files of `req.version`: `<OS>_<ver>.usr-<arch>[-verity[-sig]]`
/// with or without a `.<uuid>` before `.raw`, and `<OS>_<ver>.efi`.
fn find_images(ops: &dyn DiskOps, req: &Request<'_>) -> Result<Images, StageError> {
    let dir = req.updates_dir;
    let names = ops
        .list_dir(dir)
        .map_err(step(format!("listing {}", dir.display())))?;
    let one = |what: String, matches: &dyn Fn(&str) -> bool| {
        let mut found = names.iter().filter(|n| matches(n));
        let first = found.next().ok_or_else(|| StageError::MissingFile {
            what: what.clone(),
            version: req.version.to_string(),
            dir: dir.display().to_string(),
        })?;
        if let Some(second) = found.next() {
            return Err(StageError::AmbiguousFile {
                what,
                version: req.version.to_string(),
                dir: dir.display().to_string(),
                first: first.clone(),
                second: second.clone(),
            });
        }
        Ok(dir.join(first))
    };
    let mut parts = Vec::with_capacity(3);
    for kind in Kind::ALL {
        let prefix = format!(
            "{}_{}.usr-{}{}.",
            req.os_name,
            req.version,
            req.arch.name(),
            kind.file_infix()
        );
        let matches = |n: &str| {
            n.strip_prefix(&prefix).is_some_and(|rest| {
                rest == "raw" || rest.strip_suffix(".raw").is_some_and(is_uuid_part)
            })
        };
        parts.push(one(format!("{} image", kind.name()), &matches)?);
    }
    let efi = format!("{}_{}.efi", req.os_name, req.version);
    let uki = one("UKI".to_string(), &|n: &str| n == efi)?;
    let parts: [PathBuf; 3] = parts.try_into().expect("three kinds");
    Ok(Images { parts, uki })
}

/// A `@u` of a sysupdate pattern: a UUID, with or without dashes.
fn is_uuid_part(s: &str) -> bool {
    let hex: String = s.chars().filter(|&c| c != '-').collect();
    hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

// ---------------------------------------------------------------------------------------
// The real machine.

/// [`DiskOps`] on this machine: `sfdisk` (through the platform's command runner) for the
/// partition table, plain file I/O for the disk device and the ESP.
pub struct SystemDisk {
    commands: Arc<dyn Commands>,
}

impl SystemDisk {
    pub fn new(commands: Arc<dyn Commands>) -> SystemDisk {
        SystemDisk { commands }
    }

    fn run(&self, argv: &[&str], timeout: Duration) -> Result<Vec<u8>, String> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let out = self.commands.run(&argv, &[], timeout).map_err(|e| e.0)?;
        if out.status != 0 {
            return Err(format!(
                "{} exited with {}: {}",
                argv.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(out.stdout)
    }
}

fn path_str(p: &Path) -> Result<&str, String> {
    p.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", p.display()))
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

impl DiskOps for SystemDisk {
    fn sysupdate(&self) -> Option<PathBuf> {
        sysupdate_in(Path::new(SYSUPDATE), SYSUPDATE_DIRS.iter().map(Path::new))
    }

    fn run_sysupdate(&self, tool: &Path, version: &str) -> Result<(), String> {
        self.run(&[path_str(tool)?, "update", version], SYSUPDATE_TIMEOUT)
            .map(|_| ())
    }

    fn partitions(&self, disk: &Path) -> Result<Vec<Partition>, String> {
        let out = self.run(&["sfdisk", "--json", path_str(disk)?], SFDISK_TIMEOUT)?;
        parse_sfdisk_json(&out)
    }

    fn write_partition(&self, disk: &Path, part: &Partition, image: &Path) -> Result<(), String> {
        let mut src = File::open(image).map_err(io(image.display()))?;
        let len = src.metadata().map_err(io(image.display()))?.len();
        if len > part.size {
            return Err(format!(
                "{} ({len} bytes) is larger than the partition ({} bytes)",
                image.display(),
                part.size
            ));
        }
        let mut dst = OpenOptions::new()
            .write(true)
            .open(disk)
            .map_err(io(disk.display()))?;
        let end = dst.seek(SeekFrom::End(0)).map_err(io(disk.display()))?;
        if part.start.checked_add(part.size).is_none_or(|e| e > end) {
            return Err(format!(
                "partition {} ends past the end of {} ({end} bytes)",
                part.number,
                disk.display()
            ));
        }
        dst.seek(SeekFrom::Start(part.start))
            .map_err(io(disk.display()))?;
        let mut buf = vec![0u8; COPY_CHUNK];
        let mut written = 0u64;
        loop {
            let n = src.read(&mut buf).map_err(io(image.display()))?;
            if n == 0 {
                break;
            }
            if written + n as u64 > part.size {
                return Err(format!("{} grew while it was written", image.display()));
            }
            dst.write_all(&buf[..n]).map_err(io(disk.display()))?;
            written += n as u64;
        }
        // Whatever the slot held before must not survive past the new image's end.
        buf.fill(0);
        while written < part.size {
            let n = (part.size - written).min(COPY_CHUNK as u64) as usize;
            dst.write_all(&buf[..n]).map_err(io(disk.display()))?;
            written += n as u64;
        }
        dst.sync_all().map_err(io(disk.display()))
    }

    fn set_read_only(&self, disk: &Path, number: u32) -> Result<(), String> {
        let n = number.to_string();
        self.run(
            &[
                "sfdisk",
                "--part-attrs",
                path_str(disk)?,
                &n,
                READ_ONLY_ATTR,
            ],
            SFDISK_TIMEOUT,
        )
        .map(|_| ())
    }

    fn set_label(&self, disk: &Path, number: u32, label: &str) -> Result<(), String> {
        let n = number.to_string();
        self.run(
            &["sfdisk", "--part-label", path_str(disk)?, &n, label],
            SFDISK_TIMEOUT,
        )
        .map(|_| ())
    }

    fn list_dir(&self, dir: &Path) -> Result<Vec<String>, String> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io(dir.display()))? {
            let e = e.map_err(io(dir.display()))?;
            if let Ok(n) = e.file_name().into_string() {
                names.push(n);
            }
        }
        names.sort();
        Ok(names)
    }

    fn file_size(&self, path: &Path) -> Result<u64, String> {
        std::fs::metadata(path)
            .map(|m| m.len())
            .map_err(io(path.display()))
    }

    fn install_file(&self, src: &Path, dir: &Path, temp: &str, name: &str) -> Result<(), String> {
        let tmp = dir.join(temp);
        let result = (|| {
            let mut from = File::open(src).map_err(io(src.display()))?;
            let mut to = File::create(&tmp).map_err(io(tmp.display()))?;
            std::io::copy(&mut from, &mut to).map_err(io(tmp.display()))?;
            to.sync_all().map_err(io(tmp.display()))?;
            std::fs::rename(&tmp, dir.join(name)).map_err(io(dir.join(name).display()))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result?;
        // The rename is done; a directory that cannot be synced (some FAT drivers) only
        // delays its durability to the next sync.
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not sync the directory");
        }
        Ok(())
    }

    fn remove_file(&self, dir: &Path, name: &str) -> Result<(), String> {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("{}: {e}", dir.join(name).display()))
            }
            _ => Ok(()),
        }
    }
}

/// `tool` when it exists and one of `dirs` holds a `.transfer` definition.
fn sysupdate_in<'a>(tool: &Path, dirs: impl IntoIterator<Item = &'a Path>) -> Option<PathBuf> {
    if !tool.is_file() {
        return None;
    }
    let has_transfer = |d: &Path| {
        std::fs::read_dir(d).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".transfer"))
        })
    };
    dirs.into_iter()
        .any(has_transfer)
        .then(|| tool.to_path_buf())
}

#[derive(Deserialize)]
struct SfdiskJson {
    partitiontable: SfdiskTable,
}

#[derive(Deserialize)]
struct SfdiskTable {
    label: String,
    #[serde(default)]
    sectorsize: Option<u64>,
    #[serde(default)]
    partitions: Vec<SfdiskPartition>,
}

#[derive(Deserialize)]
struct SfdiskPartition {
    node: String,
    start: u64,
    size: u64,
    #[serde(rename = "type")]
    type_guid: String,
    #[serde(default)]
    name: Option<String>,
}

/// Parses `sfdisk --json` output (sizes in sectors) into partitions with byte offsets.
pub fn parse_sfdisk_json(out: &[u8]) -> Result<Vec<Partition>, String> {
    let parsed: SfdiskJson =
        serde_json::from_slice(out).map_err(|e| format!("unreadable sfdisk --json output: {e}"))?;
    let table = parsed.partitiontable;
    if table.label != "gpt" {
        return Err(format!("the partition table is {}, not gpt", table.label));
    }
    let sector = table.sectorsize.unwrap_or(512);
    table
        .partitions
        .into_iter()
        .map(|p| {
            let at = p.node.len() - p.node.bytes().rev().take_while(u8::is_ascii_digit).count();
            let number = p.node[at..]
                .parse()
                .map_err(|_| format!("no partition number in {:?}", p.node))?;
            let bytes = |sectors: u64| {
                sectors
                    .checked_mul(sector)
                    .ok_or_else(|| format!("partition {number} is out of range"))
            };
            Ok(Partition {
                number,
                type_guid: p.type_guid.to_ascii_lowercase(),
                label: p.name.unwrap_or_default(),
                start: bytes(p.start)?,
                size: bytes(p.size)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
