//! A small HTTP(S) server for tests of code that downloads or calls APIs through the host
//! (`plugin_host::net::Client`).
//!
//! It serves a directory tree (`GET /a/b` is `<dir>/a/b`), answers registered paths with a
//! fixed reply ([`TestServer::handle`]: stand-ins for API endpoints), records every request
//! ([`TestServer::requests`]) and injects faults per path ([`Fault`]). It listens on
//! `127.0.0.1:<random port>` with https (a CA and a server certificate for `127.0.0.1`,
//! `localhost` and [`SERVER_NAME`] made at start: [`TestServer::ca_pem`], [`TestServer::cert_pem`]), plain
//! http, or a unix socket. Each connection carries one request and is closed after it.
//!
//! ```no_run
//! use incus_osd_harness::testserver::{Fault, Reply, TestServer};
//! let dir = tempfile::tempdir().unwrap();
//! std::fs::write(dir.path().join("image.gz"), b"...").unwrap();
//! let server = TestServer::https(dir.path());
//! server.handle("/1.0/update", Reply::json(200, r#"{"version":"1"}"#));
//! server.fault("/image.gz", Fault::HangAfter(10));
//! let url = server.url("/image.gz"); // https://127.0.0.1:<port>/image.gz
//! let ca = server.ca_pem();          // trust it with `tls.ca_pem`
//! ```
//!
//! [`ConnectProxy`] is a tiny `CONNECT` proxy for testing the system proxy.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, SupportedProtocolVersion};

/// A name the server's certificate carries besides `127.0.0.1` and `localhost`. It does
/// not resolve: [`ConnectProxy`] sends tunnels for any `*.test` host to `127.0.0.1`, so a
/// test reaches the server by this name only through the proxy (a client never proxies
/// loopback addresses).
pub const SERVER_NAME: &str = "server.test";

/// A request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query (after `?`), empty when none.
    pub query: String,
    /// Headers in the order received, names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How a body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// `Content-Length`.
    #[default]
    Length,
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// No length: the body ends when the connection closes.
    Close,
}

/// A fixed reply for a registered path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub framing: Framing,
}

impl Reply {
    /// `status` with `body`.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Reply {
            status,
            headers: vec![],
            body: body.into(),
            framing: Framing::Length,
        }
    }

    /// `status` with a JSON body (`Content-Type: application/json`).
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self::new(status, body).header("Content-Type", "application/json")
    }

    /// A redirect to `location`.
    pub fn redirect(status: u16, location: &str) -> Self {
        Self::new(status, "").header("Location", location)
    }

    /// The same with a header added.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The same with another framing.
    pub fn framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }
}

/// A fault injected on a path (served file or registered reply alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Send the head and this many body bytes, then nothing more, keeping the connection
    /// open (until the server is dropped).
    HangAfter(u64),
    /// Send the head and this many body bytes, then close the connection abruptly (no TLS
    /// close_notify).
    DropAfter(u64),
    /// Announce this `Content-Length` (instead of the real one), send the real body, and
    /// close the connection cleanly.
    WrongLength(u64),
}

#[derive(Default)]
struct Shared {
    requests: Vec<RecordedRequest>,
    handlers: HashMap<String, Reply>,
    /// Replies for one method on one path, before `handlers`.
    method_handlers: HashMap<(String, String), Reply>,
    /// Replies for every path below a prefix (`/register/` answers `/register/<anything>`).
    prefix_handlers: Vec<(String, Reply)>,
    faults: HashMap<String, Fault>,
}

struct State {
    dir: Option<PathBuf>,
    shared: Mutex<Shared>,
    stop: AtomicBool,
    tls: Option<Arc<ServerConfig>>,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The certificates a server made at start.
struct Pki {
    ca_cert: Certificate,
    ca_key: KeyPair,
    cert_pem: String,
}

enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// What [`TestServer::builder`] sets up.
pub struct Builder {
    dir: Option<PathBuf>,
    tls: bool,
    versions: Vec<&'static SupportedProtocolVersion>,
    client_auth: bool,
    unix: Option<PathBuf>,
}

impl Builder {
    /// Serve the files under `dir`.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// Plain http instead of https.
    pub fn plain(mut self) -> Self {
        self.tls = false;
        self
    }

    /// Listen on a unix socket at this (host) path, plain http.
    pub fn unix(mut self, socket: &Path) -> Self {
        self.unix = Some(socket.to_path_buf());
        self.tls = false;
        self
    }

    /// Speak only TLS 1.2.
    pub fn tls12_only(mut self) -> Self {
        self.versions = vec![&rustls::version::TLS12];
        self
    }

    /// Speak only TLS 1.3.
    pub fn tls13_only(mut self) -> Self {
        self.versions = vec![&rustls::version::TLS13];
        self
    }

    /// Require a client certificate issued by the server's CA
    /// ([`TestServer::client_cert`]).
    pub fn require_client_cert(mut self) -> Self {
        self.client_auth = true;
        self
    }

    /// Starts the server.
    pub fn start(self) -> TestServer {
        let pki = make_pki();
        let tls = self.tls.then(|| {
            let provider = provider();
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&self.versions)
                .expect("TLS versions");
            let builder = if self.client_auth {
                let mut roots = RootCertStore::empty();
                roots.add(pki.pki.ca_cert.der().clone()).expect("CA");
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            } else {
                builder.with_no_client_auth()
            };
            Arc::new(
                builder
                    .with_single_cert(vec![pki.cert_der.clone()], pki.key_der.clone_key())
                    .expect("server certificate"),
            )
        });
        let state = Arc::new(State {
            dir: self.dir,
            shared: Mutex::default(),
            stop: AtomicBool::new(false),
            tls,
        });
        let listen = match self.unix {
            Some(path) => {
                let l = UnixListener::bind(&path)
                    .unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
                let st = state.clone();
                thread::spawn(move || {
                    for conn in l.incoming() {
                        if st.stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(conn) = conn else { continue };
                        let st = st.clone();
                        thread::spawn(move || serve(&st, Conn::Unix(conn)));
                    }
                });
                Listen::Unix(path)
            }
            None => {
                let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
                let addr = l.local_addr().expect("local address");
                let st = state.clone();
                thread::spawn(move || {
                    for conn in l.incoming() {
                        if st.stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(conn) = conn else { continue };
                        let st = st.clone();
                        thread::spawn(move || serve(&st, Conn::Tcp(conn)));
                    }
                });
                Listen::Tcp(addr)
            }
        };
        TestServer {
            state,
            listen,
            pki: pki.pki,
        }
    }
}

/// The server: see the module documentation. Stops when dropped.
pub struct TestServer {
    state: Arc<State>,
    listen: Listen,
    pki: Pki,
}

impl TestServer {
    /// A server to configure ([`Builder`]): https, all TLS versions, no client
    /// certificate, no directory.
    pub fn builder() -> Builder {
        Builder {
            dir: None,
            tls: true,
            versions: rustls::ALL_VERSIONS.to_vec(),
            client_auth: false,
            unix: None,
        }
    }

    /// Serves `dir` over https.
    pub fn https(dir: &Path) -> Self {
        Self::builder().dir(dir).start()
    }

    /// Serves `dir` over plain http.
    pub fn http(dir: &Path) -> Self {
        Self::builder().dir(dir).plain().start()
    }

    /// Serves `dir` over plain http on the unix socket `socket` (a host path).
    pub fn unix(dir: &Path, socket: &Path) -> Self {
        Self::builder().dir(dir).unix(socket).start()
    }

    /// The URL of `path` (`/a/b?x`) on this server: `https://127.0.0.1:<port>/a/b?x`,
    /// `http://...`, or `http://unix/a/b?x` for a unix socket.
    pub fn url(&self, path: &str) -> String {
        match &self.listen {
            Listen::Tcp(addr) => {
                let scheme = if self.state.tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{addr}{path}")
            }
            Listen::Unix(_) => format!("http://unix{path}"),
        }
    }

    /// The TCP address (`None` for a unix socket).
    pub fn addr(&self) -> Option<SocketAddr> {
        match &self.listen {
            Listen::Tcp(a) => Some(*a),
            Listen::Unix(_) => None,
        }
    }

    /// The PEM of the CA that signed the server's certificate.
    pub fn ca_pem(&self) -> String {
        self.pki.ca_cert.pem()
    }

    /// The PEM of the server's own certificate (for pinning).
    pub fn cert_pem(&self) -> String {
        self.pki.cert_pem.clone()
    }

    /// A new client certificate and its key (PEM), issued by the server's CA for
    /// `common_name`: accepted by a server built with [`Builder::require_client_cert`].
    pub fn client_cert(&self, common_name: &str) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p
            .signed_by(&key, &self.pki.ca_cert, &self.pki.ca_key)
            .expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    /// Answers `path` (exact, without the query) with `reply` from now on.
    pub fn handle(&self, path: &str, reply: Reply) {
        self.state.lock().handlers.insert(path.to_string(), reply);
    }

    /// Answers `method` on `path` (exact, without the query) with `reply` from now on, before
    /// any reply [`TestServer::handle`] set for the path (an API whose `GET` lists what its
    /// `POST` creates).
    pub fn handle_method(&self, method: &str, path: &str, reply: Reply) {
        self.state
            .lock()
            .method_handlers
            .insert((method.to_string(), path.to_string()), reply);
    }

    /// Answers every path that starts with `prefix` (and has no exact [`TestServer::handle`]
    /// reply) with `reply` from now on; the longest matching prefix wins. For endpoints
    /// whose path carries an id (`/register/<uuid>`).
    pub fn handle_prefix(&self, prefix: &str, reply: Reply) {
        let mut st = self.state.lock();
        st.prefix_handlers.retain(|(p, _)| p != prefix);
        st.prefix_handlers.push((prefix.to_string(), reply));
    }

    /// Injects `fault` on `path` from now on.
    pub fn fault(&self, path: &str, fault: Fault) {
        self.state.lock().faults.insert(path.to_string(), fault);
    }

    /// Removes the fault on `path`.
    pub fn clear_fault(&self, path: &str) {
        self.state.lock().faults.remove(path);
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.lock().requests.clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accepting thread so it sees the flag.
        match &self.listen {
            Listen::Tcp(addr) => {
                let _ = TcpStream::connect(addr);
            }
            Listen::Unix(path) => {
                let _ = UnixStream::connect(path);
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

// ring, as the client uses (rustls marks it deprecated for lack of post-quantum key
// exchange only).
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct MadePki {
    pki: Pki,
    cert_der: CertificateDer<'static>,
    key_der: PrivateKeyDer<'static>,
}

fn make_pki() -> MadePki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.distinguished_name
        .push(DnType::CommonName, "incus-osd test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let mut p = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        SERVER_NAME.to_string(),
    ])
    .expect("server params");
    p.distinguished_name
        .push(DnType::CommonName, "incus-osd test server");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p
        .signed_by(&key, &ca_cert, &ca_key)
        .expect("server certificate");
    MadePki {
        cert_der: cert.der().clone(),
        key_der: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        pki: Pki {
            cert_pem: cert.pem(),
            ca_cert,
            ca_key,
        },
    }
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn shutdown(&self) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(Shutdown::Both),
            Conn::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn serve(state: &State, conn: Conn) {
    match &state.tls {
        Some(config) => {
            let Ok(tls) = ServerConnection::new(config.clone()) else {
                return;
            };
            let mut stream = rustls::StreamOwned::new(tls, conn);
            let end = respond(state, &mut stream);
            if end == End::Clean {
                stream.conn.send_close_notify();
                let _ = stream.flush();
            }
            stream.sock.shutdown();
        }
        None => {
            let mut conn = conn;
            let _ = respond(state, &mut conn);
            conn.shutdown();
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    Clean,
    Abrupt,
}

/// What the body of a response is.
enum Body {
    Bytes(Vec<u8>),
    File(std::fs::File, u64),
}

fn respond<S: Read + Write>(state: &State, stream: &mut S) -> End {
    let Some(req) = read_request(stream) else {
        return End::Abrupt;
    };
    let (reply, fault) = {
        let mut shared = state.lock();
        shared.requests.push(req.clone());
        (
            shared
                .method_handlers
                .get(&(req.method.clone(), req.path.clone()))
                .or_else(|| shared.handlers.get(&req.path))
                .cloned()
                .or_else(|| {
                    shared
                        .prefix_handlers
                        .iter()
                        .filter(|(p, _)| req.path.starts_with(p.as_str()))
                        .max_by_key(|(p, _)| p.len())
                        .map(|(_, r)| r.clone())
                }),
            shared.faults.get(&req.path).copied(),
        )
    };
    let (status, headers, body, framing) = match reply {
        Some(r) => (r.status, r.headers, Body::Bytes(r.body), r.framing),
        None => match open_file(state, &req.path) {
            Some((f, len)) => (200, vec![], Body::File(f, len), Framing::Length),
            None => (
                404,
                vec![],
                Body::Bytes(b"not found\n".to_vec()),
                Framing::Length,
            ),
        },
    };
    let len = match &body {
        Body::Bytes(b) => b.len() as u64,
        Body::File(_, len) => *len,
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Status",
    };
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n");
    for (n, v) in &headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    match (framing, fault) {
        (_, Some(Fault::WrongLength(claimed))) => {
            head.push_str(&format!("Content-Length: {claimed}\r\n"))
        }
        (Framing::Length, _) => head.push_str(&format!("Content-Length: {len}\r\n")),
        (Framing::Chunked, _) => head.push_str("Transfer-Encoding: chunked\r\n"),
        (Framing::Close, _) => {}
    }
    head.push_str("\r\n");
    if stream.write_all(head.as_bytes()).is_err() {
        return End::Abrupt;
    }
    if req.method == "HEAD" {
        return End::Clean;
    }
    let chunked = framing == Framing::Chunked && !matches!(fault, Some(Fault::WrongLength(_)));
    let budget = match fault {
        Some(Fault::HangAfter(n)) | Some(Fault::DropAfter(n)) => n,
        _ => u64::MAX,
    };
    let mut sent = 0u64;
    let mut reader: Box<dyn Read> = match body {
        Body::Bytes(b) => Box::new(io::Cursor::new(b)),
        Body::File(f, _) => Box::new(f),
    };
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let want = buf
            .len()
            .min((budget - sent).min(usize::MAX as u64) as usize);
        if want == 0 {
            break;
        }
        let n = match reader.read(&mut buf[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let ok = if chunked {
            stream
                .write_all(format!("{n:x}\r\n").as_bytes())
                .and_then(|()| stream.write_all(&buf[..n]))
                .and_then(|()| stream.write_all(b"\r\n"))
        } else {
            stream.write_all(&buf[..n])
        };
        if ok.is_err() {
            return End::Abrupt;
        }
        sent += n as u64;
    }
    let _ = stream.flush();
    match fault {
        Some(Fault::HangAfter(_)) => {
            while !state.stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(20));
            }
            End::Abrupt
        }
        Some(Fault::DropAfter(_)) => End::Abrupt,
        _ => {
            if chunked && stream.write_all(b"0\r\n\r\n").is_err() {
                return End::Abrupt;
            }
            End::Clean
        }
    }
}

fn open_file(state: &State, path: &str) -> Option<(std::fs::File, u64)> {
    let dir = state.dir.as_ref()?;
    let rel = Path::new(path.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let f = std::fs::File::open(dir.join(rel)).ok()?;
    let meta = f.metadata().ok()?;
    meta.is_file().then_some((f, meta.len()))
}

fn read_request<S: Read>(stream: &mut S) -> Option<RecordedRequest> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    let mut headers = vec![];
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':')?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some(RecordedRequest {
        method,
        path,
        query,
        headers,
        body,
    })
}

/// A tiny `CONNECT` proxy on `127.0.0.1:<random port>`: it opens the tunnels it is asked
/// for and records their targets (`host:port`, as asked). Hosts ending in `.test` (such as
/// [`SERVER_NAME`]) are reached at `127.0.0.1`. Stops accepting when dropped.
pub struct ConnectProxy {
    addr: SocketAddr,
    connects: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl ConnectProxy {
    pub fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = l.local_addr().expect("local address");
        let connects = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (connects.clone(), stop.clone());
        thread::spawn(move || {
            for conn in l.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let c = c.clone();
                thread::spawn(move || tunnel(conn, &c));
            }
        });
        ConnectProxy {
            addr,
            connects,
            stop,
        }
    }

    /// `http://127.0.0.1:<port>`, as `https_proxy` wants it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The targets of the tunnels opened so far.
    pub fn connects(&self) -> Vec<String> {
        self.connects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn tunnel(mut client: TcpStream, connects: &Mutex<Vec<String>>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
        let _ = client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    connects
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(target.to_string());
    let reach = match target.rsplit_once(':') {
        Some((host, port)) if host.ends_with(".test") => format!("127.0.0.1:{port}"),
        _ => target.to_string(),
    };
    let Ok(server) = TcpStream::connect(reach) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .is_err()
    {
        return;
    }
    let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = thread::spawn(move || {
        let mut server = server;
        let _ = io::copy(&mut c2, &mut server);
        let _ = server.shutdown(Shutdown::Write);
    });
    let _ = io::copy(&mut s2, &mut client);
    let _ = client.shutdown(Shutdown::Write);
    let _ = up.join();
}
