//! Tier 3: the daemon's TPM code (`platform::tpm`, in process through tss-esapi) against a
//! real software TPM (swtpm on loopback), one fresh TPM per test.

use incus_osd::platform::tpm::eventlog::{self, event_type::*, Event, EventLog};
use incus_osd::platform::tpm::{Blobs, KeyRef, PcrPolicy, Tpm, TpmError};
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
fn a_tpm_in_failure_mode_is_reported_as_such() {
    tier3_or_return!();
    let swtpm = Swtpm::start().unwrap();
    let mut tpm = open(&swtpm);
    tpm.self_test().unwrap();
    // Stopping the TPM through swtpm's control channel leaves it answering every command
    // with TPM_RC_FAILURE, as a TPM that failed its self test does.
    let status = std::process::Command::new("swtpm_ioctl")
        .arg("--tcp")
        .arg(format!("127.0.0.1:{}", swtpm.ctrl_port()))
        .arg("--stop")
        .status()
        .expect("run swtpm_ioctl");
    assert!(status.success());
    let err = tpm.self_test().expect_err("failure mode");
    assert!(matches!(err, TpmError::FailureMode(_)), "{err:?}");
    assert!(
        err.to_string().contains("the TPM is in failure mode"),
        "{err}"
    );
    let err = tpm.read_pcr(7).expect_err("failure mode");
    assert!(matches!(err, TpmError::FailureMode(_)), "{err:?}");
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

/// A log as firmware with Secure Boot on writes it for PCRs 4 and 7 (SHA-256 bank only),
/// each event's digest also extended into the TPM, as the firmware would.
fn measured_boot(tpm: &mut Tpm) -> EventLog {
    let mut log = EventLog::sha256_only();
    let events: [(u32, u32, &[u8]); 7] = [
        (7, EV_EFI_VARIABLE_DRIVER_CONFIG, b"SecureBoot\x01"),
        (7, EV_EFI_VARIABLE_DRIVER_CONFIG, b"PK certificate"),
        (7, EV_EFI_VARIABLE_DRIVER_CONFIG, b"db certificates"),
        (7, EV_SEPARATOR, &[0, 0, 0, 0]),
        (
            4,
            EV_EFI_ACTION,
            b"Calling EFI Application from Boot Option",
        ),
        (4, EV_SEPARATOR, &[0, 0, 0, 0]),
        (
            7,
            EV_EFI_VARIABLE_AUTHORITY,
            b"db: the boot loader's signer",
        ),
    ];
    for (pcr, ty, data) in events {
        let digest = sha256(data);
        log.push(pcr, ty, digest, data);
        tpm.extend_pcr(pcr, &digest).unwrap();
    }
    // The boot loader's authenticode hash: the digest is not the hash of the event data.
    let app = sha256(b"authenticode of BOOTX64.EFI");
    log.push(4, EV_EFI_BOOT_SERVICES_APPLICATION, app, &[0; 32]);
    tpm.extend_pcr(4, &app).unwrap();
    // Not measured.
    log.push(7, EV_NO_ACTION, [0xaa; 32], b"informational");
    log
}

#[test]
fn event_log_replay_matches_the_tpm_for_pcrs_4_and_7() {
    tier3_or_return!();
    let swtpm = Swtpm::start().unwrap();
    let mut tpm = open(&swtpm);
    let log = measured_boot(&mut tpm);
    // Through the kernel's binary format.
    let parsed = eventlog::parse(&log.encode()).unwrap();
    let checked = parsed.validate(&mut tpm, &[4, 7]).expect("log matches");
    assert_eq!(checked[0], (4, tpm.read_pcr(4).unwrap()));
    assert_eq!(checked[1], (7, tpm.read_pcr(7).unwrap()));
    assert_ne!(checked[1].1, [0; 32]);
}

#[test]
fn a_tampered_event_log_is_reported_as_a_mismatch_naming_the_pcr() {
    tier3_or_return!();
    let swtpm = Swtpm::start().unwrap();
    let mut tpm = open(&swtpm);
    let log = measured_boot(&mut tpm);
    let honest = log.clone();
    let mut log = log;
    // Someone claims Secure Boot was off: the PCR 7 event's digest no longer matches.
    log.events[0].digests[0].1 = sha256(b"SecureBoot\x00").to_vec();
    let err = eventlog::parse(&log.encode())
        .unwrap()
        .validate(&mut tpm, &[4, 7])
        .expect_err("tampered");
    let TpmError::PcrMismatch(ref m) = err else {
        panic!("{err:?}");
    };
    assert_eq!(m.0.len(), 1, "only PCR 7 differs: {err}");
    assert_eq!(m.0[0].pcr, 7);
    assert_eq!(m.0[0].tpm, tpm.read_pcr(7).unwrap());
    let text = err.to_string();
    assert!(text.contains("PCR 7 replays to"), "{text}");
    assert!(text.contains("but the TPM holds"), "{text}");

    // An event the log leaves out (PCR 4's boot loader) is caught as well.
    let mut log = honest;
    log.events
        .retain(|e| e.event_type != EV_EFI_BOOT_SERVICES_APPLICATION);
    let err = log.validate(&mut tpm, &[4, 7]).expect_err("dropped event");
    assert!(err.to_string().contains("PCR 4 replays to"), "{err}");
}

const SECRET: &[u8] = b"the volume key that unlocks root";

/// The policy the disk keys use with Secure Boot on: PCR 7 as it is now, PCR 15 zero.
fn boot_policy(tpm: &mut Tpm) -> PcrPolicy {
    PcrPolicy::for_boot(true, [0; 32], tpm.read_pcr(7).unwrap())
}

#[test]
fn a_secret_sealed_under_pcrs_7_and_15_unseals_after_a_restart_from_its_files() {
    tier3_or_return!();
    let swtpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    {
        let mut tpm = open(&swtpm);
        measured_boot(&mut tpm);
        let policy = boot_policy(&mut tpm);
        let sealed = tpm.seal(&policy, SECRET).unwrap();
        sealed.save(dir.path(), "root").unwrap();
    }
    // A new connection (as after a daemon restart) with only the files.
    let mut tpm = open(&swtpm);
    let sealed = Blobs::load(dir.path(), "root").unwrap();
    let secret = tpm.unseal(&sealed, &[7, 15]).expect("unseal");
    assert_eq!(&secret[..], SECRET);
}

#[test]
fn extending_pcr_15_makes_unseal_refused_with_a_policy_error() {
    tier3_or_return!();
    let swtpm = Swtpm::start().unwrap();
    let mut tpm = open(&swtpm);
    measured_boot(&mut tpm);
    let policy = boot_policy(&mut tpm);
    let sealed = tpm.seal(&policy, SECRET).unwrap();
    assert_eq!(&tpm.unseal(&sealed, &[7, 15]).unwrap()[..], SECRET);

    tpm.extend_pcr(15, &sha256(b"IncusOS")).unwrap();
    let err = tpm.unseal(&sealed, &[7, 15]).expect_err("PCR 15 changed");
    assert!(
        matches!(err, TpmError::PolicyMismatch { ref pcrs } if pcrs == &[7, 15]),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the TPM refused to unseal: PCRs [7, 15] do not hold the values the secret was sealed to"
    );
}

#[test]
fn resealing_to_the_new_pcr_values_rebinds_the_secret() {
    tier3_or_return!();
    let swtpm = Swtpm::start().unwrap();
    let mut tpm = open(&swtpm);
    measured_boot(&mut tpm);
    let policy = boot_policy(&mut tpm);
    let old = tpm.seal(&policy, SECRET).unwrap();
    // PCR 7 changes (a new Secure Boot key).
    tpm.extend_pcr(7, &sha256(b"new db entry")).unwrap();
    assert!(matches!(
        tpm.unseal(&old, &[7, 15]),
        Err(TpmError::PolicyMismatch { .. })
    ));
    let policy = boot_policy(&mut tpm);
    let new = tpm.seal(&policy, SECRET).unwrap();
    assert_eq!(&tpm.unseal(&new, &[7, 15]).unwrap()[..], SECRET);
}

#[test]
fn a_secret_sealed_to_predicted_pcr_7_unseals_once_pcr_7_gets_there() {
    tier3_or_return!();
    let swtpm = Swtpm::start().unwrap();
    let mut tpm = open(&swtpm);
    let now = tpm.read_pcr(7).unwrap();
    let next = sha256(b"the next db certificate");
    let predicted = extended(&now, &next);
    let policy = boot_policy(&mut tpm).with_value(7, predicted).unwrap();
    let sealed = tpm.seal(&policy, SECRET).unwrap();
    assert!(matches!(
        tpm.unseal(&sealed, &[7, 15]),
        Err(TpmError::PolicyMismatch { .. })
    ));
    tpm.extend_pcr(7, &next).unwrap();
    assert_eq!(&tpm.unseal(&sealed, &[7, 15]).unwrap()[..], SECRET);
}

#[test]
fn without_secure_boot_the_policy_also_binds_pcr_4() {
    tier3_or_return!();
    let swtpm = Swtpm::start().unwrap();
    let mut tpm = open(&swtpm);
    measured_boot(&mut tpm);
    let (pcr4, pcr7) = (tpm.read_pcr(4).unwrap(), tpm.read_pcr(7).unwrap());
    let policy = PcrPolicy::for_boot(false, pcr4, pcr7);
    let sealed = tpm.seal(&policy, SECRET).unwrap();
    assert_eq!(&tpm.unseal(&sealed, &[4, 7, 15]).unwrap()[..], SECRET);
    tpm.extend_pcr(4, &sha256(b"another boot loader")).unwrap();
    let err = tpm.unseal(&sealed, &[4, 7, 15]).unwrap_err();
    assert!(matches!(err, TpmError::PolicyMismatch { .. }), "{err:?}");
}

/// Power-cycles the software TPM (swtpm's init over its control channel, then
/// TPM2_Startup(CLEAR) as firmware sends it): PCRs back to their reset values, seeds and
/// persistent objects kept. No connection may be open.
fn reboot(swtpm: &Swtpm) {
    let status = std::process::Command::new("swtpm_ioctl")
        .arg("--tcp")
        .arg(format!("127.0.0.1:{}", swtpm.ctrl_port()))
        .arg("-i")
        .status()
        .expect("run swtpm_ioctl");
    assert!(status.success());
    let startup = [
        0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x44, 0, 0, // TPM2_Startup(TPM_SU_CLEAR)
    ];
    let response = swtpm.transmit(&startup).unwrap();
    let rc = u32::from_be_bytes([response[6], response[7], response[8], response[9]]);
    // Success, or TPM_RC_INITIALIZE when swtpm already started it up.
    assert!(rc == 0 || rc == 0x100, "TPM2_Startup: {rc:#x}");
}

#[test]
fn a_secret_sealed_to_the_predicted_next_boot_unseals_after_that_boot() {
    tier3_or_return!();
    let swtpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let new_db = sha256(b"db certificates, with the new signing key");
    let is_db = |e: &Event| e.data == b"db certificates";
    let log = {
        let mut tpm = open(&swtpm);
        let log = measured_boot(&mut tpm);
        log.validate(&mut tpm, &[4, 7]).unwrap();
        // Predict PCR 7 with the new db measured instead of the old.
        let predicted = log.replay_with(|e| is_db(e).then_some(new_db)).unwrap();
        assert_ne!(predicted[&7], tpm.read_pcr(7).unwrap());
        let policy = PcrPolicy::for_boot(true, [0; 32], predicted[&7]);
        let sealed = tpm.seal(&policy, SECRET).unwrap();
        sealed.save(dir.path(), "root").unwrap();
        assert!(matches!(
            tpm.unseal(&sealed, &[7, 15]),
            Err(TpmError::PolicyMismatch { .. })
        ));
        log
    };
    reboot(&swtpm);
    let mut tpm = open(&swtpm);
    assert_eq!(
        tpm.read_pcr(7).unwrap(),
        [0; 32],
        "PCRs reset by the reboot"
    );
    // The next boot measures the same events with the new db.
    let mut next = log.clone();
    for e in next.events.iter_mut().filter(|e| is_db(e)) {
        e.digests = vec![(eventlog::ALG_SHA256, new_db.to_vec())];
    }
    for e in next.events.iter().filter(|e| e.event_type != EV_NO_ACTION) {
        tpm.extend_pcr(e.pcr, &e.sha256().unwrap()).unwrap();
    }
    next.validate(&mut tpm, &[4, 7]).unwrap();
    let sealed = Blobs::load(dir.path(), "root").unwrap();
    assert_eq!(&tpm.unseal(&sealed, &[7, 15]).unwrap()[..], SECRET);
}

/// Verifies an ECDSA signature with openssl, from the exported PEM public key.
fn openssl_verifies(pem: &str, message: &[u8], der_signature: &[u8]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let (key, msg, sig) = (
        dir.path().join("key.pem"),
        dir.path().join("msg"),
        dir.path().join("sig.der"),
    );
    std::fs::write(&key, pem).unwrap();
    std::fs::write(&msg, message).unwrap();
    std::fs::write(&sig, der_signature).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&key)
        .arg("-signature")
        .arg(&sig)
        .arg(&msg)
        .output()
        .expect("run openssl");
    out.status.success()
}

const AUTH_HANDLE: u32 = 0x8100_0010;

#[test]
fn auth_key_created_persisted_and_loaded_signs_what_openssl_verifies() {
    tier3_or_return!();
    let swtpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let message = b"{\"machine_id\":\"abc\",\"timestamp\":1}";
    let pem = {
        let mut tpm = open(&swtpm);
        let key = tpm.create_auth_key().unwrap();
        key.save(dir.path(), "tpm-auth").unwrap();
        tpm.persist_key(&key, AUTH_HANDLE).unwrap();
        let public = key.ec_public_key().unwrap();
        assert_eq!(
            tpm.public_key(KeyRef::Persistent(AUTH_HANDLE)).unwrap(),
            public
        );
        // A second key cannot take the same handle.
        let other = tpm.create_auth_key().unwrap();
        let err = tpm.persist_key(&other, AUTH_HANDLE).unwrap_err();
        assert!(err.to_string().contains("already in use"), "{err}");
        public.to_pem()
    };
    // Reopened (a restart): the persistent key and the one loaded from its files sign.
    let mut tpm = open(&swtpm);
    let digest = sha256(message);
    let by_handle = tpm.sign(KeyRef::Persistent(AUTH_HANDLE), &digest).unwrap();
    assert!(openssl_verifies(&pem, message, &by_handle.to_der()));
    let blobs = Blobs::load(dir.path(), "tpm-auth").unwrap();
    assert_eq!(blobs.ec_public_key().unwrap().to_pem(), pem);
    let by_blobs = tpm.sign(KeyRef::Blobs(&blobs), &digest).unwrap();
    assert!(openssl_verifies(&pem, message, &by_blobs.to_der()));
    // And a reboot of the TPM.
    drop(tpm);
    reboot(&swtpm);
    let mut tpm = open(&swtpm);
    let after = tpm.sign(KeyRef::Persistent(AUTH_HANDLE), &digest).unwrap();
    assert!(openssl_verifies(&pem, message, &after.to_der()));
    // The signature does not verify another message, nor under another key.
    assert!(!openssl_verifies(
        &pem,
        b"another message",
        &by_handle.to_der()
    ));
    let stranger = tpm.create_auth_key().unwrap().ec_public_key().unwrap();
    assert!(!openssl_verifies(
        &stranger.to_pem(),
        message,
        &by_handle.to_der()
    ));
}

/// Runs a tpm2-tools command against the swtpm, in `dir`; returns its stdout.
fn tpm2_tool(swtpm: &Swtpm, dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .env("TPM2TOOLS_TCTI", swtpm.tcti())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_auth_key_persisted_by_tpm2_tools_as_upstream_does_is_found_and_signs() {
    tier3_or_return!();
    let swtpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The key as the upstream daemon makes it: an ECC key under the endorsement primary,
    // made persistent at the first free owner handle. Without a resource manager each tool
    // leaves its objects loaded: flush them after each.
    let tpm2 = |args: &[&str]| {
        let out = tpm2_tool(&swtpm, d, args);
        tpm2_tool(&swtpm, d, &["tpm2_flushcontext", "-t"]);
        out
    };
    tpm2(&["tpm2_createprimary", "-C", "e", "-c", "primary.ctx"]);
    tpm2(&[
        "tpm2_create",
        "-G",
        "ecc",
        "-u",
        "key.pub",
        "-r",
        "key.priv",
        "-C",
        "primary.ctx",
        "-f",
        "pem",
        "-o",
        "key.pem",
    ]);
    tpm2(&[
        "tpm2_load",
        "-C",
        "primary.ctx",
        "-u",
        "key.pub",
        "-r",
        "key.priv",
        "-c",
        "key.ctx",
    ]);
    let evicted = tpm2(&["tpm2_evictcontrol", "-C", "o", "-c", "key.ctx"]);
    assert!(evicted.contains("0x81000000"), "{evicted}");
    let tools_pem = std::fs::read_to_string(d.join("key.pem")).unwrap();

    let mut tpm = open(&swtpm);
    assert_eq!(tpm.persistent_handles().unwrap(), vec![0x8100_0000]);
    let key = KeyRef::Persistent(0x8100_0000);
    // Our export is the PEM the tools wrote.
    assert_eq!(tpm.public_key(key).unwrap().to_pem(), tools_pem);
    let message = b"token payload";
    let signature = tpm.sign(key, &sha256(message)).unwrap();
    assert!(openssl_verifies(&tools_pem, message, &signature.to_der()));
}

#[test]
fn a_missing_persistent_key_and_an_evicted_one_are_named() {
    tier3_or_return!();
    let swtpm = Swtpm::start().unwrap();
    let mut tpm = open(&swtpm);
    let err = tpm
        .sign(KeyRef::Persistent(AUTH_HANDLE), &[0; 32])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("no key is persisted at 0x81000010"),
        "{err}"
    );
    let key = tpm.create_auth_key().unwrap();
    tpm.persist_key(&key, AUTH_HANDLE).unwrap();
    tpm.sign(KeyRef::Persistent(AUTH_HANDLE), &[0; 32]).unwrap();
    assert_eq!(tpm.persistent_handles().unwrap(), vec![AUTH_HANDLE]);
    tpm.evict_persistent(AUTH_HANDLE).unwrap();
    assert_eq!(tpm.persistent_handles().unwrap(), Vec::<u32>::new());
    assert!(tpm.sign(KeyRef::Persistent(AUTH_HANDLE), &[0; 32]).is_err());
    let err = tpm.persist_key(&key, 0x8000_0000).unwrap_err();
    assert!(err.to_string().contains("not a persistent handle"), "{err}");
}

#[test]
fn clearing_the_tpm_drops_its_persistent_keys_and_what_it_sealed() {
    tier3_or_return!();
    let swtpm = Swtpm::start().unwrap();
    let mut tpm = open(&swtpm);
    measured_boot(&mut tpm);
    let policy = boot_policy(&mut tpm);
    let sealed = tpm.seal(&policy, SECRET).unwrap();
    let key = tpm.create_auth_key().unwrap();
    tpm.persist_key(&key, AUTH_HANDLE).unwrap();
    assert_eq!(tpm.persistent_handles().unwrap(), [AUTH_HANDLE]);
    assert_eq!(&tpm.unseal(&sealed, &[7, 15]).unwrap()[..], SECRET);

    // A factory reset's clear (through the lockout hierarchy's empty authorization).
    tpm.clear().expect("clear");
    assert!(tpm.persistent_handles().unwrap().is_empty());
    // The storage hierarchy has a new seed: the sealed object no longer loads.
    assert!(tpm.unseal(&sealed, &[7, 15]).is_err());
    // The TPM works on: a new key can take the handle again.
    let key = tpm.create_auth_key().unwrap();
    tpm.persist_key(&key, AUTH_HANDLE).unwrap();
}
