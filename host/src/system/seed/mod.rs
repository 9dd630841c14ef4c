//! Seeds: configuration a new system starts from (upstream's lookup and file names).
//!
//! Where they come from, everything under the daemon's root prefix:
//! 1. a partition labelled `SEED_DATA` (GPT partition label or filesystem label), read in
//!    process as FAT, else ISO 9660 ([`crate::platform::volume`]; upstream mounts it
//!    read-only as `vfat`, then `iso9660`), and `<name>.json|yaml|yml` read from its top;
//! 2. otherwise the raw `seed-data` partition, or partition 2 of the boot disk, read as a
//!    tar archive (the `ustar` magic at offset 257 is required; a leading `./` on entry
//!    names is dropped).
//!
//! A missing partition, a partition without an archive and a missing file all mean "no
//! seed". Decoding is strict: an unknown field, or a field of the wrong type, is an error
//! naming the seed file and the field.

pub mod apply;
pub mod reset;
pub mod types;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::platform::volume::{self, Volume};
pub use types::Seed;

/// Every seed upstream knows.
pub const NAMES: [&str; 11] = [
    "install",
    "applications",
    "incus",
    "kernel",
    "network",
    "migration-manager",
    "operations-center",
    "provider",
    "security",
    "services",
    "update",
];

/// The file name extensions a seed is looked up with, in this order.
pub const EXTENSIONS: [&str; 3] = ["json", "yaml", "yml"];

/// The label of a user-provided seed partition or medium.
pub const SEED_DATA_LABEL: &str = "SEED_DATA";
/// The GPT label of the installed disk's seed partition.
pub const SEED_PARTLABEL: &str = "/dev/disk/by-partlabel/seed-data";
/// The seed partition's number on the boot disk.
pub const SEED_PARTITION: u32 = 2;
/// The most a seed archive is read (its entries are small configuration files).
const MAX_ARCHIVE: u64 = 64 << 20;
/// The most a seed file on a medium is read.
const MAX_FILE: u64 = 16 << 20;

/// Seed files: names and contents, in order.
pub type SeedFiles = Vec<(String, Vec<u8>)>;

/// A seed that is present but cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seed '{seed}' ({file}): {message}")]
pub struct SeedError {
    pub seed: String,
    pub file: String,
    pub message: String,
}

/// The seed files found, by file name (`network.yaml`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seeds {
    files: BTreeMap<String, Vec<u8>>,
    /// Where they were found (for the log): a device path, or empty.
    pub source: String,
}

impl Seeds {
    /// Seeds from file names and contents (tests, and the archive and directory readers).
    pub fn from_files(
        source: impl Into<String>,
        files: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) -> Seeds {
        Seeds {
            files: files.into_iter().collect(),
            source: source.into(),
        }
    }

    /// Whether no seed file was found.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The file of seed `name`: the first of `.json`, `.yaml`, `.yml` present.
    pub fn file(&self, name: &str) -> Option<(String, &[u8])> {
        EXTENSIONS.iter().find_map(|ext| {
            let file = format!("{name}.{ext}");
            self.files.get(&file).map(|b| (file, b.as_slice()))
        })
    }

    /// Whether seed `name` is present (whatever its content).
    pub fn has(&self, name: &str) -> bool {
        self.file(name).is_some()
    }

    /// Seed `name` decoded to its top-level mapping (`None`: absent).
    pub fn raw(&self, name: &str) -> Result<Option<Map<String, Value>>, SeedError> {
        let Some((file, bytes)) = self.file(name) else {
            return Ok(None);
        };
        decode_map(&file, bytes)
            .map(Some)
            .map_err(|message| SeedError {
                seed: name.to_string(),
                file,
                message,
            })
    }

    /// Seed `T`, strictly decoded (`None`: absent).
    pub fn get<T: Seed>(&self) -> Result<Option<T>, SeedError> {
        let Some(map) = self.raw(T::NAME)? else {
            return Ok(None);
        };
        T::decode(map).map(Some).map_err(|message| SeedError {
            seed: T::NAME.to_string(),
            file: self.file(T::NAME).map(|(f, _)| f).unwrap_or_default(),
            message,
        })
    }
}

/// A seed file's top-level mapping: JSON by a `.json` name, else YAML. An empty file (or
/// a YAML document that is only a comment) is an error, as is anything but a mapping.
fn decode_map(file: &str, bytes: &[u8]) -> Result<Map<String, Value>, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("the file is empty".into());
    }
    let value: Value = if file.ends_with(".json") {
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?
    } else {
        serde_norway::from_slice(bytes).map_err(|e| format!("not valid YAML: {e}"))?
    };
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Err("the file is empty".into()),
        other => Err(format!(
            "expected a mapping at the top, got {}",
            kind(&other)
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Decodes `value` into `T`, refusing any field `T` does not name (at any depth) and
/// naming the field of a type error.
pub fn strict<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    let mut unknown = Vec::new();
    let result = {
        // `?` marks an `Option` on the way: not a field the user wrote.
        let mut record = |path: serde_ignored::Path<'_>| {
            let p = path.to_string();
            unknown.push(
                p.split('.')
                    .filter(|s| *s != "?")
                    .collect::<Vec<_>>()
                    .join("."),
            )
        };
        let de = serde_ignored::Deserializer::new(value, &mut record);
        serde_path_to_error::deserialize::<_, T>(de)
    };
    let out = result.map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            e.inner().to_string()
        } else {
            format!("field '{path}': {}", e.inner())
        }
    })?;
    if let Some(field) = unknown.first() {
        return Err(format!("unknown field '{field}'"));
    }
    Ok(out)
}

/// The path of partition `n` of `disk` (`/dev/sda` → `/dev/sda2`): upstream's rules (`p`
/// for NVMe and MMC disks and `/dev/mapper/srN` media, `-part` for other device-mapper
/// devices, nothing otherwise), and `p` for loop devices too, as the kernel names them.
pub fn partition_path(disk: &str, n: u32) -> String {
    let mapper_sr = disk
        .strip_prefix("/dev/mapper/sr")
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()));
    let prefix = if disk.contains("/nvme")
        || disk.contains("/mmcblk")
        || disk.contains("/loop")
        || mapper_sr
    {
        "p"
    } else if disk.starts_with("/dev/mapper/") {
        "-part"
    } else {
        ""
    };
    format!("{disk}{prefix}{n}")
}

/// The host path of OS path `os_path` under `root`, with symlinks resolved (inside the
/// root: a link's absolute target is taken under the root). `None` when it does not
/// exist.
pub fn device(root: &Path, os_path: &str) -> Option<PathBuf> {
    let mut path = root.join(os_path.trim_start_matches('/'));
    for _ in 0..16 {
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if !meta.file_type().is_symlink() {
            return Some(path);
        }
        let target = std::fs::read_link(&path).ok()?;
        path = if target.is_absolute() {
            root.join(target.strip_prefix("/").unwrap_or(&target))
        } else {
            normalize(&path.parent()?.join(target))
        };
    }
    None
}

/// Removes `.` and `..` lexically.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The OS path a host path under `root` stands for (what a command on the machine is
/// given): `root` itself is `/`.
fn os_path_of(root: &Path, host: &Path) -> String {
    match host.strip_prefix(root) {
        Ok(rel) => format!("/{}", rel.display()),
        Err(_) => host.display().to_string(),
    }
}

/// Finds the seeds (see the module's text). `boot_disk` is the OS path of the disk the
/// system runs from (its partition 2 holds the archive when no `seed-data` label exists).
/// Anything that goes wrong reading a seed source is logged and means no seeds.
pub fn lookup(root: &Path, boot_disk: Option<&str>) -> Seeds {
    for dir in ["/dev/disk/by-partlabel", "/dev/disk/by-label"] {
        let label = format!("{dir}/{SEED_DATA_LABEL}");
        if let Some(dev) = device(root, &label) {
            let read = volume::open(&dev).and_then(|v| read_volume_seeds(v.as_ref()));
            return match read {
                Ok(files) => Seeds::from_files(os_path_of(root, &dev), files),
                Err(e) => {
                    tracing::error!(device = %label, error = %e, "cannot read the seed partition");
                    Seeds::default()
                }
            };
        }
    }
    let dev = device(root, SEED_PARTLABEL)
        .or_else(|| boot_disk.and_then(|d| device(root, &partition_path(d, SEED_PARTITION))));
    let Some(dev) = dev else {
        return Seeds::default();
    };
    match read_archive(&dev) {
        Ok(Some(files)) => Seeds::from_files(
            os_path_of(root, &dev),
            files
                .into_iter()
                .filter(|(n, _)| is_seed_file(n))
                .collect::<Vec<_>>(),
        ),
        Ok(None) => Seeds::default(),
        Err(e) => {
            tracing::error!(device = %dev.display(), error = %e, "cannot read the seed archive");
            Seeds::default()
        }
    }
}

/// Whether `file` is `<seed>.<ext>` for a known seed and extension.
fn is_seed_file(file: &str) -> bool {
    file.rsplit_once('.')
        .is_some_and(|(n, ext)| NAMES.contains(&n) && EXTENSIONS.contains(&ext))
}

/// The seed files at the top of a volume (a `SEED_DATA` medium).
pub fn read_volume_seeds(v: &dyn Volume) -> Result<SeedFiles, String> {
    let mut out = vec![];
    for name in NAMES {
        for ext in EXTENSIONS {
            let file = format!("{name}.{ext}");
            match v.read(&file, MAX_FILE) {
                Ok(Some(b)) => out.push((file, b)),
                Ok(None) => {}
                Err(e) => return Err(format!("cannot read {file} ({}): {e}", v.kind())),
            }
        }
    }
    Ok(out)
}

/// The regular files of the tar archive at the start of `path` (a partition), names
/// without a leading `./`. `None`: no archive there (no `ustar` magic at offset 257).
pub fn read_archive(path: &Path) -> Result<Option<SeedFiles>, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut head = [0u8; 512];
    let mut got = 0;
    while got < head.len() {
        match f.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(format!("cannot read: {e}")),
        }
    }
    if got < head.len() || &head[257..262] != b"ustar" {
        return Ok(None);
    }
    let stream = std::io::Cursor::new(head).chain(f).take(MAX_ARCHIVE);
    let mut archive = tar::Archive::new(stream);
    let mut out = vec![];
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| format!("bad archive: {e}"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| format!("bad entry name: {e}"))?
            .to_string_lossy()
            .to_string();
        let name = name.strip_prefix("./").unwrap_or(&name).to_string();
        let mut data = vec![];
        entry
            .read_to_end(&mut data)
            .map_err(|e| format!("cannot read {name}: {e}"))?;
        out.push((name, data));
    }
    Ok(Some(out))
}

/// A tar archive (ustar headers, mode 0600) of `files`, in order.
pub fn build_archive(files: &[(String, Vec<u8>)]) -> Result<Vec<u8>, String> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).map_err(|e| format!("{name}: {e}"))?;
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mtime(0);
        h.set_cksum();
        b.append(&h, data.as_slice())
            .map_err(|e| format!("{name}: {e}"))?;
    }
    b.into_inner().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::types::*;
    use super::*;

    fn seeds(files: &[(&str, &str)]) -> Seeds {
        Seeds::from_files(
            "test",
            files
                .iter()
                .map(|(n, c)| (n.to_string(), c.as_bytes().to_vec())),
        )
    }

    #[test]
    fn json_and_yaml_seeds_decode_to_the_same_values() {
        let json = seeds(&[(
            "update.json",
            r#"{"version": "1", "channel": "testing", "auto_reboot": true}"#,
        )]);
        let yaml = seeds(&[(
            "update.yaml",
            "version: \"1\"\nchannel: testing\nauto_reboot: true\n",
        )]);
        let yml = seeds(&[(
            "update.yml",
            "version: \"1\"\nchannel: testing\nauto_reboot: true\n",
        )]);
        let a: UpdateSeed = json.get().unwrap().unwrap();
        assert_eq!(a.version, "1");
        assert_eq!(a.config.channel, "testing");
        assert!(a.config.auto_reboot);
        assert_eq!(yaml.get::<UpdateSeed>().unwrap(), Some(a.clone()));
        assert_eq!(yml.get::<UpdateSeed>().unwrap(), Some(a));
    }

    #[test]
    fn json_wins_over_yaml_and_a_missing_seed_is_absent() {
        let s = seeds(&[
            ("provider.yaml", "name: local\n"),
            ("provider.json", r#"{"name": "images"}"#),
        ]);
        assert_eq!(s.get::<ProviderSeed>().unwrap().unwrap().name, "images");
        assert_eq!(s.get::<NetworkSeed>().unwrap(), None);
        assert!(!s.has("network"));
    }

    #[test]
    fn an_unknown_field_is_refused_naming_the_file_and_the_field() {
        let s = seeds(&[(
            "network.yaml",
            "interfaces:\n  - name: eth0\n    colour: red\n",
        )]);
        let e = s.get::<NetworkSeed>().unwrap_err();
        assert_eq!(e.seed, "network");
        assert_eq!(e.file, "network.yaml");
        assert!(e.message.contains("interfaces.0.colour"), "{e}");
        assert!(e.to_string().starts_with("seed 'network' (network.yaml): "));

        let s = seeds(&[("applications.json", r#"{"applications": [], "extra": 1}"#)]);
        let e = s.get::<ApplicationsSeed>().unwrap_err();
        assert_eq!(e.message, "unknown field 'extra'");

        // Ceph and LINSTOR are not seedable.
        let s = seeds(&[("services.yml", "ceph:\n  enabled: true\n")]);
        assert!(s
            .get::<ServicesSeed>()
            .unwrap_err()
            .message
            .contains("'ceph'"));
    }

    #[test]
    fn a_field_of_the_wrong_type_is_named() {
        let s = seeds(&[("incus.json", r#"{"apply_defaults": "yes"}"#)]);
        let e = s.get::<IncusSeed>().unwrap_err();
        assert!(e.message.starts_with("field 'apply_defaults': "), "{e}");
        let s = seeds(&[("update.json", r#"{"version": 2}"#)]);
        assert!(s
            .get::<UpdateSeed>()
            .unwrap_err()
            .message
            .contains("'version'"));
    }

    #[test]
    fn an_empty_or_broken_file_is_an_error_not_an_absent_seed() {
        for (file, text) in [
            ("kernel.json", ""),
            ("kernel.yaml", "  \n"),
            ("kernel.yaml", "# nothing\n"),
        ] {
            let e = seeds(&[(file, text)]).get::<KernelSeed>().unwrap_err();
            assert_eq!(e.message, "the file is empty", "{file}");
        }
        let e = seeds(&[("kernel.json", "{")])
            .get::<KernelSeed>()
            .unwrap_err();
        assert!(e.message.starts_with("not valid JSON"), "{e}");
        let e = seeds(&[("kernel.yaml", "- a\n")])
            .get::<KernelSeed>()
            .unwrap_err();
        assert_eq!(e.message, "expected a mapping at the top, got a list");
    }

    #[test]
    fn every_seed_decodes_its_documented_fields() {
        let s = seeds(&[
            ("install.yaml", "force_install: true\nforce_reboot: true\nforce_install_confirmation: x\nsecurity:\n  missing_tpm: true\n  missing_secure_boot: false\ntarget:\n  bus: NVME\n  id: disk\n  min_size: 50GiB\n  max_size: 1TiB\n  sort_order: smallest\n"),
            ("applications.yaml", "applications:\n  - name: incus\n"),
            ("incus.yaml", "apply_defaults: true\npreseed:\n  networks: []\n"),
            ("kernel.yaml", "console:\n  - device: ttyS0\n    baud_rate: 115200\n"),
            ("network.yaml", "time:\n  timezone: Europe/Paris\n"),
            ("migration-manager.yaml", "trusted_client_certificates: [a]\napply_defaults: true\npreseed:\n  system_certificate: {}\n  system_network: {}\n  system_security: {}\n"),
            ("operations-center.yaml", "preseed:\n  system_updates: {}\n  system_settings: {}\n"),
            ("provider.yaml", "name: operations-center\nconfig:\n  server_url: https://x\n"),
            ("security.yaml", "custom_ca_certs: [pem]\n"),
            ("services.yaml", "iscsi: {}\nlvm: {}\nmultipath: {}\nnetbird: {}\nnvme: {}\novn: {}\ntailscale: {}\nusbip: {}\n"),
            ("update.yaml", "check_frequency: 6h\n"),
        ]);
        let install: InstallSeed = s.get().unwrap().unwrap();
        assert_eq!(install.target.unwrap().sort_order, "smallest");
        assert!(install.security.unwrap().missing_tpm);
        assert_eq!(
            s.get::<ApplicationsSeed>().unwrap().unwrap().applications[0].name,
            "incus"
        );
        assert!(s.get::<IncusSeed>().unwrap().unwrap().apply_defaults);
        assert_eq!(
            s.get::<KernelSeed>().unwrap().unwrap().console[0].baud_rate,
            115200
        );
        let net = s.get::<NetworkSeed>().unwrap().unwrap();
        assert_eq!(net.config.time.unwrap().timezone, "Europe/Paris");
        assert!(
            s.get::<MigrationManagerSeed>()
                .unwrap()
                .unwrap()
                .apply_defaults
        );
        assert!(s
            .get::<OperationsCenterSeed>()
            .unwrap()
            .unwrap()
            .preseed
            .unwrap()
            .system_settings
            .is_some());
        assert_eq!(
            s.get::<ProviderSeed>().unwrap().unwrap().name,
            "operations-center"
        );
        let security = s.get::<SecuritySeed>().unwrap().unwrap();
        assert_eq!(security.config.custom_ca_certs, ["pem"]);
        assert_eq!(security.check(), Ok(()));
        let keys = seeds(&[("security.json", r#"{"encryption_recovery_keys": ["k"]}"#)]);
        assert_eq!(
            keys.get::<SecuritySeed>()
                .unwrap()
                .unwrap()
                .check()
                .unwrap_err(),
            "it is not possible to set encryption recovery key(s) via the security seed"
        );
        assert_eq!(s.get::<ServicesSeed>().unwrap().unwrap().configs().len(), 8);
        assert_eq!(
            s.get::<UpdateSeed>()
                .unwrap()
                .unwrap()
                .config
                .check_frequency,
            "6h"
        );
    }

    #[test]
    fn partition_names_follow_the_disk_kind() {
        assert_eq!(partition_path("/dev/sda", 2), "/dev/sda2");
        assert_eq!(partition_path("/dev/vda", 2), "/dev/vda2");
        assert_eq!(partition_path("/dev/nvme0n1", 2), "/dev/nvme0n1p2");
        assert_eq!(partition_path("/dev/mmcblk0", 2), "/dev/mmcblk0p2");
        assert_eq!(partition_path("/dev/loop3", 2), "/dev/loop3p2");
        assert_eq!(partition_path("/dev/mapper/sr0", 2), "/dev/mapper/sr0p2");
        assert_eq!(
            partition_path("/dev/mapper/mpatha", 2),
            "/dev/mapper/mpatha-part2"
        );
    }

    fn write_archive(root: &Path, rel: &str, files: &[(&str, &str)]) {
        let mut b = tar::Builder::new(Vec::new());
        for (n, c) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(c.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, n, c.as_bytes()).unwrap();
        }
        let mut data = b.into_inner().unwrap();
        // A partition is larger than its archive: what follows is left over.
        data.extend(std::iter::repeat_n(0xAAu8, 4096));
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    #[test]
    fn the_seed_partition_archive_is_read_with_dot_slash_names() {
        let root = tempfile::tempdir().unwrap();
        write_archive(
            root.path(),
            "dev/sdb2",
            &[
                ("./network.yaml", "time:\n  timezone: UTC\n"),
                ("incus.json", "{\"apply_defaults\": true}"),
                ("./notes.txt", "not a seed"),
            ],
        );
        std::fs::create_dir_all(root.path().join("dev/disk/by-partlabel")).unwrap();
        std::os::unix::fs::symlink(
            "../../sdb2",
            root.path().join("dev/disk/by-partlabel/seed-data"),
        )
        .unwrap();
        let s = lookup(root.path(), None);
        assert_eq!(s.source, "/dev/sdb2");
        assert!(s.has("network") && s.has("incus"));
        assert!(s.file("notes").is_none());
        assert!(s.get::<IncusSeed>().unwrap().unwrap().apply_defaults);
    }

    #[test]
    fn without_the_label_partition_2_of_the_boot_disk_is_read() {
        let root = tempfile::tempdir().unwrap();
        write_archive(root.path(), "dev/nvme0n1p2", &[("update.json", "{}")]);
        assert!(lookup(root.path(), Some("/dev/nvme0n1")).has("update"));
        // No disk, no archive.
        assert!(lookup(root.path(), None).is_empty());
        assert!(lookup(root.path(), Some("/dev/sda")).is_empty());
    }

    #[test]
    fn a_partition_without_the_ustar_magic_holds_no_seeds() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        // An old-style (v7) archive has no magic: not taken.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_old();
        h.set_size(2);
        h.set_cksum();
        b.append_data(&mut h, "update.json", &b"{}"[..]).unwrap();
        std::fs::write(root.path().join("dev/sda2"), b.into_inner().unwrap()).unwrap();
        assert!(lookup(root.path(), Some("/dev/sda")).is_empty());
        assert_eq!(read_archive(&root.path().join("dev/sda2")).unwrap(), None);
        // Zeros (a wiped partition), and a file shorter than a header.
        std::fs::write(root.path().join("dev/sda2"), vec![0u8; 8192]).unwrap();
        assert_eq!(read_archive(&root.path().join("dev/sda2")).unwrap(), None);
        std::fs::write(root.path().join("dev/sda2"), b"ustar").unwrap();
        assert_eq!(read_archive(&root.path().join("dev/sda2")).unwrap(), None);
    }

    #[test]
    fn a_built_archive_reads_back_with_mode_0600() {
        let files = vec![
            ("incus.json".to_string(), b"{}".to_vec()),
            ("network.yaml".to_string(), b"a: 1\n".to_vec()),
        ];
        let data = build_archive(&files).unwrap();
        assert_eq!(&data[257..262], b"ustar");
        let mut a = tar::Archive::new(data.as_slice());
        for e in a.entries().unwrap() {
            assert_eq!(e.unwrap().header().mode().unwrap(), 0o600);
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p2"), &data).unwrap();
        assert_eq!(read_archive(&dir.path().join("p2")).unwrap(), Some(files));
    }

    #[test]
    fn a_seed_data_label_wins_and_a_medium_that_is_no_file_system_holds_no_seeds() {
        let root = tempfile::tempdir().unwrap();
        write_archive(root.path(), "dev/sda2", &[("update.json", "{}")]);
        std::fs::create_dir_all(root.path().join("dev/disk/by-label")).unwrap();
        std::fs::write(root.path().join("dev/sdc1"), vec![0u8; 64 * 1024]).unwrap();
        std::os::unix::fs::symlink("/dev/sdc1", root.path().join("dev/disk/by-label/SEED_DATA"))
            .unwrap();
        // The medium is neither FAT nor ISO 9660: logged, no seeds (the archive on the
        // boot disk is not looked at: the medium was there).
        let s = lookup(root.path(), Some("/dev/sda"));
        assert!(s.is_empty());
    }

    #[test]
    fn seed_files_are_read_from_the_top_of_a_medium() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("network.yml"), "dns: {}\n").unwrap();
        std::fs::write(dir.path().join("README"), "x").unwrap();
        let files = read_volume_seeds(&volume::DirVolume(dir.path().to_path_buf())).unwrap();
        assert_eq!(
            files,
            vec![("network.yml".to_string(), b"dns: {}\n".to_vec())]
        );
    }
}
