//! Network requests plugins make through their host (plugin-api 1.2): the [`Net`] adapter
//! behind `HostOps::http` and `HostOps::download`, and where download progress goes
//! ([`Progress`]).
//!
//! [`NoNet`] refuses every request (a host that offers no network); the real client is
//! built with the `net` feature ([`Client`]); both share the download [`pipeline`].

use plugin_api::net::{Download, DownloadResult, Request, Response};

#[cfg(feature = "net")]
mod client;
pub mod pipeline;

#[cfg(feature = "net")]
pub use client::{Client, Proxies, DEFAULT_STALL};

use crate::host_ops::Files;
use crate::PlatformError;

/// `url` as logs and error texts show it: without its query, which may carry a token.
pub fn shown_url(url: &str) -> &str {
    url.split_once('?').map_or(url, |(u, _)| u)
}

/// Where download progress goes: the daemon shows it in the update status.
pub trait Progress: Send + Sync {
    /// `done` bytes of `target` received so far, of `total` when the server said.
    fn progress(&self, plugin: &str, target: &str, done: u64, total: Option<u64>);
}

/// Progress nobody watches.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn progress(&self, _: &str, _: &str, _: u64, _: Option<u64>) {}
}

/// The network as one plugin's host handle sees it.
pub trait Net: Send + Sync {
    /// One request with its body in memory (each way at most
    /// [`plugin_api::net::MAX_HTTP_BODY`]).
    fn http(&self, plugin: &str, request: &Request, body: &[u8])
        -> Result<Response, PlatformError>;

    /// Streams `download.request`'s body to `download.target` through `files` (whose write
    /// allow-list applies), verifying and replacing the target atomically; progress goes
    /// to `progress`.
    fn download(
        &self,
        plugin: &str,
        download: &Download,
        files: &dyn Files,
        progress: &dyn Progress,
    ) -> Result<DownloadResult, PlatformError>;
}

/// A host without network access: every request is refused with a clear error.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoNet;

const NO_NET: &str = "this host makes no network requests";

impl Net for NoNet {
    fn http(&self, _: &str, _: &Request, _: &[u8]) -> Result<Response, PlatformError> {
        Err(PlatformError(NO_NET.into()))
    }
    fn download(
        &self,
        _: &str,
        _: &Download,
        _: &dyn Files,
        _: &dyn Progress,
    ) -> Result<DownloadResult, PlatformError> {
        Err(PlatformError(NO_NET.into()))
    }
}
