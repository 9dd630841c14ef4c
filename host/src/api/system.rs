//! `/1.0/system`: the listing, kernel settings, logging, and power.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method};
use serde::{Deserialize, Serialize};

use super::body::{read_object, read_object_or_default};
use super::proxy;
use super::response::{empty, sync};
use super::uri::Params;
use super::{require, unmatched, ApiError, ApiResult, AppState};
use crate::platform::systemd::PowerAction;
use crate::system::kernel::{self, KernelConfig, KernelState};
use crate::system::logging::{self, LoggingConfig};
use crate::system::provider;
use crate::system::seed::reset;
use crate::system::update::config::{self as update_config, UpdateConfig, UpdateState};
use crate::system::update::runner;
use crate::system::update::schedule::{CheckKind, Event};

/// Exactly upstream's eight entries (`fallback-listener` is routed but not listed).
const ENTRIES: [&str; 8] = [
    "kernel",
    "logging",
    "network",
    "provider",
    "resources",
    "security",
    "storage",
    "update",
];

pub async fn list(method: Method, headers: HeaderMap) -> ApiResult {
    require(&method, &[Method::GET])?;
    let urls: Vec<String> = ENTRIES
        .iter()
        .map(|e| proxy::url(&headers, &["system", e]))
        .collect();
    Ok(sync(&urls))
}

/// `POST /1.0/system/:backup`: the state saved, then a gzip tar of the state directory's
/// files and the installed applications' archives, streamed as it is made (the body is
/// ignored, as upstream does).
pub async fn backup(State(app): State<AppState>, method: Method) -> ApiResult {
    use crate::system::backup::{self, apply};
    require(&method, &[Method::POST])?;
    let b = apply::prepare_backup(&app).await?;
    Ok(super::applications::streamed(
        "application/gzip",
        move |out| backup::write_backup(b.files, b.apps, out),
    ))
}

/// `POST /1.0/system/:restore?skip=...`: the upload checked and staged, then applied
/// whole or not at all; a reboot follows the answer.
pub async fn restore(
    State(app): State<AppState>,
    method: Method,
    RawQuery(query): RawQuery,
    body: Body,
) -> ApiResult {
    use crate::system::backup::{apply, Limits, Skip};
    require(&method, &[Method::POST])?;
    let skip = Skip::from_query(query.as_deref());
    apply::restore(&app, body, skip, Limits::default()).await?;
    if let Err(e) = app.request_power(PowerAction::Reboot) {
        tracing::warn!(error = %e.message, "system restored; the reboot was not queued");
    }
    Ok(empty())
}

/// `POST /1.0/system/:factory-reset`: see [`crate::system::seed::reset`]. The answer is
/// sent before the hard reboot.
pub async fn factory_reset(State(app): State<AppState>, method: Method, body: Body) -> ApiResult {
    require(&method, &[Method::POST])?;
    let request: reset::ResetRequest = read_object_or_default(body).await?;
    reset::reset(&app, request).await?;
    reset::schedule_hard_reboot(&app.root);
    Ok(empty())
}

/// `GET /1.0/system/resources`: the hardware, read fresh on every call.
pub async fn resources(State(app): State<AppState>, method: Method) -> ApiResult {
    require(&method, &[Method::GET])?;
    let kernel = app.platform.kernel.clone();
    let root = app.root.clone();
    let res = tokio::task::spawn_blocking(move || crate::system::resources::get(&kernel, &root))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("cannot read the hardware: {e}")))?;
    Ok(sync(&res))
}

#[derive(Serialize)]
struct Kernel {
    config: KernelConfig,
    state: KernelState,
}

#[derive(Deserialize)]
struct KernelPut {
    config: Option<KernelConfig>,
}

/// `GET|PUT /1.0/system/kernel`.
pub async fn kernel(State(app): State<AppState>, method: Method, body: Body) -> ApiResult {
    match method {
        Method::GET => {
            let config = app.with_state(|s| s.doc().system.kernel.clone());
            let state = kernel::state(&app.platform.kernel).map_err(ApiError::internal)?;
            Ok(sync(&Kernel { config, state }))
        }
        Method::PUT => {
            let put: KernelPut = read_object(body).await?;
            let config = put.config.unwrap_or_default();
            // Bad values are refused before anything is touched.
            kernel::validate(&config, &app.platform.kernel).map_err(ApiError::bad_request)?;
            kernel::require_live(&app.platform).map_err(|e| ApiError::new(503, e))?;
            let app2 = app.clone();
            let save = move |c: &KernelConfig| {
                app2.with_state(|s| s.update(|d| d.system.kernel = c.clone()))
                    .map_err(|e| e.to_string())
            };
            kernel::change(app.root.clone(), app.platform.clone(), config, save)
                .await
                .map_err(ApiError::internal)?;
            Ok(empty())
        }
        _ => Err(ApiError::not_implemented()),
    }
}

#[derive(Serialize)]
struct Logging<'a> {
    config: &'a LoggingConfig,
    state: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct LoggingPut {
    config: Option<LoggingConfig>,
}

/// `GET|PUT /1.0/system/logging`.
pub async fn logging(State(app): State<AppState>, method: Method, body: Body) -> ApiResult {
    match method {
        Method::GET => {
            let config = app.with_state(|s| s.doc().system.logging.clone());
            Ok(sync(&Logging {
                config: &config,
                state: Default::default(),
            }))
        }
        Method::PUT => {
            let put: LoggingPut = read_object(body).await?;
            let config = put.config.ok_or_else(|| {
                ApiError::bad_request("invalid request body: missing field `config`")
            })?;
            logging::validate(&config).map_err(ApiError::bad_request)?;
            let app2 = app.clone();
            let save = move |c: &LoggingConfig| {
                app2.with_state(|s| s.update(|d| d.system.logging = c.clone()))
                    .map_err(|e| e.to_string())
            };
            logging::change(app.root.clone(), app.platform.clone(), config, save)
                .await
                .map_err(ApiError::internal)?;
            Ok(empty())
        }
        _ => Err(ApiError::not_implemented()),
    }
}

async fn power(app: AppState, method: Method, action: PowerAction) -> ApiResult {
    require(&method, &[Method::POST])?;
    // Offline there is nothing to ask: say so instead of answering 200 for nothing.
    app.platform
        .units
        .reachable()
        .map_err(|e| ApiError::new(503, format!("cannot {}: {}", action.as_str(), e.0)))?;
    app.request_power(action)?;
    Ok(empty())
}

pub async fn reboot(State(app): State<AppState>, method: Method) -> ApiResult {
    power(app, method, PowerAction::Reboot).await
}

pub async fn poweroff(State(app): State<AppState>, method: Method) -> ApiResult {
    power(app, method, PowerAction::PowerOff).await
}

pub async fn suspend(State(app): State<AppState>, method: Method) -> ApiResult {
    power(app, method, PowerAction::Suspend).await
}

#[derive(Deserialize, Default)]
struct ProviderPut {
    #[serde(default)]
    config: ProviderConfigIn,
}

#[derive(Deserialize, Default)]
struct ProviderConfigIn {
    #[serde(default)]
    name: String,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

/// `GET|PUT /1.0/system/provider`.
pub async fn provider(State(app): State<AppState>, method: Method, body: Body) -> ApiResult {
    match method {
        Method::GET => Ok(sync(&provider::get(&app).await?)),
        Method::PUT => {
            let put: ProviderPut = read_object(body).await?;
            // As upstream, the body's config replaces the provider's whole config: none
            // given is an empty one.
            let config = put
                .config
                .config
                .filter(|c| !c.is_null())
                .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
            provider::put(&app, &put.config.name, config).await?;
            Ok(empty())
        }
        _ => Err(ApiError::not_implemented()),
    }
}

/// `/1.0/system/provider/{name}/...`: the routes a provider plugin declares (GET 404, else
/// 501, for anything else).
pub async fn provider_route(
    State(app): State<AppState>,
    uri: axum::http::Uri,
    method: Method,
    RawQuery(query): RawQuery,
    body: Body,
) -> ApiResult {
    let params = Params::at_depth(uri.path(), 4);
    let rest = params.rest();
    match provider::plugin(&app, params.name()) {
        Some(p) if super::plugins::declares(&p, rest) => {
            super::plugins::extra_route(&p, rest, &method, query, body).await
        }
        _ => Err(unmatched(&method)),
    }
}

#[derive(Deserialize)]
struct UpdatePut {
    #[serde(default)]
    config: Option<UpdateConfig>,
}

/// `GET|PUT /1.0/system/update`.
pub async fn update(State(app): State<AppState>, method: Method, body: Body) -> ApiResult {
    match method {
        Method::GET => {
            let (config, last_check) = app.with_state(|s| {
                let u = &s.doc().system.update;
                (u.config.clone(), u.last_check)
            });
            let state = UpdateState {
                last_check,
                status: app.updates.status.status(),
                needs_reboot: app.updates.status.needs_reboot(),
            };
            Ok(sync(
                &serde_json::json!({ "config": config, "state": state }),
            ))
        }
        Method::PUT => {
            let put: UpdatePut = read_object(body).await?;
            // As upstream: a body without a config is an empty one (and its empty frequency
            // is refused).
            let config = put.config.unwrap_or_else(|| UpdateConfig {
                auto_reboot: false,
                channel: String::new(),
                check_frequency: String::new(),
                maintenance_windows: vec![],
            });
            update_config::validate(&config).map_err(ApiError::bad_request)?;
            app.with_state(|s| s.update(|d| d.system.update.config = config))
                .map_err(|e| ApiError::internal(e.to_string()))?;
            app.updates.send(Event::ConfigChanged);
            Ok(empty())
        }
        _ => Err(ApiError::not_implemented()),
    }
}

#[derive(Deserialize, Default)]
struct CheckPost {
    #[serde(default)]
    os_only: bool,
}

/// `POST /1.0/system/update/:check`: a full check through the checker loop (answered at
/// once), or with `os_only` an OS check run here (its failure is the answer).
pub async fn update_check(State(app): State<AppState>, method: Method, body: Body) -> ApiResult {
    require(&method, &[Method::POST])?;
    // Tolerant: an empty body is `{}`.
    let post: CheckPost = read_object_or_default(body).await?;
    if post.os_only {
        runner::check(&app, CheckKind::UserRequested, true, true)
            .await
            .map_err(ApiError::internal)?;
    } else {
        app.updates.send(Event::UserRequested);
    }
    Ok(empty())
}

#[derive(Deserialize)]
struct NetworkPut {
    #[serde(default)]
    config: Option<crate::system::network::model::SystemNetworkConfig>,
}

/// `GET|PUT /1.0/system/network`.
pub async fn network(State(app): State<AppState>, method: Method, body: Body) -> ApiResult {
    use crate::system::network::confirm::{self, ChangeError};
    use crate::system::network::model::SystemNetwork;
    match method {
        Method::GET => {
            let mut config = app.network.config();
            if let Some(c) = config.as_mut() {
                c.fill_default_timezone();
            }
            let net = app.network.clone();
            let state = match tokio::task::spawn_blocking(move || net.state()).await {
                Ok(Ok(state)) => state,
                // A dev root has no network to show; a live machine that cannot be read is
                // an error.
                Ok(Err(e)) if app.platform.mode != crate::platform::Mode::Live => {
                    tracing::debug!(error = %e, "no network state");
                    Default::default()
                }
                Ok(Err(e)) => return Err(ApiError::internal(e)),
                Err(e) => return Err(ApiError::internal(e.to_string())),
            };
            Ok(sync(&SystemNetwork { config, state }))
        }
        Method::PUT => {
            let put: NetworkPut = read_object(body).await?;
            app.network
                .changes
                .refuse_if_pending()
                .map_err(|r| ApiError::new(r.status(), r.message()))?;
            let config = match put.config {
                Some(c) if c.has_devices() => c,
                _ => {
                    return Err(ApiError::bad_request(
                        "network configuration has no devices defined",
                    ))
                }
            };
            let trial = if config.confirmation_timeout.is_empty() {
                None
            } else {
                Some(
                    confirm::parse_timeout(&config.confirmation_timeout)
                        .map_err(ApiError::bad_request)?,
                )
            };
            match app.network.changes.change(Some(config), trial).await {
                Ok(()) => {
                    // The provider learns the new addresses; the answer does not wait.
                    let app = app.clone();
                    tokio::spawn(async move {
                        crate::system::provider::notify(
                            &app,
                            plugin_api::provider::RefreshCause::NetworkConfigChanged,
                        )
                        .await
                    });
                    Ok(empty())
                }
                Err(ChangeError::Refused(r)) => Err(ApiError::new(r.status(), r.message())),
                Err(ChangeError::Failed(e)) => Err(ApiError::internal(e)),
            }
        }
        _ => Err(ApiError::not_implemented()),
    }
}

/// `POST /1.0/system/network/:confirm`.
pub async fn network_confirm(State(app): State<AppState>, method: Method) -> ApiResult {
    require(&method, &[Method::POST])?;
    app.network
        .changes
        .confirm()
        .map_err(ApiError::bad_request)?;
    Ok(empty())
}

/// `POST /1.0/system/network/:flush-dns`: resolved's caches emptied.
pub async fn network_flush_dns(State(app): State<AppState>, method: Method) -> ApiResult {
    require(&method, &[Method::POST])?;
    let os = app.network.os().clone();
    tokio::task::spawn_blocking(move || os.flush_dns_caches())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.0))?;
    Ok(empty())
}

#[derive(Deserialize, Default)]
struct FallbackPut {
    #[serde(default)]
    config: crate::system::fallback::FallbackConfig,
    #[serde(default)]
    state: FallbackStateIn,
}

#[derive(Deserialize, Default)]
struct FallbackStateIn {
    active: Option<bool>,
}

/// `GET|PUT /1.0/system/fallback-listener`. A PUT replaces the configuration (new trusted
/// certificates apply at once, a new address from the next start); `state.active` starts
/// (`true`) or stops (`false`) the listener, and an absent one leaves it as it is.
pub async fn fallback_listener(
    State(app): State<AppState>,
    method: Method,
    body: Body,
) -> ApiResult {
    use crate::system::fallback;
    match method {
        Method::GET => {
            let config = app.with_state(|s| s.doc().system.fallback_listener.config.clone());
            Ok(sync(&serde_json::json!({
                "config": config,
                "state": {"active": app.fallback.active()},
            })))
        }
        Method::PUT => {
            // Tolerant: an empty body is `{}` (and its empty certificate list is refused).
            let put: FallbackPut = read_object_or_default(body).await?;
            fallback::validate(&put.config).map_err(ApiError::bad_request)?;
            app.with_state(|s| s.update(|d| d.system.fallback_listener.config = put.config))
                .map_err(|e| ApiError::internal(e.to_string()))?;
            match put.state.active {
                Some(true) => {
                    fallback::listener::start(&app)
                        .await
                        .map_err(ApiError::internal)?;
                }
                Some(false) => app.fallback.stop(),
                None => {}
            }
            Ok(empty())
        }
        _ => Err(ApiError::not_implemented()),
    }
}
