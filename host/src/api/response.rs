//! The response envelope and the one error type every handler returns.
//!
//! Success: `{"type":"sync","status":"Success","status_code":200,"operation":"",
//! "error_code":0,"error":"","metadata":...}`; error: `{"type":"error","status":"",
//! "status_code":0,"operation":"","error_code":N,"error":"...","metadata":null}` with the
//! HTTP status equal to `error_code`. Every key is always present, in this order, and the
//! body ends with a newline, as upstream clients expect.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::value::RawValue;

#[derive(Serialize)]
struct Envelope<'a, M: Serialize + ?Sized> {
    #[serde(rename = "type")]
    kind: &'a str,
    status: &'a str,
    status_code: u16,
    operation: &'a str,
    error_code: u16,
    error: &'a str,
    metadata: &'a M,
}

fn json_response(status: StatusCode, mut body: Vec<u8>) -> Response {
    body.push(b'\n');
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A sync success response around `metadata`.
pub fn sync<M: Serialize + ?Sized>(metadata: &M) -> Response {
    let body = serde_json::to_vec(&Envelope {
        kind: "sync",
        status: "Success",
        status_code: 200,
        operation: "",
        error_code: 0,
        error: "",
        metadata,
    });
    match body {
        Ok(b) => json_response(StatusCode::OK, b),
        Err(e) => ApiError::internal(format!("cannot encode response: {e}")).into_response(),
    }
}

/// A sync success whose metadata is JSON text produced elsewhere (a plugin). The text is
/// checked to be JSON; it is not re-encoded.
pub fn sync_raw(metadata: Vec<u8>) -> Response {
    let text = match String::from_utf8(metadata) {
        Ok(t) => t,
        Err(_) => return ApiError::internal("plugin returned non-UTF-8 output").into_response(),
    };
    match RawValue::from_string(text) {
        Ok(raw) => sync(&*raw),
        Err(e) => ApiError::internal(format!("plugin returned invalid JSON: {e}")).into_response(),
    }
}

/// The empty sync response (`metadata: {}`).
pub fn empty() -> Response {
    sync(&serde_json::Map::new())
}

/// The error every handler returns; rendered as the error envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: message.into(),
        }
    }
    pub fn not_found() -> Self {
        Self::new(404, "not found")
    }
    pub fn not_implemented() -> Self {
        Self::new(501, "not implemented")
    }
    pub fn forbidden() -> Self {
        Self::new(403, "not authorized")
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, message)
    }
}

impl From<crate::plugins::CallError> for ApiError {
    fn from(e: crate::plugins::CallError) -> Self {
        ApiError::new(e.status, e.message)
    }
}

/// Escapes `<`, `>` and `&` as upstream's error encoder does.
fn escape_html(json: Vec<u8>) -> Vec<u8> {
    if !json.iter().any(|b| matches!(b, b'<' | b'>' | b'&')) {
        return json;
    }
    let mut out = Vec::with_capacity(json.len() + 16);
    for b in json {
        match b {
            b'<' => out.extend_from_slice(b"\\u003c"),
            b'>' => out.extend_from_slice(b"\\u003e"),
            b'&' => out.extend_from_slice(b"\\u0026"),
            _ => out.push(b),
        }
    }
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.status.as_u16();
        let body = serde_json::to_vec(&Envelope {
            kind: "error",
            status: "",
            status_code: 0,
            operation: "",
            error_code: code,
            error: &self.message,
            metadata: &(),
        })
        .expect("error envelope serializes");
        let mut resp = json_response(self.status, escape_html(body));
        resp.headers_mut().insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        resp
    }
}

pub type ApiResult = Result<Response, ApiError>;
