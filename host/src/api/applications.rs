//! `/1.0/applications`: every loaded application plugin, dispatched by name.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::Response;
use bytes::BytesMut;
use futures_util::StreamExt;
use plugin_api::application::{BackupSpec, PluginState};
use plugin_api::sdk::archive;
use plugin_api::sdk::NOT_SUPPORTED;
use plugin_api::Hook;
use plugin_host::app_backup;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::body::{read_json, read_object_or_default, require_entity, require_object};
use super::plugins::{declares, extra_route};
use super::proxy;
use super::response::{empty, sync_raw};
use super::uri::Params;
use super::{require, unmatched, ApiError, ApiResult, App, AppState};
use crate::platform::uploads;
use crate::plugins::Plugin;
use crate::system::applications::manage;

/// Where uploads wait, next to the state file (on the state disk: not a tmpfs, not memory).
const UPLOADS: &str = "uploads";

/// The application installed as `name`: 404 otherwise (before any method check).
fn lookup(app: &App, name: &str) -> Result<Arc<Plugin>, ApiError> {
    Ok(manage::installed_plugin(app, name)?)
}

fn supports(plugin: &Plugin, hook: Hook) -> Result<(), ApiError> {
    if plugin.manifest.has(hook) {
        Ok(())
    } else {
        Err(ApiError::internal(NOT_SUPPORTED))
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct InstallBody {
    name: String,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct BackupOptions {
    complete: bool,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct SwitchBody {
    version: String,
}

/// `GET /1.0/applications` lists the installed applications (sorted URLs);
/// `POST` installs one.
pub async fn list(
    State(app): State<AppState>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    if method == Method::POST {
        let req: InstallBody = read_object_or_default(body).await?;
        return match manage::install(&app, &req.name).await? {
            manage::Install::Done | manage::Install::Replacing => Ok(empty()),
        };
    }
    require(&method, &[Method::GET])?;
    let mut names: Vec<String> = manage::all_installed(&app)
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    names.sort();
    let urls: Vec<String> = names
        .iter()
        .map(|n| proxy::url(&headers, &["applications", n]))
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
            let out = manage::call(&app, &plugin, Hook::Get).await?;
            Ok(view(&app, &plugin, &out))
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

/// The plugin's `get` answer (`{"state": {"friendly_version"}, "config"}`) with the host's
/// state around it: `{"state": {is_primary, initialized, friendly_version, version,
/// available_versions, last_restored}, "config": ..}`, the config as the plugin wrote it.
fn view(app: &App, plugin: &Plugin, out: &[u8]) -> Response {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct FromPlugin<'a> {
        #[serde(borrow)]
        state: Option<&'a RawValue>,
        #[serde(borrow)]
        config: Option<&'a RawValue>,
    }
    let parsed: FromPlugin = serde_json::from_slice(out).unwrap_or_default();
    let state: PluginState = parsed
        .state
        .and_then(|s| serde_json::from_str(s.get()).ok())
        .unwrap_or_default();
    let state = serde_json::to_string(&manage::state_view(app, plugin, &state))
        .expect("a state serializes");
    let config = parsed.config.map(RawValue::get).unwrap_or("{}");
    sync_raw(write_object(&[("state", state.as_str()), ("config", config)]).into_bytes())
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
    const VERBS: [&str; 9] = [
        ":backup",
        ":restore",
        ":factory-reset",
        ":restart",
        ":action",
        ":remove",
        ":check-update",
        ":switch-version",
        ":debug",
    ];
    if !VERBS.contains(&rest) {
        return match lookup(&app, params.name()) {
            Ok(plugin) if declares(&plugin, rest) => {
                extra_route(&plugin, rest, &method, query, body).await
            }
            _ => Err(unmatched(&method)),
        };
    }
    require(&method, &[Method::POST])?;
    let plugin = lookup(&app, params.name())?;
    match rest {
        // The archive is stored on disk, then streamed to the plugin: no size limit, never
        // whole in memory.
        ":restore" => match plugin.manifest.backup.clone() {
            Some(spec) => declared_restore(&app, plugin, spec, body).await,
            None => {
                supports(&plugin, Hook::Restore)?;
                restore(&app, &plugin, body).await
            }
        },
        ":backup" => match plugin.manifest.backup.clone() {
            Some(spec) => {
                let options: BackupOptions = read_object_or_default(body).await?;
                declared_backup(&app, spec, options.complete).await
            }
            None => {
                supports(&plugin, Hook::Backup)?;
                let options = read_json(body).await?;
                require_object(&options)?;
                backup(&plugin, options).await
            }
        },
        ":factory-reset" => {
            // Answered first: the work may restart the application that proxies this API.
            manage::factory_reset(&app, plugin);
            Ok(empty())
        }
        ":restart" => {
            manage::deferred(&app, plugin, Hook::Restart, "restart");
            Ok(empty())
        }
        ":check-update" => {
            manage::check_update(&app, plugin);
            Ok(empty())
        }
        ":remove" => {
            manage::remove(&app, params.name()).await?;
            Ok(empty())
        }
        ":switch-version" => {
            let req: SwitchBody = read_object_or_default(body).await?;
            manage::switch_version(&app, params.name(), &req.version).await?;
            Ok(empty())
        }
        ":action" => {
            supports(&plugin, Hook::Action)?;
            let body = read_json(body).await?;
            require_object(&body)?;
            Ok(sync_raw(plugin.hook(Hook::Action, body).await?))
        }
        ":debug" if !plugin.manifest.debug_logs.is_empty() => {
            // Upstream's strict decode: a body that does not decode is a 500.
            let body = read_json(body).await?;
            let req: DebugBody =
                serde_json::from_slice(&body).map_err(|e| ApiError::internal(e.to_string()))?;
            if req.action != "get-logs" {
                return Err(ApiError::not_implemented());
            }
            debug_logs(&app, plugin.manifest.debug_logs.clone()).await
        }
        _ => {
            if declares(&plugin, rest) {
                return extra_route(&plugin, rest, &method, query, body).await;
            }
            Err(ApiError::not_implemented())
        }
    }
}

#[derive(serde::Deserialize)]
struct DebugBody {
    action: String,
    #[serde(default, rename = "config")]
    _config: std::collections::BTreeMap<String, String>,
}

/// `:debug` `get-logs`: the application's log directories as a gzip tar streamed as it is
/// made, entries named by their path without the leading `/` (as `tar -zcf - /run/incus/`
/// names them). Links are stored as links; sockets, FIFOs and devices are left out; a
/// directory that does not exist is skipped.
async fn debug_logs(app: &App, dirs: Vec<String>) -> ApiResult {
    let root = app.root.clone();
    Ok(streamed("application/octet-stream", move |out| {
        let gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        tar.follow_symlinks(false);
        let fs = crate::platform::files::RootFs::new(&root);
        for dir in &dirs {
            let Some(real) = fs.host_dir(dir).map_err(|e| e.to_string())? else {
                continue;
            };
            let name = std::path::PathBuf::from(dir.trim_start_matches('/'));
            add_tree(&mut tar, &real, &name).map_err(|e| format!("{dir}: {e}"))?;
        }
        tar.into_inner()
            .and_then(|gz| gz.finish())
            .map(drop)
            .map_err(|e| e.to_string())
    }))
}

/// Appends `real` (a directory) and everything below it as `name`, not following links,
/// leaving out what is neither a file, a directory nor a link. A file that vanishes on the
/// way (logs rotate) is skipped.
fn add_tree<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    real: &std::path::Path,
    name: &std::path::Path,
) -> std::io::Result<()> {
    tar.append_path_with_name(real, name)?;
    let mut children: Vec<_> = std::fs::read_dir(real)?.collect::<Result<_, _>>()?;
    children.sort_by_key(|e| e.file_name());
    for child in children {
        let path = child.path();
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let child_name = name.join(child.file_name());
        let kind = meta.file_type();
        if kind.is_dir() {
            add_tree(tar, &path, &child_name)?;
        } else if kind.is_file() || kind.is_symlink() {
            match tar.append_path_with_name(&path, &child_name) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                r => r?,
            }
        }
    }
    Ok(())
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

/// Writes into a channel, in pieces of [`BACKUP_CHUNK`], from a blocking thread.
pub(crate) struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    buf: BytesMut,
}

/// Size of the pieces a declared backup is sent in.
const BACKUP_CHUNK: usize = 256 * 1024;

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::other("the client went away"))
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= BACKUP_CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// A backup of an application that declares its data directory: the host writes it. A dry
/// run first, so that an error is a JSON answer; then the archive streams as it is made.
async fn declared_backup(app: &App, spec: BackupSpec, complete: bool) -> ApiResult {
    let root = app.root.clone();
    let (r, s) = (root.clone(), spec.clone());
    tokio::task::spawn_blocking(move || app_backup::check(&r, &s, complete))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::new(e.status, e.message))?;
    Ok(streamed("application/gzip", move |out| {
        app_backup::write(&root, &spec, complete, out)
            .map(drop)
            .map_err(|e| e.message)
    }))
}

/// A response whose body `write` produces on a blocking thread, sent in pieces of
/// [`BACKUP_CHUNK`] as it is made (never whole in memory). A failure of `write` cuts the
/// transfer (the client sees it truncated) and is logged.
pub(crate) fn streamed(
    content_type: &'static str,
    write: impl FnOnce(&mut ChannelWriter) -> Result<(), String> + Send + 'static,
) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let task = tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter {
            tx,
            buf: BytesMut::with_capacity(BACKUP_CHUNK),
        };
        let r = write(&mut out).and_then(|()| out.send().map_err(|e| e.to_string()));
        if let Err(e) = &r {
            tracing::warn!(error = %e, content_type, "cannot write the streamed answer");
        }
        r
    });
    let stream = futures_util::stream::unfold((rx, Some(task)), |(mut rx, task)| async move {
        if let Some(b) = rx.recv().await {
            return Some((Ok::<_, std::io::Error>(b), (rx, task)));
        }
        match task?.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some((Err(std::io::Error::other(e)), (rx, None))),
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), (rx, None))),
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A restore of an application that declares its data directory: the upload is stored,
/// extracted beside the directory with every entry checked (a bad archive is a 400 and
/// changes nothing), answered, and one second later swapped in with the declared units
/// stopped around it; then the plugin's `restored` hook, and `last_restored`.
async fn declared_restore(
    app: &Arc<App>,
    plugin: Arc<Plugin>,
    spec: BackupSpec,
    body: Body,
) -> ApiResult {
    // One restore at a time per application, from the upload until the swap is done: a
    // second one would remove the first's extraction under it.
    let pending = RestorePending::take(&app.root, plugin.name()).ok_or_else(|| {
        ApiError::new(
            409,
            format!(
                "a restore of application '{}' is already in progress",
                manage::context(app, &plugin).name
            ),
        )
    })?;
    let file = spool(app, body).await?.into_std().await;
    let root = app.root.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        app_backup::prepare(
            &root,
            &spec,
            std::io::BufReader::new(file),
            &archive::Limits::default(),
        )
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::new(e.status, e.message))?;
    let app = app.clone();
    tokio::spawn(async move {
        let _pending = pending;
        tokio::time::sleep(manage::DEFERRED).await;
        let name = manage::context(&app, &plugin).name;
        let units = app.platform.units.clone();
        let applied = tokio::task::spawn_blocking(move || prepared.apply(units.as_ref()))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.message));
        match applied {
            Ok(summary) => {
                tracing::info!(application = %name, entries = summary.entries, "restore swapped in");
                if let Err(e) = manage::restored_now(&app, &plugin) {
                    tracing::warn!(application = %name, error = %e.message, "cannot record the restore time");
                }
                if let Err(e) = manage::call(&app, &plugin, Hook::Restored).await {
                    tracing::error!(application = %name, error = %e.message, "the application's restored hook failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "Failed to restore application '{name}'"),
        }
    });
    Ok(empty())
}

/// The declared restores under way, by root prefix and plugin: held from the upload until
/// the swap is done.
struct RestorePending(std::path::PathBuf, String);

static RESTORES: std::sync::Mutex<std::collections::BTreeSet<(std::path::PathBuf, String)>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

impl RestorePending {
    fn take(root: &std::path::Path, plugin: &str) -> Option<RestorePending> {
        let key = (root.to_path_buf(), plugin.to_string());
        let mut set = RESTORES.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(key.clone())
            .then(|| RestorePending(key.0, key.1))
    }
}

impl Drop for RestorePending {
    fn drop(&mut self) {
        let key = (std::mem::take(&mut self.0), std::mem::take(&mut self.1));
        RESTORES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }
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
