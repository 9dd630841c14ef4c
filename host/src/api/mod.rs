//! The REST API: one router used by every listener and by the tests.
//!
//! Routing follows upstream's rules: a wrong method is `501 not implemented` (never 405);
//! an unknown path is `404 not found` for GET and `501` for anything else; unclean paths
//! (`//`, `/./`, `/../`) are redirected with a 301 to their clean form; percent-encoded
//! segments match what they decode to; `/internal/*` handlers refuse proxied requests with
//! `403 not authorized` before anything else. Every error, including a rejected path,
//! query or body, is the JSON envelope.

pub mod applications;
pub mod body;
pub mod debug;
pub mod internal;
pub mod listener;
pub mod plugins;
pub mod proxy;
pub mod response;
pub mod root;
pub mod security;
pub mod services;
pub mod storage;
pub mod system;
pub mod uri;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;

use crate::lifecycle::Lifecycle;
use crate::platform::systemd::PowerAction;
use crate::platform::Platform;
use crate::plugins::Registry;
use crate::state::Store;
use crate::system::info::SystemInfo;
pub use response::{ApiError, ApiResult};
use tokio::sync::mpsc;

/// Everything the handlers share.
pub struct App {
    pub root: PathBuf,
    pub store: Arc<Mutex<Store>>,
    pub registry: Registry,
    pub info: SystemInfo,
    pub platform: Platform,
    /// Where the daemon is in its life; changes are taken only when ready.
    pub lifecycle: Arc<Lifecycle>,
    /// Held by provider switches and update checks (upstream's global update mutex).
    pub update_lock: tokio::sync::Mutex<()>,
    /// The update checker's status and inbox.
    pub updates: crate::system::update::runner::Updates,
    /// The disk OS updates are staged into (`None`: the ESP's disk).
    pub install_disk: Option<PathBuf>,
    /// The OS release the previous boot ran ("" when unknown), for the version choice of
    /// application images.
    pub prior_release: String,
    /// The security subsystem's runtime (TPM connection, LUKS volumes, cached states).
    pub security: crate::system::security::Runtime,
    /// The network subsystem (configuration, confirm/rollback, live state).
    pub network: crate::system::network::service::Network,
    /// Drive listing options, the storage change lock, the scrub scheduler's clock.
    pub storage: crate::system::storage::runtime::Runtime,
    /// The fallback HTTPS listener, when it runs.
    pub fallback: crate::system::fallback::listener::Runtime,
    /// The seeds found at start (see [`crate::system::seed`]).
    pub seeds: crate::system::seed::Seeds,
    /// Whether this is the machine's first start (see
    /// [`crate::system::seed::apply::is_first_start`]), as found before anything changed.
    pub first_start: bool,
    power_tx: mpsc::Sender<PowerAction>,
    power_rx: Mutex<Option<mpsc::Receiver<PowerAction>>>,
}

impl App {
    pub fn new(
        root: PathBuf,
        store: Arc<Mutex<Store>>,
        registry: Registry,
        info: SystemInfo,
        platform: Platform,
    ) -> Self {
        let (power_tx, power_rx) = mpsc::channel(1);
        let network =
            crate::system::network::service::Network::new(&root, &platform, store.clone());
        App {
            network,
            root,
            store,
            registry,
            info,
            platform,
            lifecycle: Arc::new(Lifecycle::new()),
            update_lock: tokio::sync::Mutex::new(()),
            updates: crate::system::update::runner::Updates::new(Default::default()),
            install_disk: None,
            prior_release: String::new(),
            storage: Default::default(),
            security: Default::default(),
            fallback: Default::default(),
            seeds: Default::default(),
            first_start: false,
            power_tx,
            power_rx: Mutex::new(Some(power_rx)),
        }
    }

    /// Queues a power action for the daemon's action loop. A second request while one is
    /// queued is refused rather than blocking (upstream blocks the request).
    pub fn request_power(&self, action: PowerAction) -> Result<(), ApiError> {
        self.power_tx
            .try_send(action)
            .map_err(|_| ApiError::new(409, "a power action is already in progress"))
    }

    /// The receiving end of power requests (taken once, by the daemon's action loop).
    pub fn take_power_requests(&self) -> Option<mpsc::Receiver<PowerAction>> {
        self.power_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Runs `f` on the state store under its lock.
    pub fn with_state<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut store)
    }

    /// Whether start-up finished and nothing is stopping (`system_is_ready`).
    pub fn is_ready(&self) -> bool {
        self.lifecycle.is_ready()
    }

    /// Whether application `name` is installed (a plugin name or one of its variants).
    pub fn application_installed(&self, name: &str) -> bool {
        crate::system::applications::manage::is_installed(self, name)
    }
}

pub type AppState = Arc<App>;

pub use body::JSON_BODY_LIMIT;

/// The API router. The guard runs before routing (it may rewrite the path), so the routes
/// sit in an inner router that is the outer one's only service.
pub fn router(app: AppState) -> Router {
    let routes = Router::new()
        .without_v07_checks()
        .route("/", any(root::root))
        .route("/1.0", any(root::info))
        .route("/1.0/plugins", any(plugins::list))
        .route("/1.0/services", any(services::list))
        .route("/1.0/services/{name}", any(services::entity))
        .route("/1.0/services/{name}/{*rest}", any(services::verb))
        .route("/1.0/applications", any(applications::list))
        .route("/1.0/applications/{name}", any(applications::entity))
        .route("/1.0/applications/{name}/{*rest}", any(applications::verb))
        .route("/1.0/debug", any(debug::list))
        .route("/1.0/debug/log", any(debug::log))
        .route("/1.0/debug/kernel", any(debug::kernel))
        .route("/1.0/debug/processes", any(debug::processes))
        .route("/1.0/debug/:run-script", any(debug::run_script))
        .route(
            "/1.0/debug/tui/:write-message",
            any(internal::write_message),
        )
        .route("/internal/tui/:write-message", any(internal::write_message))
        .route("/internal/secureboot", any(security::internal_secureboot))
        .route(
            "/internal/auth/:generate-registration",
            any(security::generate_registration),
        )
        .route(
            "/internal/auth/:generate-token",
            any(security::generate_token),
        )
        .route("/1.0/debug/secureboot", any(security::debug_secureboot))
        .route(
            "/1.0/debug/secureboot/event-log",
            any(security::debug_event_log),
        )
        .route(
            "/1.0/debug/secureboot/:update",
            any(security::debug_secureboot_update),
        )
        .route("/1.0/system", any(system::list))
        .route("/1.0/system/kernel", any(system::kernel))
        .route("/1.0/system/logging", any(system::logging))
        .route(
            "/1.0/system/fallback-listener",
            any(system::fallback_listener),
        )
        .route("/1.0/system/network", any(system::network))
        .route("/1.0/system/network/:confirm", any(system::network_confirm))
        .route(
            "/1.0/system/network/:flush-dns",
            any(system::network_flush_dns),
        )
        .route("/1.0/system/provider", any(system::provider))
        .route("/1.0/system/resources", any(system::resources))
        .route("/1.0/system/update", any(system::update))
        .route("/1.0/system/update/:check", any(system::update_check))
        .route(
            "/1.0/system/provider/{name}/{*rest}",
            any(system::provider_route),
        )
        .route("/1.0/system/:reboot", any(system::reboot))
        .route("/1.0/system/:backup", any(system::backup))
        .route("/1.0/system/:restore", any(system::restore))
        .route("/1.0/system/:poweroff", any(system::poweroff))
        .route("/1.0/system/:suspend", any(system::suspend))
        .route("/1.0/system/:factory-reset", any(system::factory_reset))
        .route("/1.0/system/storage", any(storage::storage))
        .route("/1.0/system/storage/{action}", any(storage::action))
        .route("/1.0/system/security", any(security::security))
        .route("/1.0/system/security/:retrieved", any(security::retrieved))
        .route(
            "/1.0/system/security/:tpm-rebind",
            any(security::tpm_rebind),
        )
        .fallback(fallback)
        .with_state(app.clone());
    Router::new()
        .fallback_service(routes)
        .layer(middleware::from_fn_with_state(app, guard))
}

/// Unmatched paths: GET is 404, anything else 501.
pub async fn fallback(method: Method) -> ApiError {
    unmatched(&method)
}

/// What upstream's catch-all answers: GET is 404, anything else 501.
pub fn unmatched(method: &Method) -> ApiError {
    if method == Method::GET {
        ApiError::not_found()
    } else {
        ApiError::not_implemented()
    }
}

/// How long a change that does not go to a plugin waits for start-up to finish before it
/// is refused.
pub const STARTUP_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Runs before routing: one form for escaped path segments, path cleaning, and the
/// lifecycle's rule for changes: taken only when ready. While starting, a change to a
/// plugin goes on (the plugin holds it until that plugin started); any other change waits
/// for start-up to finish. Once stopping (shutdown or a power action), every change is
/// refused at once.
async fn guard(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    if let Some(canonical) = uri::canonical_path(req.uri().path()) {
        let path_and_query = match req.uri().query() {
            Some(q) => format!("{canonical}?{q}"),
            None => canonical,
        };
        let mut parts = req.uri().clone().into_parts();
        match path_and_query.parse() {
            Ok(pq) => parts.path_and_query = Some(pq),
            Err(_) => return ApiError::not_found().into_response(),
        }
        match Uri::from_parts(parts) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return ApiError::not_found().into_response(),
        }
    }
    let path = req.uri().path();
    if let Some(clean) = clean_path(path) {
        let location = match req.uri().query() {
            Some(q) => format!("{clean}?{q}"),
            None => clean,
        };
        let mut resp = StatusCode::MOVED_PERMANENTLY.into_response();
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        return resp;
    }
    let internal = path == "/internal" || path.starts_with("/internal/");
    if req.method() != Method::GET && !internal {
        let for_plugin = ["/1.0/services/", "/1.0/applications/"]
            .iter()
            .any(|c| path.strip_prefix(c).is_some_and(|rest| !rest.is_empty()));
        if let Err(why) = app.lifecycle.admit_change(for_plugin, STARTUP_WAIT).await {
            return ApiError::new(503, why).into_response();
        }
    }
    next.run(req).await
}

/// The cleaned form of `path` when it differs (`//`, `.` and `..` segments), keeping a
/// trailing slash. `None` when the path is already clean.
pub fn clean_path(path: &str) -> Option<String> {
    let dirty = path.contains("//")
        || path.split('/').any(|s| s == "." || s == "..")
        || !path.starts_with('/');
    if !dirty {
        return None;
    }
    let mut parts: Vec<&str> = vec![];
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let mut out = format!("/{}", parts.join("/"));
    if path.ends_with('/') && out != "/" {
        out.push('/');
    }
    (out != path).then_some(out)
}

/// Answers `501` unless `method` is one of `allowed`.
pub fn require(method: &Method, allowed: &[Method]) -> Result<(), ApiError> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(ApiError::not_implemented())
    }
}

#[cfg(test)]
mod tests {
    use super::clean_path;

    #[test]
    fn paths_are_cleaned_like_a_servemux() {
        assert_eq!(clean_path("/1.0"), None);
        assert_eq!(clean_path("/1.0/services/"), None);
        assert_eq!(clean_path("//1.0").as_deref(), Some("/1.0"));
        assert_eq!(
            clean_path("/1.0/./services").as_deref(),
            Some("/1.0/services")
        );
        assert_eq!(
            clean_path("/1.0/x/../services/").as_deref(),
            Some("/1.0/services/")
        );
        assert_eq!(clean_path("/..").as_deref(), Some("/"));
    }
}
