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

pub async fn info(State(app): State<AppState>, method: Method) -> Result<Response, ApiError> {
    require(&method, &[Method::GET])?;
    let next = {
        let store = app.store.lock().unwrap_or_else(|p| p.into_inner());
        store.doc().os.next_release.clone()
    };
    let environment = app
        .info
        .environment(&next, app.is_ready())
        .map_err(ApiError::internal)?;
    Ok(sync(&Info { environment }))
}
