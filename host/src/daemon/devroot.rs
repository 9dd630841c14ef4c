//! The dev root a debug build uses when started without `--root`.

use std::path::Path;

use crate::platform::files::{RootFs, StatKind};

/// Lays out a dev root on first use: an OS identity and a machine id. Kernel facts
/// (uptime, modules) come from this machine's `/proc` and `/sys` directly (the dev run's
/// [`crate::platform::kernel::KernelFiles`]), not through links in the root: the root
/// prefix resolves every link inside the root. The `proc -> /proc` and `sys -> /sys` links
/// older dev roots have are removed.
pub fn prepare_dev_root(root: &Path) -> std::io::Result<()> {
    let fs = RootFs::new(root);
    let io = |e: crate::platform::files::FsError| std::io::Error::other(e.to_string());
    std::fs::create_dir_all(root)?;
    if fs.read("/lib/os-release").map_err(io)?.is_none() {
        let text = format!(
            "NAME=\"IncusOS\"\nID=incus-os\nIMAGE_VERSION={}\n",
            dev_version()
        );
        fs.write("/lib/os-release", text.as_bytes(), 0o644)
            .map_err(io)?;
    }
    if fs.read("/etc/machine-id").map_err(io)?.is_none() {
        let id = plugin_host::random::hex(16)?;
        fs.write("/etc/machine-id", format!("{id}\n").as_bytes(), 0o444)
            .map_err(io)?;
    }
    for link in ["proc", "sys"] {
        let p = root.join(link);
        if let Some(st) = fs.stat(&format!("/{link}")).map_err(io)? {
            if st.kind == StatKind::Symlink && st.link_target == format!("/{link}") {
                fs.remove(&format!("/{link}")).map_err(io)?;
                tracing::info!(link = %p.display(), "removed an old dev root's link");
            }
        }
    }
    Ok(())
}

/// Records application `name` as installed at `version` under a development root, as an
/// install leaves it: a stand-in image (a file with the GPT header the image check wants;
/// a development root merges nothing), the link systemd-sysext would merge, and the
/// install record. Already installed: nothing changes. For trying an application plugin
/// without an update server (`--dev-install`).
pub fn mark_installed(
    fs: &RootFs,
    store: &mut crate::state::Store,
    name: &str,
    version: &str,
) -> Result<(), String> {
    use crate::system::applications::store::{image_path, link_path};
    let plain = plugin_api::manifest::valid_name(name);
    if !plain {
        return Err(format!(
            "--dev-install: {name:?} is not an application name"
        ));
    }
    if store
        .doc()
        .applications
        .get(name)
        .is_some_and(|r| !r.version.is_empty())
    {
        return Ok(());
    }
    let fail = |what: &str, e: crate::platform::files::FsError| {
        format!("--dev-install {name}: {what}: {e}")
    };
    let image = image_path(version, name);
    fs.write(&image, &stand_in_image(), 0o644)
        .map_err(|e| fail("image", e))?;
    fs.create_dir("/var/lib/extensions", 0o755)
        .map_err(|e| fail("link directory", e))?;
    let (dir, link) = fs
        .parent_of(&link_path(name))
        .map_err(|e| fail("link directory", e))?;
    let at = std::path::PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&dir)
    ))
    .join(link);
    match std::os::unix::fs::symlink(&image, &at) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("--dev-install {name}: link: {e}")),
    }
    store
        .update(|d| {
            let r = d.applications.entry(name.to_string()).or_default();
            r.version = version.to_string();
            r.available_versions = vec![version.to_string()];
        })
        .map_err(|e| format!("--dev-install {name}: {e}"))?;
    tracing::info!(
        application = name,
        version,
        "recorded as installed in the development root"
    );
    Ok(())
}

/// A stand-in application image: 1 KiB with the GPT signature at 512, what the image store's
/// check wants (a development root merges nothing).
pub fn stand_in_image() -> Vec<u8> {
    let mut data = vec![0u8; 1024];
    data[512..520].copy_from_slice(b"EFI PART");
    data
}

/// A dev image version in upstream's 12-digit form, fixed at the time of the first run.
fn dev_version() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, mo, d, h, mi) = civil_from_unix(secs);
    format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}")
}

/// (year, month, day, hour, minute) in UTC for a Unix time.
fn civil_from_unix(secs: u64) -> (i64, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, (rem / 3600) as u32, ((rem % 3600) / 60) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::info::read_os_release;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_unix(0), (1970, 1, 1, 0, 0));
        // 2026-11-27 12:54 UTC
        assert_eq!(civil_from_unix(1_795_784_040), (2026, 11, 27, 12, 54));
    }

    #[test]
    fn a_dev_root_gets_an_identity() {
        let dir = tempfile::tempdir().unwrap();
        prepare_dev_root(dir.path()).unwrap();
        let fs = RootFs::new(dir.path());
        let rel = read_os_release(&fs).unwrap();
        assert_eq!(rel.name, "IncusOS");
        assert_eq!(rel.version.len(), 12);
        assert_eq!(crate::system::info::read_machine_id(&fs).unwrap().len(), 32);
        // A second run keeps the identity.
        let before = std::fs::read(dir.path().join("etc/machine-id")).unwrap();
        prepare_dev_root(dir.path()).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("etc/machine-id")).unwrap(),
            before
        );
        assert!(!dir.path().join("proc").exists() && !dir.path().join("sys").exists());
    }

    #[test]
    fn an_old_dev_roots_proc_and_sys_links_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        prepare_dev_root(dir.path()).unwrap();
        std::os::unix::fs::symlink("/proc", dir.path().join("proc")).unwrap();
        std::os::unix::fs::symlink("/sys", dir.path().join("sys")).unwrap();
        prepare_dev_root(dir.path()).unwrap();
        assert!(std::fs::symlink_metadata(dir.path().join("proc")).is_err());
        assert!(std::fs::symlink_metadata(dir.path().join("sys")).is_err());
        // A real directory of that name is not ours to remove.
        std::fs::create_dir(dir.path().join("proc")).unwrap();
        prepare_dev_root(dir.path()).unwrap();
        assert!(dir.path().join("proc").is_dir());
    }

    #[test]
    fn dev_install_leaves_what_an_install_leaves_and_refuses_a_bad_name() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::new(dir.path());
        let mut store =
            crate::state::Store::load_or_create(&dir.path().join("var/lib/incus-os")).unwrap();
        mark_installed(&fs, &mut store, "guestbook", "202601010000").unwrap();
        let link = dir.path().join("var/lib/extensions/guestbook.raw");
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            std::path::Path::new("/var/lib/incus-os-extensions/202601010000/guestbook.raw")
        );
        let image = std::fs::read(
            dir.path()
                .join("var/lib/incus-os-extensions/202601010000/guestbook.raw"),
        )
        .unwrap();
        assert_eq!(&image[512..520], b"EFI PART");
        assert_eq!(
            store.doc().applications["guestbook"].version,
            "202601010000"
        );
        // Again: nothing changes (and no error for the existing link).
        mark_installed(&fs, &mut store, "guestbook", "202612010000").unwrap();
        assert_eq!(
            store.doc().applications["guestbook"].version,
            "202601010000"
        );
        for bad in ["", "../x", "A", "-x", "a/b"] {
            let e = mark_installed(&fs, &mut store, bad, "1").unwrap_err();
            assert!(e.contains("not an application name"), "{e}");
        }
    }

    #[test]
    fn dev_install_is_refused_on_a_system_root() {
        let mut config = crate::daemon::Config::for_root("/");
        config.dev_install = vec!["incus".into()];
        let platform = crate::platform::Platform::for_root(std::path::Path::new("/nonexistent"));
        let e = crate::daemon::prepare(&config, platform)
            .err()
            .expect("refused");
        assert!(
            e.to_string()
                .contains("--dev-install is for a development root"),
            "{e}"
        );
    }
}
