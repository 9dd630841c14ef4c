//! Request bodies: the size limit for JSON bodies and the shape checks made before a body
//! reaches a plugin.
//!
//! Handlers take the raw [`Body`] and read it with [`read_json`] only once the name and the
//! method were checked (so an unknown name is a 404 whatever the body). Endpoints that take
//! an archive (restores) do not call [`read_json`]: they hand the [`Body`] on as a stream,
//! with no size limit and without buffering it.

use axum::body::{Body, Bytes, HttpBody};
use futures_util::StreamExt;
use serde::de::{Deserialize, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::ApiError;

/// The largest JSON body the API reads (configs, actions, messages). Upstream's configs
/// are a few KiB; this bounds what a queue of waiting changes can hold in memory.
pub const JSON_BODY_LIMIT: usize = 256 * 1024;

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        413,
        format!("request body too large (the limit is {} KiB)", limit / 1024),
    )
}

/// Reads a JSON request body of at most [`JSON_BODY_LIMIT`] bytes; a larger one is a 413
/// (at once when its declared length is larger, else as soon as the limit is crossed).
pub async fn read_json(body: Body) -> Result<Bytes, ApiError> {
    read_limited(body, JSON_BODY_LIMIT).await
}

/// Reads a request body of at most `limit` bytes, as [`read_json`] does.
pub async fn read_limited(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large(limit));
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("cannot read request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        if buf.is_empty() {
            buf = Vec::with_capacity(chunk.len());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// A strict JSON object body (at most [`JSON_BODY_LIMIT`]) decoded into `T`: an empty body,
/// JSON that is not an object, or a field of the wrong type is a 400 naming the problem
/// (and the field's path).
pub async fn read_object<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    decode_object(&read_json(body).await?)
}

/// [`read_object`] for a tolerant handler: an empty body is `T::default()`.
pub async fn read_object_or_default<T: DeserializeOwned + Default>(
    body: Body,
) -> Result<T, ApiError> {
    let body = read_json(body).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    decode_object(&body)
}

fn decode_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    require_object(body)?;
    plugin_api::sdk::decode(body).map_err(|e| ApiError::new(e.status, e.message))
}

/// Refuses a body that is JSON but not an object (`[{}]`, `null`, `1`, `"x"`): a struct
/// would otherwise decode from an array, field by field. An empty body and text that is not
/// JSON at all pass, for the decoder to name the problem.
pub fn require_object(body: &[u8]) -> Result<(), ApiError> {
    let found = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None | Some(b'{') => return Ok(()),
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'-' | b'0'..=b'9') => "a number",
        Some(_) => return Ok(()),
    };
    Err(ApiError::bad_request(format!(
        "invalid request body: expected a JSON object, found {found}"
    )))
}

/// Checks a `{"state": ..., "config": ...}` body (service and application PUTs) before
/// dispatch: an object whose `state`, when given, is an object or null, as upstream's
/// decoder requires of its struct (the host ignores the state's content). The config is
/// the plugin's to decode.
pub fn require_entity(body: &[u8]) -> Result<(), ApiError> {
    require_object(body)?;
    #[derive(serde::Deserialize)]
    struct Entity {
        #[serde(default)]
        #[allow(dead_code)]
        state: Option<Object>,
    }
    match serde_json::from_slice::<Entity>(body) {
        Err(e) if e.classify() == serde_json::error::Category::Data => Err(ApiError::bad_request(
            format!("invalid request body: state: {e}"),
        )),
        // Syntax errors are the plugin decoder's to report, with its field paths.
        _ => Ok(()),
    }
}

/// Any JSON object, its content skipped.
struct Object;

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Object;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Object)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_objects_pass() {
        for ok in ["{}", "  {\"a\": 1}", "", "  ", "{not json", "garbage"] {
            assert!(require_object(ok.as_bytes()).is_ok(), "{ok}");
        }
        for (bad, found) in [
            ("[{}]", "an array"),
            (" [\"WARN\",\"x\"]", "an array"),
            ("null", "null"),
            ("1", "a number"),
            ("-1", "a number"),
            ("\"x\"", "a string"),
            ("true", "a boolean"),
        ] {
            let e = require_object(bad.as_bytes()).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.ends_with(found), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn the_state_of_an_entity_must_be_an_object_or_null() {
        for ok in [
            r#"{"config": {}}"#,
            r#"{"state": {"a": [1]}, "config": {}}"#,
            r#"{"state": null, "config": {}}"#,
            r#"{"config": {"enabled": "yes"}}"#,
        ] {
            assert!(require_entity(ok.as_bytes()).is_ok(), "{ok}");
        }
        for bad in [
            r#"{"state": 5, "config": {}}"#,
            r#"{"state": [], "config": {}}"#,
            r#"{"state": "up", "config": {}}"#,
        ] {
            let e = require_entity(bad.as_bytes()).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(
                e.message
                    .starts_with("invalid request body: state: invalid type"),
                "{bad}: {}",
                e.message
            );
        }
    }
}
