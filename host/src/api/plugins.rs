//! `GET /1.0/plugins` (an extension: loaded plugins and load failures), and the routes
//! plugins declare in their manifests.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::Method;
use plugin_api::{Call, Kind, RouteRequest};
use serde::Serialize;
use serde_json::Value;

use super::body::read_json;
use super::response::{sync, sync_raw};
use super::uri::Query;
use super::{require, ApiError, ApiResult, AppState};
use crate::plugins::{LoadFailure, Plugin, Run};

#[derive(Serialize)]
struct Loaded<'a> {
    name: &'a str,
    kind: Kind,
    version: &'a str,
    api_version: &'a str,
    path: String,
    /// Where the plugin is in the daemon's start and stop (`pending`, `starting`,
    /// `started`, `not-started`, `stopped`).
    state: Run,
    /// Whether its library is open: plugins registered from the manifest cache are
    /// opened on their first call.
    opened: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    degraded: Option<String>,
}

#[derive(Serialize)]
struct Listing<'a> {
    loaded: Vec<Loaded<'a>>,
    failed: Vec<LoadFailure>,
}

/// Not listed anywhere upstream clients look, so their listings are unchanged.
pub async fn list(State(app): State<AppState>, method: Method) -> ApiResult {
    require(&method, &[Method::GET])?;
    let loaded = app
        .registry
        .all()
        .map(|p| Loaded {
            name: p.name(),
            kind: p.manifest.kind,
            version: &p.manifest.version,
            api_version: &p.manifest.api_version,
            path: p.path.display().to_string(),
            state: p.run_state(),
            opened: p.is_open(),
            degraded: p.degraded(),
        })
        .collect();
    Ok(sync(&Listing {
        loaded,
        failed: app.registry.failures(),
    }))
}

/// The path of a route of `plugin` below its kind's route base.
fn route_path(plugin: &Plugin, rest: &str) -> String {
    format!("{}{rest}", plugin.manifest.kind.route_base(plugin.name()))
}

/// Whether the plugin declares a route at `/1.0/<collection>/<name>/<rest>` (any method).
pub fn declares(plugin: &Plugin, rest: &str) -> bool {
    let path = route_path(plugin, rest);
    plugin.manifest.routes.iter().any(|r| r.path == path)
}

/// Dispatches `/1.0/<collection of its kind>/<name>/<rest>` to a route the plugin
/// declared. Unknown: GET is 404, other methods 501; a known path with another method is
/// 501.
pub async fn extra_route(
    plugin: &Plugin,
    rest: &str,
    method: &Method,
    query: Option<String>,
    body: Body,
) -> ApiResult {
    let path = route_path(plugin, rest);
    let mut routes = plugin.manifest.routes.iter().filter(|r| r.path == path);
    let known = routes.clone().next().is_some();
    let Some(route) = routes.find(|r| r.method.as_str() == method.as_str()) else {
        return Err(if known || method != Method::GET {
            ApiError::not_implemented()
        } else {
            ApiError::not_found()
        });
    };
    let query = Query::parse(query.as_deref())?.first_values();
    let body = read_json(body).await?;
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?
    };
    let request = RouteRequest { query, body };
    let input = serde_json::to_vec(&request)
        .map_err(|e| ApiError::internal(format!("cannot encode the request: {e}")))?;
    let out = plugin.call(Call::Route(route), Bytes::from(input)).await?;
    Ok(sync_raw(out))
}
