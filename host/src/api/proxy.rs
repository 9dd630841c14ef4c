//! The `X-IncusOS-Proxy` header: the prefix of every URL the API returns.
//!
//! The first value of the header wins (a proxy appends its own value after the client's),
//! and `1.0` is joined onto it: no header gives `/1.0`, `/os` gives `/os/1.0`.

use axum::http::HeaderMap;

pub const HEADER: &str = "x-incusos-proxy";

/// The first value of the proxy header, if present and not empty.
pub fn proxy_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(HEADER)
        .iter()
        .next()
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

/// The API root for a request: `<first proxy value>` joined with `1.0`.
pub fn api_root(headers: &HeaderMap) -> String {
    let base = proxy_value(headers).unwrap_or("/");
    join(base, "1.0")
}

/// Joins path segments the way a URL path join does: one slash between parts, a leading
/// slash, no empty segments.
pub fn join(base: &str, rest: &str) -> String {
    let mut out = String::from("/");
    for seg in base.split('/').chain(rest.split('/')) {
        if seg.is_empty() || seg == "." {
            continue;
        }
        if seg == ".." {
            if let Some(i) = out.trim_end_matches('/').rfind('/') {
                out.truncate(i + 1);
            }
            continue;
        }
        if !out.ends_with('/') {
            out.push('/');
        }
        out.push_str(seg);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn root_follows_the_first_header_value() {
        let mut h = HeaderMap::new();
        assert_eq!(api_root(&h), "/1.0");
        h.append(HEADER, HeaderValue::from_static("/"));
        h.append(HEADER, HeaderValue::from_static("/os"));
        assert_eq!(api_root(&h), "/1.0");
        let mut h = HeaderMap::new();
        h.append(HEADER, HeaderValue::from_static("/os"));
        assert_eq!(api_root(&h), "/os/1.0");
        let mut h = HeaderMap::new();
        h.append(HEADER, HeaderValue::from_static("/site/srv1/"));
        assert_eq!(api_root(&h), "/site/srv1/1.0");
    }
}
