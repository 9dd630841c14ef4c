//! The error a hook returns, and the error texts the SDK answers with.

use crate::abi::PluginError;

/// An error a hook returns; `status` picks the HTTP status the API answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The HTTP status (400 bad input, 404, 500 failure, 501 not supported, ...).
    pub status: u16,
    /// The error text the API's user sees.
    pub message: String,
}

impl Error {
    /// An error with any status.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Error {
            status,
            message: message.into(),
        }
    }
    /// 400: the request is wrong; nothing was changed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }
    /// 500: the operation failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, message)
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }
    /// Upstream's answer to an application action it does not know: 500
    /// `unsupported action '<action>'`.
    pub fn unsupported_action(action: &str) -> Self {
        Self::internal(format!("unsupported action '{action}'"))
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<PluginError> for Error {
    fn from(e: PluginError) -> Self {
        Error::new(e.status, e.message.into_string())
    }
}

impl From<Error> for PluginError {
    fn from(e: Error) -> Self {
        PluginError::new(e.status, e.message)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::internal(e.to_string())
    }
}

/// The result of a hook or of a host call: [`Error`] unless said otherwise.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The upstream error text of a service without reset support.
pub const RESET_NOT_SUPPORTED: &str = "reset isn't supported by this service";
/// The upstream error text of an unsupported application hook.
pub const NOT_SUPPORTED: &str = "not supported";

/// How the message of an error produced by a caught panic begins; the host marks such a
/// plugin degraded.
pub const PANIC_PREFIX: &str = "plugin panicked";
