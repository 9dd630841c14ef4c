//! The plugin manifest: static facts the host needs before it calls anything.

use serde::{Deserialize, Serialize};

/// What a plugin is. A plugin is identified by its kind and its name together: names repeat
/// across kinds (upstream has a `debug` provider and a `debug` application).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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
    /// The kind as the manifest spells it (`service`, `application`, `provider`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::Application => "application",
            Kind::Provider => "provider",
        }
    }

    /// The URL collection of this kind, if it has one.
    pub fn collection(self) -> Option<&'static str> {
        match self {
            Kind::Service => Some("services"),
            Kind::Application => Some("applications"),
            Kind::Provider => None,
        }
    }

    /// Where the extra routes of plugin `name` of this kind live (with a trailing `/`):
    /// `/1.0/services/<name>/`, `/1.0/applications/<name>/`, and for providers
    /// `/1.0/system/provider/<name>/` (since 1.2).
    pub fn route_base(self, name: &str) -> String {
        match self.collection() {
            Some(c) => format!("/1.0/{c}/{name}/"),
            None => format!("/1.0/system/provider/{name}/"),
        }
    }
}

/// A hook a plugin implements. Hooks a plugin does not list answer "not supported"
/// without the host calling into the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    /// `GET` of the plugin's URL: `{"state", "config"}`.
    Get,
    /// `PUT` of the plugin's URL: a new config.
    Put,
    /// A service's `:reset`.
    Reset,
    /// An application's `:action`.
    Action,
    /// An application's `:backup`, streamed (not through `invoke`).
    Backup,
    /// An application's `:restore`, streamed (not through `invoke`).
    Restore,
    /// An application's `:factory-reset`.
    FactoryReset,
    /// An application's `:restart`.
    Restart,
    /// Daemon start (boot), in start-weight order.
    Start,
    /// Daemon shutdown, in reverse start order.
    Stop,
    /// A provider registers this machine with its update server.
    Register,
    /// A provider removes this machine's registration.
    Deregister,
    /// Reserved: a provider's update check in 1.0 and 1.1, which no host called. Kept so
    /// that their manifests still parse; since 1.2 providers answer [`Hook::Lookup`].
    CheckUpdate,
    /// Since 1.2. A provider refreshes its registration ([`crate::provider::Registration`]
    /// with a cause).
    Refresh,
    /// Since 1.2. A provider forgets what it cached (the index), so the next lookup asks
    /// the server again.
    ClearCache,
    /// Since 1.2. A provider finds the release on offer for a target
    /// ([`crate::provider::Lookup`]).
    Lookup,
    /// Since 1.2. A provider brings a release's files to disk
    /// ([`crate::provider::FetchOrder`]).
    Fetch,
    /// Since 1.3. An application sets itself up once, after its first start (the host then
    /// records it as initialized). Input: [`crate::application::AppContext`].
    Initialize,
    /// Since 1.3. An application running an older version picks up a new image (reloads its
    /// units) after an update. Input: [`crate::application::AppContext`].
    Reload,
    /// Since 1.3. An application deletes its local data (the host stops it first); an
    /// application with this hook supports `:factory-reset` and has its data wiped by
    /// `:remove`. Input: [`crate::application::AppContext`].
    Wipe,
    /// Since 1.3. Whether the installed variant of an application may be replaced by
    /// another of its variants (`incus` by `incus-lts-7.0`). Input:
    /// [`crate::application::Replace`]; an error is the refusal the user sees.
    CanReplace,
    /// Since 1.3. Whether an application is running: answers
    /// [`crate::application::Running`]. Input: [`crate::application::AppContext`].
    Running,
    /// Since 1.3. Called after the host swapped a restored backup into place and started the
    /// application's units again (to re-read what the archive brought). Input:
    /// [`crate::application::AppContext`].
    Restored,
}

impl Hook {
    /// Every hook, in declaration order.
    pub const ALL: [Hook; 23] = [
        Hook::Get,
        Hook::Put,
        Hook::Reset,
        Hook::Action,
        Hook::Backup,
        Hook::Restore,
        Hook::FactoryReset,
        Hook::Restart,
        Hook::Start,
        Hook::Stop,
        Hook::Register,
        Hook::Deregister,
        Hook::CheckUpdate,
        Hook::Refresh,
        Hook::ClearCache,
        Hook::Lookup,
        Hook::Fetch,
        Hook::Initialize,
        Hook::Reload,
        Hook::Wipe,
        Hook::CanReplace,
        Hook::Running,
        Hook::Restored,
    ];

    /// The `invoke` operation name of this hook (also its name in the manifest). This is
    /// the only place the names are spelled.
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
            Hook::Refresh => "refresh",
            Hook::ClearCache => "clear-cache",
            Hook::Lookup => "lookup",
            Hook::Fetch => "fetch",
            Hook::Initialize => "initialize",
            Hook::Reload => "reload",
            Hook::Wipe => "wipe",
            Hook::CanReplace => "can-replace",
            Hook::Running => "running",
            Hook::Restored => "restored",
        }
    }

    /// The hook an `invoke` operation name stands for; `None` for anything else (such as a
    /// declared route's operation).
    pub fn from_op(op: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.op() == op)
    }
}

/// The HTTP method of a declared route. Serialized as the method's name (`"POST"`), so the
/// manifest's JSON is what it always was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// `GET`: a read (see [`Call::changes_state`]).
    Get,
    /// `PUT`.
    Put,
    /// `POST`.
    Post,
    /// `PATCH`.
    Patch,
    /// `DELETE`.
    Delete,
}

impl Method {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    /// The method named `name` (exact, upper case), if routes may use it.
    pub fn parse(name: &str) -> Option<Method> {
        [
            Method::Get,
            Method::Put,
            Method::Post,
            Method::Patch,
            Method::Delete,
        ]
        .into_iter()
        .find(|m| m.as_str() == name)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An extra endpoint a plugin serves, beyond the standard ones of its kind. The path must
/// lie inside the plugin's own namespace (`/1.0/<collection of its kind>/<name>/...`). The
/// host answers it by calling `invoke(op, request)` with a [`RouteRequest`] as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The HTTP method the route answers.
    pub method: Method,
    /// The full URL path, e.g. `/1.0/services/ovn/:rejoin`.
    pub path: String,
    /// The operation name `invoke` receives.
    pub op: String,
}

/// What a declared route receives: the decoded query string (the first value of a repeated
/// key wins) and the JSON body (null when the request had none). The host serializes it,
/// the SDK decodes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteRequest {
    /// The decoded query string; of a repeated key, the first value.
    #[serde(default)]
    pub query: std::collections::BTreeMap<String, String>,
    /// The request body as JSON; `null` when there was none.
    #[serde(default)]
    pub body: serde_json::Value,
}

/// A call the host makes into a plugin: one of its hooks or one of its declared routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call<'a> {
    /// One of the plugin's hooks.
    Hook(Hook),
    /// One of the plugin's declared routes.
    Route(&'a Route),
}

impl Call<'_> {
    /// The `invoke` operation name.
    pub fn op(&self) -> &str {
        match self {
            Call::Hook(h) => h.op(),
            Call::Route(r) => &r.op,
        }
    }

    /// Whether the call may change state. The one place this is decided: such calls are
    /// serialized per plugin, wait until the plugin started, are refused once it stopped,
    /// and get the longer change timeout. Reads are `get`, `backup` and `GET` routes.
    pub fn changes_state(&self) -> bool {
        match self {
            Call::Hook(h) => !matches!(
                h,
                Hook::Get | Hook::Backup | Hook::CanReplace | Hook::Running
            ),
            Call::Route(r) => r.method != Method::Get,
        }
    }
}

/// The manifest every plugin returns as JSON from its root module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The name, also the last URL segment (`tailscale`, `incus`, `images`): unique among
    /// the plugins of its kind (a provider and an application may share one).
    pub name: String,
    /// What the plugin is, which decides its URL collection and its hooks.
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
    /// Names of plugins of the same kind that must be loaded (and started first); an
    /// application's dependency is also met by an application listing it in `variants`.
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
    /// Since 1.3. Other names an application installs as, sharing its plugin, its config
    /// and its install record (`incus-lts-7.0` for `incus`); at most one of them is
    /// installed at a time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<String>,
    /// Since 1.3. An application whose update check runs after the OS is up (upstream's
    /// late update check: the application serves its own update server).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late_update_check: bool,
    /// Since 1.3. An application's data directory and what its backups leave out: the
    /// host writes and restores backups of it (see [`crate::application::BackupSpec`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<crate::application::BackupSpec>,
    /// Since 1.3. Directories (absolute OS paths) an application's logs live in: `:debug`
    /// with the action `get-logs` streams them as a gzip tar, which the host writes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub debug_logs: Vec<String>,
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

/// Whether `name` is a valid plugin or application name: lowercase letters, digits, `-` and
/// `.`, at most 64, not starting with `-` or `.` (it is a URL segment and a file name).
pub fn valid_name(name: &str) -> bool {
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
        let ns = self.kind.route_base(&self.name);
        for r in &self.routes {
            let inside = r.path.starts_with(&ns)
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
        if self.kind != Kind::Application
            && (!self.variants.is_empty()
                || self.late_update_check
                || self.backup.is_some()
                || !self.debug_logs.is_empty())
        {
            return err(
                "only an application has variants, a late update check, a backup or debug logs"
                    .into(),
            );
        }
        for d in &self.debug_logs {
            if !d.starts_with('/') || d == "/" || d.split('/').any(|c| c == "..") {
                return err(format!(
                    "debug log directory {d:?} must be an absolute path below / without '..'"
                ));
            }
        }
        for v in &self.variants {
            if !valid_name(v) || *v == self.name {
                return err(format!("variant name {v:?} is not valid"));
            }
        }
        if let Some(b) = &self.backup {
            b.validate(&self.paths).map_err(ManifestError)?;
        }
        Ok(())
    }

    /// Whether the plugin implements `hook`.
    pub fn has(&self, hook: Hook) -> bool {
        self.hooks.contains(&hook)
    }

    /// The application names this plugin answers to: its name, then its variants.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.variants.iter().map(String::as_str))
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
            variants: vec![],
            late_update_check: false,
            backup: None,
            debug_logs: vec![],
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
            method: Method::Post,
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

    #[test]
    fn a_kind_is_spelled_as_in_the_manifest() {
        for k in [Kind::Service, Kind::Application, Kind::Provider] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }

    #[test]
    fn every_hook_has_one_name_for_invoke_and_the_manifest() {
        for h in Hook::ALL {
            assert_eq!(Hook::from_op(h.op()), Some(h));
            assert_eq!(serde_json::to_value(h).unwrap(), h.op());
        }
        assert_eq!(Hook::from_op("rejoin"), None);
        assert_eq!(Hook::from_op("GET"), None);
    }

    #[test]
    fn route_methods_are_an_enum_with_the_old_wire_form() {
        let r = Route {
            method: Method::Post,
            path: "/1.0/services/usbip/:x".into(),
            op: "x".into(),
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["method"], "POST");
        assert_eq!(serde_json::from_value::<Route>(json).unwrap(), r);
        let mut m = serde_json::to_value(base()).unwrap();
        m["routes"] =
            serde_json::json!([{"method": "HEAD", "path": "/1.0/services/usbip/x", "op": "x"}]);
        let e = Manifest::parse(&m.to_string()).unwrap_err();
        assert!(e.0.contains("unknown variant `HEAD`"), "{e}");
        assert_eq!(Method::parse("PATCH"), Some(Method::Patch));
        assert_eq!(Method::parse("post"), None);
    }

    #[test]
    fn what_changes_state_is_decided_by_the_call() {
        let route = |method| Route {
            method,
            path: "/1.0/services/usbip/x".into(),
            op: "x".into(),
        };
        let reads: Vec<Hook> = Hook::ALL
            .into_iter()
            .filter(|h| !Call::Hook(*h).changes_state())
            .collect();
        assert_eq!(
            reads,
            [Hook::Get, Hook::Backup, Hook::CanReplace, Hook::Running]
        );
        assert!(!Call::Route(&route(Method::Get)).changes_state());
        for m in [Method::Put, Method::Post, Method::Patch, Method::Delete] {
            assert!(Call::Route(&route(m)).changes_state(), "{m}");
        }
        assert_eq!(Call::Route(&route(Method::Get)).op(), "x");
        assert_eq!(Call::Hook(Hook::FactoryReset).op(), "factory-reset");
    }

    #[test]
    fn a_route_request_round_trips_and_defaults_when_empty() {
        let req = RouteRequest {
            query: [("a".to_string(), "1".to_string())].into(),
            body: serde_json::json!({"x": true}),
        };
        let bytes = serde_json::to_vec(&req).unwrap();
        assert_eq!(serde_json::from_slice::<RouteRequest>(&bytes).unwrap(), req);
        assert_eq!(
            serde_json::from_str::<RouteRequest>("{}").unwrap(),
            RouteRequest::default()
        );
    }
}
