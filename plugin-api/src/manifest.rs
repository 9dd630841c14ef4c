//! The plugin manifest: static facts the host needs before it calls anything.

use serde::{Deserialize, Serialize};

/// What a plugin is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Served under `/1.0/services/{name}`.
    Service,
    /// Served under `/1.0/applications/{name}`.
    Application,
    /// An update provider, selected through `/1.0/system/provider`.
    Provider,
}

impl Kind {
    /// The URL collection of this kind, if it has one.
    pub fn collection(self) -> Option<&'static str> {
        match self {
            Kind::Service => Some("services"),
            Kind::Application => Some("applications"),
            Kind::Provider => None,
        }
    }
}

/// A hook a plugin implements. Hooks a plugin does not list answer "not supported"
/// without the host calling into the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    Get,
    Put,
    Reset,
    Action,
    Backup,
    Restore,
    FactoryReset,
    Restart,
    Start,
    Stop,
    Register,
    Deregister,
    CheckUpdate,
}

impl Hook {
    /// The `invoke` operation name of this hook.
    pub fn op(self) -> &'static str {
        match self {
            Hook::Get => "get",
            Hook::Put => "put",
            Hook::Reset => "reset",
            Hook::Action => "action",
            Hook::Backup => "backup",
            Hook::Restore => "restore",
            Hook::FactoryReset => "factory-reset",
            Hook::Restart => "restart",
            Hook::Start => "start",
            Hook::Stop => "stop",
            Hook::Register => "register",
            Hook::Deregister => "deregister",
            Hook::CheckUpdate => "check-update",
        }
    }

    /// Whether the hook changes the plugin's state (such calls are serialized per plugin).
    pub fn is_mutating(self) -> bool {
        !matches!(self, Hook::Get | Hook::Backup)
    }
}

/// An extra endpoint a plugin serves, beyond the standard ones of its kind. The path must
/// lie inside the plugin's own namespace (`/1.0/services/<name>/...` or
/// `/1.0/applications/<name>/...`). The host answers it by calling `invoke(op, request)`,
/// where the request is a JSON object `{"query": {..}, "body": <JSON or null>}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub method: String,
    pub path: String,
    pub op: String,
}

/// The manifest every plugin returns as JSON from its root module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Unique name, also the last URL segment (`tailscale`, `incus`, `images`).
    pub name: String,
    pub kind: Kind,
    /// The plugin's own version (semver).
    pub version: String,
    /// The plugin-api version the plugin was built against.
    pub api_version: String,
    /// Hooks implemented.
    pub hooks: Vec<Hook>,
    /// Extra endpoints.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Names of plugins that must be loaded (and started first).
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// Start order: lower starts first; ties are broken by name. Stop is the reverse.
    #[serde(default)]
    pub start_weight: i32,
    /// A primary application (only one may be installed at a time).
    #[serde(default)]
    pub primary: bool,
    /// Absolute OS paths (resolved under the root prefix) the plugin may write or remove.
    #[serde(default)]
    pub paths: Vec<String>,
    /// When set, the plugin is listed and usable only once this application is installed.
    #[serde(default)]
    pub requires_application: Option<String>,
}

/// Why a manifest is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError(pub String);

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ManifestError {}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
}

impl Manifest {
    /// Parses and validates a manifest.
    pub fn parse(json: &str) -> Result<Manifest, ManifestError> {
        let m: Manifest = serde_json::from_str(json)
            .map_err(|e| ManifestError(format!("manifest is not valid: {e}")))?;
        m.validate()?;
        Ok(m)
    }

    /// Checks the rules a host relies on.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let err = |m: String| Err(ManifestError(m));
        if !valid_name(&self.name) {
            return err(format!(
                "plugin name {:?} is not valid (lowercase letters, digits, '-' and '.')",
                self.name
            ));
        }
        if semver::Version::parse(&self.version).is_err() {
            return err(format!(
                "plugin version {:?} is not a semver version",
                self.version
            ));
        }
        if self.kind == Kind::Service && !self.hooks.contains(&Hook::Get) {
            return err("a service must implement the get hook".into());
        }
        let ns = self
            .kind
            .collection()
            .map(|c| format!("/1.0/{c}/{}/", self.name));
        for r in &self.routes {
            if !matches!(
                r.method.as_str(),
                "GET" | "PUT" | "POST" | "PATCH" | "DELETE"
            ) {
                return err(format!(
                    "route {} has unsupported method {}",
                    r.path, r.method
                ));
            }
            let inside = ns.as_deref().is_some_and(|ns| r.path.starts_with(ns))
                && !r.path.contains("//")
                && !r.path.contains("/../")
                && !r.path.contains('{');
            if !inside {
                return err(format!(
                    "route {} {} lies outside the plugin's namespace",
                    r.method, r.path
                ));
            }
            if r.op.is_empty() {
                return err(format!("route {} {} names no operation", r.method, r.path));
            }
        }
        for p in &self.paths {
            if !p.starts_with('/') || p == "/" || p.split('/').any(|c| c == "..") {
                return err(format!(
                    "path {p:?} must be an absolute path below / without '..'"
                ));
            }
        }
        Ok(())
    }

    /// Whether the plugin implements `hook`.
    pub fn has(&self, hook: Hook) -> bool {
        self.hooks.contains(&hook)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Manifest {
        Manifest {
            name: "usbip".into(),
            kind: Kind::Service,
            version: "1.0.0".into(),
            api_version: "1.0.0".into(),
            hooks: vec![Hook::Get, Hook::Put],
            routes: vec![],
            dependencies: vec![],
            start_weight: 0,
            primary: false,
            paths: vec!["/etc/usbip".into()],
            requires_application: None,
        }
    }

    #[test]
    fn a_good_manifest_round_trips() {
        let m = base();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(Manifest::parse(&json).unwrap(), m);
    }

    #[test]
    fn bad_manifests_are_refused_with_a_reason() {
        let mut m = base();
        m.name = "Bad Name".into();
        assert!(m.validate().unwrap_err().0.contains("not valid"));

        let mut m = base();
        m.routes.push(Route {
            method: "POST".into(),
            path: "/1.0/services/other/:x".into(),
            op: "x".into(),
        });
        assert!(m.validate().unwrap_err().0.contains("outside"));

        let mut m = base();
        m.paths.push("/etc/../root".into());
        assert!(m.validate().is_err());

        let mut m = base();
        m.hooks.clear();
        assert!(m.validate().unwrap_err().0.contains("get hook"));

        assert!(Manifest::parse("{\"name\":1}").is_err());
    }
}
