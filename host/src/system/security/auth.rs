//! The TPM-backed authentication key and its tokens, for local callers of
//! `/internal/auth/*` (the images server's registration and authentication).
//!
//! The key is an ECDSA P-256 key in the TPM, persistent at a handle; its public half is
//! `/var/lib/incus-os/tpm-auth.pem` (what `GET /1.0/system/security` shows and
//! registration sends). An existing key is found among the TPM's persistent objects by
//! that public half, whichever tool made it (upstream's tpm2-tools, or this daemon). A
//! token is `<machine-id>:<A>:<B>`: `A` is the JSON `{"machine_id","timestamp"}`
//! encrypted by `openssl smime` (AES-256-CBC, DER) to the server's authentication
//! certificate that the OS image ships, `B` the key's ECDSA signature (r then s, 32 bytes
//! each) of the SHA-256 of that DER; both gzipped (level 9) and in unpadded base64.

use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::platform::exec::Commands;
use crate::platform::files::RootFs;
use crate::platform::tpm::{KeyRef, Tpm};

use super::{Runtime, AUTH_PEM};

/// The images server's authentication certificate, shipped by the OS image.
pub const AUTH_CERT: &str = "/usr/lib/incus-osd/certs/auth.crt";
/// Upstream's error when the image has no authentication certificate.
pub const UNSUPPORTED: &str = "authentication token generation isn't supported on this system";
/// The first handle tried for a key this daemon makes persistent.
pub const FIRST_HANDLE: u32 = 0x8100_0000;

/// What registration answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Registration {
    pub machine_id: String,
    pub token: String,
    pub public_key: String,
    pub initial: String,
}

#[derive(Serialize)]
struct Stamp<'a> {
    machine_id: &'a str,
    timestamp: i64,
}

/// The authentication certificate's path under the root, or upstream's refusal.
fn auth_cert(root: &Path) -> Result<String, String> {
    let fs = RootFs::new(root);
    match fs.read(AUTH_CERT).map_err(|e| e.to_string())? {
        Some(pem) if !pem.trim_ascii().is_empty() => Ok(fs
            .resolve(AUTH_CERT)
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .into_owned()),
        _ => Err(UNSUPPORTED.into()),
    }
}

/// The persistent handle of the key whose public half is in `tpm-auth.pem`; without that
/// file a new key is made, made persistent at the first free handle, and its PEM written.
pub fn ensure_key(tpm: &mut Tpm, root: &Path) -> Result<u32, String> {
    let fs = RootFs::new(root);
    let e = |e: crate::platform::tpm::TpmError| e.to_string();
    if let Some(pem) = fs.read(AUTH_PEM).map_err(|e| e.to_string())? {
        let pem = String::from_utf8_lossy(&pem).into_owned();
        for h in tpm.persistent_handles().map_err(e)? {
            if let Ok(k) = tpm.public_key(KeyRef::Persistent(h)) {
                if k.to_pem().trim() == pem.trim() {
                    return Ok(h);
                }
            }
        }
        return Err(format!(
            "the TPM holds no persistent key matching {AUTH_PEM}"
        ));
    }
    let key = tpm.create_auth_key().map_err(e)?;
    let taken = tpm.persistent_handles().map_err(e)?;
    let handle = (FIRST_HANDLE..=0x81ff_ffff)
        .find(|h| !taken.contains(h))
        .ok_or_else(|| "no free persistent TPM handle".to_string())?;
    tpm.persist_key(&key, handle).map_err(e)?;
    let pem = key.ec_public_key().map_err(e)?.to_pem();
    if let Err(err) = fs.write(AUTH_PEM, pem.as_bytes(), 0o644) {
        let _ = tpm.evict_persistent(handle);
        return Err(err.to_string());
    }
    Ok(handle)
}

fn gzip_b64(data: &[u8]) -> Result<String, String> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::best());
    let gz = enc
        .write_all(data)
        .and_then(|()| enc.finish())
        .map_err(|e| format!("cannot compress the token: {e}"))?;
    Ok(base64::engine::general_purpose::STANDARD_NO_PAD.encode(gz))
}

fn pad32(v: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 32usize.saturating_sub(v.len())];
    out.extend(v);
    out
}

/// A token signed with the key at `handle`.
fn sign_token(
    cmds: &dyn Commands,
    tpm: &mut Tpm,
    handle: u32,
    cert: &str,
    machine_id: &str,
    now: i64,
) -> Result<String, String> {
    let stamp = serde_json::to_vec(&Stamp {
        machine_id,
        timestamp: now,
    })
    .map_err(|e| e.to_string())?;
    let argv: Vec<String> = [
        "openssl",
        "smime",
        "-encrypt",
        "-binary",
        "-aes-256-cbc",
        "-outform",
        "DER",
        cert,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let encrypted = super::luks::run(cmds, &argv, &stamp)?.stdout;
    let digest: [u8; 32] = Sha256::digest(&encrypted).into();
    let sig = tpm
        .sign(KeyRef::Persistent(handle), &digest)
        .map_err(|e| e.to_string())?;
    let mut plain = pad32(&sig.r);
    plain.extend(pad32(&sig.s));
    Ok(format!(
        "{machine_id}:{}:{}",
        gzip_b64(&encrypted)?,
        gzip_b64(&plain)?
    ))
}

fn machine_id(root: &Path) -> Result<String, String> {
    crate::system::info::read_machine_id(&RootFs::new(root))
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A fresh token.
pub fn token(cmds: &dyn Commands, root: &Path, rt: &Runtime) -> Result<String, String> {
    let cert = auth_cert(root)?;
    let id = machine_id(root)?;
    let mut tpm = rt.open_tpm(root).map_err(|e| e.to_string())?;
    let handle = ensure_key(&mut tpm, root)?;
    sign_token(cmds, &mut tpm, handle, &cert, &id, now())
}

/// The registration payload for `token`: the key's public half and a first token.
pub fn registration(
    cmds: &dyn Commands,
    root: &Path,
    rt: &Runtime,
    token: &str,
) -> Result<Registration, String> {
    let cert = auth_cert(root)?;
    let id = machine_id(root)?;
    let mut tpm = rt.open_tpm(root).map_err(|e| e.to_string())?;
    let handle = ensure_key(&mut tpm, root)?;
    let public_key = RootFs::new(root)
        .read(AUTH_PEM)
        .map_err(|e| e.to_string())?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let initial = sign_token(cmds, &mut tpm, handle, &cert, &id, now())?;
    Ok(Registration {
        machine_id: id,
        token: token.to_string(),
        public_key,
        initial,
    })
}
