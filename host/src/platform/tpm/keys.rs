//! Objects under the owner hierarchy's storage key: secrets sealed under a PCR policy, and
//! the ECC P-256 authentication key.
//!
//! The storage key (primary) is not kept: it is derived again from the owner seed and a
//! fixed template whenever it is needed, so only the children's public and private blobs
//! are stored (`<name>.pub`, `<name>.priv`, in the TPM2B layout tpm2-tools also uses).

use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::constants::{CapabilityType, SessionType};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    CapabilityData, Digest, EccPoint, EccScheme, HashScheme, KeyedHashScheme,
    PcrSelectionListBuilder, Private, Public, PublicBuilder, PublicEccParametersBuilder,
    PublicKeyedHashParameters, SensitiveData, Signature, SignatureScheme, SymmetricDefinition,
    SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::Context;
use zeroize::Zeroizing;

use super::{blob_paths, kind, slot, PcrPolicy, Sha256, Tpm, TpmError};

/// The most a sealed object holds (TPM2B_SENSITIVE_DATA).
pub const MAX_SECRET: usize = 128;

/// An object's public and private parts, as `TPM2_Create` returns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blobs {
    /// `TPMT_PUBLIC`, marshalled.
    pub public: Vec<u8>,
    /// The encrypted private part.
    pub private: Vec<u8>,
}

/// A secret sealed under a PCR policy.
pub type SealedObject = Blobs;
/// The authentication key's blobs.
pub type AuthKey = Blobs;

/// Where a loaded key comes from.
#[derive(Debug, Clone, Copy)]
pub enum KeyRef<'a> {
    /// Loaded under the storage key from its blobs.
    Blobs(&'a Blobs),
    /// Already in the TPM at this persistent handle (`0x81xxxxxx`).
    Persistent(u32),
}

/// An ECDSA signature over P-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcdsaSignature {
    pub r: Vec<u8>,
    pub s: Vec<u8>,
}

/// An ECC P-256 public key (the uncompressed point).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcPublicKey {
    pub x: [u8; 32],
    pub y: [u8; 32],
}

impl Blobs {
    /// Writes `<dir>/<name>.pub` and `<dir>/<name>.priv` (mode 0600, each replaced whole).
    pub fn save(&self, dir: &Path, name: &str) -> Result<(), TpmError> {
        let (pub_path, priv_path) = blob_paths(dir, name);
        write_tpm2b(&pub_path, &self.public)?;
        write_tpm2b(&priv_path, &self.private)
    }

    /// Reads what [`Blobs::save`] wrote (or tpm2-tools' `-u`/`-r` files).
    pub fn load(dir: &Path, name: &str) -> Result<Blobs, TpmError> {
        let (pub_path, priv_path) = blob_paths(dir, name);
        let blobs = Blobs {
            public: read_tpm2b(&pub_path)?,
            private: read_tpm2b(&priv_path)?,
        };
        blobs.parsed_public()?;
        Ok(blobs)
    }

    fn parsed_public(&self) -> Result<Public, TpmError> {
        Public::unmarshall(&self.public)
            .map_err(|e| TpmError::Blob(format!("the stored public part is not valid: {e}")))
    }

    fn parts(&self) -> Result<(Public, Private), TpmError> {
        let private = Private::try_from(self.private.clone())
            .map_err(|e| TpmError::Blob(format!("the stored private part is not valid: {e}")))?;
        Ok((self.parsed_public()?, private))
    }

    /// The ECC public key these blobs hold (for the authentication key).
    pub fn ec_public_key(&self) -> Result<EcPublicKey, TpmError> {
        ec_public_key(&self.parsed_public()?)
    }
}

fn ec_public_key(public: &Public) -> Result<EcPublicKey, TpmError> {
    match public {
        Public::Ecc { unique, .. } => Ok(EcPublicKey {
            x: left_pad(unique.x().value())?,
            y: left_pad(unique.y().value())?,
        }),
        _ => Err(TpmError::Blob("the key is not an ECC key".into())),
    }
}

fn left_pad(v: &[u8]) -> Result<[u8; 32], TpmError> {
    if v.len() > 32 {
        return Err(TpmError::Blob(format!(
            "an ECC coordinate of {} bytes is not P-256",
            v.len()
        )));
    }
    let mut out = [0u8; 32];
    out[32 - v.len()..].copy_from_slice(v);
    Ok(out)
}

fn write_tpm2b(path: &Path, data: &[u8]) -> Result<(), TpmError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| TpmError::Blob(format!("writing {}: {e}", path.display()));
    let size = u16::try_from(data.len())
        .map_err(|_| TpmError::Blob(format!("{} bytes do not fit a TPM2B", data.len())))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(&size.to_be_bytes()).map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn read_tpm2b(path: &Path) -> Result<Vec<u8>, TpmError> {
    let data = std::fs::read(path)
        .map_err(|e| TpmError::Blob(format!("reading {}: {e}", path.display())))?;
    let size = match data.get(..2) {
        Some(b) => u16::from_be_bytes([b[0], b[1]]) as usize,
        None => return Err(TpmError::Blob(format!("{} is empty", path.display()))),
    };
    if data.len() != size + 2 {
        return Err(TpmError::Blob(format!(
            "{}: says {size} bytes but holds {}",
            path.display(),
            data.len() - 2
        )));
    }
    Ok(data[2..].to_vec())
}

impl EcdsaSignature {
    /// The DER `SEQUENCE { INTEGER r, INTEGER s }` (what openssl and X.509 use).
    pub fn to_der(&self) -> Vec<u8> {
        let mut body = der_integer(&self.r);
        body.extend(der_integer(&self.s));
        let mut out = vec![0x30];
        out.extend(der_len(body.len()));
        out.extend(body);
        out
    }
}

fn der_len(n: usize) -> Vec<u8> {
    if n < 0x80 {
        vec![n as u8]
    } else {
        vec![0x81, n as u8]
    }
}

fn der_integer(v: &[u8]) -> Vec<u8> {
    let start = v.iter().position(|&b| b != 0).unwrap_or(v.len());
    let mut digits = v[start..].to_vec();
    if digits.first().is_none_or(|&b| b & 0x80 != 0) {
        digits.insert(0, 0);
    }
    let mut out = vec![0x02];
    out.extend(der_len(digits.len()));
    out.extend(digits);
    out
}

/// `SubjectPublicKeyInfo` header for id-ecPublicKey over prime256v1, up to the point.
const P256_SPKI_PREFIX: [u8; 27] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
];

impl EcPublicKey {
    /// The DER `SubjectPublicKeyInfo`.
    pub fn to_der(&self) -> Vec<u8> {
        let mut out = P256_SPKI_PREFIX.to_vec();
        out.extend(self.x);
        out.extend(self.y);
        out
    }

    /// The PEM `PUBLIC KEY` block, as openssl writes it.
    pub fn to_pem(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.to_der());
        let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END PUBLIC KEY-----\n");
        out
    }
}

/// The storage key's template: ECC P-256, restricted decryption, AES-128-CFB.
fn storage_key_template() -> Result<Public, tss_esapi::Error> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// A sealed data object that only a policy session satisfying `policy` can unseal.
fn sealed_template(policy: &Sha256) -> Result<Public, tss_esapi::Error> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_no_da(true)
        .with_admin_with_policy(true)
        .with_user_with_auth(false)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(Digest::try_from(policy.to_vec())?)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

/// An ECDSA-SHA256 P-256 signing key usable with an empty password.
fn auth_key_template() -> Result<Public, tss_esapi::Error> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_unrestricted_signing_key(
                EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

fn persistent_handle(handle: u32) -> Result<PersistentTpmHandle, TpmError> {
    PersistentTpmHandle::new(handle).map_err(|_| {
        TpmError::Invalid(format!(
            "{handle:#010x} is not a persistent handle (0x81000000 to 0x81ffffff)"
        ))
    })
}

impl Tpm {
    /// Runs `f` with the storage key loaded, flushing it afterwards.
    fn with_storage_key<T>(
        &mut self,
        f: impl FnOnce(&mut Context, KeyHandle) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let template = storage_key_template().map_err(|e| TpmError::tss("storage key", e))?;
        let primary = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .map_err(|e| TpmError::tss("creating the storage key", e))?;
        let out = f(&mut self.ctx, primary.key_handle);
        let _ = self.ctx.flush_context(primary.key_handle.into());
        out
    }

    /// Creates an object under the storage key and returns its blobs.
    fn create_child(
        &mut self,
        template: Public,
        data: Option<SensitiveData>,
        what: &str,
    ) -> Result<Blobs, TpmError> {
        let created = self.with_storage_key(|c, parent| {
            c.execute_with_session(Some(AuthSession::Password), |c| {
                c.create(parent, template, None, data, None, None)
            })
            .map_err(|e| TpmError::tss(what, e))
        })?;
        Ok(Blobs {
            public: created
                .out_public
                .marshall()
                .map_err(|e| TpmError::tss(what, e))?,
            private: created.out_private.value().to_vec(),
        })
    }

    /// Seals `secret` (at most 128 bytes) so that only a TPM whose PCRs hold `policy`'s
    /// values unseals it. Sealing to other values than the current ones (a prediction)
    /// is allowed.
    pub fn seal(&mut self, policy: &PcrPolicy, secret: &[u8]) -> Result<SealedObject, TpmError> {
        if secret.is_empty() || secret.len() > MAX_SECRET {
            return Err(TpmError::Invalid(format!(
                "a sealed secret holds 1 to {MAX_SECRET} bytes, not {}",
                secret.len()
            )));
        }
        let template =
            sealed_template(&policy.digest()).map_err(|e| TpmError::tss("sealed object", e))?;
        let data =
            SensitiveData::try_from(secret.to_vec()).map_err(|e| TpmError::tss("secret", e))?;
        self.create_child(template, Some(data), "sealing the secret")
    }

    /// Unseals a secret sealed under a policy over `pcrs`, with the values the PCRs hold
    /// now. [`TpmError::PolicyMismatch`] when they are not the values it was sealed to.
    pub fn unseal(
        &mut self,
        sealed: &SealedObject,
        pcrs: &[u32],
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let (public, private) = sealed.parts()?;
        let slots = pcrs
            .iter()
            .map(|&i| slot(i))
            .collect::<Result<Vec<_>, _>>()?;
        let selection = PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, &slots)
            .build()
            .map_err(|e| TpmError::tss("PCR selection", e))?;
        self.with_storage_key(|c, parent| {
            let object = c
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.load(parent, private, public)
                })
                .map_err(|e| TpmError::tss("loading the sealed object", e))?;
            let out = unseal_loaded(c, object, selection, pcrs);
            let _ = c.flush_context(object.into());
            out
        })
    }

    /// Creates a new authentication key (ECDSA P-256, SHA-256) under the owner hierarchy.
    /// Store its blobs ([`Blobs::save`]) and/or make it persistent ([`Tpm::persist_key`]).
    pub fn create_auth_key(&mut self) -> Result<AuthKey, TpmError> {
        let template = auth_key_template().map_err(|e| TpmError::tss("auth key", e))?;
        self.create_child(template, None, "creating the authentication key")
    }

    /// Makes a key persistent at `handle` (`0x81000000` to `0x81ffffff`); it then survives
    /// restarts without its blobs. Refused when the handle is taken.
    pub fn persist_key(&mut self, key: &Blobs, handle: u32) -> Result<(), TpmError> {
        let persistent = Persistent::Persistent(persistent_handle(handle)?);
        let (public, private) = key.parts()?;
        self.with_storage_key(|c, parent| {
            let loaded = c
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.load(parent, private, public)
                })
                .map_err(|e| TpmError::tss("loading the key", e))?;
            let out = c
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.evict_control(Provision::Owner, loaded.into(), persistent)
                })
                .map_err(|e| match kind(e) {
                    Some(Tss2ResponseCodeKind::NvDefined) => TpmError::Invalid(format!(
                        "persistent handle {handle:#010x} is already in use"
                    )),
                    _ => TpmError::tss(&format!("making the key persistent at {handle:#010x}"), e),
                });
            let _ = c.flush_context(loaded.into());
            out.map(|mut h| {
                let _ = c.tr_close(&mut h);
            })
        })
    }

    /// Removes the persistent object at `handle`.
    pub fn evict_persistent(&mut self, handle: u32) -> Result<(), TpmError> {
        let mut object = self.open_persistent(handle)?;
        let persistent = Persistent::Persistent(persistent_handle(handle)?);
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.evict_control(Provision::Owner, object, persistent)
            })
            .map_err(|e| {
                let _ = self.ctx.tr_close(&mut object);
                TpmError::tss(&format!("evicting {handle:#010x}"), e)
            })?;
        Ok(())
    }

    /// The persistent objects' handles (`0x81xxxxxx`), ascending: finds a key another
    /// tool made persistent at a handle of its choosing.
    pub fn persistent_handles(&mut self) -> Result<Vec<u32>, TpmError> {
        let mut out = Vec::new();
        let mut next = 0x8100_0000u32;
        loop {
            let (data, more) = self
                .ctx
                .execute_without_session(|c| c.get_capability(CapabilityType::Handles, next, 64))
                .map_err(|e| TpmError::tss("listing persistent handles", e))?;
            let CapabilityData::Handles(list) = data else {
                return Err(TpmError::Invalid(
                    "the TPM answered a handle query with something else".into(),
                ));
            };
            let handles: Vec<u32> = list
                .iter()
                .map(|&h| u32::from(h))
                .filter(|h| h >> 24 == 0x81)
                .collect();
            out.extend(&handles);
            match handles.last() {
                Some(&last) if more && last < 0x81ff_ffff => next = last + 1,
                _ => break,
            }
        }
        Ok(out)
    }

    fn open_persistent(&mut self, handle: u32) -> Result<ObjectHandle, TpmError> {
        let tpm_handle = TpmHandle::Persistent(persistent_handle(handle)?);
        self.ctx
            .execute_without_session(|c| c.tr_from_tpm_public(tpm_handle))
            .map_err(|e| match kind(e) {
                Some(Tss2ResponseCodeKind::Handle) | Some(Tss2ResponseCodeKind::Value) => {
                    TpmError::Blob(format!("no key is persisted at {handle:#010x}"))
                }
                _ => TpmError::tss(&format!("opening persistent handle {handle:#010x}"), e),
            })
    }

    /// Runs `f` with the key loaded (from blobs, or opened at its persistent handle).
    fn with_key<T>(
        &mut self,
        key: KeyRef<'_>,
        f: impl FnOnce(&mut Context, KeyHandle) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        match key {
            KeyRef::Persistent(handle) => {
                let mut object = self.open_persistent(handle)?;
                let out = f(&mut self.ctx, object.into());
                let _ = self.ctx.tr_close(&mut object);
                out
            }
            KeyRef::Blobs(blobs) => {
                let (public, private) = blobs.parts()?;
                self.with_storage_key(|c, parent| {
                    let loaded = c
                        .execute_with_session(Some(AuthSession::Password), |c| {
                            c.load(parent, private, public)
                        })
                        .map_err(|e| TpmError::tss("loading the key", e))?;
                    let out = f(c, loaded);
                    let _ = c.flush_context(loaded.into());
                    out
                })
            }
        }
    }

    /// The public key of a key, as the TPM holds it.
    pub fn public_key(&mut self, key: KeyRef<'_>) -> Result<EcPublicKey, TpmError> {
        self.with_key(key, |c, k| {
            let (public, _, _) = c
                .execute_without_session(|c| c.read_public(k))
                .map_err(|e| TpmError::tss("reading the public key", e))?;
            ec_public_key(&public)
        })
    }

    /// Signs a SHA-256 digest with ECDSA.
    pub fn sign(&mut self, key: KeyRef<'_>, digest: &Sha256) -> Result<EcdsaSignature, TpmError> {
        let digest = Digest::try_from(digest.to_vec()).map_err(|e| TpmError::tss("digest", e))?;
        let validation = TPMT_TK_HASHCHECK {
            tag: TPM2_ST_HASHCHECK,
            hierarchy: TPM2_RH_NULL,
            digest: Default::default(),
        }
        .try_into()
        .map_err(|e| TpmError::tss("hash check ticket", e))?;
        let scheme = SignatureScheme::EcDsa {
            hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
        };
        let signature = self.with_key(key, |c, k| {
            c.execute_with_session(Some(AuthSession::Password), |c| {
                c.sign(k, digest, scheme, validation)
            })
            .map_err(|e| TpmError::tss("signing", e))
        })?;
        match signature {
            Signature::EcDsa(s) => Ok(EcdsaSignature {
                r: s.signature_r().value().to_vec(),
                s: s.signature_s().value().to_vec(),
            }),
            other => Err(TpmError::Invalid(format!(
                "the TPM returned a {:?} signature, not ECDSA",
                other.algorithm()
            ))),
        }
    }
}

/// Starts a policy session, asserts the PCRs' current values and unseals.
fn unseal_loaded(
    c: &mut Context,
    object: KeyHandle,
    selection: tss_esapi::structures::PcrSelectionList,
    pcrs: &[u32],
) -> Result<Zeroizing<Vec<u8>>, TpmError> {
    let session = c
        .start_auth_session(
            None,
            None,
            None,
            SessionType::Policy,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .map_err(|e| TpmError::tss("starting a policy session", e))?
        .ok_or_else(|| TpmError::Invalid("the TPM started no policy session".into()))?;
    let policy_session =
        PolicySession::try_from(session).map_err(|e| TpmError::tss("policy session", e))?;
    let result = c
        .execute_without_session(|c| c.policy_pcr(policy_session, Digest::default(), selection))
        .map_err(|e| TpmError::tss("asserting the PCR policy", e))
        .and_then(|()| {
            c.execute_with_session(Some(session), |c| c.unseal(object.into()))
                .map_err(|e| match kind(e) {
                    Some(Tss2ResponseCodeKind::PolicyFail) => TpmError::PolicyMismatch {
                        pcrs: pcrs.to_vec(),
                    },
                    _ => TpmError::tss("unsealing", e),
                })
        })
        .map(|data| Zeroizing::new(data.value().to_vec()));
    let _ = c.flush_context(tss_esapi::handles::SessionHandle::from(session).into());
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_der_encodes_minimal_positive_integers() {
        let sig = EcdsaSignature {
            r: vec![0x00, 0x00, 0x7f, 0x01],
            s: vec![0x80, 0x02],
        };
        assert_eq!(
            sig.to_der(),
            vec![0x30, 0x09, 0x02, 0x02, 0x7f, 0x01, 0x02, 0x03, 0x00, 0x80, 0x02]
        );
        let zero = EcdsaSignature {
            r: vec![0; 32],
            s: vec![1],
        };
        assert_eq!(
            zero.to_der(),
            vec![0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x01]
        );
    }

    #[test]
    fn the_public_key_pem_is_a_p256_subject_public_key_info() {
        let key = EcPublicKey {
            x: [1; 32],
            y: [2; 32],
        };
        let der = key.to_der();
        assert_eq!(der.len(), 91);
        assert_eq!(&der[der.len() - 64..der.len() - 32], &[1; 32]);
        let pem = key.to_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE"));
        assert!(pem.ends_with("\n-----END PUBLIC KEY-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
    }

    #[test]
    fn blobs_round_trip_through_tpm2b_files_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let public = auth_key_template().unwrap().marshall().unwrap();
        let blobs = Blobs {
            public,
            private: vec![7; 40],
        };
        blobs.save(dir.path(), "k").unwrap();
        let raw = std::fs::read(dir.path().join("k.priv")).unwrap();
        assert_eq!(&raw[..2], &[0, 40]);
        assert_eq!(Blobs::load(dir.path(), "k").unwrap(), blobs);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["k.priv", "k.pub"], "no temporary file left");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("k.priv"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join("k.priv"), [0, 41, 1]).unwrap();
        let err = Blobs::load(dir.path(), "k").unwrap_err().to_string();
        assert!(err.contains("k.priv: says 41 bytes but holds 1"), "{err}");
        let err = Blobs::load(dir.path(), "missing").unwrap_err().to_string();
        assert!(err.contains("missing.pub"), "{err}");
    }
}
