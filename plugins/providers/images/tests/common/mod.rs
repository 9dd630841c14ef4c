//! What the token tests share: the server side of authentication (an authentication
//! certificate and its key, token decoding and checking with the real openssl) and a
//! site serving a signed index.
#![allow(dead_code)] // each test file uses its part

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use incus_osd_harness::testserver::TestServer;
use incus_osd_harness::Harness;
use incus_osd_provider_common::testing::Pki;
use incus_osd_provider_common::trust::{ROOT_CA_PATH, UPDATE_CA_PATH};
use serde_json::{json, Value};

pub const LIB: &str = "incus_osd_plugin_provider_images";
pub const MACHINE_ID: &str = "0123456789abcdef0123456789abcdef";
pub const AUTH_CERT: &str = "/usr/lib/incus-osd/certs/auth.crt";

pub fn context() -> Value {
    json!({"channel": "stable", "architecture": "x86_64", "os_name": "IncusOS",
           "running_version": "202512010000", "machine_id": MACHINE_ID})
}

/// Runs a tool on this machine; fails the test unless it exits 0. Returns stdout.
pub fn run(program: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The images server's authentication certificate (RSA) and its private key.
pub struct AuthKey {
    dir: tempfile::TempDir,
}

impl AuthKey {
    pub fn new() -> AuthKey {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = (dir.path().join("auth.key"), dir.path().join("auth.crt"));
        run(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=images auth",
                "-days",
                "2",
                "-keyout",
                key.to_str().unwrap(),
                "-out",
                cert.to_str().unwrap(),
            ],
            b"",
        );
        AuthKey { dir }
    }

    pub fn cert_pem(&self) -> String {
        std::fs::read_to_string(self.cert_path()).unwrap()
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.path().join("auth.crt")
    }

    /// What the server reads from the first part of a token: the JSON it encrypts.
    pub fn decrypt(&self, der: &[u8]) -> Value {
        let key = self.dir.path().join("auth.key");
        let out = run(
            "openssl",
            &[
                "smime",
                "-decrypt",
                "-binary",
                "-inform",
                "DER",
                "-inkey",
                key.to_str().unwrap(),
                "-recip",
                self.cert_path().to_str().unwrap(),
            ],
            der,
        );
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("token JSON: {e}"))
    }
}

/// Unpadded base64 in the standard (`url == false`) or URL-safe alphabet.
pub fn base64_decode(text: &str, url: bool) -> Vec<u8> {
    let (a, b) = if url { (b'-', b'_') } else { (b'+', b'/') };
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            _ if c == a => 62,
            _ if c == b => 63,
            _ => panic!("{:?} is not in the alphabet (text {text:?})", char::from(c)),
        }
    };
    let mut out = vec![];
    for chunk in text.as_bytes().chunks(4) {
        assert!(chunk.len() > 1, "bad base64 length: {text:?}");
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("gzip data");
    out
}

/// A token taken apart: the machine id, the encrypted DER and the signature.
pub struct Token {
    pub machine_id: String,
    pub der: Vec<u8>,
    pub signature: Vec<u8>,
}

pub fn parse_token(token: &str) -> Token {
    let parts: Vec<&str> = token.split(':').collect();
    assert_eq!(parts.len(), 3, "<machine-id>:<A>:<B>: {token:?}");
    Token {
        machine_id: parts[0].to_string(),
        der: gunzip(&base64_decode(parts[1], false)),
        signature: gunzip(&base64_decode(parts[2], false)),
    }
}

/// Checks a token as the server does: the machine id, the encrypted stamp (same machine
/// id, a timestamp within a minute of now). Returns it for the signature check.
pub fn check_token(auth: &AuthKey, token: &str) -> Token {
    let t = parse_token(token);
    assert_eq!(t.machine_id, MACHINE_ID);
    let stamp = auth.decrypt(&t.der);
    assert_eq!(stamp["machine_id"], MACHINE_ID, "{stamp}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let at = stamp["timestamp"].as_i64().expect("numeric timestamp");
    assert!((now - at).abs() < 60, "timestamp {at}, now {now}");
    t
}

/// Whether `signature` (DER ECDSA) is `public_pem`'s signature of `message` over SHA-256,
/// by `openssl dgst -verify`.
pub fn signature_verifies(public_pem: &str, message: &[u8], signature: &[u8]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let (key, sig, msg) = (
        dir.path().join("key.pem"),
        dir.path().join("sig"),
        dir.path().join("msg"),
    );
    std::fs::write(&key, public_pem).unwrap();
    std::fs::write(&sig, signature).unwrap();
    std::fs::write(&msg, message).unwrap();
    Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&key)
        .arg("-signature")
        .arg(&sig)
        .arg(&msg)
        .output()
        .unwrap()
        .status
        .success()
}

/// A value of a query string (`a=1&token=...`), percent-decoded.
pub fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// An images server: a signed index (no releases) under `/os`.
pub struct Site {
    pub pki: Pki,
    pub dir: tempfile::TempDir,
    pub server: TestServer,
}

impl Site {
    pub fn new() -> Site {
        let pki = Pki::new();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("os")).unwrap();
        std::fs::write(
            dir.path().join("os/index.sjson"),
            pki.sign(br#"{"format":"1.0","updates":[]}"#),
        )
        .unwrap();
        let server = TestServer::http(dir.path());
        Site { pki, dir, server }
    }

    pub fn url(&self) -> String {
        self.server.url("/os")
    }

    /// The plugin trusting this site's index, with `auth`'s certificate shipped.
    pub fn plugin(&self, auth: &AuthKey) -> Harness {
        let h = Harness::load_built(LIB);
        let host = h.host();
        host.put_file(ROOT_CA_PATH, self.pki.root_pem().as_bytes(), 0o644);
        host.put_file(UPDATE_CA_PATH, self.pki.update_ca_pem().as_bytes(), 0o644);
        host.put_file(AUTH_CERT, auth.cert_pem().as_bytes(), 0o644);
        host.on_command_real(&["bash"]);
        host.on_command_real(&["openssl"]);
        h
    }

    /// The requests to `path`, or below it when `path` ends with `/`.
    pub fn requests_to(&self, path: &str) -> Vec<incus_osd_harness::testserver::RecordedRequest> {
        self.server
            .requests()
            .into_iter()
            .filter(|r| {
                if path.ends_with('/') {
                    r.path.starts_with(path)
                } else {
                    r.path == path
                }
            })
            .collect()
    }
}

pub fn register(h: &Harness) -> Result<Value, incus_osd_harness::PluginError> {
    let input = json!({"context": context(), "cause": ""});
    h.invoke("register", input.to_string().as_bytes())
}

pub fn lookup_os(h: &Harness) -> Result<Value, incus_osd_harness::PluginError> {
    let input = json!({"context": context(), "target": {"kind": "os"}});
    h.invoke("lookup", input.to_string().as_bytes())
}

/// The registration a server received: from the JSON body (header mode) or from the
/// `token` query parameter of `GET /register/<uuid>` (query mode).
pub fn received_registration(
    req: &incus_osd_harness::testserver::RecordedRequest,
    query_mode: bool,
) -> Value {
    if query_mode {
        assert_eq!(req.method, "GET");
        let id = req.path.rsplit('/').next().unwrap();
        assert_eq!(id.len(), 36, "a UUID after /register/: {}", req.path);
        assert!(req.body.is_empty());
        let token = query_value(&req.query, "token").expect("token parameter");
        serde_json::from_slice(&base64_decode(&token, true)).expect("registration JSON")
    } else {
        assert_eq!(req.method, "POST");
        assert_eq!(req.query, "");
        serde_json::from_slice(&req.body).expect("registration JSON")
    }
}

/// The token a request carried: the header, or the `token` query parameter.
pub fn carried_token(
    req: &incus_osd_harness::testserver::RecordedRequest,
    query_mode: bool,
) -> String {
    if query_mode {
        assert_eq!(req.header("x-incusos-authentication"), None);
        query_value(&req.query, "token").expect("token parameter")
    } else {
        assert_eq!(req.query, "", "no token in the query in header mode");
        req.header("x-incusos-authentication")
            .expect("X-IncusOS-Authentication header")
            .to_string()
    }
}

/// Makes the directories the key's files go to, under the harness's root.
pub fn make_key_dirs(h: &Harness) {
    for d in ["/run/incus-os", "/var/lib/incus-os"] {
        std::fs::create_dir_all(h.host().real_path(d)).unwrap();
    }
}

pub fn root_of(h: &Harness) -> &Path {
    h.host().root()
}
