//! `/1.0/debug`: the journal, processes and kernel facts.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method};

use super::proxy;
use super::response::sync;
use super::uri::Query;
use super::{require, ApiError, ApiResult, AppState};
use crate::platform::journal::{self, LogQuery};
use crate::system::{debug, script};

/// Upstream's five entries, in upstream's order.
const ENTRIES: [&str; 5] = ["kernel", "log", "processes", ":run-script", "secureboot"];

pub async fn list(method: Method, headers: HeaderMap) -> ApiResult {
    require(&method, &[Method::GET])?;
    let urls: Vec<String> = ENTRIES
        .iter()
        .map(|e| proxy::url(&headers, &["debug", e]))
        .collect();
    Ok(sync(&urls))
}

/// Journal entries as objects with journald's field names. Filters come from the query
/// string, the first value of a repeated key winning (as upstream's `Form.Get`).
pub async fn log(
    State(app): State<AppState>,
    method: Method,
    RawQuery(query): RawQuery,
) -> ApiResult {
    require(&method, &[Method::GET])?;
    let p = Query::parse(query.as_deref())?;
    let param = |k: &str| p.get(k).filter(|s| !s.is_empty()).map(str::to_string);
    let q = LogQuery {
        unit: param("unit"),
        boot: param("boot"),
        entries: param("entries"),
        since: param("since"),
        until: param("until"),
    };
    let root = app.root.clone();
    let entries = tokio::task::spawn_blocking(move || journal::read(&root, &q))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| match e {
            Ok(bad) => ApiError::bad_request(bad.0),
            Err(failed) => ApiError::internal(failed.0),
        })?;
    Ok(sync(&entries))
}

/// `ps fauxww`, as text (through the platform's command adapter: refused, with the reason,
/// when the daemon runs offline).
pub async fn processes(State(app): State<AppState>, method: Method) -> ApiResult {
    require(&method, &[Method::GET])?;
    let argv: Vec<String> = ["ps", "fauxww"].iter().map(|s| s.to_string()).collect();
    let commands = app.platform.commands.clone();
    let out = tokio::task::spawn_blocking(move || {
        commands.run(&argv, b"", std::time::Duration::from_secs(10))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(e.0))?;
    if out.status != 0 {
        return Err(ApiError::internal(format!(
            "Failed to run: ps fauxww: exit status {} ({})",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(sync(&String::from_utf8_lossy(&out.stdout)))
}

/// Kernel release, architecture, CPU baseline and loaded modules.
pub async fn kernel(State(app): State<AppState>, method: Method) -> ApiResult {
    require(&method, &[Method::GET])?;
    let kernel = app.platform.kernel.clone();
    let commands = app.platform.commands.clone();
    let k = tokio::task::spawn_blocking(move || {
        // The CPU levels come from the dynamic loader this daemon runs under; upstream's
        // rule: the loader must run and exit 0 for a baseline to be reported.
        let help = crate::platform::kernel::dynamic_loader().and_then(|ld| {
            let argv = [ld.to_string_lossy().into_owned(), "--help".to_string()];
            commands
                .run(&argv, b"", std::time::Duration::from_secs(5))
                .ok()
                .filter(|o| o.status == 0)
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        });
        debug::kernel(&kernel, help.as_deref())
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(ApiError::internal)?;
    Ok(sync(&k))
}

/// `POST /1.0/debug/:run-script`: runs a script signed through the support CA and answers
/// what it printed (see [`script`]). A body over 1 MiB is a 413, an empty or unsigned one a
/// 400, a signature the support CA does not vouch for a 403; a failing script is a 500
/// with the error and the output.
pub async fn run_script(State(app): State<AppState>, method: Method, body: Body) -> ApiResult {
    require(&method, &[Method::POST])?;
    let signed = super::body::read_limited(body, script::BODY_LIMIT).await?;
    let commands = app.platform.commands.clone();
    let root = app.root.clone();
    let output =
        tokio::task::spawn_blocking(move || script::run_signed(commands.as_ref(), &root, &signed))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| {
                let (status, message) = e.status_and_message();
                ApiError::new(status, message)
            })?;
    Ok(sync(&output))
}
