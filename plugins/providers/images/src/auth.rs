//! Authenticated access to the images server with a TPM-backed key (when the provider's
//! `token` is set), with upstream's files and token format so that a machine keeps its
//! registration across a switch between daemons:
//!
//! * the key: an ECC key under the TPM's endorsement hierarchy, created once with
//!   `tpm2_create` (public and private blobs and the PEM public key in
//!   `/var/lib/incus-os/tpm-auth.{pub,priv,pem}`), made persistent with
//!   `tpm2_evictcontrol`, and loaded with `tpm2_load` before each use (the primary's and
//!   the key's contexts live in `/run/incus-os/`);
//! * a token: `<machine-id>:<A>:<B>`, where `A` is the JSON `{"machine_id","timestamp"}`
//!   encrypted by `openssl smime` (DER) to the server's authentication certificate, which
//!   the OS image ships as [`AUTH_CERT`], and `B` is the key's ECDSA (SHA-256) signature
//!   of that DER by `tpm2_sign`; both gzipped (level 9) and in unpadded standard base64;
//! * registration: `{machine_id, token, public_key, initial}` (`initial`: a first token).
//!
//! The tpm2 tools run through the host with upstream's arguments; they find the TPM as
//! they always do (`TPM2TOOLS_TCTI` from the daemon's environment, else the default
//! device). After each one the plugin flushes transient objects
//! (`tpm2_flushcontext -t`): a no-op behind the kernel's resource manager
//! (`/dev/tpmrm0`), and what keeps a TPM reached without one (swtpm over TCP) from
//! running out of object slots.

use std::io::Write;
use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;
use plugin_api::{Error, Host, Result};
use serde::Serialize;

/// The primary key's saved context (gone on reboot: made again then).
pub const PRIMARY_CTX: &str = "/run/incus-os/tpm-auth.primary.ctx";
/// The loaded key's saved context.
pub const KEY_CTX: &str = "/run/incus-os/tpm-auth.key.ctx";
/// The key's public blob, kept across boots.
pub const PUBLIC: &str = "/var/lib/incus-os/tpm-auth.pub";
/// The key's private blob (sealed to the TPM), kept across boots.
pub const PRIVATE: &str = "/var/lib/incus-os/tpm-auth.priv";
/// The key's public half as PEM, kept across boots (what registration sends).
pub const PEM: &str = "/var/lib/incus-os/tpm-auth.pem";
/// The images server's authentication certificate, shipped by the OS image.
pub const AUTH_CERT: &str = "/usr/lib/incus-osd/certs/auth.crt";
/// What the provider writes (through the tpm2 tools): its declared paths.
pub const FILES: [&str; 5] = [PRIMARY_CTX, KEY_CTX, PUBLIC, PRIVATE, PEM];

/// Upstream's error when the image has no authentication certificate.
pub const UNSUPPORTED: &str = "authentication token generation isn't supported on this system";

/// How long one tool may take (key creation on a slow TPM included).
const TIMEOUT: Duration = Duration::from_secs(60);

/// Encrypts stdin to the certificate `$1` (PEM), which reaches openssl through a process
/// substitution: read through the host like every OS file, never spliced into the script.
const ENCRYPT_SCRIPT: &str =
    "exec openssl smime -encrypt -binary -aes-256-cbc -outform DER <(printf '%s\\n' \"$1\")";

/// What registration sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Registration {
    pub machine_id: String,
    pub token: String,
    pub public_key: String,
    pub initial: String,
}

/// The JSON that `A` encrypts.
#[derive(Serialize)]
struct Stamp<'a> {
    machine_id: &'a str,
    timestamp: u64,
}

/// Runs a tpm2 tool (exit 0 required), then flushes transient objects whatever happened.
fn tpm(host: &Host, argv: &[&str], stdin: &[u8]) -> Result<Vec<u8>> {
    let out = host.run_ok_bytes(argv, stdin, TIMEOUT);
    match host.run(&["tpm2_flushcontext", "-t"], TIMEOUT) {
        Ok(o) if o.status == 0 => {}
        Ok(o) => host.debug(&format!(
            "tpm2_flushcontext -t failed (exit status {}): {}",
            o.status,
            o.stderr.trim()
        )),
        Err(e) => host.debug(&format!("tpm2_flushcontext -t failed: {}", e.message)),
    }
    out
}

/// Makes the signing key usable and says where it is (`tpm2_sign -c`): the key this plugin
/// made (the primary's context once per boot, the key itself the first time, then made
/// persistent, else the saved key loaded again), or, when there are no blobs but a public
/// half is on disk, the persistent key with that public half. The daemon's
/// `/internal/auth` endpoints make such a key (they keep it only as a persistent object):
/// it is used as it is, never replaced by a new one over its public half. A public half no
/// persistent key has (the TPM was cleared) is replaced by a new key's, as upstream does.
fn ensure_key(host: &Host) -> Result<String> {
    if !host.exists(PRIVATE)? {
        let pem = host.read_to_string(PEM)?.unwrap_or_default();
        if let Some(point) = ec_point(&pem) {
            if let Some(handle) = persistent_handle_of(host, &point)? {
                return Ok(handle);
            }
        }
    }
    if !host.exists(PRIMARY_CTX)? {
        tpm(
            host,
            &["tpm2_createprimary", "-C", "e", "-c", PRIMARY_CTX],
            b"",
        )?;
    }
    let load = [
        "tpm2_load",
        "-C",
        PRIMARY_CTX,
        "-u",
        PUBLIC,
        "-r",
        PRIVATE,
        "-c",
        KEY_CTX,
    ];
    if host.exists(PRIVATE)? {
        tpm(host, &load, b"")?;
        return Ok(KEY_CTX.to_string());
    }
    tpm(
        host,
        &[
            "tpm2_create",
            "-G",
            "ecc",
            "-u",
            PUBLIC,
            "-r",
            PRIVATE,
            "-C",
            PRIMARY_CTX,
            "-f",
            "pem",
            "-o",
            PEM,
        ],
        b"",
    )?;
    tpm(host, &load, b"")?;
    tpm(host, &["tpm2_evictcontrol", "-C", "o", "-c", KEY_CTX], b"")?;
    Ok(KEY_CTX.to_string())
}

/// The P-256 point (x then y, 32 bytes each) of a PEM public key: the end of its
/// SubjectPublicKeyInfo, an uncompressed point (`04 || x || y`).
fn ec_point(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    if !pem.contains("-----BEGIN PUBLIC KEY-----") {
        return None;
    }
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()?;
    match der.len().checked_sub(65).map(|at| &der[at..]) {
        Some([4, point @ ..]) => Some(point.to_vec()),
        _ => None,
    }
}

/// The persistent handle (`0x81...`) whose ECC public key is `point`, if any.
fn persistent_handle_of(host: &Host, point: &[u8]) -> Result<Option<String>> {
    let list = tpm(host, &["tpm2_getcap", "handles-persistent"], b"")?;
    for handle in String::from_utf8_lossy(&list)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter(|h| h.starts_with("0x81"))
    {
        let public = tpm(host, &["tpm2_readpublic", "-c", handle], b"")?;
        let text = String::from_utf8_lossy(&public);
        let coordinate = |name: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .map(|v| v.trim().to_ascii_lowercase())
        };
        let hex: String = point.iter().map(|b| format!("{b:02x}")).collect();
        if let (Some(x), Some(y)) = (coordinate("x:"), coordinate("y:")) {
            if format!("{x:0>64}{y:0>64}") == hex {
                return Ok(Some(handle.to_string()));
            }
        }
    }
    Ok(None)
}

/// The server's authentication certificate, or upstream's "not supported" error.
fn auth_cert(host: &Host) -> Result<String> {
    match host.read_to_string(AUTH_CERT)? {
        Some(pem) if !pem.trim().is_empty() => Ok(pem),
        _ => Err(Error::internal(UNSUPPORTED)),
    }
}

/// A token signed by the key at `key` (a loaded key's context or a persistent handle).
fn sign_token(host: &Host, key: &str, cert: &str, machine_id: &str, now: u64) -> Result<String> {
    let stamp = serde_json::to_vec(&Stamp {
        machine_id,
        timestamp: now,
    })
    .map_err(|e| Error::internal(format!("cannot encode the token: {e}")))?;
    let encrypted = host.run_ok_bytes(
        &["bash", "-c", ENCRYPT_SCRIPT, "encrypt-auth-token", cert],
        &stamp,
        TIMEOUT,
    )?;
    let signature = tpm(
        host,
        &[
            "tpm2_sign",
            "-c",
            key,
            "--hash-algorithm",
            "sha256",
            "--scheme",
            "ecdsa",
            "--format",
            "plain",
            "--signature",
            "/dev/stdout",
            "/dev/stdin",
        ],
        &encrypted,
    )?;
    if signature.is_empty() {
        return Err(Error::internal("tpm2_sign wrote no signature"));
    }
    Ok(format!(
        "{machine_id}:{}:{}",
        base64(STD, &gzip(&encrypted)?),
        base64(STD, &gzip(&signature)?)
    ))
}

fn check_machine_id(machine_id: &str) -> Result<()> {
    if machine_id.is_empty() || machine_id.contains(':') {
        return Err(Error::internal(format!(
            "cannot make an authentication token: bad machine id {machine_id:?}"
        )));
    }
    Ok(())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh token for `machine_id` (loads the key first, as every use does).
pub fn token(host: &Host, machine_id: &str) -> Result<String> {
    check_machine_id(machine_id)?;
    let cert = auth_cert(host)?;
    let key = ensure_key(host)?;
    sign_token(host, &key, &cert, machine_id, now())
}

/// The registration of `machine_id` with the configured `token`: the key (made the first
/// time), its PEM public half and a first token.
pub fn registration(host: &Host, machine_id: &str, token: &str) -> Result<Registration> {
    check_machine_id(machine_id)?;
    let cert = auth_cert(host)?;
    let key = ensure_key(host)?;
    let public_key = match host.read_to_string(PEM)? {
        Some(pem) if pem.contains("-----BEGIN PUBLIC KEY-----") => pem,
        _ => {
            return Err(Error::internal(format!(
                "the TPM key's public half {PEM} is missing or not PEM"
            )))
        }
    };
    let initial = sign_token(host, &key, &cert, machine_id, now())?;
    Ok(Registration {
        machine_id: machine_id.to_string(),
        token: token.to_string(),
        public_key,
        initial,
    })
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::best());
    enc.write_all(data)
        .and_then(|()| enc.finish())
        .map_err(|e| Error::internal(format!("cannot compress the token: {e}")))
}

/// The standard base64 alphabet.
pub const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
/// The URL-safe base64 alphabet.
pub const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 without padding in `alphabet`.
pub fn base64(alphabet: &[u8; 64], data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(alphabet[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// `value` escaped for a URL query, as Go's `url.QueryEscape` does it.
pub fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub use incus_osd_provider_common::random_uuid;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_vectors() {
        for (data, std, url) in [
            (&b""[..], "", ""),
            (b"f", "Zg", "Zg"),
            (b"fo", "Zm8", "Zm8"),
            (b"foo", "Zm9v", "Zm9v"),
            (b"foobar", "Zm9vYmFy", "Zm9vYmFy"),
            (&[0xfb, 0xff, 0xbf], "+/+/", "-_-_"),
        ] {
            assert_eq!(base64(STD, data), std, "{data:?}");
            assert_eq!(base64(URL, data), url, "{data:?}");
        }
    }

    #[test]
    fn query_values_are_escaped_as_go_does() {
        assert_eq!(query_escape("ab-_.~09"), "ab-_.~09");
        assert_eq!(query_escape("m:a+b/c="), "m%3Aa%2Bb%2Fc%3D");
        assert_eq!(query_escape("a b"), "a+b");
    }

    #[test]
    fn uuids_are_random_version_4() {
        let a = random_uuid().unwrap();
        let b = random_uuid().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!("89ab".contains(&a[19..20]), "{a}");
    }
}
