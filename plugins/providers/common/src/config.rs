//! Checks of provider config values, with the key named in every error (400).

use plugin_api::{Error, Result};

/// An `http://` or `https://` URL with a host, no query, fragment or white space.
pub fn check_url(key: &str, value: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::bad_request(format!(
            "invalid {key} {value:?}: {why}"
        )))
    };
    let rest = if let Some(r) = value.strip_prefix("https://") {
        r
    } else if let Some(r) = value.strip_prefix("http://") {
        r
    } else {
        return bad("it must start with https:// or http://");
    };
    if value.chars().any(|c| c.is_whitespace()) {
        return bad("it has white space");
    }
    if value.contains(['?', '#']) {
        return bad("it must not have a query or a fragment");
    }
    let host = rest.split('/').next().unwrap_or("");
    if host.contains('@') {
        // They would show in every log line and error that names the URL.
        return bad("it must not carry credentials");
    }
    if host.is_empty() || host.starts_with(':') || !plugin_api::validate::http_url(value) {
        return bad("it has no host");
    }
    Ok(())
}

/// One or more PEM certificates.
pub fn check_certificates(key: &str, value: &str) -> Result<()> {
    match crate::pem::certificates(value) {
        Ok(c) if !c.is_empty() => Ok(()),
        Ok(_) => Err(Error::bad_request(format!(
            "invalid {key}: no PEM certificate found"
        ))),
        Err(e) => Err(Error::bad_request(format!("invalid {key}: {}", e.message))),
    }
}

/// `""`, `"true"` or `"false"` (upstream's string booleans).
pub fn check_bool(key: &str, value: &str) -> Result<()> {
    match value {
        "" | "true" | "false" => Ok(()),
        _ => Err(Error::bad_request(format!(
            "invalid {key} {value:?}: it must be \"true\" or \"false\""
        ))),
    }
}

/// An absolute path without `.` or `..` components.
pub fn check_abs_path(key: &str, value: &str) -> Result<()> {
    if !value.starts_with('/') {
        return Err(Error::bad_request(format!(
            "invalid {key} {value:?}: it must be an absolute path"
        )));
    }
    if value.split('/').any(|s| s == "." || s == "..") {
        return Err(Error::bad_request(format!(
            "invalid {key} {value:?}: it must not have . or .. components"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for good in [
            "https://images.example.org/os",
            "http://192.0.2.1:8080",
            "https://[2001:db8::1]/mirror/",
        ] {
            check_url("server_url", good).unwrap();
        }
        for (bad, why) in [
            ("ftp://x/os", "it must start with https:// or http://"),
            (
                "images.example.org",
                "it must start with https:// or http://",
            ),
            ("https://", "it has no host"),
            ("https:///os", "it has no host"),
            (
                "https://x/os?token=1",
                "it must not have a query or a fragment",
            ),
            ("https://x/ os", "it has white space"),
            ("https://user:secret@x/os", "it must not carry credentials"),
            ("https://x:99999/os", "it has no host"),
        ] {
            let e = check_url("server_url", bad).unwrap_err();
            assert_eq!(e.status, 400);
            assert_eq!(e.message, format!("invalid server_url {bad:?}: {why}"));
        }
    }

    #[test]
    fn paths_and_booleans() {
        check_abs_path("path", "/media/usb").unwrap();
        assert_eq!(
            check_abs_path("path", "media").unwrap_err().message,
            "invalid path \"media\": it must be an absolute path"
        );
        assert!(check_abs_path("path", "/media/../etc").is_err());
        check_bool("b", "true").unwrap();
        check_bool("b", "").unwrap();
        assert!(check_bool("b", "yes").is_err());
    }
}
