//! `/1.0/applications`: every loaded application plugin, dispatched by name.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::Response;
use bytes::BytesMut;
use futures_util::StreamExt;
use plugin_api::sdk::NOT_SUPPORTED;
use plugin_api::{Hook, Kind};
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::body::{read_json, require_entity, require_object};
use super::plugins::{declares, extra_route};
use super::proxy;
use super::response::{empty, sync_raw};
use super::uri::Params;
use super::{require, unmatched, ApiError, ApiResult, App, AppState};
use crate::platform::uploads;
use crate::plugins::Plugin;

/// Upstream's application verbs this daemon does not implement itself (a plugin may serve
/// them as declared routes). Like every application verb, they check the method first.
const NOT_BUILT: [&str; 4] = [":check-update", ":debug", ":remove", ":switch-version"];

/// Where uploads wait, next to the state file (on the state disk: not a tmpfs, not memory).
const UPLOADS: &str = "uploads";

fn lookup(app: &App, name: &str) -> Result<Arc<Plugin>, ApiError> {
    app.registry
        .get(Kind::Application, name)
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
    let urls: Vec<String> = app
        .registry
        .of_kind(Kind::Application)
        .map(|p| proxy::url(&headers, &["applications", p.name()]))
        .collect();
    Ok(super::response::sync(&urls))
}

/// `GET|PUT /1.0/applications/{name}`: the name is looked up before the method.
pub async fn entity(
    State(app): State<AppState>,
    params: Params,
    method: Method,
    body: Body,
) -> ApiResult {
    let plugin = lookup(&app, params.name())?;
    match method {
        Method::GET => {
            let out = plugin.hook(Hook::Get, Bytes::new()).await?;
            Ok(with_primary_flag(out, plugin.manifest.primary))
        }
        Method::PUT => {
            supports(&plugin, Hook::Put)?;
            let body = read_json(body).await?;
            require_entity(&body)?;
            plugin.hook(Hook::Put, body).await?;
            Ok(empty())
        }
        _ => Err(ApiError::not_implemented()),
    }
}

/// `state.is_primary` is the host's fact, filled at request time as the state's first
/// field (upstream's order). The plugin's key order is kept everywhere else.
fn with_primary_flag(out: Vec<u8>, primary: bool) -> Response {
    let with_flag = || -> Option<String> {
        let top: OrderedObject = serde_json::from_slice(&out).ok()?;
        let state = top.0.iter().find(|(k, _)| k == "state")?.1;
        let state: OrderedObject = serde_json::from_str(state.get()).ok()?;
        let mut fields = vec![("is_primary", if primary { "true" } else { "false" })];
        fields.extend(
            state
                .0
                .iter()
                .filter(|(k, _)| k != "is_primary")
                .map(|(k, v)| (k.as_str(), v.get())),
        );
        let state = write_object(&fields);
        let top: Vec<(&str, &str)> = top
            .0
            .iter()
            .map(|(k, v)| (k.as_str(), if k == "state" { &state } else { v.get() }))
            .collect();
        Some(write_object(&top))
    };
    match with_flag() {
        Some(text) => sync_raw(text.into_bytes()),
        None => sync_raw(out),
    }
}

/// A JSON object's entries in document order, values left as text.
struct OrderedObject<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for OrderedObject<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = OrderedObject<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = vec![];
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    out.push(entry);
                }
                Ok(OrderedObject(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

fn write_object<K: AsRef<str>, V: AsRef<str>>(entries: &[(K, V)]) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(k.as_ref()).expect("a string encodes"));
        out.push(':');
        out.push_str(v.as_ref());
    }
    out.push('}');
    out
}

/// `/1.0/applications/{name}/...`: the standard verbs (method checked first, then the
/// name), upstream's verbs not built here (the same order), then routes the plugin
/// declares; any other path is upstream's catch-all (GET 404, else 501).
pub async fn verb(
    State(app): State<AppState>,
    params: Params,
    method: Method,
    RawQuery(query): RawQuery,
    body: Body,
) -> ApiResult {
    let rest = params.rest();
    let hook = match rest {
        ":backup" => Some(Hook::Backup),
        ":restore" => Some(Hook::Restore),
        ":factory-reset" => Some(Hook::FactoryReset),
        ":restart" => Some(Hook::Restart),
        ":action" => Some(Hook::Action),
        _ => None,
    };
    let Some(hook) = hook else {
        if NOT_BUILT.contains(&rest) {
            require(&method, &[Method::POST])?;
            let plugin = lookup(&app, params.name())?;
            if declares(&plugin, rest) {
                return extra_route(&plugin, rest, &method, query, body).await;
            }
            return Err(ApiError::new(
                501,
                format!(
                    "/1.0/applications/{}/{rest} is not implemented by this daemon yet",
                    plugin.name()
                ),
            ));
        }
        return match lookup(&app, params.name()) {
            Ok(plugin) if declares(&plugin, rest) => {
                extra_route(&plugin, rest, &method, query, body).await
            }
            _ => Err(unmatched(&method)),
        };
    };
    require(&method, &[Method::POST])?;
    let plugin = lookup(&app, params.name())?;
    supports(&plugin, hook)?;
    match hook {
        // The archive is stored on disk, then streamed to the plugin: no size limit, never
        // whole in memory.
        Hook::Restore => restore(&app, &plugin, body).await,
        Hook::Backup => {
            let options = read_json(body).await?;
            require_object(&options)?;
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
            let body = read_json(body).await?;
            require_object(&body)?;
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

/// Size of the pieces the stored archive is handed to the plugin in.
const RESTORE_CHUNK: usize = 64 * 1024;

/// Stores the uploaded archive on disk (never whole in memory), then feeds it to the plugin
/// chunk by chunk. An upload that breaks off never reaches the plugin.
async fn restore(app: &App, plugin: &Plugin, body: Body) -> ApiResult {
    let mut file = spool(app, body).await?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, String>>(8);
    tokio::spawn(async move {
        loop {
            let mut buf = BytesMut::with_capacity(RESTORE_CHUNK);
            let chunk = match file.read_buf(&mut buf).await {
                Ok(0) => return, // the end
                Ok(_) => Ok(buf.freeze()),
                // The plugin's read fails with it: nothing cut off is restored.
                Err(e) => Err(format!("cannot read the stored archive: {e}")),
            };
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                return; // the plugin stopped reading, or it was told
            }
        }
    });
    plugin.restore(rx).await?;
    Ok(empty())
}

/// How much of an upload is written between two free-space checks.
const ROOM_CHECK: usize = 4 << 20;

/// Writes the request body to an anonymous file under the state directory (0600, gone once
/// dropped) and returns it rewound.
async fn spool(app: &App, body: Body) -> Result<tokio::fs::File, ApiError> {
    let stored = |e: std::io::Error| ApiError::internal(format!("cannot store the archive: {e}"));
    let dir = app.with_state(|s| s.path().with_file_name(UPLOADS));
    let file = tokio::task::spawn_blocking(move || uploads::anonymous_file(&dir))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(stored)?;
    let check = file.try_clone().map_err(stored)?;
    let mut file = tokio::fs::File::from_std(file);
    let mut stream = body.into_data_stream();
    let mut since_check = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("cannot read request body: {e}")))?;
        // Every few MiB: an upload never fills the state disk (the file goes with the error).
        since_check += chunk.len();
        if since_check >= ROOM_CHECK {
            since_check = 0;
            if !uploads::has_room(&check).map_err(stored)? {
                return Err(ApiError::new(
                    507,
                    "not enough free space on the state disk to store the archive",
                ));
            }
        }
        file.write_all(&chunk).await.map_err(stored)?;
    }
    file.flush().await.map_err(stored)?;
    file.rewind().await.map_err(stored)?;
    Ok(file)
}
