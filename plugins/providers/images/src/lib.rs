//! The `images` update provider (the default): the images server's signed index
//! (`<server_url>/index.sjson`, an S/MIME signed message) verified with the real openssl
//! against the root CA and the update CA (see [`incus_osd_provider_common::trust`]),
//! cached for an hour; each release's files at `<server_url>/<version>/<filename>`,
//! fetched through the host's download capability (SHA-256 checked, `.gz` unpacked).
//!
//! Config keys as upstream: `server_url`, `update_ca` (PEM), `token`,
//! `authentication_by_query_param`. With a `token`, the machine registers a TPM-backed key
//! with the server (see [`auth`]) and every later request carries a fresh signed token, in
//! the `X-IncusOS-Authentication` header or, with `authentication_by_query_param: "true"`,
//! in a `token` query parameter. Without one, registration is unsupported, as upstream.

pub mod auth;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use incus_osd_provider_common::{config, fetch, lookup_in, verified_index, Index, Trust};
use plugin_api::net::Request;
use plugin_api::net::Response;
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
    /// A registration token: authenticated access with a TPM-backed key.
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

    /// Whether tokens travel as a query parameter rather than a header.
    pub fn by_query_param(&self) -> bool {
        self.authentication_by_query_param == "true"
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
    /// Held while the TPM key is used: one registration or token at a time.
    tpm: Mutex<()>,
}

/// The header a token travels in.
pub const AUTH_HEADER: &str = "X-IncusOS-Authentication";

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

    /// `request` with a fresh token for `machine_id`, when a token is configured.
    fn authenticated(
        &self,
        config: &Config,
        machine_id: &str,
        request: Request,
    ) -> Result<Request> {
        if config.token.is_empty() {
            return Ok(request);
        }
        let token = {
            let _tpm = self.tpm.lock().unwrap_or_else(|p| p.into_inner());
            auth::token(&self.host, machine_id)?
        };
        let mut request = request;
        if config.by_query_param() {
            let sep = if request.url.contains('?') { '&' } else { '?' };
            request.url = format!("{}{sep}token={}", request.url, auth::query_escape(&token));
        } else {
            request.headers.push((AUTH_HEADER.to_string(), token));
        }
        Ok(request)
    }

    /// Registers the TPM key with the server: `POST <server_url>/register` with the
    /// registration as JSON, or in query mode `GET <server_url>/register/<uuid>` with it in
    /// the `token` parameter (URL-safe base64). Never authenticated itself.
    fn send_registration(&self, config: &Config, reg: &Registration) -> Result<()> {
        let body = {
            let _tpm = self.tpm.lock().unwrap_or_else(|p| p.into_inner());
            auth::registration(&self.host, &reg.context.machine_id, &config.token)?
        };
        let json = serde_json::to_vec(&body)
            .map_err(|e| Error::internal(format!("cannot encode the registration: {e}")))?;
        let (ua, agent) = user_agent(&reg.context);
        let url = format!("{}/register", config.server_url());
        let response: Response = if config.by_query_param() {
            let request = Request::get(format!(
                "{url}/{}?token={}",
                auth::random_uuid()?,
                auth::base64(auth::URL, &json)
            ))
            .header(ua, agent);
            self.host.http(&request, b"")
        } else {
            let mut request = Request::get(&url)
                .header(ua, agent)
                .header("Content-Type", "application/json");
            request.method = "POST".into();
            self.host.http(&request, &json)
        }
        .map_err(|e| {
            Error::internal(format!(
                "unable to get http register response: {}",
                e.message
            ))
        })?;
        match response.status {
            200 => {
                self.host
                    .info("Server successfully registered with the 'images' provider");
                Ok(())
            }
            // The server says what is wrong.
            400 => Err(Error::internal(
                String::from_utf8_lossy(&response.body)
                    .trim_end()
                    .to_string(),
            )),
            status => Err(Error::internal(format!(
                "bad HTTP response code for registration: {status}"
            ))),
        }
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
        let (ua, agent) = user_agent(context);
        let request = Request::get(&url).header(ua, agent);
        // A token that cannot be made ends the attempts; a failed request is tried again
        // (each attempt with a fresh token).
        let signed = retry(ATTEMPTS, PAUSE, None, || -> Result<Result<Vec<u8>>> {
            let request = match self.authenticated(config, &context.machine_id, request.clone()) {
                Ok(r) => r,
                Err(e) => return Ok(Err(e)),
            };
            let response = self.host.http(&request, b"")?;
            if response.status != 200 {
                return Err(Error::internal("server failed to return expected file"));
            }
            Ok(Ok(response.body))
        })
        .and_then(|r| r)
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
    /// The directories the host fetches into ([`plugin_api::sdk::PROVIDER_PATHS`]) and the
    /// TPM key's files ([`auth::FILES`]).
    const PATHS: &'static [&'static str] = &[
        "/var/lib/updates",
        "/var/lib/incus-os-extensions",
        "/var/lib/incus-os/secureboot-updates",
        auth::PRIMARY_CTX,
        auth::KEY_CTX,
        auth::PUBLIC,
        auth::PRIVATE,
        auth::PEM,
    ];
    type Config = Config;
    type State = State;

    fn new(host: Host) -> Result<Self> {
        Ok(Images {
            host,
            cache: Mutex::new(None),
            tpm: Mutex::new(()),
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
        Ok(())
    }

    fn update(&self, _undo: &mut Undo, old: &Config, new: &Config) -> Result<()> {
        if old != new {
            self.clear_cache();
        }
        Ok(())
    }

    /// With a token: registers the TPM key (see [`auth`]); without one there is nothing to
    /// register, as upstream.
    fn register(&self, config: &Config, reg: &Registration) -> Result<()> {
        if config.token.is_empty() {
            return Err(Error::internal(errors::REGISTRATION_UNSUPPORTED));
        }
        self.send_registration(config, reg)
    }

    /// Nothing to tell the server with a token (upstream's no-op).
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
        let (ua, agent) = user_agent(&order.context);
        fetch::fetch_release_with(&self.host, order, |f| {
            let request = Request::get(fetch::file_url(base, &order.release.version, f))
                .header(ua.clone(), agent.clone());
            self.authenticated(config, &order.context.machine_id, request)
        })
    }
}

plugin_api::export_provider!(Images);
