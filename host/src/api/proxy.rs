//! The `X-IncusOS-Proxy` header: whether a request came through a proxy, and the prefix of
//! every URL the API returns.
//!
//! A request carrying the header in any form (empty, blank, not UTF-8, several values) is a
//! proxied request: a proxy adds its value after whatever the client sent, so the header's
//! mere presence is the only thing a client cannot forge away. For URLs the first value
//! wins, and URLs are built the way upstream builds them, with Go's `url.JoinPath`
//! semantics: `/os` gives `/os/1.0`, `os` gives `os/1.0`, spaces are escaped, absolute URLs
//! keep their scheme and host, and a value that is not a URL gives empty URLs.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;

use super::ApiError;

pub const HEADER: &str = "x-incusos-proxy";

/// Whether the request carries the proxy header at all.
pub fn is_proxied(headers: &HeaderMap) -> bool {
    headers.contains_key(HEADER)
}

/// Refuses proxied requests (`403 not authorized`) before anything else: the extractor of
/// socket-only endpoints (`/internal/*` and the write-message alias). Put it first.
pub struct NotProxied;

impl<S: Send + Sync> FromRequestParts<S> for NotProxied {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        if is_proxied(&parts.headers) {
            Err(ApiError::forbidden())
        } else {
            Ok(NotProxied)
        }
    }
}

/// The API root for a request: the first proxy value (`/` when absent or blank) joined
/// with `1.0`; empty when the value is not a URL (as upstream, which ignores the error).
pub fn api_root(headers: &HeaderMap) -> String {
    let first = headers
        .get_all(HEADER)
        .iter()
        .next()
        .map(|v| v.as_bytes().trim_ascii())
        .unwrap_or_default();
    let prefix: &[u8] = if first.is_empty() { b"/" } else { first };
    join_path(prefix, "1.0").unwrap_or_default()
}

/// A URL below the API root, one segment at a time as upstream joins them
/// (`url(h, &["services", "iscsi"])` is `/1.0/services/iscsi` without a proxy).
pub fn url(headers: &HeaderMap, segments: &[&str]) -> String {
    segments.iter().fold(api_root(headers), |base, seg| {
        join_path(base.as_bytes(), seg).unwrap_or_default()
    })
}

/// Go's `url.JoinPath(base, elem)`: `base` parsed as a URL reference, `elem` joined onto
/// its path with `path.Join` (which cleans `.` and `..`), the result written back in its
/// escaped form. `None` where Go's parser fails (control bytes, bad `%` escapes, a colon in
/// a relative first segment, a bad port).
pub fn join_path(base: &[u8], elem: &str) -> Option<String> {
    let mut u = GoUrl::parse(base)?;
    let escaped = u.path.clone();
    let joined = if escaped.starts_with('/') {
        clean_join(&escaped, elem)
    } else {
        clean_join(&format!("/{escaped}"), elem)[1..].to_string()
    };
    // Go re-parses the joined path; an element with a bad escape fails here.
    let decoded = unescape(joined.as_bytes())?;
    u.path = if valid_encoded(joined.as_bytes(), Mode::Path) {
        joined
    } else {
        escape(&decoded, Mode::Path)
    };
    u.has_path = !decoded.is_empty();
    Some(u.to_string())
}

/// Go's `path.Join(a, b)` for a non-empty `a`: joined with a slash, then cleaned.
fn clean_join(a: &str, b: &str) -> String {
    let joined = if b.is_empty() {
        a.to_string()
    } else {
        format!("{a}/{b}")
    };
    clean(&joined)
}

/// Go's `path.Clean`.
fn clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = vec![];
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|s| *s != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            s => out.push(s),
        }
    }
    let body = out.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".to_string(),
        (false, false) => body,
    }
}

/// The parts of a parsed URL reference that `String()` writes back.
#[derive(Debug, Default)]
struct GoUrl {
    scheme: String,
    opaque: String,
    /// `userinfo@host[:port]`, as written (after `//`).
    authority: Option<String>,
    has_host: bool,
    omit_host: bool,
    /// The escaped path (what `EscapedPath` returns).
    path: String,
    has_path: bool,
    force_query: bool,
    query: String,
    /// The escaped fragment.
    fragment: String,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Path,
    Fragment,
}

fn should_escape(c: u8, mode: Mode) -> bool {
    if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~') {
        return false;
    }
    match c {
        b'$' | b'&' | b'+' | b',' | b'/' | b':' | b';' | b'=' | b'?' | b'@' => {
            mode == Mode::Path && c == b'?'
        }
        b'!' | b'(' | b')' | b'*' => mode == Mode::Path,
        _ => true,
    }
}

fn valid_encoded(s: &[u8], mode: Mode) -> bool {
    s.iter().all(|&c| {
        matches!(
            c,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'['
                | b']'
                | b'%'
        ) || !should_escape(c, mode)
    })
}

fn escape(s: &[u8], mode: Mode) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s {
        if should_escape(c, mode) {
            out.push_str(&format!("%{c:02X}"));
        } else {
            out.push(c as char);
        }
    }
    out
}

/// Strict percent-decoding (`None` on a `%` not followed by two hex digits).
fn unescape(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            let text = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(text, 16).ok()?);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl GoUrl {
    fn parse(raw: &[u8]) -> Option<GoUrl> {
        if raw.iter().any(|&c| c < 0x20 || c == 0x7f) {
            return None;
        }
        let mut u = GoUrl::default();
        let (mut rest, frag) = match raw.iter().position(|&c| c == b'#') {
            Some(i) => (&raw[..i], Some(&raw[i + 1..])),
            None => (raw, None),
        };
        if let Some(frag) = frag {
            let decoded = unescape(frag)?;
            u.fragment = if valid_encoded(frag, Mode::Fragment) {
                lossy(frag)
            } else {
                escape(&decoded, Mode::Fragment)
            };
        }
        if rest.is_empty() {
            return Some(u);
        }
        // The scheme: a letter, then letters, digits, `+`, `-`, `.`, up to a colon.
        for (i, &c) in rest.iter().enumerate() {
            if c.is_ascii_alphabetic() {
                continue;
            }
            if c.is_ascii_digit() || matches!(c, b'+' | b'-' | b'.') {
                if i == 0 {
                    break;
                }
                continue;
            }
            if c == b':' {
                if i == 0 {
                    return None; // missing protocol scheme
                }
                u.scheme = lossy(&rest[..i]).to_ascii_lowercase();
                rest = &rest[i + 1..];
            }
            break;
        }
        let questions = rest.iter().filter(|&&c| c == b'?').count();
        if rest.ends_with(b"?") && questions == 1 {
            u.force_query = true;
            rest = &rest[..rest.len() - 1];
        } else if let Some(i) = rest.iter().position(|&c| c == b'?') {
            u.query = lossy(&rest[i + 1..]);
            rest = &rest[..i];
        }
        if !rest.starts_with(b"/") {
            if !u.scheme.is_empty() {
                u.opaque = lossy(rest);
                return Some(u);
            }
            let first = rest.split(|&c| c == b'/').next().unwrap_or_default();
            if first.contains(&b':') {
                return None; // first path segment in URL cannot contain colon
            }
        }
        if (!u.scheme.is_empty() || !rest.starts_with(b"///")) && rest.starts_with(b"//") {
            let after = &rest[2..];
            let end = after.iter().position(|&c| c == b'/').unwrap_or(after.len());
            let authority = &after[..end];
            let host = match authority.iter().rposition(|&c| c == b'@') {
                Some(i) => &authority[i + 1..],
                None => authority,
            };
            // A port must be digits (IPv6 literals keep their colons inside brackets).
            let port_at = host
                .iter()
                .rposition(|&c| c == b':')
                .filter(|&i| !host[i..].contains(&b']'));
            if let Some(i) = port_at {
                if !host[i + 1..].iter().all(u8::is_ascii_digit) {
                    return None;
                }
            }
            unescape(host)?;
            u.has_host = !host.is_empty();
            u.authority = Some(lossy(authority));
            rest = &after[end..];
        } else if !u.scheme.is_empty() && rest.starts_with(b"/") {
            u.omit_host = true;
        }
        let decoded = unescape(rest)?;
        u.has_path = !decoded.is_empty();
        u.path = if valid_encoded(rest, Mode::Path) {
            lossy(rest)
        } else {
            escape(&decoded, Mode::Path)
        };
        Some(u)
    }
}

impl std::fmt::Display for GoUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::new();
        if !self.scheme.is_empty() {
            out.push_str(&self.scheme);
            out.push(':');
        }
        if !self.opaque.is_empty() {
            out.push_str(&self.opaque);
        } else {
            let has_user = self.authority.as_ref().is_some_and(|a| a.contains('@'));
            // The authority, unless the URL had a scheme and no `//` at all.
            let authority = !self.scheme.is_empty() || self.has_host || has_user;
            if authority && !(self.omit_host && !self.has_host && !has_user) {
                if self.has_host || self.has_path || has_user {
                    out.push_str("//");
                }
                out.push_str(self.authority.as_deref().unwrap_or_default());
            }
            if !self.path.is_empty() && !self.path.starts_with('/') && self.has_host {
                out.push('/');
            }
            if out.is_empty() && self.path.split('/').next().unwrap_or("").contains(':') {
                out.push_str("./");
            }
            out.push_str(&self.path);
        }
        if self.force_query || !self.query.is_empty() {
            out.push('?');
            out.push_str(&self.query);
        }
        if !self.fragment.is_empty() {
            out.push('#');
            out.push_str(&self.fragment);
        }
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn root(values: &[&[u8]]) -> String {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(HEADER, HeaderValue::from_bytes(v).unwrap());
        }
        api_root(&h)
    }

    #[test]
    fn root_follows_the_first_header_value() {
        assert_eq!(root(&[]), "/1.0");
        assert_eq!(root(&[b"/", b"/os"]), "/1.0");
        assert_eq!(root(&[b"/os"]), "/os/1.0");
        assert_eq!(root(&[b"/site/srv1/"]), "/site/srv1/1.0");
        // Empty or blank: the default prefix (HTTP strips the blanks).
        assert_eq!(root(&[b""]), "/1.0");
        assert_eq!(root(&[b"  "]), "/1.0");
        assert_eq!(root(&[b"", b"/os"]), "/1.0");
    }

    /// Each case is what Go's `url.JoinPath(value, "1.0")` returns.
    #[test]
    fn values_are_joined_as_gos_url_join_path() {
        for (value, want) in [
            (&b"os"[..], "os/1.0"),
            (b"/os", "/os/1.0"),
            (b"/os/", "/os/1.0"),
            (b"/my site", "/my%20site/1.0"),
            (b"/my%20site", "/my%20site/1.0"),
            (b"/a%2Fb", "/a%2Fb/1.0"),
            (b"https://example.com/os", "https://example.com/os/1.0"),
            (b"https://example.com", "https://example.com/1.0"),
            (
                b"https://user@example.com:8443/x/",
                "https://user@example.com:8443/x/1.0",
            ),
            (b"HTTPS://example.com/os", "https://example.com/os/1.0"),
            (b"/a/../b", "/b/1.0"),
            (b"../../os", "os/1.0"),
            (b"/os?target=a", "/os/1.0?target=a"),
            (b"/os#top", "/os/1.0#top"),
            (b"/\xc3\xb6", "/%C3%B6/1.0"),
            (b"/\xff", "/%FF/1.0"),
            (b"/a!b", "/a!b/1.0"),
            (b"./a:b", "./a:b/1.0"),
            (b"urn:x", "urn:x"),
            (b"%zz", ""),
            (b"a\tb", ""),
            (b":os", ""),
            (b"1:os", ""),
            (b"https://example.com:port/", ""),
        ] {
            assert_eq!(
                join_path(value, "1.0").as_deref().unwrap_or(""),
                want,
                "{}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn list_urls_join_each_segment() {
        let mut h = HeaderMap::new();
        assert_eq!(url(&h, &["debug", ":run-script"]), "/1.0/debug/:run-script");
        h.append(HEADER, HeaderValue::from_static("os"));
        assert_eq!(url(&h, &["services", "iscsi"]), "os/1.0/services/iscsi");
        let mut h = HeaderMap::new();
        h.append(HEADER, HeaderValue::from_static("%zz"));
        assert_eq!(url(&h, &["services", "iscsi"]), "services/iscsi");
    }
}
