//! Secure Boot key updates: a tar of signed variable updates (`<VAR>_<sha256>.auth`, VAR
//! one of KEK, db, dbx; the hash is the certificate's fingerprint) applied one per run, in
//! the order KEK, db, dbx, each certificate only when the variable does not hold it yet.
//! Applying appends the authenticated update with `efi-updatevar`, then re-binds the
//! volumes' TPM slots to the PCR 7 the next boot will measure.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::platform::efi;
use crate::platform::exec::Commands;
use crate::platform::files::RootFs;
use crate::platform::kernel::KernelFiles;
use crate::platform::tpm::{self, eventlog};

use super::luks;
use super::secureboot::{self, Entry};
use super::Runtime;

/// The largest update file accepted.
pub const MAX_AUTH: u64 = 8192;
/// The variables updated, in order.
pub const ORDER: [&str; 3] = ["KEK", "db", "dbx"];

/// The updates of an archive: per variable, fingerprint (hex) to the `.auth` file.
pub type Updates = BTreeMap<&'static str, BTreeMap<String, Vec<u8>>>;

/// Reads an update archive with upstream's rules and refusal texts; entries that are not
/// `.auth` files are ignored.
pub fn parse_archive(data: &[u8]) -> Result<Updates, String> {
    let mut out: Updates = ORDER.iter().map(|v| (*v, BTreeMap::new())).collect();
    let mut archive = tar::Archive::new(data);
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let name = entry
            .path()
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .into_owned();
        if !name.ends_with(".auth") {
            continue;
        }
        if entry.size() > MAX_AUTH {
            return Err(format!(
                "file '{name}' is greater than {MAX_AUTH} bytes, rejecting update"
            ));
        }
        let parts: Vec<&str> = name.split('_').collect();
        if parts.len() != 2 {
            return Err(format!("invalid filename '{name}', rejecting update"));
        }
        let var = ORDER
            .iter()
            .find(|v| **v == parts[0])
            .ok_or_else(|| format!("unsupported SecureBoot variable update type '{}'", parts[0]))?;
        let fingerprint = parts[1].trim_end_matches(".auth").to_string();
        let mut buf = vec![];
        entry.read_to_end(&mut buf).map_err(|e| e.to_string())?;
        out.get_mut(var).expect("listed").insert(fingerprint, buf);
    }
    Ok(out)
}

/// The certificate inside an authenticated update: after the 16-byte time stamp comes the
/// signature (its length at offset 16), then the signature list.
pub fn update_certificates(auth: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let len = auth
        .get(16..20)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4")) as usize)
        .ok_or("the update is too short")?;
    let list = auth
        .get(16 + len..)
        .ok_or("the update's signature runs past its end")?;
    Ok(secureboot::parse_signature_lists(list)?
        .into_iter()
        .filter_map(|e| match e {
            Entry::Certificate { der, .. } => Some(der),
            _ => None,
        })
        .collect())
}

/// The DER of a PEM block (the first one).
fn pem_der(pem: &[u8]) -> Option<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem)
        .next()
        .and_then(|p| p.ok())
        .map(|p| p.contents)
}

/// Refuses a dbx update that revokes the key a UKI on the ESP is signed with (its
/// `.pcrpkey`): the machine would no longer boot it.
pub fn check_dbx_keeps_ukis_bootable(root: &Path, auth: &[u8]) -> Result<(), String> {
    use x509_parser::prelude::*;
    let certs = update_certificates(auth)?;
    if certs.len() != 1 {
        return Err(format!(
            "expected exactly one certificate in dbx update, got {}",
            certs.len()
        ));
    }
    let (_, cert) = X509Certificate::from_der(&certs[0])
        .map_err(|e| format!("Failed to parse dbx certificate: {e}"))?;
    let revoked = cert.public_key().raw.to_vec();
    let fs = RootFs::new(root);
    for name in fs
        .list("/boot/EFI/Linux")
        .map_err(|e| e.to_string())?
        .unwrap_or_default()
    {
        let path = format!("/boot/EFI/Linux/{name}");
        let Some(pe) = fs.read(&path).map_err(|e| e.to_string())? else {
            continue;
        };
        let key = super::rebind::pe_section(&pe, ".pcrpkey").map_err(|e| format!("{path}: {e}"))?;
        if pem_der(&key).as_deref() == Some(&revoked[..]) {
            return Err(format!(
                "unable to apply dbx update, since UKI image '{path}' is signed by the key which would be revoked"
            ));
        }
    }
    Ok(())
}

/// Applies the first update not applied yet (KEK, then db, then dbx); `Ok(true)` when one
/// was applied (a reboot is needed), `Ok(false)` when every certificate is already there.
/// A KEK update the firmware refuses (a custom PK) is skipped.
pub fn apply(
    cmds: &dyn Commands,
    root: &Path,
    kernel: &KernelFiles,
    rt: &Runtime,
    updates: &Updates,
) -> Result<bool, String> {
    if !super::secure_boot_enabled(kernel)? {
        return Err(DISABLED.into());
    }
    for var in ORDER {
        let present: Vec<String> = secureboot::database_certificates(kernel, var)
            .map_err(|e| format!("failed to read EFI variable {var:?}: {e}"))?
            .iter()
            .map(|d| {
                use sha2::Digest as _;
                tpm::hex(&sha2::Sha256::digest(d))
            })
            .collect();
        for (fingerprint, auth) in &updates[var] {
            if present.iter().any(|p| p.eq_ignore_ascii_case(fingerprint)) {
                continue;
            }
            tracing::info!(
                variable = var,
                fingerprint,
                "appending a Secure Boot certificate"
            );
            match append(cmds, root, kernel, rt, var, auth) {
                Ok(()) => return Ok(true),
                Err(e) if var == "KEK" => {
                    tracing::warn!(error = %e, "cannot apply a KEK update (a custom PK?); skipped");
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(false)
}

/// Upstream's refusal when Secure Boot is off.
pub const DISABLED: &str = "Secure Boot is disabled, refusing to attempt a certificate update";

fn append(
    cmds: &dyn Commands,
    root: &Path,
    kernel: &KernelFiles,
    rt: &Runtime,
    var: &str,
    auth: &[u8],
) -> Result<(), String> {
    if var == "dbx" {
        check_dbx_keeps_ukis_bootable(root, auth)?;
    }
    let log = eventlog::read(kernel)
        .map_err(|e| e.to_string())?
        .ok_or("no TPM event log to predict the next PCR 7 from")?;
    {
        let mut t = rt.open_tpm(root).map_err(|e| e.to_string())?;
        log.validate(&mut t, &[4, 7]).map_err(|e| e.to_string())?;
    }
    let file = tempfile::Builder::new()
        .prefix("incus-os-sb-update")
        .tempfile()
        .map_err(|e| e.to_string())?;
    std::fs::write(file.path(), auth).map_err(|e| e.to_string())?;
    let s = |v: &str| v.to_string();
    let efivar = efi::path(kernel, var);
    if efivar.exists() {
        luks::run(
            cmds,
            &[s("chattr"), s("-i"), efivar.to_string_lossy().into_owned()],
            b"",
        )?;
    }
    let argv = vec![
        s("efi-updatevar"),
        s("-a"),
        s("-f"),
        file.path().to_string_lossy().into_owned(),
        s(var),
    ];
    luks::run(cmds, &argv, b"").map_err(|e| {
        if e.contains("wrong filesystem permissions") {
            format!("failed to apply {var} update, likely due to a bad/untrusted signature")
        } else {
            e
        }
    })?;
    let pcr7 = super::predicted_pcr7(&log, kernel)?;
    let binding = super::rebind::pcr_binding(true, &[0; 32], &pcr7);
    super::rebind::enroll_all(cmds, root, rt, &binding)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// An authenticated update: time stamp, a 24-byte signature header, the list.
    pub fn auth_of(list: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 16];
        out.extend(24u32.to_le_bytes());
        out.extend([0u8; 20]);
        out.extend(list);
        out
    }

    fn cert_list(der: &[u8]) -> Vec<u8> {
        let mut out = secureboot::X509_TYPE.to_vec();
        out.extend(((28 + 16 + der.len()) as u32).to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(((16 + der.len()) as u32).to_le_bytes());
        out.extend([0u8; 16]);
        out.extend(der);
        out
    }

    #[test]
    fn archives_follow_upstreams_rules() {
        let ok = archive(&[
            ("KEK_aa.auth", vec![1]),
            ("db_bb.auth", vec![2]),
            ("README", vec![0; 9000]),
            ("dbx_cc.auth", vec![3]),
        ]);
        let u = parse_archive(&ok).unwrap();
        assert_eq!(u["KEK"]["aa"], vec![1]);
        assert_eq!(u["db"]["bb"], vec![2]);
        assert_eq!(u["dbx"]["cc"], vec![3]);
        let cases = [
            (
                ("db_bb.auth", vec![0; 8193]),
                "file 'db_bb.auth' is greater than 8192 bytes, rejecting update",
            ),
            (
                ("db_b_b.auth", vec![0]),
                "invalid filename 'db_b_b.auth', rejecting update",
            ),
            (
                ("PK_aa.auth", vec![0]),
                "unsupported SecureBoot variable update type 'PK'",
            ),
        ];
        for ((name, data), want) in cases {
            assert_eq!(parse_archive(&archive(&[(name, data)])).unwrap_err(), want);
        }
    }

    #[test]
    fn a_dbx_update_revoking_a_ukis_key_is_refused() {
        use rcgen::{CertificateParams, KeyPair};
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let auth = auth_of(&cert_list(cert.der()));
        assert_eq!(
            update_certificates(&auth).unwrap(),
            vec![cert.der().to_vec()]
        );
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("boot/EFI/Linux");
        std::fs::create_dir_all(&dir).unwrap();
        let other = KeyPair::generate().unwrap().public_key_pem();
        std::fs::write(
            dir.join("IncusOS_1.efi"),
            super::super::rebind::tests::pe_with(&[(".pcrpkey", other.as_bytes())]),
        )
        .unwrap();
        check_dbx_keeps_ukis_bootable(root.path(), &auth).unwrap();
        std::fs::write(
            dir.join("IncusOS_2.efi"),
            super::super::rebind::tests::pe_with(&[(".pcrpkey", key.public_key_pem().as_bytes())]),
        )
        .unwrap();
        let e = check_dbx_keeps_ukis_bootable(root.path(), &auth).unwrap_err();
        assert!(
            e.starts_with(
                "unable to apply dbx update, since UKI image '/boot/EFI/Linux/IncusOS_2.efi'"
            ),
            "{e}"
        );
        let two = auth_of(&[cert_list(cert.der()), cert_list(cert.der())].concat());
        assert_eq!(
            check_dbx_keeps_ukis_bootable(root.path(), &two).unwrap_err(),
            "expected exactly one certificate in dbx update, got 2"
        );
    }
}
