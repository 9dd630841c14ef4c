//! `:tpm-rebind`: binding the volumes' TPM slots to this boot's PCR values, for when the
//! disks had to be unlocked with a recovery key (new firmware, a replaced TPM).

use std::path::Path;

use crate::platform::efi;
use crate::platform::exec::Commands;
use crate::platform::files::RootFs;
use crate::platform::kernel::KernelFiles;
use crate::platform::tpm;

use super::luks::{self, TIMEOUT};
use super::Runtime;

/// Upstream's refusal when the TPM unlocked every volume this boot.
pub const REFUSAL: &str =
    "refusing to reset TPM encryption bindings because current state can unlock all volumes";

/// What systemd-cryptenroll prints when the slot already has this policy (it then changes
/// nothing, which after a TPM replacement leaves a slot the new TPM cannot open).
pub const ALREADY_ENROLLED: &str = "This PCR set is already enrolled, executing no operation.";

/// Where the initrd's measured-boot public key (from the UKI's `.pcrpkey`) is written.
pub const PCR_PUBLIC_KEY: &str = "/run/systemd/tpm2-pcr-public-key.pem";

/// The running OS, whose UKI holds the PCR signing key.
pub struct Release {
    pub name: String,
    pub version: String,
}

/// Whether the TPM unlocked every volume this boot: the initrd's `IncusOSTPMState`
/// variable is 4 bytes ending in 0.
pub fn tpm_unlocked_all(kernel: &KernelFiles) -> Result<bool, String> {
    let data = efi::read(kernel, "IncusOSTPMState")
        .map_err(|e| format!("reading IncusOSTPMState: {e}"))?
        .ok_or_else(|| "EFI variable IncusOSTPMState does not exist".to_string())?;
    Ok(data.len() == 4 && data[3] == 0)
}

/// The contents of section `name` of a PE file.
pub fn pe_section(pe: &[u8], name: &str) -> Result<Vec<u8>, String> {
    let u16_at = |at: usize| pe.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| {
        pe.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4")))
    };
    let bad = || "not a PE file".to_string();
    if pe.get(..2) != Some(b"MZ") {
        return Err(bad());
    }
    let nt = u32_at(0x3c).ok_or_else(bad)? as usize;
    if pe.get(nt..nt + 4) != Some(b"PE\0\0") {
        return Err(bad());
    }
    let coff = nt + 4;
    let sections = u16_at(coff + 2).ok_or_else(bad)? as usize;
    let optional = u16_at(coff + 16).ok_or_else(bad)? as usize;
    let table = coff + 20 + optional;
    for i in 0..sections {
        let at = table + i * 40;
        let raw_name = pe.get(at..at + 8).ok_or_else(bad)?;
        let end = raw_name.iter().position(|b| *b == 0).unwrap_or(8);
        if &raw_name[..end] != name.as_bytes() {
            continue;
        }
        let vsize = u32_at(at + 8).ok_or_else(bad)? as usize;
        let raw_size = u32_at(at + 16).ok_or_else(bad)? as usize;
        let ptr = u32_at(at + 20).ok_or_else(bad)? as usize;
        let len = if vsize == 0 {
            raw_size
        } else {
            vsize.min(raw_size)
        };
        return pe
            .get(ptr..ptr + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| format!("section {name} runs past the end of the file"));
    }
    Err(format!("no {name} section"))
}

/// The `--tpm2-pcrs=` value: PCR 7 (and 4 when Secure Boot is off) at the given values,
/// PCR 15 at zero.
pub fn pcr_binding(secure_boot: bool, pcr4: &tpm::Sha256, pcr7: &tpm::Sha256) -> String {
    let zero = tpm::hex(&[0; 32]);
    let seven = format!("7:sha256={}+15:sha256={zero}", tpm::hex(pcr7));
    if secure_boot {
        format!("--tpm2-pcrs={seven}")
    } else {
        format!("--tpm2-pcrs=4:sha256={}+{seven}", tpm::hex(pcr4))
    }
}

/// Whether this systemd-cryptenroll knows an option (older ones lack `--tpm2-pcrlock`).
fn cryptenroll_knows(cmds: &dyn Commands, option: &str) -> bool {
    let argv = vec!["systemd-cryptenroll".to_string(), "--help".to_string()];
    cmds.run(&argv, b"", TIMEOUT)
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(option))
}

/// Re-binds every volume's TPM slot to the current PCR 7 (and PCR 4 without Secure Boot),
/// refusing when the TPM unlocked everything this boot (nothing to repair). The volumes
/// are unlocked with the daemon's key file, or, on installs from before those files, with
/// the first recovery key (given on stdin). When cryptenroll reports the policy already
/// enrolled, the slot is first bound to a random PCR 7 so that the real enrollment is
/// made anew for this TPM. `keys` are the stored recovery keys.
pub fn rebind(
    cmds: &dyn Commands,
    root: &Path,
    kernel: &KernelFiles,
    rt: &Runtime,
    release: &Release,
    keys: &[String],
) -> Result<(), String> {
    let secure_boot = super::secure_boot_enabled(kernel)?;
    let volumes = luks::volumes(root, rt)?;
    if tpm_unlocked_all(kernel)? {
        return Err(REFUSAL.into());
    }
    let (pcr4, pcr7) = {
        let mut t = rt.open_tpm(root).map_err(|e| e.to_string())?;
        (
            t.read_pcr(4).map_err(|e| e.to_string())?,
            t.read_pcr(7).map_err(|e| e.to_string())?,
        )
    };
    let fs = RootFs::new(root);
    let uki = format!("/boot/EFI/Linux/{}_{}.efi", release.name, release.version);
    let pe = fs
        .read(&uki)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{uki} does not exist"))?;
    let key = pe_section(&pe, ".pcrpkey").map_err(|e| format!("{uki}: {e}"))?;
    fs.write(PCR_PUBLIC_KEY, &key, 0o600)
        .map_err(|e| e.to_string())?;

    let binding = pcr_binding(secure_boot, &pcr4, &pcr7);
    let device = rt.tpm_tcti.clone().unwrap_or_else(|| "auto".into());
    let pcrlock = cryptenroll_knows(cmds, "--tpm2-pcrlock");
    let legacy = fs
        .stat(&luks::unlock_key_file("root"))
        .map_err(|e| e.to_string())?
        .is_none();
    let legacy_key = if legacy {
        Some(
            keys.first()
                .ok_or_else(|| "no key to unlock the volumes with".to_string())?
                .clone(),
        )
    } else {
        None
    };
    for (name, dev) in &volumes {
        let enroll = |binding: &str| -> Result<String, String> {
            let mut argv = vec!["systemd-cryptenroll".to_string()];
            let stdin: Vec<u8> = match &legacy_key {
                None => {
                    let file = fs
                        .resolve(&luks::unlock_key_file(name))
                        .map_err(|e| e.to_string())?;
                    argv.push(format!("--unlock-key-file={}", file.display()));
                    vec![]
                }
                Some(k) => {
                    argv.push("--unlock-key-file=/dev/stdin".into());
                    k.as_bytes().to_vec()
                }
            };
            argv.push(format!("--tpm2-device={device}"));
            argv.push("--wipe-slot=tpm2".into());
            if pcrlock {
                argv.push("--tpm2-pcrlock=".into());
            }
            argv.push(binding.to_string());
            argv.push(dev.to_string_lossy().into_owned());
            let out = luks::run(cmds, &argv, &stdin)?;
            Ok(String::from_utf8_lossy(&out.stderr).into_owned())
        };
        let stderr = enroll(&binding)?;
        if stderr.contains(ALREADY_ENROLLED) {
            let mut random = [0u8; 32];
            getrandom::getrandom(&mut random).map_err(|e| e.to_string())?;
            enroll(&pcr_binding(true, &pcr4, &random))?;
            enroll(&binding)?;
        }
    }
    Ok(())
}

/// Binds every volume's TPM slot to `binding` (a `--tpm2-pcrs=` argument), unlocking each
/// with the daemon's key file.
pub fn enroll_all(
    cmds: &dyn Commands,
    root: &Path,
    rt: &Runtime,
    binding: &str,
) -> Result<(), String> {
    let fs = RootFs::new(root);
    let device = rt.tpm_tcti.clone().unwrap_or_else(|| "auto".into());
    let pcrlock = cryptenroll_knows(cmds, "--tpm2-pcrlock");
    for (name, dev) in luks::volumes(root, rt)? {
        let file = fs
            .resolve(&luks::unlock_key_file(&name))
            .map_err(|e| e.to_string())?;
        let mut argv = vec![
            "systemd-cryptenroll".to_string(),
            format!("--unlock-key-file={}", file.display()),
            format!("--tpm2-device={device}"),
            "--wipe-slot=tpm2".into(),
        ];
        if pcrlock {
            argv.push("--tpm2-pcrlock=".into());
        }
        argv.push(binding.to_string());
        argv.push(dev.to_string_lossy().into_owned());
        luks::run(cmds, &argv, b"")?;
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A minimal PE: DOS header, PE signature, COFF header, no optional header, sections.
    pub fn pe_with(sections: &[(&str, &[u8])]) -> Vec<u8> {
        let mut pe = vec![0u8; 0x40];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
        pe.extend(b"PE\0\0");
        let mut coff = [0u8; 20];
        coff[2..4].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        pe.extend(coff);
        let mut data_at = pe.len() + 40 * sections.len();
        let mut data: Vec<u8> = vec![];
        for (name, body) in sections {
            let mut h = [0u8; 40];
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[8..12].copy_from_slice(&(body.len() as u32).to_le_bytes());
            h[16..20].copy_from_slice(&(body.len() as u32).to_le_bytes());
            h[20..24].copy_from_slice(&(data_at as u32).to_le_bytes());
            pe.extend(h);
            data.extend(*body);
            data_at += body.len();
        }
        pe.extend(data);
        pe
    }

    #[test]
    fn sections_are_found_by_name() {
        let pe = pe_with(&[(".linux", b"kernel"), (".pcrpkey", b"PEM")]);
        assert_eq!(pe_section(&pe, ".pcrpkey").unwrap(), b"PEM");
        assert_eq!(pe_section(&pe, ".linux").unwrap(), b"kernel");
        assert_eq!(pe_section(&pe, ".osrel").unwrap_err(), "no .osrel section");
        assert_eq!(pe_section(b"ELF", ".pcrpkey").unwrap_err(), "not a PE file");
    }

    #[test]
    fn bindings_name_pcr_4_only_without_secure_boot() {
        let zero = "0".repeat(64);
        let a = [0xaa; 32];
        let b = [0xbb; 32];
        assert_eq!(
            pcr_binding(true, &a, &b),
            format!("--tpm2-pcrs=7:sha256={}+15:sha256={zero}", "bb".repeat(32))
        );
        assert_eq!(
            pcr_binding(false, &a, &b),
            format!(
                "--tpm2-pcrs=4:sha256={}+7:sha256={}+15:sha256={zero}",
                "aa".repeat(32),
                "bb".repeat(32)
            )
        );
    }
}
