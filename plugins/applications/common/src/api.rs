//! A client for an application daemon's local API: HTTP over its unix socket through the
//! host ([`Host::http`]), answers in the Incus-style envelope
//! (`{"type": "sync"|"async"|"error", "status_code", "error_code", "error", "metadata"}`).
//!
//! Every error names the daemon and the call, and carries the daemon's own error text:
//! `Incus: POST /1.0/networks: Network name already in use`.

use std::time::Duration;

use plugin_api::net::{Request, Response};
use plugin_api::sdk::retry;
use plugin_api::{Error, Host, Result};
use serde::Deserialize;
use serde_json::Value;

/// How many times [`Api::wait_ready`] asks, and the pause between attempts.
pub const READY_ATTEMPTS: usize = 10;
/// See [`READY_ATTEMPTS`].
pub const READY_PAUSE: Duration = Duration::from_millis(500);

/// One daemon's local API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Api {
    /// The daemon's name as errors show it (`Incus`, `Migration Manager`).
    pub daemon: String,
    /// The socket (an absolute OS path).
    pub socket: String,
    /// How long connecting and each read or write may stall.
    pub timeout: Duration,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    status_code: i64,
    #[serde(default)]
    error_code: i64,
    #[serde(default)]
    error: String,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    metadata: Value,
}

/// A failed call: the HTTP-ish code the daemon gave (its `error_code`, else the HTTP
/// status) and the error text.
struct Failed {
    code: i64,
    text: String,
}

impl Api {
    pub fn new(daemon: &str, socket: &str, timeout: Duration) -> Self {
        Api {
            daemon: daemon.to_string(),
            socket: socket.to_string(),
            timeout,
        }
    }

    fn request(&self, method: &str, path: &str) -> Request {
        let mut r = Request::get(format!("http://unix{path}"));
        r.method = method.to_string();
        r.unix_socket = Some(self.socket.clone());
        r.use_proxy = false;
        r.stall_timeout_ms = self.timeout.as_millis().min(u64::MAX as u128) as u64;
        r
    }

    fn error(&self, method: &str, path: &str, text: &str) -> Error {
        Error::internal(format!("{}: {method} {path}: {text}", self.daemon))
    }

    fn exchange(
        &self,
        host: &Host,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<std::result::Result<Envelope, Failed>> {
        let mut request = self.request(method, path);
        let data = match body {
            Some(v) => {
                request = request.header("Content-Type", "application/json");
                serde_json::to_vec(v).map_err(|e| Error::internal(e.to_string()))?
            }
            None => vec![],
        };
        let response = host
            .http(&request, &data)
            .map_err(|e| self.error(method, path, &e.message))?;
        Ok(decode(&response))
    }

    /// Makes a call and returns the answer's `metadata`. An `async` answer is waited for
    /// (`GET <operation>/wait`) and must succeed.
    pub fn call(
        &self,
        host: &Host,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        match self.exchange(host, method, path, body)? {
            Ok(env) if env.kind == "async" => self.wait_operation(host, method, path, &env),
            Ok(env) => Ok(env.metadata),
            Err(f) => Err(self.error(method, path, &f.text)),
        }
    }

    fn wait_operation(
        &self,
        host: &Host,
        method: &str,
        path: &str,
        env: &Envelope,
    ) -> Result<Value> {
        let op = if env.operation.is_empty() {
            match env.metadata.get("id").and_then(Value::as_str) {
                Some(id) => format!("/1.0/operations/{id}"),
                None => {
                    return Err(self.error(method, path, "an async answer without an operation"))
                }
            }
        } else {
            env.operation.clone()
        };
        let wait = format!("{op}/wait");
        let done = match self.exchange(host, "GET", &wait, None)? {
            Ok(env) => env.metadata,
            Err(f) => return Err(self.error(method, path, &f.text)),
        };
        let code = done.get("status_code").and_then(Value::as_i64).unwrap_or(0);
        if code == 200 {
            return Ok(done.get("metadata").cloned().unwrap_or(Value::Null));
        }
        let err = done.get("err").and_then(Value::as_str).unwrap_or_default();
        let text = if err.is_empty() {
            format!("the operation ended with status code {code}")
        } else {
            err.to_string()
        };
        Err(self.error(method, path, &text))
    }

    /// `GET path`: its metadata.
    pub fn get(&self, host: &Host, path: &str) -> Result<Value> {
        self.call(host, "GET", path, None)
    }

    /// `GET path`: its metadata, or `None` when the daemon answers 404.
    pub fn get_opt(&self, host: &Host, path: &str) -> Result<Option<Value>> {
        match self.exchange(host, "GET", path, None)? {
            Ok(env) => Ok(Some(env.metadata)),
            Err(f) if f.code == 404 => Ok(None),
            Err(f) => Err(self.error("GET", path, &f.text)),
        }
    }

    /// `PUT path` with `body`.
    pub fn put(&self, host: &Host, path: &str, body: &Value) -> Result<Value> {
        self.call(host, "PUT", path, Some(body))
    }

    /// `POST path` with `body`.
    pub fn post(&self, host: &Host, path: &str, body: &Value) -> Result<Value> {
        self.call(host, "POST", path, Some(body))
    }

    /// `GET path` of a file endpoint (Incus's `/1.0/instances/<name>/files?path=`): the raw
    /// body of a 200 answer; any other answer is an error with the daemon's text.
    pub fn get_file(&self, host: &Host, path: &str) -> Result<Vec<u8>> {
        let response = host
            .http(&self.request("GET", path), &[])
            .map_err(|e| self.error("GET", path, &e.message))?;
        if response.status == 200 {
            return Ok(response.body);
        }
        match decode(&response) {
            Err(f) => Err(self.error("GET", path, &f.text)),
            Ok(_) => Err(self.error(
                "GET",
                path,
                &format!("HTTP {} instead of the file", response.status),
            )),
        }
    }

    /// `POST path` of a file endpoint with `data` as the body and `headers` (Incus's
    /// `X-Incus-mode` and the like); the answer must be a success.
    pub fn post_file(
        &self,
        host: &Host,
        path: &str,
        headers: &[(&str, &str)],
        data: &[u8],
    ) -> Result<()> {
        let mut request = self
            .request("POST", path)
            .header("Content-Type", "application/octet-stream");
        for &(name, value) in headers {
            request = request.header(name, value);
        }
        let response = host
            .http(&request, data)
            .map_err(|e| self.error("POST", path, &e.message))?;
        match decode(&response) {
            Ok(_) => Ok(()),
            Err(f) => Err(self.error("POST", path, &f.text)),
        }
    }

    /// Asks `GET /1.0` until the daemon answers ([`READY_ATTEMPTS`] times,
    /// [`READY_PAUSE`] apart); the error names the daemon and its last failure.
    pub fn wait_ready(&self, host: &Host) -> Result<()> {
        self.wait_ready_with(host, READY_ATTEMPTS, READY_PAUSE)
    }

    /// [`Api::wait_ready`] with other limits (tests).
    pub fn wait_ready_with(&self, host: &Host, attempts: usize, pause: Duration) -> Result<()> {
        retry(attempts, pause, None, || self.get(host, "/1.0").map(drop)).map_err(|e| {
            Error::internal(format!(
                "{} did not answer on {} after {attempts} attempts: {}",
                self.daemon, self.socket, e.message
            ))
        })
    }
}

/// The envelope of a successful (`sync` 200 or `async` 100) answer, or the failure.
fn decode(response: &Response) -> std::result::Result<Envelope, Failed> {
    let env: Envelope = match serde_json::from_slice(&response.body) {
        Ok(env) => env,
        Err(_) => {
            let text = String::from_utf8_lossy(&response.body);
            let text = text.trim();
            return Err(Failed {
                code: response.status as i64,
                text: if text.is_empty() || text.len() > 200 {
                    format!("HTTP {} without an Incus-style JSON body", response.status)
                } else {
                    format!("HTTP {}: {text}", response.status)
                },
            });
        }
    };
    match env.kind.as_str() {
        "sync" if (200..300).contains(&response.status) => Ok(env),
        "async" if (200..300).contains(&response.status) => Ok(env),
        "error" => Err(Failed {
            code: if env.error_code != 0 {
                env.error_code
            } else {
                response.status as i64
            },
            text: if env.error.is_empty() {
                format!("HTTP {}", response.status)
            } else {
                env.error.clone()
            },
        }),
        _ => Err(Failed {
            code: response.status as i64,
            text: format!(
                "unexpected answer: HTTP {}, type {:?}, status code {}",
                response.status, env.kind, env.status_code
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_envelope_decides_success_and_the_daemons_text_is_kept() {
        let ok = decode(&response(
            200,
            r#"{"type":"sync","status_code":200,"metadata":{"a":1}}"#,
        ));
        assert_eq!(ok.ok().unwrap().metadata, serde_json::json!({"a": 1}));
        let err = decode(&response(
            404,
            r#"{"type":"error","error_code":404,"error":"Network not found"}"#,
        ))
        .err()
        .unwrap();
        assert_eq!((err.code, err.text.as_str()), (404, "Network not found"));
        let html = decode(&response(502, "Bad gateway")).err().unwrap();
        assert_eq!(html.text, "HTTP 502: Bad gateway");
        let odd = decode(&response(200, r#"{"type":"what"}"#)).err().unwrap();
        assert!(odd.text.starts_with("unexpected answer"), "{}", odd.text);
    }
}
