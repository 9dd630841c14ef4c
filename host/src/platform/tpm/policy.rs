//! The PCR policy secrets are sealed under: which PCRs, and the policy digest
//! (TPM2_PolicyPCR) for given values, computed here so that predicted values (a new PCR 7
//! after a Secure Boot key update) can be bound before they are measured.
//!
//! The digest is `H(0^32 || TPM_CC_PolicyPCR || TPML_PCR_SELECTION || H(values))`, with the
//! PCR values concatenated in ascending index order (the order the TPM uses for one bank).

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256 as Hasher};

use super::{hex, Sha256, TpmError};

/// TPM_CC_PolicyPCR.
const CC_POLICY_PCR: u32 = 0x0000_017f;
/// TPM_ALG_SHA256.
const ALG_SHA256: u16 = 0x000b;
/// The PCR whose value must be all zeros (it is extended after the initrd unlocks the disks,
/// so nothing later in the boot can unseal again).
pub const LATE_BOOT_PCR: u32 = 15;

/// The PCRs the disk keys are bound to: 7 (Secure Boot state) and 15, plus 4 (the boot
/// binaries) when Secure Boot is off and 7 alone would not pin what boots.
pub fn bound_pcrs(secure_boot: bool) -> &'static [u32] {
    if secure_boot {
        &[7, 15]
    } else {
        &[4, 7, 15]
    }
}

/// A set of SHA-256 PCR values a policy requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrPolicy {
    values: BTreeMap<u32, Sha256>,
}

impl PcrPolicy {
    /// A policy over these PCRs (indices 0 to 23, at least one).
    pub fn new(values: impl IntoIterator<Item = (u32, Sha256)>) -> Result<PcrPolicy, TpmError> {
        let values: BTreeMap<u32, Sha256> = values.into_iter().collect();
        if values.is_empty() {
            return Err(TpmError::Invalid(
                "a PCR policy needs at least one PCR".into(),
            ));
        }
        if let Some(i) = values.keys().find(|&&i| i > 23) {
            return Err(TpmError::Invalid(format!(
                "PCR {i} does not exist (0 to 23)"
            )));
        }
        Ok(PcrPolicy { values })
    }

    /// The disk-key policy: PCR 7 as given, PCR 15 all zeros, and PCR 4 as given when
    /// Secure Boot is off (`pcr4` is ignored when it is on).
    pub fn for_boot(secure_boot: bool, pcr4: Sha256, pcr7: Sha256) -> PcrPolicy {
        let mut values = BTreeMap::from([(7, pcr7), (LATE_BOOT_PCR, [0; 32])]);
        if !secure_boot {
            values.insert(4, pcr4);
        }
        PcrPolicy { values }
    }

    /// The same policy with one PCR's value replaced (or added): a prediction.
    pub fn with_value(mut self, index: u32, value: Sha256) -> Result<PcrPolicy, TpmError> {
        if index > 23 {
            return Err(TpmError::Invalid(format!(
                "PCR {index} does not exist (0 to 23)"
            )));
        }
        self.values.insert(index, value);
        Ok(self)
    }

    /// The PCR indices, ascending.
    pub fn indices(&self) -> Vec<u32> {
        self.values.keys().copied().collect()
    }

    /// The required value of each PCR.
    pub fn values(&self) -> &BTreeMap<u32, Sha256> {
        &self.values
    }

    /// `TPML_PCR_SELECTION` with one SHA-256 bank selecting these PCRs.
    pub fn selection(&self) -> Vec<u8> {
        let mut bitmap = [0u8; 3];
        for &i in self.values.keys() {
            bitmap[(i / 8) as usize] |= 1 << (i % 8);
        }
        let mut out = Vec::with_capacity(10);
        out.extend(1u32.to_be_bytes());
        out.extend(ALG_SHA256.to_be_bytes());
        out.push(bitmap.len() as u8);
        out.extend(bitmap);
        out
    }

    /// The hash of the PCR values concatenated in index order.
    pub fn pcr_digest(&self) -> Sha256 {
        let mut h = Hasher::new();
        for v in self.values.values() {
            h.update(v);
        }
        h.finalize().into()
    }

    /// The policy digest a TPM computes for a policy session whose PCRs hold these values:
    /// the `authPolicy` of an object sealed under this policy.
    pub fn digest(&self) -> Sha256 {
        let mut h = Hasher::new();
        h.update([0u8; 32]);
        h.update(CC_POLICY_PCR.to_be_bytes());
        h.update(self.selection());
        h.update(self.pcr_digest());
        h.finalize().into()
    }
}

impl std::fmt::Display for PcrPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .values
            .iter()
            .map(|(i, v)| format!("{i}:sha256={}", hex(v)))
            .collect();
        f.write_str(&parts.join("+"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256(parts: &[&[u8]]) -> [u8; 32] {
        let mut h = Hasher::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    }

    #[test]
    fn policy_digest_for_pcrs_7_and_15_matches_the_spec_layout() {
        let pcr7 = [0x11; 32];
        let policy = PcrPolicy::for_boot(true, [0x44; 32], pcr7);
        assert_eq!(policy.indices(), vec![7, 15]);
        // Written out by hand: one selection, SHA-256 (0x000b), 3 bitmap bytes, PCR 7 is bit
        // 7 of byte 0 and PCR 15 bit 7 of byte 1.
        let selection = [0, 0, 0, 1, 0x00, 0x0b, 3, 0x80, 0x80, 0x00];
        assert_eq!(policy.selection(), selection);
        let values = sha256(&[&pcr7, &[0; 32]]);
        let want = sha256(&[&[0; 32], &[0x00, 0x00, 0x01, 0x7f], &selection, &values]);
        assert_eq!(policy.digest(), want);
        // The digest a TPM's trial session gave for these values (recorded once with swtpm).
        assert_eq!(
            hex(&policy.digest()),
            "41d9554948646697522f1958ea299d53b8c11acc88abdb9f5ab1bd35d6fb2253"
        );
    }

    #[test]
    fn without_secure_boot_pcr_4_joins_the_policy_in_index_order() {
        let (pcr4, pcr7) = ([0x44; 32], [0x77; 32]);
        let policy = PcrPolicy::for_boot(false, pcr4, pcr7);
        assert_eq!(policy.indices(), bound_pcrs(false));
        let selection = [0, 0, 0, 1, 0x00, 0x0b, 3, 0x90, 0x80, 0x00];
        assert_eq!(policy.selection(), selection);
        let values = sha256(&[&pcr4, &pcr7, &[0; 32]]);
        let want = sha256(&[&[0; 32], &[0x00, 0x00, 0x01, 0x7f], &selection, &values]);
        assert_eq!(policy.digest(), want);
        // The order values are given in does not matter.
        let reordered = PcrPolicy::new([(15, [0; 32]), (7, pcr7), (4, pcr4)]).unwrap();
        assert_eq!(reordered.digest(), want);
        assert_ne!(PcrPolicy::for_boot(true, pcr4, pcr7).digest(), want);
        // Recorded from a TPM's trial session, as above.
        assert_eq!(
            hex(&want),
            "60a006d55f7b48145291bbb7373ba1939b8dad975474466e430174c99451cc43"
        );
    }

    #[test]
    fn a_predicted_pcr_7_changes_the_digest_as_a_fresh_policy_would() {
        let now = PcrPolicy::for_boot(true, [0; 32], [1; 32]);
        let predicted = now.clone().with_value(7, [2; 32]).unwrap();
        assert_ne!(predicted.digest(), now.digest());
        assert_eq!(
            predicted.digest(),
            PcrPolicy::for_boot(true, [0; 32], [2; 32]).digest()
        );
        assert_eq!(
            predicted.to_string(),
            format!("7:sha256={}+15:sha256={}", "02".repeat(32), "00".repeat(32))
        );
    }

    #[test]
    fn pcr_indices_past_23_and_empty_policies_are_refused() {
        let err = PcrPolicy::new([(24, [0; 32])]).unwrap_err();
        assert_eq!(err.to_string(), "PCR 24 does not exist (0 to 23)");
        assert!(PcrPolicy::new([]).is_err());
        let p = PcrPolicy::new([(23, [0; 32])]).unwrap();
        assert_eq!(p.selection()[7..], [0, 0, 0x80]);
        assert!(p.with_value(30, [0; 32]).is_err());
    }
}
