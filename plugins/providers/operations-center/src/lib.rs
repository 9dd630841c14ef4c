//! The `operations-center` update provider: updates and registration through Operations
//! Center's provisioning API.
//!
//! Config keys as upstream: `server_url`, `server_token` and `server_certificate` (PEM,
//! optional). Two ways to reach the server:
//!
//! - **local**: when Operations Center is this machine's primary application (for now:
//!   its socket [`LOCAL_SOCKET`] exists under the root), HTTP over that unix socket, base
//!   URL `http://unix`; no key is needed.
//! - **remote**: `server_url` and `server_token` are required (checked when the provider
//!   is used, as upstream checks them when it loads the provider, with its texts); TLS 1.3
//!   only; `server_certificate`, when set, pinned as the only certificate trusted; the
//!   primary application's client certificate presented when there is one (for now: the
//!   files [`CLIENT_CERT_PATH`] and [`CLIENT_KEY_PATH`]); never through the system proxy.
//!   When the server no longer presents the pinned certificate, the request is tried again
//!   with the public CAs, and once that succeeds the pin is removed from the saved config
//!   (the server moved to a publicly trusted certificate).
//!
//! Every answer must be an Incus-style `{"type":"sync","status_code":200,"metadata":..}`.
//! Updates: `GET /1.0/provisioning/updates?recursion=1` lists them; the first on the
//! channel (or the running release) is chosen as the images provider chooses, its files
//! come from `GET /1.0/provisioning/updates/<uuid>/files` and are downloaded from
//! `/1.0/provisioning/updates/<uuid>/files/<filename>` (SHA-256 checked, `.gz` unpacked).
//! The chosen update is cached for an hour.
//!
//! Registration: `POST /1.0/provisioning/servers?token=<server_token>` (or, without a
//! token, `POST /1.0/provisioning/servers/:self_register`) with this machine's name and
//! connection URL (`https://<management address>:8443`, see [`address`]); the certificate
//! Operations Center answers with is kept in [`TRUSTED_CLIENT_CERT_PATH`] for the primary
//! application to trust. A refresh is `PUT /1.0/provisioning/servers/:self` with the
//! connection URL and the cause. Deregistration is unsupported, as upstream: switching
//! away from this provider is refused.

pub use incus_osd_provider_common::address;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use incus_osd_provider_common::index::eligible;
use incus_osd_provider_common::{config, fetch, offer, select, Index, Update};
use plugin_api::net::{Request, Response, Tls, PIN_MISMATCH};
use plugin_api::provider::UpdateContext;
use plugin_api::provider::{errors, FetchOrder, Registration, Release, ReleaseFile, Target};
use plugin_api::sdk::retry;
use plugin_api::{Error, Host, Provider, Result, Undo};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Operations Center's socket when it is this machine's primary application.
pub const LOCAL_SOCKET: &str = "/run/operations-center/unix.socket";
/// The base URL of requests over [`LOCAL_SOCKET`].
pub const LOCAL_URL: &str = "http://unix";
/// The primary application's client certificate, presented to a remote Operations
/// Center when present (with [`CLIENT_KEY_PATH`]). Interim: the applications work will
/// say where the primary application keeps it.
pub const CLIENT_CERT_PATH: &str = "/var/lib/incus-os/client.crt";
/// The key of [`CLIENT_CERT_PATH`].
pub const CLIENT_KEY_PATH: &str = "/var/lib/incus-os/client.key";
/// The certificate Operations Center answers a registration with: the one it presents
/// when it connects to this machine, for the primary application to trust. A file right
/// in the state directory (a system backup carries that directory's files, flat, and
/// refuses subdirectories as upstream's does).
pub const TRUSTED_CLIENT_CERT_PATH: &str = "/var/lib/incus-os/operations-center.trusted-client.crt";
/// How long a chosen update is used before the server is asked again.
pub const CACHE_FOR: Duration = Duration::from_secs(3600);
/// Attempts at a registration refresh, and the pause between them (upstream retries in
/// the background, 30 s apart; a provider call stays short).
pub const REFRESH_ATTEMPTS: usize = 5;
const REFRESH_PAUSE: Duration = Duration::from_secs(1);
/// How long an API call may stall (downloads keep the host's default).
const API_STALL_MS: u64 = 10_000;

/// Upstream's texts.
pub const NO_URL: &str = "no operations center URL provided";
pub const NO_TOKEN: &str = "no operations center token provided";
pub const BAD_RESPONSE: &str = "bad response from operations center";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The Operations Center to use (not needed in local mode).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub server_url: String,
    /// The registration token Operations Center issued (not needed in local mode).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub server_token: String,
    /// The server's certificate (PEM), pinned as the only one trusted.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub server_certificate: String,
}

#[derive(Serialize)]
pub struct State {}

/// How the server is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    /// Over [`LOCAL_SOCKET`].
    Local,
    /// Over HTTPS.
    Remote {
        url: String,
        token: String,
        pin: Option<String>,
        client: Option<(String, String)>,
    },
}

impl Endpoint {
    fn base(&self) -> &str {
        match self {
            Endpoint::Local => LOCAL_URL,
            Endpoint::Remote { url, .. } => url.trim_end_matches('/'),
        }
    }

    fn token(&self) -> &str {
        match self {
            Endpoint::Local => "",
            Endpoint::Remote { token, .. } => token,
        }
    }

    fn pin(&self) -> Option<&str> {
        match self {
            Endpoint::Remote { pin, .. } => pin.as_deref(),
            Endpoint::Local => None,
        }
    }

    /// A request for `path` (with its query) on the server.
    fn request(&self, method: &str, path: &str) -> Request {
        let mut request = Request::get(format!("{}{path}", self.base()));
        request.method = method.to_string();
        request.use_proxy = false;
        match self {
            Endpoint::Local => request.unix_socket = Some(LOCAL_SOCKET.to_string()),
            Endpoint::Remote { pin, client, .. } => {
                request.tls = Tls {
                    pinned_pem: pin.clone(),
                    client_cert_pem: client.as_ref().map(|c| c.0.clone()),
                    client_key_pem: client.as_ref().map(|c| c.1.clone()),
                    tls13_only: true,
                    ..Tls::default()
                }
            }
        }
        request
    }
}

/// The chosen update, for the server and context it was chosen for.
struct Cached {
    at: Instant,
    key: String,
    uuid: String,
    update: Update,
}

/// An update as Operations Center lists it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct Listed {
    uuid: String,
    version: String,
    channels: Vec<String>,
    severity: String,
    published_at: String,
}

/// Operations Center's response envelope.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    status_code: i64,
    #[serde(default)]
    error: String,
    #[serde(default)]
    metadata: Value,
}

pub struct OperationsCenter {
    host: Host,
    cache: Mutex<Option<Cached>>,
}

/// The metadata of an Incus-style sync response with status 200; anything else is an
/// error naming what came back.
pub fn metadata(response: &Response) -> Result<Value> {
    let envelope: Envelope = serde_json::from_slice(&response.body).map_err(|_| {
        Error::internal(format!(
            "{BAD_RESPONSE}: HTTP {} without an Incus-style JSON body",
            response.status
        ))
    })?;
    if envelope.kind == "sync" && envelope.status_code == 200 {
        return Ok(envelope.metadata);
    }
    if envelope.kind == "error" {
        return Err(Error::internal(format!(
            "error from operations center: {}",
            envelope.error
        )));
    }
    Err(Error::internal(format!(
        "{BAD_RESPONSE}: type {:?} with status code {}",
        envelope.kind, envelope.status_code
    )))
}

/// `value` with every byte outside the unreserved set percent-encoded (for a query).
fn query_escape(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Refuses an update identifier that could leave its URL path segment.
fn check_uuid(uuid: &str) -> Result<()> {
    if uuid.is_empty()
        || !uuid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        || uuid == "."
        || uuid == ".."
    {
        return Err(Error::internal(format!(
            "{BAD_RESPONSE}: refusing the update identifier {uuid:?}"
        )));
    }
    Ok(())
}

impl OperationsCenter {
    fn cache(&self) -> std::sync::MutexGuard<'_, Option<Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How `config` reaches the server now, or upstream's error for a missing key.
    fn endpoint(&self, config: &Config) -> Result<Endpoint> {
        if self.host.exists(LOCAL_SOCKET)? {
            return Ok(Endpoint::Local);
        }
        if config.server_url.is_empty() {
            return Err(Error::internal(NO_URL));
        }
        if config.server_token.is_empty() {
            return Err(Error::internal(NO_TOKEN));
        }
        let client = match (
            self.host.read_to_string(CLIENT_CERT_PATH)?,
            self.host.read_to_string(CLIENT_KEY_PATH)?,
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        };
        Ok(Endpoint::Remote {
            url: config.server_url.clone(),
            token: config.server_token.clone(),
            pin: (!config.server_certificate.trim().is_empty())
                .then(|| config.server_certificate.clone()),
            client,
        })
    }

    /// One API call: its response's metadata. A pinned certificate the server no longer
    /// presents is dropped for a second try with the public CAs; when that try gets an
    /// answer, the pin is removed from the saved config too.
    fn call(
        &self,
        endpoint: &mut Endpoint,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let data = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        // The URL without its query: the token never shows in an error.
        let url = format!("{}{path}", endpoint.base());
        let bare = url.split('?').next().unwrap_or_default().to_string();
        let shown = format!("{method} {bare}");
        let scrub = |e: Error| Error::new(e.status, e.message.replace(&url, &bare));
        let send = |endpoint: &Endpoint| {
            let mut request = endpoint.request(method, path);
            request.stall_timeout_ms = API_STALL_MS;
            if body.is_some() {
                request
                    .headers
                    .push(("Content-Type".into(), "application/json".into()));
            }
            self.host.http(&request, &data).map_err(scrub)
        };
        let response = match send(endpoint) {
            Err(e) if endpoint.pin().is_some() && e.message.contains(PIN_MISMATCH) => {
                let pin = endpoint.pin().unwrap_or_default().to_string();
                self.host.warn(&format!(
                    "{shown}: the server no longer presents the pinned certificate \
                     (server_certificate), trying the public CAs"
                ));
                if let Endpoint::Remote { pin, .. } = endpoint {
                    *pin = None;
                }
                let response = send(endpoint).map_err(|e| {
                    Error::new(
                        e.status,
                        format!(
                            "without the pinned certificate (server_certificate): {}",
                            e.message
                        ),
                    )
                })?;
                self.drop_pin(&pin)?;
                response
            }
            // The host's error names the method and the URL.
            Err(e) => return Err(e),
            Ok(r) => r,
        };
        metadata(&response)
    }

    /// Removes `pin` from the saved config (unless the config changed meanwhile).
    fn drop_pin(&self, pin: &str) -> Result<()> {
        let dropped = self.host.update_config(|c: &mut Config| {
            if c.server_certificate == pin {
                c.server_certificate.clear();
                true
            } else {
                false
            }
        })?;
        if dropped {
            self.host.warn(
                "The Operations Center certificate is publicly trusted now: \
                 server_certificate was removed from the provider config",
            );
        }
        Ok(())
    }

    fn cache_key(endpoint: &Endpoint, context: &UpdateContext) -> String {
        format!(
            "{}\n{}\n{}\n{}",
            endpoint.base(),
            context.channel,
            context.architecture,
            context.running_version
        )
    }

    /// The update on offer for `context` (narrowed to its architecture) with its
    /// identifier: the cached one when it is less than an hour old, else from the server.
    fn chosen(
        &self,
        endpoint: &mut Endpoint,
        context: &UpdateContext,
    ) -> Result<Option<(String, Update)>> {
        let key = Self::cache_key(endpoint, context);
        if let Some(c) = self.cache().as_ref() {
            if c.at.elapsed() < CACHE_FOR && c.key == key {
                return Ok(Some((c.uuid.clone(), c.update.clone())));
            }
        }
        let list = self.call(
            endpoint,
            "GET",
            "/1.0/provisioning/updates?recursion=1",
            None,
        )?;
        let list: Vec<Listed> = serde_json::from_value(list)
            .map_err(|e| Error::internal(format!("{BAD_RESPONSE}: the update list: {e}")))?;
        let Some(listed) = list
            .into_iter()
            .find(|u| eligible(&u.channels, &u.version, context))
        else {
            return Ok(None);
        };
        check_uuid(&listed.uuid)?;
        let files = self.call(
            endpoint,
            "GET",
            &format!("/1.0/provisioning/updates/{}/files", listed.uuid),
            None,
        )?;
        let files: Vec<ReleaseFile> = serde_json::from_value(files)
            .map_err(|e| Error::internal(format!("{BAD_RESPONSE}: the file list: {e}")))?;
        let index = Index {
            format: String::new(),
            updates: vec![Update {
                channels: listed.channels,
                files,
                severity: listed.severity,
                published_at: listed.published_at,
                version: listed.version,
                ..Update::default()
            }],
        };
        // The architecture filter, and no update when nothing is left.
        let Some(update) = select(&index, context).update else {
            return Ok(None);
        };
        *self.cache() = Some(Cached {
            at: Instant::now(),
            key,
            uuid: listed.uuid.clone(),
            update: update.clone(),
        });
        Ok(Some((listed.uuid, update)))
    }

    /// The identifier of the update `version` was looked up from.
    fn uuid_of(
        &self,
        endpoint: &mut Endpoint,
        context: &UpdateContext,
        version: &str,
    ) -> Result<String> {
        match self.chosen(endpoint, context)? {
            Some((uuid, update)) if update.version == version => Ok(uuid),
            _ => Err(Error::internal(format!(
                "operations center no longer offers release {version}"
            ))),
        }
    }

    /// This machine's connection URL, or upstream's "registration unsupported" when it
    /// has no management address.
    fn connection_url(&self, context: &UpdateContext) -> Result<String> {
        // The host's devices with the management role first (upstream's rule); a host
        // older than 1.3 names none: the first global address then.
        let managed = context
            .management_addresses
            .iter()
            .find_map(|a| a.parse::<std::net::IpAddr>().ok());
        let found = match managed {
            Some(ip) => Some(ip),
            None => address::management_address(&self.host)?,
        };
        match found {
            Some(ip) => Ok(address::connection_url(ip)),
            None => {
                self.host
                    .warn("No management address found: cannot register with Operations Center");
                Err(Error::internal(errors::REGISTRATION_UNSUPPORTED))
            }
        }
    }
}

impl Provider for OperationsCenter {
    const NAME: &'static str = "operations-center";
    const MULTI_LINE_FIELDS: &'static [&'static str] = &["server_certificate"];
    const PATHS: &'static [&'static str] = &[
        "/var/lib/updates",
        "/var/lib/incus-os-extensions",
        "/var/lib/incus-os/secureboot-updates",
        TRUSTED_CLIENT_CERT_PATH,
    ];
    type Config = Config;
    type State = State;

    fn new(host: Host) -> Result<Self> {
        Ok(OperationsCenter {
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
        if !config.server_certificate.is_empty() {
            config::check_certificates("server_certificate", &config.server_certificate)?;
        }
        Ok(())
    }

    fn update(&self, _undo: &mut Undo, old: &Config, new: &Config) -> Result<()> {
        if old != new {
            self.clear_cache();
        }
        Ok(())
    }

    fn register(&self, config: &Config, reg: &Registration) -> Result<()> {
        let mut endpoint = self.endpoint(config)?;
        let body = json!({
            "name": reg.context.hostname,
            "connection_url": self.connection_url(&reg.context)?,
        });
        let path = match endpoint.token() {
            "" => "/1.0/provisioning/servers/:self_register".to_string(),
            token => format!("/1.0/provisioning/servers?token={}", query_escape(token)),
        };
        let answer = self.call(&mut endpoint, "POST", &path, Some(&body))?;
        let certificate = answer
            .get("certificate")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !certificate.trim().is_empty() {
            config::check_certificates("certificate", certificate).map_err(|e| {
                Error::internal(format!("{BAD_RESPONSE}: registration: {}", e.message))
            })?;
            self.host
                .write_file(TRUSTED_CLIENT_CERT_PATH, certificate.as_bytes(), 0o644)?;
        }
        self.host.info(&format!(
            "Registered with Operations Center at {}",
            endpoint.base()
        ));
        Ok(())
    }

    fn refresh(&self, config: &Config, reg: &Registration) -> Result<()> {
        let mut endpoint = self.endpoint(config)?;
        let body = json!({
            "connection_url": self.connection_url(&reg.context)?,
            "cause": reg.cause.as_str(),
        });
        retry(REFRESH_ATTEMPTS, REFRESH_PAUSE, None, || {
            self.call(
                &mut endpoint,
                "PUT",
                "/1.0/provisioning/servers/:self",
                Some(&body),
            )
        })
        .map(drop)
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
        let mut endpoint = self.endpoint(config)?;
        Ok(self
            .chosen(&mut endpoint, context)?
            .and_then(|(_, update)| offer(&update, target)))
    }

    fn fetch(&self, config: &Config, order: &FetchOrder) -> Result<Vec<String>> {
        let mut endpoint = self.endpoint(config)?;
        let uuid = self.uuid_of(&mut endpoint, &order.context, &order.release.version)?;
        fetch::fetch_release_with(&self.host, order, |file| {
            Ok(endpoint.request(
                "GET",
                &format!("/1.0/provisioning/updates/{uuid}/files/{}", file.filename),
            ))
        })
    }
}

plugin_api::export_provider!(OperationsCenter);

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn only_a_sync_200_response_is_accepted() {
        let ok = response(
            200,
            r#"{"type":"sync","status_code":200,"metadata":{"a":1}}"#,
        );
        assert_eq!(metadata(&ok).unwrap(), json!({"a": 1}));
        let err = response(
            403,
            r#"{"type":"error","status_code":0,"error_code":403,"error":"not allowed"}"#,
        );
        assert_eq!(
            metadata(&err).unwrap_err().message,
            "error from operations center: not allowed"
        );
        let async_op = response(202, r#"{"type":"async","status_code":100}"#);
        assert_eq!(
            metadata(&async_op).unwrap_err().message,
            "bad response from operations center: type \"async\" with status code 100"
        );
        let html = response(502, "<html>bad gateway</html>");
        assert_eq!(
            metadata(&html).unwrap_err().message,
            "bad response from operations center: HTTP 502 without an Incus-style JSON body"
        );
    }

    #[test]
    fn tokens_are_escaped_and_identifiers_checked() {
        assert_eq!(query_escape("a-b_c.d~9"), "a-b_c.d~9");
        assert_eq!(query_escape("a&b=c d/é"), "a%26b%3Dc%20d%2F%C3%A9");
        check_uuid("0f3c1b2a-1111-4222-8333-444455556666").unwrap();
        for bad in ["", "..", "a/b", "a?b", "a b"] {
            assert!(check_uuid(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_provider_writes_where_every_provider_does_and_its_own_file() {
        for path in plugin_api::sdk::PROVIDER_PATHS {
            assert!(
                <OperationsCenter as Provider>::PATHS.contains(path),
                "{path}"
            );
        }
        assert!(<OperationsCenter as Provider>::PATHS.contains(&TRUSTED_CLIENT_CERT_PATH));
        // Flat in the state directory, which a system backup carries.
        assert_eq!(
            std::path::Path::new(TRUSTED_CLIENT_CERT_PATH).parent(),
            Some(std::path::Path::new("/var/lib/incus-os"))
        );
    }
}
