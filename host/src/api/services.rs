//! `/1.0/services`: every loaded service plugin, dispatched by name.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method};
use plugin_api::sdk::RESET_NOT_SUPPORTED;
use plugin_api::{Hook, Kind};

use super::body::{read_json, require_entity};
use super::plugins::{declares, extra_route};
use super::proxy;
use super::response::{empty, sync, sync_raw};
use super::uri::Params;
use super::{require, unmatched, ApiError, ApiResult, App, AppState};
use crate::plugins::Plugin;

/// A service plugin that is usable now (its required application, if any, installed).
fn usable(app: &App, plugin: &Plugin) -> bool {
    plugin.manifest.kind == Kind::Service
        && plugin
            .manifest
            .requires_application
            .as_deref()
            .is_none_or(|a| app.application_installed(a))
}

fn find(app: &App, name: &str) -> Option<Arc<Plugin>> {
    app.registry
        .get(Kind::Service, name)
        .filter(|p| usable(app, p))
        .cloned()
}

fn lookup(app: &App, name: &str) -> Result<Arc<Plugin>, ApiError> {
    find(app, name).ok_or_else(ApiError::not_found)
}

pub async fn list(State(app): State<AppState>, method: Method, headers: HeaderMap) -> ApiResult {
    require(&method, &[Method::GET])?;
    let urls: Vec<String> = app
        .registry
        .of_kind(Kind::Service)
        .filter(|p| usable(&app, p))
        .map(|p| proxy::url(&headers, &["services", p.name()]))
        .collect();
    Ok(sync(&urls))
}

/// `GET|PUT /1.0/services/{name}`: the name is looked up before the method is checked,
/// the body read last.
pub async fn entity(
    State(app): State<AppState>,
    params: Params,
    method: Method,
    body: Body,
) -> ApiResult {
    let plugin = lookup(&app, params.name())?;
    match method {
        Method::GET => Ok(sync_raw(plugin.hook(Hook::Get, Bytes::new()).await?)),
        Method::PUT => {
            if !plugin.manifest.has(Hook::Put) {
                return Err(ApiError::internal("this service has no configuration"));
            }
            let body = read_json(body).await?;
            require_entity(&body)?;
            plugin.hook(Hook::Put, body).await?;
            Ok(empty())
        }
        _ => Err(ApiError::not_implemented()),
    }
}

/// `/1.0/services/{name}/...`: `:reset` (the name looked up before the method), then
/// routes the plugin declares; any other path is upstream's catch-all (GET 404, else 501),
/// whatever the name.
pub async fn verb(
    State(app): State<AppState>,
    params: Params,
    method: Method,
    RawQuery(query): RawQuery,
    body: Body,
) -> ApiResult {
    let rest = params.rest();
    if rest == ":reset" {
        let plugin = lookup(&app, params.name())?;
        require(&method, &[Method::POST])?;
        if !plugin.manifest.has(Hook::Reset) {
            return Err(ApiError::internal(RESET_NOT_SUPPORTED));
        }
        plugin.hook(Hook::Reset, Bytes::new()).await?;
        return Ok(empty());
    }
    match find(&app, params.name()) {
        Some(plugin) if declares(&plugin, rest) => {
            extra_route(&plugin, rest, &method, query, body).await
        }
        _ => Err(unmatched(&method)),
    }
}
