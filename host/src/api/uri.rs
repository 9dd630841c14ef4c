//! Paths and query strings as upstream's Go server reads them.
//!
//! Routes match percent-decoded segments (`/1.0/servic%65s` is `/1.0/services`; `%2F` stays
//! inside its segment), path parameters are decoded bytes (a segment that is not UTF-8
//! matches no name: `/1.0/services/%FF` is a 404), and a query string is decoded as
//! `url.ParseQuery` does, the first value of a repeated key winning (`Form.Get`). Every
//! failure is an [`ApiError`], never one of axum's plain-text rejections.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::ApiError;

/// Bytes kept as they are in a canonical path segment (RFC 3986 `pchar` without `%`);
/// everything else is percent-encoded.
fn keep(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
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
        )
}

/// Percent-decodes leniently: a `%` not followed by two hex digits stays as it is.
pub fn decode(s: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            if let (Some(h), Some(l)) = (
                s.get(i + 1).copied().and_then(hex),
                s.get(i + 2).copied().and_then(hex),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// The path with every escaped segment in one canonical form (decoded, then only what must
/// be escaped escaped again), so that routes match what the segments mean. `None` when the
/// path has no escapes.
pub fn canonical_path(path: &str) -> Option<String> {
    if !path.contains('%') {
        return None;
    }
    let segments: Vec<String> = path
        .split('/')
        .map(|seg| {
            if !seg.contains('%') {
                return seg.to_string();
            }
            let mut out = String::with_capacity(seg.len());
            for c in decode(seg.as_bytes()) {
                if keep(c) {
                    out.push(c as char);
                } else {
                    out.push_str(&format!("%{c:02X}"));
                }
            }
            out
        })
        .collect();
    let canonical = segments.join("/");
    (canonical != path).then_some(canonical)
}

/// The parameters of the routes below a collection, `/1.0/<collection>/{name}` and
/// `/1.0/<collection>/{name}/{*rest}`, read from the path and percent-decoded. axum's own
/// parameter extractors refuse a value that is not UTF-8 with a plain-text answer; here it
/// is kept with replacement characters, so it matches no name.
pub struct Params {
    name: String,
    rest: String,
}

impl Params {
    fn from_path(path: &str) -> Params {
        Params::at_depth(path, 3)
    }

    /// The `{name}` and `{*rest}` of a path whose name is its `depth`-th segment (3 for
    /// `/1.0/<collection>/{name}`, 4 for `/1.0/system/provider/{name}`).
    pub fn at_depth(path: &str, depth: usize) -> Params {
        let text = |raw: &str| String::from_utf8_lossy(&decode(raw.as_bytes())).into_owned();
        let mut segments = path.splitn(depth + 2, '/').skip(depth);
        Params {
            name: text(segments.next().unwrap_or_default()),
            rest: text(segments.next().unwrap_or_default()),
        }
    }

    /// `{name}`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `{*rest}` (empty when the route has none).
    pub fn rest(&self) -> &str {
        &self.rest
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(Params::from_path(parts.uri.path()))
    }
}

/// A decoded query string: pairs in order, a repeated key keeping every value.
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Decodes `query` as Go's `url.ParseQuery`: `&`-separated `key=value` pairs, `+` is a
    /// space, a `;` in a key or a bad `%` escape is an error (400, Go's text).
    pub fn parse(query: Option<&str>) -> Result<Query, ApiError> {
        let mut pairs = vec![];
        let mut first_error = None;
        for part in query.unwrap_or_default().split('&') {
            if part.is_empty() {
                continue;
            }
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            if key.contains(';') {
                first_error.get_or_insert_with(|| "invalid semicolon separator in query".into());
                continue;
            }
            match (unescape_query(key), unescape_query(value)) {
                (Ok(k), Ok(v)) => pairs.push((k, v)),
                (Err(e), _) | (_, Err(e)) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(ApiError::bad_request(e)),
            None => Ok(Query(pairs)),
        }
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every key with its first value.
    pub fn first_values(&self) -> std::collections::BTreeMap<String, String> {
        let mut map = std::collections::BTreeMap::new();
        for (k, v) in &self.0 {
            map.entry(k.clone()).or_insert_with(|| v.clone());
        }
        map
    }
}

/// Go's `url.QueryUnescape` (bytes that are not UTF-8 become replacement characters).
fn unescape_query(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let pair = b
                    .get(i + 1..i + 3)
                    .filter(|p| p.iter().all(u8::is_ascii_hexdigit));
                let Some(pair) = pair else {
                    let bad: String = s[i..].chars().take(3).collect();
                    return Err(format!("invalid URL escape {bad:?}"));
                };
                let text = std::str::from_utf8(pair).unwrap_or("00");
                out.push(u8::from_str_radix(text, 16).unwrap_or(0));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_segments_get_one_canonical_form() {
        assert_eq!(canonical_path("/1.0/services"), None);
        assert_eq!(
            canonical_path("/1.0/servic%65s").as_deref(),
            Some("/1.0/services")
        );
        assert_eq!(
            canonical_path("/1.0/services/echo/%3Areset").as_deref(),
            Some("/1.0/services/echo/:reset")
        );
        // Already canonical: nothing to do.
        assert_eq!(canonical_path("/1.0/services/%FF"), None);
        assert_eq!(
            canonical_path("/1.0/services/%ff").as_deref(),
            Some("/1.0/services/%FF")
        );
        // A slash or a percent sign stays inside its segment.
        assert_eq!(
            canonical_path("/1.0/services/a%2fb").as_deref(),
            Some("/1.0/services/a%2Fb")
        );
        assert_eq!(
            canonical_path("/1.0/x/%zz").as_deref(),
            Some("/1.0/x/%25zz")
        );
        assert_eq!(canonical_path("/1.0/%2E%2E").as_deref(), Some("/1.0/.."));
    }

    #[test]
    fn parameters_are_read_from_the_path() {
        let p = Params::from_path("/1.0/services/%FF");
        assert_eq!((p.name(), p.rest()), ("\u{fffd}", ""));
        let p = Params::from_path("/1.0/services/a%20b/x/%2F/y");
        assert_eq!((p.name(), p.rest()), ("a b", "x///y"));
    }

    #[test]
    fn queries_decode_as_gos_parse_query() {
        let q = Query::parse(Some("unit=a&unit=b&x=a+b%21&flag&=v")).unwrap();
        assert_eq!(q.get("unit"), Some("a"));
        assert_eq!(q.get("x"), Some("a b!"));
        assert_eq!(q.get("flag"), Some(""));
        assert_eq!(q.get("missing"), None);
        assert_eq!(q.first_values()["unit"], "a");
        assert_eq!(
            Query::parse(Some("unit=%zz")).unwrap_err().message,
            "invalid URL escape \"%zz\""
        );
        assert_eq!(
            Query::parse(Some("unit=%4")).unwrap_err().message,
            "invalid URL escape \"%4\""
        );
        assert_eq!(
            Query::parse(Some("a;b=1")).unwrap_err().message,
            "invalid semicolon separator in query"
        );
        assert_eq!(Query::parse(None).unwrap().get("unit"), None);
    }
}
