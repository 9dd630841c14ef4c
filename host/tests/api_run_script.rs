//! Router tests (tier 1) for `POST /1.0/debug/:run-script`: scripts signed at test time by
//! the real `openssl smime -sign` under a throw-away PKI whose root CA and support CA are
//! shipped under the test root; the real openssl verifies them and the accepted ones run
//! for real (harmless `echo`s writing into a temporary directory).

use std::path::Path;
use std::sync::Arc;

use incus_osd::platform::exec::RealCommands;
use incus_osd::testing::{call, err, SigningPki, TestApp};

/// A router whose commands run on this machine, with `pki`'s certificates shipped.
fn router(pki: &SigningPki) -> (axum::Router, tempfile::TempDir) {
    let t = TestApp::new().commands(Arc::new(RealCommands));
    pki.install(t.root());
    let (r, _, d) = t.router();
    (r, d)
}

/// A script that leaves `marker` behind when it runs (so a refusal can show nothing ran).
fn marking_script(marker: &Path) -> String {
    format!(
        "#!/bin/sh\necho ran > '{}'\necho hello from the script\necho on stderr >&2\n",
        marker.display()
    )
}

async fn post(r: &axum::Router, body: &[u8]) -> (axum::http::StatusCode, serde_json::Value) {
    call(
        r,
        "POST",
        "/1.0/debug/:run-script",
        std::str::from_utf8(body).unwrap(),
    )
    .await
}

#[tokio::test]
async fn a_script_signed_through_the_support_ca_runs_and_answers_its_output() {
    let pki = SigningPki::new();
    let (r, _d) = router(&pki);
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("marker");
    let signed = pki.sign_support(marking_script(&marker).as_bytes());
    let (status, v) = post(&r, &signed).await;
    assert_eq!(status, 200, "{v}");
    // stdout and stderr, merged in order.
    assert_eq!(v["metadata"], "hello from the script\non stderr\n");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n");
}

#[tokio::test]
async fn a_failing_script_is_a_500_with_the_error_and_the_output() {
    let pki = SigningPki::new();
    let (r, _d) = router(&pki);
    let signed = pki.sign_support(b"#!/bin/sh\necho partial work\nexit 3\n");
    let (status, text) = err(&post(&r, &signed).await);
    assert_eq!(status, 500);
    assert_eq!(
        text, "the script failed: exit status 3\n\npartial work\n",
        "{text}"
    );
}

/// Posts `body` and checks the answer is `status` starting with `text`, and the script
/// did not run.
async fn refused(r: &axum::Router, body: &[u8], marker: &Path, status: u16, text: &str) {
    let (s, e) = err(&post(r, body).await);
    assert_eq!((s, e.starts_with(text)), (status, true), "{e}");
    assert!(!marker.exists(), "the script ran");
}

#[tokio::test]
async fn unsigned_empty_and_foreign_scripts_are_refused_and_never_run() {
    let pki = SigningPki::new();
    let (r, _d) = router(&pki);
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("marker");
    let script = marking_script(&marker);

    refused(&r, b"", &marker, 400, "the script is empty").await;
    refused(
        &r,
        script.as_bytes(),
        &marker,
        400,
        "the script is not an S/MIME signed message",
    )
    .await;

    // Signed through the update CA: a valid signature under the same root, but not the
    // support CA.
    refused(
        &r,
        &pki.sign_update(script.as_bytes()),
        &marker,
        403,
        "the script is not signed through the expected support CA",
    )
    .await;

    // Signed under another root (with a look-alike support CA).
    refused(
        &r,
        &pki.sign_as(script.as_bytes(), "other-signer", "other-support-ca"),
        &marker,
        403,
        "the script signature is not valid: ",
    )
    .await;

    // An expired signer.
    let (s, e) = err(&post(
        &r,
        &pki.sign_as(script.as_bytes(), "expired-signer", "support-ca"),
    )
    .await);
    assert_eq!(s, 403, "{e}");
    assert!(e.ends_with("certificate has expired"), "{e}");
    assert!(!marker.exists());

    // Tampered with after signing.
    let signed = String::from_utf8(pki.sign_support(script.as_bytes())).unwrap();
    let tampered = signed.replace("hello from the script", "hello from somebody");
    assert_ne!(tampered, signed);
    refused(
        &r,
        tampered.as_bytes(),
        &marker,
        403,
        "the script signature is not valid: ",
    )
    .await;
}

#[tokio::test]
async fn a_body_over_one_mib_is_a_413() {
    let pki = SigningPki::new();
    let (r, _d) = router(&pki);
    let big = vec![b'#'; 1024 * 1024 + 1];
    let (s, e) = err(&post(&r, &big).await);
    assert_eq!(s, 413);
    assert_eq!(e, "request body too large (the limit is 1024 KiB)");
}

#[tokio::test]
async fn without_the_support_ca_file_every_script_is_refused() {
    let pki = SigningPki::new();
    let t = TestApp::new().commands(Arc::new(RealCommands));
    pki.install(t.root());
    std::fs::remove_file(t.root().join("usr/lib/incus-osd/certs/support-ca.pem")).unwrap();
    let (r, _, _d) = t.router();
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("marker");
    let signed = pki.sign_support(marking_script(&marker).as_bytes());
    refused(
        &r,
        &signed,
        &marker,
        500,
        "cannot verify the script: /usr/lib/incus-osd/certs/support-ca.pem is missing",
    )
    .await;
}

#[tokio::test]
async fn offline_the_script_is_not_run() {
    // A dev root (no command adapter): the platform refuses to run anything.
    let pki = SigningPki::new();
    let t = TestApp::new();
    pki.install(t.root());
    let (r, _, _d) = t.router();
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("marker");
    let signed = pki.sign_support(marking_script(&marker).as_bytes());
    let (s, e) = err(&post(&r, &signed).await);
    assert_eq!(s, 500);
    assert!(e.contains("offline"), "{e}");
    assert!(!marker.exists());
}
