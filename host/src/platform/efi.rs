//! UEFI variables through efivarfs (`/sys/firmware/efi/efivars/<Name>-<GUID>`), read under
//! the platform's kernel files (a test root's `sys/` in tests).
//!
//! An efivarfs file is the variable's 4-byte attribute word followed by its data; readers
//! get the data only.

use std::path::PathBuf;

use super::kernel::KernelFiles;

/// The global variables' vendor GUID (`SecureBoot`, `SetupMode`, `AuditMode`, `PK`, `KEK`).
pub const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// The image security database's GUID (`db`, `dbx`).
pub const IMAGE_SECURITY: &str = "d719b2cb-3d3a-4596-a3bc-dad00e67656f";
/// Incus OS's own variables (`IncusOSTPMState`, `IncusOSInstallComplete`).
pub const INCUS_OS: &str = "12f075e0-2d07-493d-811a-00920a72c04c";

/// The directory efivarfs is mounted on, relative to `/sys`.
pub const EFIVARS: &str = "firmware/efi/efivars";

/// The GUID a variable of this name lives under.
pub fn guid_of(name: &str) -> &'static str {
    match name {
        "db" | "dbx" => IMAGE_SECURITY,
        n if n.starts_with("IncusOS") => INCUS_OS,
        _ => GLOBAL,
    }
}

/// The efivarfs file of variable `name`.
pub fn path(kernel: &KernelFiles, name: &str) -> PathBuf {
    kernel.sys_path(&format!("{EFIVARS}/{name}-{}", guid_of(name)))
}

/// A variable's data (the attribute word dropped); `Ok(None)` when it does not exist.
pub fn read(kernel: &KernelFiles, name: &str) -> std::io::Result<Option<Vec<u8>>> {
    let p = path(kernel, name);
    match KernelFiles::read(&p)? {
        None => Ok(None),
        Some(raw) if raw.len() < 4 => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{}: {} bytes, shorter than the attribute word",
                p.display(),
                raw.len()
            ),
        )),
        Some(raw) => Ok(Some(raw[4..].to_vec())),
    }
}

/// Whether a one-byte flag variable (`SecureBoot`, `SetupMode`, `AuditMode`) is set: its
/// first data byte is 1. A missing or empty variable is not set.
pub fn flag(kernel: &KernelFiles, name: &str) -> std::io::Result<bool> {
    Ok(read(kernel, name)?.is_some_and(|d| d.first() == Some(&1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attribute_word_is_dropped_and_missing_variables_are_none() {
        let root = tempfile::tempdir().unwrap();
        let k = KernelFiles::under(root.path());
        let dir = root.path().join("sys").join(EFIVARS);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("SecureBoot-{GLOBAL}")), [6, 0, 0, 0, 1]).unwrap();
        std::fs::write(dir.join(format!("SetupMode-{GLOBAL}")), [6, 0, 0, 0, 0]).unwrap();
        std::fs::write(dir.join(format!("db-{IMAGE_SECURITY}")), [7, 0]).unwrap();
        assert_eq!(read(&k, "SecureBoot").unwrap(), Some(vec![1]));
        assert!(flag(&k, "SecureBoot").unwrap());
        assert!(!flag(&k, "SetupMode").unwrap());
        assert!(!flag(&k, "AuditMode").unwrap());
        assert_eq!(read(&k, "KEK").unwrap(), None);
        let e = read(&k, "db").unwrap_err();
        assert!(
            e.to_string().contains("shorter than the attribute word"),
            "{e}"
        );
    }
}
