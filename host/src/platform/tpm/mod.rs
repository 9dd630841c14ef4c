//! The TPM 2.0, driven in process through the TPM2 software stack (`tss-esapi`), with no
//! tpm2-tools.
//!
//! A [`Tpm`] is one open connection (a TCTI: the kernel's resource manager
//! `/dev/tpmrm0` under the root prefix, or a software TPM for tests). Besides presence,
//! self test and PCR access it offers what the disk keys and the provider need:
//! - [`eventlog`]: the firmware's measurement log, replayed to check PCR 4 and 7;
//! - [`policy`]: the PCR policy digest, computed for current or predicted values;
//! - sealing a secret under that policy ([`Tpm::seal`], [`Tpm::unseal`]);
//! - the authentication key ([`Tpm::create_auth_key`], [`Tpm::sign`]).
//!
//! A [`Tpm`] holds a raw ESAPI context and is not `Send`: open it where it is used (for
//! the async daemon, inside `spawn_blocking`).

pub mod eventlog;
pub mod policy;

mod keys;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::handles::PcrHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Digest, DigestValues, PcrSelectionListBuilder, PcrSlot};
use tss_esapi::{Context, TctiNameConf};

/// A SHA-256 PCR value or digest.
pub type Sha256 = [u8; 32];

pub use keys::{AuthKey, Blobs, EcPublicKey, EcdsaSignature, KeyRef, SealedObject, MAX_SECRET};
pub use policy::PcrPolicy;

/// Where the kernel's TPM resource manager is, relative to the root prefix.
pub const DEVICE: &str = "dev/tpmrm0";

/// What went wrong, worded for an operator.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// No TPM device, or nothing answers on the configured connection.
    #[error("no TPM: {0}")]
    NoTpm(String),
    /// The TPM answers every command with TPM_RC_FAILURE: it needs a reset or a power cycle.
    #[error("the TPM is in failure mode ({0}): it refuses every command until it is reset")]
    FailureMode(String),
    /// The self test did not pass.
    #[error("the TPM self test failed: {0}")]
    SelfTest(String),
    /// The event log could not be read or parsed.
    #[error("TPM event log: {0}")]
    EventLog(String),
    /// A stored blob or key file is unreadable or malformed.
    #[error("{0}")]
    Blob(String),
    /// The PCRs do not hold the values the sealed object is bound to.
    #[error(
        "the TPM refused to unseal: PCRs {pcrs:?} do not hold the values the secret was sealed to"
    )]
    PolicyMismatch { pcrs: Vec<u32> },
    /// Replaying the event log gave other values than the TPM holds.
    #[error("{0}")]
    PcrMismatch(eventlog::Mismatch),
    /// Bad input from the caller (a PCR index out of range, an oversized secret).
    #[error("{0}")]
    Invalid(String),
    /// Any other error the TPM stack returned, with what was being done.
    #[error("TPM: {what}: {error}")]
    Tss {
        what: String,
        error: tss_esapi::Error,
    },
}

impl TpmError {
    /// Wraps a stack error, recognising failure mode.
    pub(crate) fn tss(what: &str, error: tss_esapi::Error) -> TpmError {
        if kind(error) == Some(Tss2ResponseCodeKind::Failure) {
            return TpmError::FailureMode(format!("{what}: {error}"));
        }
        TpmError::Tss {
            what: what.to_string(),
            error,
        }
    }
}

/// The TPM response code kind of a stack error, if it came from the TPM.
pub(crate) fn kind(error: tss_esapi::Error) -> Option<Tss2ResponseCodeKind> {
    match error {
        tss_esapi::Error::Tss2Error(rc) => rc.kind(),
        tss_esapi::Error::WrapperError(_) => None,
    }
}

/// The TCTI for the TPM of a root prefix: `device:<root>/dev/tpmrm0` when that device
/// exists, else [`TpmError::NoTpm`].
pub fn device_tcti(root: &Path) -> Result<String, TpmError> {
    let dev = root.join(DEVICE);
    if dev.exists() {
        Ok(format!("device:{}", dev.display()))
    } else {
        Err(TpmError::NoTpm(format!("{} does not exist", dev.display())))
    }
}

/// One open connection to a TPM.
pub struct Tpm {
    ctx: Context,
    tcti: String,
}

impl std::fmt::Debug for Tpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tpm").field("tcti", &self.tcti).finish()
    }
}

/// A PCR index as the stack's slot, refusing indices past 23.
fn slot(index: u32) -> Result<PcrSlot, TpmError> {
    if index > 23 {
        return Err(TpmError::Invalid(format!(
            "PCR {index} does not exist (0 to 23)"
        )));
    }
    PcrSlot::try_from(1u32 << index).map_err(|e| TpmError::tss("PCR index", e))
}

impl Tpm {
    /// Opens the TPM reached through `tcti`, a TCTI configuration string such as
    /// `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
    pub fn open(tcti: &str) -> Result<Tpm, TpmError> {
        let conf = TctiNameConf::from_str(tcti)
            .map_err(|e| TpmError::Invalid(format!("TCTI {tcti:?} is not valid: {e}")))?;
        if let TctiNameConf::Device(_) = conf {
            // `device` alone means the stack's default device.
            let path = match tcti.strip_prefix("device:") {
                Some(p) if !p.is_empty() => p,
                _ => "/dev/tpm0",
            };
            if !Path::new(path).exists() {
                return Err(TpmError::NoTpm(format!("{path} does not exist")));
            }
        }
        let ctx = Context::new(conf)
            .map_err(|e| TpmError::NoTpm(format!("cannot reach a TPM through {tcti}: {e}")))?;
        Ok(Tpm {
            ctx,
            tcti: tcti.to_string(),
        })
    }

    /// Opens the TPM of a root prefix ([`device_tcti`]).
    pub fn open_root(root: &Path) -> Result<Tpm, TpmError> {
        Tpm::open(&device_tcti(root)?)
    }

    /// The TCTI this connection was opened with.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// The presence check: runs the full self test and asks for its result. A TPM in
    /// failure mode gives [`TpmError::FailureMode`].
    pub fn self_test(&mut self) -> Result<(), TpmError> {
        self.ctx
            .execute_without_session(|c| c.self_test(true))
            .map_err(|e| TpmError::tss("self test", e))?;
        let (_, result) = self
            .ctx
            .execute_without_session(|c| c.get_test_result())
            .map_err(|e| TpmError::tss("self test result", e))?;
        match result {
            Ok(()) => Ok(()),
            Err(e) if kind(e) == Some(Tss2ResponseCodeKind::Failure) => {
                Err(TpmError::FailureMode(format!("self test result: {e}")))
            }
            Err(e) => Err(TpmError::SelfTest(e.to_string())),
        }
    }

    /// Reads SHA-256 PCRs, in the order asked.
    pub fn read_pcrs(&mut self, indices: &[u32]) -> Result<Vec<(u32, Sha256)>, TpmError> {
        let mut out = Vec::with_capacity(indices.len());
        // One read returns at most 8 digests: read in chunks.
        for chunk in indices.chunks(8) {
            let slots = chunk
                .iter()
                .map(|&i| slot(i))
                .collect::<Result<Vec<_>, _>>()?;
            let selection = PcrSelectionListBuilder::new()
                .with_selection(HashingAlgorithm::Sha256, &slots)
                .build()
                .map_err(|e| TpmError::tss("PCR selection", e))?;
            let data = tss_esapi::abstraction::pcr::read_all(&mut self.ctx, selection)
                .map_err(|e| TpmError::tss("reading PCRs", e))?;
            let bank = data.pcr_bank(HashingAlgorithm::Sha256).ok_or_else(|| {
                TpmError::Invalid("the TPM has no active SHA-256 PCR bank".into())
            })?;
            for (&i, s) in chunk.iter().zip(&slots) {
                let d = bank.get_digest(*s).ok_or_else(|| {
                    TpmError::Invalid(format!("the TPM returned no SHA-256 value for PCR {i}"))
                })?;
                out.push((i, to_sha256(d.value(), "PCR value")?));
            }
        }
        Ok(out)
    }

    /// Reads one SHA-256 PCR.
    pub fn read_pcr(&mut self, index: u32) -> Result<Sha256, TpmError> {
        Ok(self.read_pcrs(&[index])?[0].1)
    }

    /// Extends a SHA-256 PCR with a digest (as firmware or the initrd measures).
    pub fn extend_pcr(&mut self, index: u32, digest: &Sha256) -> Result<(), TpmError> {
        slot(index)?;
        let handle = PcrHandle::try_from(index).map_err(|e| TpmError::tss("PCR handle", e))?;
        let mut values = DigestValues::new();
        values.set(
            HashingAlgorithm::Sha256,
            Digest::try_from(digest.to_vec()).map_err(|e| TpmError::tss("digest", e))?,
        );
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.pcr_extend(handle, values)
            })
            .map_err(|e| TpmError::tss(&format!("extending PCR {index}"), e))
    }
}

impl Tpm {
    /// Clears the TPM (`TPM2_Clear` through the lockout hierarchy with its empty default
    /// authorization, as `tpm2_clear` does): every key under the storage and endorsement
    /// hierarchies is gone, and the owner's authorizations are reset.
    pub fn clear(&mut self) -> Result<(), TpmError> {
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.clear(tss_esapi::handles::AuthHandle::Lockout)
            })
            .map_err(|e| TpmError::tss("clearing the TPM", e))
    }
}

/// A 32-byte value from a TPM buffer.
pub(crate) fn to_sha256(bytes: &[u8], what: &str) -> Result<Sha256, TpmError> {
    bytes
        .try_into()
        .map_err(|_| TpmError::Invalid(format!("{what}: {} bytes, not 32", bytes.len())))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where blobs of a named object live: `<dir>/<name>.pub` and `<dir>/<name>.priv`.
pub fn blob_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.pub")),
        dir.join(format!("{name}.priv")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_under_the_root_prefix_is_the_tcti_when_present() {
        let root = tempfile::tempdir().unwrap();
        let err = device_tcti(root.path()).unwrap_err();
        assert!(matches!(err, TpmError::NoTpm(_)), "{err:?}");
        let dev = root.path().join(DEVICE);
        assert_eq!(
            err.to_string(),
            format!("no TPM: {} does not exist", dev.display())
        );
        assert!(matches!(
            Tpm::open_root(root.path()),
            Err(TpmError::NoTpm(_))
        ));
        std::fs::create_dir_all(dev.parent().unwrap()).unwrap();
        std::fs::write(&dev, b"").unwrap();
        assert_eq!(
            device_tcti(root.path()).unwrap(),
            format!("device:{}", dev.display())
        );
    }

    #[test]
    fn a_malformed_tcti_is_refused_by_name() {
        let err = Tpm::open("carrier-pigeon:coop=1").unwrap_err();
        assert!(matches!(err, TpmError::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains("carrier-pigeon"), "{err}");
    }

    #[test]
    fn pcr_indices_past_23_are_refused() {
        assert!(slot(23).is_ok());
        assert_eq!(
            slot(24).unwrap_err().to_string(),
            "PCR 24 does not exist (0 to 23)"
        );
    }
}
