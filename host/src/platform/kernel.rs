//! Where the running kernel's facts come from.
//!
//! `/proc` and `/sys` are the kernel's, not files of the OS tree under the root prefix, so
//! they are not read through it (the root prefix keeps every path inside the root: a
//! `proc -> /proc` link in a dev root would no longer reach this machine's `/proc`). The
//! live root and the dev root read this machine's; a test root writes stand-ins under
//! itself (`<root>/proc/uptime`) and reads those.

use std::io;
use std::path::{Path, PathBuf};

/// The directories kernel facts are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFiles {
    pub proc: PathBuf,
    pub sys: PathBuf,
}

impl KernelFiles {
    /// This machine's kernel: `/proc` and `/sys`.
    pub fn host() -> KernelFiles {
        KernelFiles {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
        }
    }

    /// Stand-ins under a test root: `<root>/proc` and `<root>/sys`.
    pub fn under(root: &Path) -> KernelFiles {
        KernelFiles {
            proc: root.join("proc"),
            sys: root.join("sys"),
        }
    }

    /// The default for a root prefix: this machine's for `/`, stand-ins under any other
    /// root (the dev root overrides this with [`KernelFiles::host`]).
    pub fn for_root(root: &Path) -> KernelFiles {
        if root == Path::new("/") {
            KernelFiles::host()
        } else {
            KernelFiles::under(root)
        }
    }

    /// `/proc/<rel>` (e.g. `uptime`).
    pub fn proc_path(&self, rel: &str) -> PathBuf {
        self.proc.join(rel)
    }

    /// `/sys/<rel>` (e.g. `class/dmi/id/product_uuid`).
    pub fn sys_path(&self, rel: &str) -> PathBuf {
        self.sys.join(rel)
    }

    /// Reads a file; `Ok(None)` when it does not exist.
    pub fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(path) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The dynamic loader this daemon runs under (the `PT_INTERP` of its own executable), e.g.
/// `/lib64/ld-linux-x86-64.so.2`; `None` for a static build or an unreadable executable.
/// Read once.
pub fn dynamic_loader() -> Option<PathBuf> {
    static LOADER: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    LOADER
        .get_or_init(|| {
            let exe = std::env::current_exe().ok()?;
            let file = std::fs::File::open(exe).ok()?;
            elf_interpreter(&file).map(PathBuf::from)
        })
        .clone()
}

/// The `PT_INTERP` path of a 64-bit little-endian ELF file, reading only its headers.
fn elf_interpreter(file: &std::fs::File) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let read = |off: u64, len: usize| -> Option<Vec<u8>> {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, off).ok()?;
        Some(buf)
    };
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u64_at =
        |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
    let header = read(0, 64)?;
    // ELF magic, 64-bit, little-endian.
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let (phoff, phentsize, phnum) = (
        u64_at(&header, 0x20),
        usize::from(u16_at(&header, 0x36)),
        usize::from(u16_at(&header, 0x38)),
    );
    if phentsize < 56 || phnum > 4096 {
        return None;
    }
    let table = read(phoff, phentsize * phnum)?;
    const PT_INTERP: u32 = 3;
    let interp = table
        .chunks_exact(phentsize)
        .find(|ph| u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) == PT_INTERP)?;
    let (offset, size) = (u64_at(interp, 8), u64_at(interp, 32));
    if size == 0 || size > 4096 {
        return None;
    }
    let path = read(offset, size as usize)?;
    let path = path.split(|b| *b == 0).next()?;
    String::from_utf8(path.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_root_reads_this_machines_kernel_and_a_test_root_its_stand_ins() {
        assert_eq!(KernelFiles::for_root(Path::new("/")), KernelFiles::host());
        let k = KernelFiles::for_root(Path::new("/tmp/r"));
        assert_eq!(k.proc_path("uptime"), Path::new("/tmp/r/proc/uptime"));
        assert_eq!(
            k.sys_path("class/dmi/id/product_uuid"),
            Path::new("/tmp/r/sys/class/dmi/id/product_uuid")
        );
        assert!(KernelFiles::read(&KernelFiles::host().proc_path("uptime"))
            .unwrap()
            .is_some());
        assert_eq!(KernelFiles::read(&k.proc_path("uptime")).unwrap(), None);
    }

    #[test]
    fn the_dynamic_loader_is_read_from_our_own_executable() {
        // Test binaries are dynamically linked: the loader exists and is an ld.so.
        let loader = dynamic_loader().expect("a dynamically linked test binary");
        assert!(loader.is_absolute(), "{loader:?}");
        assert!(loader.exists(), "{loader:?}");
        let name = loader.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("ld-"), "{name}");
        // Not an ELF file: no interpreter.
        let f = tempfile::tempfile().unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"#!/bin/sh\n", 0).unwrap();
        assert_eq!(elf_interpreter(&f), None);
    }
}
