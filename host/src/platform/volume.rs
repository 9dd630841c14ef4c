//! Reading a small removable volume (a `SEED_DATA` or `RESCUE_DATA` stick, an ISO) in
//! process, without mounting it.
//!
//! Upstream mounts such a volume read-only, as vfat and then as iso9660. Reading it here
//! instead means nothing is mounted (no mount point to clean up, no kernel module needed:
//! a kernel without vfat still reads a seed stick) and nothing can be written, as the
//! device is opened read-only. FAT12/16/32 (long names included) is read by the `fatfs`
//! crate; ISO 9660 by the reader below, which prefers Joliet names, then Rock Ridge names,
//! then the plain ISO names without their `;1` version. Names are matched without regard
//! to case, as on a mounted vfat volume.
//!
//! A [`DirVolume`] reads the same files from a directory (an unpacked volume).

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A volume's files, by `/`-separated path from its root.
pub trait Volume {
    /// The file at `path`, `None` when the volume has no such file.
    fn open(&self, path: &str) -> io::Result<Option<Box<dyn Read + '_>>>;

    /// What the volume is (`vfat`, `iso9660`, `directory`), for logs.
    fn kind(&self) -> &'static str;

    /// The whole file at `path` when it is at most `limit` bytes; `None` when absent.
    fn read(&self, path: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(f) = self.open(path)? else {
            return Ok(None);
        };
        let mut data = Vec::new();
        f.take(limit + 1).read_to_end(&mut data)?;
        if data.len() as u64 > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{path} is larger than {limit} bytes"),
            ));
        }
        Ok(Some(data))
    }
}

/// Opens the volume on `device` (a block device or an image file): FAT, else ISO 9660.
pub fn open(device: &Path) -> Result<Box<dyn Volume>, String> {
    let mut file =
        File::open(device).map_err(|e| format!("cannot open {}: {e}", device.display()))?;
    let mut head = vec![0u8; 34 * 1024];
    let n = read_full(&mut file, &mut head)
        .map_err(|e| format!("cannot read {}: {e}", device.display()))?;
    head.truncate(n);
    if is_fat(&head) {
        file.seek(SeekFrom::Start(0))
            .map_err(|e| format!("cannot read {}: {e}", device.display()))?;
        let fs = fatfs::FileSystem::new(ReadOnly(file), fatfs::FsOptions::new()).map_err(|e| {
            format!(
                "{} is not a readable FAT file system: {e}",
                device.display()
            )
        })?;
        return Ok(Box::new(FatVolume(fs)));
    }
    if head.len() >= ISO_PVD + 6 && &head[ISO_PVD + 1..ISO_PVD + 6] == b"CD001" {
        return IsoVolume::new(file)
            .map(|v| Box::new(v) as Box<dyn Volume>)
            .map_err(|e| {
                format!(
                    "{} is not a readable ISO 9660 file system: {e}",
                    device.display()
                )
            });
    }
    Err(format!(
        "{} holds neither a FAT nor an ISO 9660 file system",
        device.display()
    ))
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A FAT boot sector: the 0x55AA signature and a FAT file system type string (FAT12/16 at
/// 54, FAT32 at 82).
fn is_fat(head: &[u8]) -> bool {
    head.len() >= 512
        && head[510] == 0x55
        && head[511] == 0xAA
        && (head[54..57] == *b"FAT" || head[82..87] == *b"FAT32")
}

/// A device opened read-only: a write is refused (the FAT reader writes only when a
/// volume was changed, or to clear a dirty flag when dropped, which fails harmlessly).
struct ReadOnly(File);

impl Read for ReadOnly {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Seek for ReadOnly {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}

impl Write for ReadOnly {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the volume is read only",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct FatVolume(fatfs::FileSystem<ReadOnly>);

impl Volume for FatVolume {
    fn open(&self, path: &str) -> io::Result<Option<Box<dyn Read + '_>>> {
        let path = path.trim_start_matches('/');
        match self.0.root_dir().open_file(path) {
            Ok(f) => Ok(Some(Box::new(f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            // A directory is no file.
            Err(_) if self.0.root_dir().open_dir(path).is_ok() => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn kind(&self) -> &'static str {
        "vfat"
    }
}

/// The primary volume descriptor's offset (sector 16 of 2,048 bytes).
const ISO_PVD: usize = 16 * SECTOR as usize;
const SECTOR: u64 = 2048;
/// A directory larger than this is refused (a real one of a seed stick is a sector or two).
const MAX_DIR: u32 = 4 << 20;

/// A directory record: where its data is and how long.
#[derive(Debug, Clone, Copy)]
struct Extent {
    lba: u32,
    len: u32,
    dir: bool,
}

enum Names {
    Joliet,
    Iso,
}

struct IsoVolume {
    file: RefCell<File>,
    root: Extent,
    names: Names,
}

impl IsoVolume {
    fn new(mut file: File) -> io::Result<Self> {
        let mut primary = None;
        let mut joliet = None;
        for n in 16..64u64 {
            let mut vd = vec![0u8; SECTOR as usize];
            file.seek(SeekFrom::Start(n * SECTOR))?;
            file.read_exact(&mut vd)?;
            if &vd[1..6] != b"CD001" {
                return Err(bad("a volume descriptor lacks its CD001 mark"));
            }
            match vd[0] {
                1 => primary = Some(record(&vd[156..190])?),
                // A supplementary descriptor with a UCS-2 escape sequence is Joliet's.
                2 if vd[88] == b'%' && vd[89] == b'/' && matches!(vd[90], b'@' | b'C' | b'E') => {
                    joliet = Some(record(&vd[156..190])?)
                }
                255 => break,
                _ => {}
            }
        }
        let (root, names) = match (joliet, primary) {
            (Some(j), _) => (j, Names::Joliet),
            (None, Some(p)) => (p, Names::Iso),
            (None, None) => return Err(bad("no primary volume descriptor")),
        };
        Ok(Self {
            file: RefCell::new(file),
            root,
            names,
        })
    }

    /// The entries of the directory at `dir`: name and extent.
    fn entries(&self, dir: Extent) -> io::Result<Vec<(String, Extent)>> {
        if dir.len > MAX_DIR {
            return Err(bad("a directory is too large"));
        }
        let mut data = vec![0u8; dir.len as usize];
        {
            let mut f = self.file.borrow_mut();
            f.seek(SeekFrom::Start(u64::from(dir.lba) * SECTOR))?;
            f.read_exact(&mut data)?;
        }
        let mut out = vec![];
        let mut at = 0usize;
        while at < data.len() {
            let len = data[at] as usize;
            if len == 0 {
                // Records do not cross sectors: the rest of this one is padding.
                at = (at / SECTOR as usize + 1) * SECTOR as usize;
                continue;
            }
            let rec = data
                .get(at..at + len)
                .ok_or_else(|| bad("a directory record runs past its directory"))?;
            at += len;
            let extent = record(rec)?;
            let name_len = *rec.get(32).ok_or_else(|| bad("a short directory record"))? as usize;
            let raw = rec
                .get(33..33 + name_len)
                .ok_or_else(|| bad("a directory record's name runs past it"))?;
            if raw == [0] || raw == [1] {
                continue; // `.` and `..`
            }
            let name = match self.names {
                Names::Joliet => {
                    let units: Vec<u16> = raw
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect();
                    strip_version(&String::from_utf16_lossy(&units))
                }
                Names::Iso => {
                    // System use after the name (and its pad byte when the length is even).
                    let su = 33 + name_len + usize::from(name_len.is_multiple_of(2));
                    rock_ridge_name(rec.get(su..).unwrap_or(&[]))
                        .unwrap_or_else(|| strip_version(&String::from_utf8_lossy(raw)))
                }
            };
            out.push((name, extent));
        }
        Ok(out)
    }
}

impl Volume for IsoVolume {
    fn open(&self, path: &str) -> io::Result<Option<Box<dyn Read + '_>>> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let mut at = self.root;
        for (i, part) in parts.iter().enumerate() {
            let found = self
                .entries(at)?
                .into_iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(part));
            match found {
                Some((_, e)) if (i + 1 == parts.len()) != e.dir => at = e,
                _ => return Ok(None),
            }
        }
        if at.dir {
            return Ok(None);
        }
        let mut f = self.file.borrow().try_clone()?;
        f.seek(SeekFrom::Start(u64::from(at.lba) * SECTOR))?;
        Ok(Some(Box::new(f.take(u64::from(at.len)))))
    }

    fn kind(&self) -> &'static str {
        "iso9660"
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// The extent of a directory record (both-endian fields: the little-endian half).
fn record(rec: &[u8]) -> io::Result<Extent> {
    if rec.len() < 34 {
        return Err(bad("a short directory record"));
    }
    let le = |at: usize| u32::from_le_bytes([rec[at], rec[at + 1], rec[at + 2], rec[at + 3]]);
    Ok(Extent {
        lba: le(2),
        len: le(10),
        dir: rec[25] & 0x02 != 0,
    })
}

/// `NAME.EXT;1` -> `NAME.EXT`; a name with no extension may end in a bare dot.
fn strip_version(name: &str) -> String {
    let base = name.split(';').next().unwrap_or(name);
    base.strip_suffix('.').unwrap_or(base).to_string()
}

/// The Rock Ridge `NM` name in a record's system use area, if there is one.
fn rock_ridge_name(mut su: &[u8]) -> Option<String> {
    let mut name = String::new();
    while su.len() >= 4 {
        let len = su[2] as usize;
        if len < 4 || len > su.len() {
            break;
        }
        if &su[..2] == b"NM" && len >= 5 {
            name.push_str(&String::from_utf8_lossy(&su[5..len]));
        }
        su = &su[len..];
    }
    (!name.is_empty()).then_some(name)
}

/// The files of a directory, read as a volume's.
pub struct DirVolume(pub PathBuf);

impl Volume for DirVolume {
    fn open(&self, path: &str) -> io::Result<Option<Box<dyn Read + '_>>> {
        let rel = Path::new(path.trim_start_matches('/'));
        if rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Ok(None);
        }
        match File::open(self.0.join(rel)) {
            Ok(f) if f.metadata()?.is_file() => Ok(Some(Box::new(f))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn kind(&self) -> &'static str {
        "directory"
    }
}

#[cfg(test)]
mod tests {
    //! Images made by the real mkfs.vfat + mcopy and xorriso; a test says loudly when the
    //! tool is missing (tests/run-all installs dosfstools, mtools and xorriso).

    use super::*;
    use std::process::Command;

    fn have(tool: &str) -> bool {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("\nSKIPPED: {tool} is not installed (tests/run-all installs it)\n");
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{tool} is missing under CI=true"
            );
        }
        ok
    }

    fn run(cmd: &mut Command) {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn files(dir: &Path) {
        std::fs::create_dir_all(dir.join("update/x86_64")).unwrap();
        std::fs::write(dir.join("network.json"), b"{\"version\":\"1\"}").unwrap();
        std::fs::write(dir.join("update/update.sjson"), vec![7u8; 5000]).unwrap();
        std::fs::write(dir.join("update/x86_64/IncusOS_1.efi.gz"), b"efi").unwrap();
    }

    fn check(v: &dyn Volume) {
        assert_eq!(
            v.read("network.json", 100).unwrap().unwrap(),
            b"{\"version\":\"1\"}"
        );
        assert_eq!(v.read("NETWORK.JSON", 100).unwrap().unwrap().len(), 15);
        assert_eq!(
            v.read("update/update.sjson", 8000).unwrap().unwrap(),
            vec![7u8; 5000]
        );
        assert_eq!(
            v.read("update/x86_64/IncusOS_1.efi.gz", 100)
                .unwrap()
                .unwrap(),
            b"efi"
        );
        assert!(v.open("missing.json").unwrap().is_none());
        assert!(v.open("update/missing").unwrap().is_none());
        assert!(
            v.open("update").unwrap().is_none(),
            "a directory is no file"
        );
        let e = v.read("update/update.sjson", 4999).err().unwrap();
        assert!(e.to_string().contains("larger than 4999 bytes"), "{e}");
    }

    #[test]
    fn a_vfat_image_made_by_mkfs_vfat_is_read_without_mounting() {
        if !have("mkfs.vfat") || !have("mcopy") {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        files(&src);
        let img = t.path().join("seed.img");
        run(Command::new("mkfs.vfat")
            .args(["-C", "-n", "SEED_DATA"])
            .arg(&img)
            .arg("4096"));
        run(Command::new("mcopy")
            .args(["-s", "-i"])
            .arg(&img)
            .arg(src.join("network.json"))
            .arg(src.join("update"))
            .arg("::/"));
        let before = std::fs::read(&img).unwrap();
        let v = open(&img).unwrap();
        assert_eq!(v.kind(), "vfat");
        check(v.as_ref());
        drop(v);
        assert!(
            std::fs::read(&img).unwrap() == before,
            "the image is left as it was"
        );
    }

    #[test]
    fn iso_images_with_joliet_rock_ridge_or_plain_names_are_read() {
        if !have("xorriso") {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        files(&src);
        for (flags, name) in [
            (&["-J"][..], "joliet"),
            (&["-R"][..], "rr"),
            (&[][..], "plain"),
        ] {
            let img = t.path().join(format!("{name}.iso"));
            let mut cmd = Command::new("xorriso");
            cmd.args(["-as", "mkisofs", "-quiet", "-V", "SEED_DATA"])
                .args(flags)
                .arg("-o")
                .arg(&img)
                .arg(&src);
            run(&mut cmd);
            let v = open(&img).unwrap();
            assert_eq!(v.kind(), "iso9660");
            if name == "plain" {
                // Plain ISO level 1 names are 8.3 upper case: the short names only.
                assert!(v.read("network.json", 100).unwrap().is_some(), "{name}");
                continue;
            }
            check(v.as_ref());
        }
    }

    #[test]
    fn other_content_is_refused_with_a_clear_error() {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("zero.img");
        std::fs::write(&img, vec![0u8; 64 * 1024]).unwrap();
        let e = open(&img).err().unwrap();
        assert!(
            e.ends_with("holds neither a FAT nor an ISO 9660 file system"),
            "{e}"
        );
        let e = open(&t.path().join("absent")).err().unwrap();
        assert!(e.starts_with("cannot open "), "{e}");
        // An ISO mark with nothing valid behind it.
        let mut iso = vec![0u8; 40 * 1024];
        iso[ISO_PVD + 1..ISO_PVD + 6].copy_from_slice(b"CD001");
        iso[ISO_PVD] = 1;
        std::fs::write(&img, &iso).unwrap();
        let e = open(&img).err().unwrap();
        assert!(e.contains("is not a readable ISO 9660 file system"), "{e}");
    }

    #[test]
    fn a_directory_volume_never_leaves_its_directory() {
        let t = tempfile::tempdir().unwrap();
        files(t.path());
        std::fs::write(t.path().join("../outside-secret"), b"x").ok();
        let v = DirVolume(t.path().to_path_buf());
        assert!(v.open("../outside-secret").unwrap().is_none());
        assert!(v.open("/network.json").unwrap().is_some());
        assert!(v.open("update").unwrap().is_none());
    }
}
