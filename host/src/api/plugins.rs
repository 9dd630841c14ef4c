//! `GET /1.0/plugins` (an extension: loaded plugins and load failures), and the routes
//! plugins declare in their manifests.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::Method;
use plugin_api::Kind;
use serde::Serialize;
use serde_json::Value;

use super::body::read_json;
use super::response::{sync, sync_raw};
use super::uri::Query;
use super::{require, ApiError, ApiResult, AppState};
use crate::plugins::{LoadFailure, Plugin};

#[derive(Serialize)]
struct Loaded<'a> {
    name: &'a str,
    kind: Kind,
    version: &'a str,
    api_version: &'a str,
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    degraded: Option<String>,
}

#[derive(Serialize)]
struct Listing<'a> {
    loaded: Vec<Loaded<'a>>,
    failed: &'a [LoadFailure],
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
            degraded: p.degraded(),
        })
        .collect();
    Ok(sync(&Listing {
        loaded,
        failed: app.registry.failures(),
    }))
}

fn route_path(plugin: &Plugin, collection: &str, rest: &str) -> String {
    format!("/1.0/{collection}/{}/{rest}", plugin.name())
}

/// Whether the plugin declares a route at `/1.0/<collection>/<name>/<rest>` (any method).
pub fn declares(plugin: &Plugin, collection: &str, rest: &str) -> bool {
    let path = route_path(plugin, collection, rest);
    plugin.manifest.routes.iter().any(|r| r.path == path)
}

/// Dispatches `/1.0/<collection>/<name>/<rest>` to a route the plugin declared. Unknown:
/// GET is 404, other methods 501; a known path with another method is 501.
pub async fn extra_route(
    plugin: &Plugin,
    collection: &str,
    rest: &str,
    method: &Method,
    query: Option<String>,
    body: Body,
) -> ApiResult {
    let path = route_path(plugin, collection, rest);
    let (op, mutating) = {
        let mut known = false;
        let mut found = None;
        for r in plugin.manifest.routes.iter().filter(|r| r.path == path) {
            known = true;
            if r.method == method.as_str() {
                found = Some((r.op.clone(), r.method != "GET"));
            }
        }
        match found {
            Some(f) => f,
            None if known || method != Method::GET => return Err(ApiError::not_implemented()),
            None => return Err(ApiError::not_found()),
        }
    };
    let query = Query::parse(query.as_deref())?.first_values();
    let body = read_json(body).await?;
    let body_value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?
    };
    let input = serde_json::json!({ "query": query, "body": body_value });
    let out = plugin
        .call(&op, Bytes::from(input.to_string()), mutating)
        .await?;
    Ok(sync_raw(out))
}
