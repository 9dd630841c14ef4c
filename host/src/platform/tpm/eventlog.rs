//! The firmware's measurement log in the TCG2 crypto-agile format (what the kernel exposes
//! as `/sys/kernel/security/tpm0/binary_bios_measurements`), and its replay.
//!
//! Layout (all integers little-endian): a first event in the old SHA-1 layout (PCR, type,
//! 20-byte digest, size, data) whose data is the "Spec ID Event03" structure naming each
//! hash bank and its digest size; then events of PCR, type, a digest count and that many
//! (algorithm, digest) pairs, size, data. Replaying extends each PCR with the SHA-256
//! digest of every event but `EV_NO_ACTION`; PCRs 4 and 7 are then checked against the TPM.

use std::collections::BTreeMap;
use std::fmt;

use sha2::{Digest as _, Sha256 as Hasher};

use super::{hex, Sha256, Tpm, TpmError};
use crate::platform::kernel::KernelFiles;

/// Where the kernel exposes the log, under `/sys`.
pub const SYSFS_PATH: &str = "kernel/security/tpm0/binary_bios_measurements";

/// TCG algorithm identifiers.
pub const ALG_SHA1: u16 = 0x0004;
pub const ALG_SHA256: u16 = 0x000b;
pub const ALG_SHA384: u16 = 0x000c;
pub const ALG_SHA512: u16 = 0x000d;

/// Event types (TCG PC Client Platform Firmware Profile).
pub mod event_type {
    pub const EV_NO_ACTION: u32 = 0x0000_0003;
    pub const EV_SEPARATOR: u32 = 0x0000_0004;
    pub const EV_EFI_VARIABLE_DRIVER_CONFIG: u32 = 0x8000_0001;
    pub const EV_EFI_VARIABLE_BOOT: u32 = 0x8000_0002;
    pub const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
    pub const EV_EFI_ACTION: u32 = 0x8000_0007;
    pub const EV_EFI_VARIABLE_AUTHORITY: u32 = 0x8000_00e0;
}

const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
const STARTUP_LOCALITY: &[u8; 16] = b"StartupLocality\0";

/// One measured event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub pcr: u32,
    pub event_type: u32,
    /// One digest per bank: (TCG algorithm id, digest).
    pub digests: Vec<(u16, Vec<u8>)>,
    pub data: Vec<u8>,
}

impl Event {
    /// The SHA-256 digest, when the event has one.
    pub fn sha256(&self) -> Option<Sha256> {
        self.digests
            .iter()
            .find(|(alg, _)| *alg == ALG_SHA256)
            .and_then(|(_, d)| d.as_slice().try_into().ok())
    }
}

/// A parsed log: the banks its header declares, and the events after the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    /// (TCG algorithm id, digest size) per bank, in header order.
    pub algorithms: Vec<(u16, u16)>,
    pub events: Vec<Event>,
}

/// One PCR whose replayed value differs from the TPM's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrDiff {
    pub pcr: u32,
    pub replayed: Sha256,
    pub tpm: Sha256,
}

/// The PCRs whose replayed values differ from the TPM's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch(pub Vec<PcrDiff>);

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the TPM event log does not match the TPM:")?;
        for (n, d) in self.0.iter().enumerate() {
            let sep = if n == 0 { " " } else { "; " };
            write!(
                f,
                "{sep}PCR {} replays to {} but the TPM holds {}",
                d.pcr,
                hex(&d.replayed),
                hex(&d.tpm)
            )?;
        }
        Ok(())
    }
}

/// A little-endian reader that names what it was reading when the data runs out.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.data.len() - self.pos < n {
            return Err(format!(
                "truncated at byte {}: {what} needs {n} bytes, {} left",
                self.pos,
                self.data.len() - self.pos
            ));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, String> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn rest_is_zero(&self) -> bool {
        self.data[self.pos..].iter().all(|&b| b == 0)
    }
}

/// Parses a crypto-agile log.
pub fn parse(data: &[u8]) -> Result<EventLog, TpmError> {
    parse_inner(data).map_err(TpmError::EventLog)
}

fn parse_inner(data: &[u8]) -> Result<EventLog, String> {
    let mut r = Reader { data, pos: 0 };
    // The header event, in the SHA-1 layout.
    let _pcr = r.u32("header PCR")?;
    let ty = r.u32("header type")?;
    r.take(20, "header digest")?;
    let size = r.u32("header size")? as usize;
    let body = r.take(size, "header data")?;
    if ty != event_type::EV_NO_ACTION || body.len() < 16 || &body[..16] != SPEC_ID_SIGNATURE {
        return Err(
            "not a crypto-agile (TCG2) log: the first event is not the Spec ID Event03 header"
                .into(),
        );
    }
    let mut h = Reader {
        data: body,
        pos: 16,
    };
    let _platform_class = h.u32("platform class")?;
    let _minor = h.u8("spec version")?;
    let _major = h.u8("spec version")?;
    let _errata = h.u8("spec errata")?;
    let _uintn = h.u8("uintn size")?;
    let count = h.u32("algorithm count")?;
    if count == 0 || count > 16 {
        return Err(format!("the header declares {count} hash algorithms"));
    }
    let mut algorithms = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let alg = h.u16("algorithm id")?;
        let size = h.u16("digest size")?;
        algorithms.push((alg, size));
    }

    let mut events = Vec::new();
    while r.pos < data.len() {
        // Some firmware pads the buffer: trailing zeros end the log.
        if r.rest_is_zero() {
            break;
        }
        let n = events.len() + 1;
        let pcr = r.u32("event PCR")?;
        let event_type = r.u32("event type")?;
        let count = r.u32("digest count")?;
        if count as usize > algorithms.len() {
            return Err(format!(
                "event {n} has {count} digests but the header declares {} banks",
                algorithms.len()
            ));
        }
        let mut digests = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let alg = r.u16("digest algorithm")?;
            let size = algorithms
                .iter()
                .find(|(a, _)| *a == alg)
                .map(|(_, s)| *s)
                .ok_or_else(|| {
                    format!("event {n} has a digest of algorithm {alg:#06x}, not in the header")
                })?;
            digests.push((alg, r.take(size as usize, "digest")?.to_vec()));
        }
        let size = r.u32("event size")? as usize;
        let data = r.take(size, "event data")?.to_vec();
        events.push(Event {
            pcr,
            event_type,
            digests,
            data,
        });
    }
    Ok(EventLog { algorithms, events })
}

/// `H(old || digest)`.
pub fn extend(old: &Sha256, digest: &Sha256) -> Sha256 {
    let mut h = Hasher::new();
    h.update(old);
    h.update(digest);
    h.finalize().into()
}

/// Reads the kernel's log (`<sys>/kernel/security/tpm0/binary_bios_measurements`);
/// `Ok(None)` when there is none (no TPM, or a software TPM started after the firmware).
pub fn read(kernel: &KernelFiles) -> Result<Option<EventLog>, TpmError> {
    let path = kernel.sys_path(SYSFS_PATH);
    match KernelFiles::read(&path) {
        Ok(Some(data)) => parse(&data).map(Some),
        Ok(None) => Ok(None),
        Err(e) => Err(TpmError::EventLog(format!("{}: {e}", path.display()))),
    }
}

impl EventLog {
    /// An empty log whose header declares the SHA-256 bank only (for a synthesized log).
    pub fn sha256_only() -> EventLog {
        EventLog {
            algorithms: vec![(ALG_SHA256, 32)],
            events: Vec::new(),
        }
    }

    /// Adds an event with its SHA-256 digest.
    pub fn push(&mut self, pcr: u32, event_type: u32, digest: Sha256, data: &[u8]) {
        self.events.push(Event {
            pcr,
            event_type,
            digests: vec![(ALG_SHA256, digest.to_vec())],
            data: data.to_vec(),
        });
    }

    /// The log in the kernel's binary format.
    pub fn encode(&self) -> Vec<u8> {
        let mut spec = Vec::new();
        spec.extend(SPEC_ID_SIGNATURE);
        spec.extend(0u32.to_le_bytes()); // platform class: client
        spec.extend([0, 2, 0, 2]); // spec 2.0, errata 0, UINTN of 8 bytes
        spec.extend((self.algorithms.len() as u32).to_le_bytes());
        for (alg, size) in &self.algorithms {
            spec.extend(alg.to_le_bytes());
            spec.extend(size.to_le_bytes());
        }
        spec.push(0); // no vendor info
        let mut out = Vec::new();
        out.extend(0u32.to_le_bytes());
        out.extend(event_type::EV_NO_ACTION.to_le_bytes());
        out.extend([0u8; 20]);
        out.extend((spec.len() as u32).to_le_bytes());
        out.extend(spec);
        for e in &self.events {
            out.extend(e.pcr.to_le_bytes());
            out.extend(e.event_type.to_le_bytes());
            out.extend((e.digests.len() as u32).to_le_bytes());
            for (alg, d) in &e.digests {
                out.extend(alg.to_le_bytes());
                out.extend(d);
            }
            out.extend((e.data.len() as u32).to_le_bytes());
            out.extend(&e.data);
        }
        out
    }

    /// The SHA-256 PCR values the log replays to, for every PCR it measures into. PCRs
    /// start at zero, but PCR 0 starts at the locality a `StartupLocality` event names.
    pub fn replay(&self) -> Result<BTreeMap<u32, Sha256>, TpmError> {
        self.replay_with(|_| None)
    }

    /// The values the log replays to when some events are measured differently: a
    /// prediction of the next boot (a new db certificate in PCR 7, a new boot binary in
    /// PCR 4). `replace` gives an event's new SHA-256 digest, or `None` to keep it.
    pub fn replay_with(
        &self,
        replace: impl Fn(&Event) -> Option<Sha256>,
    ) -> Result<BTreeMap<u32, Sha256>, TpmError> {
        let mut pcrs: BTreeMap<u32, Sha256> = BTreeMap::new();
        for (n, e) in self.events.iter().enumerate() {
            if e.event_type == event_type::EV_NO_ACTION {
                if e.pcr == 0 && e.data.len() == 17 && e.data[..16] == STARTUP_LOCALITY[..] {
                    let mut start = [0u8; 32];
                    start[31] = e.data[16];
                    pcrs.insert(0, start);
                }
                continue;
            }
            if e.pcr > 23 {
                return Err(TpmError::EventLog(format!(
                    "event {} measures into PCR {}",
                    n + 1,
                    e.pcr
                )));
            }
            let digest = replace(e).or_else(|| e.sha256()).ok_or_else(|| {
                TpmError::EventLog(format!(
                    "event {} (PCR {}) has no SHA-256 digest",
                    n + 1,
                    e.pcr
                ))
            })?;
            let pcr = pcrs.entry(e.pcr).or_insert([0; 32]);
            *pcr = extend(pcr, &digest);
        }
        Ok(pcrs)
    }

    /// The replayed value of one PCR (zero when the log never measures into it).
    pub fn replayed(&self, pcr: u32) -> Result<Sha256, TpmError> {
        Ok(self.replay()?.get(&pcr).copied().unwrap_or([0; 32]))
    }

    /// Checks the replayed values of `pcrs` against the TPM's; returns them when all match,
    /// else [`TpmError::PcrMismatch`] naming each PCR that differs with both values.
    pub fn validate(&self, tpm: &mut Tpm, pcrs: &[u32]) -> Result<Vec<(u32, Sha256)>, TpmError> {
        let replayed = self.replay()?;
        let actual = tpm.read_pcrs(pcrs)?;
        let diffs: Vec<PcrDiff> = actual
            .iter()
            .filter_map(|&(pcr, tpm)| {
                let replayed = replayed.get(&pcr).copied().unwrap_or([0; 32]);
                (replayed != tpm).then_some(PcrDiff { pcr, replayed, tpm })
            })
            .collect();
        if diffs.is_empty() {
            Ok(actual)
        } else {
            Err(TpmError::PcrMismatch(Mismatch(diffs)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::event_type::*;
    use super::*;

    fn sha256(data: &[u8]) -> [u8; 32] {
        Hasher::digest(data).into()
    }

    fn sha1_like(n: u8) -> Vec<u8> {
        vec![n; 20]
    }

    /// A log written byte by byte here, not with `encode`: header with SHA-1 and SHA-256
    /// banks, then the given events (pcr, type, sha256 digest, data).
    fn handmade(events: &[(u32, u32, [u8; 32], &[u8])]) -> Vec<u8> {
        let mut spec = Vec::new();
        spec.extend(b"Spec ID Event03\0");
        spec.extend([0, 0, 0, 0]); // platform class
        spec.extend([0, 2, 0, 2]); // version 2.0, errata, uintn
        spec.extend([2, 0, 0, 0]); // two algorithms
        spec.extend([0x04, 0x00, 20, 0]); // SHA-1, 20 bytes
        spec.extend([0x0b, 0x00, 32, 0]); // SHA-256, 32 bytes
        spec.push(0);
        let mut out = Vec::new();
        out.extend([0, 0, 0, 0, 3, 0, 0, 0]);
        out.extend([0u8; 20]);
        out.extend((spec.len() as u32).to_le_bytes());
        out.extend(&spec);
        for (i, (pcr, ty, d, data)) in events.iter().enumerate() {
            out.extend(pcr.to_le_bytes());
            out.extend(ty.to_le_bytes());
            out.extend([2, 0, 0, 0]);
            out.extend([0x04, 0x00]);
            out.extend(sha1_like(i as u8));
            out.extend([0x0b, 0x00]);
            out.extend(d);
            out.extend((data.len() as u32).to_le_bytes());
            out.extend(*data);
        }
        out
    }

    #[test]
    fn a_handmade_two_bank_log_parses_into_its_events() {
        let sb = sha256(b"SecureBoot=1");
        let bytes = handmade(&[
            (7, EV_EFI_VARIABLE_DRIVER_CONFIG, sb, b"SecureBoot"),
            (4, EV_EFI_BOOT_SERVICES_APPLICATION, [9; 32], b""),
        ]);
        let log = parse(&bytes).unwrap();
        assert_eq!(log.algorithms, vec![(ALG_SHA1, 20), (ALG_SHA256, 32)]);
        assert_eq!(log.events.len(), 2);
        assert_eq!(log.events[0].pcr, 7);
        assert_eq!(log.events[0].event_type, EV_EFI_VARIABLE_DRIVER_CONFIG);
        assert_eq!(log.events[0].data, b"SecureBoot");
        assert_eq!(log.events[0].digests[0], (ALG_SHA1, sha1_like(0)));
        assert_eq!(log.events[0].sha256(), Some(sb));
        assert_eq!(log.events[1].sha256(), Some([9; 32]));
        assert!(log.events[1].data.is_empty());
    }

    #[test]
    fn replay_extends_sha256_digests_per_pcr_and_skips_no_action() {
        let (a, b, c) = (sha256(b"a"), sha256(b"b"), sha256(b"c"));
        let bytes = handmade(&[
            (7, EV_EFI_VARIABLE_DRIVER_CONFIG, a, b""),
            (
                4,
                EV_EFI_ACTION,
                b,
                b"Calling EFI Application from Boot Option",
            ),
            (7, EV_NO_ACTION, [0xee; 32], b"not measured"),
            (7, EV_SEPARATOR, c, &[0, 0, 0, 0]),
        ]);
        let pcrs = parse(&bytes).unwrap().replay().unwrap();
        let h = |x: &[u8; 32], y: &[u8; 32]| sha256(&[&x[..], &y[..]].concat());
        assert_eq!(pcrs[&7], h(&h(&[0; 32], &a), &c));
        assert_eq!(pcrs[&4], h(&[0; 32], &b));
        assert_eq!(pcrs.len(), 2);
    }

    #[test]
    fn replay_with_a_replaced_digest_predicts_the_new_value() {
        let (a, b, c) = (sha256(b"a"), sha256(b"b"), sha256(b"c"));
        let bytes = handmade(&[
            (7, EV_EFI_VARIABLE_DRIVER_CONFIG, a, b"db"),
            (7, EV_SEPARATOR, b, &[0, 0, 0, 0]),
            (4, EV_EFI_BOOT_SERVICES_APPLICATION, a, b""),
        ]);
        let log = parse(&bytes).unwrap();
        let predicted = log
            .replay_with(|e| (e.pcr == 7 && e.data == b"db").then_some(c))
            .unwrap();
        let h = |x: &[u8; 32], y: &[u8; 32]| sha256(&[&x[..], &y[..]].concat());
        assert_eq!(predicted[&7], h(&h(&[0; 32], &c), &b));
        assert_eq!(predicted[&4], log.replay().unwrap()[&4]);
        assert_ne!(predicted[&7], log.replay().unwrap()[&7]);
    }

    #[test]
    fn a_startup_locality_event_sets_pcr_0s_starting_value() {
        let d = sha256(b"crtm");
        let mut locality = b"StartupLocality\0".to_vec();
        locality.push(3);
        let bytes = handmade(&[(0, EV_NO_ACTION, [0; 32], &locality), (0, 0x8, d, b"")]);
        let mut start = [0u8; 32];
        start[31] = 3;
        let want = sha256(&[&start[..], &d[..]].concat());
        assert_eq!(parse(&bytes).unwrap().replayed(0).unwrap(), want);
    }

    #[test]
    fn encode_writes_what_parse_reads() {
        let mut log = EventLog::sha256_only();
        log.push(7, EV_EFI_VARIABLE_AUTHORITY, [1; 32], b"db cert");
        log.push(4, EV_EFI_BOOT_SERVICES_APPLICATION, [2; 32], &[0; 40]);
        let again = parse(&log.encode()).unwrap();
        assert_eq!(again, log);
        // Trailing padding is ignored.
        let mut padded = log.encode();
        padded.extend([0; 64]);
        assert_eq!(parse(&padded).unwrap(), log);
    }

    #[test]
    fn a_truncated_log_says_where_and_what() {
        let bytes = handmade(&[(7, EV_SEPARATOR, [1; 32], &[0, 0, 0, 0])]);
        let err = parse(&bytes[..bytes.len() - 2]).unwrap_err().to_string();
        assert!(err.starts_with("TPM event log: truncated at byte"), "{err}");
        assert!(err.contains("event data needs 4 bytes, 2 left"), "{err}");
    }

    #[test]
    fn a_sha1_only_log_without_the_spec_id_header_is_refused() {
        let mut bytes = handmade(&[]);
        bytes[32..47].copy_from_slice(b"Not the header!");
        let err = parse(&bytes).unwrap_err().to_string();
        assert!(err.contains("not a crypto-agile"), "{err}");
    }

    #[test]
    fn an_event_with_an_undeclared_algorithm_is_refused() {
        let mut log = EventLog::sha256_only();
        log.events.push(Event {
            pcr: 7,
            event_type: EV_SEPARATOR,
            digests: vec![(ALG_SHA384, vec![0; 48])],
            data: vec![],
        });
        let err = parse(&log.encode()).unwrap_err().to_string();
        assert!(err.contains("algorithm 0x000c, not in the header"), "{err}");
    }

    #[test]
    fn mismatch_names_each_pcr_with_both_values() {
        let m = Mismatch(vec![PcrDiff {
            pcr: 7,
            replayed: [0xaa; 32],
            tpm: [0xbb; 32],
        }]);
        assert_eq!(
            m.to_string(),
            format!(
                "the TPM event log does not match the TPM: PCR 7 replays to {} but the TPM holds {}",
                "aa".repeat(32),
                "bb".repeat(32)
            )
        );
    }

    #[test]
    fn the_kernel_log_is_read_from_sysfs_under_the_kernel_files() {
        let root = tempfile::tempdir().unwrap();
        let kernel = KernelFiles::under(root.path());
        assert_eq!(read(&kernel).unwrap(), None);
        let mut log = EventLog::sha256_only();
        log.push(7, EV_SEPARATOR, [3; 32], &[0; 4]);
        let path = kernel.sys_path(SYSFS_PATH);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, log.encode()).unwrap();
        assert_eq!(read(&kernel).unwrap(), Some(log));
    }
}
