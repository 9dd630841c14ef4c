//! Which offered update to take: the version rules for the OS, applications and Secure Boot
//! keys, and what follows a staged OS update. Pure functions; the runner asks the provider
//! what is offered and acts on the [`Decision`].
//!
//! Versions are upstream's 12-digit timestamps (`YYYYMMDDhhmm`) compared as numbers. A
//! version that is not all ASCII digits is never newer than anything (nor anything newer than
//! it), so an offer that is not plainly numeric is refused rather than installed: upstream
//! does the same through its failed integer conversion (it also lets a sign through, which is
//! refused here).

use std::cmp::Ordering;

use plugin_api::provider::RefreshCause;

use super::schedule::CheckKind;

/// What to do with an offered version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do: already running, installed or staged.
    Nothing,
    /// Download and apply the offered version.
    Install,
    /// Leave it alone and say why in the log (a warning, not an error).
    Skip(String),
    /// Refuse it: an error for this run, with upstream's text.
    Refuse(String),
}

/// Whether `v` is a version at all: ASCII digits only (upstream's are 12), at most 32 of
/// them. A version names directories and files, so nothing else is ever taken from a
/// provider.
pub fn is_version(v: &str) -> bool {
    !v.is_empty() && v.len() <= 32 && v.bytes().all(|c| c.is_ascii_digit())
}

/// Compares two versions as integers, `None` when either is not all ASCII digits (or empty).
/// Any length works: leading zeros are ignored.
pub fn compare_versions(a: &str, b: &str) -> Option<Ordering> {
    let numeric = |v: &str| !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit());
    if !numeric(a) || !numeric(b) {
        return None;
    }
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    Some(a.len().cmp(&b.len()).then_with(|| a.cmp(b)))
}

/// Whether `candidate` is newer than `than` (false when either is not numeric).
pub fn is_newer(candidate: &str, than: &str) -> bool {
    compare_versions(candidate, than) == Some(Ordering::Greater)
}

/// Whether the machine runs from the backup (older) slot: an update was staged (`next` is
/// set) but the running release is another one, because the user picked the older boot
/// entry or boot counting fell back.
pub fn running_from_backup(running: &str, next: &str) -> bool {
    !next.is_empty() && running != next
}

/// The OS rule. `running` and `next` are `OS.RunningRelease` and `OS.NextRelease` (empty
/// when nothing was staged); `offered` is the provider's OS version (empty: none).
///
/// - Running from backup with no reboot pending, and the offer is the staged release that
///   fell back: that release is bad, skip it.
/// - The offer is the running or the staged release: nothing to do.
/// - The offer is not newer than the running release: refused (no downgrade).
/// - Otherwise: install.
pub fn os_update_decision(
    os_name: &str,
    running: &str,
    next: &str,
    offered: &str,
    needs_reboot: bool,
) -> Decision {
    if offered.is_empty() {
        return Decision::Nothing;
    }
    if !needs_reboot && running_from_backup(running, next) && next == offered {
        return Decision::Skip(format!(
            "Latest {os_name} image version {next} has been identified as problematic, skipping update"
        ));
    }
    if offered == running || offered == next {
        return Decision::Nothing;
    }
    if !is_newer(offered, running) {
        return Decision::Refuse(format!(
            "local {os_name} version ({running}) is newer than available update ({offered}); skipping"
        ));
    }
    Decision::Install
}

/// The application rule: install when nothing is installed or the offer is newer than the
/// installed version; an older (or non-numeric) offer is refused.
pub fn application_update_decision(name: &str, installed: &str, offered: &str) -> Decision {
    if offered.is_empty() || offered == installed {
        return Decision::Nothing;
    }
    if !installed.is_empty() && !is_newer(offered, installed) {
        return Decision::Refuse(format!(
            "local application {name} version ({installed}) is newer than available update ({offered}); skipping"
        ));
    }
    Decision::Install
}

/// The Secure Boot keys rule (`SecureBoot.Version` is `installed`, empty before the first
/// update): nothing while a reboot is pending; otherwise install a different, newer offer and
/// refuse an older one.
pub fn secure_boot_update_decision(installed: &str, offered: &str, needs_reboot: bool) -> Decision {
    if needs_reboot {
        return Decision::Skip(
            "A reboot of the system is required to finalize a pending update".to_string(),
        );
    }
    if offered.is_empty() || offered == installed {
        return Decision::Nothing;
    }
    if !installed.is_empty() && !is_newer(offered, installed) {
        return Decision::Refuse(format!(
            "installed Secure Boot keys version ({installed}) is newer than available update ({offered}); skipping"
        ));
    }
    Decision::Install
}

/// What follows a staged OS update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfterOsUpdate {
    /// The new `needs_reboot` (the reboot is left to the user).
    pub needs_reboot: bool,
    /// Reboot now (through the lifecycle).
    pub reboot_now: bool,
    /// Causes to send to the provider, in order.
    pub notify: Vec<RefreshCause>,
}

/// After an OS update was staged (and `OS.NextRelease` set to it): a startup run or
/// `auto_reboot` reboots at once; otherwise the reboot is pending. The provider hears
/// `os-update-applied`, then `system-reboot-triggered` when rebooting.
pub fn after_os_update(kind: CheckKind, auto_reboot: bool) -> AfterOsUpdate {
    let reboot_now = auto_reboot || kind == CheckKind::Startup;
    let mut notify = vec![RefreshCause::OsUpdateApplied];
    if reboot_now {
        notify.push(RefreshCause::SystemRebootTriggered);
    }
    AfterOsUpdate {
        needs_reboot: !reboot_now,
        reboot_now,
        notify,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OS: &str = "IncusOS";

    #[test]
    fn versions_compare_as_integers() {
        assert_eq!(
            compare_versions("202511041800", "202511041759"),
            Some(Ordering::Greater)
        );
        assert_eq!(
            compare_versions("202511041800", "202511041800"),
            Some(Ordering::Equal)
        );
        assert_eq!(
            compare_versions("99", "100"),
            Some(Ordering::Less),
            "not text order"
        );
        assert_eq!(compare_versions("0100", "99"), Some(Ordering::Greater));
        assert_eq!(
            compare_versions("123456789012345678901234567890", "9"),
            Some(Ordering::Greater),
            "no overflow"
        );
    }

    #[test]
    fn non_numeric_versions_are_never_newer() {
        for (a, b) in [
            ("latest", "202511041800"),
            ("202511041800", "latest"),
            ("", "202511041800"),
            ("+202511041800", "1"),
            ("2025.11", "1"),
            ("２０２５", "1"),
        ] {
            assert_eq!(compare_versions(a, b), None, "{a} vs {b}");
            assert!(!is_newer(a, b), "{a} vs {b}");
        }
    }

    #[test]
    fn backup_means_next_set_and_not_running() {
        assert!(running_from_backup("202501010000", "202502010000"));
        assert!(!running_from_backup("202502010000", "202502010000"));
        assert!(!running_from_backup("202501010000", ""));
    }

    #[test]
    fn os_newer_offer_is_installed() {
        assert_eq!(
            os_update_decision(OS, "202501010000", "", "202502010000", false),
            Decision::Install
        );
    }

    #[test]
    fn os_offer_equal_to_running_or_staged_is_nothing() {
        assert_eq!(
            os_update_decision(OS, "202501010000", "", "202501010000", false),
            Decision::Nothing
        );
        assert_eq!(
            os_update_decision(OS, "202501010000", "202502010000", "202502010000", true),
            Decision::Nothing,
            "already staged, reboot pending"
        );
        assert_eq!(
            os_update_decision(OS, "202501010000", "", "", false),
            Decision::Nothing,
            "nothing offered"
        );
    }

    #[test]
    fn os_downgrade_is_refused() {
        assert_eq!(
            os_update_decision(OS, "202502010000", "", "202501010000", false),
            Decision::Refuse(
                "local IncusOS version (202502010000) is newer than available update (202501010000); skipping"
                    .into()
            )
        );
    }

    #[test]
    fn os_non_numeric_offer_is_refused() {
        assert!(matches!(
            os_update_decision(OS, "202502010000", "", "latest", false),
            Decision::Refuse(_)
        ));
    }

    #[test]
    fn os_bad_next_release_is_skipped_when_running_from_backup() {
        assert_eq!(
            os_update_decision(OS, "202501010000", "202502010000", "202502010000", false),
            Decision::Skip(
                "Latest IncusOS image version 202502010000 has been identified as problematic, skipping update"
                    .into()
            )
        );
    }

    #[test]
    fn os_from_backup_a_newer_fix_is_installed() {
        assert_eq!(
            os_update_decision(OS, "202501010000", "202502010000", "202503010000", false),
            Decision::Install
        );
    }

    #[test]
    fn os_from_backup_with_reboot_pending_is_not_a_bad_release() {
        // Staged in this boot (needs_reboot): the offer is the staged one, nothing to do.
        assert_eq!(
            os_update_decision(OS, "202501010000", "202502010000", "202502010000", true),
            Decision::Nothing
        );
    }

    #[test]
    fn os_newer_than_staged_replaces_it() {
        assert_eq!(
            os_update_decision(OS, "202501010000", "202502010000", "202503010000", true),
            Decision::Install
        );
    }

    #[test]
    fn application_rules() {
        assert_eq!(
            application_update_decision("incus", "", "202501010000"),
            Decision::Install,
            "first install"
        );
        assert_eq!(
            application_update_decision("incus", "202501010000", "202502010000"),
            Decision::Install
        );
        assert_eq!(
            application_update_decision("incus", "202501010000", "202501010000"),
            Decision::Nothing
        );
        assert_eq!(
            application_update_decision("incus", "202502010000", "202501010000"),
            Decision::Refuse(
                "local application incus version (202502010000) is newer than available update (202501010000); skipping"
                    .into()
            )
        );
        assert!(matches!(
            application_update_decision("incus", "202502010000", "beta"),
            Decision::Refuse(_)
        ));
    }

    #[test]
    fn secure_boot_rules() {
        assert_eq!(
            secure_boot_update_decision("", "202501010000", false),
            Decision::Install
        );
        assert_eq!(
            secure_boot_update_decision("202501010000", "202502010000", false),
            Decision::Install
        );
        assert_eq!(
            secure_boot_update_decision("202501010000", "202501010000", false),
            Decision::Nothing
        );
        assert_eq!(
            secure_boot_update_decision("202502010000", "202501010000", false),
            Decision::Refuse(
                "installed Secure Boot keys version (202502010000) is newer than available update (202501010000); skipping"
                    .into()
            )
        );
    }

    #[test]
    fn secure_boot_waits_for_a_pending_reboot() {
        assert!(matches!(
            secure_boot_update_decision("202501010000", "202502010000", true),
            Decision::Skip(_)
        ));
    }

    #[test]
    fn after_os_update_periodic_leaves_the_reboot_pending() {
        assert_eq!(
            after_os_update(CheckKind::Periodic, false),
            AfterOsUpdate {
                needs_reboot: true,
                reboot_now: false,
                notify: vec![RefreshCause::OsUpdateApplied],
            }
        );
        assert!(!after_os_update(CheckKind::UserRequested, false).reboot_now);
    }

    #[test]
    fn after_os_update_reboots_with_auto_reboot_or_at_startup() {
        for (kind, auto) in [
            (CheckKind::Periodic, true),
            (CheckKind::UserRequested, true),
            (CheckKind::Startup, false),
        ] {
            assert_eq!(
                after_os_update(kind, auto),
                AfterOsUpdate {
                    needs_reboot: false,
                    reboot_now: true,
                    notify: vec![
                        RefreshCause::OsUpdateApplied,
                        RefreshCause::SystemRebootTriggered
                    ],
                },
                "{kind:?} auto_reboot={auto}"
            );
        }
    }
}
