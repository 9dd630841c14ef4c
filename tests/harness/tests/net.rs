//! The host's network client (`plugin_host::net::Client`) and download pipeline against
//! the harness's test server: TLS trust (private CA, pin, TLS 1.3 only, client
//! certificates), every way a download can fail (each leaving the previous target file as
//! it was and no temporary file behind), stalls, the proxy, unix sockets and `file://`.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use abi_stable::std_types::{RResult, RStr};
use incus_osd_harness::testserver::{ConnectProxy, Fault, Framing, Reply, TestServer, SERVER_NAME};
use incus_osd_harness::{FileEffect, HarnessHost};
use plugin_api::net::{Download, Request, Tls, MAX_HTTP_BODY};
use plugin_api::Manifest;
use plugin_host::files::RootFs;
use plugin_host::net::{Client, Net, Progress, Proxies};
use sha2::{Digest, Sha256};

const TARGET: &str = "/var/lib/updates/image.raw";
const OLD: &[u8] = b"the previous image\n";

/// Progress as reported.
#[derive(Default)]
struct Seen(Mutex<Vec<(u64, Option<u64>)>>);

impl Progress for Seen {
    fn progress(&self, _: &str, target: &str, done: u64, total: Option<u64>) {
        assert_eq!(target, TARGET);
        self.0.lock().unwrap().push((done, total));
    }
}

/// A root with a previous target file, the plugin's view of it (writes under
/// `/var/lib/updates` only), and a client without proxies.
struct Setup {
    root: tempfile::TempDir,
    files: RootFs,
    client: Client,
}

fn setup() -> Setup {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("var/lib/updates")).unwrap();
    std::fs::write(root.path().join("var/lib/updates/image.raw"), OLD).unwrap();
    let files = RootFs::restricted(root.path(), &["/var/lib/updates".to_string()]);
    let client = Client::with_proxies(root.path(), Proxies::default());
    Setup {
        root,
        files,
        client,
    }
}

impl Setup {
    fn download(&self, d: &Download) -> Result<plugin_api::net::DownloadResult, String> {
        self.client
            .download("test", d, &self.files, &Seen::default())
            .map_err(|e| e.0)
    }

    fn target(&self) -> Vec<u8> {
        std::fs::read(self.root.path().join("var/lib/updates/image.raw")).unwrap()
    }

    /// The failure left the previous file and no temporary file.
    #[track_caller]
    fn assert_untouched(&self) {
        self.assert_untouched_but(OLD);
    }

    /// The target holds `content` and no temporary file is left.
    #[track_caller]
    fn assert_untouched_but(&self, content: &[u8]) {
        assert_eq!(self.target(), content, "the previous target file changed");
        let names: Vec<_> = std::fs::read_dir(self.root.path().join("var/lib/updates"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["image.raw"], "a temporary file was left behind");
    }
}

/// Semi-compressible data (text-like runs with random bytes), `len` bytes.
fn data(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(4) {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.extend_from_slice(b"incus-osd update payload ");
        }
    }
    out.truncate(len);
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A directory with `name` holding `content`.
fn site(name: &str, content: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(name), content).unwrap();
    dir
}

fn download(url: &str, tls: Tls) -> Download {
    let mut request = Request::get(url);
    request.tls = tls;
    Download {
        request,
        target: TARGET.into(),
        mode: 0o640,
        sha256: String::new(),
        gunzip: false,
        max_bytes: 0,
    }
}

fn ca(server: &TestServer) -> Tls {
    Tls {
        ca_pem: Some(server.ca_pem()),
        ..Tls::default()
    }
}

#[track_caller]
fn assert_err(res: Result<impl std::fmt::Debug, String>, parts: &[&str]) -> String {
    let e = res.expect_err("expected an error");
    for p in parts {
        assert!(e.contains(p), "{e:?} lacks {p:?}");
    }
    e
}

#[test]
fn a_gzip_image_downloads_through_tls_with_a_private_ca_verified_and_with_progress() {
    let plain = data(20 * 1024 * 1024 + 123);
    let gz = gzip(&plain);
    let dir = site("image.raw.gz", &gz);
    let server = TestServer::https(dir.path());
    let s = setup();
    let mut d = download(&server.url("/image.raw.gz?v=1"), ca(&server));
    d.sha256 = sha(&gz).to_uppercase();
    d.gunzip = true;
    let seen = Seen::default();
    let r = s.client.download("test", &d, &s.files, &seen).unwrap();
    assert_eq!(r.received, gz.len() as u64);
    assert_eq!(r.written, plain.len() as u64);
    assert_eq!(r.sha256, sha(&gz));
    assert!(
        s.target() == plain,
        "the target is not the decompressed body"
    );
    let meta = std::fs::metadata(s.root.path().join("var/lib/updates/image.raw")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o640
    );
    // Progress: about every 8 MiB and once at the end, with the announced total.
    let seen = seen.0.into_inner().unwrap();
    let total = Some(gz.len() as u64);
    assert_eq!(seen.last(), Some(&(gz.len() as u64, total)), "{seen:?}");
    let expected = 1 + (gz.len() as u64 / (8 << 20)) as usize;
    assert_eq!(seen.len(), expected, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
    let req = &server.requests()[0];
    assert_eq!(
        (req.method.as_str(), req.path.as_str(), req.query.as_str()),
        ("GET", "/image.raw.gz", "v=1")
    );
}

#[test]
fn without_the_private_ca_the_server_is_not_trusted() {
    let site_dir = site("image.raw", b"new");
    let server = TestServer::https(site_dir.path());
    let s = setup();
    let d = download(&server.url("/image.raw"), Tls::default());
    assert_err(s.download(&d), &["TLS handshake", "UnknownIssuer", TARGET]);
    s.assert_untouched();
}

/// A CA the OS trusts (in its CA bundle under the root, where custom CAs are added) is
/// trusted by requests that name no CA of their own; other servers still are not.
#[test]
fn the_oss_ca_bundle_under_the_root_is_trusted_by_default() {
    let site_dir = site("image.raw", b"new");
    let server = TestServer::https(site_dir.path());
    let s = setup();
    let bundle = s.root.path().join("etc/ssl/certs/ca-certificates.crt");
    std::fs::create_dir_all(bundle.parent().unwrap()).unwrap();
    std::fs::write(&bundle, server.ca_pem()).unwrap();
    let client = Client::with_proxies(s.root.path(), Proxies::default());
    let d = download(&server.url("/image.raw"), Tls::default());
    client
        .download("test", &d, &s.files, &Seen::default())
        .unwrap();
    assert_eq!(s.target(), b"new");

    let other_dir = site("image.raw", b"other");
    let other = TestServer::https(other_dir.path());
    let d = download(&other.url("/image.raw"), Tls::default());
    let e = client
        .download("test", &d, &s.files, &Seen::default())
        .map_err(|e| e.0);
    assert_err(e, &["invalid peer certificate"]);
}

#[test]
fn a_pinned_certificate_is_accepted_and_a_wrong_pin_refused() {
    let dir = site("image.raw", b"pinned");
    let server = TestServer::https(dir.path());
    let s = setup();
    let pin = |pem: String| Tls {
        pinned_pem: Some(pem),
        ..Tls::default()
    };
    // The pin is the only trust: the name (a pin for 127.0.0.1 used via "localhost" too).
    let url = server.url("/image.raw").replace("127.0.0.1", "localhost");
    s.download(&download(&url, pin(server.cert_pem()))).unwrap();
    assert_eq!(s.target(), b"pinned");

    let s = setup();
    let other = TestServer::https(dir.path());
    let wrong = download(&server.url("/image.raw"), pin(other.cert_pem()));
    assert_err(s.download(&wrong), &["not the pinned one"]);
    // The CA's certificate is not the server's either.
    let ca_pin = download(&server.url("/image.raw"), pin(server.ca_pem()));
    assert_err(s.download(&ca_pin), &["not the pinned one"]);
    s.assert_untouched();
}

#[test]
fn tls13_only_refuses_a_tls12_server() {
    let dir = site("image.raw", b"tls13");
    let old = TestServer::builder().dir(dir.path()).tls12_only().start();
    let s = setup();
    let mut tls = ca(&old);
    tls.tls13_only = true;
    assert_err(
        s.download(&download(&old.url("/image.raw"), tls.clone())),
        &["TLS handshake"],
    );
    s.assert_untouched();
    // The same client settings against a TLS 1.2 server without the flag work...
    tls.tls13_only = false;
    s.download(&download(&old.url("/image.raw"), tls)).unwrap();
    // ...and with it against a TLS 1.3 server.
    let new = TestServer::builder().dir(dir.path()).tls13_only().start();
    let mut tls = ca(&new);
    tls.tls13_only = true;
    s.download(&download(&new.url("/image.raw"), tls)).unwrap();
    assert_eq!(s.target(), b"tls13");
}

#[test]
fn a_client_certificate_is_presented_when_the_server_requires_one() {
    let dir = site("image.raw", b"mtls");
    let server = TestServer::builder()
        .dir(dir.path())
        .require_client_cert()
        .start();
    let s = setup();
    assert!(s
        .download(&download(&server.url("/image.raw"), ca(&server)))
        .is_err());
    s.assert_untouched();
    let (cert, key) = server.client_cert("incus-osd");
    let mut tls = ca(&server);
    tls.client_cert_pem = Some(cert);
    tls.client_key_pem = Some(key);
    s.download(&download(&server.url("/image.raw"), tls.clone()))
        .unwrap();
    assert_eq!(s.target(), b"mtls");
    tls.client_key_pem = None;
    assert_err(
        s.download(&download(&server.url("/image.raw"), tls)),
        &["go together"],
    );
}

#[test]
fn a_sha256_mismatch_fails_and_leaves_the_target() {
    let site_dir = site("image.raw", b"tampered");
    let server = TestServer::https(site_dir.path());
    let s = setup();
    let mut d = download(&server.url("/image.raw"), ca(&server));
    d.sha256 = sha(b"genuine");
    assert_err(
        s.download(&d),
        &[
            "SHA-256 mismatch",
            &sha(b"genuine"),
            &sha(b"tampered"),
            "/image.raw",
            TARGET,
        ],
    );
    s.assert_untouched();
}

/// A query may carry a token (the images provider's query-parameter authentication): a
/// failed download's error names the URL without it.
#[test]
fn a_failed_downloads_error_does_not_show_the_query() {
    let site_dir = site("image.raw", b"tampered");
    let server = TestServer::https(site_dir.path());
    let s = setup();
    let mut d = download(&server.url("/image.raw?token=s3cr3t"), ca(&server));
    d.sha256 = sha(b"genuine");
    let e = assert_err(s.download(&d), &["SHA-256 mismatch", "/image.raw"]);
    assert!(!e.contains("s3cr3t"), "{e}");
    s.assert_untouched();
}

#[test]
fn a_body_cut_short_fails_whatever_the_framing() {
    let body = data(300_000);
    let site_dir = site("image.raw", &body);
    let server = TestServer::https(site_dir.path());
    let s = setup();
    let d = download(&server.url("/image.raw"), ca(&server));
    // Content-Length promises more than is sent, the connection closes cleanly.
    server.fault("/image.raw", Fault::WrongLength(400_000));
    assert_err(
        s.download(&d),
        &["cut short", "got 300000 of 400000 bytes", TARGET],
    );
    s.assert_untouched();
    // The connection drops mid-body (no close_notify).
    server.fault("/image.raw", Fault::DropAfter(100_000));
    assert_err(s.download(&d), &["cut short"]);
    s.assert_untouched();
    // A chunked body whose connection drops before the last chunk.
    server.handle(
        "/chunked",
        Reply::new(200, body.clone()).framing(Framing::Chunked),
    );
    server.fault("/chunked", Fault::DropAfter(100_000));
    let d = download(&server.url("/chunked"), ca(&server));
    assert_err(s.download(&d), &["cut short", "chunked"]);
    s.assert_untouched();
    // Without the fault, chunked and close-delimited bodies arrive whole.
    server.clear_fault("/chunked");
    s.download(&d).unwrap();
    assert!(s.target() == body);
    server.handle(
        "/close",
        Reply::new(200, b"until close".to_vec()).framing(Framing::Close),
    );
    s.download(&download(&server.url("/close"), ca(&server)))
        .unwrap();
    assert_eq!(s.target(), b"until close");
}

#[test]
fn a_body_that_is_not_gzip_fails_when_gunzip_is_asked() {
    let site_dir = site("image.raw.gz", b"plain text, not gzip");
    let server = TestServer::https(site_dir.path());
    let s = setup();
    let mut d = download(&server.url("/image.raw.gz"), ca(&server));
    d.gunzip = true;
    assert_err(s.download(&d), &["not valid gzip", TARGET]);
    s.assert_untouched();
}

#[test]
fn a_server_that_hangs_mid_file_fails_as_stalled_within_the_timeout() {
    let site_dir = site("image.raw", &data(1_000_000));
    let server = TestServer::https(site_dir.path());
    server.fault("/image.raw", Fault::HangAfter(50_000));
    let s = setup();
    let mut d = download(&server.url("/image.raw"), ca(&server));
    d.request.stall_timeout_ms = 300;
    let start = Instant::now();
    assert_err(s.download(&d), &["stalled", "300 ms", TARGET]);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(took >= Duration::from_millis(300), "took {took:?}");
    s.assert_untouched();
}

#[test]
fn a_status_other_than_200_fails() {
    let site_dir = site("other", b"x");
    let server = TestServer::https(site_dir.path());
    let s = setup();
    assert_err(
        s.download(&download(&server.url("/image.raw"), ca(&server))),
        &["answered 404", TARGET],
    );
    s.assert_untouched();
}

#[test]
fn a_target_outside_the_allow_list_is_refused_before_any_request() {
    let site_dir = site("image.raw", b"x");
    let server = TestServer::https(site_dir.path());
    let s = setup();
    let mut d = download(&server.url("/image.raw"), ca(&server));
    d.target = "/etc/passwd".into();
    assert_err(
        s.download(&d),
        &["outside what this plugin may write", "/etc/passwd"],
    );
    assert!(server.requests().is_empty());
    assert!(!s.root.path().join("etc/passwd").exists());
}

#[test]
fn max_bytes_stops_a_body_larger_than_allowed() {
    let site_dir = site("image.raw", &data(100_000));
    let server = TestServer::https(site_dir.path());
    let s = setup();
    let mut d = download(&server.url("/image.raw"), ca(&server));
    d.max_bytes = 50_000;
    assert_err(s.download(&d), &["larger than the limit of 50000 bytes"]);
    s.assert_untouched();
}

/// Unmounts a tmpfs mounted by the test.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_fails_clearly_and_leaves_the_target() {
    let s = setup();
    let dir = s.root.path().join("var/lib/updates");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&dir)
        .output();
    match mounted {
        Ok(o) if o.status.success() => {}
        other => {
            eprintln!(
                "\n*** SKIPPED a_full_disk_fails_clearly_and_leaves_the_target: cannot mount a \
                 tmpfs (needs root): {other:?} ***\n"
            );
            return;
        }
    }
    let _guard = Mounted(dir.clone());
    std::fs::write(dir.join("image.raw"), OLD).unwrap();
    let site_dir = site("image.raw", &data(2_000_000));
    let server = TestServer::https(site_dir.path());
    let d = download(&server.url("/image.raw"), ca(&server));
    assert_err(s.download(&d), &["no space left on the device", TARGET]);
    s.assert_untouched();
}

#[test]
fn the_system_proxy_tunnels_https_unless_turned_off() {
    let site_dir = site("image.raw", b"via proxy");
    let server = TestServer::https(site_dir.path());
    let proxy = ConnectProxy::start();
    let s = setup();
    let proxies = |no_proxy: &[&str]| Proxies {
        https: Some(proxy.url()),
        http: None,
        no_proxy: no_proxy.iter().map(|s| s.to_string()).collect(),
    };
    let client = Client::with_proxies(s.root.path(), proxies(&[]));
    // A name only the proxy can reach: the tunnel is asked for by name, not resolved here.
    let port = server.addr().unwrap().port();
    let url = format!("https://{SERVER_NAME}:{port}/image.raw");
    let mut d = download(&url, ca(&server));
    client
        .download("test", &d, &s.files, &Seen::default())
        .unwrap();
    assert_eq!(s.target(), b"via proxy");
    assert_eq!(proxy.connects(), [format!("{SERVER_NAME}:{port}")]);
    // Without the proxy (use_proxy false, or no_proxy naming the host), the name is
    // resolved here, and does not resolve.
    std::fs::write(s.root.path().join("var/lib/updates/image.raw"), OLD).unwrap();
    d.request.use_proxy = false;
    let res = client.download("test", &d, &s.files, &Seen::default());
    assert_err(res.map_err(|e| e.0), &["cannot resolve server.test"]);
    d.request.use_proxy = true;
    let bypass = Client::with_proxies(s.root.path(), proxies(&["example.org", ".test"]));
    let res = bypass.download("test", &d, &s.files, &Seen::default());
    assert_err(res.map_err(|e| e.0), &["cannot resolve server.test"]);
    // Loopback addresses never go through the proxy.
    let d = download(&server.url("/image.raw"), ca(&server));
    client
        .download("test", &d, &s.files, &Seen::default())
        .unwrap();
    assert_eq!(proxy.connects().len(), 1, "{:?}", proxy.connects());
    s.assert_untouched_but(b"via proxy");
}

#[test]
fn requests_and_downloads_go_over_a_unix_socket_under_the_root() {
    let s = setup();
    std::fs::create_dir_all(s.root.path().join("run/incus")).unwrap();
    let socket = s.root.path().join("run/incus/unix.socket");
    let site_dir = site("image.raw", b"over unix");
    let server = TestServer::unix(site_dir.path(), &socket);
    server.handle("/1.0", Reply::json(200, r#"{"type":"sync"}"#));
    let mut req = Request::get(server.url("/1.0?recursion=1"));
    req.unix_socket = Some("/run/incus/unix.socket".into());
    let resp = s.client.http("test", &req, b"").unwrap();
    assert_eq!(
        (resp.status, resp.body.as_slice()),
        (200, &br#"{"type":"sync"}"#[..])
    );
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(server.requests()[0].query, "recursion=1");
    let mut d = download(&server.url("/image.raw"), Tls::default());
    d.request.unix_socket = Some("/run/incus/unix.socket".into());
    s.download(&d).unwrap();
    assert_eq!(s.target(), b"over unix");
    // The socket path is resolved inside the root: a host path is not reached.
    req.unix_socket = Some(socket.to_str().unwrap().to_string());
    assert_err(
        s.client.http("test", &req, b"").map_err(|e| e.0),
        &["unix socket"],
    );
}

/// A symlink at the socket's own name resolves inside the root, as every other path: one
/// pointing at a socket outside the root (by its host path) does not reach it.
#[test]
fn a_symlink_at_the_sockets_name_cannot_reach_a_socket_outside_the_root() {
    let s = setup();
    let outside = tempfile::tempdir().unwrap();
    let socket = outside.path().join("outside.socket");
    let site_dir = site("image.raw", b"outside");
    let server = TestServer::unix(site_dir.path(), &socket);
    std::fs::create_dir_all(s.root.path().join("run")).unwrap();
    std::os::unix::fs::symlink(&socket, s.root.path().join("run/link.socket")).unwrap();
    let mut req = Request::get(server.url("/image.raw"));
    req.unix_socket = Some("/run/link.socket".into());
    assert_err(
        s.client.http("test", &req, b"").map_err(|e| e.0),
        &["unix socket /run/link.socket"],
    );
    assert!(
        server.requests().is_empty(),
        "the outside server was reached"
    );
}

/// A FIFO planted where a `file://` download reads is refused at once, never waited on.
#[test]
fn a_file_url_naming_a_fifo_is_refused_without_hanging() {
    let s = setup();
    std::fs::create_dir_all(s.root.path().join("srv")).unwrap();
    let fifo = s.root.path().join("srv/fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    #[allow(unsafe_code)]
    // SAFETY: a NUL-terminated path; mkfifo only creates a file.
    let made = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(made, 0);
    let started = Instant::now();
    let d = download("file:///srv/fifo", Tls::default());
    assert_err(s.download(&d), &["not a regular file"]);
    assert!(started.elapsed() < Duration::from_secs(5));
    s.assert_untouched_but(OLD);
}

#[test]
fn file_urls_read_under_the_root_and_cannot_escape_it() {
    let s = setup();
    let plain = data(3_000_000);
    let gz = gzip(&plain);
    std::fs::create_dir_all(s.root.path().join("srv")).unwrap();
    std::fs::write(s.root.path().join("srv/image.raw.gz"), &gz).unwrap();
    let mut d = download("file:///srv/image.raw.gz", Tls::default());
    d.gunzip = true;
    d.sha256 = sha(&gz);
    let r = s.download(&d).unwrap();
    assert_eq!(r.written, plain.len() as u64);
    assert!(s.target() == plain);

    let s = setup();
    // A host file outside the root, reached by `..` or through a symlink in the root.
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, b"host secret").unwrap();
    let dotdot = format!("file:///../../../../../..{}", secret.display());
    assert_err(
        s.download(&download(&dotdot, Tls::default())),
        &["must be absolute and must not contain '..'"],
    );
    std::os::unix::fs::symlink(&secret, s.root.path().join("srv-link")).unwrap();
    assert_err(
        s.download(&download("file:///srv-link", Tls::default())),
        &["does not exist"],
    );
    let direct = format!("file://{}", secret.display());
    assert_err(
        s.download(&download(&direct, Tls::default())),
        &["does not exist"],
    );
    s.assert_untouched();
}

#[test]
fn http_requests_send_headers_and_body_and_return_any_status() {
    let server = TestServer::https(Path::new("/nonexistent"));
    server.handle(
        "/api",
        Reply::json(201, r#"{"ok":true}"#).header("X-Id", "7"),
    );
    let s = setup();
    let mut req = Request::get(server.url("/api?x=1")).header("Authorization", "Bearer t");
    req.method = "POST".into();
    req.tls = ca(&server);
    let resp = s.client.http("test", &req, br#"{"a":1}"#).unwrap();
    assert_eq!(resp.status, 201);
    assert_eq!(resp.header("x-id"), Some("7"));
    assert_eq!(resp.body, br#"{"ok":true}"#);
    let got = &server.requests()[0];
    assert_eq!(got.method, "POST");
    assert_eq!(got.body, br#"{"a":1}"#);
    assert_eq!(got.header("authorization"), Some("Bearer t"));
    // Any status comes back as a response.
    req.method = "GET".into();
    req.url = server.url("/missing");
    assert_eq!(s.client.http("test", &req, b"").unwrap().status, 404);
    // Bodies over the limit are refused both ways.
    let big = vec![0u8; MAX_HTTP_BODY + 1];
    assert_err(
        s.client.http("test", &req, &big).map_err(|e| e.0),
        &["request body is larger"],
    );
    server.handle("/big", Reply::new(200, big));
    req.url = server.url("/big");
    assert_err(
        s.client.http("test", &req, b"").map_err(|e| e.0),
        &["response body is larger"],
    );
}

#[test]
fn redirects_are_followed_and_credentials_stay_on_their_host() {
    let site_dir = site("image.raw", b"redirected");
    let server = TestServer::https(site_dir.path());
    let site_dir = site("image.raw", b"elsewhere");
    let other = TestServer::https(site_dir.path());
    server.handle("/latest", Reply::redirect(302, "/image.raw"));
    let s = setup();
    let d = download(&server.url("/latest"), ca(&server));
    s.download(&d).unwrap();
    assert_eq!(s.target(), b"redirected");
    // Never down to http, nor to a local file.
    server.handle(
        "/down",
        Reply::redirect(301, "http://127.0.0.1:1/image.raw"),
    );
    server.handle(
        "/local",
        Reply::redirect(302, "file:///var/lib/updates/image.raw"),
    );
    for (path, why) in [
        ("/down", "from https down to http"),
        ("/local", "redirect to file"),
    ] {
        let res = s.download(&download(&server.url(path), ca(&server)));
        assert_err(res, &[why]);
    }
    // To another host: the Authorization header is not sent there.
    server.handle(
        "/away",
        Reply::redirect(
            302,
            &other.url("/image.raw").replace("127.0.0.1", "localhost"),
        ),
    );
    let mut d = download(
        &server.url("/away"),
        Tls {
            pinned_pem: None,
            ..ca(&server)
        },
    );
    d.request
        .headers
        .push(("Authorization".into(), "Bearer secret".into()));
    // The other server has another CA: trust both.
    d.request.tls.ca_pem = Some(format!("{}{}", server.ca_pem(), other.ca_pem()));
    s.download(&d).unwrap();
    assert_eq!(s.target(), b"elsewhere");
    assert_eq!(
        server.requests().last().unwrap().header("authorization"),
        Some("Bearer secret")
    );
    assert_eq!(other.requests()[0].header("authorization"), None);
}

#[test]
fn plugins_download_through_the_harness_host_handle() {
    let manifest: Manifest = serde_json::from_value(serde_json::json!({
        "name": "net-test", "version": "1.0.0", "api_version": "1.2",
        "kind": "service", "hooks": [], "paths": ["/var/lib/updates"],
    }))
    .unwrap();
    let host = HarnessHost::new(&manifest).unwrap();
    let site_dir = site("image.raw", b"plain http");
    let server = TestServer::http(site_dir.path());
    let handle = host.handle();
    let d = download(&server.url("/image.raw"), Tls::default());
    let json = serde_json::to_string(&d).unwrap();
    match handle.download(RStr::from(json.as_str())) {
        RResult::ROk(r) => assert!(r.as_str().contains(&sha(b"plain http")), "{r}"),
        RResult::RErr(e) => panic!("{e:?}"),
    }
    assert_eq!(host.read_text(TARGET), "plain http");
    assert!(host
        .file_effects()
        .contains(&FileEffect::written(TARGET, 0o640)));
}

#[test]
fn errors_never_show_a_query_which_may_carry_a_token() {
    let site_dir = site("other", b"x");
    let server = TestServer::http(site_dir.path());
    let s = setup();
    let url = format!("{}?token=secret-token", server.url("/image.raw"));
    let e = assert_err(
        s.download(&download(&url, Tls::default())),
        &["answered 404", &server.url("/image.raw")],
    );
    assert!(!e.contains("secret-token"), "{e}");
    // The query was sent all the same.
    assert_eq!(server.requests()[0].query, "token=secret-token");

    let mut request = Request::get(&url);
    request.stall_timeout_ms = 1;
    server.fault("/image.raw", Fault::HangAfter(0));
    let e = s
        .client
        .http("test", &request, b"")
        .expect_err("a stalled request fails")
        .0;
    assert!(
        e.starts_with(&format!("GET {}: ", server.url("/image.raw"))),
        "{e}"
    );
    assert!(!e.contains("secret-token"), "{e}");
}
