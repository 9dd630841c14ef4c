//! Tier 3: recovery-key changes of `PUT /1.0/system/security` on real LUKS2 containers (loop
//! devices standing in for the root and swap partitions) with the real `cryptsetup`, and
//! `:tpm-rebind` reading a real software TPM. Opening a LUKS mapping needs device-mapper,
//! which this kernel lacks: that step (`dmsetup info`, behind `encrypted_volumes`) is
//! tested at its boundary, so named.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use incus_osd::platform::exec::{Commands, Output, RealCommands};
use incus_osd::platform::PlatformError;
use incus_osd::system::security::{luks, Runtime};
use incus_osd::testing::call;
use incus_osd::testing::TestApp;
use incus_osd_test_machine::{tier3_or_return, LoopDevice, Swtpm};
use serde_json::{json, Value};
use tower::ServiceExt;

const OLD: &str = "old-key-1234-abcd!";
const NEW: &str = "foo-bar-biz-1234";

fn cryptsetup(args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new("cryptsetup")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cryptsetup is installed (tests/scripts/setup-tier3)");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// Whether `key` opens `dev` (no mapping is made).
fn opens(dev: &Path, key: &str) -> bool {
    let d = dev.to_str().unwrap();
    cryptsetup(
        &["open", "--test-passphrase", "--key-file", "-", d],
        key.as_bytes(),
    )
    .status
    .success()
}

fn keyslots(dev: &Path) -> luks::Slots {
    luks::slots(&RealCommands, dev).unwrap()
}

/// Two LUKS2 containers, each with the daemon's unlock key (written under the app's root)
/// and the operator key `OLD`; the app knows them as `root` and `swap`.
struct Disks {
    devices: BTreeMap<String, PathBuf>,
    _loops: Vec<LoopDevice>,
}

fn disks(root: &Path) -> Disks {
    let keys = root.join("var/lib/incus-os");
    std::fs::create_dir_all(&keys).unwrap();
    let mut devices = BTreeMap::new();
    let mut loops = vec![];
    for name in ["root", "swap"] {
        let lo = LoopDevice::new(32 << 20).unwrap();
        let dev = lo.path().to_path_buf();
        let unlock = keys.join(format!("recovery.{name}.key"));
        std::fs::write(
            &unlock,
            incus_osd::system::security::recovery::generate().unwrap(),
        )
        .unwrap();
        let d = dev.to_str().unwrap();
        let u = unlock.to_str().unwrap();
        let fast = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];
        let mut format = vec!["luksFormat", "--batch-mode", "--type", "luks2"];
        format.extend(fast);
        format.extend(["--key-file", u, d]);
        assert!(cryptsetup(&format, b"").status.success());
        let mut add = vec!["luksAddKey", "--batch-mode"];
        add.extend(fast);
        add.extend(["--key-file", u, d, "-"]);
        assert!(cryptsetup(&add, OLD.as_bytes()).status.success());
        devices.insert(name.to_string(), dev);
        loops.push(lo);
    }
    Disks {
        devices,
        _loops: loops,
    }
}

fn app_over(
    t: TestApp,
    d: &Disks,
    commands: Arc<dyn Commands>,
) -> (Router, Arc<incus_osd::api::App>, tempfile::TempDir) {
    let rt = Runtime {
        volumes: Some(d.devices.clone()),
        fast_key_derivation_for_tests: true,
        ..Default::default()
    };
    let (r, app, dir) = t.security(rt).commands(commands).router();
    app.with_state(|s| {
        s.update(|doc| doc.system.security.config.encryption_recovery_keys = vec![OLD.into()])
    })
    .unwrap();
    (r, app, dir)
}

#[tokio::test]
async fn a_new_key_replaces_the_old_one_on_both_volumes() {
    tier3_or_return!();
    let t = TestApp::new();
    let d = disks(t.root());
    let (r, app, _dir) = app_over(t, &d, Arc::new(RealCommands));
    for dev in d.devices.values() {
        assert_eq!(
            keyslots(dev).passwords().len(),
            2,
            "the daemon's key and OLD"
        );
    }

    // Add NEW, keep OLD.
    let body = json!({"config": {"encryption_recovery_keys": [OLD, NEW]}}).to_string();
    let (s, v) = call(&r, "PUT", "/1.0/system/security", &body).await;
    assert_eq!(s, 200, "{v}");
    for dev in d.devices.values() {
        assert!(opens(dev, NEW) && opens(dev, OLD));
        assert_eq!(keyslots(dev).keyslots.len(), 3);
    }
    // Remove OLD: only its slot goes.
    let body = json!({"config": {"encryption_recovery_keys": [NEW]}}).to_string();
    let (s, v) = call(&r, "PUT", "/1.0/system/security", &body).await;
    assert_eq!(s, 200, "{v}");
    for (name, dev) in &d.devices {
        assert!(opens(dev, NEW), "{name}");
        assert!(!opens(dev, OLD), "{name}");
        let unlock = std::fs::read_to_string(
            app.root
                .join(format!("var/lib/incus-os/recovery.{name}.key")),
        )
        .unwrap();
        assert!(opens(dev, &unlock), "the daemon's own key stays");
        assert_eq!(keyslots(dev).keyslots.len(), 2);
    }
    let stored = app.with_state(|s| {
        s.doc()
            .system
            .security
            .config
            .encryption_recovery_keys
            .clone()
    });
    assert_eq!(stored, vec![NEW]);
}

#[tokio::test]
async fn the_last_key_is_refused_and_the_slots_stay() {
    tier3_or_return!();
    let t = TestApp::new();
    let d = disks(t.root());
    let (r, _app, _dir) = app_over(t, &d, Arc::new(RealCommands));
    let before: Vec<luks::Slots> = d.devices.values().map(|p| keyslots(p)).collect();
    let body = json!({"config": {"encryption_recovery_keys": []}}).to_string();
    let (s, v) = call(&r, "PUT", "/1.0/system/security", &body).await;
    assert_eq!(
        (s.as_u16(), v["error"].as_str()),
        (400, Some("no encryption key provided"))
    );
    let after: Vec<luks::Slots> = d.devices.values().map(|p| keyslots(p)).collect();
    assert_eq!(before, after);
    for dev in d.devices.values() {
        assert!(opens(dev, OLD));
    }
}

#[tokio::test]
async fn a_failure_on_the_second_volume_leaves_the_slots_as_they_were() {
    tier3_or_return!();
    let t = TestApp::new();
    let d = disks(t.root());
    // The swap volume's unlock key file no longer opens it: adding there fails after the
    // root volume got the new key.
    std::fs::write(
        t.root().join("var/lib/incus-os/recovery.swap.key"),
        "not-the-right-key",
    )
    .unwrap();
    let (r, app, _dir) = app_over(t, &d, Arc::new(RealCommands));
    let before: Vec<luks::Slots> = d.devices.values().map(|p| keyslots(p)).collect();
    let body = json!({"config": {"encryption_recovery_keys": [NEW]}}).to_string();
    let (s, v) = call(&r, "PUT", "/1.0/system/security", &body).await;
    assert_eq!(s.as_u16(), 500, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.starts_with("Failed to run: cryptsetup luksAddKey"),
        "{msg}"
    );
    // cryptsetup's "no key available with this passphrase" exit status.
    assert!(msg.contains("recovery.swap.key"), "{msg}");
    assert!(msg.contains(": exit status 2 "), "{msg}");
    let after: Vec<luks::Slots> = d.devices.values().map(|p| keyslots(p)).collect();
    assert_eq!(before, after);
    for dev in d.devices.values() {
        assert!(!opens(dev, NEW), "the new key was taken back");
        assert!(opens(dev, OLD));
    }
    let stored = app.with_state(|s| {
        s.doc()
            .system
            .security
            .config
            .encryption_recovery_keys
            .clone()
    });
    assert_eq!(stored, vec![OLD]);
}

/// Records commands and answers `dmsetup info` as this kernel does (no device-mapper).
#[derive(Default)]
struct Recorder {
    runs: Mutex<Vec<String>>,
    stderr: String,
}

impl Commands for Recorder {
    fn run(&self, argv: &[String], stdin: &[u8], t: Duration) -> Result<Output, PlatformError> {
        self.runs.lock().unwrap().push(argv.join(" "));
        if argv[0] == "dmsetup" {
            return RealCommands.run(argv, stdin, t);
        }
        Ok(Output {
            status: 0,
            stdout: if argv[1] == "--help" {
                b"--tpm2-pcrlock=PATH".to_vec()
            } else {
                vec![]
            },
            stderr: self.stderr.as_bytes().to_vec(),
        })
    }
}

#[test]
fn volume_mapping_check_without_device_mapper_at_the_boundary() {
    tier3_or_return!();
    let rec = Recorder::default();
    let mut volumes = BTreeMap::new();
    volumes.insert("root".to_string(), PathBuf::from("/dev/loop-root"));
    volumes.insert("swap".to_string(), PathBuf::from("/dev/loop-swap"));
    // This kernel has no device-mapper: the real dmsetup fails, so both read as locked.
    let states = luks::volume_states(&rec, &volumes, true, || Ok("ok".into())).unwrap();
    assert_eq!(
        serde_json::to_value(&states).unwrap(),
        json!([{"volume": "root", "state": "locked"}, {"volume": "swap", "state": "locked"}])
    );
    assert_eq!(
        *rec.runs.lock().unwrap(),
        vec!["dmsetup info root", "dmsetup info swap"]
    );
    // With mappings (a fake that says so), the unlock path decides the text.
    struct Mapped;
    impl Commands for Mapped {
        fn run(&self, _: &[String], _: &[u8], _: Duration) -> Result<Output, PlatformError> {
            Ok(Output {
                status: 0,
                stdout: vec![],
                stderr: vec![],
            })
        }
    }
    let text = |all: bool, status: &'static str| {
        luks::volume_states(&Mapped, &volumes, all, || Ok(status.into())).unwrap()[0]
            .state
            .clone()
    };
    assert_eq!(text(true, "ok"), "unlocked (TPM)");
    assert_eq!(
        text(false, "pcr mismatch"),
        "unlocked (TPM; PCR update pending)"
    );
    assert_eq!(text(false, "ok"), "unlocked (recovery passphrase)");
}

/// A systemd that is there (the reboot request is only queued in these tests).
struct Reachable;

impl incus_osd::platform::systemd::Units for Reachable {
    fn unit(
        &self,
        _: incus_osd::platform::systemd::UnitAction,
        _: &str,
    ) -> Result<String, PlatformError> {
        Ok(String::new())
    }
    fn daemon_reload(&self) -> Result<(), PlatformError> {
        Ok(())
    }
}

impl incus_osd::platform::systemd::Systemd for Reachable {
    fn power(&self, _: incus_osd::platform::systemd::PowerAction) -> Result<(), PlatformError> {
        Ok(())
    }
    fn reachable(&self) -> Result<(), PlatformError> {
        Ok(())
    }
}

fn efivar(root: &Path, name: &str, guid: &str, data: &[u8]) {
    let dir = root.join("sys/firmware/efi/efivars");
    std::fs::create_dir_all(&dir).unwrap();
    let mut bytes = 6u32.to_le_bytes().to_vec();
    bytes.extend(data);
    std::fs::write(dir.join(format!("{name}-{guid}")), bytes).unwrap();
}

/// A UKI stand-in: a PE file whose `.pcrpkey` section is `key`.
fn uki(key: &[u8]) -> Vec<u8> {
    let mut pe = vec![0u8; 0x40];
    pe[..2].copy_from_slice(b"MZ");
    pe[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
    pe.extend(b"PE\0\0");
    let mut coff = [0u8; 20];
    coff[2] = 1;
    pe.extend(coff);
    let at = pe.len() + 40;
    let mut h = [0u8; 40];
    h[..8].copy_from_slice(b".pcrpkey");
    h[8..12].copy_from_slice(&(key.len() as u32).to_le_bytes());
    h[16..20].copy_from_slice(&(key.len() as u32).to_le_bytes());
    h[20..24].copy_from_slice(&(at as u32).to_le_bytes());
    pe.extend(h);
    pe.extend(key);
    pe
}

/// `:tpm-rebind` reads PCR 4 and 7 from a real swtpm; the enrollment itself (systemd 255's
/// `--tpm2-pcrs=<n>:sha256=<value>` syntax, newer than this machine's systemd) is checked
/// at its boundary: the exact command lines, and the already-enrolled workaround.
#[tokio::test]
async fn tpm_rebind_binds_to_the_swtpms_pcrs_at_the_cryptenroll_boundary() {
    tier3_or_return!();
    let swtpm = Swtpm::start().unwrap();
    {
        let mut tpm = incus_osd::platform::tpm::Tpm::open(&swtpm.tcti()).unwrap();
        tpm.extend_pcr(7, &[0x11; 32]).unwrap();
        tpm.extend_pcr(4, &[0x22; 32]).unwrap();
    }
    let (pcr4, pcr7) = {
        let mut tpm = incus_osd::platform::tpm::Tpm::open(&swtpm.tcti()).unwrap();
        (tpm.read_pcr(4).unwrap(), tpm.read_pcr(7).unwrap())
    };
    let hex = |v: &[u8]| incus_osd::platform::tpm::hex(v);
    let zeros = "0".repeat(64);

    for (secure_boot, already) in [(true, false), (false, true)] {
        let t = TestApp::new();
        let root = t.root().to_path_buf();
        efivar(
            &root,
            "SecureBoot",
            "8be4df61-93ca-11d2-aa0d-00e098032b8c",
            &[secure_boot as u8],
        );
        // The initrd used a recovery key for the last volume.
        efivar(
            &root,
            "IncusOSTPMState",
            "12f075e0-2d07-493d-811a-00920a72c04c",
            &[0, 0, 0, 1],
        );
        std::fs::create_dir_all(root.join("boot/EFI/Linux")).unwrap();
        std::fs::write(
            root.join("boot/EFI/Linux/IncusOS_202511041601.efi"),
            uki(b"PCR KEY PEM"),
        )
        .unwrap();
        std::fs::create_dir_all(root.join("var/lib/incus-os")).unwrap();
        std::fs::write(root.join("var/lib/incus-os/recovery.root.key"), "k").unwrap();
        let rec = Arc::new(Recorder {
            stderr: if already {
                "This PCR set is already enrolled, executing no operation.\n".into()
            } else {
                String::new()
            },
            ..Default::default()
        });
        let mut volumes = BTreeMap::new();
        volumes.insert("root".to_string(), PathBuf::from("/dev/vda10"));
        let rt = Runtime {
            volumes: Some(volumes),
            tpm_tcti: Some(swtpm.tcti()),
            ..Default::default()
        };
        let (r, app, _d) = t
            .security(rt)
            .commands(rec.clone())
            .systemd(Arc::new(Reachable))
            .router();
        app.with_state(|s| {
            s.update(|d| {
                d.os.name = "IncusOS".into();
                d.os.running_release = "202511041601".into();
            })
        })
        .unwrap();
        let (s, v) = call(&r, "POST", "/1.0/system/security/:tpm-rebind", "").await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            std::fs::read(root.join("run/systemd/tpm2-pcr-public-key.pem")).unwrap(),
            b"PCR KEY PEM"
        );
        let runs = rec.runs.lock().unwrap().clone();
        let unlock = root.join("var/lib/incus-os/recovery.root.key");
        let binding = if secure_boot {
            format!("--tpm2-pcrs=7:sha256={}+15:sha256={zeros}", hex(&pcr7))
        } else {
            format!(
                "--tpm2-pcrs=4:sha256={}+7:sha256={}+15:sha256={zeros}",
                hex(&pcr4),
                hex(&pcr7)
            )
        };
        let enroll = |b: &str| {
            format!(
                "systemd-cryptenroll --unlock-key-file={} --tpm2-device={} --wipe-slot=tpm2 --tpm2-pcrlock= {b} /dev/vda10",
                unlock.display(),
                swtpm.tcti()
            )
        };
        assert_eq!(runs[0], "systemd-cryptenroll --help");
        assert_eq!(runs[1], enroll(&binding));
        if already {
            // A random PCR 7 first, then the real binding again.
            assert_eq!(runs.len(), 4, "{runs:?}");
            assert!(runs[2].contains("--tpm2-pcrs=7:sha256="), "{}", runs[2]);
            assert!(!runs[2].contains(&hex(&pcr7)));
            assert_eq!(runs[3], enroll(&binding));
        } else {
            assert_eq!(runs.len(), 2, "{runs:?}");
        }
        // The reboot was handed to the lifecycle: a second power action is refused.
        assert!(app
            .request_power(incus_osd::platform::systemd::PowerAction::Reboot)
            .is_err());
    }
}

fn openssl(args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn gunzip_b64(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    use std::io::Read;
    let gz = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(s)
        .unwrap();
    let mut out = vec![];
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// A token as the images server reads it: `A` decrypts with the server's key to the
/// machine id and a timestamp, `B` verifies over `A` with the registered public key.
fn check_token(token: &str, pem: &str, dir: &Path) {
    let parts: Vec<&str> = token.split(':').collect();
    assert_eq!(parts.len(), 3, "{token}");
    assert_eq!(parts[0], "0123456789abcdef0123456789abcdef");
    let encrypted = gunzip_b64(parts[1]);
    let plain = openssl(
        &[
            "smime",
            "-decrypt",
            "-binary",
            "-inform",
            "DER",
            "-recip",
            dir.join("auth.crt").to_str().unwrap(),
            "-inkey",
            dir.join("auth.key").to_str().unwrap(),
        ],
        &encrypted,
    )
    .stdout;
    let stamp: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(stamp["machine_id"], "0123456789abcdef0123456789abcdef");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (stamp["timestamp"].as_i64().unwrap() - now).abs() < 60,
        "{stamp}"
    );
    let sig = gunzip_b64(parts[2]);
    assert_eq!(sig.len(), 64, "r and s, 32 bytes each");
    let der = incus_osd::platform::tpm::EcdsaSignature {
        r: sig[..32].to_vec(),
        s: sig[32..].to_vec(),
    }
    .to_der();
    std::fs::write(dir.join("sig.der"), der).unwrap();
    std::fs::write(dir.join("data"), &encrypted).unwrap();
    std::fs::write(dir.join("pub.pem"), pem).unwrap();
    let ok = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(dir.join("pub.pem"))
        .arg("-signature")
        .arg(dir.join("sig.der"))
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
}

#[tokio::test]
async fn registration_and_tokens_use_a_persistent_tpm_key_against_swtpm() {
    tier3_or_return!();
    let swtpm = Swtpm::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=images auth",
            "-days",
            "2",
            "-keyout",
            work.path().join("auth.key").to_str().unwrap(),
            "-out",
            work.path().join("auth.crt").to_str().unwrap(),
        ],
        b"",
    );
    let t = TestApp::new();
    let root = t.root().to_path_buf();
    std::fs::create_dir_all(root.join("usr/lib/incus-osd/certs")).unwrap();
    std::fs::copy(
        work.path().join("auth.crt"),
        root.join("usr/lib/incus-osd/certs/auth.crt"),
    )
    .unwrap();
    let rt = Runtime {
        tpm_tcti: Some(swtpm.tcti()),
        ..Default::default()
    };
    let (r, _app, _d) = t.security(rt).commands(Arc::new(RealCommands)).router();

    let (s, v) = call(
        &r,
        "POST",
        "/internal/auth/:generate-registration",
        r#"{"token":"reg-123"}"#,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let m = &v["metadata"];
    assert_eq!(m["machine_id"], "0123456789abcdef0123456789abcdef");
    assert_eq!(m["token"], "reg-123");
    let pem = m["public_key"].as_str().unwrap().to_string();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    assert_eq!(
        std::fs::read_to_string(root.join("var/lib/incus-os/tpm-auth.pem")).unwrap(),
        pem
    );
    check_token(m["initial"].as_str().unwrap(), &pem, work.path());

    // Later tokens use the same key, found again in the TPM by its public half.
    let (s, v) = call(&r, "POST", "/internal/auth/:generate-token", "").await;
    assert_eq!(s, 200, "{v}");
    check_token(v["metadata"].as_str().unwrap(), &pem, work.path());
    let (_, v) = call(&r, "GET", "/1.0/system/security", "").await;
    assert_eq!(v["metadata"]["state"]["tpm_public_key"], pem.as_str());
    {
        let mut tpm = incus_osd::platform::tpm::Tpm::open(&swtpm.tcti()).unwrap();
        assert_eq!(tpm.persistent_handles().unwrap(), vec![0x8100_0000]);
    }

    // A public half the TPM holds no key for is an error, not a new key.
    std::fs::write(
        root.join("var/lib/incus-os/tpm-auth.pem"),
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let (s, v) = call(&r, "POST", "/internal/auth/:generate-token", "").await;
    assert_eq!(s.as_u16(), 500);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("no persistent key matching"),
        "{v}"
    );
}

#[tokio::test]
async fn the_event_log_shows_pcrs_4_7_and_11_and_the_tpms_values() {
    tier3_or_return!();
    use incus_osd::platform::tpm::eventlog::{event_type::*, EventLog};
    use sha2::{Digest as _, Sha256};
    let swtpm = Swtpm::start().unwrap();
    let mut log = EventLog::sha256_only();
    // UEFI_VARIABLE_DATA of SecureBoot = 1, as firmware measures it.
    let global = incus_osd::system::security::secureboot::guid(
        0x8be4df61,
        0x93ca,
        0x11d2,
        [0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c],
    );
    let mut sb = global.to_vec();
    sb.extend(10u64.to_le_bytes());
    sb.extend(1u64.to_le_bytes());
    for c in "SecureBoot".encode_utf16() {
        sb.extend(c.to_le_bytes());
    }
    sb.push(1);
    let events: [(u32, u32, &[u8]); 4] = [
        (0, EV_SEPARATOR, b"\0\0\0\0"),
        (7, EV_EFI_VARIABLE_DRIVER_CONFIG, &sb),
        (
            4,
            EV_EFI_BOOT_SERVICES_APPLICATION,
            b"\\EFI\\BOOT\\BOOTX64.EFI",
        ),
        (11, EV_EFI_ACTION, b"enter-initrd"),
    ];
    {
        let mut tpm = incus_osd::platform::tpm::Tpm::open(&swtpm.tcti()).unwrap();
        for (pcr, kind, data) in events {
            let d: [u8; 32] = Sha256::digest(data).into();
            log.push(pcr, kind, d, data);
            tpm.extend_pcr(pcr, &d).unwrap();
        }
    }
    let t = TestApp::new();
    efivar(
        t.root(),
        "SecureBoot",
        "8be4df61-93ca-11d2-aa0d-00e098032b8c",
        &[1],
    );
    let p = t
        .root()
        .join("sys/kernel/security/tpm0/binary_bios_measurements");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, log.encode()).unwrap();
    let rt = Runtime {
        tpm_tcti: Some(swtpm.tcti()),
        ..Default::default()
    };
    let (r, app, _d) = t.security(rt).router();
    let (s, v) = call(&r, "GET", "/1.0/debug/secureboot/event-log", "").await;
    assert_eq!(s, 200, "{v}");
    let m = &v["metadata"];
    let b64 = |d: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(d)
    };
    let ev = m["event_log"].as_array().unwrap();
    assert_eq!(ev.len(), 3, "PCR 0 is left out: {m}");
    assert_eq!(
        ev[0],
        json!({"Index": 7, "Type": 0x8000_0001u32, "Data": b64(&sb),
               "Digest": b64(&Sha256::digest(&sb))})
    );
    let mut tpm = incus_osd::platform::tpm::Tpm::open(&swtpm.tcti()).unwrap();
    let hex = |v: [u8; 32]| incus_osd::platform::tpm::hex(&v);
    assert_eq!(m["pcr4"], hex(tpm.read_pcr(4).unwrap()));
    assert_eq!(m["pcr7"], hex(tpm.read_pcr(7).unwrap()));
    drop(tpm);
    // The log replays to the TPM's PCR 4 and 7, and PCR 7 predicted from the variables as
    // they are equals the TPM's.
    let (s, v) = call(&r, "GET", "/1.0/system/security", "").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["metadata"]["state"]["tpm_status"], "ok");
    // A variable changed since boot: the next boot measures another PCR 7.
    efivar(
        &app.root,
        "SecureBoot",
        "8be4df61-93ca-11d2-aa0d-00e098032b8c",
        &[0],
    );
    let (_, v) = call(&r, "GET", "/1.0/system/security", "").await;
    assert_eq!(v["metadata"]["state"]["tpm_status"], "pcr mismatch");
    // A log that does not replay to the TPM is an error.
    let mut tpm = incus_osd::platform::tpm::Tpm::open(&swtpm.tcti()).unwrap();
    tpm.extend_pcr(7, &[9; 32]).unwrap();
    drop(tpm);
    let (s, v) = call(&r, "GET", "/1.0/system/security", "").await;
    assert_eq!(s.as_u16(), 500, "{v}");
    assert!(v["error"].as_str().unwrap().contains("PCR 7"), "{v}");
}

/// Stands in for the firmware behind `efi-updatevar -a -f <file> <VAR>`: appends the
/// update's signature list to the variable's efivarfs file. Records every command.
struct Firmware {
    efivars: PathBuf,
    runs: Mutex<Vec<String>>,
}

impl Commands for Firmware {
    fn run(&self, argv: &[String], _: &[u8], _: Duration) -> Result<Output, PlatformError> {
        self.runs.lock().unwrap().push(argv.join(" "));
        if argv[0] == "efi-updatevar" {
            let auth = std::fs::read(&argv[3]).unwrap();
            let var = &argv[4];
            let guid = if var == "KEK" {
                "8be4df61-93ca-11d2-aa0d-00e098032b8c"
            } else {
                "d719b2cb-3d3a-4596-a3bc-dad00e67656f"
            };
            let path = self.efivars.join(format!("{var}-{guid}"));
            let mut data = std::fs::read(&path).unwrap();
            data.extend(&auth[16 + 24..]);
            std::fs::write(&path, data).unwrap();
        }
        Ok(Output {
            status: 0,
            stdout: vec![],
            stderr: vec![],
        })
    }
}

fn cert_list(der: &[u8]) -> Vec<u8> {
    let mut out = incus_osd::system::security::secureboot::X509_TYPE.to_vec();
    out.extend(((28 + 16 + der.len()) as u32).to_le_bytes());
    out.extend(0u32.to_le_bytes());
    out.extend(((16 + der.len()) as u32).to_le_bytes());
    out.extend([0u8; 16]);
    out.extend(der);
    out
}

/// `UEFI_VARIABLE_DATA` as firmware measures a variable into PCR 7.
fn variable_data(guid: [u8; 16], name: &str, data: &[u8]) -> Vec<u8> {
    let units: Vec<u16> = name.encode_utf16().collect();
    let mut out = guid.to_vec();
    out.extend((units.len() as u64).to_le_bytes());
    out.extend((data.len() as u64).to_le_bytes());
    for u in units {
        out.extend(u.to_le_bytes());
    }
    out.extend(data);
    out
}

/// A machine with Secure Boot on (a KEK and an old db certificate enrolled, the boot's
/// event log replayed into swtpm) and a key update archive holding the enrolled KEK and a
/// new db certificate.
struct DbUpdate {
    t: Option<TestApp>,
    root: PathBuf,
    swtpm: Swtpm,
    fw: Arc<Firmware>,
    rt: Option<Runtime>,
    archive: Vec<u8>,
    next7: [u8; 32],
}

impl DbUpdate {
    fn new() -> DbUpdate {
        use incus_osd::platform::tpm::eventlog::{event_type::*, EventLog};
        use incus_osd::system::security::secureboot::guid;
        use sha2::{Digest as _, Sha256};
        let new_cert = |cn: &str| {
            let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p.self_signed(&rcgen::KeyPair::generate().unwrap())
                .unwrap()
                .der()
                .to_vec()
        };
        let (kek, db_old, db_new) = (new_cert("KEK"), new_cert("db 2023"), new_cert("db 2026"));
        let fp = |d: &[u8]| incus_osd::platform::tpm::hex(&Sha256::digest(d));
        let image_security = guid(
            0xd719b2cb,
            0x3d3a,
            0x4596,
            [0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f],
        );

        let t = TestApp::new();
        let root = t.root().to_path_buf();
        efivar(
            &root,
            "SecureBoot",
            "8be4df61-93ca-11d2-aa0d-00e098032b8c",
            &[1],
        );
        efivar(
            &root,
            "KEK",
            "8be4df61-93ca-11d2-aa0d-00e098032b8c",
            &cert_list(&kek),
        );
        efivar(
            &root,
            "db",
            "d719b2cb-3d3a-4596-a3bc-dad00e67656f",
            &cert_list(&db_old),
        );
        std::fs::create_dir_all(root.join("var/lib/incus-os")).unwrap();
        std::fs::write(root.join("var/lib/incus-os/recovery.root.key"), "k").unwrap();
        // The boot measured db as it is; swtpm holds what the log replays to.
        let swtpm = Swtpm::start().unwrap();
        let measured = variable_data(image_security, "db", &cert_list(&db_old));
        let mut log = EventLog::sha256_only();
        {
            let mut tpm = incus_osd::platform::tpm::Tpm::open(&swtpm.tcti()).unwrap();
            for (pcr, kind, data) in [
                (7, EV_EFI_VARIABLE_DRIVER_CONFIG, measured.clone()),
                (7, EV_SEPARATOR, vec![0u8; 4]),
            ] {
                let d: [u8; 32] = Sha256::digest(&data).into();
                log.push(pcr, kind, d, &data);
                tpm.extend_pcr(pcr, &d).unwrap();
            }
        }
        let p = root.join("sys/kernel/security/tpm0/binary_bios_measurements");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, log.encode()).unwrap();

        let fw = Arc::new(Firmware {
            efivars: root.join("sys/firmware/efi/efivars"),
            runs: Mutex::new(vec![]),
        });
        let mut volumes = BTreeMap::new();
        volumes.insert("root".to_string(), PathBuf::from("/dev/vda10"));
        let rt = Runtime {
            volumes: Some(volumes),
            tpm_tcti: Some(swtpm.tcti()),
            ..Default::default()
        };

        // A KEK already enrolled is skipped; the new db certificate is applied.
        let auth = |der: &[u8]| {
            let mut out = vec![0u8; 16];
            out.extend(24u32.to_le_bytes());
            out.extend([0u8; 20]);
            out.extend(cert_list(der));
            out
        };
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in [
            (format!("KEK_{}.auth", fp(&kek)), auth(&kek)),
            (format!("db_{}.auth", fp(&db_new)), auth(&db_new)),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        let archive = b.into_inner().unwrap();

        // The next boot measures db with both certificates: computed here independently.
        let new_db = [cert_list(&db_old), cert_list(&db_new)].concat();
        let ext = |old: [u8; 32], d: [u8; 32]| -> [u8; 32] {
            Sha256::digest([&old[..], &d[..]].concat()).into()
        };
        let next7 = ext(
            ext(
                [0; 32],
                Sha256::digest(variable_data(image_security, "db", &new_db)).into(),
            ),
            Sha256::digest([0u8; 4]).into(),
        );
        DbUpdate {
            t: Some(t),
            root,
            swtpm,
            fw,
            rt: Some(rt),
            archive,
            next7,
        }
    }

    /// The commands the update ran: the db variable appended, the volume re-bound to the
    /// next PCR 7.
    #[track_caller]
    fn assert_applied(&self) {
        let runs = self.fw.runs.lock().unwrap().clone();
        let db_file = self
            .root
            .join("sys/firmware/efi/efivars/db-d719b2cb-3d3a-4596-a3bc-dad00e67656f");
        assert_eq!(runs[0], format!("chattr -i {}", db_file.display()));
        assert!(
            runs[1].starts_with("efi-updatevar -a -f ") && runs[1].ends_with(" db"),
            "{}",
            runs[1]
        );
        assert_eq!(runs[2], "systemd-cryptenroll --help");
        assert_eq!(
            runs[3],
            format!(
                "systemd-cryptenroll --unlock-key-file={} --tpm2-device={} --wipe-slot=tpm2 {} /dev/vda10",
                self.root.join("var/lib/incus-os/recovery.root.key").display(),
                self.swtpm.tcti(),
                format_args!(
                    "--tpm2-pcrs=7:sha256={}+15:sha256={}",
                    incus_osd::platform::tpm::hex(&self.next7),
                    "0".repeat(64)
                )
            )
        );
        assert_eq!(runs.len(), 4, "{runs:?}");
    }
}

#[tokio::test]
async fn a_db_update_is_appended_and_the_volumes_bound_to_the_next_pcr7() {
    tier3_or_return!();
    let mut m = DbUpdate::new();
    let t = m.t.take().unwrap().security(m.rt.take().unwrap());
    let (r, _app, _d) = t.commands(m.fw.clone()).router();
    let req = Request::builder()
        .method("POST")
        .uri("/1.0/debug/secureboot/:update")
        .body(Body::from(m.archive.clone()))
        .unwrap();
    let resp = r.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    m.assert_applied();

    // Applied: the same archive has nothing left to do.
    let req = Request::builder()
        .method("POST")
        .uri("/1.0/debug/secureboot/:update")
        .body(Body::from(m.archive.clone()))
        .unwrap();
    let resp = r.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(m.fw.runs.lock().unwrap().len(), 4);
}

/// The provider under test for Secure Boot key updates: offers `version` with one file,
/// the archive in `archive` (base64).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct KeyOffer {
    version: String,
    archive: String,
}

struct KeyProvider {
    host: plugin_api::Host,
}

impl plugin_api::Provider for KeyProvider {
    const NAME: &'static str = "images";
    type Config = KeyOffer;
    type State = Value;
    fn new(host: plugin_api::Host) -> plugin_api::Result<Self> {
        Ok(KeyProvider { host })
    }
    fn state(&self, _: &KeyOffer) -> plugin_api::Result<Value> {
        Ok(json!({}))
    }
    fn lookup(
        &self,
        c: &KeyOffer,
        _: &plugin_api::provider::UpdateContext,
        t: &plugin_api::provider::Target,
    ) -> plugin_api::Result<Option<plugin_api::provider::Release>> {
        use plugin_api::provider::{Release, ReleaseFile, Target};
        Ok(match t {
            Target::SecureBoot if !c.version.is_empty() => Some(Release {
                version: c.version.clone(),
                files: vec![ReleaseFile {
                    component: "os".into(),
                    file_type: "update-secureboot".into(),
                    filename: format!("SecureBootKeys_{}.tar", c.version),
                    ..ReleaseFile::default()
                }],
                ..Release::default()
            }),
            _ => None,
        })
    }
    fn fetch(
        &self,
        c: &KeyOffer,
        order: &plugin_api::provider::FetchOrder,
    ) -> plugin_api::Result<Vec<String>> {
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD
            .decode(&c.archive)
            .unwrap();
        let mut out = vec![];
        for f in &order.release.files {
            let path = format!("{}/{}", order.target_dir, f.target_name());
            self.host.write_file(&path, &data, 0o644)?;
            out.push(path);
        }
        Ok(out)
    }
}

#[tokio::test]
async fn the_update_check_applies_the_providers_secure_boot_key_update_one_certificate_a_run() {
    tier3_or_return!();
    use base64::Engine as _;
    use incus_osd::system::update::{runner, schedule::CheckKind};
    let mut m = DbUpdate::new();
    let t = m.t.take().unwrap().security(m.rt.take().unwrap());
    let (r, app, _d) = t.provider::<KeyProvider>().commands(m.fw.clone()).router();
    let offer = |version: &str| {
        json!({"config": {"name": "images", "config": {
            "version": version,
            "archive": base64::engine::general_purpose::STANDARD.encode(&m.archive),
        }}})
        .to_string()
    };
    let (s, v) = call(&r, "PUT", "/1.0/system/provider", &offer("202601010000")).await;
    assert_eq!(s, 200, "{v}");
    let record = || app.with_state(|s| s.doc().system.security.secure_boot.clone());

    // The db certificate goes in; a reboot is needed, the record is not complete yet.
    runner::check(&app, CheckKind::UserRequested, false, false)
        .await
        .unwrap();
    m.assert_applied();
    assert!(app.updates.status.needs_reboot());
    assert_eq!(record().version, "");
    assert!(!record().fully_applied);
    assert!(
        !m.root.join("var/lib/incus-os/secureboot-updates").exists(),
        "the downloaded archive is left behind"
    );
    // While the reboot is pending, nothing more is taken.
    runner::check(&app, CheckKind::UserRequested, false, false)
        .await
        .unwrap();
    assert_eq!(m.fw.runs.lock().unwrap().len(), 4);

    // After the reboot: nothing is left to apply, the version is recorded as complete.
    app.updates.status.set_needs_reboot(false); // as the reboot does
    runner::check(&app, CheckKind::UserRequested, false, false)
        .await
        .unwrap();
    assert_eq!(m.fw.runs.lock().unwrap().len(), 4);
    assert_eq!(record().version, "202601010000");
    assert!(record().fully_applied);

    // An older key update is refused, naming both versions; nothing is run.
    let (s, v) = call(&r, "PUT", "/1.0/system/provider", &offer("202501010000")).await;
    assert_eq!(s, 200, "{v}");
    let e = runner::check(&app, CheckKind::UserRequested, false, false)
        .await
        .unwrap_err();
    assert_eq!(
        e,
        "Failed to apply the Secure Boot key update: refusing to apply Secure Boot key update \
         version (202501010000) that is older than the applied one (202601010000)"
    );
    assert_eq!(m.fw.runs.lock().unwrap().len(), 4);
}
