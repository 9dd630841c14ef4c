//! `/internal/*`: socket-only endpoints. Each handler refuses proxied requests first
//! (the [`NotProxied`] extractor); unknown paths below `/internal` are plain 404s.

use axum::body::Body;
use axum::http::Method;
use serde_json::Value;

use super::body::read_object;
use super::proxy::NotProxied;
use super::response::empty;
use super::{require, ApiError, ApiResult};

/// The levels a message may be written at: upstream's slog names, case-insensitive, with an
/// optional `+n`/`-n` offset (`INFO+2` is between INFO and WARN, so it logs as INFO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

fn parse_level(s: &str) -> Result<Level, String> {
    let fail = |why: String| format!("slog: level string {}: {why}", crate::go::quote(s));
    let upper = s.to_uppercase();
    let (name, offset) = match upper.find(['+', '-']) {
        Some(i) => {
            let text = &s[s.find(['+', '-']).unwrap_or(i)..];
            let n: i64 = text.parse().map_err(|e: std::num::ParseIntError| {
                let why = match e.kind() {
                    std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                        "value out of range"
                    }
                    _ => "invalid syntax",
                };
                fail(format!(
                    "strconv.Atoi: parsing {}: {why}",
                    crate::go::quote(text)
                ))
            })?;
            (&upper[..i], n)
        }
        None => (upper.as_str(), 0),
    };
    // slog's numeric levels: DEBUG -4, INFO 0, WARN 4, ERROR 8.
    let base: i64 = match name {
        "DEBUG" => -4,
        "INFO" => 0,
        "WARN" => 4,
        "ERROR" => 8,
        _ => return Err(fail("unknown name".into())),
    };
    Ok(match base.saturating_add(offset) {
        n if n < 0 => Level::Debug,
        n if n < 4 => Level::Info,
        n if n < 8 => Level::Warn,
        _ => Level::Error,
    })
}

/// `POST /internal/tui/:write-message` (and the seed's `/1.0/debug/tui/:write-message`,
/// which is not listed anywhere): writes the message to the daemon's log at that level.
/// Checks in upstream's order: proxy, method, body (the level first, as slog's decoder
/// fails on it), then the message. The log formatting keeps the text on one line.
pub async fn write_message(_: NotProxied, method: Method, body: Body) -> ApiResult {
    require(&method, &[Method::POST])?;
    let msg: serde_json::Map<String, Value> = read_object(body).await?;
    // A missing level is INFO; anything but a string fails slog's decoder (which unquotes
    // the JSON text first), and so does a string that names no level.
    let level = match msg.get("level") {
        None => Level::Info,
        Some(Value::String(l)) => parse_level(l).map_err(ApiError::bad_request)?,
        Some(_) => return Err(ApiError::bad_request("invalid syntax")),
    };
    let text = match msg.get("message") {
        None | Some(Value::Null) => "",
        Some(Value::String(m)) => m.as_str(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid request body: message: invalid type: {}, expected a string",
                kind(other)
            )))
        }
    };
    if text.is_empty() {
        return Err(ApiError::bad_request("no log message provided"));
    }
    match level {
        Level::Debug => tracing::debug!("{text}"),
        Level::Info => tracing::info!("{text}"),
        Level::Warn => tracing::warn!("{text}"),
        Level::Error => tracing::error!("{text}"),
    }
    Ok(empty())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_slog_names_and_offsets() {
        assert_eq!(parse_level("info"), Ok(Level::Info));
        assert_eq!(parse_level("WARN"), Ok(Level::Warn));
        assert_eq!(parse_level("Error"), Ok(Level::Error));
        assert_eq!(parse_level("DEBUG"), Ok(Level::Debug));
        assert_eq!(parse_level("INFO+4"), Ok(Level::Warn));
        assert_eq!(parse_level("INFO-1"), Ok(Level::Debug));
        assert_eq!(
            parse_level("LOUD"),
            Err("slog: level string \"LOUD\": unknown name".into())
        );
        assert_eq!(
            parse_level(""),
            Err("slog: level string \"\": unknown name".into())
        );
        assert_eq!(
            parse_level("INFO+x"),
            Err(
                "slog: level string \"INFO+x\": strconv.Atoi: parsing \"+x\": invalid syntax"
                    .into()
            )
        );
        assert_eq!(
            parse_level("info+99999999999999999999"),
            Err("slog: level string \"info+99999999999999999999\": strconv.Atoi: parsing \"+99999999999999999999\": value out of range".into())
        );
    }
}
