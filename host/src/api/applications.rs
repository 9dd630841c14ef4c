//! `/1.0/applications`: every loaded application plugin, dispatched by name.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::Response;
use futures_util::StreamExt;
use plugin_api::{Hook, Kind};
use serde_json::Value;
use tokio::sync::mpsc;

use super::plugins::extra_route;
use super::proxy::api_root;
use super::response::{empty, sync, sync_raw};
use super::{require, ApiError, ApiResult, App, AppState};
use crate::plugins::Plugin;

const NOT_SUPPORTED: &str = "not supported";

fn lookup(app: &App, name: &str) -> Result<Arc<Plugin>, ApiError> {
    app.registry
        .get(name)
        .filter(|p| p.manifest.kind == Kind::Application)
        .cloned()
        .ok_or_else(ApiError::not_found)
}

fn supports(plugin: &Plugin, hook: Hook) -> Result<(), ApiError> {
    if plugin.manifest.has(hook) {
        Ok(())
    } else {
        Err(ApiError::internal(NOT_SUPPORTED))
    }
}

pub async fn list(State(app): State<AppState>, method: Method, headers: HeaderMap) -> ApiResult {
    if method == Method::POST {
        return Err(ApiError::new(
            501,
            "installing applications is not implemented by this daemon yet",
        ));
    }
    require(&method, &[Method::GET])?;
    let root = api_root(&headers);
    let urls: Vec<String> = app
        .registry
        .of_kind(Kind::Application)
        .map(|p| format!("{root}/applications/{}", p.name()))
        .collect();
    Ok(sync(&urls))
}

/// `GET|PUT /1.0/applications/{name}`: the name is looked up before the method.
pub async fn entity(
    State(app): State<AppState>,
    Path(name): Path<String>,
    method: Method,
    body: Bytes,
) -> ApiResult {
    let plugin = lookup(&app, &name)?;
    match method {
        Method::GET => {
            let out = plugin.hook(Hook::Get, Bytes::new()).await?;
            Ok(with_primary_flag(out, plugin.manifest.primary))
        }
        Method::PUT => {
            supports(&plugin, Hook::Put)?;
            plugin.hook(Hook::Put, body).await?;
            Ok(empty())
        }
        _ => Err(ApiError::not_implemented()),
    }
}

/// `state.is_primary` is the host's fact, filled at request time.
fn with_primary_flag(out: Vec<u8>, primary: bool) -> Response {
    match serde_json::from_slice::<Value>(&out) {
        Ok(mut v) => {
            if let Some(state) = v.get_mut("state").and_then(Value::as_object_mut) {
                state.insert("is_primary".into(), Value::Bool(primary));
            }
            sync(&v)
        }
        Err(_) => sync_raw(out),
    }
}

/// `/1.0/applications/{name}/...`: the standard verbs (method checked first), then routes
/// the plugin declares.
pub async fn verb(
    State(app): State<AppState>,
    Path((name, rest)): Path<(String, String)>,
    method: Method,
    RawQuery(query): RawQuery,
    body: Body,
) -> ApiResult {
    let hook = match rest.as_str() {
        ":backup" => Some(Hook::Backup),
        ":restore" => Some(Hook::Restore),
        ":factory-reset" => Some(Hook::FactoryReset),
        ":restart" => Some(Hook::Restart),
        ":action" => Some(Hook::Action),
        _ => None,
    };
    let Some(hook) = hook else {
        let plugin = lookup(&app, &name)?;
        let body = axum::body::to_bytes(body, super::JSON_BODY_LIMIT)
            .await
            .map_err(|e| ApiError::bad_request(format!("cannot read request body: {e}")))?;
        return extra_route(&plugin, &rest, &method, query, body).await;
    };
    require(&method, &[Method::POST])?;
    let plugin = lookup(&app, &name)?;
    supports(&plugin, hook)?;
    match hook {
        Hook::Restore => restore(&plugin, body).await,
        Hook::Backup => {
            let options = axum::body::to_bytes(body, super::JSON_BODY_LIMIT)
                .await
                .map_err(|e| ApiError::bad_request(format!("cannot read request body: {e}")))?;
            backup(&plugin, options).await
        }
        Hook::FactoryReset | Hook::Restart => {
            // Answered first: the work may restart the application that proxies this API.
            let name = plugin.name().to_string();
            tokio::spawn(async move {
                if let Err(e) = plugin.hook(hook, Bytes::new()).await {
                    let what = if hook == Hook::FactoryReset {
                        "perform factory reset of"
                    } else {
                        "restart"
                    };
                    tracing::error!(error = %e.message, "Failed to {what} application '{name}'");
                }
            });
            Ok(empty())
        }
        _ => {
            let body = axum::body::to_bytes(body, super::JSON_BODY_LIMIT)
                .await
                .map_err(|e| ApiError::bad_request(format!("cannot read request body: {e}")))?;
            Ok(sync_raw(plugin.hook(hook, body).await?))
        }
    }
}

/// Streams the archive as it is produced. An error before the first byte is a JSON error;
/// a later one aborts the transfer (the client sees a truncated body).
async fn backup(plugin: &Plugin, options: Bytes) -> ApiResult {
    let (mut rx, handle) = plugin.backup(options).await;
    let (first, handle) = match rx.recv().await {
        Some(b) => (b, Some(handle)),
        None => {
            handle
                .await
                .map_err(|e| ApiError::internal(format!("backup crashed: {e}")))??;
            (Bytes::new(), None)
        }
    };
    let rest = futures_util::stream::unfold((rx, handle), |(mut rx, handle)| async move {
        if let Some(b) = rx.recv().await {
            return Some((Ok(b), (rx, handle)));
        }
        let result = handle?.await;
        match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some((Err(std::io::Error::other(e.message)), (rx, None))),
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), (rx, None))),
        }
    });
    let stream =
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(rest);
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    Ok(resp)
}

/// Feeds the request body to the plugin chunk by chunk.
async fn restore(plugin: &Plugin, body: Body) -> ApiResult {
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let mut stream = body.into_data_stream();
    let feeder = tokio::spawn(async move {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("cannot read request body: {e}"))?;
            if tx.send(chunk).await.is_err() {
                break; // the plugin stopped reading
            }
        }
        Ok::<(), String>(())
    });
    let result = plugin.restore(rx).await;
    let fed = feeder.await.unwrap_or_else(|e| Err(e.to_string()));
    result?;
    fed.map_err(ApiError::bad_request)?;
    Ok(empty())
}
