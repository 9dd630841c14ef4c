//! `/internal/*`: socket-only endpoints (proxied requests are refused by the router's guard).

use axum::body::Bytes;
use axum::http::Method;
use serde::Deserialize;

use super::response::empty;
use super::{require, ApiError, ApiResult};

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    level: Option<String>,
    #[serde(default)]
    message: String,
}

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
    let upper = s.to_ascii_uppercase();
    let (name, offset) = match upper.find(['+', '-']) {
        Some(i) => {
            let n: i32 = upper[i..]
                .parse()
                .map_err(|_| format!("slog: level string {s:?}: invalid offset"))?;
            (&upper[..i], n)
        }
        None => (upper.as_str(), 0),
    };
    // slog's numeric levels: DEBUG -4, INFO 0, WARN 4, ERROR 8.
    let base = match name {
        "DEBUG" => -4,
        "INFO" => 0,
        "WARN" => 4,
        "ERROR" => 8,
        _ => return Err(format!("slog: level string {s:?}: unknown name")),
    };
    Ok(match base + offset {
        n if n < 0 => Level::Debug,
        n if n < 4 => Level::Info,
        n if n < 8 => Level::Warn,
        _ => Level::Error,
    })
}

/// `POST /internal/tui/:write-message` (and the seed's `/1.0/debug/tui/:write-message`,
/// which is not listed anywhere): writes the message to the daemon's log at that level.
pub async fn write_message(method: Method, body: Bytes) -> ApiResult {
    require(&method, &[Method::POST])?;
    let msg: Message =
        plugin_api::sdk::decode(&body).map_err(|e| ApiError::new(e.status, e.message))?;
    let level = match msg.level.as_deref() {
        None | Some("") => Level::Info,
        Some(l) => parse_level(l).map_err(ApiError::bad_request)?,
    };
    if msg.message.is_empty() {
        return Err(ApiError::bad_request("no log message provided"));
    }
    let text = msg.message.as_str();
    match level {
        Level::Debug => tracing::debug!("{text}"),
        Level::Info => tracing::info!("{text}"),
        Level::Warn => tracing::warn!("{text}"),
        Level::Error => tracing::error!("{text}"),
    }
    Ok(empty())
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
        assert!(parse_level("LOUD").is_err());
        assert!(parse_level("INFO+x").is_err());
    }
}
