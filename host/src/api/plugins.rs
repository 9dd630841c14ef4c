//! `GET /1.0/plugins` (an extension: loaded plugins and load failures), and the routes
//! plugins declare in their manifests.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::Method;
use plugin_api::{Call, Kind, RouteRequest};
use serde::Serialize;
use serde_json::Value;

use super::response::{sync, sync_raw};
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
            state: p.run_state(),
            degraded: p.degraded(),
        })
        .collect();
    Ok(sync(&Listing {
        loaded,
        failed: app.registry.failures(),
    }))
}

/// Dispatches `/1.0/<collection of its kind>/<name>/<rest>` to a route the plugin
/// declared. Unknown: GET is 404, other methods 501; a known path with another method is
/// 501.
pub async fn extra_route(
    plugin: &Plugin,
    rest: &str,
    method: &Method,
    query: Option<String>,
    body: Bytes,
) -> ApiResult {
    let collection = plugin.manifest.kind.collection().unwrap_or("plugins");
    let path = format!("/1.0/{collection}/{}/{rest}", plugin.name());
    let mut routes = plugin.manifest.routes.iter().filter(|r| r.path == path);
    let known = routes.clone().next().is_some();
    let Some(route) = routes.find(|r| r.method.as_str() == method.as_str()) else {
        return Err(if known || method != Method::GET {
            ApiError::not_implemented()
        } else {
            ApiError::not_found()
        });
    };
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?
    };
    let request = RouteRequest {
        query: parse_query(query.as_deref())?,
        body,
    };
    let input = serde_json::to_vec(&request)
        .map_err(|e| ApiError::internal(format!("cannot encode the request: {e}")))?;
    let out = plugin.call(Call::Route(route), Bytes::from(input)).await?;
    Ok(sync_raw(out))
}

/// Decodes a URL query string into a map (the last value of a repeated key wins).
fn parse_query(
    query: Option<&str>,
) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    let Some(q) = query else {
        return Ok(Default::default());
    };
    let uri: axum::http::Uri = format!("/?{q}")
        .parse()
        .map_err(|_| ApiError::bad_request("invalid query string"))?;
    axum::extract::Query::try_from_uri(&uri)
        .map(|axum::extract::Query(m)| m)
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))
}
