//! The fallback listener's TLS server (see the module above for what it does).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use crate::api::AppState;

/// Where the server certificate and key are kept, below the root.
pub const CERT_PATH: &str = "var/lib/incus-os/fallback.crt";
pub const KEY_PATH: &str = "var/lib/incus-os/fallback.key";

const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The listener, when it runs.
#[derive(Default)]
pub struct Runtime {
    running: Mutex<Option<Running>>,
}

struct Running {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Runtime {
    /// The address it listens on, when active.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.running.lock().unwrap().as_ref().map(|r| r.addr)
    }

    pub fn active(&self) -> bool {
        self.addr().is_some()
    }

    /// Stops the listener and closes its connections (nothing when it is not running).
    pub fn stop(&self) {
        if let Some(r) = self.running.lock().unwrap().take() {
            let _ = r.stop.send(true);
            tracing::info!(addr = %r.addr, "Fallback HTTPS listener stopped");
        }
    }
}

/// Starts the listener with the stored configuration (nothing when already running);
/// returns the address it listens on.
pub async fn start(app: &AppState) -> Result<SocketAddr, String> {
    if let Some(addr) = app.fallback.addr() {
        return Ok(addr);
    }
    let config = app.with_state(|s| s.doc().system.fallback_listener.config.clone());
    let addr: SocketAddr = if config.listen_address.is_empty() {
        "[::]:0".parse().unwrap()
    } else {
        config
            .listen_address
            .parse()
            .map_err(|e| format!("invalid listen address: {e}"))?
    };
    let tls = server_config(&app.root)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop, stopped) = watch::channel(false);
    {
        let mut running = app.fallback.running.lock().unwrap();
        if let Some(r) = running.as_ref() {
            return Ok(r.addr);
        }
        *running = Some(Running { addr, stop });
    }
    tokio::spawn(serve(
        listener,
        tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
        app.clone(),
        stopped,
    ));
    tracing::info!(%addr, "Fallback HTTPS listener started on {addr}");
    Ok(addr)
}

/// Starts the listener at start-up when the system booted from the backup image.
pub async fn start_if_booted_from_backup(app: &AppState, running: &str, next: &str) {
    if super::booted_from_backup(running, next) {
        if let Err(e) = start(app).await {
            tracing::error!(error = %e, "cannot start the fallback HTTPS listener");
        }
    }
}

/// Starts the listener because the primary application failed to start (not when the
/// system already runs from the backup image: it already runs then).
pub async fn primary_failed(app: &AppState) {
    if let Err(e) = start(app).await {
        tracing::error!(error = %e, "cannot start the fallback HTTPS listener");
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: AppState,
    mut stopped: watch::Receiver<bool>,
) {
    let router = crate::api::router(app.clone());
    let mut tasks = JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stopped.changed() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "fallback listener: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        while tasks.try_join_next().is_some() {}
        let (acceptor, router, app) = (acceptor.clone(), router.clone(), app.clone());
        tasks.spawn(async move {
            let tls = match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "fallback listener: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let leaf = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec());
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (router, app, leaf) = (router.clone(), app.clone(), leaf.clone());
                async move {
                    let trusted = app.with_state(|s| {
                        s.doc()
                            .system
                            .fallback_listener
                            .config
                            .trusted_client_certificates
                            .clone()
                    });
                    match leaf {
                        Some(der) if super::is_trusted(&der, &trusted) => {
                            router.oneshot(proxied(req.map(Body::new))).await
                        }
                        _ => Ok(forbidden()),
                    }
                }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(error = %e, "fallback listener: connection closed");
            }
        });
    }
    // Dropping the set aborts the connections still open.
    drop(tasks);
}

/// The request as the application proxy hands it over: the proxy header set to `/os`
/// (whatever the client sent), a leading `/os` segment removed from the path.
fn proxied(mut req: Request<Body>) -> Request<Body> {
    let headers = req.headers_mut();
    headers.remove(crate::api::proxy::HEADER);
    headers.insert(crate::api::proxy::HEADER, HeaderValue::from_static("/os"));
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let stripped = match pq.strip_prefix("/os") {
        Some("") => "/".to_string(),
        Some(rest) if rest.starts_with('/') => rest.to_string(),
        Some(rest) if rest.starts_with('?') => format!("/{rest}"),
        _ => pq.to_string(),
    };
    if let Ok(uri) = stripped.parse::<Uri>() {
        *req.uri_mut() = uri;
    }
    req
}

fn forbidden() -> Response<Body> {
    Response::builder()
        .status(StatusCode::FORBIDDEN)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Body::from("Forbidden\n"))
        .unwrap()
}

// ring's provider is deprecated for lack of post-quantum key exchange only.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.2/1.3, a client certificate required (checked for its dates and its handshake
/// signature here, for trust per request), the server certificate from [`server_cert`].
fn server_config(root: &Path) -> Result<rustls::ServerConfig, String> {
    let (cert, key) = server_cert(root)?;
    let provider = provider();
    let verifier = Arc::new(AnyValidClient {
        algs: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)
        .map_err(|e| format!("fallback listener certificate: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The server certificate and key, made (self-signed) the first time.
pub fn server_cert(
    root: &Path,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), String> {
    let (crt, key) = (root.join(CERT_PATH), root.join(KEY_PATH));
    if !crt.exists() || !key.exists() {
        let pair = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let params = rcgen::CertificateParams::new(vec!["incus-os".to_string()])
            .map_err(|e| e.to_string())?;
        let cert = params.self_signed(&pair).map_err(|e| e.to_string())?;
        let dir = crt.parent().unwrap();
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        write_private(&key, pair.serialize_pem().as_bytes())?;
        std::fs::write(&crt, cert.pem()).map_err(|e| format!("{}: {e}", crt.display()))?;
    }
    let cert =
        CertificateDer::from_pem_file(&crt).map_err(|e| format!("{}: {e}", crt.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| format!("{}: {e}", key.display()))?;
    Ok((cert, key))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(data)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Accepts any client certificate within its validity dates; whether it is trusted is
/// decided per request against the live list.
#[derive(Debug)]
struct AnyValidClient {
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyValidClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity.as_ref()).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let now = now.as_secs() as i64;
        let v = cert.validity();
        if now > v.not_after.timestamp() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired,
            ));
        }
        if now < v.not_before.timestamp() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidYet,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
