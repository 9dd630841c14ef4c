//! What `GET /1.0` reports: the OS identity, read from the root prefix.
//!
//! The running OS (name and release) is read once at start. The machine id, the system
//! UUID and the other A/B image are read on every request, as upstream does (a machine id
//! fixed or broken after start shows at once): two small files and one directory listing.
//! Uptime is the kernel's uptime at start plus the time elapsed since.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::platform::files::RootFs;
use crate::platform::kernel::KernelFiles;
use crate::platform::watch::DirWatch;

/// `NAME` and `IMAGE_VERSION` from `/lib/os-release`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsRelease {
    pub name: String,
    pub version: String,
}

/// Parses os-release text (`KEY=value`, values optionally quoted).
pub fn parse_os_release(text: &str) -> OsRelease {
    let mut name = String::new();
    let mut version = String::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
        match k.trim() {
            "NAME" => name = v,
            "IMAGE_VERSION" => version = v,
            _ => {}
        }
    }
    OsRelease { name, version }
}

/// Reads `/lib/os-release` under the root; both `NAME` and `IMAGE_VERSION` are required.
pub fn read_os_release(fs: &RootFs) -> Result<OsRelease, String> {
    let text = fs
        .read("/lib/os-release")
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "missing /lib/os-release".to_string())?;
    let rel = parse_os_release(&String::from_utf8_lossy(&text));
    if rel.name.is_empty() {
        return Err("/lib/os-release has no NAME".into());
    }
    if rel.version.is_empty() {
        return Err("/lib/os-release has no IMAGE_VERSION".into());
    }
    Ok(rel)
}

/// `/etc/machine-id`: exactly 32 hex digits and a newline (33 bytes). The errors are
/// upstream's texts.
pub fn read_machine_id(fs: &RootFs) -> Result<String, String> {
    let data = fs
        .read("/etc/machine-id")
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "open /etc/machine-id: no such file or directory".to_string())?;
    if data.len() != 33 {
        return Err("invalid length for a machine-id".into());
    }
    Ok(String::from_utf8_lossy(&data).trim().to_string())
}

/// The DMI product UUID (37 bytes with its newline), if readable.
fn read_product_uuid(kernel: &KernelFiles) -> Option<String> {
    let data = KernelFiles::read(&kernel.sys_path("class/dmi/id/product_uuid")).ok()??;
    (data.len() == 37).then(|| String::from_utf8_lossy(&data).trim().to_string())
}

/// The other A/B image's version: `/boot/EFI/Linux/<name>_<version>.efi` files other than
/// the running one.
fn alternate_version(fs: &RootFs, os: &OsRelease) -> Option<String> {
    let prefix = format!("{}_", os.name);
    let mut found: Vec<String> = fs
        .list("/boot/EFI/Linux")
        .ok()??
        .into_iter()
        .filter_map(|n| {
            let v = n.strip_prefix(&prefix)?.strip_suffix(".efi")?;
            (v != os.version && !v.is_empty()).then(|| v.to_string())
        })
        .collect();
    found.sort();
    found.pop()
}

/// Seconds of kernel uptime from `/proc/uptime`.
fn read_uptime(kernel: &KernelFiles) -> Result<f64, String> {
    let path = kernel.proc_path("uptime");
    let text = KernelFiles::read(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .ok_or_else(|| format!("missing {}", path.display()))?;
    String::from_utf8_lossy(&text)
        .split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .ok_or_else(|| format!("cannot parse {}", path.display()))
}

/// The `environment` object of `GET /1.0`. Upstream builds it as a map, so its keys come
/// out sorted; the fields are in that order.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Environment {
    pub hostname: String,
    pub machine_id: String,
    pub os_name: String,
    pub os_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_version_alternate: Option<String>,
    pub os_version_next: String,
    pub system_is_ready: bool,
    pub uptime: u64,
}

/// The OS identity read at start, and where to read the rest per request.
#[derive(Debug, Clone)]
pub struct SystemInfo {
    fs: RootFs,
    os: OsRelease,
    uptime_at_start: Result<f64, String>,
    started: Instant,
    product_uuid: Option<String>,
    seen: Arc<Mutex<Seen>>,
}

/// What `GET /1.0` last read from files, and the watch that says when to read again.
#[derive(Debug)]
struct Seen {
    watch: DirWatch,
    values: Option<Identity>,
}

#[derive(Debug, Clone)]
struct Identity {
    machine_id: Result<String, String>,
    alternate: Option<String>,
}

impl SystemInfo {
    pub fn read(root: &Path, kernel: &KernelFiles, os: OsRelease) -> SystemInfo {
        let fs = RootFs::new(root);
        // Where the machine id and the boot images live, as real paths (a watch only tells
        // when to read again; the reads themselves stay inside the root).
        let watched = ["etc", "boot/EFI/Linux"]
            .iter()
            .map(|d| root.join(d))
            .collect();
        SystemInfo {
            seen: Arc::new(Mutex::new(Seen {
                watch: DirWatch::new(watched),
                values: None,
            })),
            uptime_at_start: read_uptime(kernel),
            product_uuid: read_product_uuid(kernel),
            started: Instant::now(),
            fs,
            os,
        }
    }

    pub fn os(&self) -> &OsRelease {
        &self.os
    }

    /// The `environment` object; `next_release` is the stored release that boots next (""
    /// until an update is staged). Reads the machine id, the system UUID and the boot
    /// directory.
    pub fn environment(&self, next_release: &str, ready: bool) -> Result<Environment, String> {
        let uptime = self.uptime_at_start.clone()? + self.started.elapsed().as_secs_f64();
        let Identity {
            machine_id,
            alternate,
        } = self.identity();
        let machine_id = machine_id?;
        let hostname = self
            .product_uuid
            .clone()
            .unwrap_or_else(|| machine_id.clone());
        Ok(Environment {
            hostname,
            machine_id,
            os_name: self.os.name.clone(),
            os_version: self.os.version.clone(),
            os_version_alternate: alternate,
            os_version_next: next_release.to_string(),
            system_is_ready: ready,
            uptime: uptime as u64,
        })
    }

    /// The machine id and the other boot image, as they are now: read
    /// again whenever their directories changed (an inotify watcher raises a flag), so a
    /// change shows within microseconds without every request reading the files.
    fn identity(&self) -> Identity {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.watch.changed() || seen.values.is_none() {
            seen.values = Some(Identity {
                machine_id: read_machine_id(&self.fs),
                alternate: alternate_version(&self.fs, &self.os),
            });
        }
        seen.values.clone().expect("just read")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `f()` once it satisfies `ok` (changes show once the watcher thread ran), else its
    /// last value after 2 s.
    fn eventually<T>(f: impl Fn() -> T, ok: impl Fn(&T) -> bool) -> T {
        let until = Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let v = f();
            if ok(&v) || Instant::now() > until {
                return v;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn os_release_values_are_unquoted() {
        let r = parse_os_release("NAME=\"IncusOS\"\nID=incus-os\nIMAGE_VERSION=202511041601\n");
        assert_eq!(r.name, "IncusOS");
        assert_eq!(r.version, "202511041601");
    }

    #[test]
    fn environment_reads_the_root_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::new(dir.path());
        fs.write(
            "/etc/machine-id",
            b"0123456789abcdef0123456789abcdef\n",
            0o444,
        )
        .unwrap();
        fs.write("/proc/uptime", b"1234.56 100.00\n", 0o444)
            .unwrap();
        fs.write("/boot/EFI/Linux/IncusOS_202511041601.efi", b"", 0o644)
            .unwrap();
        fs.write("/boot/EFI/Linux/IncusOS_202510010000.efi", b"", 0o644)
            .unwrap();
        let os = OsRelease {
            name: "IncusOS".into(),
            version: "202511041601".into(),
        };
        let info = SystemInfo::read(dir.path(), &KernelFiles::under(dir.path()), os);
        let env = info.environment("", true).unwrap();
        assert_eq!(env.machine_id, "0123456789abcdef0123456789abcdef");
        assert_eq!(env.hostname, "0123456789abcdef0123456789abcdef");
        assert_eq!(env.os_version_next, "");
        assert_eq!(env.os_version_alternate.as_deref(), Some("202510010000"));
        assert!(env.uptime >= 1234);
        assert_eq!(
            info.environment("202512010000", true)
                .unwrap()
                .os_version_next,
            "202512010000"
        );

        // The system UUID is firmware's (it cannot change while the system runs): read
        // at start, and the hostname when there is one.
        fs.write(
            "/sys/class/dmi/id/product_uuid",
            b"4c4c4544-0044-4810-8052-b4c04f4e3432\n",
            0o400,
        )
        .unwrap();
        let with_uuid = SystemInfo::read(
            dir.path(),
            &KernelFiles::under(dir.path()),
            info.os().clone(),
        );
        assert_eq!(
            with_uuid.environment("", true).unwrap().hostname,
            "4c4c4544-0044-4810-8052-b4c04f4e3432"
        );
        // Changes after start show (once the watcher ran: microseconds).
        fs.remove("/boot/EFI/Linux/IncusOS_202510010000.efi")
            .unwrap();
        assert_eq!(
            eventually(
                || info.environment("", true).unwrap().os_version_alternate,
                Option::is_none
            ),
            None
        );
    }

    #[test]
    fn a_bad_machine_id_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::new(dir.path());
        fs.write("/etc/machine-id", b"short\n", 0o444).unwrap();
        fs.write("/proc/uptime", b"1.0 1.0\n", 0o444).unwrap();
        let os = OsRelease {
            name: "IncusOS".into(),
            version: "1".into(),
        };
        let info = SystemInfo::read(dir.path(), &KernelFiles::under(dir.path()), os);
        assert_eq!(
            info.environment("", false).unwrap_err(),
            "invalid length for a machine-id"
        );
        fs.remove("/etc/machine-id").unwrap();
        let err = eventually(
            || info.environment("", false).unwrap_err(),
            |e| e != "invalid length for a machine-id",
        );
        assert_eq!(err, "open /etc/machine-id: no such file or directory");
    }
}
