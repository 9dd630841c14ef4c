//! A directory stands in for the volume (`DirVolume`; the FAT and ISO readers have their own
//! tests in `platform::volume`, and tier3_recovery reads a real stick); the certificates are made at test time,
//! the messages signed and verified by the real openssl, the hotfix run for real.

use std::path::Path;

use serde_json::json;

use super::*;
use crate::platform::exec::RealCommands;
use crate::platform::volume;
use crate::testing::SigningPki;

const RUNNING: &str = "202511041601";

struct Setup {
    pki: SigningPki,
    root: tempfile::TempDir,
    volume: tempfile::TempDir,
}

fn setup() -> Setup {
    let pki = SigningPki::new();
    let root = tempfile::tempdir().unwrap();
    pki.install(root.path());
    Setup {
        pki,
        root,
        volume: tempfile::tempdir().unwrap(),
    }
}

fn dir(s: &Setup) -> volume::DirVolume {
    volume::DirVolume(s.volume.path().to_path_buf())
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn put(dir: &Path, rel: &str, data: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// Puts an update of `version` on the volume: an EFI file and a usr image for this
/// architecture, one for another architecture (not on the volume), each gzipped, with
/// `update.sjson` signed through the update CA. `hash_of` may replace a listed hash.
fn put_update(s: &Setup, version: &str, hash_of: impl Fn(&str, String) -> String) {
    let arch = std::env::consts::ARCH;
    let efi = format!("{arch}/IncusOS_{version}.efi.gz");
    let usr = format!("{arch}/IncusOS_{version}.usr-x86-64.raw.gz");
    let mut files = vec![];
    for (name, content) in [(&efi, "the efi"), (&usr, "the usr image")] {
        let gz = gzip(content.as_bytes());
        put(s.volume.path(), &format!("update/{name}"), &gz);
        files.push(json!({
            "architecture": arch,
            "component": "os",
            "filename": name,
            "sha256": hash_of(name, sha(&gz)),
            "size": gz.len(),
            "type": "update-efi",
        }));
    }
    files.push(json!({
        "architecture": "riscv64",
        "component": "os",
        "filename": format!("riscv64/IncusOS_{version}.efi.gz"),
        "sha256": "00",
        "type": "update-efi",
    }));
    let update = json!({
        "format": "1.0",
        "channels": ["stable"],
        "files": files,
        "origin": "test",
        "published_at": "2026-01-01T00:00:00Z",
        "severity": "none",
        "version": version,
    });
    let signed = s.pki.sign_update(update.to_string().as_bytes());
    put(s.volume.path(), UPDATE_SJSON, &signed);
}

fn prepare(s: &Setup) -> Result<Option<String>, String> {
    prepare_update(
        &RealCommands,
        s.root.path(),
        &dir(s),
        RUNNING,
        std::env::consts::ARCH,
    )
}

fn updates_dir(s: &Setup) -> std::path::PathBuf {
    s.root.path().join("root/updates")
}

#[test]
fn a_signed_hotfix_runs_and_answers_its_output() {
    let s = setup();
    let scratch = tempfile::tempdir().unwrap();
    let marker = scratch.path().join("marker");
    let script = format!(
        "#!/bin/sh\necho fixed > '{}'\necho hotfix done\n",
        marker.display()
    );
    put(
        s.volume.path(),
        HOTFIX,
        &s.pki.sign_support(script.as_bytes()),
    );
    let out = run_hotfix(&RealCommands, s.root.path(), &dir(&s)).unwrap();
    assert_eq!(out.as_deref(), Some("hotfix done\n"));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "fixed\n");
}

#[test]
fn no_hotfix_no_update_is_nothing_to_do() {
    let s = setup();
    assert_eq!(run_hotfix(&RealCommands, s.root.path(), &dir(&s)), Ok(None));
    assert_eq!(prepare(&s), Ok(None));
    assert!(!updates_dir(&s).exists());
}

#[test]
fn unsigned_tampered_or_update_signed_hotfixes_are_refused_and_never_run() {
    let s = setup();
    let marker = tempfile::tempdir().unwrap();
    let m = marker.path().join("ran");
    let script = format!("#!/bin/sh\necho ran > '{}'\n", m.display());
    let signed = String::from_utf8(s.pki.sign_support(script.as_bytes())).unwrap();
    let cases: [(Vec<u8>, &str); 3] = [
        (
            script.clone().into_bytes(),
            "the script is not an S/MIME signed message",
        ),
        (
            signed.replace("echo ran", "echo RAN").into_bytes(),
            "the script signature is not valid: ",
        ),
        (
            s.pki.sign_update(script.as_bytes()),
            "the script is not signed through the expected support CA",
        ),
    ];
    for (body, want) in cases {
        put(s.volume.path(), HOTFIX, &body);
        let e = run_hotfix(&RealCommands, s.root.path(), &dir(&s)).unwrap_err();
        assert!(e.starts_with(want), "{e}");
        assert!(!m.exists(), "the hotfix ran");
    }
}

#[test]
fn a_signed_update_lands_in_the_debug_providers_directory() {
    let s = setup();
    put_update(&s, "202601010000", |_, h| h);
    assert_eq!(prepare(&s), Ok(Some("202601010000".to_string())));
    let dir = updates_dir(&s);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "IncusOS_202601010000.efi",
            "IncusOS_202601010000.usr-x86-64.raw",
            "RELEASE"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("IncusOS_202601010000.efi")).unwrap(),
        "the efi"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("RELEASE")).unwrap(),
        "202601010000\n"
    );
}

#[test]
fn the_running_version_itself_is_accepted_an_older_one_refused() {
    let s = setup();
    put_update(&s, RUNNING, |_, h| h);
    assert_eq!(prepare(&s), Ok(Some(RUNNING.to_string())));
    remove_updates(s.root.path());

    let s = setup();
    put_update(&s, "202511041600", |_, h| h);
    assert_eq!(
        prepare(&s),
        Err(format!(
            "refusing to apply update version (202511041600) that is older than the running version ({RUNNING})"
        ))
    );
    assert!(!updates_dir(&s).exists());
}

#[test]
fn a_wrong_hash_refuses_the_update_and_leaves_nothing_behind() {
    let s = setup();
    // The first file is good (and copied before the second is checked).
    put_update(&s, "202601010000", |name, h| {
        if name.contains(".usr-") {
            sha(b"something else")
        } else {
            h
        }
    });
    let e = prepare(&s).unwrap_err();
    assert!(e.starts_with("sha256 mismatch for file "), "{e}");
    assert!(!updates_dir(&s).exists());
}

#[test]
fn an_update_not_signed_through_the_update_ca_is_refused() {
    let s = setup();
    put_update(&s, "202601010000", |_, h| h);
    // Re-sign the same description through the support CA.
    let signed = std::fs::read(s.volume.path().join(UPDATE_SJSON)).unwrap();
    let content = script::verify_with(
        &RealCommands,
        s.root.path(),
        &signed,
        UPDATE_CA_PATH,
        UPDATE_NAMES,
    )
    .unwrap();
    put(s.volume.path(), UPDATE_SJSON, &s.pki.sign_support(&content));
    assert_eq!(
        prepare(&s),
        Err("the recovery update is not signed through the expected update CA".to_string())
    );
    assert!(!updates_dir(&s).exists());
}

#[test]
fn missing_files_are_skipped_but_one_must_be_there() {
    let s = setup();
    put_update(&s, "202601010000", |_, h| h);
    let arch = std::env::consts::ARCH;
    let update = s.volume.path().join("update").join(arch);
    std::fs::remove_file(update.join("IncusOS_202601010000.efi.gz")).unwrap();
    assert_eq!(prepare(&s), Ok(Some("202601010000".to_string())));
    assert!(updates_dir(&s)
        .join("IncusOS_202601010000.usr-x86-64.raw")
        .exists());
    remove_updates(s.root.path());
    std::fs::remove_dir_all(&update).unwrap();
    assert_eq!(
        prepare(&s),
        Err("the recovery volume holds none of the update's files".to_string())
    );
    assert!(!updates_dir(&s).exists());
}

#[test]
fn the_device_is_found_by_partition_label_then_by_label() {
    let root = tempfile::tempdir().unwrap();
    assert_eq!(find_device(root.path()), None);
    put(root.path(), "dev/disk/by-label/RESCUE_DATA", b"");
    assert_eq!(
        find_device(root.path()),
        Some(root.path().join("dev/disk/by-label/RESCUE_DATA"))
    );
    put(root.path(), "dev/disk/by-partlabel/RESCUE_DATA", b"");
    assert_eq!(
        find_device(root.path()),
        Some(root.path().join("dev/disk/by-partlabel/RESCUE_DATA"))
    );
}
