//! The Incus agent's features when the system runs inside an Incus VM (upstream's start-up
//! step before the API exists).
//!
//! Only when the VM's agent port ([`VIRTIO_PORT`]) exists: `/etc/incus-agent.yml` gets
//! the features the OS always allows (`guestapi`, `mounts`, `metrics`, `state`) turned on.
//! The features that let the host run code in the system (`exec`, `files`,
//! `port-forward`) are turned on only when the VM was started with the systemd credential
//! `fully-enable-incus-agent`, and off otherwise. Fully enabling the agent blows the trust
//! fuse and is recorded for good (`full_agent_enabled`: the security status keeps saying
//! so). When the file changed, `incus-agent.service` is restarted to read it.
//!
//! Upstream rewrites the file with its `features` alone; here the file's other keys are
//! kept as they were.

use std::path::Path;

use serde_norway::{Mapping, Value};

use crate::platform::files::RootFs;

/// The port an Incus VM gives its agent: its presence says the system runs in one.
pub const VIRTIO_PORT: &str = "/dev/virtio-ports/org.linuxcontainers.incus";
/// The systemd credential that asks for the whole agent.
pub const CREDENTIAL: &str = "/run/credentials/@system/fully-enable-incus-agent";
/// The agent's configuration.
pub const CONFIG: &str = "/etc/incus-agent.yml";
/// The agent's unit.
pub const UNIT: &str = "incus-agent.service";

/// Always on.
const BASIC: [&str; 4] = ["guestapi", "mounts", "metrics", "state"];
/// On only when asked for by the credential.
const FULL: [&str; 3] = ["exec", "files", "port-forward"];

/// What [`plan`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The file's new text, `None` when it stays as it is.
    pub write: Option<String>,
    /// Whether this start fully enables the agent.
    pub fully_enabled: bool,
}

/// The new configuration for the file's `current` text (`None`: no file) and whether the
/// whole agent is asked for. A missing file is always written; an existing one when a
/// full feature has to change (upstream's rule: the basic features are written along,
/// never a reason on their own).
pub fn plan(current: Option<&str>, full: bool) -> Result<Plan, String> {
    let mut doc = match current.map(str::trim) {
        None | Some("") => Value::Mapping(Mapping::new()),
        Some(text) => serde_norway::from_str::<Value>(text)
            .map_err(|e| format!("cannot read {CONFIG}: {e}"))?,
    };
    let root = doc
        .as_mapping_mut()
        .ok_or_else(|| format!("cannot read {CONFIG}: it is not a mapping"))?;
    let features = root
        .entry(Value::from("features"))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if features.is_null() {
        *features = Value::Mapping(Mapping::new());
    }
    let features = features
        .as_mapping_mut()
        .ok_or_else(|| format!("cannot read {CONFIG}: its features are not a mapping"))?;
    let on = |f: &Mapping, name: &str| f.get(name).and_then(Value::as_bool).unwrap_or(false);
    let mut change = current.is_none();
    let mut fully_enabled = false;
    for name in BASIC {
        features.insert(Value::from(name), Value::from(true));
    }
    if full {
        if !on(features, "exec") || !on(features, "files") {
            change = true;
            fully_enabled = true;
            for name in FULL {
                features.insert(Value::from(name), Value::from(true));
            }
        }
    } else if FULL.iter().any(|n| on(features, n)) {
        change = true;
        for name in FULL {
            features.insert(Value::from(name), Value::from(false));
        }
    }
    let write = if change {
        Some(serde_norway::to_string(&doc).map_err(|e| format!("cannot write {CONFIG}: {e}"))?)
    } else {
        None
    };
    Ok(Plan {
        write,
        fully_enabled,
    })
}

/// The step on the files: nothing outside an Incus VM; else the plan carried out on the
/// file (written whole, 0600) and the fuse. Returns the plan (whether to record
/// `full_agent_enabled` and restart the agent).
pub fn configure_files(root: &Path) -> Result<Option<Plan>, String> {
    let fs = RootFs::new(root);
    let exists = |p: &str| fs.resolve(p).map(|r| r.exists()).unwrap_or(false);
    if !exists(VIRTIO_PORT) {
        return Ok(None);
    }
    let current = fs
        .read(CONFIG)
        .map_err(|e| format!("cannot read {CONFIG}: {e}"))?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let plan = plan(current.as_deref(), exists(CREDENTIAL))?;
    if plan.fully_enabled {
        super::security::blow_fuse(root)
            .map_err(|e| format!("unable to blow security fuse: {e}"))?;
    }
    if let Some(text) = &plan.write {
        fs.write(CONFIG, text.as_bytes(), 0o600)
            .map_err(|e| format!("cannot write {CONFIG}: {e}"))?;
    }
    Ok(Some(plan))
}

/// Start-up's step: the files, then the record and the agent's restart.
pub async fn configure(app: &crate::api::App) {
    let root = app.root.clone();
    let plan = match tokio::task::spawn_blocking(move || configure_files(&root)).await {
        Ok(Ok(Some(plan))) => plan,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot configure the Incus agent");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot configure the Incus agent");
            return;
        }
    };
    if plan.fully_enabled {
        tracing::warn!("the Incus agent is fully enabled: the system state is no longer trusted");
        if let Err(e) =
            app.with_state(|s| s.update(|d| d.system.security.full_agent_enabled = true))
        {
            tracing::error!(error = %e, "cannot record that the Incus agent was fully enabled");
        }
    }
    if plan.write.is_some() {
        let units = app.platform.units.clone();
        let done = tokio::task::spawn_blocking(move || {
            units.unit(plugin_host::units::UnitAction::Restart, UNIT)
        })
        .await;
        match done {
            Ok(Ok(_)) => tracing::info!("restarted the Incus agent with its new features"),
            Ok(Err(e)) => tracing::error!(error = %e.0, "cannot restart {UNIT}"),
            Err(e) => tracing::error!(error = %e, "cannot restart {UNIT}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(text: &str) -> Mapping {
        let v: Value = serde_norway::from_str(text).unwrap();
        v["features"].as_mapping().unwrap().clone()
    }

    fn on(m: &Mapping, name: &str) -> Option<bool> {
        m.get(name).and_then(Value::as_bool)
    }

    #[test]
    fn a_missing_file_gets_the_basic_features_and_the_full_ones_off() {
        let p = plan(None, false).unwrap();
        assert!(!p.fully_enabled);
        let f = features(p.write.as_deref().unwrap());
        for n in BASIC {
            assert_eq!(on(&f, n), Some(true), "{n}");
        }
        // Nothing asked them on: they are not written (upstream writes them only to turn
        // them off).
        assert_eq!(on(&f, "exec"), None);
    }

    #[test]
    fn the_credential_turns_on_exec_files_and_port_forward_once() {
        let p = plan(Some("features:\n  guestapi: true\n"), true).unwrap();
        assert!(p.fully_enabled);
        let text = p.write.unwrap();
        let f = features(&text);
        for n in BASIC.iter().chain(FULL.iter()) {
            assert_eq!(on(&f, n), Some(true), "{n}");
        }
        // Already fully enabled: nothing to write, nothing newly enabled.
        let again = plan(Some(&text), true).unwrap();
        assert_eq!(
            again,
            Plan {
                write: None,
                fully_enabled: false
            }
        );
    }

    #[test]
    fn without_the_credential_full_features_are_turned_off_and_other_keys_kept() {
        let text = "debug: true\nfeatures:\n  exec: true\n  files: false\n  custom: true\n";
        let p = plan(Some(text), false).unwrap();
        assert!(!p.fully_enabled);
        let out = p.write.unwrap();
        let v: Value = serde_norway::from_str(&out).unwrap();
        assert_eq!(v["debug"].as_bool(), Some(true));
        let f = features(&out);
        for n in FULL {
            assert_eq!(on(&f, n), Some(false), "{n}");
        }
        assert_eq!(on(&f, "custom"), Some(true));
        assert_eq!(on(&f, "state"), Some(true));
        // Nothing on to turn off and the file exists: left alone.
        assert_eq!(plan(Some(&out), false).unwrap().write, None);
        assert_eq!(plan(Some("features:\n"), false).unwrap().write, None);
    }

    #[test]
    fn a_file_that_is_not_yaml_is_an_error_naming_it() {
        let e = plan(Some("features: [unclosed"), false).unwrap_err();
        assert!(e.starts_with("cannot read /etc/incus-agent.yml: "), "{e}");
        let e = plan(Some("- a list"), false).unwrap_err();
        assert_eq!(e, "cannot read /etc/incus-agent.yml: it is not a mapping");
    }

    #[test]
    fn outside_an_incus_vm_nothing_is_touched() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(configure_files(root.path()).unwrap(), None);
        assert!(!root.path().join("etc/incus-agent.yml").exists());
    }

    #[test]
    fn in_an_incus_vm_with_the_credential_the_file_is_written_0600_and_the_fuse_blown() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("dev/virtio-ports")).unwrap();
        std::fs::write(r.join("dev/virtio-ports/org.linuxcontainers.incus"), "").unwrap();
        std::fs::create_dir_all(r.join("run/credentials/@system")).unwrap();
        std::fs::write(
            r.join("run/credentials/@system/fully-enable-incus-agent"),
            "1",
        )
        .unwrap();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        let plan = configure_files(r).unwrap().unwrap();
        assert!(plan.fully_enabled);
        let path = r.join("etc/incus-agent.yml");
        let f = features(&std::fs::read_to_string(&path).unwrap());
        assert_eq!(on(&f, "exec"), Some(true));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(crate::system::security::fuse_blown(r));
    }
}
