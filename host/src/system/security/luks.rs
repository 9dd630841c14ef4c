//! The LUKS2 volumes (root and swap) and their key slots, through the real `cryptsetup` and
//! `systemd-cryptenroll`.
//!
//! Each volume has the daemon's private unlock key (a systemd recovery key, in
//! `/var/lib/incus-os/recovery.<volume>.key`), a TPM slot, and one plain passphrase slot
//! per operator recovery key (a slot no systemd token refers to: what systemd calls a
//! `password` slot). Changes go through [`KeyChange`], which puts back every step already
//! done when a later one fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::platform::exec::{Commands, Output};
use crate::platform::files::RootFs;

use super::{Runtime, KEYS_DIR};

/// How long one cryptsetup or cryptenroll run may take (key derivation is slow on
/// purpose).
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// The daemon's private unlock key file of a volume (OS path).
pub fn unlock_key_file(volume: &str) -> String {
    format!("{KEYS_DIR}/recovery.{volume}.key")
}

/// Extra cryptsetup options for new key slots. The plain key derivation is only for tests:
/// the real one (argon2id, about two seconds and 1 GiB per try) is what a machine uses.
pub fn pbkdf_args(rt: &Runtime) -> Vec<String> {
    if rt.fast_key_derivation_for_tests {
        ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        vec![]
    }
}

/// The volumes by name: the runtime's when set, else `swap` from its partition label and
/// `root` on the same disk, partition 10 (as upstream lays the disk out).
pub fn volumes(root: &Path, rt: &Runtime) -> Result<BTreeMap<String, PathBuf>, String> {
    if let Some(v) = &rt.volumes {
        return Ok(v.clone());
    }
    let label = RootFs::new(root)
        .resolve("/dev/disk/by-partlabel/swap")
        .map_err(|e| e.to_string())?;
    let swap = std::fs::canonicalize(&label)
        .map_err(|e| format!("cannot find the swap partition ({}): {e}", label.display()))?;
    let text = swap.to_string_lossy().to_string();
    let base = text
        .strip_suffix('9')
        .ok_or_else(|| format!("swap partition {text} is not partition 9"))?;
    let mut out = BTreeMap::new();
    out.insert("root".to_string(), PathBuf::from(format!("{base}10")));
    out.insert("swap".to_string(), swap);
    Ok(out)
}

/// Runs a command; a non-zero exit is an error worded as upstream's subprocess errors
/// (`Failed to run: <argv>: exit status N (<stderr>)`).
pub fn run(cmds: &dyn Commands, argv: &[String], stdin: &[u8]) -> Result<Output, String> {
    let out = cmds.run(argv, stdin, TIMEOUT).map_err(|e| e.0)?;
    if out.status != 0 {
        return Err(failed(argv, &out));
    }
    Ok(out)
}

/// Upstream's wording of a failed command.
pub fn failed(argv: &[String], out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    format!(
        "Failed to run: {}: exit status {} ({stderr})",
        argv.join(" "),
        out.status
    )
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// A volume's LUKS2 metadata: the key slots and the tokens referring to them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slots {
    /// Every key slot's number.
    pub keyslots: Vec<u32>,
    /// Tokens: (type, the slots it refers to).
    pub tokens: Vec<(String, Vec<u32>)>,
}

impl Slots {
    /// Slots of a token type (`systemd-recovery`, `systemd-tpm2`).
    pub fn of_token(&self, kind: &str) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .tokens
            .iter()
            .filter(|(t, _)| t == kind)
            .flat_map(|(_, s)| s.iter().copied())
            .collect();
        out.sort_unstable();
        out
    }

    /// Passphrase slots: those no token refers to.
    pub fn passwords(&self) -> Vec<u32> {
        self.keyslots
            .iter()
            .copied()
            .filter(|s| !self.tokens.iter().any(|(_, t)| t.contains(s)))
            .collect()
    }
}

#[derive(Deserialize)]
struct DumpJson {
    #[serde(default)]
    keyslots: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    tokens: BTreeMap<String, TokenJson>,
}

#[derive(Deserialize)]
struct TokenJson {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    keyslots: Vec<String>,
}

/// Parses `cryptsetup luksDump --dump-json-metadata`.
pub fn parse_dump(json: &[u8]) -> Result<Slots, String> {
    let d: DumpJson = serde_json::from_slice(json)
        .map_err(|e| format!("cannot parse the LUKS2 metadata: {e}"))?;
    let num = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("LUKS2 key slot {s:?} is not a number"))
    };
    let mut keyslots = d
        .keyslots
        .keys()
        .map(|k| num(k))
        .collect::<Result<Vec<_>, _>>()?;
    keyslots.sort_unstable();
    let mut tokens = vec![];
    for t in d.tokens.into_values() {
        let slots = t
            .keyslots
            .iter()
            .map(|k| num(k))
            .collect::<Result<Vec<_>, _>>()?;
        tokens.push((t.kind, slots));
    }
    Ok(Slots { keyslots, tokens })
}

/// A volume's key slots, read with cryptsetup.
pub fn slots(cmds: &dyn Commands, device: &Path) -> Result<Slots, String> {
    let out = run(
        cmds,
        &argv(&[
            "cryptsetup",
            "luksDump",
            "--dump-json-metadata",
            &device.to_string_lossy(),
        ]),
        b"",
    )?;
    parse_dump(&out.stdout)
}

/// One step of a key change on one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Added { volume: String, key: String },
    Removed { volume: String, key: String },
}

/// A change of the operator keys over all volumes: each step is recorded so that a failure
/// puts back what was done ([`KeyChange::rollback`]).
pub struct KeyChange<'a> {
    cmds: &'a dyn Commands,
    root: &'a Path,
    rt: &'a Runtime,
    volumes: BTreeMap<String, PathBuf>,
    done: Vec<Step>,
}

impl<'a> KeyChange<'a> {
    pub fn new(cmds: &'a dyn Commands, root: &'a Path, rt: &'a Runtime) -> Result<Self, String> {
        Ok(KeyChange {
            cmds,
            root,
            rt,
            volumes: volumes(root, rt)?,
            done: vec![],
        })
    }

    fn unlock_file(&self, volume: &str) -> Result<String, String> {
        let p = RootFs::new(self.root)
            .resolve(&unlock_key_file(volume))
            .map_err(|e| e.to_string())?;
        Ok(p.to_string_lossy().into_owned())
    }

    fn device(&self, volume: &str) -> String {
        self.volumes[volume].to_string_lossy().into_owned()
    }

    fn add_to(&self, volume: &str, key: &str) -> Result<(), String> {
        let mut a = argv(&["cryptsetup", "luksAddKey", "--batch-mode"]);
        a.extend(pbkdf_args(self.rt));
        a.extend(["--key-file".into(), self.unlock_file(volume)?]);
        a.extend([self.device(volume), "-".into()]);
        run(self.cmds, &a, key.as_bytes()).map(|_| ())
    }

    /// Removes the slot holding `key`; `Ok(false)` when no slot holds it.
    fn remove_from(&self, volume: &str, key: &str) -> Result<bool, String> {
        let a = argv(&[
            "cryptsetup",
            "luksRemoveKey",
            "--batch-mode",
            "--key-file",
            "-",
            &self.device(volume),
        ]);
        let out = self
            .cmds
            .run(&a, key.as_bytes(), TIMEOUT)
            .map_err(|e| e.0)?;
        match out.status {
            0 => Ok(true),
            // cryptsetup's "no key available with this passphrase".
            2 => Ok(false),
            _ => Err(failed(&a, &out)),
        }
    }

    /// Enrolls `key` on every volume.
    pub fn add(&mut self, key: &str) -> Result<(), String> {
        let names: Vec<String> = self.volumes.keys().cloned().collect();
        for volume in names {
            self.add_to(&volume, key)?;
            self.done.push(Step::Added {
                volume,
                key: key.to_string(),
            });
        }
        Ok(())
    }

    /// Removes `key` from every volume (a volume where no slot holds it is left as is).
    pub fn remove(&mut self, key: &str) -> Result<(), String> {
        let names: Vec<String> = self.volumes.keys().cloned().collect();
        for volume in names {
            if self.remove_from(&volume, key)? {
                self.done.push(Step::Removed {
                    volume,
                    key: key.to_string(),
                });
            } else {
                tracing::warn!(
                    volume,
                    "a recovery key being removed was not enrolled on this volume"
                );
            }
        }
        Ok(())
    }

    /// Puts back every step done, newest first. Failures are logged: the slots may then
    /// differ from the state, and the log says which.
    pub fn rollback(mut self) {
        while let Some(step) = self.done.pop() {
            let result = match &step {
                Step::Added { volume, key } => self.remove_from(volume, key).map(|_| ()),
                Step::Removed { volume, key } => self.add_to(volume, key),
            };
            if let Err(e) = result {
                tracing::error!(error = %e, step = ?step_kind(&step), "cannot undo a recovery key change");
            }
        }
    }
}

fn step_kind(s: &Step) -> (&'static str, &str) {
    match s {
        Step::Added { volume, .. } => ("added", volume),
        Step::Removed { volume, .. } => ("removed", volume),
    }
}

/// What `encrypted_volumes` says of each volume: `locked` when device-mapper has no
/// mapping of that name (`dmsetup info <volume>` fails), else how it was unlocked: by the
/// TPM when the initrd says so (`IncusOSTPMState`), else by a recovery key, or by the TPM
/// with a PCR update pending when `tpm_status` is `pcr mismatch`.
pub fn volume_states(
    cmds: &dyn Commands,
    volumes: &BTreeMap<String, PathBuf>,
    tpm_unlocked_all: bool,
    tpm_status: impl Fn() -> Result<String, String>,
) -> Result<Vec<super::EncryptedVolume>, String> {
    let mut out = vec![];
    for name in volumes.keys() {
        let argv = argv(&["dmsetup", "info", name]);
        let mapped = cmds.run(&argv, b"", TIMEOUT).is_ok_and(|o| o.status == 0);
        let state = if !mapped {
            "locked"
        } else if tpm_unlocked_all {
            "unlocked (TPM)"
        } else if tpm_status()? == "pcr mismatch" {
            "unlocked (TPM; PCR update pending)"
        } else {
            "unlocked (recovery passphrase)"
        };
        out.push(super::EncryptedVolume {
            volume: name.clone(),
            state: state.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_split_into_token_and_passphrase_slots() {
        let json = br#"{"keyslots":{"0":{"type":"luks2"},"1":{"type":"luks2"},"2":{},"3":{}},
            "tokens":{"0":{"type":"systemd-recovery","keyslots":["0"]},
                      "1":{"type":"systemd-tpm2","keyslots":["1"],"tpm2-pcrs":[7]}},
            "segments":{},"digests":{},"config":{}}"#;
        let s = parse_dump(json).unwrap();
        assert_eq!(s.keyslots, vec![0, 1, 2, 3]);
        assert_eq!(s.of_token("systemd-recovery"), vec![0]);
        assert_eq!(s.of_token("systemd-tpm2"), vec![1]);
        assert_eq!(s.passwords(), vec![2, 3]);
        assert!(parse_dump(b"{").unwrap_err().starts_with("cannot parse"));
    }

    #[test]
    fn failures_are_worded_as_upstreams_subprocess_errors() {
        let out = Output {
            status: 1,
            stdout: vec![],
            stderr: b"No key available with this passphrase.\n".to_vec(),
        };
        assert_eq!(
            failed(&argv(&["cryptsetup", "luksAddKey", "/dev/x"]), &out),
            "Failed to run: cryptsetup luksAddKey /dev/x: exit status 1 (No key available with this passphrase.)"
        );
    }
}
