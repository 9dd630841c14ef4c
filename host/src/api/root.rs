//! `GET /` and `GET /1.0`.

use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use serde::Serialize;

use super::proxy::api_root;
use super::response::sync;
use super::{require, ApiError, ApiResult, AppState};
use crate::system::info::Environment;

pub async fn root(method: Method, headers: HeaderMap) -> ApiResult {
    require(&method, &[Method::GET])?;
    Ok(sync(&[api_root(&headers)]))
}

#[derive(Serialize)]
struct Info {
    environment: Environment,
}

/// `GET /1.0`. The state lock is held only to copy the stored next release; the files are
/// read after it is released.
pub async fn info(State(app): State<AppState>, method: Method) -> Result<Response, ApiError> {
    require(&method, &[Method::GET])?;
    let next = app.with_state(|s| s.doc().os.next_release.clone());
    let environment = app
        .info
        .environment(&next, app.is_ready())
        .map_err(ApiError::internal)?;
    Ok(sync(&Info { environment }))
}
