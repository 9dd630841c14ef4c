//! Bringing a release's files to disk through the host's download capability: the host
//! checks the SHA-256 of the body as served, gunzips `.gz` files on the way and replaces
//! the target atomically.

use plugin_api::net::{Download, Request};
use plugin_api::provider::{FetchOrder, ReleaseFile};
use plugin_api::{Error, Host, Result};

/// Refuses a file whose name could leave its directory (in the URL or on disk).
pub fn check_file_name(file: &ReleaseFile) -> Result<()> {
    let bad = file.filename.is_empty()
        || file.filename.starts_with('/')
        || file.filename.contains('\\')
        || file
            .filename
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        || file
            .filename
            .chars()
            .any(|c| c.is_control() || c == '?' || c == '#');
    if bad {
        return Err(Error::internal(format!(
            "refusing the release file name {:?}",
            file.filename
        )));
    }
    Ok(())
}

/// The URL of `file` of release `version` under `base` (`<base>/<version>/<filename>`).
pub fn file_url(base: &str, version: &str, file: &ReleaseFile) -> String {
    format!("{}/{version}/{}", base.trim_end_matches('/'), file.filename)
}

/// Downloads every file of `order.release` from `url_of(file)` to
/// `<target_dir>/<target_name>` with `headers`, checking its SHA-256 (when the release
/// gives one) and gunzipping `.gz` files. Returns the paths written, in order.
pub fn fetch_release(
    host: &Host,
    order: &FetchOrder,
    headers: &[(String, String)],
    url_of: impl Fn(&ReleaseFile) -> String,
) -> Result<Vec<String>> {
    fetch_release_with(host, order, |file| {
        let mut request = Request::get(url_of(file));
        request.headers = headers.to_vec();
        Ok(request)
    })
}

/// [`fetch_release`] with the request of each file made by `request_of`, just before the
/// file is fetched (a provider that signs every request makes a fresh token there).
pub fn fetch_release_with(
    host: &Host,
    order: &FetchOrder,
    request_of: impl Fn(&ReleaseFile) -> Result<Request>,
) -> Result<Vec<String>> {
    if !order.target_dir.starts_with('/') {
        return Err(Error::internal(format!(
            "the target directory {:?} is not absolute",
            order.target_dir
        )));
    }
    let mut written = vec![];
    for file in &order.release.files {
        check_file_name(file)?;
        let request = request_of(file)?;
        // Errors name the URL without its query (which may carry a token).
        let url = request
            .url
            .split_once('?')
            .map_or(request.url.as_str(), |(u, _)| u)
            .to_string();
        let target = format!(
            "{}/{}",
            order.target_dir.trim_end_matches('/'),
            file.target_name()
        );
        let download = Download {
            request,
            target: target.clone(),
            mode: 0o644,
            sha256: file.sha256.to_ascii_lowercase(),
            gunzip: file.filename.ends_with(".gz"),
            max_bytes: 0,
        };
        host.download(&download).map_err(|e| {
            Error::new(
                e.status,
                format!("while downloading {url}, got error '{}'", e.message),
            )
        })?;
        written.push(target);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> ReleaseFile {
        ReleaseFile {
            filename: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn names_that_leave_the_release_are_refused() {
        for good in ["x86_64/IncusOS_1.efi.gz", "SecureBootKeys_1.tar"] {
            check_file_name(&file(good)).unwrap();
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "x86_64/../../x",
            "a//b",
            "a/./b",
            "a?b",
            "a\nb",
        ] {
            assert!(check_file_name(&file(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls_join_base_version_and_name() {
        let f = file("x86_64/incus.raw.gz");
        assert_eq!(
            file_url("https://h/os/", "202601010000", &f),
            "https://h/os/202601010000/x86_64/incus.raw.gz"
        );
        assert_eq!(
            file_url("file:///media/usb", "1", &f),
            "file:///media/usb/1/x86_64/incus.raw.gz"
        );
    }
}
