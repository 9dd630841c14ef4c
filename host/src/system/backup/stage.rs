//! The restore's pure half: an uploaded archive checked and extracted into the sibling
//! staging directory (`incus-os.new`), the staged state checked, and the document the
//! restore leaves composed. Nothing live changes here.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::state::Document;

use super::{app_entry, is_runtime, temp_file, NOT_REGULAR};

/// The restore's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Entries in the archive.
    pub max_entries: u64,
    /// Bytes of one state or key file.
    pub max_file_size: u64,
    /// Bytes of all entries, unpacked (applications' archives included): a gzip bomb
    /// stops here.
    pub max_total_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 10_000,
            max_file_size: 64 << 20,
            max_total_size: 16 << 30,
        }
    }
}

/// Upstream's skip values (`?skip=a,b`); unknown ones are ignored, as upstream does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skip {
    /// `encryption-recovery-keys`: the volumes' key slots are not changed.
    pub recovery_keys: bool,
    /// `local-data-encryption-key`: the current `zpool.local.key` is kept.
    pub local_key: bool,
    /// `network-macs`: MAC addresses in the network configuration become interface names.
    pub network_macs: bool,
}

/// The key file `local-data-encryption-key` keeps.
pub const LOCAL_KEY: &str = "zpool.local.key";

impl Skip {
    /// The `skip` parameter of a raw query string.
    pub fn from_query(query: Option<&str>) -> Skip {
        let mut skip = Skip::default();
        for pair in query.unwrap_or_default().split('&') {
            let Some(value) = pair.strip_prefix("skip=") else {
                continue;
            };
            for v in percent_decode(value).split(',') {
                match v.trim() {
                    "encryption-recovery-keys" => skip.recovery_keys = true,
                    "local-data-encryption-key" => skip.local_key = true,
                    "network-macs" => skip.network_macs = true,
                    _ => {}
                }
            }
        }
        skip
    }
}

/// `%XX` and `+` decoded (a form value); a bad escape is kept as it is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why an archive was refused: the client's archive (400), or this machine (500).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageError {
    Bad(String),
    Io(String),
}

impl StageError {
    pub fn status(&self) -> u16 {
        match self {
            StageError::Bad(_) => 400,
            StageError::Io(_) => 500,
        }
    }
    pub fn message(&self) -> &str {
        match self {
            StageError::Bad(m) | StageError::Io(m) => m,
        }
    }
}

fn bad(m: impl Into<String>) -> StageError {
    StageError::Bad(m.into())
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> StageError {
    move |e| StageError::Io(format!("{what}: {e}"))
}

/// An archive extracted into the staging directory, not swapped in: dropping it removes
/// the directory.
#[derive(Debug)]
pub struct Staged {
    /// The staging directory (`<state dir>.new`).
    pub dir: PathBuf,
    /// The state and key files written into it, sorted.
    pub files: Vec<String>,
    /// Each application's archive, by name, in anonymous files (rewound).
    pub apps: Vec<(String, File)>,
    kept: bool,
}

impl Staged {
    /// Keeps the directory when this is dropped (it was swapped in).
    pub fn keep(&mut self) {
        self.kept = true;
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The sibling of the state directory `dir` with `suffix` (`.new`, `.bak`).
pub fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

/// The base name an entry is restored as (upstream keeps only the base name, which blocks
/// traversal); `.`, `..`, an empty name, a NUL and a name longer than 255 bytes refused.
pub fn base_name(path: &[u8]) -> Result<String, StageError> {
    let shown = String::from_utf8_lossy(path).into_owned();
    let base = path.rsplit(|b| *b == b'/').next().unwrap_or_default();
    if base.is_empty() || base == b"." || base == b".." {
        return Err(bad(format!("backup entry '{shown}' has no file name")));
    }
    if base.contains(&0) {
        return Err(bad(format!("backup entry '{shown}' has a NUL in its name")));
    }
    if base.len() > 255 {
        return Err(bad(format!(
            "backup entry '{shown}' has a name over 255 bytes"
        )));
    }
    String::from_utf8(base.to_vec()).map_err(|_| {
        bad(format!(
            "backup entry '{shown}' has a name that is not UTF-8"
        ))
    })
}

/// A reader that remembers whether its input ended.
struct Tracked<R> {
    inner: R,
    eof: bool,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof = true;
        }
        Ok(n)
    }
}

/// Longest extension record (GNU long name, PAX header) accepted.
const MAX_EXTENSION: u64 = 64 * 1024;

fn extension(entry: &mut impl Read, size: u64) -> Result<Vec<u8>, StageError> {
    if size > MAX_EXTENSION {
        return Err(bad(format!(
            "the backup has an extension header of {size} bytes (at most {MAX_EXTENSION})"
        )));
    }
    let mut data = Vec::with_capacity(size as usize);
    entry
        .read_to_end(&mut data)
        .map_err(|e| bad(format!("cannot read the backup: {e}")))?;
    Ok(data)
}

/// The `path` of a PAX header; a `size` (a file over 8 GiB) is refused.
fn pax_path(data: &[u8]) -> Result<Option<Vec<u8>>, StageError> {
    let mut path = None;
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest
            .iter()
            .position(|b| *b == b' ')
            .ok_or_else(|| bad("the backup has a malformed PAX header"))?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|n| *n > space + 1 && *n <= rest.len())
            .ok_or_else(|| bad("the backup has a malformed PAX header"))?;
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(v) = record.strip_prefix(b"path=") {
            path = Some(v.to_vec());
        } else if record.starts_with(b"size=") {
            return Err(bad("the backup has an entry over 8 GiB"));
        }
        rest = &rest[len..];
    }
    Ok(path)
}

/// Copies exactly the entry's data to `out`, at most `cap` bytes.
fn copy_capped(
    entry: &mut impl Read,
    out: &mut impl Write,
    size: u64,
    name: &str,
) -> Result<(), StageError> {
    let n = io::copy(&mut entry.take(size), out)
        .map_err(|e| bad(format!("cannot read {name} from the backup: {e}")))?;
    if n < size {
        return Err(bad(format!("the backup is truncated (in {name})")));
    }
    Ok(())
}

/// Checks the archive read from `reader` and extracts it into `<current>.new` (made
/// afresh, 0700; files 0600, created, never followed). Application archives go to
/// anonymous files in `spool`. With `skip.local_key` the archive's `zpool.local.key` is
/// left out and the current one (if any) copied instead. On any error the staging
/// directory is removed; `current` is never touched.
pub fn stage(
    reader: impl Read,
    current: &Path,
    spool: &Path,
    skip: &Skip,
    limits: &Limits,
) -> Result<Staged, StageError> {
    let dir = sibling(current, ".new");
    remove_tree(&dir).map_err(io_err(format!("cannot remove {}", dir.display())))?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(io_err(format!("cannot create {}", dir.display())))?;
    let mut staged = Staged {
        dir,
        files: vec![],
        apps: vec![],
        kept: false,
    };
    extract(reader, &mut staged, spool, skip, limits)?;
    if skip.local_key {
        let from = current.join(LOCAL_KEY);
        match std::fs::read(&from) {
            Ok(data) => {
                write_new(
                    &staged.dir.join(LOCAL_KEY),
                    &mut &data[..],
                    data.len() as u64,
                )?;
                staged.files.push(LOCAL_KEY.into());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(from.display())(e)),
        }
    }
    staged.files.sort();
    // One flush of the file system for every file written (a thousand fsyncs cost seconds).
    let dir = File::open(&staged.dir).map_err(io_err(staged.dir.display()))?;
    rustix::fs::syncfs(&dir).map_err(|e| io_err(staged.dir.display())(e.into()))?;
    Ok(staged)
}

fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    }
}

/// Creates `path` (0600, never an existing one, never through a link) with `size` bytes of
/// `data` (made durable all at once by [`stage`]'s `syncfs`).
fn write_new(path: &Path, data: &mut impl Read, size: u64) -> Result<(), StageError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(format!("cannot create {}", path.display())))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    copy_capped(data, &mut f, size, &name)
}

fn extract(
    reader: impl Read,
    staged: &mut Staged,
    spool: &Path,
    skip: &Skip,
    limits: &Limits,
) -> Result<(), StageError> {
    let input = Tracked {
        inner: flate2::read::GzDecoder::new(reader),
        eof: false,
    };
    let mut archive = tar::Archive::new(input);
    let mut seen = BTreeSet::new();
    let (mut entries_n, mut total) = (0u64, 0u64);
    {
        let entries = archive
            .entries()
            .map_err(|e| bad(format!("cannot read the backup: {e}")))?
            .raw(true);
        let mut long_name: Option<Vec<u8>> = None;
        for entry in entries {
            let mut entry = entry.map_err(|e| bad(format!("cannot read the backup: {e}")))?;
            let kind = entry.header().entry_type();
            let size = entry.size();
            match kind {
                tar::EntryType::GNULongName => {
                    let mut n = extension(&mut entry, size)?;
                    while n.last() == Some(&0) {
                        n.pop();
                    }
                    long_name = Some(n);
                    continue;
                }
                tar::EntryType::XHeader => {
                    let data = extension(&mut entry, size)?;
                    if let Some(p) = pax_path(&data)? {
                        long_name = Some(p);
                    }
                    continue;
                }
                tar::EntryType::XGlobalHeader => {
                    extension(&mut entry, size)?;
                    continue;
                }
                _ => {}
            }
            let path = match long_name.take() {
                Some(n) => n,
                None => entry.path_bytes().into_owned(),
            };
            if kind != tar::EntryType::Regular {
                return Err(bad(NOT_REGULAR));
            }
            entries_n += 1;
            if entries_n > limits.max_entries {
                return Err(bad(format!(
                    "the backup has more than {} entries",
                    limits.max_entries
                )));
            }
            total = total.saturating_add(size);
            if total > limits.max_total_size {
                return Err(bad(format!(
                    "the backup unpacks to more than {} bytes",
                    limits.max_total_size
                )));
            }
            let name = base_name(&path)?;
            if !seen.insert(name.clone()) {
                return Err(bad(format!("the backup holds '{name}' twice")));
            }
            if let Some(app) = app_entry(&name) {
                let mut f = temp_file(spool).map_err(io_err("cannot store the backup"))?;
                copy_capped(&mut entry, &mut f, size, &name)?;
                io::Seek::rewind(&mut f).map_err(io_err("cannot store the backup"))?;
                staged.apps.push((app.to_string(), f));
                continue;
            }
            if is_runtime(&name) || (skip.local_key && name == LOCAL_KEY) {
                // Not state (or kept from this machine): read past it.
                copy_capped(&mut entry, &mut io::sink(), size, &name)?;
                continue;
            }
            if size > limits.max_file_size {
                return Err(bad(format!(
                    "backup entry '{name}' is {size} bytes (at most {} for a state or key file)",
                    limits.max_file_size
                )));
            }
            write_new(&staged.dir.join(&name), &mut entry, size)?;
            staged.files.push(name);
        }
        if long_name.is_some() {
            return Err(bad(
                "the backup is truncated: it ends after an extension header",
            ));
        }
    }
    let mut rest = archive.into_inner();
    if rest.eof {
        return Err(bad(
            "the backup is truncated: it ends without the end-of-archive marker",
        ));
    }
    // The padding and the gzip trailer, so that a corrupt end (checksum, length) is seen.
    let drained = io::copy(&mut (&mut rest).take(1 << 20), &mut io::sink())
        .map_err(|e| bad(format!("cannot read the backup: {e}")))?;
    if drained == 1 << 20 {
        return Err(bad("the backup has more than 1 MiB after its end marker"));
    }
    Ok(())
}

/// Upstream's primary applications, for a backup naming one this daemon has no plugin for.
pub const UPSTREAM_PRIMARIES: &[&str] = &[
    "incus",
    "incus-lts-7.0",
    "migration-manager",
    "operations-center",
];

/// Upstream's text when the backup installs no primary application.
pub const NO_PRIMARY: &str =
    "backup state doesn't include the incus, migration-manager, or operations-center application";

/// The checks on the backup's state, in upstream's order (TPM, keys, primary), with
/// upstream's texts; the caller wraps them.
pub fn validate(
    backup: &Document,
    tpm_status: &str,
    is_primary: impl Fn(&str) -> bool,
) -> Result<(), String> {
    if tpm_status != "ok" {
        return Err(format!("TPM status isn't OK: {tpm_status}"));
    }
    if backup
        .system
        .security
        .config
        .encryption_recovery_keys
        .is_empty()
    {
        return Err("at least one recovery passphrase must be provided".into());
    }
    let primary = backup
        .applications
        .iter()
        .any(|(name, r)| !r.version.is_empty() && is_primary(name));
    if !primary {
        return Err(NO_PRIMARY.into());
    }
    Ok(())
}

/// The document the restore leaves: the live one with the backup's `system` section and
/// plugin documents; the OS facts, the application records and the Secure Boot / swtpm
/// findings stay live. `network-macs` turns every configured MAC into its interface's
/// name; `encryption-recovery-keys` keeps the live key list (the slots are not changed
/// either).
pub fn compose(live: &Document, backup: &Document, skip: &Skip) -> Document {
    let mut doc = live.clone();
    doc.system = backup.system.clone();
    doc.plugins = backup.plugins.clone();
    let sec = &mut doc.system.security;
    sec.using_swtpm = live.system.security.using_swtpm;
    sec.secure_boot_disabled = live.system.security.secure_boot_disabled;
    if skip.recovery_keys {
        sec.config.encryption_recovery_keys =
            live.system.security.config.encryption_recovery_keys.clone();
    }
    if skip.network_macs {
        for config in [
            doc.system.network.config.as_mut(),
            doc.system.network.prior_config.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            for i in &mut config.interfaces {
                if !i.hwaddr.is_empty() {
                    i.hwaddr = i.name.clone();
                }
            }
            for b in &mut config.bonds {
                if !b.hwaddr.is_empty() {
                    b.hwaddr = b.name.clone();
                }
            }
        }
    }
    doc
}

/// The host name and time zone a document's network configuration asks for.
pub fn host_settings(doc: &Document) -> (Option<String>, Option<String>) {
    let Some(config) = doc.system.network.config.as_ref() else {
        return (None, None);
    };
    let host = crate::system::network::files::configured_hostname(config);
    let tz = config
        .time
        .as_ref()
        .map(|t| t.timezone.clone())
        .filter(|t| !t.is_empty());
    (host, tz)
}
