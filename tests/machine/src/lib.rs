//! Tier-3 test support: real components, as root.
//!
//! * [`Machine`] — a real systemd booted in a `systemd-nspawn` container (no host systemd
//!   needed), reachable over its D-Bus system bus and through [`Machine::run`].
//!   [`MachineBuilder::loop_devices`] lets it attach loop devices and their partitions
//!   (`systemd-sysext` and `systemd-dissect` on raw disk images).
//! * [`Swtpm`] — a software TPM 2.0 on a loopback TCP port pair, with its TCTI string.
//! * [`LoopDevice`] — a sparse file attached as a loop device, optionally formatted.
//! * [`NetNs`] — a named network namespace with veth pairs and bridges inside.
//! * [`Dnsmasq`] — a DHCPv4 and DNS server in a [`NetNs`]; [`NtpServer`] — an NTP server
//!   there.
//! * [`journal_from_text`] — a real `.journal` file written by `systemd-journal-remote`
//!   from export-format entries, several boots included.
//! * [`require_root_tier`] — the gate every tier-3 test calls first.
//!
//! Everything started here is stopped by PID and cleaned up by a `Drop` guard, so a
//! panicking test leaves nothing behind. Helpers are synchronous (they work from plain
//! `#[test]`s and from inside a tokio runtime alike); [`Machine::connect`] is the one
//! `async` entry point, for tests that talk D-Bus themselves.
//!
//! Packages needed on the host: see `tests/scripts/setup-tier3`.
#![allow(unsafe_code)] // audited: test support as root: pidfds, namespaces, signals and mounts through libc; each block has a SAFETY comment

mod cgroup;
mod dnsmasq;
mod journal;
mod loopdev;
mod machine;
mod netns;
mod ntp;
mod process;
mod rootfs;
mod swtpm;

pub use dnsmasq::{Dnsmasq, DnsmasqBuilder};
pub use journal::{
    export_text, journal_from_export, journal_from_text, write_journal, JournalEntry, JournalFile,
    DEFAULT_BOOT_ID, DEFAULT_HOSTNAME, DEFAULT_MACHINE_ID, DEFAULT_REALTIME_US,
};
pub use loopdev::{Filesystem, LoopDevice, Mounted};
pub use machine::{Machine, MachineBuilder, HOST_DEVTMPFS, LOOP_DEVICES};
pub use netns::NetNs;
pub use ntp::NtpServer;
pub use process::CommandOutput;
pub use rootfs::{rootfs, tier3_dir, BASE_PACKAGES};
pub use swtpm::Swtpm;

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

/// Host commands tier 3 needs (searched in `PATH` and the usual sbin directories).
pub const REQUIRED_TOOLS: &[&str] = &[
    "systemd-nspawn",
    "debootstrap",
    "nsenter",
    "swtpm",
    "tpm2_createprimary",
    "losetup",
    "mkfs.ext4",
    "mkfs.btrfs",
    "mount",
    "umount",
    "ip",
    "journalctl",
    "sfdisk",
    "mkfs.vfat",
    "dnsmasq",
    "ping",
];

/// Where `systemd-journal-remote` lives on Debian (it is not in `PATH`).
pub const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";

/// Why tier 3 cannot run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped(pub String);

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TIER 3 SKIPPED: {}", self.0)
    }
}

impl std::error::Error for Skipped {}

/// Checks that tier 3 can run here: root, and every tool of [`REQUIRED_TOOLS`] plus
/// `systemd-journal-remote` present.
///
/// When it cannot, prints a loud `TIER 3 SKIPPED: <reason>` to stderr and returns `Err`;
/// under CI ([`under_ci`]) it panics instead, since a skipped tier is a failure there.
/// Tests start with `if require_root_tier().is_err() { return; }` or with
/// [`tier3_or_return!`].
pub fn require_root_tier() -> Result<(), Skipped> {
    match check_root_tier() {
        Ok(()) => Ok(()),
        Err(reason) => {
            let skipped = Skipped(reason);
            // Straight to the process's stderr: libtest captures `eprintln!` of passing
            // tests, and a skip must not be silent.
            use std::io::Write;
            let _ = write!(std::io::stderr(), "\n{skipped}\n\n");
            if under_ci() {
                panic!("{skipped} (under CI a skipped tier is a failure)");
            }
            Err(skipped)
        }
    }
}

/// Whether the environment says this is CI: `CI=true` or `CI=1` (as `tests/run-all`
/// reads it; CI services set one or the other).
pub fn under_ci() -> bool {
    is_ci_value(std::env::var("CI").ok().as_deref())
}

fn is_ci_value(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

fn check_root_tier() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(format!(
            "not running as root (euid {euid}); run as root after tests/scripts/setup-tier3"
        ));
    }
    let missing: Vec<&str> = REQUIRED_TOOLS
        .iter()
        .copied()
        .filter(|t| find_tool(t).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing tools: {} (install them with tests/scripts/setup-tier3)",
            missing.join(", ")
        ));
    }
    if !Path::new(JOURNAL_REMOTE).exists() {
        return Err(format!(
            "{JOURNAL_REMOTE} missing (package systemd-journal-remote; see tests/scripts/setup-tier3)"
        ));
    }
    Ok(())
}

/// Returns early from the calling test when [`require_root_tier`] says tier 3 cannot run
/// (and panics under CI).
#[macro_export]
macro_rules! tier3_or_return {
    () => {
        if $crate::require_root_tier().is_err() {
            return;
        }
    };
}

/// Finds an executable in `PATH` or the sbin directories (root's tools live there and a
/// test's `PATH` may lack them).
pub fn find_tool(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(Into::into),
        )
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A name unique to this process and call: `<prefix>-<pid>-<n>`. The PID in it lets a
/// later run recognise leftovers of a dead test process.
pub(crate) fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_is_true_or_1() {
        for v in ["true", "TRUE", "True", "1"] {
            assert!(is_ci_value(Some(v)), "{v}");
        }
        for v in ["", "0", "false", "yes", "11"] {
            assert!(!is_ci_value(Some(v)), "{v}");
        }
        assert!(!is_ci_value(None));
    }
}
