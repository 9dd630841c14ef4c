//! Checking the signed index (`index.sjson`, an S/MIME signed message) with the real
//! `openssl`, as upstream does: the signature must verify up to the trusted root CA, and
//! the expected intermediate (the update CA) must be among the certificates the message
//! carries, compared as DER bytes.
//!
//! Nothing touches the disk: the message goes to openssl's standard input and the root CA
//! reaches `-CAfile` through a bash process substitution (`<(...)`), the PEM passed as a
//! positional argument, never spliced into the script.

use std::time::Duration;

use plugin_api::sdk::{Host, Output};
use plugin_api::{Error, Result};

use crate::pem;

/// How long one openssl command may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a command (`argv`) with `stdin`: [`Host::run_with_input`] in a plugin, a direct
/// spawn in unit tests.
pub type Runner<'a> = &'a dyn Fn(&[&str], &[u8]) -> Result<Output>;

/// A [`Runner`] through the host.
pub fn host_runner(host: &Host) -> impl Fn(&[&str], &[u8]) -> Result<Output> + '_ {
    move |argv, stdin| host.run_with_input(argv, stdin, TIMEOUT)
}

/// The script that verifies: the root CA is `$1`; only it is trusted (no system CA
/// directory or store).
pub const VERIFY_SCRIPT: &str =
    "exec openssl smime -verify -text -no-CApath -no-CAstore -CAfile <(printf '%s\\n' \"$1\")";

/// What a signed message is, for the error texts: the message ("update index") and the
/// intermediate it must be signed through ("update CA").
#[derive(Debug, Clone, Copy)]
pub struct Names {
    pub message: &'static str,
    pub ca: &'static str,
}

/// The names of `index.sjson`.
pub const INDEX: Names = Names {
    message: "update index",
    ca: "update CA",
};

/// Why a message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The message is not one the trusted certificates vouch for (not signed, tampered
    /// with, an unknown or expired signer, signed through another intermediate).
    Refused(String),
    /// The check could not be made (openssl could not run, the trusted CA is unusable).
    Failed(Error),
}

impl Refusal {
    /// Both kinds as one error (500), for callers that do not tell them apart.
    pub fn into_error(self) -> Error {
        match self {
            Refusal::Refused(m) => Error::internal(m),
            Refusal::Failed(e) => e,
        }
    }
}

/// The content of `signed` once its signature is verified against `root_ca` (PEM) and the
/// update CA `intermediate` (PEM, one or more certificates) is among its certificates.
pub fn verify_signed_index(
    run: Runner,
    signed: &[u8],
    root_ca: &str,
    intermediate: &str,
) -> Result<Vec<u8>> {
    verify_signed(run, signed, root_ca, intermediate, INDEX).map_err(Refusal::into_error)
}

/// The content of the S/MIME message `signed` once its signature is verified up to
/// `root_ca` (PEM) and the expected intermediate `intermediate` (PEM, one or more
/// certificates) is among the certificates it carries; `names` words the errors.
pub fn verify_signed(
    run: Runner,
    signed: &[u8],
    root_ca: &str,
    intermediate: &str,
    names: Names,
) -> std::result::Result<Vec<u8>, Refusal> {
    let Names { message, ca } = names;
    let expected = pem::certificates(intermediate).map_err(|e| {
        Refusal::Failed(Error::internal(format!(
            "the {ca} is not valid: {}",
            e.message
        )))
    })?;
    if expected.is_empty() {
        return Err(Refusal::Failed(Error::internal(format!(
            "the {ca} holds no certificate"
        ))));
    }

    let out = run(
        &[
            "bash",
            "-c",
            VERIFY_SCRIPT,
            "verify-signed-message",
            root_ca,
        ],
        signed,
    )
    .map_err(Refusal::Failed)?;
    if out.status != 0 {
        return Err(Refusal::Refused(format!(
            "the {message} signature is not valid: {}",
            first_error_line(&out.stderr)
        )));
    }
    let content = out.stdout.into_bytes();

    let unreadable = |stderr: &str| {
        Refusal::Refused(format!(
            "cannot read the certificates of the {message}: {}",
            first_error_line(stderr)
        ))
    };
    let pkcs7 = run(&["openssl", "smime", "-pk7out"], signed).map_err(Refusal::Failed)?;
    if pkcs7.status != 0 {
        return Err(unreadable(&pkcs7.stderr));
    }
    let certs = run(
        &["openssl", "pkcs7", "-print_certs"],
        pkcs7.stdout.as_bytes(),
    )
    .map_err(Refusal::Failed)?;
    if certs.status != 0 {
        return Err(unreadable(&certs.stderr));
    }
    let carried = pem::certificates(&certs.stdout).map_err(|e| {
        Refusal::Failed(Error::internal(format!(
            "openssl printed a bad certificate: {}",
            e.message
        )))
    })?;
    if !carried.iter().any(|c| expected.contains(c)) {
        return Err(Refusal::Refused(format!(
            "the {message} is not signed through the expected {ca}"
        )));
    }
    Ok(content)
}

/// What openssl's error output says went wrong: the certificate check's reason
/// (`Verify error: certificate has expired`) when it names one, else the first non-empty
/// line (the rest is its error stack).
fn first_error_line(stderr: &str) -> String {
    let mut lines = stderr.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.clone().next();
    let line = match lines.find_map(|l| l.find("Verify error:").map(|i| &l[i..])) {
        Some(reason) => reason,
        None => first.unwrap_or("openssl failed without a message"),
    };
    line.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{spawn, Pki};

    const INDEX: &str =
        r#"{"format":"1.0","updates":[{"version":"202601010000","channels":["stable"]}]}"#;

    #[test]
    fn a_good_index_verifies_to_its_content() {
        let pki = Pki::new();
        let signed = pki.sign(INDEX.as_bytes());
        let content =
            verify_signed_index(&spawn, &signed, &pki.root_pem(), &pki.update_ca_pem()).unwrap();
        assert_eq!(String::from_utf8(content).unwrap().trim_end(), INDEX);
    }

    #[test]
    fn a_tampered_index_is_refused() {
        let pki = Pki::new();
        let signed = String::from_utf8(pki.sign(INDEX.as_bytes())).unwrap();
        let tampered = signed.replace("202601010000", "202601010001");
        assert_ne!(tampered, signed);
        let err = verify_signed_index(
            &spawn,
            tampered.as_bytes(),
            &pki.root_pem(),
            &pki.update_ca_pem(),
        )
        .unwrap_err();
        assert_eq!(err.status, 500);
        assert!(
            err.message
                .starts_with("the update index signature is not valid: "),
            "{}",
            err.message
        );
    }

    #[test]
    fn another_root_is_refused() {
        let pki = Pki::new();
        let other = Pki::new();
        let signed = pki.sign(INDEX.as_bytes());
        let err = verify_signed_index(&spawn, &signed, &other.root_pem(), &pki.update_ca_pem())
            .unwrap_err();
        assert!(
            err.message
                .starts_with("the update index signature is not valid: "),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_signature_through_another_intermediate_is_refused() {
        // Same root, so the signature verifies; but the message carries a second
        // intermediate, not the update CA.
        let pki = Pki::new();
        let signed = pki.sign_with_other_intermediate(INDEX.as_bytes());
        // It does verify up to the root...
        let out = spawn(
            &["bash", "-c", VERIFY_SCRIPT, "x", &pki.root_pem()],
            &signed,
        )
        .unwrap();
        assert_eq!(out.status, 0, "{}", out.stderr);
        // ...but the update CA is not among its certificates.
        let err = verify_signed_index(&spawn, &signed, &pki.root_pem(), &pki.update_ca_pem())
            .unwrap_err();
        assert_eq!(
            err.message,
            "the update index is not signed through the expected update CA"
        );
        // Configured as the expected intermediate, the other one is accepted.
        verify_signed_index(&spawn, &signed, &pki.root_pem(), &pki.other_ca_pem()).unwrap();
    }

    #[test]
    fn an_unsigned_or_garbled_message_is_refused() {
        let pki = Pki::new();
        for bad in [INDEX.as_bytes(), b"", b"MIME-Version: 1.0\n\nnothing"] {
            let err = verify_signed_index(&spawn, bad, &pki.root_pem(), &pki.update_ca_pem())
                .unwrap_err();
            assert!(
                err.message
                    .starts_with("the update index signature is not valid: "),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn an_update_ca_without_a_certificate_is_refused_before_running_anything() {
        let never = |_: &[&str], _: &[u8]| -> Result<Output> { panic!("ran a command") };
        let err = verify_signed_index(&never, b"x", "root", "not a pem").unwrap_err();
        assert_eq!(err.message, "the update CA holds no certificate");
    }
}
