//! `/1.0/debug`: the journal, processes and kernel facts.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method};
use serde::Deserialize;

use super::proxy::api_root;
use super::response::sync;
use super::{require, ApiError, ApiResult, AppState};
use crate::platform::journal::{self, LogQuery};
use crate::system::debug;

/// Exactly upstream's five entries, in upstream's order.
const ENTRIES: [&str; 5] = ["kernel", "log", "processes", ":run-script", "secureboot"];

pub async fn list(method: Method, headers: HeaderMap) -> ApiResult {
    require(&method, &[Method::GET])?;
    let root = api_root(&headers);
    let urls: Vec<String> = ENTRIES
        .iter()
        .map(|e| format!("{root}/debug/{e}"))
        .collect();
    Ok(sync(&urls))
}

#[derive(Deserialize, Default)]
pub struct LogParams {
    unit: Option<String>,
    boot: Option<String>,
    entries: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// Journal entries as objects with journald's field names.
pub async fn log(
    State(app): State<AppState>,
    method: Method,
    Query(p): Query<LogParams>,
) -> ApiResult {
    require(&method, &[Method::GET])?;
    let q = LogQuery {
        unit: p.unit.filter(|s| !s.is_empty()),
        boot: p.boot.filter(|s| !s.is_empty()),
        entries: p.entries.filter(|s| !s.is_empty()),
        since: p.since.filter(|s| !s.is_empty()),
        until: p.until.filter(|s| !s.is_empty()),
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

/// `ps fauxww`, as text.
pub async fn processes(method: Method) -> ApiResult {
    require(&method, &[Method::GET])?;
    let argv: Vec<String> = ["ps", "fauxww"].iter().map(|s| s.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        crate::platform::exec::run_with_timeout(&argv, b"", std::time::Duration::from_secs(10))
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
    let k = tokio::task::spawn_blocking(move || {
        let ld = [
            "/lib64/ld-linux-x86-64.so.2".to_string(),
            "--help".to_string(),
        ];
        let help =
            crate::platform::exec::run_with_timeout(&ld, b"", std::time::Duration::from_secs(5))
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
        debug::kernel(&kernel, &help)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(ApiError::internal)?;
    Ok(sync(&k))
}
