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
}
