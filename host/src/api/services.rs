//! `/1.0/services`: every loaded service plugin, dispatched by name.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method};
use plugin_api::{Hook, Kind};

use super::plugins::extra_route;
use super::proxy::api_root;
use super::response::{empty, sync, sync_raw};
use super::{require, ApiError, ApiResult, App, AppState};
use crate::plugins::Plugin;

/// The upstream error text for services without reset.
const RESET_NOT_SUPPORTED: &str = "reset isn't supported by this service";

/// A service plugin that is usable now (its required application, if any, installed).
fn usable(app: &App, plugin: &Plugin) -> bool {
    plugin.manifest.kind == Kind::Service
        && plugin
            .manifest
            .requires_application
            .as_deref()
            .is_none_or(|a| app.application_installed(a))
}

fn lookup(app: &App, name: &str) -> Result<Arc<Plugin>, ApiError> {
    app.registry
        .get(name)
        .filter(|p| usable(app, p))
        .cloned()
        .ok_or_else(ApiError::not_found)
}

pub async fn list(State(app): State<AppState>, method: Method, headers: HeaderMap) -> ApiResult {
    require(&method, &[Method::GET])?;
    let root = api_root(&headers);
    let urls: Vec<String> = app
        .registry
        .of_kind(Kind::Service)
        .filter(|p| usable(&app, p))
        .map(|p| format!("{root}/services/{}", p.name()))
        .collect();
    Ok(sync(&urls))
}

/// `GET|PUT /1.0/services/{name}`: the name is looked up before the method is checked.
pub async fn entity(
    State(app): State<AppState>,
    Path(name): Path<String>,
    method: Method,
    body: Bytes,
) -> ApiResult {
    let plugin = lookup(&app, &name)?;
    match method {
        Method::GET => Ok(sync_raw(plugin.hook(Hook::Get, Bytes::new()).await?)),
        Method::PUT => {
            if !plugin.manifest.has(Hook::Put) {
                return Err(ApiError::internal("this service has no configuration"));
            }
            plugin.hook(Hook::Put, body).await?;
            Ok(empty())
        }
        _ => Err(ApiError::not_implemented()),
    }
}

/// `/1.0/services/{name}/...`: `:reset`, then routes the plugin declares.
pub async fn verb(
    State(app): State<AppState>,
    Path((name, rest)): Path<(String, String)>,
    method: Method,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult {
    let plugin = lookup(&app, &name)?;
    if rest == ":reset" {
        require(&method, &[Method::POST])?;
        if !plugin.manifest.has(Hook::Reset) {
            return Err(ApiError::internal(RESET_NOT_SUPPORTED));
        }
        plugin.hook(Hook::Reset, Bytes::new()).await?;
        return Ok(empty());
    }
    extra_route(&plugin, &rest, &method, query, body).await
}
