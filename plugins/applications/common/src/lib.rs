//! What the application plugins share: a client for their daemons' local APIs ([`api`]),
//! the ZFS datasets some of them keep their data on ([`zfs`]), the lifecycle of a daemon
//! with one unit and one dataset ([`daemon`]: Migration Manager, Operations Center),
//! friendly versions ([`version`]), certificate fingerprints and random tokens.
//!
//! Everything is a function over the SDK's [`plugin_api::Host`]: commands, units, files and
//! HTTP go through the host, so the harness records them in tests.

pub mod api;
pub mod ceph;
pub mod daemon;
pub mod version;
pub mod zfs;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod harness_tests;

use std::time::Duration;

use plugin_api::{Error, Host, Result};
use sha2::{Digest, Sha256};

pub use api::Api;
pub use daemon::Daemon;
pub use incus_osd_provider_common::address;

/// Deserializes a `T` from a JSON object only, for a config field that is a struct:
/// serde's derived structs also take an array of their fields in order (and an empty one
/// as all defaults), which upstream's decoder refuses. Field paths in errors are kept.
pub fn object<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct Object<T>(std::marker::PhantomData<T>);
    impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Object<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            map: A,
        ) -> std::result::Result<T, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_map(Object(std::marker::PhantomData))
}

/// How long a command the applications run (ZFS, systemd tools, `--version`) may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The SHA-256 fingerprint (lower-case hex) of the first certificate of `pem`, as the
/// daemons list trusted client certificates.
pub fn certificate_fingerprint(pem: &str) -> Result<String> {
    let ders = incus_osd_provider_common::pem::certificates(pem)?;
    let der = ders
        .first()
        .ok_or_else(|| Error::bad_request("no PEM certificate found"))?;
    Ok(hex(&Sha256::digest(der)))
}

/// The SHA-256 of `data`, lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random token of 26 characters from the base32 alphabet (130 bits drawn from the
/// kernel's random source, as upstream's tokens).
pub fn random_token() -> Result<String> {
    use std::io::Read;
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bytes = [0u8; 26];
    // The kernel's random source of the daemon's own process, not a file of the managed
    // system: the host has no randomness capability, and its file opens (`Host::open_read`)
    // take regular files only, which /dev/urandom is not.
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::internal(format!("cannot read random bytes: {e}")))?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[(b & 31) as usize] as char)
        .collect())
}

/// Runs `argv` through the host; a non-zero exit is an error naming the command and its
/// standard error (upstream's text).
pub fn run(host: &Host, argv: &[&str]) -> Result<String> {
    host.run_ok(argv, COMMAND_TIMEOUT)
}

/// Lazily unmounts `target` (`umount -l`); a target that is not mounted is fine, any
/// other failure is logged as a warning (a wipe goes on regardless, as upstream).
pub fn lazy_unmount(host: &Host, target: &str) -> Result<()> {
    unmount(host, &["umount", "-l", target])
}

/// Unmounts `target`; one that is not mounted is fine, any other failure is an error.
pub fn unmount_strict(host: &Host, target: &str) -> Result<()> {
    let out = host.run(&["umount", target], COMMAND_TIMEOUT)?;
    if out.status == 0 || not_mounted(&out.stderr) {
        return Ok(());
    }
    Err(Error::internal(format!(
        "Failed to run: umount {target}: exit status {} ({})",
        out.status,
        out.stderr.trim()
    )))
}

fn unmount(host: &Host, argv: &[&str]) -> Result<()> {
    let out = host.run(argv, COMMAND_TIMEOUT)?;
    if out.status != 0 && !not_mounted(&out.stderr) {
        host.warn(&format!(
            "{}: exit status {} ({})",
            argv.join(" "),
            out.status,
            out.stderr.trim()
        ));
    }
    Ok(())
}

fn not_mounted(stderr: &str) -> bool {
    stderr.contains("not mounted") || stderr.contains("no mount point specified")
}

/// Whether `unit` is active (`ActiveState` exactly `active`, as upstream's check).
pub fn unit_running(host: &Host, unit: &str) -> Result<bool> {
    Ok(host.unit_active_state(unit)? == "active")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_struct_field_takes_an_object_and_refuses_an_array() {
        #[derive(serde::Deserialize, Default, Debug, PartialEq)]
        #[serde(default)]
        struct Inner {
            on: bool,
        }
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Outer {
            #[serde(deserialize_with = "object")]
            inner: Inner,
        }
        let ok: Outer = serde_json::from_str(r#"{"inner": {"on": true}}"#).unwrap();
        assert_eq!(ok.inner, Inner { on: true });
        for bad in [r#"{"inner": []}"#, r#"{"inner": [true]}"#] {
            let e = serde_json::from_str::<Outer>(bad).unwrap_err().to_string();
            assert!(e.contains("expected an object"), "{bad}: {e}");
        }
        let e = serde_json::from_str::<Outer>(r#"{"inner": {"on": "x"}}"#).unwrap_err();
        assert!(e.to_string().contains("expected a boolean"), "{e}");
    }

    #[test]
    fn tokens_are_26_base32_characters_and_differ() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_eq!(a.len(), 26);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c)));
        assert_ne!(a, b);
    }

    #[test]
    fn a_fingerprint_is_the_sha256_of_the_der() {
        // "hello" in base64 is aGVsbG8=: the DER here is the five bytes of "hello".
        let pem = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        assert_eq!(
            certificate_fingerprint(pem).unwrap(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(
            certificate_fingerprint("junk").unwrap_err().message,
            "no PEM certificate found"
        );
    }
}

/// The application's seed handed over with `initialize` ([`AppContext::seed`]), decoded as
/// `T` (`None`: the machine has none). A seed that does not decode is refused with the
/// decoder's text, naming the seed.
///
/// [`AppContext::seed`]: plugin_api::application::AppContext::seed
pub fn seed<T: serde::de::DeserializeOwned>(
    ctx: &plugin_api::application::AppContext,
    name: &str,
) -> Result<Option<T>> {
    match &ctx.seed {
        None => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| Error::bad_request(format!("invalid '{name}' seed: {e}"))),
    }
}

#[cfg(test)]
mod seed_tests {
    use plugin_api::application::AppContext;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct S {
        apply_defaults: bool,
    }

    #[test]
    fn the_seed_in_the_context_decodes_or_is_refused_by_name() {
        let mut ctx = AppContext::default();
        assert_eq!(super::seed::<S>(&ctx, "incus").unwrap(), None);
        ctx.seed = Some(serde_json::json!({"apply_defaults": true}));
        assert_eq!(
            super::seed::<S>(&ctx, "incus").unwrap(),
            Some(S {
                apply_defaults: true
            })
        );
        ctx.seed = Some(serde_json::json!({"apply": true}));
        let e = super::seed::<S>(&ctx, "incus").unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.message
                .starts_with("invalid 'incus' seed: unknown field `apply`"),
            "{}",
            e.message
        );
    }
}
