//! The cached Debian bookworm root file systems the machines boot.
//!
//! The base one is made by `debootstrap --variant=minbase` (default mirror) under
//! `<target>/tier3/`; one with extra packages is a copy of the base with them installed by
//! apt inside a (non-booted) `systemd-nspawn`. Each is built once, into a temporary
//! directory renamed into place when complete, under an exclusive `flock` so parallel test
//! processes never build the same one twice. The machines never write to them: they boot
//! with `--volatile=overlay`.

use anyhow::{bail, Context, Result};
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::cgroup::{Cgroup, PREFIX};
use crate::process::{output_with_timeout, tool};

/// Packages of the base rootfs (besides minbase): systemd and its bus, and the libraries
/// the daemon binary (bound in from the host) links: the TPM2 software stack (which pulls
/// in OpenSSL's libcrypto).
pub const BASE_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "libtss2-esys-3.0.2-0",
    "libtss2-tctildr0",
];

/// Bump when the recipe changes, so cached trees are rebuilt.
const RECIPE_VERSION: &str = "3";
const SUITE: &str = "bookworm";
const BUILD_TIMEOUT: Duration = Duration::from_secs(1200);

/// The directory tier 3 caches its root file systems in: `$INCUS_OSD_TIER3_DIR` if set,
/// else `tier3/` in the Cargo target directory (found from the running executable, which
/// lives in `<target>/<profile>/deps/`, then from `$CARGO_TARGET_DIR`), else
/// `<tmp>/incus-osd-tier3`.
pub fn tier3_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("INCUS_OSD_TIER3_DIR") {
        return PathBuf::from(d);
    }
    target_dir()
        .map(|t| t.join("tier3"))
        .unwrap_or_else(|| std::env::temp_dir().join("incus-osd-tier3"))
}

fn target_dir() -> Option<PathBuf> {
    if let Ok(exe) = std::env::current_exe() {
        // Cargo marks its target directory with CACHEDIR.TAG.
        if let Some(t) = exe
            .ancestors()
            .skip(1)
            .find(|a| a.join("CACHEDIR.TAG").is_file())
        {
            return Some(t.to_path_buf());
        }
    }
    let env = PathBuf::from(std::env::var_os("CARGO_TARGET_DIR")?);
    if env.is_absolute() {
        return Some(env);
    }
    // Relative: relative to the workspace root, where cargo was (most likely) started.
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    manifest
        .ancestors()
        .find(|a| a.join("Cargo.lock").is_file())
        .map(|root| root.join(env))
}

/// Stable 64-bit FNV-1a (std's hasher is not stable across releases).
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn normalise(packages: &[&str]) -> Result<Vec<String>> {
    let mut v: Vec<String> = packages.iter().map(|p| p.trim().to_string()).collect();
    for p in &v {
        if p.is_empty()
            || !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.:=~".contains(c))
        {
            bail!("not a Debian package name: {p:?}");
        }
    }
    v.sort();
    v.dedup();
    v.retain(|p| !BASE_PACKAGES.contains(&p.as_str()));
    Ok(v)
}

fn base_name() -> String {
    let mut parts = vec![RECIPE_VERSION, SUITE];
    parts.extend_from_slice(BASE_PACKAGES);
    format!("rootfs-{SUITE}-{:08x}", fnv(&parts) as u32)
}

/// The cached rootfs with `packages` installed on top of [`BASE_PACKAGES`], built on first
/// use (the base takes about 35 s here, a derived one a few seconds more per package set).
pub fn rootfs(packages: &[&str]) -> Result<PathBuf> {
    let extra = normalise(packages)?;
    let dir = tier3_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let base = dir.join(base_name());
    build_once(&base, |tmp| {
        remove_outdated(&dir);
        build_base(tmp)
    })?;
    if extra.is_empty() {
        return Ok(base);
    }
    let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut key = vec![base_name()];
    key.extend(extra.iter().cloned());
    let key_refs: Vec<&str> = key.iter().map(String::as_str).collect();
    let label: String = refs.join("+").chars().take(40).collect();
    let derived = dir.join(format!(
        "{}+{label}-{:08x}",
        base_name(),
        fnv(&key_refs) as u32
    ));
    build_once(&derived, |tmp| build_derived(&base, tmp, &refs))?;
    Ok(derived)
}

/// An exclusive `flock` held until dropped.
struct FileLock(File);

impl FileLock {
    fn acquire(path: &Path) -> Result<FileLock> {
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own for the duration of the call.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if r != 0 {
            bail!(
                "flock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(FileLock(f))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: as above; closing the file would release it anyway.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// Builds `target` with `build` into a temporary sibling, then renames it into place; does
/// nothing when it exists. Serialised across processes by a lock file.
fn build_once(target: &Path, build: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if target.is_dir() {
        return Ok(());
    }
    let parent = target.parent().context("rootfs has no parent")?;
    let name = target
        .file_name()
        .context("rootfs has no name")?
        .to_string_lossy()
        .into_owned();
    let _lock = FileLock::acquire(&parent.join(format!(".{name}.lock")))?;
    if target.is_dir() {
        return Ok(());
    }
    // Leftovers of interrupted builds (we hold the lock: nobody else is building).
    for e in fs::read_dir(parent)?.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(&format!(".{name}.tmp-"))
        {
            remove_tree(&e.path())?;
        }
    }
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    say(&format!(
        "incus-osd-test-machine: building {} (once; cached afterwards)",
        target.display()
    ));
    let started = std::time::Instant::now();
    if let Err(e) = build(&tmp) {
        let _ = remove_tree(&tmp);
        return Err(e.context(format!("building {}", target.display())));
    }
    fs::rename(&tmp, target)
        .with_context(|| format!("renaming {} to {}", tmp.display(), target.display()))?;
    say(&format!(
        "incus-osd-test-machine: built {} in {:.1?}",
        target.display(),
        started.elapsed()
    ));
    Ok(())
}

/// Removes cached trees of other recipe versions (their names carry another hash).
fn remove_outdated(dir: &Path) {
    let current = base_name();
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let tree = name.trim_start_matches('.');
        if tree.starts_with("rootfs-") && !tree.starts_with(&current) {
            say(&format!("incus-osd-test-machine: removing outdated {name}"));
            let path = e.path();
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
    }
}

fn remove_tree(p: &Path) -> Result<()> {
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", p.display()))
        }
        _ => Ok(()),
    }
}

fn build_base(tmp: &Path) -> Result<()> {
    let mut cmd = tool("debootstrap");
    cmd.arg("--variant=minbase")
        .arg(format!("--include={}", BASE_PACKAGES.join(",")))
        .arg(SUITE)
        .arg(tmp);
    let out = output_with_timeout(&mut cmd, BUILD_TIMEOUT)?;
    if !out.success() {
        let log = fs::read_to_string(tmp.join("debootstrap/debootstrap.log")).unwrap_or_default();
        bail!(
            "debootstrap failed ({}):\n{}\n{}\n{}",
            out.status,
            tail(&out.stdout, 20),
            tail(&out.stderr, 20),
            tail(&log, 30)
        );
    }
    tune(tmp)
}

/// Makes the tree host-neutral and trims the boot: no host name (debootstrap copies the
/// host's; without one the container keeps the machine name nspawn gives it), no host
/// resolver, no login prompt on the console, no apt caches.
fn tune(root: &Path) -> Result<()> {
    let _ = fs::remove_file(root.join("etc/hostname"));
    // A file of its own, also where a package made it a link (systemd-resolved links it to
    // its stub file under /run, which does not exist in the tree).
    let resolv = root.join("etc/resolv.conf");
    let _ = fs::remove_file(&resolv);
    fs::write(&resolv, "")?;
    let mask = root.join("etc/systemd/system/console-getty.service");
    let _ = fs::remove_file(&mask);
    std::os::unix::fs::symlink("/dev/null", &mask)
        .with_context(|| format!("masking {}", mask.display()))?;
    for d in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let d = root.join(d);
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
    Ok(())
}

fn build_derived(base: &Path, tmp: &Path, packages: &[&str]) -> Result<()> {
    let mut cp = Command::new("cp");
    cp.arg("-a").arg("--reflink=auto").arg(base).arg(tmp);
    crate::process::run_ok(&mut cp, BUILD_TIMEOUT)?;
    // apt inside the tree, with the host's network (no --private-network) and a private
    // cgroup (see crate::cgroup).
    let cg = Cgroup::create(&crate::unique_name(PREFIX))?;
    let script = format!(
        "set -e; apt-get update -q; apt-get install -y -q --no-install-recommends {}; apt-get clean",
        packages.join(" ")
    );
    let mut cmd = in_cgroup(&cg);
    cmd.arg(crate::find_tool("systemd-nspawn").context("systemd-nspawn missing")?)
        .args([
            "--quiet",
            "--register=no",
            "--keep-unit",
            "--console=pipe",
            "--link-journal=no",
            "--setenv=DEBIAN_FRONTEND=noninteractive",
            &format!("--machine={}", crate::unique_name("t3-build")),
            "-D",
        ])
        .arg(tmp)
        .args(["/bin/sh", "-c", &script]);
    let out = output_with_timeout(&mut cmd, BUILD_TIMEOUT)?;
    drop(cg);
    if !out.success() {
        bail!(
            "installing {} failed ({}):\n{}\n{}",
            packages.join(" "),
            out.status,
            tail(&out.stdout, 30),
            tail(&out.stderr, 30)
        );
    }
    tune(tmp)
}

/// A command that moves itself into `cg` and then execs the program given as its first
/// following argument (so the PID seen by the caller is the program's).
pub(crate) fn in_cgroup(cg: &Cgroup) -> Command {
    let files = cg.procs_files();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(
            r#"n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done; exec "$@""#,
        )
        .arg("sh")
        .arg(files.len().to_string())
        .args(files);
    cmd
}

/// To the process's stderr, past libtest's capture: a long build must not look like a hang.
fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}

pub(crate) fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}
