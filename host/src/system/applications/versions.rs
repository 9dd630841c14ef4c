//! Which local version of an application image to activate. Pure functions: the store
//! ([`super::store`]) lists what is on disk and acts on the answer.
//!
//! Images sit in one directory per release (`/var/lib/incus-os-extensions/<ver>/`), so an
//! application's local versions are the names of the directories holding its image. As
//! upstream, these names are compared as plain strings here (not as numbers): "newest" is
//! the greatest name, and the previous boot's release is compared with the running one the
//! same way. For 12-digit release strings both orders agree.

use std::cmp::Ordering;

/// What the choice depends on, for one application.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs<'a> {
    /// The version the state records for the application ("" when none).
    pub recorded: &'a str,
    /// The versions whose directory holds a (verified) image of the application.
    pub on_disk: &'a [String],
    /// The OS release running now.
    pub running: &'a str,
    /// The release of the other boot slot ("" when there is none).
    pub other_os: &'a str,
    /// The release the previous boot ran ("" when unknown: first boot, journal gone, or
    /// already refreshed in this boot, see [`Choice`]).
    pub prior: &'a str,
    /// Whether the machine runs from the backup slot (a staged release did not boot).
    pub from_backup: bool,
}

/// Which rule picked the version (for the log line and the tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Same release as the previous boot (or no previous boot known): keep the recorded
    /// version, else the image of the running release, else the newest.
    SameRelease,
    /// The previous boot ran a newer release: the backup slot booted. The image downloaded
    /// with the running (older) release first, then the recorded one, else the newest.
    BackupSlot,
    /// The previous boot ran an older release (an upgrade, or back from the backup slot):
    /// the newest image.
    NewerRelease,
}

/// The version to activate and the local versions to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub version: String,
    pub rule: Rule,
    /// Sorted, without duplicates: the chosen version, the recorded one (or, when its
    /// image is gone, the newest), the running and the other slot's release when they hold an image, and
    /// the newest. Every other local image of the application may be deleted.
    pub available: Vec<String>,
}

/// The newest (greatest by name) of `versions`.
pub fn newest(versions: &[String]) -> Option<&str> {
    versions.iter().map(String::as_str).max()
}

/// Chooses the version to activate; `None` when no image of the application is on disk.
///
/// The rule follows the previous boot's release against the running one:
/// - unknown or equal: the recorded version, else the running release's, else the newest;
///   when the previous release is unknown but the machine runs from the backup slot, the
///   backup-slot rule instead (the journal that would have told us is gone; the image
///   matching the older OS is the safe one);
/// - newer (the backup slot booted): the running release's, else the recorded, else the
///   newest;
/// - older (an upgrade, or back from the backup slot): the newest.
pub fn choose(i: &Inputs<'_>) -> Option<Choice> {
    let newest = newest(i.on_disk)?.to_string();
    let have = |v: &str| !v.is_empty() && i.on_disk.iter().any(|d| d == v);
    let recorded = have(i.recorded).then(|| i.recorded.to_string());
    let running = have(i.running).then(|| i.running.to_string());
    let other = have(i.other_os).then(|| i.other_os.to_string());

    let rule = match i.prior.cmp(i.running) {
        _ if i.prior.is_empty() && i.from_backup => Rule::BackupSlot,
        _ if i.prior.is_empty() => Rule::SameRelease,
        Ordering::Equal => Rule::SameRelease,
        Ordering::Greater => Rule::BackupSlot,
        Ordering::Less => Rule::NewerRelease,
    };
    let version = match rule {
        Rule::SameRelease => recorded.clone().or_else(|| running.clone()),
        Rule::BackupSlot => running.clone().or_else(|| recorded.clone()),
        Rule::NewerRelease => None,
    }
    .unwrap_or_else(|| newest.clone());
    // A recorded version whose image is gone is replaced by the newest (as upstream).
    let mut available: Vec<String> = [
        Some(recorded.unwrap_or_else(|| newest.clone())),
        running,
        other,
        Some(version.clone()),
        Some(newest),
    ]
    .into_iter()
    .flatten()
    .collect();
    available.sort();
    available.dedup();
    Some(Choice {
        version,
        rule,
        available,
    })
}

/// Whether a freshly downloaded version becomes the recorded one right away: not when the
/// application is installed, no reboot is pending and the machine runs from the backup
/// slot (the new image may need the newer OS; it is only kept as available).
pub fn download_becomes_current(installed: bool, needs_reboot: bool, from_backup: bool) -> bool {
    !(installed && !needs_reboot && from_backup)
}

/// The version `:switch-version` moves to: `requested` when it is one of the local
/// `available` versions; when `requested` is empty, the one before `current` in sorted
/// order. Errors are upstream's texts (shown with status 400).
pub fn switch_target(
    requested: &str,
    current: &str,
    available: &[String],
) -> Result<String, String> {
    let mut sorted = available.to_vec();
    sorted.sort();
    sorted.dedup();
    if sorted.len() <= 1 {
        return Err("only one version of the application is available locally, cannot switch to a different version".to_string());
    }
    if requested.is_empty() {
        return match sorted.iter().position(|v| v == current) {
            Some(i) if i > 0 => Ok(sorted[i - 1].clone()),
            _ => Err(
                "cannot rollback application as no earlier version is available locally"
                    .to_string(),
            ),
        };
    }
    if sorted.iter().any(|v| v == requested) {
        Ok(requested.to_string())
    } else {
        Err(format!(
            "cannot switch application to version '{requested}' because it does not exist locally"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const OLD_OS: &str = "202601010000";
    const NEW_OS: &str = "202602010000";
    const APP_OLD: &str = "202601010000";
    const APP_MID: &str = "202601150000";
    const APP_NEW: &str = "202602010000";

    fn inputs<'a>(on_disk: &'a [String]) -> Inputs<'a> {
        Inputs {
            recorded: APP_MID,
            on_disk,
            running: NEW_OS,
            other_os: OLD_OS,
            prior: NEW_OS,
            from_backup: false,
        }
    }

    #[test]
    fn nothing_on_disk_is_no_choice() {
        assert_eq!(choose(&inputs(&[])), None);
    }

    #[test]
    fn same_release_keeps_the_recorded_version_even_when_newer_ones_exist() {
        let d = disk(&[APP_OLD, APP_MID, APP_NEW]);
        let c = choose(&inputs(&d)).unwrap();
        assert_eq!((c.version.as_str(), c.rule), (APP_MID, Rule::SameRelease));
    }

    #[test]
    fn unknown_prior_release_is_the_same_release_rule() {
        let d = disk(&[APP_OLD, APP_MID, APP_NEW]);
        let c = choose(&Inputs {
            prior: "",
            ..inputs(&d)
        })
        .unwrap();
        assert_eq!((c.version.as_str(), c.rule), (APP_MID, Rule::SameRelease));
    }

    #[test]
    fn same_release_without_the_recorded_image_takes_the_running_releases_image() {
        let d = disk(&[APP_OLD, APP_NEW]);
        let c = choose(&Inputs {
            recorded: "202601200000",
            running: OLD_OS,
            prior: OLD_OS,
            ..inputs(&d)
        })
        .unwrap();
        assert_eq!(c.version, APP_OLD);
        // Neither the recorded nor the running release's image: the newest.
        let d = disk(&[APP_MID, APP_NEW]);
        let c = choose(&Inputs {
            recorded: "",
            running: OLD_OS,
            prior: OLD_OS,
            ..inputs(&d)
        })
        .unwrap();
        assert_eq!(c.version, APP_NEW);
    }

    #[test]
    fn booting_the_backup_slot_takes_the_image_of_the_older_release() {
        let d = disk(&[APP_OLD, APP_NEW]);
        let c = choose(&Inputs {
            recorded: APP_NEW,
            running: OLD_OS,
            other_os: NEW_OS,
            prior: NEW_OS,
            from_backup: true,
            ..inputs(&d)
        })
        .unwrap();
        assert_eq!((c.version.as_str(), c.rule), (APP_OLD, Rule::BackupSlot));
    }

    #[test]
    fn backup_slot_without_an_image_of_its_release_keeps_the_recorded_one() {
        let d = disk(&[APP_MID, APP_NEW]);
        let c = choose(&Inputs {
            recorded: APP_MID,
            running: OLD_OS,
            other_os: NEW_OS,
            prior: NEW_OS,
            ..inputs(&d)
        })
        .unwrap();
        assert_eq!((c.version.as_str(), c.rule), (APP_MID, Rule::BackupSlot));
        // And with the recorded image gone too: the newest.
        let c = choose(&Inputs {
            recorded: "202601200000",
            running: OLD_OS,
            prior: NEW_OS,
            ..inputs(&d)
        })
        .unwrap();
        assert_eq!(c.version, APP_NEW);
    }

    #[test]
    fn from_backup_with_the_prior_release_unknown_prefers_the_older_releases_image() {
        let d = disk(&[APP_OLD, APP_NEW]);
        let c = choose(&Inputs {
            recorded: APP_NEW,
            running: OLD_OS,
            prior: "",
            from_backup: true,
            ..inputs(&d)
        })
        .unwrap();
        assert_eq!((c.version.as_str(), c.rule), (APP_OLD, Rule::BackupSlot));
        // Known and equal (the second boot of the backup slot): the recorded version, which
        // the first boot there set to the older release's image.
        let c = choose(&Inputs {
            recorded: APP_OLD,
            running: OLD_OS,
            prior: OLD_OS,
            from_backup: true,
            ..inputs(&d)
        })
        .unwrap();
        assert_eq!((c.version.as_str(), c.rule), (APP_OLD, Rule::SameRelease));
    }

    #[test]
    fn after_an_upgrade_or_back_from_backup_the_newest_image_wins() {
        let d = disk(&[APP_OLD, APP_MID, APP_NEW]);
        let c = choose(&Inputs {
            recorded: APP_OLD,
            running: NEW_OS,
            prior: OLD_OS,
            ..inputs(&d)
        })
        .unwrap();
        assert_eq!((c.version.as_str(), c.rule), (APP_NEW, Rule::NewerRelease));
    }

    #[test]
    fn releases_and_versions_compare_as_strings() {
        // Upstream compares names, not numbers: "9" is after "10".
        let d = disk(&["10", "9"]);
        let c = choose(&Inputs {
            recorded: "",
            on_disk: &d,
            running: "b",
            other_os: "",
            prior: "a",
            from_backup: false,
        })
        .unwrap();
        assert_eq!(c.version, "9");
        let c = choose(&Inputs {
            recorded: "10",
            on_disk: &d,
            running: "10",
            other_os: "",
            prior: "9",
            from_backup: false,
        })
        .unwrap();
        assert_eq!(c.rule, Rule::BackupSlot);
        assert_eq!(c.version, "10");
    }

    #[test]
    fn available_versions_are_recorded_running_other_and_newest() {
        let d = disk(&["202512010000", APP_OLD, APP_MID, APP_NEW]);
        let c = choose(&Inputs {
            recorded: APP_MID,
            running: OLD_OS,
            other_os: NEW_OS,
            prior: OLD_OS,
            ..inputs(&d)
        })
        .unwrap();
        assert_eq!(c.available, disk(&[APP_OLD, APP_MID, APP_NEW]));
        // The other slot's release without an image is not available; the oldest image,
        // referenced by nothing, may go.
        let d = disk(&["202512010000", APP_MID]);
        let c = choose(&Inputs {
            recorded: APP_MID,
            running: OLD_OS,
            other_os: NEW_OS,
            prior: OLD_OS,
            ..inputs(&d)
        })
        .unwrap();
        assert_eq!(c.available, disk(&[APP_MID]));
    }

    #[test]
    fn a_download_on_the_backup_slot_is_only_kept_as_available() {
        assert!(!download_becomes_current(true, false, true));
        assert!(download_becomes_current(true, false, false));
        // A reboot is pending (an OS update staged this boot): it goes live with it.
        assert!(download_becomes_current(true, true, true));
        // A first install has nothing else to run.
        assert!(download_becomes_current(false, false, true));
    }

    #[test]
    fn switch_version_moves_among_local_versions_only() {
        let avail = disk(&[APP_NEW, APP_OLD, APP_MID]);
        assert_eq!(switch_target(APP_OLD, APP_NEW, &avail).unwrap(), APP_OLD);
        // Empty: the one before the current, in sorted order.
        assert_eq!(switch_target("", APP_NEW, &avail).unwrap(), APP_MID);
        assert_eq!(
            switch_target("", APP_OLD, &avail).unwrap_err(),
            "cannot rollback application as no earlier version is available locally"
        );
        assert_eq!(
            switch_target("202001010000", APP_NEW, &avail).unwrap_err(),
            "cannot switch application to version '202001010000' because it does not exist locally"
        );
        assert_eq!(
            switch_target(APP_OLD, APP_OLD, &disk(&[APP_OLD])).unwrap_err(),
            "only one version of the application is available locally, cannot switch to a different version"
        );
    }
}
