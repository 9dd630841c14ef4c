//! Backup archives: a gzip-compressed tar of one directory tree, written and read as a
//! stream (neither side ever holds the archive whole).
//!
//! The format is the one application backups use: entry names relative to the tree's
//! root (no leading `/` or `./`), only directories, regular files and symbolic links, each
//! with its permission bits, mtime, owner and group.
//!
//! - [`backup_dir`] writes a tree; [`backup_check`] is its dry run (walks and stats
//!   everything, opens every file) so an error surfaces before the first byte is sent.
//! - [`restore_into`] extracts into an empty directory, checking every entry before it
//!   writes it; [`prepare_restore`] and [`restore_swap`] extract into a sibling and swap it
//!   in, so a bad archive changes nothing.
//! - [`backup_dir_fd`], [`backup_check_fd`], [`restore_swap_fd`] and [`restore_swap_at`] do
//!   the same for a directory reached through a descriptor (a plugin's, from
//!   `Host::open_dir`: under the root prefix, where its path would not lead).
//!
//! ## How extraction stays inside its directory
//!
//! Every entry is written relative to a descriptor of its parent directory, reached from
//! the destination one component at a time with `openat(O_DIRECTORY | O_NOFOLLOW)`; files
//! are created with `O_CREAT | O_EXCL | O_NOFOLLOW`, links with `symlinkat`, metadata set
//! through the open descriptor (or `AT_SYMLINK_NOFOLLOW`). A symbolic link, wherever it is
//! and whoever put it there, is never followed by a write: an entry whose path goes
//! through one is refused. Checking each component with `symlink_metadata` and then
//! writing by path would leave a window between check and use; the descriptor walk has
//! none.
//!
//! What is refused, with a message naming the entry: a `..` component, an absolute name,
//! a write through a symbolic link or a file, a symbolic link whose target leaves the tree
//! (lexically, and once the whole tree is written, for real with `openat2`'s
//! `RESOLVE_BENEATH`, which catches chains of links), hard links (the format never has
//! them), device nodes, FIFOs, sockets and every other type, names and link targets
//! longer than [`Limits::max_path_len`], extension records (PAX, GNU long names) longer
//! than [`Limits::max_extension_len`], more than [`Limits::max_entries`] entries or more
//! than [`Limits::max_total_size`] bytes of file data (checked from each header before its
//! data is written), and a truncated or corrupt stream (gzip or tar, including a missing
//! end-of-archive marker).

use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{
    self as rfs, AtFlags, Mode, OFlags, RenameFlags, ResolveFlags, Timespec, Timestamps, CWD,
};
use rustix::io::Errno;

use super::{Error, Result};

/// Bounds on what [`restore_into`] accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of file data (the sum of regular files' sizes).
    pub max_total_size: u64,
    /// Number of entries (directories, files and links).
    pub max_entries: u64,
    /// Length in bytes of an entry's name and of a link's target.
    pub max_path_len: usize,
    /// Length in bytes of one extension record (PAX header, GNU long name or long link).
    pub max_extension_len: u64,
    /// Keep set-user-ID and set-group-ID bits (dropped otherwise).
    pub allow_setid: bool,
    /// The OS path the tree will live at once swapped in (such as `/var/lib/incus`): an
    /// absolute link target under it stays inside the tree and is kept. Without it, or
    /// outside it, an absolute target is refused.
    pub root_path: Option<PathBuf>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_total_size: 1 << 40,
            max_entries: 10_000_000,
            max_path_len: 4096,
            max_extension_len: 64 * 1024,
            allow_setid: false,
            root_path: None,
        }
    }
}

/// What an archive held (or, for [`backup_check`], would hold).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Directories, files and links.
    pub entries: u64,
    /// Bytes of file data.
    pub bytes: u64,
}

/// Names left out of a backup: upstream's semantics, a plain prefix match on the entry's
/// relative name (`artifacts` leaves out `artifacts/x` and also `artifacts.old`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Exclusions<'a> {
    /// Always left out (such as a socket or a runtime mount directory).
    pub always: &'a [&'a str],
    /// Left out unless the backup is `complete` (such as cached artifacts).
    pub unless_complete: &'a [&'a str],
}

impl Exclusions<'_> {
    /// Nothing is left out.
    pub const NONE: Exclusions<'static> = Exclusions {
        always: &[],
        unless_complete: &[],
    };

    fn excludes(&self, rel: &[u8], complete: bool) -> bool {
        let hit = |list: &[&str]| list.iter().any(|p| rel.starts_with(p.as_bytes()));
        hit(self.always) || (!complete && hit(self.unless_complete))
    }
}

fn bad(message: impl Into<String>) -> Error {
    Error::bad_request(message)
}

fn local(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("{what}: {e}"))
}

fn show(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.len() > 200 {
        let mut cut = 200;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{:?}... ({} bytes)", &text[..cut], bytes.len())
    } else {
        format!("{text:?}")
    }
}

// ---------------------------------------------------------------------------------------
// Backup
// ---------------------------------------------------------------------------------------

/// Writes a gzip tar of the tree under `dir` to `writer`, as a stream.
///
/// Entries come parents first, siblings sorted by name (bytes), so the same tree gives the
/// same archive. Symbolic links are stored as links and never followed; the walk does not
/// descend into other filesystems (a mount point is stored as an empty directory); `dir`
/// itself is not an entry, nor are the `.restore.new` and `.restore.old` directories a
/// restore of a mount point stages in it. A socket, FIFO or device that is not excluded is an error, as
/// is a file that shrinks while it is read. Run [`backup_check`] first to report an error
/// before the first byte is written.
pub fn backup_dir(
    dir: &Path,
    writer: impl Write,
    exclusions: &Exclusions<'_>,
    complete: bool,
) -> Result<Summary> {
    let gz = flate2::write::GzEncoder::new(writer, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Complete);
    let summary = walk_tree(dir, exclusions, complete, &mut |item| {
        append(&mut tar, item).map_err(|e| local("cannot write the backup", e))
    })?;
    let gz = tar
        .into_inner()
        .map_err(|e| local("cannot write the backup", e))?;
    gz.finish()
        .map_err(|e| local("cannot write the backup", e))?;
    Ok(summary)
}

/// The dry run of [`backup_dir`]: walks and stats the whole tree and opens every file it
/// would read, and reports the first error, writing nothing.
pub fn backup_check(dir: &Path, exclusions: &Exclusions<'_>, complete: bool) -> Result<Summary> {
    walk_tree(dir, exclusions, complete, &mut |item| {
        if item.meta.file_type().is_file() {
            open_nofollow(item.path).map_err(|e| local(item.path.display(), e))?;
        }
        Ok(())
    })
}

struct Item<'a> {
    rel: &'a [u8],
    path: &'a Path,
    meta: &'a Metadata,
}

fn open_nofollow(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

fn walk_tree(
    dir: &Path,
    exclusions: &Exclusions<'_>,
    complete: bool,
    visit: &mut dyn FnMut(Item<'_>) -> Result<()>,
) -> Result<Summary> {
    let meta = fs::symlink_metadata(dir).map_err(|e| local(dir.display(), e))?;
    if !meta.is_dir() {
        return Err(Error::internal(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let mut summary = Summary::default();
    let mut rel = Vec::new();
    walk_level(
        dir,
        meta.dev(),
        &mut rel,
        exclusions,
        complete,
        visit,
        &mut summary,
    )?;
    Ok(summary)
}

fn walk_level(
    dir: &Path,
    dev: u64,
    rel: &mut Vec<u8>,
    exclusions: &Exclusions<'_>,
    complete: bool,
    visit: &mut dyn FnMut(Item<'_>) -> Result<()>,
    summary: &mut Summary,
) -> Result<()> {
    let mut names = fs::read_dir(dir)
        .map_err(|e| local(dir.display(), e))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| local(dir.display(), e))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let len = rel.len();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(name.as_bytes());
        // A mount point's restore staging, left by an interrupted restore, is not data.
        let staging = len == 0 && (name == STAGE_NEW || name == STAGE_OLD);
        if !staging && !exclusions.excludes(rel, complete) {
            let path = dir.join(&name);
            let meta = fs::symlink_metadata(&path).map_err(|e| local(path.display(), e))?;
            let kind = meta.file_type();
            if !(kind.is_dir() || kind.is_file() || kind.is_symlink()) {
                return Err(Error::internal(format!("unsupported file: {}", show(rel))));
            }
            summary.entries += 1;
            if kind.is_file() {
                summary.bytes += meta.len();
            }
            visit(Item {
                rel,
                path: &path,
                meta: &meta,
            })?;
            if kind.is_dir() && meta.dev() == dev {
                walk_level(&path, dev, rel, exclusions, complete, visit, summary)?;
            }
        }
        rel.truncate(len);
    }
    Ok(())
}

fn append<W: Write>(tar: &mut tar::Builder<W>, item: Item<'_>) -> io::Result<()> {
    let name = Path::new(OsStr::from_bytes(item.rel));
    let mut header = tar::Header::new_gnu();
    let kind = item.meta.file_type();
    if kind.is_file() {
        let file = open_nofollow(item.path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::other(format!(
                "{} changed type during the backup",
                item.path.display()
            )));
        }
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        header.set_mode(meta.mode() & 0o7777);
        let size = meta.len();
        let exact = Exact {
            inner: file.take(size),
            left: size,
            path: item.path,
        };
        tar.append_data(&mut header, name, exact)
    } else if kind.is_dir() {
        header.set_metadata_in_mode(item.meta, tar::HeaderMode::Complete);
        header.set_mode(item.meta.mode() & 0o7777);
        header.set_size(0);
        tar.append_data(&mut header, name, io::empty())
    } else {
        let target = fs::read_link(item.path)?;
        header.set_metadata_in_mode(item.meta, tar::HeaderMode::Complete);
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_size(0);
        tar.append_link(&mut header, name, target)
    }
}

/// Reads exactly `left` bytes: a file that shrank while it was read is an error, not a
/// short entry that would shift every later one.
struct Exact<'a, R> {
    inner: R,
    left: u64,
    path: &'a Path,
}

impl<R: Read> Read for Exact<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(io::Error::other(format!(
                "{} shrank during the backup",
                self.path.display()
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------
// Restore
// ---------------------------------------------------------------------------------------

/// Extracts the gzip tar read from `reader` into `dest`, an existing empty directory,
/// checking every entry before it is written (see the module's documentation for what is
/// refused). Modes and mtimes are kept (set-ID bits only with
/// [`Limits::allow_setid`]); owners and groups only when running as root.
///
/// On error `dest` may hold part of the tree: extract into a fresh sibling and delete it
/// on error, as [`prepare_restore`] and [`restore_swap`] do.
pub fn restore_into(reader: impl Read, dest: &Path, limits: &Limits) -> Result<Summary> {
    let root = rfs::openat(
        CWD,
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| local(format!("cannot open {}", dest.display()), e))?;
    if fs::read_dir(dest)
        .map_err(|e| local(dest.display(), e))?
        .next()
        .is_some()
    {
        return Err(Error::internal(format!(
            "cannot restore into {}: it is not empty",
            dest.display()
        )));
    }
    let mut x = Extractor {
        root,
        limits,
        as_root: rustix::process::geteuid().is_root(),
        summary: Summary::default(),
        open_dirs: Vec::new(),
        links: 0,
        cache: None,
    };
    let input = Tracked {
        inner: flate2::read::MultiGzDecoder::new(reader),
        eof: false,
    };
    let mut archive = tar::Archive::new(input);
    {
        let entries = archive
            .entries()
            .map_err(|e| bad(format!("cannot read the archive: {e}")))?
            .raw(true);
        let mut pending = Pending::default();
        for entry in entries {
            let mut entry = entry.map_err(|e| bad(format!("cannot read the archive: {e}")))?;
            let kind = entry.header().entry_type();
            match kind {
                tar::EntryType::GNULongName => {
                    pending.name = Some(extension(&mut entry, limits, "long name")?);
                }
                tar::EntryType::GNULongLink => {
                    pending.link = Some(extension(&mut entry, limits, "long link")?);
                }
                tar::EntryType::XHeader => {
                    pending.pax = Some(extension(&mut entry, limits, "PAX header")?);
                }
                tar::EntryType::XGlobalHeader => {
                    extension(&mut entry, limits, "PAX global header")?;
                }
                _ => {
                    let meta = std::mem::take(&mut pending).apply(&entry, limits)?;
                    x.entry(&mut entry, meta)?;
                }
            }
        }
        if pending.name.is_some() || pending.link.is_some() || pending.pax.is_some() {
            return Err(bad(
                "the archive is truncated: it ends after an extension header",
            ));
        }
    }
    let mut rest = archive.into_inner();
    if rest.eof {
        return Err(bad(
            "the archive is truncated: it ends without the end-of-archive marker",
        ));
    }
    // Read the padding and the gzip trailer, so a corrupt end (checksum, length) is seen.
    let mut sink = io::sink();
    let drained = io::copy(&mut (&mut rest).take(1 << 20), &mut sink)
        .map_err(|e| bad(format!("cannot read the archive: {e}")))?;
    if drained == 1 << 20 {
        return Err(bad("the archive has more than 1 MiB after its end marker"));
    }
    x.finish()
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

fn extension<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    limits: &Limits,
    what: &str,
) -> Result<Vec<u8>> {
    let size = entry.size();
    if size > limits.max_extension_len {
        return Err(bad(format!(
            "the archive has a {what} of {size} bytes (at most {} allowed)",
            limits.max_extension_len
        )));
    }
    let mut data = Vec::with_capacity(size as usize);
    entry
        .read_to_end(&mut data)
        .map_err(|e| bad(format!("cannot read the archive: {e}")))?;
    if (data.len() as u64) < size {
        return Err(bad(format!("the archive is truncated (in a {what})")));
    }
    Ok(data)
}

/// Extension records that describe the next entry.
#[derive(Default)]
struct Pending {
    name: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

/// One entry's facts, extension records applied.
struct Meta {
    path: Vec<u8>,
    link: Option<Vec<u8>>,
    size: u64,
    mode: u32,
    mtime: Timespec,
    uid: u64,
    gid: u64,
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

fn number(value: &[u8], what: &str) -> Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("the archive has a bad PAX {what}: {}", show(value))))
}

impl Pending {
    fn apply<R: Read>(self, entry: &tar::Entry<'_, R>, limits: &Limits) -> Result<Meta> {
        let h = entry.header();
        let header_path = h.path_bytes().into_owned();
        let field = |r: io::Result<u64>, what: &str| {
            r.map_err(|e| {
                bad(format!(
                    "the archive has a bad {what} for {}: {e}",
                    show(&header_path)
                ))
            })
        };
        let mut meta = Meta {
            path: self
                .name
                .map(trim_nul)
                .unwrap_or_else(|| header_path.clone()),
            link: self
                .link
                .map(trim_nul)
                .or_else(|| h.link_name_bytes().map(|l| l.into_owned())),
            size: entry.size(),
            mode: field(h.mode().map(u64::from), "mode")? as u32,
            mtime: Timespec {
                tv_sec: field(h.mtime(), "mtime")? as i64,
                tv_nsec: 0,
            },
            uid: field(h.uid(), "owner")?,
            gid: field(h.gid(), "group")?,
        };
        if let Some(pax) = &self.pax {
            for record in tar::PaxExtensions::new(pax) {
                let record =
                    record.map_err(|e| bad(format!("the archive has a bad PAX header: {e}")))?;
                let value = record.value_bytes();
                match record.key_bytes() {
                    b"path" => meta.path = value.to_vec(),
                    b"linkpath" => meta.link = Some(value.to_vec()),
                    b"uid" => meta.uid = number(value, "uid")?,
                    b"gid" => meta.gid = number(value, "gid")?,
                    b"mtime" => {
                        let (secs, frac) = match value.iter().position(|&b| b == b'.') {
                            Some(dot) => (&value[..dot], &value[dot + 1..]),
                            None => (value, &b""[..]),
                        };
                        meta.mtime.tv_sec = number(secs, "mtime")? as i64;
                        let digits: Vec<u8> = frac
                            .iter()
                            .copied()
                            .chain(std::iter::repeat(b'0'))
                            .take(9)
                            .collect();
                        meta.mtime.tv_nsec = number(&digits, "mtime")? as _;
                    }
                    b"size" if number(value, "size")? != meta.size => {
                        return Err(bad(format!(
                            "the archive has a PAX size record for {} (files over 8 GiB \
                             written by other tools are not supported)",
                            show(&meta.path)
                        )));
                    }
                    key if key.starts_with(b"GNU.sparse") => {
                        return Err(bad(format!(
                            "unsupported file (sparse): {}",
                            show(&meta.path)
                        )));
                    }
                    _ => {}
                }
            }
        }
        if meta.path.len() > limits.max_path_len {
            return Err(bad(format!(
                "the archive has an entry name of {} bytes (at most {} allowed)",
                meta.path.len(),
                limits.max_path_len
            )));
        }
        Ok(meta)
    }
}

/// An entry's name split into its components; empty for the root itself.
fn components(path: &[u8]) -> Result<Vec<&[u8]>> {
    if path.starts_with(b"/") {
        return Err(bad(format!(
            "cannot restore an absolute name: {}",
            show(path)
        )));
    }
    if path.contains(&0) {
        return Err(bad(format!(
            "the archive has a name with a NUL byte: {}",
            show(path)
        )));
    }
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(bad(format!(
                    "cannot restore a file outside of the application root (a '..' name): {}",
                    show(path)
                )))
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

fn c_name(name: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(name))
}

struct Extractor<'a> {
    root: OwnedFd,
    limits: &'a Limits,
    as_root: bool,
    summary: Summary,
    /// Directories whose metadata waits until the archive leaves them (writing into them
    /// changes their mtime; a read-only mode would stop their children being written):
    /// a chain, each a parent of the next, so as deep as a path and never longer.
    open_dirs: Vec<(Vec<Vec<u8>>, Meta)>,
    /// Links made, checked for real once the tree is whole.
    links: u64,
    /// The last parent directory opened, by its components.
    cache: Option<(Vec<Vec<u8>>, OwnedFd)>,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl Extractor<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, meta: Meta) -> Result<()> {
        let kind = entry.header().entry_type();
        let comps: Vec<Vec<u8>> = components(&meta.path)?
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        let shown = show(&meta.path);
        match kind {
            tar::EntryType::Regular | tar::EntryType::Directory | tar::EntryType::Symlink => {}
            tar::EntryType::Link => {
                return Err(bad(format!("hard links are not supported: {shown}")))
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(bad(format!("unsupported file (device node): {shown}")))
            }
            tar::EntryType::Fifo => return Err(bad(format!("unsupported file (FIFO): {shown}"))),
            _ => return Err(bad(format!("unsupported file: {shown}"))),
        }
        let Some((name, parents)) = comps.split_last() else {
            if kind == tar::EntryType::Directory {
                return Ok(()); // "./": the root, which the caller made
            }
            return Err(bad(format!(
                "the archive has an entry without a name: {shown}"
            )));
        };
        self.summary.entries += 1;
        if self.summary.entries > self.limits.max_entries {
            return Err(bad(format!(
                "the archive has more than {} entries",
                self.limits.max_entries
            )));
        }
        let parents = parents.to_vec();
        self.leave_dirs(&parents)?;
        let parent = self.parent(&parents, &shown)?;
        let name = c_name(name);
        let exists = |e: Errno| e == Errno::EXIST;
        match kind {
            tar::EntryType::Regular => {
                let size = meta.size;
                if size
                    > self.limits.max_total_size
                        - self.summary.bytes.min(self.limits.max_total_size)
                {
                    return Err(bad(format!(
                        "the archive holds more than {} bytes of data (at {shown}, which claims {size})",
                        self.limits.max_total_size
                    )));
                }
                self.summary.bytes += size;
                let flags = OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC;
                let mode = Mode::from_raw_mode(0o600);
                let fd = match rfs::openat(&parent, name, flags, mode) {
                    Err(e) if exists(e) => {
                        // A later copy of the same file replaces it; nothing else may.
                        let st = rfs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW)
                            .map_err(|e| local(&shown, e))?;
                        if rfs::FileType::from_raw_mode(st.st_mode) != rfs::FileType::RegularFile {
                            return Err(bad(format!(
                                "the archive has two entries named {shown} of different types"
                            )));
                        }
                        rfs::unlinkat(&parent, name, AtFlags::empty())
                            .map_err(|e| local(&shown, e))?;
                        rfs::openat(&parent, name, flags, mode)
                    }
                    r => r,
                }
                .map_err(|e| local(format!("cannot create {shown}"), e))?;
                let mut file = File::from(fd);
                copy_exact(entry, &mut file, size, &shown)?;
                self.set_meta_fd(file.as_fd(), &meta, &shown)?;
            }
            tar::EntryType::Directory => {
                match rfs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)) {
                    Err(e) if exists(e) => {
                        rfs::openat(&parent, name, DIR_FLAGS, Mode::empty()).map_err(|_| {
                            bad(format!(
                                "the archive has two entries named {shown} of different types"
                            ))
                        })?;
                    }
                    r => r.map_err(|e| local(format!("cannot create {shown}"), e))?,
                }
                let mut all = parents;
                all.push(name.as_os_str().as_bytes().to_vec());
                self.open_dirs.push((all, meta));
            }
            _ => {
                let target = meta.link.clone().unwrap_or_default();
                self.check_target(&parents, name, &target, &shown)?;
                rfs::symlinkat(c_name(&target), &parent, name).map_err(|e| {
                    if exists(e) {
                        bad(format!("the archive has two entries named {shown}"))
                    } else {
                        local(format!("cannot create {shown}"), e)
                    }
                })?;
                if self.as_root {
                    rfs::chownat(
                        &parent,
                        name,
                        Some(rfs::Uid::from_raw(meta.uid as u32)),
                        Some(rfs::Gid::from_raw(meta.gid as u32)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| local(format!("cannot set the owner of {shown}"), e))?;
                }
                let times = Timestamps {
                    last_access: meta.mtime,
                    last_modification: meta.mtime,
                };
                rfs::utimensat(&parent, name, &times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| local(format!("cannot set the mtime of {shown}"), e))?;
                self.links += 1;
            }
        }
        self.cache = Some((comps[..comps.len() - 1].to_vec(), parent));
        Ok(())
    }

    /// Checks a link's target lexically; returns the path (from the root) to resolve for
    /// real once the tree is whole.
    fn check_target(
        &self,
        parents: &[Vec<u8>],
        name: &Path,
        target: &[u8],
        shown: &str,
    ) -> Result<Vec<u8>> {
        let refuse = || {
            bad(format!(
                "cannot restore the symlink {shown} -> {}: it points outside of the application root",
                show(target)
            ))
        };
        if target.is_empty() || target.contains(&0) {
            return Err(bad(format!(
                "the symlink {shown} has a bad target {}",
                show(target)
            )));
        }
        if target.len() > self.limits.max_path_len {
            return Err(bad(format!(
                "the symlink {shown} has a target of {} bytes (at most {} allowed)",
                target.len(),
                self.limits.max_path_len
            )));
        }
        let (mut stack, rest): (Vec<&[u8]>, &[u8]) = if let Some(abs) = target.strip_prefix(b"/") {
            let Some(root) = &self.limits.root_path else {
                return Err(refuse());
            };
            let mut stack = Vec::new();
            for c in abs.split(|&b| b == b'/') {
                match c {
                    b"" | b"." => {}
                    b".." => {
                        stack.pop();
                    }
                    c => stack.push(c),
                }
            }
            let root: Vec<&[u8]> = root
                .as_os_str()
                .as_bytes()
                .split(|&b| b == b'/')
                .filter(|c| !c.is_empty() && *c != b".")
                .collect();
            if !stack.starts_with(&root) {
                return Err(refuse());
            }
            (stack[root.len()..].to_vec(), &b""[..])
        } else {
            (parents.iter().map(Vec::as_slice).collect(), target)
        };
        for c in rest.split(|&b| b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => {
                    if stack.pop().is_none() {
                        return Err(refuse());
                    }
                }
                c => stack.push(c),
            }
        }
        if target.starts_with(b"/") {
            Ok(stack.join(&b'/'))
        } else {
            let mut own: Vec<&[u8]> = parents.iter().map(Vec::as_slice).collect();
            own.push(name.as_os_str().as_bytes());
            Ok(own.join(&b'/'))
        }
    }

    /// The directory `parents` (components from the root), opened without following any
    /// link; missing directories are created (mode 0700).
    fn parent(&mut self, parents: &[Vec<u8>], shown: &str) -> Result<OwnedFd> {
        if let Some((cached, fd)) = &self.cache {
            if cached.as_slice() == parents {
                return fd.try_clone().map_err(|e| local(shown, e));
            }
        }
        let mut dir = self.root.try_clone().map_err(|e| local(shown, e))?;
        for (i, c) in parents.iter().enumerate() {
            let c = c_name(c);
            let next = match rfs::openat(&dir, c, DIR_FLAGS, Mode::empty()) {
                Err(Errno::NOENT) => {
                    rfs::mkdirat(&dir, c, Mode::from_raw_mode(0o700))
                        .map_err(|e| local(format!("cannot create a directory for {shown}"), e))?;
                    rfs::openat(&dir, c, DIR_FLAGS, Mode::empty())
                }
                r => r,
            };
            dir = next.map_err(|e| {
                let through = show(&parents[..=i].join(&b'/'));
                if e == Errno::LOOP || e == Errno::NOTDIR {
                    bad(format!(
                        "cannot restore {shown}: it would be written through {through}, which is a \
                         symlink or a file"
                    ))
                } else {
                    local(format!("cannot open {through}"), e)
                }
            })?;
        }
        Ok(dir)
    }

    fn set_meta_fd(&self, fd: std::os::fd::BorrowedFd<'_>, meta: &Meta, shown: &str) -> Result<()> {
        if self.as_root {
            rfs::fchown(
                fd,
                Some(rfs::Uid::from_raw(meta.uid as u32)),
                Some(rfs::Gid::from_raw(meta.gid as u32)),
            )
            .map_err(|e| local(format!("cannot set the owner of {shown}"), e))?;
        }
        let mut mode = meta.mode & 0o7777;
        if !self.limits.allow_setid {
            mode &= !0o6000;
        }
        rfs::fchmod(fd, Mode::from_raw_mode(mode))
            .map_err(|e| local(format!("cannot set the mode of {shown}"), e))?;
        let times = Timestamps {
            last_access: meta.mtime,
            last_modification: meta.mtime,
        };
        rfs::futimens(fd, &times).map_err(|e| local(format!("cannot set the mtime of {shown}"), e))
    }

    /// Sets the metadata of the directories the archive has left: those that are not
    /// `parents` or one of its parents. (An archive that comes back into such a directory
    /// later still works, but changes its mtime.)
    fn leave_dirs(&mut self, parents: &[Vec<u8>]) -> Result<()> {
        while let Some((comps, _)) = self.open_dirs.last() {
            if parents.starts_with(comps) {
                break;
            }
            let (comps, meta) = self.open_dirs.pop().expect("checked above");
            let shown = show(&meta.path);
            let fd = self.parent(&comps, &shown)?;
            self.set_meta_fd(fd.as_fd(), &meta, &shown)?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Summary> {
        self.leave_dirs(&[])?;
        if self.links > 0 {
            let root = self
                .root
                .try_clone()
                .map_err(|e| local("the restored tree", e))?;
            self.check_links(root, &mut Vec::new())?;
        }
        Ok(self.summary)
    }

    /// Resolves every link of the tree under `dir` (at `path` from the root) for real,
    /// with `openat2` and `RESOLVE_BENEATH`: a link whose target stays inside on its own but
    /// leaves the tree through other links (`d/b -> ..`, `a -> d/b/../x`) is refused. The
    /// walk is one directory per level, so it needs no list of the links made.
    fn check_links(&self, dir: OwnedFd, path: &mut Vec<u8>) -> Result<()> {
        let fail = |e: Errno| local("cannot check the restored tree", e);
        for entry in rfs::Dir::read_from(&dir).map_err(fail)? {
            let entry = entry.map_err(fail)?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let len = path.len();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name);
            match entry.file_type() {
                rfs::FileType::Directory => {
                    let sub =
                        rfs::openat(&dir, c_name(name), DIR_FLAGS, Mode::empty()).map_err(fail)?;
                    self.check_links(sub, path)?;
                }
                rfs::FileType::Symlink => {
                    let target = rfs::readlinkat(&dir, c_name(name), Vec::new())
                        .map_err(fail)?
                        .into_bytes();
                    let shown = show(path);
                    let parents: Vec<Vec<u8>> = path[..len]
                        .split(|&b| b == b'/')
                        .filter(|c| !c.is_empty())
                        .map(<[u8]>::to_vec)
                        .collect();
                    let resolve = self.check_target(&parents, c_name(name), &target, &shown)?;
                    // Dangling or looping links stay harmless inside; ENOSYS (no openat2)
                    // leaves the lexical check alone.
                    if !resolve.is_empty() {
                        if let Err(Errno::XDEV) = rfs::openat2(
                            &self.root,
                            c_name(&resolve),
                            OFlags::PATH | OFlags::CLOEXEC,
                            Mode::empty(),
                            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
                        ) {
                            return Err(bad(format!(
                                "cannot restore the symlink {shown} -> {}: through other links \
                                 it points outside of the application root",
                                show(&target)
                            )));
                        }
                    }
                }
                _ => {}
            }
            path.truncate(len);
        }
        Ok(())
    }
}

/// Copies exactly `size` bytes of the entry: a short entry is a truncated archive.
fn copy_exact(input: &mut impl Read, out: &mut File, size: u64, shown: &str) -> Result<()> {
    // Sized for the entry: most files are small, and a fresh zeroed 256 KiB each would
    // cost more than copying them.
    let cap = usize::try_from(size.min(256 * 1024)).unwrap_or(256 * 1024);
    let mut buf = vec![0u8; cap];
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match input.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(bad(format!(
                    "the archive is truncated (in {shown}, {left} of {size} bytes missing)"
                )))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(bad(format!("cannot read the archive (in {shown}): {e}"))),
        };
        out.write_all(&buf[..n])
            .map_err(|e| local(format!("cannot write {shown}"), e))?;
        left -= n as u64;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Restore into a sibling and swap
// ---------------------------------------------------------------------------------------

/// A restore extracted next to its directory and not yet swapped in: [`swap`] puts it in
/// place; dropping it removes it (the directory is untouched either way until the swap).
///
/// [`swap`]: PreparedRestore::swap
#[derive(Debug)]
pub struct PreparedRestore {
    dir: PathBuf,
    new: PathBuf,
    summary: Summary,
    done: bool,
    /// Staged inside the directory (a mount point): swapped entry by entry.
    inside: bool,
}

fn sibling(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .ok_or_else(|| Error::internal(format!("{} has no name", dir.display())))?;
    let mut sib = name.to_os_string();
    sib.push(suffix);
    Ok(dir.with_file_name(sib))
}

fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    }
}

/// Where a mount point's restore is staged, inside it (a rename cannot cross into it).
const STAGE_NEW: &str = ".restore.new";
/// Where a mount point's old entries go while the new ones are moved in.
const STAGE_OLD: &str = ".restore.old";

/// Whether `dir` is a mount point (its parent is on another filesystem, or it is `/`).
fn is_mount_point(dir: &Path, meta: &Metadata) -> Result<bool> {
    let parent = fs::metadata(dir.join("..")).map_err(|e| local(dir.display(), e))?;
    Ok(parent.dev() != meta.dev() || parent.ino() == meta.ino())
}

/// Extracts the archive with [`restore_into`] into a fresh directory made with `dir`'s
/// mode and owner: the sibling `<dir>.new`, or, when `dir` is a mount point (a rename
/// cannot cross into it), `<dir>/.restore.new`. A stale one from an interrupted restore
/// is removed first. On error it is removed and `dir` was never touched.
pub fn prepare_restore(reader: impl Read, dir: &Path, limits: &Limits) -> Result<PreparedRestore> {
    let meta = fs::symlink_metadata(dir).map_err(|e| local(dir.display(), e))?;
    if !meta.is_dir() {
        return Err(Error::internal(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let inside = is_mount_point(dir, &meta)?;
    prepare(reader, dir, &meta, limits, inside)
}

fn prepare(
    reader: impl Read,
    dir: &Path,
    meta: &Metadata,
    limits: &Limits,
    inside: bool,
) -> Result<PreparedRestore> {
    let new = if inside {
        let old = dir.join(STAGE_OLD);
        remove_tree(&old).map_err(|e| local(format!("cannot remove {}", old.display()), e))?;
        dir.join(STAGE_NEW)
    } else {
        sibling(dir, ".new")?
    };
    remove_tree(&new).map_err(|e| local(format!("cannot remove {}", new.display()), e))?;
    fs::create_dir(&new).map_err(|e| local(format!("cannot create {}", new.display()), e))?;
    let mut prepared = PreparedRestore {
        dir: dir.to_path_buf(),
        new,
        summary: Summary::default(),
        done: false,
        inside,
    };
    fs::set_permissions(
        &prepared.new,
        fs::Permissions::from_mode(meta.mode() & 0o7777),
    )
    .map_err(|e| local(prepared.new.display(), e))?;
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::lchown(&prepared.new, Some(meta.uid()), Some(meta.gid()))
            .map_err(|e| local(prepared.new.display(), e))?;
    }
    prepared.summary = restore_into(reader, &prepared.new, limits)?;
    Ok(prepared)
}

/// The names in `dir`, sorted, leaving out the staging directories.
fn names(dir: &Path) -> io::Result<Vec<std::ffi::OsString>> {
    let mut names = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()?;
    names.retain(|n| n != STAGE_NEW && n != STAGE_OLD);
    names.sort();
    Ok(names)
}

/// Moves each of `names` from `from` to `to`; on a failure moves back what it moved.
fn move_all(names: &[std::ffi::OsString], from: &Path, to: &Path) -> io::Result<()> {
    for (i, name) in names.iter().enumerate() {
        if let Err(e) = fs::rename(from.join(name), to.join(name)) {
            for back in &names[..i] {
                let _ = fs::rename(to.join(back), from.join(back));
            }
            return Err(e);
        }
    }
    Ok(())
}

impl PreparedRestore {
    /// What the archive held.
    pub fn summary(&self) -> Summary {
        self.summary
    }

    /// Swaps the restored tree in with one `renameat2(RENAME_EXCHANGE)` (on a filesystem
    /// without it: rename the old tree aside, rename the new one in, and put the old one
    /// back if that fails), then removes the old tree. In a mount point, the old entries
    /// are renamed into `.restore.old` and the new ones out of `.restore.new`, one by one
    /// (quick renames, but not one atomic step); a failure moves back what was moved.
    pub fn swap(mut self) -> Result<Summary> {
        if self.inside {
            self.swap_inside()?;
            return Ok(self.summary);
        }
        let (dir, new) = (&self.dir, &self.new);
        match rfs::renameat_with(CWD, new, CWD, dir, RenameFlags::EXCHANGE) {
            Ok(()) => {
                self.done = true;
                // `new` now holds the old tree. The swap stands even if this fails; the
                // next restore removes what is left.
                let _ = fs::remove_dir_all(new);
            }
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                let old = sibling(dir, ".old")?;
                remove_tree(&old)
                    .map_err(|e| local(format!("cannot remove {}", old.display()), e))?;
                fs::rename(dir, &old)
                    .map_err(|e| local(format!("cannot move {} aside", dir.display()), e))?;
                if let Err(e) = fs::rename(new, dir) {
                    let _ = fs::rename(&old, dir);
                    return Err(local(
                        format!("cannot move the restored tree to {}", dir.display()),
                        e,
                    ));
                }
                self.done = true;
                let _ = fs::remove_dir_all(&old);
            }
            Err(e) => {
                return Err(local(
                    format!("cannot swap the restored tree in at {}", dir.display()),
                    e,
                ))
            }
        }
        Ok(self.summary)
    }
}

impl PreparedRestore {
    fn swap_inside(&mut self) -> Result<()> {
        let (dir, new) = (&self.dir, &self.new);
        let old = dir.join(STAGE_OLD);
        let fail = |e| {
            local(
                format!("cannot swap the restored tree in at {}", dir.display()),
                e,
            )
        };
        fs::create_dir(&old).map_err(fail)?;
        let current = names(dir).map_err(fail)?;
        if let Err(e) = move_all(&current, dir, &old) {
            let _ = fs::remove_dir(&old);
            return Err(fail(e));
        }
        let restored = names(new).map_err(fail);
        let moved_in = restored.and_then(|r| move_all(&r, new, dir).map_err(fail));
        if let Err(e) = moved_in {
            let _ = move_all(&current, &old, dir);
            let _ = fs::remove_dir(&old);
            return Err(e);
        }
        self.done = true;
        let _ = fs::remove_dir(new);
        let _ = fs::remove_dir_all(&old);
        Ok(())
    }
}

impl Drop for PreparedRestore {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.new);
        }
    }
}

/// [`prepare_restore`] then [`PreparedRestore::swap`]: the tree at `dir` is replaced by
/// the archive's only if the whole archive extracted; on any error it is as it was.
pub fn restore_swap(reader: impl Read, dir: &Path, limits: &Limits) -> Result<Summary> {
    prepare_restore(reader, dir, limits)?.swap()
}

// ---------------------------------------------------------------------------------------
// Directories reached through a descriptor
// ---------------------------------------------------------------------------------------

/// The path through which the kernel reaches the directory open as `fd` itself (its
/// `/proc/self/fd` link resolves to exactly that directory, wherever it is and whatever
/// its path was: under a root prefix, reached through the host's `dir_open`).
fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `f`'s result with every mention of `inner` (a `/proc/self/fd` path) in its error text
/// shown as `shown` (the OS path the caller knows the directory by).
fn shown_as<T>(inner: &Path, shown: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    f().map_err(|mut e| {
        e.message = e
            .message
            .replace(&*inner.to_string_lossy(), shown.trim_end_matches('/'));
        e
    })
}

/// [`backup_dir`] of the directory open as `dir` (for one a plugin reaches through the
/// host, `Host::open_dir`); `shown` is its OS path, for error texts. The same archive as
/// [`backup_dir`] of its path.
pub fn backup_dir_fd(
    dir: impl AsFd,
    shown: &str,
    writer: impl Write,
    exclusions: &Exclusions<'_>,
    complete: bool,
) -> Result<Summary> {
    let inner = fd_path(dir.as_fd()).join(".");
    shown_as(&inner, shown, || {
        backup_dir(&inner, writer, exclusions, complete)
    })
}

/// [`backup_check`] of the directory open as `dir`; see [`backup_dir_fd`].
pub fn backup_check_fd(
    dir: impl AsFd,
    shown: &str,
    exclusions: &Exclusions<'_>,
    complete: bool,
) -> Result<Summary> {
    let inner = fd_path(dir.as_fd()).join(".");
    shown_as(&inner, shown, || backup_check(&inner, exclusions, complete))
}

/// Restores the archive into the directory open as `dir`, which cannot be renamed through
/// its own descriptor: the tree is extracted inside it (`.restore.new`, with `dir`'s mode
/// and owner) and swapped in entry by entry, as for a mount point in [`restore_swap`]
/// (quick renames, not one atomic step; a failure moves back what was moved, and a bad
/// archive changes nothing). `shown` is its OS path, for error texts. With a descriptor
/// of the parent directory, [`restore_swap_at`] swaps the whole tree in one step.
pub fn restore_swap_fd(
    reader: impl Read,
    dir: impl AsFd,
    shown: &str,
    limits: &Limits,
) -> Result<Summary> {
    let inner = fd_path(dir.as_fd()).join(".");
    shown_as(&inner, shown, || {
        let meta = fs::metadata(&inner).map_err(|e| local(inner.display(), e))?;
        prepare(reader, &inner, &meta, limits, true)?.swap()
    })
}

/// [`restore_swap`] of the directory `name` in the directory open as `parent`: extracted
/// into the sibling `<name>.new` and swapped in with one `renameat2(RENAME_EXCHANGE)`, all
/// relative to `parent` (for a plugin that reaches the parent through the host,
/// `Host::open_dir`). `shown_parent` is the parent's OS path, for error texts.
pub fn restore_swap_at(
    reader: impl Read,
    parent: impl AsFd,
    name: &str,
    shown_parent: &str,
    limits: &Limits,
) -> Result<Summary> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::bad_request(format!(
            "{name:?} is not a directory name"
        )));
    }
    let inner = fd_path(parent.as_fd());
    shown_as(&inner, shown_parent, || {
        restore_swap(reader, &inner.join(name), limits)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(files: &[(&str, &str)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_600_000_000);
            h.set_size(data.len() as u64);
            tar.append_data(&mut h, name, data.as_bytes()).unwrap();
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar.into_inner().unwrap()).unwrap();
        gz.finish().unwrap()
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn mount_points_are_told_from_plain_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let meta = fs::metadata(tmp.path()).unwrap();
        assert!(!is_mount_point(tmp.path(), &meta).unwrap());
        assert!(is_mount_point(Path::new("/"), &fs::metadata("/").unwrap()).unwrap());
    }

    /// A mount point cannot be renamed over: the restore is staged inside it and swapped
    /// entry by entry.
    #[test]
    fn a_restore_staged_inside_its_directory_swaps_entry_by_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("app");
        fs::create_dir_all(dir.join("old-dir")).unwrap();
        fs::write(dir.join("keep"), "old").unwrap();
        let meta = fs::metadata(&dir).unwrap();

        // A bad archive leaves the directory as it was, staging removed.
        let bad = archive(&[("a", "1")])[..20].to_vec();
        assert!(prepare(bad.as_slice(), &dir, &meta, &Limits::default(), true).is_err());
        assert_eq!(entries(&dir), ["keep", "old-dir"]);

        let good = archive(&[("keep", "new"), ("sub/x", "y")]);
        let prepared = prepare(good.as_slice(), &dir, &meta, &Limits::default(), true).unwrap();
        assert_eq!(entries(&dir), [".restore.new", "keep", "old-dir"]);
        // A backup taken meanwhile (or after a crash left the staging) leaves it out.
        let mut backup = Vec::new();
        let summary = backup_dir(&dir, &mut backup, &Exclusions::NONE, false).unwrap();
        assert_eq!(summary.entries, 2);
        assert_eq!(fs::read_to_string(dir.join("keep")).unwrap(), "old");
        prepared.swap().unwrap();
        assert_eq!(entries(&dir), ["keep", "sub"]);
        assert_eq!(fs::read_to_string(dir.join("keep")).unwrap(), "new");
        assert_eq!(fs::read_to_string(dir.join("sub/x")).unwrap(), "y");
        assert_eq!(entries(tmp.path()), ["app"]);
    }

    fn open_dir(path: &Path) -> OwnedFd {
        rfs::open(path, DIR_FLAGS, Mode::empty()).unwrap()
    }

    /// Through a descriptor: the same archive as by path, restores swapped in (inside the
    /// directory, or as a sibling relative to the parent), a bad archive changing nothing,
    /// and error texts naming the path the caller gave, not `/proc/self/fd`.
    #[test]
    fn directories_reached_through_a_descriptor_back_up_and_restore_as_by_path() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("app");
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("sub/x"), "x").unwrap();
        fs::write(dir.join("keep"), "old").unwrap();
        std::os::unix::fs::symlink("sub/x", dir.join("l")).unwrap();
        let fd = open_dir(&dir);

        let mut by_path = Vec::new();
        backup_dir(&dir, &mut by_path, &Exclusions::NONE, false).unwrap();
        let mut by_fd = Vec::new();
        let summary =
            backup_dir_fd(&fd, "/var/lib/app", &mut by_fd, &Exclusions::NONE, false).unwrap();
        assert_eq!(summary.entries, 4);
        assert!(by_fd == by_path, "the same archive either way");
        assert_eq!(
            backup_check_fd(&fd, "/var/lib/app", &Exclusions::NONE, false).unwrap(),
            summary
        );

        // A bad archive: nothing changes.
        let bad = archive(&[("a", "1")])[..20].to_vec();
        let e =
            restore_swap_fd(bad.as_slice(), &fd, "/var/lib/app", &Limits::default()).unwrap_err();
        assert_eq!(e.status, 400, "{e:?}");
        assert_eq!(entries(&dir), ["keep", "l", "sub"]);
        // Errors name the caller's path.
        fs::remove_file(dir.join("sub/x")).unwrap();
        fs::create_dir(dir.join("sub/x")).unwrap();
        fs::set_permissions(dir.join("sub/x"), fs::Permissions::from_mode(0o000)).unwrap();
        let e = backup_dir_fd(
            &fd,
            "/var/lib/app",
            &mut Vec::new(),
            &Exclusions::NONE,
            false,
        );
        fs::set_permissions(dir.join("sub/x"), fs::Permissions::from_mode(0o755)).unwrap();
        if !rustix::process::geteuid().is_root() {
            let e = e.unwrap_err();
            assert!(e.message.starts_with("/var/lib/app/sub/x: "), "{e:?}");
        }
        fs::remove_dir(dir.join("sub/x")).unwrap();

        // Restored inside the directory, through its own descriptor.
        let good = archive(&[("keep", "new"), ("more/y", "y")]);
        restore_swap_fd(good.as_slice(), &fd, "/var/lib/app", &Limits::default()).unwrap();
        assert_eq!(entries(&dir), ["keep", "more"]);
        assert_eq!(fs::read_to_string(dir.join("keep")).unwrap(), "new");

        // Restored as a sibling and swapped in one step, relative to the parent.
        let parent = open_dir(tmp.path());
        let other = archive(&[("z", "z")]);
        restore_swap_at(
            other.as_slice(),
            &parent,
            "app",
            "/var/lib",
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(entries(&dir), ["z"]);
        assert_eq!(entries(tmp.path()), ["app"]);
        let e = restore_swap_at(
            other.as_slice(),
            &parent,
            "none",
            "/var/lib",
            &Limits::default(),
        )
        .unwrap_err();
        assert!(e.message.starts_with("/var/lib/none: "), "{e:?}");
        assert!(restore_swap_at(
            other.as_slice(),
            &parent,
            "..",
            "/var/lib",
            &Limits::default()
        )
        .is_err());
    }
}
