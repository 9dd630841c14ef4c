//! What each plugin library costs before its constructor runs: a child process (this
//! executable, `--open-child DIR`) opens every plugin library of DIR in turn as the daemon
//! does (`loader::open_library_trusted`: the trust checks, `dlopen`, the version, layout and
//! manifest checks) without instantiating it, and reports the time and the resident memory
//! each one added. The library is first mapped by a plain `dlopen` (timed alone: mapping
//! and relocation), so the loader's own open finds it loaded and its time is the checks.
//! Next to figures 3 and 4 (the daemon with every plugin vs none), the rest of a plugin's
//! cost is its instantiation and what the daemon does with it.
#![allow(unsafe_code)] // audited: bench support: a plain dlopen, to time the mapping alone

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};

use crate::procs::read_memory;

/// One library's cost of being opened.
pub struct Opened {
    pub name: String,
    pub file_size: u64,
    /// The plain `dlopen`.
    pub dlopen_micros: u64,
    /// The loader's checks on the mapped library.
    pub check_micros: u64,
    pub rss: u64,
}

/// `dlopen(path, RTLD_NOW)`; the handle is never closed.
fn dlopen(path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a NUL-terminated path; the library stays loaded for the whole process, as
    // the loader would keep it (it runs no code of the library but its initializers, which
    // the loader's own dlopen would run too).
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    ensure!(!handle.is_null(), "cannot dlopen {}", path.display());
    Ok(())
}

/// `--open-child DIR`: prints `<name> <file bytes> <dlopen us> <check us> <rss growth>` per
/// library.
pub fn open_child(dir: &Path) -> Result<()> {
    let files = plugin_host::loader::scan_dir(dir)?;
    let pid = std::process::id();
    let mut out = std::io::stdout().lock();
    for f in files {
        let size = std::fs::metadata(&f)?.len();
        let before = read_memory(pid)?.rss;
        let start = Instant::now();
        dlopen(&f)?;
        let mapped = start.elapsed();
        let start = Instant::now();
        let lib = plugin_host::loader::open_library_trusted(&f)
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        let checked = start.elapsed();
        let after = read_memory(pid)?.rss;
        // Opened libraries stay loaded for the whole process (the loader never unloads).
        std::mem::forget(lib);
        let name = f.file_name().context("no name")?.to_string_lossy();
        writeln!(
            out,
            "{name} {size} {} {} {}",
            mapped.as_micros(),
            checked.as_micros(),
            after.saturating_sub(before)
        )?;
    }
    Ok(())
}

/// Runs [`open_child`] on `dir` in a fresh process.
pub fn measure(dir: &Path) -> Result<Vec<Opened>> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .arg("--open-child")
        .arg(dir)
        .output()
        .context("cannot run the open child")?;
    ensure!(
        out.status.success(),
        "the open child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut libs = vec![];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        ensure!(f.len() == 5, "unexpected open child output {line:?}");
        libs.push(Opened {
            name: f[0].to_string(),
            file_size: f[1].parse()?,
            dlopen_micros: f[2].parse()?,
            check_micros: f[3].parse()?,
            rss: f[4].parse()?,
        });
    }
    Ok(libs)
}
