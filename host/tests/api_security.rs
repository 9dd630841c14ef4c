//! Router tests (tier 1) for `/1.0/system/security`: Secure Boot state from efivarfs files
//! written under a temporary root (signature lists holding certificates made and signed at
//! test time), the trust texts, the key files, and the recovery-key changes through a
//! recording command runner (the real cryptsetup runs in `tier3_security.rs`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use http_body_util::BodyExt;
use incus_osd::platform::exec::{Commands, Output};
use incus_osd::platform::PlatformError;
use incus_osd::system::security::{secureboot, Runtime};
use incus_osd::testing::TestApp;
use incus_osd::testing::{call, err};
use rcgen::{CertificateParams, DnType, KeyPair};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tower::ServiceExt;

const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
const IMAGE_SECURITY: &str = "d719b2cb-3d3a-4596-a3bc-dad00e67656f";
const INCUS_OS: &str = "12f075e0-2d07-493d-811a-00920a72c04c";

/// Writes an efivarfs file: the attribute word (NV, BS, RT, time-based authenticated
/// write for the databases) then the data.
fn efivar(root: &Path, name: &str, guid: &str, data: &[u8]) {
    let dir = root.join("sys/firmware/efi/efivars");
    std::fs::create_dir_all(&dir).unwrap();
    let attrs: u32 = if data.len() > 1 { 0x27 } else { 0x06 };
    let mut bytes = attrs.to_le_bytes().to_vec();
    bytes.extend(data);
    std::fs::write(dir.join(format!("{name}-{guid}")), bytes).unwrap();
}

/// An EFI signature list of X.509 certificates (one list per certificate, as firmware
/// writes lists of differently sized certificates).
fn cert_lists(ders: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![];
    for der in ders {
        out.extend(secureboot::X509_TYPE);
        out.extend(((28 + 16 + der.len()) as u32).to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(((16 + der.len()) as u32).to_le_bytes());
        out.extend([0x77; 16]);
        out.extend(*der);
    }
    out
}

fn hash_list(hashes: &[[u8; 32]]) -> Vec<u8> {
    let mut out = secureboot::SHA256_TYPE.to_vec();
    out.extend(((28 + 48 * hashes.len()) as u32).to_le_bytes());
    out.extend(0u32.to_le_bytes());
    out.extend(48u32.to_le_bytes());
    for h in hashes {
        out.extend([0x77; 16]);
        out.extend(h);
    }
    out
}

struct Chain {
    pk: Vec<u8>,
    kek: Vec<u8>,
    db: Vec<u8>,
}

/// A PK (self-signed), a KEK signed by the PK and a db certificate signed by the KEK.
fn chain() -> Chain {
    let ca = |cn: &str, org: &str| {
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.distinguished_name.push(DnType::CountryName, "US");
        p.distinguished_name.push(DnType::OrganizationName, org);
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p
    };
    let pk_key = KeyPair::generate().unwrap();
    let pk = ca("Test PK", "Example, Inc.").self_signed(&pk_key).unwrap();
    let kek_key = KeyPair::generate().unwrap();
    let kek = ca("Test KEK", "Example")
        .signed_by(&kek_key, &pk, &pk_key)
        .unwrap();
    let db_key = KeyPair::generate().unwrap();
    let db = ca("Test db 2025", "Example")
        .signed_by(&db_key, &kek, &kek_key)
        .unwrap();
    Chain {
        pk: pk.der().to_vec(),
        kek: kek.der().to_vec(),
        db: db.der().to_vec(),
    }
}

fn secure_boot(root: &Path, on: bool, c: &Chain) {
    efivar(root, "SecureBoot", GLOBAL, &[on as u8]);
    efivar(root, "SetupMode", GLOBAL, &[0]);
    efivar(root, "PK", GLOBAL, &cert_lists(&[&c.pk]));
    efivar(root, "KEK", GLOBAL, &cert_lists(&[&c.kek]));
    efivar(
        root,
        "db",
        IMAGE_SECURITY,
        &cert_lists(&[&c.db, b"garbage"]),
    );
    efivar(root, "dbx", IMAGE_SECURITY, &hash_list(&[[0xab; 32]]));
}

fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn get_reports_secure_boot_certificates_keys_and_trust() {
    let c = chain();
    let app = TestApp::new();
    let root = app.root().to_path_buf();
    secure_boot(&root, true, &c);
    let keys = root.join("var/lib/incus-os");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("luks.scsi-0QEMU_disk1.key"), [1, 2, 3]).unwrap();
    std::fs::write(keys.join("zpool.local.key"), b"pool-key").unwrap();
    std::fs::write(keys.join("recovery.root.key"), b"private").unwrap();
    std::fs::write(keys.join("tpm-auth.pem"), "-----BEGIN PUBLIC KEY-----\nx\n").unwrap();
    let (r, _, _d) = app.router();

    let (s, v) = call(&r, "GET", "/1.0/system/security", "").await;
    assert_eq!(s, 200, "{v}");
    let m = &v["metadata"];
    assert_eq!(m["config"], json!({"encryption_recovery_keys": []}));
    let st = &m["state"];
    assert_eq!(st["secure_boot_enabled"], true);
    assert_eq!(st["system_state_is_trusted"], true);
    assert_eq!(st["system_state_status"], "system state is fully trusted");
    assert_eq!(st["encrypted_volumes"], json!([]));
    assert_eq!(st["encryption_recovery_keys_retrieved"], false);
    assert_eq!(st["tpm_status"], "unavailable");
    assert_eq!(st["tpm_public_key"], "-----BEGIN PUBLIC KEY-----\nx\n");
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    assert_eq!(
        st["drive_recovery_keys"],
        json!({"scsi-0QEMU_disk1": b64(&[1, 2, 3])})
    );
    assert_eq!(st["pool_recovery_keys"], json!({"local": b64(b"pool-key")}));
    // PK, KEK, db in order; the unparsable db entry and dbx's hash are not certificates.
    assert_eq!(
        st["secure_boot_certificates"],
        json!([
            {"type": "PK", "fingerprint": fingerprint(&c.pk),
             "subject": "CN=Test PK,O=Example\\, Inc.,C=US",
             "issuer": "CN=Test PK,O=Example\\, Inc.,C=US"},
            {"type": "KEK", "fingerprint": fingerprint(&c.kek),
             "subject": "CN=Test KEK,O=Example,C=US",
             "issuer": "CN=Test PK,O=Example\\, Inc.,C=US"},
            {"type": "db", "fingerprint": fingerprint(&c.db),
             "subject": "CN=Test db 2025,O=Example,C=US",
             "issuer": "CN=Test KEK,O=Example,C=US"},
        ])
    );
    let kernel = incus_osd::platform::kernel::KernelFiles::under(&root);
    assert_eq!(
        secureboot::dbx_hashes(&kernel).unwrap(),
        vec!["ab".repeat(32)]
    );
}

#[tokio::test]
async fn an_untrusted_state_says_why() {
    let c = chain();
    let t = TestApp::new();
    let root = t.root().to_path_buf();
    secure_boot(&root, false, &c);
    std::fs::create_dir_all(root.join("boot/swtpm")).unwrap();
    // Start-up's findings: a software TPM and Secure Boot off blow the fuse.
    let kernel = incus_osd::platform::kernel::KernelFiles::under(&root);
    let found = incus_osd::system::security::startup_findings(&root, &kernel).unwrap();
    assert!(found.using_swtpm && found.secure_boot_disabled);
    assert!(root.join("etc/incusos-trusted-fuse-blown").exists());
    let (r, app, _d) = t.router();
    app.with_state(|s| {
        s.update(|d| {
            d.system.security.using_swtpm = true;
            d.system.security.secure_boot_disabled = true;
        })
    })
    .unwrap();
    let (s, v) = call(&r, "GET", "/1.0/system/security", "").await;
    assert_eq!(s, 200, "{v}");
    let st = &v["metadata"]["state"];
    assert_eq!(st["secure_boot_enabled"], false);
    assert_eq!(st["system_state_is_trusted"], false);
    assert_eq!(
        st["system_state_status"],
        "using swtpm, Secure Boot is disabled"
    );
    assert_eq!(st["tpm_status"], "swtpm");
    assert!(st.get("tpm_public_key").is_none());
    assert_eq!(st["drive_recovery_keys"], json!({}));
}

#[tokio::test]
async fn audit_mode_with_secure_boot_stops_the_start() {
    let c = chain();
    let root = tempfile::tempdir().unwrap();
    secure_boot(root.path(), true, &c);
    efivar(root.path(), "AuditMode", GLOBAL, &[1]);
    let kernel = incus_osd::platform::kernel::KernelFiles::under(root.path());
    let e = incus_osd::system::security::startup_findings(root.path(), &kernel).unwrap_err();
    assert!(e.to_string().contains("audit mode"), "{e}");
    assert!(!root.path().join("etc/incusos-trusted-fuse-blown").exists());
}

/// Records every command; fails the `fail_at`-th (1-based) with exit status 1.
#[derive(Default)]
struct Recorder {
    runs: Mutex<Vec<(String, String)>>,
    fail_at: Option<usize>,
    stderr: &'static str,
}

impl Commands for Recorder {
    fn run(&self, argv: &[String], stdin: &[u8], _: Duration) -> Result<Output, PlatformError> {
        let mut runs = self.runs.lock().unwrap();
        runs.push((argv.join(" "), String::from_utf8_lossy(stdin).into_owned()));
        let failed = self.fail_at == Some(runs.len());
        Ok(Output {
            status: if failed { 1 } else { 0 },
            stdout: vec![],
            stderr: if failed {
                b"Device /dev/x is busy.\n".to_vec()
            } else {
                self.stderr.as_bytes().to_vec()
            },
        })
    }
}

fn volumes(root: &Path) -> Runtime {
    let mut v = std::collections::BTreeMap::new();
    v.insert("root".to_string(), PathBuf::from("/dev/vda10"));
    v.insert("swap".to_string(), PathBuf::from("/dev/vda9"));
    let _ = root;
    Runtime {
        volumes: Some(v),
        ..Default::default()
    }
}

async fn keyed_app(
    rec: Arc<Recorder>,
    keys: &[&str],
) -> (Router, Arc<incus_osd::api::App>, tempfile::TempDir) {
    let t = TestApp::new();
    let rt = volumes(t.root());
    let (r, app, d) = t.security(rt).commands(rec).router();
    let keys: Vec<String> = keys.iter().map(|s| s.to_string()).collect();
    app.with_state(|s| s.update(|d| d.system.security.config.encryption_recovery_keys = keys))
        .unwrap();
    (r, app, d)
}

fn stored(app: &incus_osd::api::App) -> Vec<String> {
    app.with_state(|s| {
        s.doc()
            .system
            .security
            .config
            .encryption_recovery_keys
            .clone()
    })
}

#[tokio::test]
async fn put_adds_then_removes_keys_with_exact_commands() {
    let rec = Arc::new(Recorder::default());
    let (r, app, d) = keyed_app(rec.clone(), &["old-key-1234-abcd!"]).await;
    let unlock = |v: &str| {
        d.path()
            .join(format!("var/lib/incus-os/recovery.{v}.key"))
            .display()
            .to_string()
    };
    let body = json!({"config": {"encryption_recovery_keys": ["foo-bar-biz-1234"]}}).to_string();
    let (s, v) = call(&r, "PUT", "/1.0/system/security", &body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(stored(&app), vec!["foo-bar-biz-1234"]);
    let runs = rec.runs.lock().unwrap().clone();
    assert_eq!(
        runs,
        vec![
            (
                format!(
                    "cryptsetup luksAddKey --batch-mode --key-file {} /dev/vda10 -",
                    unlock("root")
                ),
                "foo-bar-biz-1234".to_string()
            ),
            (
                format!(
                    "cryptsetup luksAddKey --batch-mode --key-file {} /dev/vda9 -",
                    unlock("swap")
                ),
                "foo-bar-biz-1234".to_string()
            ),
            (
                "cryptsetup luksRemoveKey --batch-mode --key-file - /dev/vda10".to_string(),
                "old-key-1234-abcd!".to_string()
            ),
            (
                "cryptsetup luksRemoveKey --batch-mode --key-file - /dev/vda9".to_string(),
                "old-key-1234-abcd!".to_string()
            ),
        ]
    );
    // The same list again changes nothing and runs nothing.
    let (s, _) = call(&r, "PUT", "/1.0/system/security", &body).await;
    assert_eq!(s, 200);
    assert_eq!(rec.runs.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn a_failure_midway_puts_back_every_slot_and_keeps_the_state() {
    // Add to root, add to swap, remove from root: the fourth run (remove from swap) fails.
    let rec = Arc::new(Recorder {
        fail_at: Some(4),
        ..Default::default()
    });
    let (r, app, _d) = keyed_app(rec.clone(), &["old-key-1234-abcd!"]).await;
    let body = json!({"config": {"encryption_recovery_keys": ["foo-bar-biz-1234"]}}).to_string();
    let (code, msg) = err(&call(&r, "PUT", "/1.0/system/security", &body).await);
    assert_eq!(code, 500);
    assert!(
        msg.starts_with("Failed to run: cryptsetup luksRemoveKey --batch-mode --key-file - /dev/vda9: exit status 1 (Device /dev/x is busy.)"),
        "{msg}"
    );
    assert_eq!(stored(&app), vec!["old-key-1234-abcd!"]);
    let runs: Vec<(String, String)> = rec.runs.lock().unwrap()[4..].to_vec();
    // Undone newest first: the old key back on root, the new one off swap and root.
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert!(runs[0].0.starts_with("cryptsetup luksAddKey") && runs[0].0.ends_with("/dev/vda10 -"));
    assert_eq!(runs[0].1, "old-key-1234-abcd!");
    assert_eq!(
        runs[1].0,
        "cryptsetup luksRemoveKey --batch-mode --key-file - /dev/vda9"
    );
    assert_eq!(runs[1].1, "foo-bar-biz-1234");
    assert_eq!(
        runs[2].0,
        "cryptsetup luksRemoveKey --batch-mode --key-file - /dev/vda10"
    );
}

#[tokio::test]
async fn bad_requests_are_refused_before_anything_runs() {
    let rec = Arc::new(Recorder::default());
    let (r, app, _d) = keyed_app(rec.clone(), &["old-key-1234-abcd!"]).await;
    for (body, want) in [
        ("", (400, "no encryption key provided")),
        (r#"{"config":{}}"#, (400, "no encryption key provided")),
        (
            r#"{"config":{"encryption_recovery_keys":["short!"]}}"#,
            (500, "Password is too short"),
        ),
        (
            r#"{"config":{"encryption_recovery_keys":["correcthorsebatterystaple"]}}"#,
            (500, "Password does not contain any special symbols"),
        ),
        (
            r#"{"config":{"encryption_recovery_keys":["foo-bar-biz-1234","foo-bar-biz-1234"]}}"#,
            (500, "provided encryption key is already enrolled"),
        ),
        (
            r#"{"config":{"encryption_recovery_keys":["foo-bar-biz-1234"],"custom_ca_certs":["nope"]}}"#,
            (500, "custom CA certificate 0 is not PEM"),
        ),
    ] {
        let (code, msg) = err(&call(&r, "PUT", "/1.0/system/security", body).await);
        assert_eq!((code, msg.as_str()), want, "{body}");
    }
    assert_eq!(
        err(&call(&r, "PUT", "/1.0/system/security", "{x").await).0,
        400
    );
    assert!(rec.runs.lock().unwrap().is_empty());
    assert_eq!(stored(&app), vec!["old-key-1234-abcd!"]);
}

#[test]
fn the_last_key_is_never_removed() {
    use incus_osd::system::security::plan_keys;
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        plan_keys(&s(&["a-key-1234-abcd!"]), &[]).unwrap_err(),
        (400, "no encryption key provided".to_string())
    );
    let p = plan_keys(
        &s(&["a-key-1234-abcd!", "b-key-5678-efgh!"]),
        &s(&["b-key-5678-efgh!", "c-key-9999-wxyz!"]),
    )
    .unwrap();
    assert_eq!(p.add, s(&["c-key-9999-wxyz!"]));
    assert_eq!(p.remove, s(&["a-key-1234-abcd!"]));
    assert_eq!(p.result, s(&["b-key-5678-efgh!", "c-key-9999-wxyz!"]));
}

#[tokio::test]
async fn custom_ca_certificates_build_the_trust_store() {
    let rec = Arc::new(Recorder::default());
    let (r, app, d) = keyed_app(rec, &["foo-bar-biz-1234"]).await;
    let root = d.path();
    std::fs::create_dir_all(root.join("usr/share/certs")).unwrap();
    std::fs::write(root.join("usr/share/certs/ca-certificates.crt"), "DISTRO\n").unwrap();
    let key = KeyPair::generate().unwrap();
    let ca = CertificateParams::new(vec![])
        .unwrap()
        .self_signed(&key)
        .unwrap()
        .pem();
    let body = json!({"config": {"encryption_recovery_keys": ["foo-bar-biz-1234"], "custom_ca_certs": [ca]}});
    let (s, v) = call(&r, "PUT", "/1.0/system/security", &body.to_string()).await;
    assert_eq!(s, 200, "{v}");
    let bundle = std::fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert_eq!(bundle, format!("DISTRO\n{ca}"));
    let (_, v) = call(&r, "GET", "/1.0/system/security", "").await;
    assert_eq!(v["metadata"]["config"]["custom_ca_certs"], json!([ca]));
    // None again: the store is the distribution's directory.
    let body = json!({"config": {"encryption_recovery_keys": ["foo-bar-biz-1234"]}});
    let (s, _) = call(&r, "PUT", "/1.0/system/security", &body.to_string()).await;
    assert_eq!(s, 200);
    assert_eq!(
        std::fs::read_link(root.join("etc/ssl/certs")).unwrap(),
        Path::new("/usr/share/certs")
    );
    assert!(app.with_state(|s| s.doc().system.security.config.custom_ca_certs.is_empty()));
}

#[tokio::test]
async fn retrieved_is_persisted() {
    let t = TestApp::new();
    let (r, app, d) = t.router();
    let (s, _) = call(&r, "POST", "/1.0/system/security/:retrieved", "ignored").await;
    assert_eq!(s, 200);
    assert!(app.with_state(|s| s.doc().system.security.encryption_recovery_keys_retrieved));
    drop((r, app));
    let (app, _d) = TestApp::reopen(d).build();
    assert!(app.with_state(|s| s.doc().system.security.encryption_recovery_keys_retrieved));
    let r = incus_osd::api::router(app);
    assert_eq!(
        err(&call(&r, "GET", "/1.0/system/security/:retrieved", "").await).0,
        501
    );
}

#[tokio::test]
async fn tpm_rebind_refuses_when_the_tpm_unlocked_everything() {
    let rec = Arc::new(Recorder::default());
    let (r, _app, d) = keyed_app(rec.clone(), &["foo-bar-biz-1234"]).await;
    efivar(d.path(), "SecureBoot", GLOBAL, &[1]);
    efivar(d.path(), "IncusOSTPMState", INCUS_OS, &[0, 0, 0, 0]);
    assert_eq!(
        err(&call(&r, "POST", "/1.0/system/security/:tpm-rebind", "").await),
        (
            500,
            "refusing to reset TPM encryption bindings because current state can unlock all volumes"
                .into()
        )
    );
    assert!(rec.runs.lock().unwrap().is_empty());
    assert_eq!(
        err(&call(&r, "GET", "/1.0/system/security/:tpm-rebind", "").await).0,
        501
    );
}

async fn call_proxied(r: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("X-IncusOS-Proxy", "/os")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = r.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn internal_secureboot_lists_the_enrolled_certificates_as_pem() {
    let c = chain();
    let t = TestApp::new();
    secure_boot(t.root(), true, &c);
    let (r, _, _d) = t.router();
    let (s, v) = call(&r, "GET", "/internal/secureboot", "").await;
    assert_eq!(s, 200, "{v}");
    let pem = |d: &[u8]| secureboot::pem(d);
    assert_eq!(
        v["metadata"],
        json!({"pk": pem(&c.pk), "kek": [pem(&c.kek)], "db": [pem(&c.db)], "dbx": []})
    );
    // The PEM is the DER, as rustls' parser reads it back.
    let der = rustls_pem(v["metadata"]["pk"].as_str().unwrap());
    assert_eq!(der, c.pk);
    assert_eq!(
        err(&call_proxied(&r, "GET", "/internal/secureboot", "").await).0,
        403
    );
    assert_eq!(
        err(&call(&r, "POST", "/internal/secureboot", "").await).0,
        501
    );
}

fn rustls_pem(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

#[tokio::test]
async fn auth_endpoints_check_the_caller_and_the_body_first() {
    let (r, _, _d) = TestApp::new().router();
    let reg = "/internal/auth/:generate-registration";
    let tok = "/internal/auth/:generate-token";
    assert_eq!(
        err(&call_proxied(&r, "POST", reg, r#"{"token":"x"}"#).await).0,
        403
    );
    assert_eq!(err(&call_proxied(&r, "POST", tok, "").await).0, 403);
    assert_eq!(err(&call(&r, "GET", reg, "").await).0, 501);
    assert_eq!(err(&call(&r, "GET", tok, "").await).0, 501);
    assert_eq!(err(&call(&r, "POST", reg, "").await).0, 400);
    assert_eq!(
        err(&call(&r, "POST", reg, r#"{"token":""}"#).await),
        (400, "missing registration token".into())
    );
    // No authentication certificate in the image: upstream's refusal, before any TPM use.
    let unsupported = "authentication token generation isn't supported on this system";
    assert_eq!(
        err(&call(&r, "POST", reg, r#"{"token":"abc"}"#).await),
        (500, unsupported.into())
    );
    assert_eq!(
        err(&call(&r, "POST", tok, "ignored").await),
        (500, unsupported.into())
    );
}

#[tokio::test]
async fn debug_secureboot_lists_the_event_log() {
    let (r, _, _d) = TestApp::new().router();
    let (s, v) = call_proxied(&r, "GET", "/1.0/debug/secureboot", "").await;
    assert_eq!(s, 200);
    assert_eq!(v["metadata"], json!(["/os/1.0/debug/secureboot/event-log"]));
    let (code, msg) = err(&call(&r, "GET", "/1.0/debug/secureboot/event-log", "").await);
    assert_eq!(code, 500);
    assert!(msg.contains("no TPM event log"), "{msg}");
}

/// Answers `systemd-cryptenroll --recovery-key` with a fresh key per volume (as systemd
/// prints it), anything else with success; records every command.
#[derive(Default)]
struct Enroller {
    runs: Mutex<Vec<(String, String)>>,
    printed: Mutex<Vec<String>>,
}

impl Commands for Enroller {
    fn run(&self, argv: &[String], stdin: &[u8], _: Duration) -> Result<Output, PlatformError> {
        self.runs
            .lock()
            .unwrap()
            .push((argv.join(" "), String::from_utf8_lossy(stdin).into_owned()));
        let mut stdout = vec![];
        if argv.iter().any(|a| a == "--recovery-key") {
            let k = incus_osd::system::security::recovery::generate().unwrap();
            stdout = format!("{k}\n").into_bytes();
            self.printed.lock().unwrap().push(k);
        }
        Ok(Output {
            status: 0,
            stdout,
            stderr: vec![],
        })
    }
}

#[test]
fn first_boot_makes_the_private_keys_and_an_operator_key() {
    use incus_osd::system::security::{ensure_recovery_keys, recovery};
    let t = TestApp::new();
    let root = t.root().to_path_buf();
    let rt = volumes(&root);
    let (app, _d) = t.build();
    let kernel = incus_osd::platform::kernel::KernelFiles::under(&root);
    let rec = Enroller::default();
    // Not an Incus OS boot (no IncusOSTPMState from the initrd): nothing is touched.
    ensure_recovery_keys(&rec, &root, &kernel, &rt, &app.store).unwrap();
    assert!(rec.runs.lock().unwrap().is_empty());

    efivar(&root, "IncusOSTPMState", INCUS_OS, &[0, 0, 0, 0]);
    ensure_recovery_keys(&rec, &root, &kernel, &rt, &app.store).unwrap();
    let keys = stored(&app);
    assert_eq!(keys.len(), 1);
    assert!(recovery::is_recovery_key(&keys[0]), "{keys:?}");
    assert!(!app.with_state(|s| s.doc().system.security.encryption_recovery_keys_retrieved));
    let printed = rec.printed.lock().unwrap().clone();
    let runs = rec.runs.lock().unwrap().clone();
    let file = |v: &str| root.join(format!("var/lib/incus-os/recovery.{v}.key"));
    let mut want = vec![];
    for (i, (v, dev)) in [("root", "/dev/vda10"), ("swap", "/dev/vda9")]
        .iter()
        .enumerate()
    {
        assert_eq!(std::fs::read_to_string(file(v)).unwrap(), printed[i]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(file(v)).unwrap().permissions().mode() & 0o777,
            0o400
        );
        want.push(format!(
            "systemd-cryptenroll --unlock-tpm2-device=auto --wipe-slot=recovery,password {dev}"
        ));
        want.push(format!(
            "systemd-cryptenroll --unlock-tpm2-device=auto --recovery-key {dev}"
        ));
    }
    for (v, dev) in [("root", "/dev/vda10"), ("swap", "/dev/vda9")] {
        want.push(format!(
            "cryptsetup luksAddKey --batch-mode --key-file {} {dev} -",
            file(v).display()
        ));
    }
    assert_eq!(runs.iter().map(|r| r.0.clone()).collect::<Vec<_>>(), want);
    assert_eq!(runs[4].1, keys[0], "the operator key goes in on stdin");
    // Everything in place: a later start does nothing.
    ensure_recovery_keys(&rec, &root, &kernel, &rt, &app.store).unwrap();
    assert_eq!(rec.runs.lock().unwrap().len(), 6);
}

#[tokio::test]
async fn tpm_rebind_needs_a_reachable_systemd_before_anything_changes() {
    let rec = Arc::new(Recorder::default());
    let t = TestApp::new();
    efivar(t.root(), "SecureBoot", GLOBAL, &[1]);
    efivar(t.root(), "IncusOSTPMState", INCUS_OS, &[0, 0, 0, 1]);
    let rt = volumes(t.root());
    let (r, _app, _d) = t.security(rt).commands(rec.clone()).router();
    let (code, msg) = err(&call(&r, "POST", "/1.0/system/security/:tpm-rebind", "").await);
    assert_eq!(code, 503);
    assert!(
        msg.starts_with("cannot reboot: systemd is not reachable"),
        "{msg}"
    );
    assert!(rec.runs.lock().unwrap().is_empty());
}

#[tokio::test]
async fn secure_boot_updates_need_secure_boot() {
    let t = TestApp::new();
    efivar(t.root(), "SecureBoot", GLOBAL, &[0]);
    let (r, _, _d) = t.router();
    assert_eq!(
        err(&call(&r, "POST", "/1.0/debug/secureboot/:update", "x").await),
        (
            400,
            "cannot apply certificate update when Secure Boot is disabled".into()
        )
    );
    assert_eq!(
        err(&call(&r, "GET", "/1.0/debug/secureboot/:update", "").await).0,
        501
    );
}

#[tokio::test]
async fn in_an_incus_vm_asked_for_the_whole_agent_the_start_enables_it_and_the_status_says_so() {
    let systemd = Arc::new(incus_osd::testing::RecordingSystemd::new(true));
    let t = TestApp::new().systemd(systemd.clone());
    let root = t.root().to_path_buf();
    for (path, data) in [
        ("dev/virtio-ports/org.linuxcontainers.incus", ""),
        ("run/credentials/@system/fully-enable-incus-agent", "1"),
        ("etc/incus-agent.yml", "features:\n  guestapi: true\n"),
    ] {
        std::fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
        std::fs::write(root.join(path), data).unwrap();
    }
    let (r, app, _d) = t.router();
    incus_osd::system::agent::configure(&app).await;
    assert_eq!(systemd.jobs(), ["restart incus-agent.service"]);
    let yml = std::fs::read_to_string(root.join("etc/incus-agent.yml")).unwrap();
    assert!(
        yml.contains("exec: true") && yml.contains("port-forward: true"),
        "{yml}"
    );
    let (s, v) = call(&r, "GET", "/1.0/system/security", "").await;
    assert_eq!(s, 200, "{v}");
    let st = &v["metadata"]["state"];
    assert_eq!(st["system_state_is_trusted"], false);
    assert!(
        st["system_state_status"]
            .as_str()
            .unwrap()
            .contains("incus-agent is/was fully enabled"),
        "{st}"
    );

    // The credential gone at a later start: the features go off, the record stays.
    std::fs::remove_file(root.join("run/credentials/@system/fully-enable-incus-agent")).unwrap();
    incus_osd::system::agent::configure(&app).await;
    let yml = std::fs::read_to_string(root.join("etc/incus-agent.yml")).unwrap();
    assert!(yml.contains("exec: false"), "{yml}");
    assert_eq!(systemd.jobs().len(), 2);
    assert!(app.with_state(|s| s.doc().system.security.full_agent_enabled));
    // Nothing to change: no restart.
    incus_osd::system::agent::configure(&app).await;
    assert_eq!(systemd.jobs().len(), 2);
}
