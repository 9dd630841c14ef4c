//! `/1.0/system/security`: Secure Boot state, the trust fuse, the TPM's status, the LUKS
//! recovery keys of the encrypted volumes, and the drives' and pools' key files.

pub mod auth;
pub mod luks;
pub mod rebind;
pub mod recovery;
pub mod sbupdate;
pub mod secureboot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::platform::efi;
use crate::platform::files::RootFs;
use crate::platform::kernel::KernelFiles;
use crate::platform::tpm::{self, eventlog, Tpm, TpmError};

pub use secureboot::CertificateInfo;

/// The file whose existence says the system state can no longer be trusted (created once,
/// never removed).
pub const TRUST_FUSE: &str = "/etc/incusos-trusted-fuse-blown";
/// Where a software TPM keeps its state on the ESP (its presence, with no firmware event
/// log, means the system runs on swtpm).
pub const SWTPM_DIR: &str = "/boot/swtpm";
/// The daemon's key directory.
pub const KEYS_DIR: &str = "/var/lib/incus-os";
/// The TPM-backed authentication key's public key (PEM).
pub const AUTH_PEM: &str = "/var/lib/incus-os/tpm-auth.pem";

/// What the daemon persists of security: the configuration, the retrieved flag, and the
/// start-up findings the status text is built from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecurityDoc {
    pub config: SecurityConfig,
    pub encryption_recovery_keys_retrieved: bool,
    /// Set at start-up when the TPM is a software one.
    pub using_swtpm: bool,
    /// Set at start-up when Secure Boot is off.
    pub secure_boot_disabled: bool,
    /// Set when the Incus agent was ever fully enabled.
    pub full_agent_enabled: bool,
    /// The Secure Boot key updates taken from the provider (added without a schema change:
    /// older documents read it as none taken).
    pub secure_boot: SecureBootUpdates,
}

/// Upstream's `SecureBoot` record: the last Secure Boot key update offered by the provider
/// and whether all of it is in the firmware.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecureBootUpdates {
    pub version: String,
    pub fully_applied: bool,
}

/// `config` of `/1.0/system/security`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecurityConfig {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub custom_ca_certs: Vec<String>,
    pub encryption_recovery_keys: Vec<String>,
}

/// One encrypted volume and how it was unlocked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EncryptedVolume {
    pub volume: String,
    pub state: String,
}

/// `state` of `/1.0/system/security`.
#[derive(Debug, Clone, Serialize)]
pub struct SecurityState {
    pub encrypted_volumes: Vec<EncryptedVolume>,
    pub encryption_recovery_keys_retrieved: bool,
    pub drive_recovery_keys: BTreeMap<String, String>,
    pub pool_recovery_keys: BTreeMap<String, String>,
    pub secure_boot_certificates: Vec<CertificateInfo>,
    pub secure_boot_enabled: bool,
    pub system_state_is_trusted: bool,
    pub system_state_status: String,
    pub tpm_status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm_public_key: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SystemSecurity {
    pub config: SecurityConfig,
    pub state: SecurityState,
}

/// What the security subsystem keeps while the daemon runs.
#[derive(Debug, Default)]
pub struct Runtime {
    /// The TPM's TCTI; `None`: the kernel's resource manager under the root.
    pub tpm_tcti: Option<String>,
    /// The LUKS volumes by name (`root`, `swap`); `None`: found from the partition labels.
    pub volumes: Option<BTreeMap<String, PathBuf>>,
    /// The encrypted volumes' states, found at start-up (finding them is slow).
    pub encrypted_volumes: Mutex<Vec<EncryptedVolume>>,
    /// Serializes key changes.
    pub change: tokio::sync::Mutex<()>,
    /// New key slots use a cheap key derivation (loop-device tests only).
    pub fast_key_derivation_for_tests: bool,
    /// The TPM status to report instead of reading the TPM (router tests only: a test root
    /// has no firmware event log, so the status is otherwise `unavailable`).
    pub tpm_status_for_tests: Option<String>,
}

impl Runtime {
    /// Opens the TPM.
    pub fn open_tpm(&self, root: &Path) -> Result<Tpm, TpmError> {
        match &self.tpm_tcti {
            Some(t) => Tpm::open(t),
            None => Tpm::open_root(root),
        }
    }
}

/// Whether Secure Boot is on (the `SecureBoot` variable's first byte is 1).
pub fn secure_boot_enabled(kernel: &KernelFiles) -> Result<bool, String> {
    efi::flag(kernel, "SecureBoot").map_err(|e| format!("reading SecureBoot: {e}"))
}

/// Whether the trust fuse is blown.
pub fn fuse_blown(root: &Path) -> bool {
    RootFs::new(root).stat(TRUST_FUSE).ok().flatten().is_some()
}

/// Blows the trust fuse (idempotent).
pub fn blow_fuse(root: &Path) -> Result<(), String> {
    if fuse_blown(root) {
        return Ok(());
    }
    RootFs::new(root)
        .write(TRUST_FUSE, b"", 0o644)
        .map_err(|e| format!("cannot blow the trust fuse: {e}"))
}

/// Whether the TPM is a software one: no firmware event log, and swtpm's state directory
/// on the ESP.
pub fn swtpm_in_use(root: &Path, kernel: &KernelFiles) -> bool {
    if kernel.sys_path(eventlog::SYSFS_PATH).exists() {
        return false;
    }
    RootFs::new(root)
        .stat(SWTPM_DIR)
        .ok()
        .flatten()
        .is_some_and(|s| s.kind == plugin_host::files::StatKind::Dir)
}

/// The status text of the system's trust, from the persisted findings.
pub fn system_state_status(trusted: bool, doc: &SecurityDoc) -> String {
    if trusted {
        return "system state is fully trusted".into();
    }
    let mut issues = vec![];
    if doc.using_swtpm {
        issues.push("using swtpm");
    }
    if doc.secure_boot_disabled {
        issues.push("Secure Boot is disabled");
    }
    if doc.full_agent_enabled {
        issues.push("incus-agent is/was fully enabled");
    }
    if issues.is_empty() {
        "no current issues, but system was previously in an untrusted state".into()
    } else {
        issues.join(", ")
    }
}

/// What start-up finds and records (upstream's step before the API exists): a software
/// TPM or Secure Boot off blow the trust fuse and are recorded; Secure Boot on in audit
/// mode stops the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Findings {
    pub using_swtpm: bool,
    pub secure_boot_disabled: bool,
}

pub fn startup_findings(root: &Path, kernel: &KernelFiles) -> Result<Findings, StartupError> {
    let using_swtpm = swtpm_in_use(root, kernel);
    let enabled = secure_boot_enabled(kernel).map_err(StartupError::Unreadable)?;
    let audit = efi::flag(kernel, "AuditMode")
        .map_err(|e| StartupError::Unreadable(format!("reading AuditMode: {e}")))?;
    if enabled && audit {
        return Err(StartupError::AuditMode);
    }
    if using_swtpm || !enabled {
        blow_fuse(root).map_err(StartupError::Unreadable)?;
    }
    Ok(Findings {
        using_swtpm,
        secure_boot_disabled: !enabled,
    })
}

/// Why start-up's security checks did not finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    /// Secure Boot in audit mode verifies nothing: the daemon refuses to run.
    #[error(
        "Secure Boot is enabled but in audit mode, where nothing is enforced: refusing to start"
    )]
    AuditMode,
    /// A variable or the fuse could not be read or written (logged; the start goes on).
    #[error("{0}")]
    Unreadable(String),
}

/// Start-up's step: records the findings in the state (never clearing an earlier one).
/// Only audit mode is an error.
pub fn startup(
    root: &Path,
    kernel: &KernelFiles,
    store: &mut crate::state::Store,
) -> Result<(), StartupError> {
    let found = match startup_findings(root, kernel) {
        Ok(f) => f,
        Err(StartupError::AuditMode) => return Err(StartupError::AuditMode),
        Err(e) => {
            tracing::warn!(error = %e, "cannot check the Secure Boot state");
            return Ok(());
        }
    };
    let doc = &store.doc().system.security;
    let changes = (found.using_swtpm && !doc.using_swtpm)
        || (found.secure_boot_disabled && !doc.secure_boot_disabled);
    if changes {
        if let Err(e) = store.update(|d| {
            d.system.security.using_swtpm |= found.using_swtpm;
            d.system.security.secure_boot_disabled |= found.secure_boot_disabled;
        }) {
            tracing::warn!(error = %e, "cannot record the security findings");
        }
    }
    Ok(())
}

/// The key files `<dir>/<prefix><name>.key`, by name, base64.
pub fn key_files(root: &Path, prefix: &str) -> Result<BTreeMap<String, String>, String> {
    let fs = RootFs::new(root);
    let mut out = BTreeMap::new();
    let names = fs
        .list(KEYS_DIR)
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    for name in names {
        let Some(id) = name
            .strip_prefix(prefix)
            .and_then(|n| n.strip_suffix(".key"))
        else {
            continue;
        };
        let path = format!("{KEYS_DIR}/{name}");
        let Some(data) = fs.read(&path).map_err(|e| e.to_string())? else {
            continue;
        };
        out.insert(
            id.to_string(),
            base64::engine::general_purpose::STANDARD.encode(data),
        );
    }
    Ok(out)
}

/// `tpm_status`: `swtpm` for a software TPM; `unavailable` when there is no firmware event
/// log to check; else the event log is validated against PCR 4 and 7 (an error when it does
/// not replay) and PCR 7 predicted from the current Secure Boot variables: `pcr mismatch`
/// when it differs from the TPM's (a key update waits for a reboot), `ok` otherwise.
pub fn tpm_status(root: &Path, kernel: &KernelFiles, rt: &Runtime) -> Result<String, String> {
    if let Some(status) = &rt.tpm_status_for_tests {
        return Ok(status.clone());
    }
    if swtpm_in_use(root, kernel) {
        return Ok("swtpm".into());
    }
    let Some(log) = eventlog::read(kernel).map_err(|e| e.to_string())? else {
        return Ok("unavailable".into());
    };
    let mut tpm = rt.open_tpm(root).map_err(|e| e.to_string())?;
    let actual = log.validate(&mut tpm, &[4, 7]).map_err(|e| e.to_string())?;
    let actual7 = actual.iter().find(|(p, _)| *p == 7).map(|(_, v)| *v);
    let predicted = predicted_pcr7(&log, kernel)?;
    Ok(if Some(predicted) == actual7 {
        "ok".into()
    } else {
        "pcr mismatch".into()
    })
}

/// PCR 7 replayed with the Secure Boot variables' measurements recomputed from their
/// current contents (`UEFI_VARIABLE_DATA`: GUID, name length, data length, UTF-16 name,
/// data).
pub fn predicted_pcr7(
    log: &eventlog::EventLog,
    kernel: &KernelFiles,
) -> Result<tpm::Sha256, String> {
    use sha2::{Digest as _, Sha256};
    let mut current: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for name in ["SecureBoot", "PK", "KEK", "db", "dbx"] {
        let data = efi::read(kernel, name)
            .map_err(|e| format!("reading {name}: {e}"))?
            .unwrap_or_default();
        current.insert(name.to_string(), data);
    }
    let replayed = log
        .replay_with(|e| {
            if e.pcr != 7 || e.event_type != eventlog::event_type::EV_EFI_VARIABLE_DRIVER_CONFIG {
                return None;
            }
            let (guid, name) = variable_event(&e.data)?;
            let data = current.get(&name)?;
            let units: Vec<u16> = name.encode_utf16().collect();
            let mut m = guid.to_vec();
            m.extend((units.len() as u64).to_le_bytes());
            m.extend((data.len() as u64).to_le_bytes());
            for u in units {
                m.extend(u.to_le_bytes());
            }
            m.extend(data);
            Some(Sha256::digest(&m).into())
        })
        .map_err(|e| e.to_string())?;
    Ok(replayed.get(&7).copied().unwrap_or([0; 32]))
}

/// The GUID and name of a `UEFI_VARIABLE_DATA` event.
fn variable_event(data: &[u8]) -> Option<([u8; 16], String)> {
    if data.len() < 32 {
        return None;
    }
    let guid: [u8; 16] = data[..16].try_into().ok()?;
    let name_len = u64::from_le_bytes(data[16..24].try_into().ok()?) as usize;
    let units: Vec<u16> = data
        .get(32..32 + name_len.checked_mul(2)?)?
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    Some((guid, String::from_utf16(&units).ok()?))
}

/// First boot (no operator key yet) or an install from before the daemon's key files:
/// gives each volume a fresh private unlock key (`systemd-cryptenroll --recovery-key`,
/// unlocked by the TPM, after wiping the old recovery and passphrase slots), written to
/// `recovery.<volume>.key` (0400); makes an operator recovery key when there is none; and
/// enrolls every operator key as a passphrase slot. Returns the operator keys to store.
pub fn generate_recovery_keys(
    cmds: &dyn crate::platform::exec::Commands,
    root: &Path,
    rt: &Runtime,
    stored: &[String],
) -> Result<Vec<String>, String> {
    let volumes = luks::volumes(root, rt)?;
    let fs = RootFs::new(root);
    let mut keys = stored.to_vec();
    if keys.is_empty() {
        keys.push(recovery::generate()?);
    }
    let s = |v: &str| v.to_string();
    for (name, dev) in &volumes {
        let dev = dev.to_string_lossy().into_owned();
        luks::run(
            cmds,
            &[
                s("systemd-cryptenroll"),
                s("--unlock-tpm2-device=auto"),
                s("--wipe-slot=recovery,password"),
                dev.clone(),
            ],
            b"",
        )?;
        let out = luks::run(
            cmds,
            &[
                s("systemd-cryptenroll"),
                s("--unlock-tpm2-device=auto"),
                s("--recovery-key"),
                dev.clone(),
            ],
            b"",
        )?;
        let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !recovery::is_recovery_key(&key) {
            return Err(format!(
                "systemd-cryptenroll printed no recovery key for the {name} volume"
            ));
        }
        fs.write(&luks::unlock_key_file(name), key.as_bytes(), 0o400)
            .map_err(|e| e.to_string())?;
    }
    let plan = KeyPlan {
        add: keys.clone(),
        remove: vec![],
        result: keys.clone(),
    };
    apply_keys(cmds, root, rt, &plan)?;
    Ok(keys)
}

/// Start-up's key step on an Incus OS machine (one whose initrd left `IncusOSTPMState`):
/// generates the keys when there is no operator key or no private unlock key file, and
/// stores them (the operator has not retrieved a new key yet).
pub fn ensure_recovery_keys(
    cmds: &dyn crate::platform::exec::Commands,
    root: &Path,
    kernel: &KernelFiles,
    rt: &Runtime,
    store: &std::sync::Mutex<crate::state::Store>,
) -> Result<(), String> {
    if efi::read(kernel, "IncusOSTPMState")
        .ok()
        .flatten()
        .is_none()
    {
        return Ok(());
    }
    let stored = store
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .doc()
        .system
        .security
        .config
        .encryption_recovery_keys
        .clone();
    let has_file = RootFs::new(root)
        .stat(&luks::unlock_key_file("root"))
        .map_err(|e| e.to_string())?
        .is_some();
    if !stored.is_empty() && has_file {
        return Ok(());
    }
    tracing::info!("making the encryption recovery keys; this may take a few seconds");
    let keys = generate_recovery_keys(cmds, root, rt, &stored)?;
    let first = stored.is_empty();
    store
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .update(|d| {
            d.system.security.config.encryption_recovery_keys = keys;
            if first {
                d.system.security.encryption_recovery_keys_retrieved = false;
            }
        })
        .map_err(|e| e.to_string())
}

/// Finds the encrypted volumes' states (slow: run once at start-up) and caches them.
pub fn refresh_encrypted_volumes(
    cmds: &dyn crate::platform::exec::Commands,
    root: &Path,
    kernel: &KernelFiles,
    rt: &Runtime,
) -> Result<(), String> {
    let volumes = luks::volumes(root, rt)?;
    let unlocked_all = rebind::tpm_unlocked_all(kernel).unwrap_or(false);
    let states = luks::volume_states(cmds, &volumes, unlocked_all, || {
        tpm_status(root, kernel, rt)
    })?;
    *rt.encrypted_volumes
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = states;
    Ok(())
}

/// The whole GET answer, computed now (the encrypted volumes from the start-up cache).
pub fn get(
    root: &Path,
    kernel: &KernelFiles,
    rt: &Runtime,
    doc: &SecurityDoc,
) -> Result<SystemSecurity, String> {
    let secure_boot_enabled = secure_boot_enabled(kernel)?;
    let tpm_status = tpm_status(root, kernel, rt)?;
    let trusted = !fuse_blown(root);
    let tpm_public_key = RootFs::new(root)
        .read(AUTH_PEM)
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    Ok(SystemSecurity {
        config: doc.config.clone(),
        state: SecurityState {
            encrypted_volumes: rt
                .encrypted_volumes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            encryption_recovery_keys_retrieved: doc.encryption_recovery_keys_retrieved,
            drive_recovery_keys: key_files(root, "luks.")?,
            pool_recovery_keys: key_files(root, "zpool.")?,
            secure_boot_certificates: secureboot::list_certificates(kernel),
            secure_boot_enabled,
            system_state_is_trusted: trusted,
            system_state_status: system_state_status(trusted, doc),
            tpm_status,
            tpm_public_key,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_texts_follow_the_findings() {
        let mut doc = SecurityDoc::default();
        assert_eq!(
            system_state_status(true, &doc),
            "system state is fully trusted"
        );
        assert_eq!(
            system_state_status(false, &doc),
            "no current issues, but system was previously in an untrusted state"
        );
        doc.using_swtpm = true;
        doc.secure_boot_disabled = true;
        doc.full_agent_enabled = true;
        assert_eq!(
            system_state_status(false, &doc),
            "using swtpm, Secure Boot is disabled, incus-agent is/was fully enabled"
        );
    }

    #[test]
    fn startup_records_findings_and_never_clears_them() {
        let root = tempfile::tempdir().unwrap();
        let kernel = KernelFiles::under(root.path());
        let mut store = crate::state::Store::load_or_create(&root.path().join("state")).unwrap();
        // No SecureBoot variable: Secure Boot is off, the fuse blows.
        startup(root.path(), &kernel, &mut store).unwrap();
        assert!(store.doc().system.security.secure_boot_disabled);
        assert!(!store.doc().system.security.using_swtpm);
        assert!(fuse_blown(root.path()));
        let dir = root.path().join("sys").join(efi::EFIVARS);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("SecureBoot-{}", efi::GLOBAL)),
            [6, 0, 0, 0, 1],
        )
        .unwrap();
        startup(root.path(), &kernel, &mut store).unwrap();
        assert!(store.doc().system.security.secure_boot_disabled, "kept");
        std::fs::write(
            dir.join(format!("AuditMode-{}", efi::GLOBAL)),
            [6, 0, 0, 0, 1],
        )
        .unwrap();
        assert_eq!(
            startup(root.path(), &kernel, &mut store),
            Err(StartupError::AuditMode)
        );
    }

    #[test]
    fn variable_events_name_their_variable() {
        let mut data = [0x22u8; 16].to_vec();
        data.extend(2u64.to_le_bytes());
        data.extend(1u64.to_le_bytes());
        data.extend([b'd', 0, b'b', 0, 7]);
        assert_eq!(variable_event(&data), Some(([0x22; 16], "db".into())));
        assert_eq!(variable_event(&data[..20]), None);
    }
}

/// What a PUT changes in the operator keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPlan {
    pub add: Vec<String>,
    pub remove: Vec<String>,
    /// The stored list afterwards: the kept keys in their order, then the new ones.
    pub result: Vec<String>,
}

/// A refusal: the HTTP status and upstream's text.
pub type Refusal = (u16, String);

/// Decides a PUT's key changes, checking everything before anything is changed: an empty
/// list (400), a key listed twice or failing the complexity rules (500, as upstream), and
/// never leaving no key.
pub fn plan_keys(stored: &[String], requested: &[String]) -> Result<KeyPlan, Refusal> {
    if requested.is_empty() {
        return Err((400, "no encryption key provided".into()));
    }
    let mut add: Vec<String> = vec![];
    for k in requested {
        if stored.contains(k) {
            continue;
        }
        if add.contains(k) {
            return Err((500, "provided encryption key is already enrolled".into()));
        }
        recovery::check_complexity(k).map_err(|e| (500, e))?;
        add.push(k.clone());
    }
    let remove: Vec<String> = stored
        .iter()
        .filter(|k| !requested.contains(k))
        .cloned()
        .collect();
    let mut result: Vec<String> = stored
        .iter()
        .filter(|k| !remove.contains(k))
        .cloned()
        .collect();
    result.extend(add.iter().cloned());
    if result.is_empty() {
        return Err((500, "cannot remove only existing recovery key".into()));
    }
    Ok(KeyPlan {
        add,
        remove,
        result,
    })
}

/// Applies a key plan to every volume: additions first, then removals; any failure puts
/// back every slot already changed and is the error.
pub fn apply_keys(
    cmds: &dyn crate::platform::exec::Commands,
    root: &Path,
    rt: &Runtime,
    plan: &KeyPlan,
) -> Result<(), String> {
    if plan.add.is_empty() && plan.remove.is_empty() {
        return Ok(());
    }
    let mut change = luks::KeyChange::new(cmds, root, rt)?;
    let result = (|| {
        for k in &plan.add {
            change.add(k)?;
        }
        for k in &plan.remove {
            change.remove(k)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        change.rollback();
        return Err(e);
    }
    Ok(())
}

/// The rollback of a key plan already applied (when what follows it fails).
pub fn revert_keys(
    cmds: &dyn crate::platform::exec::Commands,
    root: &Path,
    rt: &Runtime,
    plan: &KeyPlan,
) {
    let back = KeyPlan {
        add: plan.remove.clone(),
        remove: plan.add.clone(),
        result: vec![],
    };
    if let Err(e) = apply_keys(cmds, root, rt, &back) {
        tracing::error!(error = %e, "cannot put the recovery keys back");
    }
}

/// The distribution's CA bundle and the trust store directory.
pub const SYSTEM_CERTS: &str = "/usr/share/certs";
pub const TRUST_STORE: &str = "/etc/ssl/certs";

/// Checks custom CA certificates: each must be PEM holding X.509 certificates.
pub fn check_ca_certs(certs: &[String]) -> Result<(), String> {
    for (i, c) in certs.iter().enumerate() {
        let mut found = 0;
        for pem in x509_parser::pem::Pem::iter_from_buffer(c.as_bytes()) {
            let pem = pem.map_err(|e| format!("custom CA certificate {i}: {e}"))?;
            pem.parse_x509()
                .map_err(|e| format!("custom CA certificate {i}: {e}"))?;
            found += 1;
        }
        if found == 0 {
            return Err(format!("custom CA certificate {i} is not PEM"));
        }
    }
    Ok(())
}

/// Writes the trust store: without custom certificates `/etc/ssl/certs` is a link to the
/// distribution's; with some it is a directory whose bundle is the distribution's followed
/// by each custom certificate.
pub fn write_trust_store(root: &Path, certs: &[String]) -> Result<(), String> {
    let fs = RootFs::new(root);
    let store = fs.resolve(TRUST_STORE).map_err(|e| e.to_string())?;
    let err = |e: std::io::Error| format!("{TRUST_STORE}: {e}");
    if let Ok(meta) = std::fs::symlink_metadata(&store) {
        if meta.is_dir() {
            std::fs::remove_dir_all(&store).map_err(err)?;
        } else {
            std::fs::remove_file(&store).map_err(err)?;
        }
    }
    if certs.is_empty() {
        if let Some(parent) = store.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        return std::os::unix::fs::symlink(SYSTEM_CERTS, &store).map_err(err);
    }
    let mut bundle = fs
        .read(&format!("{SYSTEM_CERTS}/ca-certificates.crt"))
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    for c in certs {
        if !bundle.is_empty() && !bundle.ends_with(b"\n") {
            bundle.push(b'\n');
        }
        bundle.extend(c.as_bytes());
    }
    fs.write(
        &format!("{TRUST_STORE}/ca-certificates.crt"),
        &bundle,
        0o644,
    )
    .map_err(|e| e.to_string())
}
