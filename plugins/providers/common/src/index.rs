//! The update index (`{"format":"1.0","updates":[...]}`) and how a release is chosen from
//! it: the first update (newest first) on the configured channel, or the running one,
//! that has files for this architecture; then what it offers for the target asked about.

use plugin_api::provider::{Release, ReleaseFile, Target, UpdateContext};
use plugin_api::{Error, Result};
use serde::Deserialize;

/// The file types that make up an OS update (what is staged).
pub const OS_UPDATE_TYPES: &[&str] = &[
    "update-efi",
    "update-usr",
    "update-usr-verity",
    "update-usr-verity-signature",
];

/// The whole index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Index {
    pub format: String,
    pub updates: Vec<Update>,
}

/// One release in the index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Update {
    pub format: String,
    pub channels: Vec<String>,
    pub files: Vec<ReleaseFile>,
    pub origin: String,
    pub published_at: String,
    pub severity: String,
    pub version: String,
    pub url: String,
}

/// Reads the (verified) index JSON.
pub fn parse_index(json: &[u8]) -> Result<Index> {
    let index: Index = serde_json::from_slice(json)
        .map_err(|e| Error::internal(format!("the update index is not valid: {e}")))?;
    Ok(index)
}

/// Whether a release on `channels` is on the context's channel (any channel when none
/// is configured).
pub fn on_channel(channels: &[String], context: &UpdateContext) -> bool {
    context.channel.is_empty() || channels.contains(&context.channel)
}

/// Whether a release with `channels` and `version` may be offered: it is on the channel
/// ([`on_channel`]) or it is the release running now.
pub fn eligible(channels: &[String], version: &str, context: &UpdateContext) -> bool {
    on_channel(channels, context)
        || (!context.running_version.is_empty() && version == context.running_version)
}

/// What [`select`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The chosen update, its files narrowed to the architecture; `None` if none fits.
    pub update: Option<Update>,
    /// Whether any update lists the channel (upstream warns when none does).
    pub channel_seen: bool,
}

/// The first update (the index lists the newest first) whose channels contain
/// `context.channel` (any update when the channel is empty) or whose version is the one
/// running, with the files of other architectures removed, that still has files.
pub fn select(index: &Index, context: &UpdateContext) -> Selection {
    let mut channel_seen = false;
    for update in &index.updates {
        channel_seen |= on_channel(&update.channels, context);
        if !eligible(&update.channels, &update.version, context) {
            continue;
        }
        let files: Vec<ReleaseFile> = update
            .files
            .iter()
            .filter(|f| f.architecture.is_empty() || f.architecture == context.architecture)
            .cloned()
            .collect();
        if files.is_empty() {
            continue;
        }
        return Selection {
            update: Some(Update {
                files,
                ..update.clone()
            }),
            channel_seen,
        };
    }
    Selection {
        update: None,
        channel_seen,
    }
}

/// What `update` offers for `target`, with only the files that make it up; `None` when it
/// has nothing for it. The OS: an update with any `component: os` file offers its OS
/// update files ([`OS_UPDATE_TYPES`], none: no update); an application: its `<name>.raw.gz` file of type
/// `application`; Secure Boot: its `update-secureboot` files.
pub fn offer(update: &Update, target: &Target) -> Option<Release> {
    let files: Vec<ReleaseFile> = match target {
        Target::Os => {
            if !update.files.iter().any(|f| f.component == "os") {
                return None;
            }
            update
                .files
                .iter()
                .filter(|f| f.component == "os" && OS_UPDATE_TYPES.contains(&f.file_type.as_str()))
                .cloned()
                .collect()
        }
        Target::Application(name) => {
            let wanted = format!("{name}.raw.gz");
            update
                .files
                .iter()
                .filter(|f| f.base_name() == wanted && f.file_type == "application")
                .cloned()
                .collect()
        }
        Target::SecureBoot => update
            .files
            .iter()
            .filter(|f| f.file_type == "update-secureboot")
            .cloned()
            .collect(),
    };
    // An OS release whose `os` files are all of other types (images, a changelog) has
    // nothing to stage: no update, where upstream would offer one and fetch nothing.
    if files.is_empty() {
        return None;
    }
    Some(Release {
        version: update.version.clone(),
        severity: update.severity.clone(),
        published_at: update.published_at.clone(),
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn file(arch: &str, component: &str, name: &str, kind: &str) -> serde_json::Value {
        json!({"architecture": arch, "component": component, "filename": name,
               "sha256": "00", "size": 1, "type": kind})
    }

    fn index() -> Index {
        let v = json!({"format": "1.0", "updates": [
            {"format": "1.0", "channels": ["testing"], "version": "202602010000",
             "severity": "none", "published_at": "2026-02-01T00:00:00Z",
             "files": [file("x86_64", "os", "x86_64/IncusOS_202602010000.efi.gz", "update-efi")]},
            {"format": "1.0", "channels": ["stable", "testing"], "version": "202601010000",
             "severity": "high", "published_at": "2026-01-01T00:00:00Z",
             "files": [
                file("aarch64", "os", "aarch64/IncusOS_202601010000.efi.gz", "update-efi"),
                file("x86_64", "os", "x86_64/IncusOS_202601010000.efi.gz", "update-efi"),
                file("x86_64", "os", "x86_64/IncusOS_202601010000.usr-x86-64.raw.gz", "update-usr"),
                file("x86_64", "os", "x86_64/IncusOS_202601010000.img.gz", "image-raw"),
                file("x86_64", "incus", "x86_64/incus.raw.gz", "application"),
                file("aarch64", "incus", "aarch64/incus.raw.gz", "application"),
                file("x86_64", "debug", "x86_64/debug.raw.gz", "application"),
                file("", "os", "SecureBootKeys_202601010000.tar", "update-secureboot"),
             ]},
            {"format": "1.0", "channels": ["stable"], "version": "202512010000",
             "files": [file("aarch64", "os", "aarch64/IncusOS_202512010000.efi.gz", "update-efi")]},
        ]});
        parse_index(v.to_string().as_bytes()).unwrap()
    }

    fn ctx(channel: &str, arch: &str, running: &str) -> UpdateContext {
        UpdateContext {
            channel: channel.into(),
            architecture: arch.into(),
            os_name: "IncusOS".into(),
            running_version: running.into(),
            ..Default::default()
        }
    }

    fn names(r: &Release) -> Vec<&str> {
        r.files.iter().map(|f| f.filename.as_str()).collect()
    }

    #[test]
    fn the_first_update_on_the_channel_wins_with_this_architectures_files() {
        let sel = select(&index(), &ctx("stable", "x86_64", ""));
        assert!(sel.channel_seen);
        let update = sel.update.unwrap();
        assert_eq!(update.version, "202601010000");
        assert!(update.files.iter().all(|f| f.architecture != "aarch64"));
        assert_eq!(update.files.len(), 6);

        let testing = select(&index(), &ctx("testing", "x86_64", ""))
            .update
            .unwrap();
        assert_eq!(testing.version, "202602010000");
        // No channel configured: the newest update.
        let any = select(&index(), &ctx("", "x86_64", "")).update.unwrap();
        assert_eq!(any.version, "202602010000");
    }

    #[test]
    fn an_update_without_files_for_this_architecture_is_skipped() {
        // 202602010000 has only x86_64 files: on aarch64 "testing" gets the next one.
        let update = select(&index(), &ctx("testing", "aarch64", ""))
            .update
            .unwrap();
        assert_eq!(update.version, "202601010000");
        assert_eq!(
            update
                .files
                .iter()
                .map(|f| f.filename.as_str())
                .collect::<Vec<_>>(),
            [
                "aarch64/IncusOS_202601010000.efi.gz",
                "aarch64/incus.raw.gz",
                "SecureBootKeys_202601010000.tar"
            ]
        );
        // riscv64 gets only the architecture-independent Secure Boot keys: no OS update.
        let update = select(&index(), &ctx("stable", "riscv64", ""))
            .update
            .unwrap();
        assert_eq!(update.files.len(), 1);
        assert_eq!(offer(&update, &Target::Os), None);
        assert!(offer(&update, &Target::SecureBoot).is_some());
        // Nothing at all on a channel whose only update is for another architecture.
        let mut idx = index();
        idx.updates.truncate(1);
        assert_eq!(select(&idx, &ctx("testing", "aarch64", "")).update, None);
    }

    #[test]
    fn a_wrong_channel_offers_nothing_but_the_running_release() {
        let sel = select(&index(), &ctx("nightly", "x86_64", ""));
        assert_eq!(
            sel,
            Selection {
                update: None,
                channel_seen: false
            }
        );
        // The running release is offered whatever its channels.
        let sel = select(&index(), &ctx("nightly", "aarch64", "202512010000"));
        assert!(!sel.channel_seen);
        assert_eq!(sel.update.unwrap().version, "202512010000");
    }

    #[test]
    fn each_target_gets_its_own_files() {
        let update = select(&index(), &ctx("stable", "x86_64", ""))
            .update
            .unwrap();
        let os = offer(&update, &Target::Os).unwrap();
        assert_eq!(os.version, "202601010000");
        assert_eq!(os.severity, "high");
        assert_eq!(os.published_at, "2026-01-01T00:00:00Z");
        assert_eq!(
            names(&os),
            [
                "x86_64/IncusOS_202601010000.efi.gz",
                "x86_64/IncusOS_202601010000.usr-x86-64.raw.gz"
            ]
        );
        let incus = offer(&update, &Target::Application("incus".into())).unwrap();
        assert_eq!(names(&incus), ["x86_64/incus.raw.gz"]);
        assert_eq!(offer(&update, &Target::Application("openfga".into())), None);
        let sb = offer(&update, &Target::SecureBoot).unwrap();
        assert_eq!(names(&sb), ["SecureBootKeys_202601010000.tar"]);

        // An application-only release is no OS update, and has no Secure Boot keys.
        let mut apps = update.clone();
        apps.files.retain(|f| f.component != "os");
        assert_eq!(offer(&apps, &Target::Os), None);
        assert_eq!(offer(&apps, &Target::SecureBoot), None);
    }

    #[test]
    fn an_index_that_is_not_json_is_a_clear_error() {
        let err = parse_index(b"<html>").unwrap_err();
        assert!(
            err.message.starts_with("the update index is not valid: "),
            "{}",
            err.message
        );
    }
}
