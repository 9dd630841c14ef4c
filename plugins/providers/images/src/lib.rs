//! The `images` update provider (the default): the images server's signed index
//! (`<server_url>/index.sjson`, an S/MIME signed message) verified with the real openssl
//! against the root CA and the update CA (see [`incus_osd_provider_common::trust`]),
//! cached for an hour; each release's files at `<server_url>/<version>/<filename>`,
//! fetched through the host's download capability (SHA-256 checked, `.gz` unpacked).
//!
//! Config keys as upstream: `server_url`, `update_ca` (PEM), `token`,
//! `authentication_by_query_param`. Authentication with a `token` (a TPM-backed key
//! registered with the server) is not implemented: a config with a token is refused with
//! a 501, and without one registration is unsupported, as upstream.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use incus_osd_provider_common::{config, fetch, lookup_in, verified_index, Index, Trust};
use plugin_api::net::Request;
use plugin_api::provider::{errors, FetchOrder, Registration, Release, Target, UpdateContext};
use plugin_api::sdk::retry;
use plugin_api::{Error, Host, Provider, Result, Undo};
use serde::{Deserialize, Serialize};

/// Upstream's default server.
pub const DEFAULT_SERVER_URL: &str = "https://images.linuxcontainers.org/os";
/// How long a verified index is used before it is fetched again.
pub const CACHE_FOR: Duration = Duration::from_secs(3600);
/// Attempts at fetching the index, and the pause between them.
const ATTEMPTS: usize = 5;
const PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The server (default [`DEFAULT_SERVER_URL`]).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub server_url: String,
    /// The update CA (PEM) the index must be signed through, instead of the shipped one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub update_ca: String,
    /// A registration token for authenticated access (not supported yet).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// `"true"`: authenticate with a `token` query parameter rather than a header.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub authentication_by_query_param: String,
}

impl Config {
    /// The server URL in effect, without a trailing slash.
    pub fn server_url(&self) -> &str {
        let url = if self.server_url.is_empty() {
            DEFAULT_SERVER_URL
        } else {
            &self.server_url
        };
        url.trim_end_matches('/')
    }
}

#[derive(Serialize)]
pub struct State {}

/// The verified index, for the config it was fetched with.
struct Cached {
    at: Instant,
    server_url: String,
    update_ca: String,
    index: Index,
}

pub struct Images {
    host: Host,
    cache: Mutex<Option<Cached>>,
}

/// The 501 a token gets.
pub const TOKEN_UNSUPPORTED: &str =
    "authentication with a token (token) is not supported by this images provider yet";

fn user_agent(context: &UpdateContext) -> (String, String) {
    (
        "User-Agent".to_string(),
        format!("{}/{}", context.os_name, context.running_version),
    )
}

impl Images {
    fn cache(&self) -> std::sync::MutexGuard<'_, Option<Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The verified index: the cached one when it is less than an hour old and was
    /// fetched with the same server and update CA, else a new one from the server.
    fn index(&self, config: &Config, context: &UpdateContext) -> Result<Index> {
        let server_url = config.server_url();
        if let Some(c) = self.cache().as_ref() {
            if c.at.elapsed() < CACHE_FOR
                && c.server_url == server_url
                && c.update_ca == config.update_ca
            {
                return Ok(c.index.clone());
            }
        }
        // Without the trust anchors nothing fetched could be verified: say so before
        // going to the network.
        let trust = Trust::load(&self.host, &config.update_ca)?;
        let url = format!("{server_url}/index.sjson");
        let request = Request::get(&url).header(user_agent(context).0, user_agent(context).1);
        let signed = retry(ATTEMPTS, PAUSE, None, || {
            let response = self.host.http(&request, b"")?;
            if response.status != 200 {
                return Err(Error::internal("server failed to return expected file"));
            }
            Ok(response.body)
        })
        .map_err(|e| Error::new(e.status, format!("cannot get {url}: {}", e.message)))?;
        let index = verified_index(&self.host, &signed, &trust)?;
        *self.cache() = Some(Cached {
            at: Instant::now(),
            server_url: server_url.to_string(),
            update_ca: config.update_ca.clone(),
            index: index.clone(),
        });
        Ok(index)
    }
}

impl Provider for Images {
    const NAME: &'static str = "images";
    const MULTI_LINE_FIELDS: &'static [&'static str] = &["update_ca"];
    type Config = Config;
    type State = State;

    fn new(host: Host) -> Result<Self> {
        Ok(Images {
            host,
            cache: Mutex::new(None),
        })
    }

    fn state(&self, _config: &Config) -> Result<State> {
        Ok(State {})
    }

    fn validate(&self, config: &Config) -> Result<()> {
        if !config.server_url.is_empty() {
            config::check_url("server_url", &config.server_url)?;
        }
        if !config.update_ca.is_empty() {
            config::check_certificates("update_ca", &config.update_ca)?;
        }
        config::check_bool(
            "authentication_by_query_param",
            &config.authentication_by_query_param,
        )?;
        if !config.token.is_empty() {
            return Err(Error::new(501, TOKEN_UNSUPPORTED));
        }
        Ok(())
    }

    fn update(&self, _undo: &mut Undo, old: &Config, new: &Config) -> Result<()> {
        if old != new {
            self.clear_cache();
        }
        Ok(())
    }

    fn refresh(&self, config: &Config, _reg: &Registration) -> Result<()> {
        if config.token.is_empty() {
            return Err(Error::internal(errors::REGISTRATION_UNSUPPORTED));
        }
        Ok(())
    }

    /// Upstream only forgets that it was registered (the host clears `registered`).
    fn deregister(&self, _config: &Config, _reg: &Registration) -> Result<()> {
        self.host
            .info("Server successfully deregistered from the 'images' provider");
        Ok(())
    }

    fn clear_cache(&self) {
        *self.cache() = None;
    }

    fn lookup(
        &self,
        config: &Config,
        context: &UpdateContext,
        target: &Target,
    ) -> Result<Option<Release>> {
        let index = self.index(config, context)?;
        Ok(lookup_in(&self.host, &index, context, target))
    }

    fn fetch(&self, config: &Config, order: &FetchOrder) -> Result<Vec<String>> {
        let base = config.server_url();
        fetch::fetch_release(&self.host, order, &[user_agent(&order.context)], |f| {
            fetch::file_url(base, &order.release.version, f)
        })
    }
}

plugin_api::export_provider!(Images);
