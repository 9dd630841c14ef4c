//! The real network client (feature `net`): HTTP/1.1 written on std sockets, rustls (with
//! the ring provider) for https, the system proxy from the daemon's environment, and
//! `file://` URLs for downloads of files under the root prefix.
//!
//! Every request is one connection (`Connection: close`). Connecting, and each read or
//! write, may stall for at most the request's `stall_timeout_ms` (30 s by default): a
//! server that stops sending mid-file fails with a "stalled" error instead of hanging, and
//! one that keeps sending is never cut off. `GET` and `HEAD` follow up to 10 redirects
//! (never from https down to http; credentials are dropped when the host changes).
//!
//! Trust: the OS's CA bundle under the root prefix (`/etc/ssl/certs/ca-certificates.crt`),
//! or the built-in Mozilla root set (`webpki-roots`) when there is none, unless the request
//! names a private CA (`tls.ca_pem`, which replaces them) or pins the server's certificate
//! (`tls.pinned_pem`: exactly that certificate, its chain and name not checked).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use plugin_api::net::{Download, DownloadResult, Request, Response, Tls, MAX_HTTP_BODY};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::files::RootFs;
use crate::host_ops::Files;
use crate::net::{pipeline, Net, Progress};
use crate::PlatformError;

/// How long connecting and each read or write may stall when the request does not say.
pub const DEFAULT_STALL: Duration = Duration::from_secs(30);
/// Redirects followed at most.
const MAX_REDIRECTS: usize = 10;
/// The largest response head accepted (and the most chunked trailers).
const MAX_HEAD: usize = 64 * 1024;
/// Informational answers (`100 Continue`) accepted before the real one.
const MAX_INFORMATIONAL: usize = 8;

/// The system proxy settings (`https_proxy`, `http_proxy`, `no_proxy`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proxies {
    /// For https URLs (tunnelled with `CONNECT`).
    pub https: Option<String>,
    /// For http URLs.
    pub http: Option<String>,
    /// Hosts reached directly: `*`, a host name (its subdomains too, with or without a
    /// leading dot) or an IP address. `localhost` and loopback addresses always are.
    pub no_proxy: Vec<String>,
}

impl Proxies {
    /// From the process environment (lower-case names first, then upper-case).
    pub fn from_env() -> Self {
        let var = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
        };
        Proxies {
            https: var(&["https_proxy", "HTTPS_PROXY"]),
            http: var(&["http_proxy", "HTTP_PROXY"]),
            no_proxy: var(&["no_proxy", "NO_PROXY"])
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_ascii_lowercase())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    fn bypass(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        // As Go's proxy rules: the machine itself is never reached through a proxy.
        if host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
            return true;
        }
        self.no_proxy.iter().any(|entry| {
            let entry = entry.trim_start_matches("*.");
            let entry = entry.strip_prefix('.').unwrap_or(entry);
            // `host:port` entries: the port is ignored.
            let entry = match entry.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') && p.chars().all(|c| c.is_ascii_digit()) => h,
                _ => entry,
            };
            let entry = entry.trim_start_matches('[').trim_end_matches(']');
            entry == "*"
                || host == entry
                || (host.ends_with(entry) && host[..host.len() - entry.len()].ends_with('.'))
        })
    }

    fn for_url(&self, url: &Url) -> Option<&str> {
        let proxy = match url.scheme {
            Scheme::Https => self.https.as_deref(),
            Scheme::Http => self.http.as_deref(),
            Scheme::File => None,
        }?;
        (!self.bypass(&url.host)).then_some(proxy)
    }
}

/// The host's network client: see the module documentation.
#[derive(Debug, Clone)]
pub struct Client {
    fs: RootFs,
    proxies: Proxies,
    /// The trusted roots when a request names none, read once (see [`Client::roots`]).
    roots: OnceLock<Arc<RootCertStore>>,
    /// Certificates trusted beside those roots ([`Client::trusting`]).
    extra: Vec<CertificateDer<'static>>,
}

impl Client {
    /// A client for a daemon whose OS root is `root` (unix sockets and `file://` URLs are
    /// resolved inside it), with the proxy settings of the process environment.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::with_proxies(root, Proxies::from_env())
    }

    /// The same with explicit proxy settings.
    pub fn with_proxies(root: impl Into<PathBuf>, proxies: Proxies) -> Self {
        Client {
            fs: RootFs::new(root),
            proxies,
            roots: OnceLock::new(),
            extra: vec![],
        }
    }

    /// The same client trusting `ca_pem`'s certificates beside its roots, for requests
    /// that name neither a CA nor a pin (tests stand a private CA in for a public one).
    pub fn trusting(mut self, ca_pem: &str) -> Result<Self, String> {
        self.extra.extend(certs(ca_pem, "trusted CA")?);
        self.roots = OnceLock::new();
        Ok(self)
    }

    /// The roots a request without its own CA or pin trusts: the OS's CA bundle
    /// ([`CA_BUNDLE`], under the root prefix, where the OS adds its custom CAs) when it has
    /// one, else the built-in Mozilla set.
    fn roots(&self) -> Arc<RootCertStore> {
        self.roots
            .get_or_init(|| {
                let bundle = self.fs.read(CA_BUNDLE).ok().flatten().and_then(|pem| {
                    let mut store = RootCertStore::empty();
                    for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
                        let _ = store.add(cert);
                    }
                    (!store.is_empty()).then_some(store)
                });
                let mut store = match bundle {
                    Some(store) => store,
                    None => (*system_roots()).clone(),
                };
                for cert in &self.extra {
                    let _ = store.add(cert.clone());
                }
                Arc::new(store)
            })
            .clone()
    }

    /// Sends `request` (following redirects for `GET`/`HEAD`) and returns the final
    /// response with its body still to read.
    fn send(&self, request: &Request, body: &[u8]) -> Result<Open, String> {
        let stall = match request.stall_timeout_ms {
            0 => DEFAULT_STALL,
            ms => Duration::from_millis(ms),
        };
        let mut url = Url::parse(&request.url)?;
        if url.scheme == Scheme::File {
            return Err("file:// URLs are for downloads only".into());
        }
        let method = &request.method;
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
            return Err(format!("bad method {method:?}"));
        }
        let follow = matches!(request.method.as_str(), "GET" | "HEAD");
        let mut headers = request.headers.clone();
        for _ in 0..=MAX_REDIRECTS {
            let open = self.exchange(request, &url, &headers, body, stall)?;
            let location = open.header("location");
            let redirect = matches!(open.status, 301 | 302 | 303 | 307 | 308);
            match location {
                Some(location) if follow && redirect => {
                    let next = url.join(location)?;
                    if next.scheme == Scheme::File {
                        return Err(format!(
                            "refusing a redirect to {}",
                            super::shown_url(location)
                        ));
                    }
                    if url.scheme == Scheme::Https && next.scheme != Scheme::Https {
                        return Err(format!(
                            "refusing a redirect from https down to {}",
                            super::shown_url(&next.text())
                        ));
                    }
                    if next.host != url.host || next.port != url.port {
                        headers.retain(|(n, _)| {
                            !n.eq_ignore_ascii_case("authorization")
                                && !n.eq_ignore_ascii_case("cookie")
                        });
                    }
                    url = next;
                }
                _ => return Ok(open),
            }
        }
        Err(format!("more than {MAX_REDIRECTS} redirects"))
    }

    /// One request and the head of its response.
    fn exchange(
        &self,
        request: &Request,
        url: &Url,
        headers: &[(String, String)],
        body: &[u8],
        stall: Duration,
    ) -> Result<Open, String> {
        let proxy = if request.use_proxy && request.unix_socket.is_none() {
            self.proxies.for_url(url)
        } else {
            None
        };
        let mut target = url.path.clone();
        let mut proxy_auth = None;
        let sock = if let Some(socket) = &request.unix_socket {
            self.connect_unix(socket, stall)?
        } else if let Some(proxy) = proxy {
            let purl = Url::parse(proxy).map_err(|e| format!("the proxy {proxy}: {e}"))?;
            if purl.scheme != Scheme::Http {
                return Err(format!(
                    "the proxy {proxy}: only http:// proxies are supported"
                ));
            }
            let mut sock = connect_tcp(&purl.host, purl.port, stall)?;
            let auth = purl
                .userinfo
                .as_ref()
                .map(|u| format!("Basic {}", base64(u)));
            if url.scheme == Scheme::Https {
                tunnel(&mut sock, url, auth.as_deref(), proxy)?;
            } else {
                target = url.text();
                proxy_auth = auth;
            }
            sock
        } else {
            connect_tcp(&url.host, url.port, stall)?
        };
        let mut stream: Box<dyn Stream> = if url.scheme == Scheme::Https {
            Box::new(tls_connect(sock, url, &request.tls, self.roots())?)
        } else {
            Box::new(sock)
        };
        let mut head = format!(
            "{} {target} HTTP/1.1\r\nHost: {}\r\n",
            request.method,
            url.authority()
        );
        let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        if !has("user-agent") {
            head.push_str("User-Agent: incus-osd\r\n");
        }
        if !has("accept") {
            head.push_str("Accept: */*\r\n");
        }
        if !body.is_empty() || matches!(request.method.as_str(), "POST" | "PUT" | "PATCH") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        if let Some(auth) = proxy_auth {
            head.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
        }
        for (n, v) in headers {
            if n.eq_ignore_ascii_case("host")
                || n.eq_ignore_ascii_case("connection")
                || n.eq_ignore_ascii_case("content-length")
                || n.eq_ignore_ascii_case("transfer-encoding")
            {
                continue;
            }
            if [n, v].iter().any(|s| s.contains(['\r', '\n'])) {
                return Err(format!("header {n:?} contains a line break"));
            }
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("Connection: close\r\n\r\n");
        let sent = stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body))
            .and_then(|()| stream.flush());
        sent.map_err(|e| format!("sending the request to {}: {e}", url.authority()))?;
        let mut reader = BufReader::with_capacity(CHUNK_IN, stream);
        // Informational answers (100 Continue) come before the real one: a few at most.
        let mut informational = 0;
        let (status, headers) = loop {
            let (status, headers) = read_head(&mut reader)
                .map_err(|e| format!("reading the response of {}: {e}", url.authority()))?;
            if !(100..200).contains(&status) || status == 101 {
                break (status, headers);
            }
            informational += 1;
            if informational > MAX_INFORMATIONAL {
                return Err(format!(
                    "reading the response of {}: more than {MAX_INFORMATIONAL} informational answers",
                    url.authority()
                ));
            }
        };
        Ok(Open {
            status,
            headers,
            reader,
            head_only: request.method == "HEAD",
        })
    }

    fn connect_unix(&self, socket: &str, stall: Duration) -> Result<Sock, String> {
        let sock = self
            .fs
            .open_path(socket)
            .map_err(|e| format!("the unix socket {socket}: {e}"))?;
        // Through the socket's own descriptor, resolved inside the root (a symlink at its
        // name included): it cannot be outside the root, and the path stays short.
        let path = PathBuf::from(format!("/proc/self/fd/{}", sock.as_raw_fd()));
        let s = UnixStream::connect(&path)
            .map_err(|e| format!("cannot connect to the unix socket {socket}: {e}"))?;
        drop(sock);
        s.set_read_timeout(Some(stall)).map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(stall))
            .map_err(|e| e.to_string())?;
        Ok(Sock {
            inner: SockKind::Unix(s),
            stall,
        })
    }
}

/// Bytes buffered from the connection.
const CHUNK_IN: usize = 128 * 1024;

impl Net for Client {
    fn http(
        &self,
        _plugin: &str,
        request: &Request,
        body: &[u8],
    ) -> Result<Response, PlatformError> {
        let fail = |what: String| {
            PlatformError(format!(
                "{} {}: {what}",
                request.method,
                super::shown_url(&request.url)
            ))
        };
        if body.len() > MAX_HTTP_BODY {
            return Err(fail(format!(
                "the request body is larger than {MAX_HTTP_BODY} bytes"
            )));
        }
        let open = self.send(request, body).map_err(fail)?;
        let status = open.status;
        let headers = open.headers.clone();
        let (mut reader, _) = open.body().map_err(fail)?;
        let mut out = Vec::new();
        (&mut reader)
            .take(MAX_HTTP_BODY as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| fail(e.to_string()))?;
        if out.len() > MAX_HTTP_BODY {
            return Err(fail(format!(
                "the response body is larger than {MAX_HTTP_BODY} bytes (use a download)"
            )));
        }
        Ok(Response {
            status,
            headers,
            body: out,
        })
    }

    fn download(
        &self,
        plugin: &str,
        download: &Download,
        files: &dyn Files,
        progress: &dyn Progress,
    ) -> Result<DownloadResult, PlatformError> {
        let url = &download.request.url;
        let shown = super::shown_url(url);
        let fail = |what: String| {
            PlatformError(format!(
                "download of {shown} to {}: {what}",
                download.target
            ))
        };
        // The target first: a path outside the allow-list costs no network traffic.
        let file = files
            .create_atomic(&download.target, download.mode)
            .map_err(|e| fail(e.to_string()))?;
        let parsed = Url::parse(url).map_err(fail)?;
        if parsed.scheme == Scheme::File {
            let mut src = self
                .fs
                .open_file(&parsed.path)
                .map_err(|e| fail(e.to_string()))?
                .ok_or_else(|| fail(format!("{} does not exist", parsed.path)))?;
            let total = src.metadata().map(|m| m.len()).ok();
            return pipeline::save(plugin, download, &mut src, total, file, progress);
        }
        let open = self.send(&download.request, &[]).map_err(fail)?;
        if open.status != 200 {
            return Err(fail(format!("the server answered {}", open.status)));
        }
        let (mut body, total) = open.body().map_err(fail)?;
        pipeline::save(plugin, download, &mut body, total, file, progress)
    }
}

/// A response whose head was read.
struct Open {
    status: u16,
    headers: Vec<(String, String)>,
    reader: BufReader<Box<dyn Stream>>,
    head_only: bool,
}

impl Open {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body and its announced length.
    fn body(self) -> Result<(Box<dyn Read>, Option<u64>), String> {
        let chunked = self
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = match self.header("content-length") {
            Some(v) => Some(
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("bad Content-Length {v:?}"))?,
            ),
            None => None,
        };
        if self.head_only || matches!(self.status, 204 | 304) {
            return Ok((Box::new(io::empty()), Some(0)));
        }
        if chunked {
            return Ok((Box::new(Chunked::new(self.reader)), None));
        }
        match length {
            Some(total) => Ok((
                Box::new(Length {
                    inner: self.reader,
                    left: total,
                    total,
                }),
                Some(total),
            )),
            None => Ok((Box::new(Close(self.reader)), None)),
        }
    }
}

/// Reads the status line and headers (names lower-cased).
fn read_head(r: &mut impl BufRead) -> io::Result<(u16, Vec<(String, String)>)> {
    let mut used = 0;
    let mut line = String::new();
    let mut next = |line: &mut String| -> io::Result<()> {
        line.clear();
        let n = r.by_ref().take((MAX_HEAD - used) as u64).read_line(line)?;
        used += n;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed before a complete response head",
            ));
        }
        if !line.ends_with('\n') {
            return Err(io::Error::other("the response head is too large"));
        }
        Ok(())
    };
    next(&mut line)?;
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    let status = match status {
        Some(s) if version.starts_with("HTTP/1.") => s,
        _ => {
            return Err(io::Error::other(format!(
                "not an HTTP/1.x response: {:?}",
                line.trim_end()
            )))
        }
    };
    let mut headers = Vec::new();
    loop {
        next(&mut line)?;
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok((status, headers))
}

fn cut_short(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, what)
}

/// A body of `Content-Length` bytes.
struct Length<R> {
    inner: R,
    left: u64,
    total: u64,
}

impl<R: Read> Read for Length<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let short = |got: u64, total: u64| {
            cut_short(format!(
                "the body was cut short: got {got} of {total} bytes (Content-Length)"
            ))
        };
        match self.inner.read(&mut buf[..max]) {
            Ok(0) => Err(short(self.total - self.left, self.total)),
            Ok(n) => {
                self.left -= n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(short(self.total - self.left, self.total))
            }
            Err(e) => Err(e),
        }
    }
}

/// A body that ends when the server closes the connection.
struct Close<R>(R);

impl<R: Read> Read for Close<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                cut_short(format!(
                    "the connection closed without a TLS close_notify, the body may be cut short: {e}"
                ))
            } else {
                e
            }
        })
    }
}

/// A `Transfer-Encoding: chunked` body.
struct Chunked<R> {
    inner: R,
    /// Bytes left in the current chunk.
    left: u64,
    done: bool,
    started: bool,
}

impl<R: BufRead> Chunked<R> {
    fn new(inner: R) -> Self {
        Chunked {
            inner,
            left: 0,
            done: false,
            started: false,
        }
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        let n = self.inner.by_ref().take(4096).read_line(&mut line);
        match n {
            Ok(0) => Err(cut_short(
                "the body was cut short (the chunked encoding ended early)".into(),
            )),
            Ok(_) if !line.ends_with('\n') => Err(io::Error::other("bad chunked encoding")),
            Ok(_) => Ok(line.trim_end_matches(['\r', '\n']).to_string()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(cut_short(format!(
                "the body was cut short (the chunked encoding ended early): {e}"
            ))),
            Err(e) => Err(e),
        }
    }
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            if self.started && !self.line()?.is_empty() {
                return Err(io::Error::other(
                    "bad chunked encoding (no CRLF after a chunk)",
                ));
            }
            self.started = true;
            let line = self.line()?;
            let size = line.split(';').next().unwrap_or_default().trim();
            self.left = u64::from_str_radix(size, 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {size:?}")))?;
            if self.left == 0 {
                // Trailers up to the empty line, as many as a head may hold.
                let mut trailers = 0;
                loop {
                    let line = self.line()?;
                    if line.is_empty() {
                        break;
                    }
                    trailers += line.len() + 2;
                    if trailers > MAX_HEAD {
                        return Err(io::Error::other("the chunked trailers are too large"));
                    }
                }
                self.done = true;
                return Ok(0);
            }
        }
        let max = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        match self.inner.read(&mut buf[..max]) {
            Ok(0) => Err(cut_short(
                "the body was cut short (the chunked encoding ended early)".into(),
            )),
            Ok(n) => {
                self.left -= n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(cut_short(format!(
                "the body was cut short (the chunked encoding ended early): {e}"
            ))),
            Err(e) => Err(e),
        }
    }
}

/// A connection, plain or TLS.
trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

enum SockKind {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// A socket whose timeouts read as "stalled".
struct Sock {
    inner: SockKind,
    stall: Duration,
}

impl Sock {
    fn stalled(&self, e: io::Error, what: &str) -> io::Error {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("stalled: {what} for {} ms", self.stall.as_millis()),
            )
        } else {
            e
        }
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = match &mut self.inner {
            SockKind::Tcp(s) => s.read(buf),
            SockKind::Unix(s) => s.read(buf),
        };
        r.map_err(|e| self.stalled(e, "no data from the server"))
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = match &mut self.inner {
            SockKind::Tcp(s) => s.write(buf),
            SockKind::Unix(s) => s.write(buf),
        };
        r.map_err(|e| self.stalled(e, "the server took no data"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The addresses of `host`, within `stall`: the system resolver has no timeout of its
/// own, so it runs on a thread of its own that is left behind (and ends on its own) when
/// it takes longer.
fn resolve(host: &str, port: u16, stall: Duration) -> Result<Vec<std::net::SocketAddr>, String> {
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        return Ok(vec![std::net::SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.to_string();
    std::thread::Builder::new()
        .name("resolve".into())
        .spawn(move || {
            let r = (name.as_str(), port)
                .to_socket_addrs()
                .map(|a| a.collect::<Vec<_>>());
            let _ = tx.send(r);
        })
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    match rx.recv_timeout(stall) {
        Ok(Ok(addrs)) => Ok(addrs),
        Ok(Err(e)) => Err(format!("cannot resolve {host}: {e}")),
        Err(_) => Err(format!(
            "stalled: resolving {host} took longer than {} ms",
            stall.as_millis()
        )),
    }
}

fn connect_tcp(host: &str, port: u16, stall: Duration) -> Result<Sock, String> {
    let addrs = resolve(host, port, stall)?;
    let mut last = format!("{host} has no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, stall) {
            Ok(s) => {
                let set = s
                    .set_read_timeout(Some(stall))
                    .and_then(|()| s.set_write_timeout(Some(stall)))
                    .and_then(|()| s.set_nodelay(true));
                set.map_err(|e| e.to_string())?;
                return Ok(Sock {
                    inner: SockKind::Tcp(s),
                    stall,
                });
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                last = format!(
                    "stalled: connecting to {host}:{port} took longer than {} ms",
                    stall.as_millis()
                );
            }
            Err(e) => last = format!("cannot connect to {host}:{port}: {e}"),
        }
    }
    Err(last)
}

/// Opens a `CONNECT` tunnel to `url`'s host through the proxy on `sock`.
fn tunnel(sock: &mut Sock, url: &Url, auth: Option<&str>, proxy: &str) -> Result<(), String> {
    let mut req = format!(
        "CONNECT {0}:{1} HTTP/1.1\r\nHost: {0}:{1}\r\n",
        url.host_for_header(),
        url.port
    );
    if let Some(auth) = auth {
        req.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    req.push_str("\r\n");
    sock.write_all(req.as_bytes())
        .map_err(|e| format!("the proxy {proxy}: {e}"))?;
    // Byte by byte: nothing of the tunnelled stream may be read ahead.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Err(format!("the proxy {proxy}: its answer is too large"));
        }
        match sock.read(&mut byte) {
            Ok(0) => return Err(format!("the proxy {proxy} closed the connection")),
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(format!("the proxy {proxy}: {e}")),
        }
    }
    let (status, _) = read_head(&mut &head[..]).map_err(|e| format!("the proxy {proxy}: {e}"))?;
    if !(200..300).contains(&status) {
        return Err(format!(
            "the proxy {proxy} refused the tunnel to {}: status {status}",
            url.authority()
        ));
    }
    Ok(())
}

// ring, not aws-lc-rs (which needs cmake and a C toolchain of its own); rustls marks
// ring's provider deprecated for lack of post-quantum key exchange only.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The OS's CA bundle (Debian's layout), trusted when present.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn system_roots() -> Arc<RootCertStore> {
    static R: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    R.get_or_init(|| {
        Arc::new(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        })
    })
    .clone()
}

fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no certificate in the PEM"));
    }
    Ok(certs)
}

/// The rustls settings for a request's [`Tls`].
fn tls_config(tls: &Tls, roots: Arc<RootCertStore>) -> Result<ClientConfig, String> {
    let versions: &[&rustls::SupportedProtocolVersion] = if tls.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        rustls::ALL_VERSIONS
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?;
    let builder = if let Some(pin) = &tls.pinned_pem {
        let pins = certs(pin, "tls.pinned_pem")?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                pins,
                provider: provider(),
            }))
    } else if let Some(ca) = &tls.ca_pem {
        let mut roots = RootCertStore::empty();
        for cert in certs(ca, "tls.ca_pem")? {
            roots.add(cert).map_err(|e| format!("tls.ca_pem: {e}"))?;
        }
        builder.with_root_certificates(roots)
    } else {
        builder.with_root_certificates(roots)
    };
    match (&tls.client_cert_pem, &tls.client_key_pem) {
        (Some(cert), Some(key)) => {
            let chain = certs(cert, "tls.client_cert_pem")?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| format!("tls.client_key_pem: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the client certificate: {e}"))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err("tls.client_cert_pem and tls.client_key_pem go together".into()),
    }
}

fn tls_connect(
    mut sock: Sock,
    url: &Url,
    tls: &Tls,
    roots: Arc<RootCertStore>,
) -> Result<rustls::StreamOwned<ClientConnection, Sock>, String> {
    let config = tls_config(tls, roots)?;
    let name = ServerName::try_from(url.host.clone())
        .map_err(|e| format!("{}: not a valid server name: {e}", url.host))?;
    let mut conn = ClientConnection::new(Arc::new(config), name)
        .map_err(|e| format!("TLS with {}: {e}", url.authority()))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)
            .map_err(|e| format!("TLS handshake with {} failed: {e}", url.authority()))?;
    }
    Ok(rustls::StreamOwned::new(conn, sock))
}

/// Trusts exactly the pinned certificates (the handshake's signatures are still checked,
/// so the server must hold the pinned certificate's key).
#[derive(Debug)]
struct Pinned {
    pins: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.pins.iter().any(|p| p.as_ref() == end_entity.as_ref()) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(plugin_api::net::PIN_MISMATCH.into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
    File,
}

/// A parsed URL: what this client needs of one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    scheme: Scheme,
    host: String,
    port: u16,
    /// Path and query (`/` at least); for `file://` the OS path.
    path: String,
    userinfo: Option<String>,
}

impl Url {
    fn parse(text: &str) -> Result<Url, String> {
        let bad = |why: &str| format!("bad URL {text:?}: {why}");
        if text.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("spaces and control characters must be percent-encoded"));
        }
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "file" => Scheme::File,
            _ => return Err(bad("only http, https and file URLs are supported")),
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if scheme == Scheme::File {
            if !authority.is_empty() && authority != "localhost" {
                return Err(bad("a file URL names no host (file:///path)"));
            }
            if !path.starts_with('/') || path.contains('?') {
                return Err(bad("a file URL needs an absolute path"));
            }
            return Ok(Url {
                scheme,
                host: String::new(),
                port: 0,
                path: path.to_string(),
                userinfo: None,
            });
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
            None if scheme == Scheme::Https => 443,
            None => 80,
        };
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        Ok(Url {
            scheme,
            host: host.to_string(),
            port,
            path,
            userinfo,
        })
    }

    fn default_port(&self) -> bool {
        matches!(
            (self.scheme, self.port),
            (Scheme::Https, 443) | (Scheme::Http, 80)
        )
    }

    fn host_for_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }

    /// `host[:port]` as the `Host` header wants it.
    fn authority(&self) -> String {
        if self.default_port() {
            self.host_for_header()
        } else {
            format!("{}:{}", self.host_for_header(), self.port)
        }
    }

    fn text(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::File => "file",
        };
        format!("{scheme}://{}{}", self.authority(), self.path)
    }

    /// Where a `Location` header points, from this URL.
    fn join(&self, location: &str) -> Result<Url, String> {
        if location.contains("://") {
            return Url::parse(location);
        }
        let scheme = if self.scheme == Scheme::Https {
            "https"
        } else {
            "http"
        };
        if let Some(rest) = location.strip_prefix("//") {
            return Url::parse(&format!("{scheme}://{rest}"));
        }
        let path = if location.starts_with('/') {
            location.to_string()
        } else {
            let base = self.path.split('?').next().unwrap_or("/");
            let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{location}")
        };
        Ok(Url {
            path,
            ..self.clone()
        })
    }
}

fn base64(input: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = input.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn addresses_are_resolved_and_literals_need_no_resolver() {
        let t = Duration::from_secs(5);
        let v6 = resolve("[::1]", 8443, t).unwrap();
        assert_eq!(v6, ["[::1]:8443".parse().unwrap()]);
        let v4 = resolve("127.0.0.1", 80, t).unwrap();
        assert_eq!(v4, ["127.0.0.1:80".parse().unwrap()]);
        let local = resolve("localhost", 80, t).unwrap();
        assert!(local.iter().all(|a| a.ip().is_loopback()), "{local:?}");
        let e = resolve("no-such-host.invalid", 80, t).unwrap_err();
        assert!(e.starts_with("cannot resolve no-such-host.invalid"), "{e}");
    }
    use super::*;

    #[test]
    fn urls_parse_and_join() {
        let u = Url::parse("https://example.com:8443/a/b?x=1#frag").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("example.com", 8443, "/a/b?x=1")
        );
        assert_eq!(u.authority(), "example.com:8443");
        let v6 = Url::parse("http://[::1]/").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.authority()),
            ("::1", 80, "[::1]".to_string())
        );
        assert_eq!(u.join("c").unwrap().path, "/a/c");
        assert_eq!(u.join("/d").unwrap().text(), "https://example.com:8443/d");
        assert_eq!(u.join("//other/e").unwrap().text(), "https://other/e");
        let f = Url::parse("file:///var/lib/x.img").unwrap();
        assert_eq!(f.path, "/var/lib/x.img");
        assert!(Url::parse("ftp://x/").is_err());
        assert!(Url::parse("file://host/x").is_err());
        let injected = Url::parse("http://x/a HTTP/1.1\r\nX-Evil: 1").unwrap_err();
        assert!(injected.contains("percent-encoded"), "{injected}");
        let p = Url::parse("http://user:pw@proxy:3128").unwrap();
        assert_eq!(p.userinfo.as_deref(), Some("user:pw"));
        assert_eq!(base64("user:pw"), "dXNlcjpwdw==");
        assert_eq!(base64("ab"), "YWI=");
    }

    #[test]
    fn no_proxy_matches_hosts_and_domains() {
        let p = Proxies {
            https: Some("http://proxy:3128".into()),
            http: None,
            no_proxy: vec!["internal.lan".into(), ".corp".into(), "10.0.0.1:443".into()],
        };
        let url = |s: &str| Url::parse(s).unwrap();
        assert_eq!(
            p.for_url(&url("https://example.com/")),
            Some("http://proxy:3128")
        );
        assert_eq!(p.for_url(&url("https://a.internal.lan/")), None);
        assert_eq!(p.for_url(&url("https://internal.lan/")), None);
        assert_eq!(
            p.for_url(&url("https://notinternal.lan/")),
            Some("http://proxy:3128")
        );
        assert_eq!(p.for_url(&url("https://x.corp/")), None);
        assert_eq!(p.for_url(&url("https://10.0.0.1/")), None);
        assert_eq!(p.for_url(&url("http://example.com/")), None);
        assert_eq!(p.for_url(&url("https://127.0.0.1:8443/")), None);
        assert_eq!(p.for_url(&url("https://[::1]/")), None);
        assert_eq!(p.for_url(&url("https://localhost/")), None);
    }

    #[test]
    fn chunked_bodies_decode_and_a_cut_is_an_error() {
        let mut out = String::new();
        Chunked::new(&b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nT: v\r\n\r\n"[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "hello world");
        let err = Chunked::new(&b"5\r\nhel"[..])
            .read_to_end(&mut vec![])
            .unwrap_err();
        assert!(err.to_string().contains("cut short"), "{err}");
        let err = Length {
            inner: &b"abc"[..],
            left: 5,
            total: 5,
        }
        .read_to_end(&mut vec![])
        .unwrap_err();
        assert!(err.to_string().contains("got 3 of 5 bytes"), "{err}");
    }

    #[test]
    fn endless_chunked_trailers_are_refused() {
        let mut body = b"5\r\nhello\r\n0\r\n".to_vec();
        for _ in 0..(MAX_HEAD / 10 + 1) {
            body.extend_from_slice(b"X-A: 1234\r\n");
        }
        body.extend_from_slice(b"\r\n");
        let err = Chunked::new(&body[..])
            .read_to_end(&mut vec![])
            .unwrap_err();
        assert!(err.to_string().contains("trailers are too large"), "{err}");
    }
}
