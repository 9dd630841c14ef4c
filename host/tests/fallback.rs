//! `/1.0/system/fallback-listener` and the fallback HTTPS listener itself: real TLS
//! clients on loopback, with client certificates made at test time.

use std::sync::Arc;

use axum::http::StatusCode;
use incus_osd::testing::TestApp;
use incus_osd::testing::{call, err};
use rcgen::{CertificateParams, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

struct Client {
    pem: String,
    der: Vec<u8>,
    key_der: Vec<u8>,
}

fn client_cert(expired: bool) -> Client {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["client".to_string()]).unwrap();
    if expired {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = p.self_signed(&key).unwrap();
    Client {
        pem: cert.pem(),
        der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    }
}

/// Accepts exactly the server certificate the daemon keeps.
#[derive(Debug)]
struct Pinned(Vec<u8>);

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        assert_eq!(
            end_entity.as_ref(),
            &self.0[..],
            "not the daemon's certificate"
        );
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &algs())
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &algs())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algs().supported_schemes()
    }
}

#[allow(deprecated)]
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn algs() -> rustls::crypto::WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// One `GET path` over TLS 1.x with `client` (or no certificate): the status line and body,
/// or the error when the connection fails.
async fn get(
    addr: std::net::SocketAddr,
    server_der: &[u8],
    client: Option<&Client>,
    version: &'static rustls::SupportedProtocolVersion,
    path: &str,
) -> Result<(u16, String), String> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[version])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned(server_der.to_vec())));
    let config = match client {
        Some(c) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(c.der.clone())],
                PrivateKeyDer::try_from(c.key_der.clone()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", addr.port()))
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(ServerName::try_from("incus-os").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP answer: {text:?}"))?;
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Ok((status, body))
}

#[tokio::test]
async fn put_checks_the_configuration_with_upstreams_texts() {
    let (r, _app, _d) = TestApp::new().router();
    let good = client_cert(false).pem;
    let cases = [
        (
            json!({}),
            "at least one trusted client TLS certificate must be defined".to_string(),
        ),
        (
            json!({"config": {"listen_address": "nope", "trusted_client_certificates": [good]}}),
            "invalid listen address: invalid socket address syntax".to_string(),
        ),
        (
            json!({"config": {"trusted_client_certificates": [good, "hello"]}}),
            "certificate at index 1 is not PEM-encoded".to_string(),
        ),
    ];
    for (body, text) in cases {
        let v = call(
            &r,
            "PUT",
            "/1.0/system/fallback-listener",
            &body.to_string(),
        )
        .await;
        assert_eq!(err(&v), (400, text));
    }
    // An empty body is `{}`.
    let v = call(&r, "PUT", "/1.0/system/fallback-listener", "").await;
    assert_eq!(
        err(&v).1,
        "at least one trusted client TLS certificate must be defined"
    );
    // A PEM block that is not X.509.
    let bad = "-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n";
    let body = json!({"config": {"trusted_client_certificates": [bad]}});
    let v = call(
        &r,
        "PUT",
        "/1.0/system/fallback-listener",
        &body.to_string(),
    )
    .await;
    let (status, text) = err(&v);
    assert_eq!(status, 400);
    assert!(
        text.starts_with("certificate at index 0 is not valid: "),
        "{text}"
    );
    // Nothing was stored by the refused PUTs.
    let v = call(&r, "GET", "/1.0/system/fallback-listener", "").await;
    assert_eq!(
        v.1["metadata"],
        json!({"config": {}, "state": {"active": false}})
    );

    let body =
        json!({"config": {"listen_address": "127.0.0.1:0", "trusted_client_certificates": [good]}});
    let v = call(
        &r,
        "PUT",
        "/1.0/system/fallback-listener",
        &body.to_string(),
    )
    .await;
    assert_eq!(v.0, StatusCode::OK, "{}", v.1);
    let v = call(&r, "GET", "/1.0/system/fallback-listener", "").await;
    assert_eq!(v.1["metadata"]["config"], body["config"]);
    assert_eq!(v.1["metadata"]["state"]["active"], false);
}

#[tokio::test]
async fn the_listener_serves_trusted_clients_only_and_stops_when_disabled() {
    let (r, app, _d) = TestApp::new().router();
    let trusted = client_cert(false);
    let untrusted = client_cert(false);
    let expired = client_cert(true);
    let body = json!({
        "config": {"listen_address": "127.0.0.1:0",
                   "trusted_client_certificates": [trusted.pem, expired.pem]},
        "state": {"active": true},
    });
    let v = call(
        &r,
        "PUT",
        "/1.0/system/fallback-listener",
        &body.to_string(),
    )
    .await;
    assert_eq!(v.0, StatusCode::OK, "{}", v.1);
    let v = call(&r, "GET", "/1.0/system/fallback-listener", "").await;
    assert_eq!(v.1["metadata"]["state"]["active"], true);
    let addr = app.fallback.addr().expect("listening");
    let server =
        CertificateDer::from_pem_file(app.root.join("var/lib/incus-os/fallback.crt")).unwrap();
    let server = server.as_ref();

    // Trusted, over TLS 1.3 and 1.2: the API with the proxy's `/os` prefix rules.
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let (status, body) = get(addr, server, Some(&trusted), version, "/os/1.0/system")
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let urls = v["metadata"].as_array().unwrap();
        assert!(!urls.is_empty());
        assert!(
            urls.iter()
                .all(|u| u.as_str().unwrap().starts_with("/os/1.0/system/")),
            "{v}"
        );
    }
    let (status, body) = get(addr, server, Some(&trusted), &rustls::version::TLS13, "/")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["metadata"], json!(["/os/1.0"]));
    // The socket-only endpoints stay closed to it.
    let (status, _) = get(
        addr,
        server,
        Some(&trusted),
        &rustls::version::TLS13,
        "/internal/tui/:write-message",
    )
    .await
    .unwrap();
    assert_eq!(status, 403);

    // Untrusted: 403 plain text.
    let (status, body) = get(
        addr,
        server,
        Some(&untrusted),
        &rustls::version::TLS13,
        "/1.0",
    )
    .await
    .unwrap();
    assert_eq!((status, body.as_str()), (403, "Forbidden\n"));
    // No certificate, or an expired one (although listed): no TLS session at all.
    for client in [None, Some(&expired)] {
        let r = get(addr, server, client, &rustls::version::TLS13, "/1.0").await;
        assert!(r.is_err(), "{r:?}");
    }

    // Trust is read per request: once the certificate is removed it is refused.
    let body = json!({"config": {"listen_address": "127.0.0.1:0",
                                 "trusted_client_certificates": [untrusted.pem]}});
    let v = call(
        &r,
        "PUT",
        "/1.0/system/fallback-listener",
        &body.to_string(),
    )
    .await;
    assert_eq!(v.0, StatusCode::OK, "{}", v.1);
    assert_eq!(
        app.fallback.addr(),
        Some(addr),
        "a PUT without state leaves it running"
    );
    let (status, _) = get(
        addr,
        server,
        Some(&trusted),
        &rustls::version::TLS13,
        "/1.0",
    )
    .await
    .unwrap();
    assert_eq!(status, 403);

    // Disabled: nothing listens any more.
    let body = json!({"config": {"trusted_client_certificates": [untrusted.pem]},
                      "state": {"active": false}});
    let v = call(
        &r,
        "PUT",
        "/1.0/system/fallback-listener",
        &body.to_string(),
    )
    .await;
    assert_eq!(v.0, StatusCode::OK, "{}", v.1);
    let v = call(&r, "GET", "/1.0/system/fallback-listener", "").await;
    assert_eq!(v.1["metadata"]["state"]["active"], false);
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(refused, "still listening on {addr}");
}

#[tokio::test]
async fn it_starts_at_boot_only_when_running_from_the_backup_image() {
    use incus_osd::system::fallback::listener;
    let (_r, app, _d) = TestApp::new().router();
    app.with_state(|s| {
        s.update(|d| {
            d.system.fallback_listener.config.listen_address = "127.0.0.1:0".into();
        })
    })
    .unwrap();
    // This boot runs the staged release, or nothing is staged: nothing listens.
    listener::start_if_booted_from_backup(&app, "202502010000", "202502010000").await;
    listener::start_if_booted_from_backup(&app, "202502010000", "").await;
    assert!(!app.fallback.active());
    // The staged release is another one: this is the backup image.
    listener::start_if_booted_from_backup(&app, "202501010000", "202502010000").await;
    let addr = app.fallback.addr().expect("listening");
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    app.fallback.stop();
    assert!(!app.fallback.active());
}

/// A primary application whose start fails.
struct BrokenPrimary;

impl plugin_api::Application for BrokenPrimary {
    const NAME: &'static str = "broken";
    const PRIMARY: bool = true;
    type Config = Value;
    fn new(_: plugin_api::sdk::Host) -> plugin_api::sdk::Result<Self> {
        Ok(BrokenPrimary)
    }
    fn start(
        &self,
        _: &mut plugin_api::sdk::Undo,
        _: &plugin_api::application::AppContext,
        _: &Value,
    ) -> plugin_api::sdk::Result<()> {
        Err(plugin_api::sdk::Error::internal("does not start"))
    }
}

/// A non-primary application whose start fails too.
struct BrokenAddon;

impl plugin_api::Application for BrokenAddon {
    const NAME: &'static str = "addon";
    type Config = Value;
    fn new(_: plugin_api::sdk::Host) -> plugin_api::sdk::Result<Self> {
        Ok(BrokenAddon)
    }
    fn start(
        &self,
        _: &mut plugin_api::sdk::Undo,
        _: &plugin_api::application::AppContext,
        _: &Value,
    ) -> plugin_api::sdk::Result<()> {
        Err(plugin_api::sdk::Error::internal("does not start"))
    }
}

#[tokio::test]
async fn only_a_primary_application_that_fails_to_start_is_the_listeners_cue() {
    use incus_osd::system::applications::manage::start_installed;
    let (app, _d) = TestApp::new()
        .application::<BrokenAddon>()
        .installed("addon", "202511041601")
        .build();
    assert!(!start_installed(&app).await, "a non-primary failure");
    let (app, _d) = TestApp::new()
        .application::<BrokenPrimary>()
        .application::<BrokenAddon>()
        .installed("broken", "202511041601")
        .installed("addon", "202511041601")
        .build();
    assert!(start_installed(&app).await, "the primary failed");
}
