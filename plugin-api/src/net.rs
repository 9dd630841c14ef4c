//! Network requests a plugin asks the host to make (since 1.2): no plugin carries its own
//! HTTP or TLS stack. The plugin says what to fetch, from where, and with which TLS
//! settings; the host makes the request, and for a download streams the body through
//! SHA-256 (and gzip) to the target file with bounded memory and reports progress.
//!
//! These cross [`crate::abi::HostOps::http`] and [`crate::abi::HostOps::download`] as JSON.

use serde::{Deserialize, Serialize};

/// The largest body [`crate::abi::HostOps::http`] sends or returns (16 MiB): anything
/// bigger is a download.
pub const MAX_HTTP_BODY: usize = 16 * 1024 * 1024;

/// What the host's error says when a server does not present the pinned certificate
/// ([`Tls::pinned_pem`]): a provider that falls back to the public CAs looks for it.
pub const PIN_MISMATCH: &str = "the server's certificate is not the pinned one";

/// How the host checks the server, and what it presents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tls {
    /// PEM certificates to trust instead of the system's CAs (a private CA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// A PEM certificate pinned as the only one trusted: the server must present exactly
    /// it (its name and dates are not checked, as a pin replaces the CA chain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned_pem: Option<String>,
    /// A PEM client certificate (with [`Tls::client_key_pem`]) to present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert_pem: Option<String>,
    /// The PEM private key of [`Tls::client_cert_pem`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key_pem: Option<String>,
    /// Refuse anything older than TLS 1.3.
    pub tls13_only: bool,
}

/// One HTTP request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// `GET`, `POST`, `PUT`, `DELETE`, ...
    pub method: String,
    /// `https://host[:port]/path?query` or `http://...`; with [`Request::unix_socket`] the
    /// host part is ignored (`http://unix/1.0/...`).
    pub url: String,
    /// Extra request headers (`User-Agent`, `Content-Type`, authentication).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// TLS settings for `https` URLs.
    #[serde(default)]
    pub tls: Tls,
    /// Go through the system proxy (`https_proxy`/`http_proxy`/`no_proxy` of the daemon's
    /// environment). Operations Center traffic turns it off, as upstream does.
    #[serde(default = "yes")]
    pub use_proxy: bool,
    /// Talk HTTP over this unix socket (an absolute OS path under the root prefix)
    /// instead of TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix_socket: Option<String>,
    /// How long connecting and each read or write may stall, in milliseconds (0: the
    /// host's default of 30 s). A download that makes progress is never cut off.
    #[serde(default)]
    pub stall_timeout_ms: u64,
}

fn yes() -> bool {
    true
}

impl Request {
    /// A `GET` of `url` with default settings.
    pub fn get(url: impl Into<String>) -> Self {
        Request {
            method: "GET".into(),
            url: url.into(),
            headers: vec![],
            tls: Tls::default(),
            use_proxy: true,
            unix_socket: None,
            stall_timeout_ms: 0,
        }
    }

    /// The same request with a header added.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// The status line and headers of a response, as [`crate::abi::HostOps::http`] returns
/// them (as JSON, beside the body's bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseHead {
    /// The HTTP status.
    pub status: u16,
    /// Response headers, names in lower case, in the order received.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

/// A whole response, as the SDK's `Host::http` gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// Response headers, names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body (at most [`MAX_HTTP_BODY`]).
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A file to fetch: the request, where the body goes, and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Download {
    /// The request (usually a `GET`).
    pub request: Request,
    /// Absolute OS path of the file to write (under the root prefix, inside the plugin's
    /// declared paths). It is replaced atomically once the body is complete and verified;
    /// on any failure it is left as it was.
    pub target: String,
    /// Permission bits of the written file.
    #[serde(default = "default_mode")]
    pub mode: u32,
    /// The expected SHA-256 (lower-case hex) of the body as served (before
    /// decompression). Empty: not checked.
    #[serde(default)]
    pub sha256: String,
    /// Decompress the body with gzip on the way (a body that is not gzip fails).
    #[serde(default)]
    pub gunzip: bool,
    /// Refuse (and stop) once more than this many bytes would be written (0: no cap).
    #[serde(default)]
    pub max_bytes: u64,
}

fn default_mode() -> u32 {
    0o644
}

/// What [`crate::abi::HostOps::download`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadResult {
    /// Bytes received (as served).
    pub received: u64,
    /// Bytes written to the target.
    pub written: u64,
    /// SHA-256 of the body as served, lower-case hex.
    pub sha256: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_default_to_the_proxy() {
        let r: Request = serde_json::from_str(r#"{"method":"GET","url":"https://x/"}"#).unwrap();
        assert!(r.use_proxy);
        assert_eq!(r, Request::get("https://x/"));
        let resp = Response {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: vec![0, 255, 10],
        };
        assert_eq!(resp.header("Content-Type"), Some("text/plain"));
        assert_eq!(resp.header("x-none"), None);
    }
}
