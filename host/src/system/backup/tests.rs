//! The pure parts: entry names, skip values, the staging checks and caps, the validation
//! order and the composed document.

use std::io::Write;

use super::stage::{self, base_name, compose, validate, Limits, Skip, StageError};
use super::*;
use crate::state::{ApplicationRecord, Document};

fn gz_tar(items: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        vec![],
        flate2::Compression::fast(),
    ));
    for (name, data) in items {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_mode(0o600);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

#[test]
fn names_keep_the_base_name_and_refuse_the_rest() {
    assert_eq!(base_name(b"state.json").unwrap(), "state.json");
    assert_eq!(base_name(b"../../etc/passwd").unwrap(), "passwd");
    assert_eq!(
        base_name(b"/var/lib/incus-os/zpool.local.key").unwrap(),
        "zpool.local.key"
    );
    for bad in [&b""[..], b".", b"..", b"a/..", b"a/", b"a\0b"] {
        assert!(matches!(base_name(bad), Err(StageError::Bad(_))), "{bad:?}");
    }
    assert!(base_name(&[b'a'; 256]).is_err());
}

#[test]
fn skip_values_are_read_as_upstream_reads_them() {
    assert_eq!(Skip::from_query(None), Skip::default());
    let all = Skip {
        recovery_keys: true,
        local_key: true,
        network_macs: true,
    };
    assert_eq!(
        Skip::from_query(Some(
            "skip=encryption-recovery-keys,local-data-encryption-key,network-macs"
        )),
        all
    );
    assert_eq!(
        Skip::from_query(Some("x=1&skip=network-macs%2Cunknown")),
        Skip {
            network_macs: true,
            ..Default::default()
        }
    );
    assert_eq!(Skip::from_query(Some("skip=%zz")), Skip::default());
}

#[test]
fn runtime_files_and_application_entries_are_told_apart() {
    assert!(is_runtime("plugin-cache.json") && is_runtime("uploads") && is_runtime("starting"));
    assert!(is_runtime(".state.json.tmp.42") && is_runtime(".state.json.ab12.incus-osd-tmp"));
    assert!(!is_runtime("state.json") && !is_runtime(".state.json.tmp.x"));
    assert_eq!(app_entry("application.incus.tar.gz"), Some("incus"));
    assert_eq!(app_entry("application..tar.gz"), None);
    assert_eq!(app_entry_name("incus"), "application.incus.tar.gz");
}

#[test]
fn staging_caps_the_total_and_leaves_nothing_behind() {
    let root = tempfile::tempdir().unwrap();
    let current = root.path().join("incus-os");
    std::fs::create_dir(&current).unwrap();
    let limits = Limits {
        max_entries: 3,
        max_file_size: 10,
        max_total_size: 15,
    };
    let archive = gz_tar(&[("a", b"12345678"), ("b", b"12345678")]);
    let e = stage::stage(
        &archive[..],
        &current,
        root.path(),
        &Skip::default(),
        &limits,
    )
    .unwrap_err();
    assert_eq!(e.status(), 400);
    assert!(
        e.message().contains("unpacks to more than 15 bytes"),
        "{e:?}"
    );
    assert!(!root.path().join("incus-os.new").exists());

    let archive = gz_tar(&[("a", b"1"), ("b", b"2"), ("c", b"3"), ("d", b"4")]);
    let e = stage::stage(
        &archive[..],
        &current,
        root.path(),
        &Skip::default(),
        &limits,
    )
    .unwrap_err();
    assert!(e.message().contains("more than 3 entries"), "{e:?}");

    // A good one: files 0600 in a 0700 directory, removed when dropped.
    use std::os::unix::fs::PermissionsExt;
    let archive = gz_tar(&[("x/state.json", b"{}"), ("zpool.local.key", b"k")]);
    let staged = stage::stage(
        &archive[..],
        &current,
        root.path(),
        &Skip::default(),
        &limits,
    )
    .unwrap();
    assert_eq!(staged.files, ["state.json", "zpool.local.key"]);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&staged.dir), 0o700);
    assert_eq!(mode(&staged.dir.join("state.json")), 0o600);
    let dir = staged.dir.clone();
    drop(staged);
    assert!(!dir.exists());
}

#[test]
fn the_local_key_is_kept_with_the_skip_even_when_the_backup_has_none() {
    let root = tempfile::tempdir().unwrap();
    let current = root.path().join("incus-os");
    std::fs::create_dir(&current).unwrap();
    std::fs::write(current.join("zpool.local.key"), "mine").unwrap();
    let skip = Skip {
        local_key: true,
        ..Default::default()
    };
    let archive = gz_tar(&[("state.json", b"{}")]);
    let staged = stage::stage(
        &archive[..],
        &current,
        root.path(),
        &skip,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(staged.dir.join("zpool.local.key")).unwrap(),
        "mine"
    );
}

#[test]
fn a_corrupt_gzip_trailer_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let current = root.path().join("incus-os");
    std::fs::create_dir(&current).unwrap();
    let mut archive = gz_tar(&[("state.json", b"{}")]);
    let n = archive.len();
    archive[n - 8] ^= 0xff; // the CRC
    let e = stage::stage(
        &archive[..],
        &current,
        root.path(),
        &Skip::default(),
        &Limits::default(),
    )
    .unwrap_err();
    assert_eq!(e.status(), 400, "{e:?}");
}

fn backup_doc() -> Document {
    let mut d = Document::default();
    d.system.security.config.encryption_recovery_keys = vec!["k".into()];
    d.applications.insert(
        "incus".into(),
        ApplicationRecord {
            version: "1".into(),
            ..Default::default()
        },
    );
    d
}

#[test]
fn validation_goes_in_upstreams_order() {
    let primary = |n: &str| n == "incus";
    let mut d = Document::default();
    assert_eq!(
        validate(&d, "swtpm", primary).unwrap_err(),
        "TPM status isn't OK: swtpm"
    );
    assert_eq!(
        validate(&d, "ok", primary).unwrap_err(),
        "at least one recovery passphrase must be provided"
    );
    d.system.security.config.encryption_recovery_keys = vec!["k".into()];
    assert_eq!(validate(&d, "ok", primary).unwrap_err(), stage::NO_PRIMARY);
    validate(&backup_doc(), "ok", primary).unwrap();
    // A record without a version is not an install.
    let mut d = backup_doc();
    d.applications.get_mut("incus").unwrap().version.clear();
    assert!(validate(&d, "ok", primary).is_err());
}

#[test]
fn the_composed_document_keeps_os_applications_and_secure_boot_findings_live() {
    let mut live = Document::default();
    live.os.running_release = "live".into();
    live.system.security.using_swtpm = true;
    live.system.security.config.encryption_recovery_keys = vec!["live-key".into()];
    live.plugins
        .insert("iscsi".into(), serde_json::json!({"live": true}));
    let mut backup = backup_doc();
    backup.os.running_release = "old".into();
    backup.system.update.config.channel = "testing".into();
    backup
        .plugins
        .insert("lvm".into(), serde_json::json!({"b": 1}));
    let doc = compose(&live, &backup, &Skip::default());
    assert_eq!(doc.os.running_release, "live");
    assert!(doc.applications.is_empty());
    assert!(doc.system.security.using_swtpm);
    assert_eq!(doc.system.update.config.channel, "testing");
    assert_eq!(doc.system.security.config.encryption_recovery_keys, ["k"]);
    assert_eq!(doc.plugins.keys().collect::<Vec<_>>(), ["lvm"]);
    let skip = Skip {
        recovery_keys: true,
        ..Default::default()
    };
    let doc = compose(&live, &backup, &skip);
    assert_eq!(
        doc.system.security.config.encryption_recovery_keys,
        ["live-key"]
    );
}

#[test]
fn a_backup_writes_flat_entries_with_their_sizes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.key"), "bb").unwrap();
    std::fs::write(dir.path().join("a.key"), "a").unwrap();
    let files = state_files(dir.path()).unwrap();
    let mut app = temp_file(dir.path()).unwrap();
    app.write_all(b"gz").unwrap();
    std::io::Seek::rewind(&mut app).unwrap();
    let mut out = vec![];
    write_backup(files, vec![("x".into(), app, 2)], &mut out).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&out[..]));
    let got: Vec<(String, u64, u32)> = tar
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().display().to_string(),
                e.size(),
                e.header().mode().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("a.key".into(), 1, 0o600),
            ("b.key".into(), 2, 0o600),
            ("application.x.tar.gz".into(), 2, 0o600)
        ]
    );
}

#[test]
fn a_file_that_shrank_while_it_was_backed_up_fails_the_backup() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("state.json"), b"{}").unwrap();
    let file = File::open(dir.path().join("state.json")).unwrap();
    let files = vec![StateFile {
        name: "state.json".into(),
        file,
        size: 10,
    }];
    let e = write_backup(files, vec![], Vec::new()).unwrap_err();
    assert_eq!(e, "state.json shrank while it was backed up");
}
