//! The SDK's backup archives: a round trip keeps the tree, and every hostile archive is
//! refused with a clear error, nothing written outside, the previous tree intact.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use plugin_api::sdk::archive::{
    backup_check, backup_dir, prepare_restore, restore_into, restore_swap, Exclusions, Limits,
};

// ----- building archives byte by byte (the tar crate's builder refuses what we need) -----

fn header(name: &[u8], kind: u8, size: u64, link: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(size);
    h.set_mtime(1_600_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::new(kind));
    let b = h.as_mut_bytes();
    b[..100].fill(0);
    b[..name.len()].copy_from_slice(name);
    b[157..257].fill(0);
    b[157..157 + link.len()].copy_from_slice(link);
    h.set_cksum();
    h.as_bytes().to_vec()
}

fn padded(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(data.len().div_ceil(512) * 512, 0);
    v
}

fn entry(name: &str, kind: u8, data: &[u8], link: &str) -> Vec<u8> {
    let mut v = header(name.as_bytes(), kind, data.len() as u64, link.as_bytes());
    v.extend(padded(data));
    v
}

fn file(name: &str, data: &str) -> Vec<u8> {
    entry(name, b'0', data.as_bytes(), "")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// A whole archive: the entries, the end-of-archive marker, gzip.
fn archive(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut tar = entries.concat();
    tar.extend([0u8; 1024]);
    gzip(&tar)
}

// ----- a scene: an application directory with data, and a directory beside it -----

struct Scene {
    tmp: tempfile::TempDir,
    app: PathBuf,
    outside: PathBuf,
}

fn scene() -> Scene {
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("app");
    let outside = tmp.path().join("outside");
    fs::create_dir(&app).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(app.join("keep"), "old data").unwrap();
    Scene { tmp, app, outside }
}

impl Scene {
    /// The old tree is as it was, nothing was left beside it, nothing written outside.
    fn assert_untouched(&self) {
        assert_eq!(
            fs::read_to_string(self.app.join("keep")).unwrap(),
            "old data"
        );
        assert_eq!(fs::read_dir(&self.app).unwrap().count(), 1);
        let mut beside: Vec<_> = fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        beside.sort();
        assert_eq!(beside, ["app", "outside"]);
        assert_eq!(fs::read_dir(&self.outside).unwrap().count(), 0);
    }

    /// Restores `archive` and expects a refusal whose message has `expect`.
    fn refused(&self, archive: &[u8], limits: &Limits, expect: &str) {
        let err = restore_swap(archive, &self.app, limits).unwrap_err();
        assert!(
            err.message.contains(expect),
            "expected {expect:?} in {:?}",
            err.message
        );
        self.assert_untouched();
    }
}

fn refused(archive: &[u8], expect: &str) {
    scene().refused(archive, &Limits::default(), expect);
}

// ----- round trip -----

/// Every entry of a tree: kind, mode, mtime and content or link target.
fn listing(dir: &Path) -> BTreeMap<String, (String, u32, i64, String)> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (String, u32, i64, String)>) {
        for e in fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let m = fs::symlink_metadata(&path).unwrap();
            let (kind, what) = if m.is_symlink() {
                (
                    "link",
                    fs::read_link(&path).unwrap().to_string_lossy().into_owned(),
                )
            } else if m.is_dir() {
                walk(root, &path, out);
                ("dir", String::new())
            } else {
                ("file", fs::read_to_string(&path).unwrap())
            };
            let mode = if m.is_symlink() { 0 } else { m.mode() & 0o7777 };
            out.insert(rel, (kind.to_string(), mode, m.mtime(), what));
        }
    }
    walk(dir, dir, &mut out);
    out
}

fn set_mtime(path: &Path, secs: u64) {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    File::open(path).unwrap().set_modified(t).unwrap();
}

fn sample_tree(dir: &Path) {
    fs::create_dir_all(dir.join("db/global")).unwrap();
    fs::create_dir(dir.join("empty")).unwrap();
    fs::create_dir(dir.join("artifacts")).unwrap();
    fs::write(dir.join("artifacts/big.img"), "cached").unwrap();
    fs::write(dir.join("db/global/db.bin"), "database").unwrap();
    fs::write(dir.join("tool"), "#!/bin/sh\n").unwrap();
    fs::write(dir.join("unix.socket"), "pretend socket").unwrap();
    fs::set_permissions(dir.join("tool"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(
        dir.join("db/global/db.bin"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    symlink("db/global/db.bin", dir.join("current")).unwrap();
    symlink("../tool", dir.join("db/tool")).unwrap();
    set_mtime(&dir.join("tool"), 1_500_000_000);
    set_mtime(&dir.join("db/global/db.bin"), 1_500_000_100);
    fs::set_permissions(dir.join("empty"), fs::Permissions::from_mode(0o500)).unwrap();
    set_mtime(&dir.join("empty"), 1_400_000_000);
    fs::set_permissions(dir.join("db/global"), fs::Permissions::from_mode(0o750)).unwrap();
    set_mtime(&dir.join("db/global"), 1_400_000_100);
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::lchown(dir.join("tool"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(dir.join("current"), Some(4321), Some(8765)).unwrap();
    }
}

const EXCLUDE: Exclusions<'static> = Exclusions {
    always: &["unix.socket"],
    unless_complete: &["artifacts"],
};

#[test]
fn a_tree_round_trips_with_modes_mtimes_and_links_and_the_swap_replaces_the_old_one() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    sample_tree(&src);

    let mut bytes = Vec::new();
    let summary = backup_dir(&src, &mut bytes, &EXCLUDE, true).unwrap();
    assert_eq!(summary, backup_check(&src, &EXCLUDE, true).unwrap());
    // The same tree gives the same archive, byte for byte.
    let mut again = Vec::new();
    backup_dir(&src, &mut again, &EXCLUDE, true).unwrap();
    assert_eq!(bytes, again);

    let s = scene();
    let restored = restore_swap(bytes.as_slice(), &s.app, &Limits::default()).unwrap();
    assert_eq!(restored, summary);
    let mut want = listing(&src);
    want.remove("unix.socket");
    assert_eq!(listing(&s.app), want);
    if rustix::process::geteuid().is_root() {
        // Owners are kept when restoring as root (the daemon's case), links' own included.
        let tool = fs::symlink_metadata(s.app.join("tool")).unwrap();
        assert_eq!((tool.uid(), tool.gid()), (1234, 5678));
        let link = fs::symlink_metadata(s.app.join("current")).unwrap();
        assert_eq!((link.uid(), link.gid()), (4321, 8765));
    }
    assert!(!s.app.join("keep").exists(), "the old tree was replaced");
    let beside: Vec<_> = fs::read_dir(s.tmp.path()).unwrap().collect();
    assert_eq!(beside.len(), 2, "no .new or .old left beside the tree");
}

#[test]
fn a_backup_leaves_out_exclusions_and_cached_artifacts_unless_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    sample_tree(&src);
    let mut bytes = Vec::new();
    let summary = backup_dir(&src, &mut bytes, &EXCLUDE, false).unwrap();
    let dest = tmp.path().join("dest");
    fs::create_dir(&dest).unwrap();
    assert_eq!(
        restore_into(bytes.as_slice(), &dest, &Limits::default()).unwrap(),
        summary
    );
    assert!(!dest.join("artifacts").exists());
    assert!(!dest.join("unix.socket").exists());
    assert!(dest.join("db/global/db.bin").exists());
}

#[test]
fn a_socket_fails_the_dry_run_before_any_byte_unless_excluded() {
    let tmp = tempfile::tempdir().unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(tmp.path().join("unix.socket")).unwrap();
    let err = backup_check(tmp.path(), &Exclusions::NONE, false).unwrap_err();
    assert!(
        err.message.contains("unsupported file: \"unix.socket\""),
        "{}",
        err.message
    );
    backup_check(tmp.path(), &EXCLUDE, false).unwrap();
}

#[test]
fn setid_bits_are_dropped_unless_allowed() {
    let mut h = header(b"su", b'0', 1, b"");
    let mut hdr = tar::Header::from_byte_slice(&h).clone();
    hdr.set_mode(0o4755);
    hdr.set_cksum();
    h = hdr.as_bytes().to_vec();
    h.extend(padded(b"x"));
    let raw = archive(&[h]);
    let tmp = tempfile::tempdir().unwrap();
    restore_into(raw.as_slice(), tmp.path(), &Limits::default()).unwrap();
    assert_eq!(
        fs::metadata(tmp.path().join("su")).unwrap().mode() & 0o7777,
        0o755
    );
    let tmp = tempfile::tempdir().unwrap();
    let allow = Limits {
        allow_setid: true,
        ..Limits::default()
    };
    restore_into(raw.as_slice(), tmp.path(), &allow).unwrap();
    assert_eq!(
        fs::metadata(tmp.path().join("su")).unwrap().mode() & 0o7777,
        0o4755
    );
}

#[test]
fn an_absolute_link_under_the_final_root_is_kept() {
    let a = archive(&[
        entry("containers", b'5', b"", ""),
        entry("pool", b'5', b"", ""),
        entry("containers/c1", b'2', b"", "/var/lib/app/pool"),
    ]);
    refused(&a, "points outside of the application root");
    let s = scene();
    let limits = Limits {
        root_path: Some("/var/lib/app".into()),
        ..Limits::default()
    };
    restore_swap(a.as_slice(), &s.app, &limits).unwrap();
    assert_eq!(
        fs::read_link(s.app.join("containers/c1")).unwrap(),
        Path::new("/var/lib/app/pool")
    );
    let b = archive(&[entry("c1", b'2', b"", "/var/lib/app/../other")]);
    scene().refused(&b, &limits, "points outside of the application root");
}

#[test]
fn prepared_restore_dropped_without_swap_changes_nothing() {
    let s = scene();
    let a = archive(&[file("new", "new data")]);
    let prepared = prepare_restore(a.as_slice(), &s.app, &Limits::default()).unwrap();
    assert_eq!(prepared.summary().entries, 1);
    drop(prepared);
    s.assert_untouched();
}

// ----- hostile archives -----

#[test]
fn a_dotdot_name_is_refused() {
    refused(&archive(&[file("../outside/escape", "x")]), "'..'");
    refused(&archive(&[file("a/../../outside/escape", "x")]), "'..'");
}

#[test]
fn an_absolute_name_is_refused() {
    let s = scene();
    let abs = format!("{}/abs", s.outside.display());
    assert!(abs.len() < 100);
    s.refused(
        &archive(&[file(&abs, "x")]),
        &Limits::default(),
        "absolute name",
    );
}

#[test]
fn a_link_out_then_a_write_through_it_is_refused_at_the_link() {
    let s = scene();
    let out = s.outside.display().to_string();
    s.refused(
        &archive(&[entry("x", b'2', b"", &out), file("x/y", "through")]),
        &Limits::default(),
        "points outside of the application root",
    );
}

#[test]
fn a_write_through_any_link_is_refused_even_one_pointing_inside() {
    refused(
        &archive(&[
            entry("sub", b'5', b"", ""),
            entry("x", b'2', b"", "sub"),
            file("x/y", "through"),
        ]),
        "written through \"x\", which is a symlink or a file",
    );
    // Through a file too.
    refused(
        &archive(&[file("f", "x"), file("f/y", "y")]),
        "written through \"f\"",
    );
}

#[test]
fn relative_links_pointing_out_are_refused_lexically_and_through_chains() {
    refused(
        &archive(&[entry("up", b'2', b"", "../outside")]),
        "points outside",
    );
    refused(
        &archive(&[
            entry("d", b'5', b"", ""),
            entry("d/up", b'2', b"", "../../outside"),
        ]),
        "points outside",
    );
    // Each link stays inside on its own; followed one after the other they leave.
    refused(
        &archive(&[
            entry("d", b'5', b"", ""),
            entry("d/b", b'2', b"", ".."),
            entry("a", b'2', b"", "d/b/../outside"),
        ]),
        "through other links it points outside",
    );
    // The same, the link that completes the escape coming last.
    refused(
        &archive(&[
            entry("a", b'2', b"", "d/b/../outside"),
            entry("d", b'5', b"", ""),
            entry("d/b", b'2', b"", ".."),
        ]),
        "through other links it points outside",
    );
}

#[test]
fn hard_links_are_refused() {
    refused(
        &archive(&[entry("passwd", b'1', b"", "/etc/passwd")]),
        "hard links are not supported",
    );
    refused(
        &archive(&[file("a", "x"), entry("b", b'1', b"", "a")]),
        "hard links are not supported",
    );
}

#[test]
fn device_nodes_fifos_and_other_types_are_refused() {
    refused(&archive(&[entry("tty", b'3', b"", "")]), "device node");
    refused(&archive(&[entry("sda", b'4', b"", "")]), "device node");
    refused(&archive(&[entry("pipe", b'6', b"", "")]), "FIFO");
    refused(&archive(&[entry("odd", b'7', b"", "")]), "unsupported file");
}

#[test]
fn a_megabyte_long_name_is_refused_without_reading_it_whole() {
    let mut long = vec![b'a'; 1 << 20];
    long.push(0);
    let mut l = header(b"././@LongLink", b'L', long.len() as u64, b"");
    l.extend(padded(&long));
    refused(
        &archive(&[l.clone(), file("x", "x")]),
        "long name of 1048577 bytes",
    );
    // Allowed as a record, still too long as a name.
    let s = scene();
    let limits = Limits {
        max_extension_len: 2 << 20,
        ..Limits::default()
    };
    s.refused(
        &archive(&[l, file("x", "x")]),
        &limits,
        "entry name of 1048576 bytes",
    );
    // The same through PAX.
    let record = {
        let body = format!("path={}\n", "b".repeat(1 << 20));
        let mut n = body.len() + 8;
        loop {
            let r = format!("{n} {body}");
            if r.len() == n {
                break r;
            }
            n = r.len();
        }
    };
    let mut x = header(b"pax", b'x', record.len() as u64, b"");
    x.extend(padded(record.as_bytes()));
    refused(&archive(&[x, file("x", "x")]), "PAX header of");
}

#[test]
fn a_header_claiming_100_gb_is_refused_or_found_truncated() {
    let mut h = header(b"huge", b'0', 100 << 30, b"");
    h.extend(padded(b"only this"));
    let a = gzip(&h);
    let s = scene();
    let limits = Limits {
        max_total_size: 1 << 30,
        ..Limits::default()
    };
    s.refused(&a, &limits, "more than 1073741824 bytes");
    refused(&a, "truncated");
}

#[test]
fn truncation_mid_file_is_refused() {
    let mut tar = file("a", "complete");
    tar.extend(header(b"b", b'0', 10_000, b""));
    tar.extend(vec![b'z'; 3000]);
    refused(&gzip(&tar), "truncated (in \"b\"");
}

#[test]
fn a_missing_end_marker_is_refused() {
    refused(&gzip(&file("a", "complete")), "end-of-archive marker");
}

#[test]
fn truncated_or_corrupt_gzip_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("f"), vec![7u8; 300_000]).unwrap();
    let mut whole = Vec::new();
    backup_dir(tmp.path(), &mut whole, &Exclusions::NONE, false).unwrap();
    refused(&whole[..whole.len() / 2], "cannot read the archive");
    refused(&whole[..whole.len() - 4], "cannot read the archive");
    let mut flipped = whole.clone();
    let n = flipped.len();
    flipped[n - 6] ^= 0xff; // the CRC in the trailer
    refused(&flipped, "cannot read the archive");
}

#[test]
fn input_that_is_not_gzip_is_refused() {
    refused(
        b"this is not a gzip stream at all",
        "cannot read the archive",
    );
    let mut plain_tar = file("a", "x");
    plain_tar.extend([0u8; 1024]);
    refused(&plain_tar, "cannot read the archive");
}

#[test]
fn too_many_entries_are_refused() {
    let s = scene();
    let limits = Limits {
        max_entries: 2,
        ..Limits::default()
    };
    s.refused(
        &archive(&[file("a", "1"), file("b", "2"), file("c", "3")]),
        &limits,
        "more than 2 entries",
    );
}

#[test]
fn a_name_reused_with_another_type_is_refused() {
    refused(
        &archive(&[entry("d", b'5', b"", ""), file("d", "x")]),
        "two entries named \"d\"",
    );
}

#[test]
fn garbage_after_the_gzip_stream_is_refused_and_concatenated_members_are_read() {
    let mut tar = file("a", "one");
    tar.extend([0u8; 1024]);
    let mut with_garbage = gzip(&tar);
    with_garbage.extend(b"trailing garbage that is not gzip");
    refused(&with_garbage, "cannot read the archive");
    // The same tar split over two gzip members (as parallel compressors write).
    let (head, tail) = tar.split_at(700);
    let mut two = gzip(head);
    two.extend(gzip(tail));
    let s = scene();
    restore_swap(two.as_slice(), &s.app, &Limits::default()).unwrap();
    assert_eq!(fs::read_to_string(s.app.join("a")).unwrap(), "one");
}

#[test]
fn restore_into_wants_an_empty_directory_and_a_stale_sibling_is_replaced() {
    let s = scene();
    let a = archive(&[file("a", "new")]);
    let err = restore_into(a.as_slice(), &s.app, &Limits::default()).unwrap_err();
    assert!(err.message.contains("it is not empty"), "{}", err.message);
    s.assert_untouched();
    // A sibling left by an interrupted restore does not end up in the restored tree.
    let stale = s.tmp.path().join("app.new");
    fs::create_dir(&stale).unwrap();
    fs::write(stale.join("stale"), "old attempt").unwrap();
    restore_swap(a.as_slice(), &s.app, &Limits::default()).unwrap();
    assert_eq!(fs::read_dir(&s.app).unwrap().count(), 1);
    assert_eq!(fs::read_to_string(s.app.join("a")).unwrap(), "new");
    assert!(!stale.exists());
}

#[test]
fn names_from_extension_records_are_checked_like_plain_ones() {
    let pax = |body: &str| {
        let mut n = body.len() + 3;
        let record = loop {
            let r = format!("{n} {body}\n");
            if r.len() == n {
                break r;
            }
            n = r.len();
        };
        let mut x = header(b"pax", b'x', record.len() as u64, b"");
        x.extend(padded(record.as_bytes()));
        x
    };
    // The plain name is harmless; the PAX one climbs out.
    refused(
        &archive(&[pax("path=../outside/escape"), file("harmless", "x")]),
        "'..'",
    );
    refused(
        &archive(&[pax("linkpath=/etc"), entry("l", b'2', b"", "inside")]),
        "points outside",
    );
    let mut long = b"../outside/escape".to_vec();
    long.push(0);
    let mut l = header(b"././@LongLink", b'L', long.len() as u64, b"");
    l.extend(padded(&long));
    refused(&archive(&[l, file("harmless", "x")]), "'..'");
}
