//! Tier 3: the daemon's TPM code (`platform::tpm`, in process through tss-esapi) against a
//! real software TPM (swtpm on loopback), one fresh TPM per test.

use incus_osd::platform::tpm::{Tpm, TpmError};
use incus_osd_test_machine::{tier3_or_return, Swtpm};
use sha2::{Digest as _, Sha256};

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// `H(old || digest)`, computed here independently of the code under test.
fn extended(old: &[u8; 32], digest: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(old);
    h.update(digest);
    h.finalize().into()
}

fn open(swtpm: &Swtpm) -> Tpm {
    Tpm::open(&swtpm.tcti()).expect("open swtpm")
}

#[test]
fn self_test_passes_on_a_fresh_tpm() {
    tier3_or_return!();
    let swtpm = Swtpm::start().unwrap();
    let mut tpm = open(&swtpm);
    tpm.self_test().expect("self test");
    assert_eq!(tpm.tcti(), swtpm.tcti());
}

#[test]
fn nothing_listening_is_reported_as_no_tpm() {
    tier3_or_return!();
    let mut swtpm = Swtpm::start().unwrap();
    let tcti = swtpm.tcti();
    swtpm.stop();
    let err = Tpm::open(&tcti)
        .and_then(|mut t| t.self_test())
        .expect_err("no TPM behind the TCTI");
    assert!(matches!(err, TpmError::NoTpm(_)), "{err:?}");
    assert!(err.to_string().contains(&tcti), "{err}");
}

#[test]
fn missing_device_under_the_root_is_no_tpm() {
    tier3_or_return!();
    let root = tempfile::tempdir().unwrap();
    let err = Tpm::open_root(root.path()).expect_err("no device");
    assert!(matches!(err, TpmError::NoTpm(_)), "{err:?}");
    assert!(err.to_string().contains("dev/tpmrm0"), "{err}");
}

#[test]
fn pcr_reads_equal_the_values_extending_known_digests_gives() {
    tier3_or_return!();
    let swtpm = Swtpm::start().unwrap();
    let mut tpm = open(&swtpm);
    let zero = [0u8; 32];
    let before = tpm.read_pcrs(&[7, 15, 16]).unwrap();
    assert_eq!(before, vec![(7, zero), (15, zero), (16, zero)]);

    let a = sha256(b"first");
    let b = sha256(b"second");
    tpm.extend_pcr(15, &a).unwrap();
    tpm.extend_pcr(15, &b).unwrap();
    tpm.extend_pcr(16, &a).unwrap();
    let want15 = extended(&extended(&zero, &a), &b);
    let want16 = extended(&zero, &a);
    assert_eq!(tpm.read_pcr(15).unwrap(), want15);
    // More than one read's worth (8) of PCRs, in the order asked.
    let all: Vec<u32> = (0..24).rev().collect();
    let read = tpm.read_pcrs(&all).unwrap();
    assert_eq!(read.len(), 24);
    for (i, v) in read {
        let want = match i {
            15 => want15,
            16 => want16,
            // PCRs 17-22 start as all ones (dynamic root of trust) on a TPM 2.0.
            17..=22 => [0xff; 32],
            _ => zero,
        };
        assert_eq!(v, want, "PCR {i}");
    }
    let err = tpm.read_pcrs(&[24]).expect_err("no PCR 24");
    assert!(err.to_string().contains("PCR 24"), "{err}");
}
