use super::*;
use crate::crash;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::time::Duration;

fn ls(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A root and, next to it, a directory the root must never reach, with one file in it.
struct Jail {
    root: tempfile::TempDir,
    outside: tempfile::TempDir,
}

impl Jail {
    fn new() -> Jail {
        let j = Jail {
            root: tempfile::tempdir().unwrap(),
            outside: tempfile::tempdir().unwrap(),
        };
        fs::write(j.outside.path().join("secret"), b"outside").unwrap();
        fs::create_dir(j.outside.path().join("iscsi")).unwrap();
        fs::write(j.outside.path().join("iscsi/keep"), b"keep").unwrap();
        j
    }

    fn r(&self, p: &str) -> PathBuf {
        self.root.path().join(p)
    }

    fn out(&self) -> &Path {
        self.outside.path()
    }

    /// The outside directory is exactly as created.
    #[track_caller]
    fn assert_outside_untouched(&self) {
        assert_eq!(ls(self.out()), ["iscsi", "secret"]);
        assert_eq!(ls(&self.out().join("iscsi")), ["keep"]);
        assert_eq!(fs::read(self.out().join("secret")).unwrap(), b"outside");
    }
}

#[test]
fn paths_resolve_under_the_root_and_dotdot_is_refused() {
    let fs = RootFs::new("/tmp/r");
    assert_eq!(fs.resolve("/etc/x").unwrap(), PathBuf::from("/tmp/r/etc/x"));
    assert!(fs.resolve("/etc/../x").is_err());
    assert!(fs.resolve("etc/x").is_err());
    assert!(matches!(fs.read("/etc/../x"), Err(FsError::BadPath(_))));
}

#[test]
fn writes_are_atomic_with_exact_mode_and_limited_to_declared_paths() {
    let dir = tempfile::tempdir().unwrap();
    let fs = RootFs::restricted(dir.path(), &["/etc/iscsi".to_string()]);
    fs.write("/etc/iscsi/a/b.conf", b"x=1\n", 0o600).unwrap();
    let real = dir.path().join("etc/iscsi/a/b.conf");
    assert_eq!(std::fs::read(&real).unwrap(), b"x=1\n");
    assert_eq!(
        std::fs::metadata(&real).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let err = fs.write("/etc/passwd", b"", 0o644).unwrap_err();
    assert!(matches!(err, FsError::NotAllowed { .. }), "{err}");
    // `/etc/iscsix` is not inside `/etc/iscsi`.
    assert!(fs.write("/etc/iscsix", b"", 0o644).is_err());
    assert_eq!(fs.read("/etc/iscsi/missing").unwrap(), None);
    assert_eq!(fs.read("/etc/iscsi/a/b.conf").unwrap().unwrap(), b"x=1\n");
    assert_eq!(fs.list("/etc/iscsi").unwrap().unwrap(), ["a"]);
    assert_eq!(fs.list("/etc/none").unwrap(), None);
    let st = fs.stat("/etc/iscsi/a/b.conf").unwrap().unwrap();
    assert_eq!((st.kind, st.mode), (StatKind::File, 0o600));
    symlink("../../sdb", dir.path().join("etc/iscsi/link")).unwrap();
    let st = fs.stat("/etc/iscsi/link").unwrap().unwrap();
    assert_eq!(
        (st.kind, st.link_target.as_str()),
        (StatKind::Symlink, "../../sdb")
    );
    assert_eq!(fs.stat("/etc/none").unwrap(), None);
    assert_eq!(fs.stat("/").unwrap().unwrap().kind, StatKind::Dir);
    fs.create_dir("/etc/iscsi/d", 0o700).unwrap();
    assert_eq!(
        fs.stat("/etc/iscsi/d").unwrap().unwrap(),
        Stat {
            kind: StatKind::Dir,
            mode: 0o700,
            link_target: String::new()
        }
    );
    fs.remove("/etc/iscsi").unwrap();
    assert!(!dir.path().join("etc/iscsi").exists());
    fs.remove("/etc/iscsi").unwrap();
}

// --- containment -------------------------------------------------------------------------

#[test]
fn an_absolute_symlink_resolves_against_the_root_as_in_a_chroot() {
    let j = Jail::new();
    let fs = RootFs::new(j.root.path());
    // `/etc -> /real-etc` inside the root: followed, inside the root.
    fs::create_dir(j.r("real-etc")).unwrap();
    symlink("/real-etc", j.r("etc")).unwrap();
    fs.write("/etc/iscsi/x.conf", b"1", 0o644).unwrap();
    assert_eq!(fs::read(j.r("real-etc/iscsi/x.conf")).unwrap(), b"1");
    assert_eq!(fs.read("/etc/iscsi/x.conf").unwrap().unwrap(), b"1");
    assert_eq!(fs.list("/etc").unwrap().unwrap(), ["iscsi"]);
    fs.remove("/etc/iscsi").unwrap();
    assert!(!j.r("real-etc/iscsi").exists());
}

#[test]
fn symlinks_to_outside_the_root_never_reach_outside() {
    let j = Jail::new();
    let fs = RootFs::new(j.root.path());
    let out = j.out().to_str().unwrap().to_string();
    let climb = format!("../../../../../../../../..{out}");
    // Absolute and climbing links to the outside directory and its files.
    symlink(&out, j.r("etc")).unwrap();
    fs::create_dir_all(j.r("var")).unwrap();
    symlink(&climb, j.r("var/lib")).unwrap();
    symlink(format!("{out}/secret"), j.r("passwd")).unwrap();
    symlink(format!("{climb}/secret"), j.r("shadow")).unwrap();

    // Reads see what is inside the root (nothing), not the outside file.
    assert_eq!(fs.read("/passwd").unwrap(), None);
    assert_eq!(fs.read("/shadow").unwrap(), None);
    assert_eq!(fs.read("/etc/secret").unwrap(), None);
    assert_eq!(fs.read("/var/lib/secret").unwrap(), None);
    assert_eq!(fs.list("/etc").unwrap(), None);
    assert_eq!(fs.list("/var/lib/iscsi").unwrap(), None);
    assert_eq!(fs.stat("/etc/iscsi").unwrap(), None);
    // Writes, directories and removes through them fail or do nothing, outside.
    assert!(fs.write("/etc/iscsi/x.conf", b"1", 0o644).is_err());
    assert!(fs.write("/var/lib/iscsi/keep", b"1", 0o644).is_err());
    assert!(fs.create_dir("/var/lib/iscsi/new", 0o755).is_err());
    fs.remove("/etc/iscsi").unwrap();
    fs.remove("/var/lib/iscsi").unwrap();
    fs.remove("/etc/secret").unwrap();
    j.assert_outside_untouched();
    // A write *at* a symlink replaces the link; the target is untouched.
    fs.write("/passwd", b"new", 0o644).unwrap();
    assert_eq!(fs::read(j.r("passwd")).unwrap(), b"new");
    assert!(!fs::symlink_metadata(j.r("passwd"))
        .unwrap()
        .file_type()
        .is_symlink());
    j.assert_outside_untouched();
}

#[test]
fn a_recursive_remove_removes_symlinks_not_their_targets() {
    let j = Jail::new();
    let fs = RootFs::new(j.root.path());
    let out = j.out().to_str().unwrap();
    fs.write("/var/lib/iscsi/nodes/a/default", b"x", 0o600)
        .unwrap();
    // Links to the outside tree and to a file outside, at several depths, and a link to a
    // directory of the root that is not being removed.
    symlink(out, j.r("var/lib/iscsi/out")).unwrap();
    symlink(format!("{out}/iscsi"), j.r("var/lib/iscsi/nodes/a/out")).unwrap();
    symlink(format!("{out}/secret"), j.r("var/lib/iscsi/nodes/secret")).unwrap();
    fs.write("/etc/keep/file", b"k", 0o644).unwrap();
    symlink("/etc/keep", j.r("var/lib/iscsi/nodes/keep")).unwrap();
    fs.remove("/var/lib/iscsi").unwrap();
    assert!(!j.r("var/lib/iscsi").exists());
    assert_eq!(ls(&j.r("var/lib")), Vec::<String>::new());
    assert_eq!(fs::read(j.r("etc/keep/file")).unwrap(), b"k");
    j.assert_outside_untouched();
    // Removing a symlink to a directory removes the link only.
    symlink("/etc/keep", j.r("etc/link")).unwrap();
    fs.remove("/etc/link").unwrap();
    assert_eq!(ls(&j.r("etc")), ["keep"]);
    assert_eq!(ls(&j.r("etc/keep")), ["file"]);
}

#[test]
fn the_allow_list_is_checked_where_the_path_resolves() {
    let j = Jail::new();
    let plugin = RootFs::restricted(j.root.path(), &["/etc/iscsi".to_string()]);
    let daemon = RootFs::new(j.root.path());
    // The declared `/etc/iscsi` is a symlink to another directory of the root.
    daemon.write("/etc/shadow-dir/orig", b"o", 0o600).unwrap();
    symlink("/etc/shadow-dir", j.r("etc/iscsi")).unwrap();
    let escapes = |r: Result<(), FsError>| match r {
        Err(FsError::Escapes { resolved, .. }) => resolved,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(
        escapes(plugin.write("/etc/iscsi/x.conf", b"1", 0o644)),
        "/etc/shadow-dir/x.conf"
    );
    assert_eq!(
        escapes(plugin.create_dir("/etc/iscsi/sub", 0o755)),
        "/etc/shadow-dir/sub"
    );
    assert_eq!(
        escapes(plugin.remove("/etc/iscsi/orig")),
        "/etc/shadow-dir/orig"
    );
    let msg = plugin
        .write("/etc/iscsi/x.conf", b"1", 0o644)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("/etc/shadow-dir/x.conf") && msg.contains("(/etc/iscsi)"),
        "{msg}"
    );
    assert_eq!(ls(&j.r("etc/shadow-dir")), ["orig"]);
    // Reads are not limited; removing the declared path removes the link itself.
    assert_eq!(plugin.read("/etc/iscsi/orig").unwrap().unwrap(), b"o");
    plugin.remove("/etc/iscsi").unwrap();
    assert_eq!(ls(&j.r("etc")), ["shadow-dir"]);
    assert_eq!(ls(&j.r("etc/shadow-dir")), ["orig"]);

    // A parent of the declared path that is a symlink: no directory is created where it
    // points, not even an empty one.
    let j = Jail::new();
    let plugin = RootFs::restricted(j.root.path(), &["/etc/iscsi".to_string()]);
    fs::create_dir(j.r("data")).unwrap();
    symlink("/data", j.r("etc")).unwrap();
    assert_eq!(
        escapes(plugin.write("/etc/iscsi/a/x.conf", b"1", 0o644)),
        "/data/iscsi"
    );
    assert_eq!(ls(&j.r("data")), Vec::<String>::new());

    // Links that stay inside the declared tree are fine, and missing parents of a declared
    // path may be created.
    let j = Jail::new();
    let plugin = RootFs::restricted(j.root.path(), &["/etc/iscsi".to_string()]);
    plugin.create_dir("/etc/iscsi/v2", 0o755).unwrap();
    symlink("/etc/iscsi/v2", j.r("etc/iscsi/current")).unwrap();
    plugin
        .write("/etc/iscsi/current/a.conf", b"a", 0o644)
        .unwrap();
    assert_eq!(fs::read(j.r("etc/iscsi/v2/a.conf")).unwrap(), b"a");
}

// --- temporary files ---------------------------------------------------------------------

#[test]
fn temp_names_are_unpredictable_and_recognised() {
    let a = temp_name(OsStr::new("state.json")).unwrap();
    let b = temp_name(OsStr::new("state.json")).unwrap();
    assert_ne!(a, b);
    let s = a.to_str().unwrap();
    assert!(
        s.starts_with(".state.json.") && s.ends_with(".incus-osd-tmp"),
        "{s}"
    );
    assert_eq!(s.len(), ".state.json.".len() + 32 + ".incus-osd-tmp".len());
    assert_eq!(temp_target(&a), Some(&b"state.json"[..]));
    assert!(is_temp_for(&a, OsStr::new("state.json")));
    assert!(!is_temp_for(&a, OsStr::new("state")));
    assert!(!is_temp_for(&a, OsStr::new("state.json.bak")));
    for other in [
        ".state.json.tmp.1234",
        "state.json",
        ".x.incus-osd-tmp",
        ".x.0123456789abcdef0123456789abcdeg.incus-osd-tmp",
        "..0123456789abcdef0123456789abcdef.incus-osd-tmp",
    ] {
        assert_eq!(temp_target(OsStr::new(other)), None, "{other}");
    }
    // Long names are cut so the temporary name stays a valid file name.
    let long = "é".repeat(127);
    let t = temp_name(OsStr::new(&long)).unwrap();
    assert!(t.len() < 255 && t.to_str().is_some());
    assert!(is_temp_for(&t, OsStr::new(&long)));
}

#[test]
fn a_symlink_planted_where_the_temp_file_used_to_be_is_not_followed() {
    // The old scheme used `.<name>.tmp.<pid>`: plant that (and a few neighbours) pointing
    // at a file outside, as an attacker who can guess pids would.
    let j = Jail::new();
    let dir = j.root.path();
    let target = j.out().join("secret");
    for pid in std::process::id().saturating_sub(2)..=std::process::id() + 2 {
        symlink(&target, dir.join(format!(".state.json.tmp.{pid}"))).unwrap();
    }
    atomic_write(&dir.join("state.json"), b"{\"keys\":1}\n", 0o600).unwrap();
    assert_eq!(fs::read(dir.join("state.json")).unwrap(), b"{\"keys\":1}\n");
    assert_eq!(
        fs::metadata(dir.join("state.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    j.assert_outside_untouched();
    // The temporary file itself is created exclusively: an existing name is refused.
    let taken = OsStr::new("taken");
    symlink(&target, dir.join(taken)).unwrap();
    let d = sys::open(dir, libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
    let e = sys::openat(
        d.as_fd(),
        taken,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
        0o600,
    )
    .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    j.assert_outside_untouched();
}

#[test]
fn leftover_temp_files_are_removed_and_nothing_else() {
    let j = Jail::new();
    let fs = RootFs::new(j.root.path());
    let t = |n: &str| temp_name(OsStr::new(n)).unwrap();
    let (a, b, c) = (t("a.conf"), t("b.conf"), t("deep.conf"));
    fs.write("/etc/x/a.conf", b"a", 0o644).unwrap();
    fs::write(j.r("etc/x").join(&a), b"torn").unwrap();
    fs::write(j.r("etc/x").join(&b), b"torn").unwrap();
    fs.write("/etc/x/sub/deep.conf", b"d", 0o644).unwrap();
    fs::write(j.r("etc/x/sub").join(&c), b"torn").unwrap();
    // Look-alikes stay; a symlinked directory is not entered.
    for keep in [".a.conf.tmp.1", "a.conf.incus-osd-tmp", ".a.conf.swp"] {
        fs::write(j.r("etc/x").join(keep), b"keep").unwrap();
    }
    let out_tmp = j.out().join(t("secret"));
    fs::write(&out_tmp, b"outside").unwrap();
    symlink(j.out(), j.r("etc/x/out")).unwrap();

    // A declared file: only its own temporary files, next to it.
    assert_eq!(fs.remove_temp_files("/etc/x/a.conf").unwrap(), 1);
    assert!(!j.r("etc/x").join(&a).exists() && j.r("etc/x").join(&b).exists());
    // A declared directory: everything under it.
    assert_eq!(fs.remove_temp_files("/etc/x").unwrap(), 2);
    assert_eq!(
        ls(&j.r("etc/x")),
        [
            ".a.conf.swp",
            ".a.conf.tmp.1",
            "a.conf",
            "a.conf.incus-osd-tmp",
            "out",
            "sub"
        ]
    );
    assert_eq!(ls(&j.r("etc/x/sub")), ["deep.conf"]);
    assert!(out_tmp.exists());
    assert_eq!(fs.remove_temp_files("/etc/none").unwrap(), 0);
    // The directory-level form, as the state store uses it.
    fs::write(j.r("etc").join(t("state.json")), b"").unwrap();
    let d = sys::open(&j.r("etc"), libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
    assert_eq!(remove_temp_files(d.as_fd()).unwrap(), 1);
    assert_eq!(ls(&j.r("etc")), ["x"]);
}

// --- the atomic-write guarantee ----------------------------------------------------------
//
// These tests check what atomic_write promises, not how: after a crash (SIGKILL at a
// random moment) or a write that fails half-way, the file holds the old content or the new
// one, whole. An in-place write (`fs::write`: truncate, then write) fails both: a kill
// between the truncation and the end of the write leaves a short or mixed file, which the
// version check below reports, and a write failing with EFBIG after 64 KiB leaves 64 KiB of
// the new content in the file.

/// Content for version `k`: a header naming the version and the length, a body derived
/// from `k`, a trailer. Lengths differ between versions (256 KiB to 4 MiB).
fn version(k: u64) -> Vec<u8> {
    let len = (256 << 10) + (k % 16) * (256 << 10);
    let mut v = format!("version {k} length {len}\n").into_bytes();
    let fill = b"0123456789abcdef"[(k % 16) as usize];
    v.resize(len as usize - 16, fill);
    v.extend_from_slice(format!("\n{:>14}\n", k).as_bytes());
    v
}

/// The version whose content `data` is exactly, if any.
fn whole_version(data: &[u8]) -> Option<u64> {
    let head = std::str::from_utf8(&data[..data.len().min(64)]).ok()?;
    let k: u64 = head
        .strip_prefix("version ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    (version(k) == data).then_some(k)
}

/// The child side: the job is `loop:<path>` (write versions 1, 2, ... forever) or
/// `efbig:<path>` (write version 15 under a 64 KiB file size limit, report the result).
#[test]
#[ignore = "started by the crash tests as a child process"]
fn atomic_write_child() {
    let Some(job) = crash::child_job() else {
        return;
    };
    let (what, path) = job.split_once(':').unwrap();
    let path = Path::new(path);
    match what {
        "loop" => {
            for k in 1.. {
                atomic_write(path, &version(k), 0o600).unwrap();
            }
        }
        "efbig" => {
            crash::limit_file_size(64 << 10);
            match atomic_write(path, &version(15), 0o600) {
                Ok(()) => crash::report("ok"),
                Err(e) => crash::report(&format!("error {}", e.raw_os_error().unwrap_or(0))),
            }
        }
        other => panic!("unknown job {other}"),
    }
}

#[test]
fn a_kill_at_any_moment_leaves_the_old_or_the_new_file_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let mut child = crash::spawn_child(
            "files::tests::atomic_write_child",
            &format!("loop:{}", path.display()),
        );
        let before = fs::read(&path).ok();
        // Ready once the child replaced what was there (or wrote the first version).
        crash::kill_at_random(
            &mut child,
            || {
                fs::read(&path)
                    .ok()
                    .is_some_and(|d| Some(&d) != before.as_ref())
            },
            Duration::from_millis(40),
        );
        let data = fs::read(&path).unwrap();
        let k = whole_version(&data).unwrap_or_else(|| {
            panic!(
                "torn file after a kill: {} bytes, starts {:?}",
                data.len(),
                String::from_utf8_lossy(&data[..data.len().min(40)])
            )
        });
        seen.insert(k);
    }
    // The kills landed at different points of the loop.
    assert!(seen.len() > 1, "{seen:?}");
    // Kills leave temporary files behind; the clean-up removes them and only them.
    let d = sys::open(dir.path(), libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
    remove_temp_files(d.as_fd()).unwrap();
    assert_eq!(ls(dir.path()), ["state.json"]);
}

#[test]
fn a_write_failing_half_way_leaves_the_old_file_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    let old = version(0);
    fs::write(&path, &old).unwrap();
    let child = crash::spawn_child(
        "files::tests::atomic_write_child",
        &format!("efbig:{}", path.display()),
    );
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    // The write failed (File too large) ...
    assert!(
        stdout.contains(&format!("RESULT error {}", libc::EFBIG)),
        "{stdout}"
    );
    // ... and the file is the old one, whole, with no temporary file left.
    assert_eq!(whole_version(&fs::read(&path).unwrap()), Some(0));
    assert_eq!(ls(dir.path()), ["file"]);
}

#[test]
fn a_write_into_a_directory_that_was_replaced_fails_and_leaves_the_target_whole() {
    // The directory is opened once; if it is replaced (renamed away, another put in its
    // place) or removed, the write either lands whole in the directory it opened or fails,
    // and never leaves a partial file behind.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    fs::create_dir(&state).unwrap();
    let d = sys::open(&state, libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
    write_in(d.as_fd(), OsStr::new("f"), &version(1), 0o600).unwrap();
    fs::rename(&state, dir.path().join("moved")).unwrap();
    fs::create_dir(&state).unwrap();
    fs::write(state.join("f"), b"other").unwrap();
    write_in(d.as_fd(), OsStr::new("f"), &version(2), 0o600).unwrap();
    assert_eq!(
        whole_version(&fs::read(dir.path().join("moved/f")).unwrap()),
        Some(2)
    );
    assert_eq!(fs::read(state.join("f")).unwrap(), b"other");
    // Removed: the write fails and nothing is left.
    fs::remove_dir_all(dir.path().join("moved")).unwrap();
    assert!(write_in(d.as_fd(), OsStr::new("f"), &version(3), 0o600).is_err());
    assert_eq!(ls(dir.path()), ["state"]);
}

// --- streaming atomic writes -------------------------------------------------------------

#[test]
fn a_streaming_atomic_write_replaces_the_target_only_on_commit() {
    let j = Jail::new();
    let plugin = RootFs::restricted(j.root.path(), &["/var/lib/updates".to_string()]);
    plugin.write("/var/lib/updates/img", b"old", 0o644).unwrap();
    // Written but dropped: the target is as it was, and no temporary file is left.
    let mut w = plugin.create_atomic("/var/lib/updates/img", 0o600).unwrap();
    w.write_all(b"half").unwrap();
    assert_eq!(ls(&j.r("var/lib/updates")).len(), 2);
    drop(w);
    assert_eq!(ls(&j.r("var/lib/updates")), ["img"]);
    assert_eq!(fs::read(j.r("var/lib/updates/img")).unwrap(), b"old");
    // Committed: replaced, with the exact mode, missing parents created.
    let mut w = plugin
        .create_atomic("/var/lib/updates/new/img", 0o600)
        .unwrap();
    w.write_all(b"new ").unwrap();
    w.write_all(b"image").unwrap();
    assert!(!j.r("var/lib/updates/new/img").exists());
    Box::new(w).commit().unwrap();
    assert_eq!(
        fs::read(j.r("var/lib/updates/new/img")).unwrap(),
        b"new image"
    );
    let mode = fs::metadata(j.r("var/lib/updates/new/img"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o600);
    assert_eq!(ls(&j.r("var/lib/updates/new")), ["img"]);
    // The allow-list, on the path as given and where it resolves.
    assert!(matches!(
        plugin.create_atomic("/etc/img", 0o644),
        Err(FsError::NotAllowed { .. })
    ));
    fs::create_dir(j.r("etc")).unwrap();
    symlink("/etc", j.r("var/lib/updates/out")).unwrap();
    let r = plugin.create_atomic("/var/lib/updates/out/secret", 0o644);
    assert!(matches!(r, Err(FsError::Escapes { .. })), "{r:?}");
    // A symlink at the target is replaced, not followed.
    symlink(j.out().join("secret"), j.r("var/lib/updates/link")).unwrap();
    let mut w = plugin
        .create_atomic("/var/lib/updates/link", 0o644)
        .unwrap();
    w.write_all(b"mine").unwrap();
    Box::new(w).commit().unwrap();
    assert_eq!(fs::read(j.r("var/lib/updates/link")).unwrap(), b"mine");
    assert!(!fs::symlink_metadata(j.r("var/lib/updates/link"))
        .unwrap()
        .is_symlink());
    assert_eq!(ls(&j.r("etc")), Vec::<String>::new());
    j.assert_outside_untouched();
}

// ---------------------------------------------------------------------------------------
// Contract 1.3: descriptors, facts, chown, symlink, rename

fn read_opts() -> OpenOptions {
    OpenOptions {
        read: true,
        ..OpenOptions::default()
    }
}

fn create_opts(mode: u32) -> OpenOptions {
    OpenOptions {
        write: true,
        create: true,
        truncate: true,
        mode,
        ..OpenOptions::default()
    }
}

/// A root with `/etc/demo` declared, and an escape hatch: `/etc/demo/out` is a symlink to
/// the outside directory (absolute, so that only a resolution outside the root reaches it).
fn jail_with_escape() -> (Jail, RootFs) {
    let j = Jail::new();
    fs::create_dir_all(j.r("etc/demo")).unwrap();
    symlink(j.out(), j.r("etc/demo/out")).unwrap();
    let rfs = RootFs::restricted(j.root.path(), &["/etc/demo".to_string()]);
    (j, rfs)
}

#[test]
fn a_large_file_is_read_through_its_descriptor_whole_and_right() {
    let (j, rfs) = jail_with_escape();
    let data: Vec<u8> = (0..24 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    fs::write(j.r("etc/big"), &data).unwrap();
    // Read-only opens may name any file under the root, and follow a final link inside it.
    symlink("/etc/big", j.r("etc/demo/big-link")).unwrap();
    for path in ["/etc/big", "/etc/demo/big-link"] {
        let fd = rfs.open(path, &read_opts()).unwrap().expect("exists");
        let mut got = Vec::new();
        fs::File::from(fd).read_to_end(&mut got).unwrap();
        assert!(got == data, "{path}: {} bytes read", got.len());
    }
    assert!(rfs.open("/etc/none", &read_opts()).unwrap().is_none());
    // The descriptor is close-on-exec.
    let fd = rfs.open("/etc/big", &read_opts()).unwrap().unwrap();
    let flags = unsafe_free_fd_flags(fd.as_fd());
    assert!(flags & libc::FD_CLOEXEC != 0);
}

/// `fcntl(F_GETFD)` through /proc: whether `close-on-exec` is set, without unsafe code.
fn unsafe_free_fd_flags(fd: BorrowedFd<'_>) -> i32 {
    use std::os::fd::AsRawFd;
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|v| i32::from_str_radix(v.trim(), 8).unwrap())
        .unwrap();
    if flags & libc::O_CLOEXEC != 0 {
        libc::FD_CLOEXEC
    } else {
        0
    }
}

#[test]
fn a_write_through_a_descriptor_then_a_rename_replaces_the_file_atomically() {
    let (j, rfs) = jail_with_escape();
    fs::write(j.r("etc/demo/conf"), b"old").unwrap();
    let fd = rfs
        .open("/etc/demo/new/conf.tmp", &create_opts(0o640))
        .unwrap()
        .expect("created, parents too");
    let mut f = fs::File::from(fd);
    f.write_all(b"new contents").unwrap();
    f.sync_all().unwrap();
    drop(f);
    let meta = fs::metadata(j.r("etc/demo/new/conf.tmp")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640, "exact mode");
    // The old file is untouched until the rename.
    assert_eq!(fs::read(j.r("etc/demo/conf")).unwrap(), b"old");
    rfs.rename("/etc/demo/new/conf.tmp", "/etc/demo/conf", 0)
        .unwrap();
    assert_eq!(fs::read(j.r("etc/demo/conf")).unwrap(), b"new contents");
    assert_eq!(ls(&j.r("etc/demo/new")), Vec::<String>::new());

    // Truncate and append on an existing file; exclusive creation of an existing one fails.
    let trunc = OpenOptions {
        write: true,
        truncate: true,
        ..OpenOptions::default()
    };
    let mut f = fs::File::from(rfs.open("/etc/demo/conf", &trunc).unwrap().unwrap());
    f.write_all(b"a").unwrap();
    let append = OpenOptions {
        write: true,
        append: true,
        ..OpenOptions::default()
    };
    let mut f = fs::File::from(rfs.open("/etc/demo/conf", &append).unwrap().unwrap());
    f.write_all(b"b").unwrap();
    assert_eq!(fs::read(j.r("etc/demo/conf")).unwrap(), b"ab");
    let excl = OpenOptions {
        exclusive: true,
        ..create_opts(0o600)
    };
    let e = rfs.open("/etc/demo/conf", &excl).unwrap_err().to_string();
    assert!(e.contains("/etc/demo/conf") && e.contains("exists"), "{e}");
    assert_eq!(fs::read(j.r("etc/demo/conf")).unwrap(), b"ab");
    // Without CREATE a missing file is None, not created.
    assert!(rfs.open("/etc/demo/none", &trunc).unwrap().is_none());
    assert!(!j.r("etc/demo/none").exists());
}

#[test]
fn writing_opens_are_limited_to_the_declared_paths_and_never_leave_the_root() {
    let (j, rfs) = jail_with_escape();
    fs::write(j.r("etc/passwd"), b"root").unwrap();
    let e = rfs
        .open("/etc/passwd", &create_opts(0o644))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"/etc/passwd\" is outside what this plugin may write"),
        "{e}"
    );
    let rw = OpenOptions {
        read: true,
        write: true,
        ..OpenOptions::default()
    };
    assert!(rfs.open("/etc/passwd", &rw).is_err());
    // Through a link that leads out of the root: refused where it resolves (inside the
    // root, /tmp/... does not exist, and is not declared either).
    let e = rfs
        .open("/etc/demo/out/secret", &create_opts(0o644))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/etc/demo/out/secret"), "{e}");
    // A read-only open through it resolves inside the root, where there is no such file.
    assert!(rfs
        .open("/etc/demo/out/secret", &read_opts())
        .unwrap()
        .is_none());
    // A final symlink is not followed for writing, even to a file inside.
    symlink("/etc/passwd", j.r("etc/demo/pw")).unwrap();
    let e = rfs.open("/etc/demo/pw", &rw).unwrap_err().to_string();
    assert!(e.contains("symbolic link"), "{e}");
    assert_eq!(fs::read(j.r("etc/passwd")).unwrap(), b"root");
    // Directories are for dir_open.
    fs::create_dir(j.r("etc/demo/sub")).unwrap();
    let e = rfs
        .open("/etc/demo/sub", &read_opts())
        .unwrap_err()
        .to_string();
    assert!(e.contains("a directory, not a regular file"), "{e}");
    j.assert_outside_untouched();
}

#[test]
fn a_fifo_is_refused_without_hanging() {
    let (j, rfs) = jail_with_escape();
    let status = std::process::Command::new("mkfifo")
        .arg(j.r("etc/demo/fifo"))
        .status()
        .unwrap();
    assert!(status.success());
    let (tx, rx) = std::sync::mpsc::channel();
    let rfs2 = rfs.clone();
    std::thread::spawn(move || {
        let read = rfs2
            .open("/etc/demo/fifo", &read_opts())
            .map(|_| ())
            .map_err(|e| e.to_string());
        let write = rfs2
            .open("/etc/demo/fifo", &create_opts(0o600))
            .map(|_| ())
            .map_err(|e| e.to_string());
        tx.send((read, write)).unwrap();
    });
    let (read, write) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("opening a FIFO hung");
    assert!(read.unwrap_err().contains("a FIFO, not a regular file"));
    assert!(write.unwrap_err().contains("a FIFO, not a regular file"));
}

#[test]
fn a_directory_descriptor_is_given_only_under_the_declared_paths() {
    let (j, rfs) = jail_with_escape();
    fs::create_dir_all(j.r("etc/demo/app")).unwrap();
    fs::write(j.r("etc/demo/app/x"), b"1").unwrap();
    let fd = rfs.open_dir("/etc/demo/app").unwrap().expect("exists");
    let names = sys::read_dir(fd.as_fd()).unwrap();
    assert_eq!(names, [OsString::from("x")]);
    assert!(rfs.open_dir("/etc/demo/none").unwrap().is_none());
    let e = rfs.open_dir("/etc").unwrap_err().to_string();
    assert!(
        e.contains("\"/etc\" is outside what this plugin may write"),
        "{e}"
    );
    // A declared link to elsewhere in the root is refused where it resolves.
    symlink("/etc", j.r("etc/demo/etc")).unwrap();
    let e = rfs.open_dir("/etc/demo/etc").unwrap_err().to_string();
    assert!(e.contains("resolves to \"/etc\""), "{e}");
    // The link that leads out of the root resolves inside it, where nothing is.
    assert!(rfs.open_dir("/etc/demo/out").unwrap().is_none());
}

#[test]
fn facts_match_the_file() {
    let (j, rfs) = jail_with_escape();
    fs::write(j.r("etc/demo/f"), b"12345").unwrap();
    fs::set_permissions(j.r("etc/demo/f"), fs::Permissions::from_mode(0o4751)).unwrap();
    let when = std::time::UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    fs::File::options()
        .write(true)
        .open(j.r("etc/demo/f"))
        .unwrap()
        .set_modified(when)
        .unwrap();
    let f = rfs.facts("/etc/demo/f").unwrap().unwrap();
    let meta = fs::symlink_metadata(j.r("etc/demo/f")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        f,
        Facts {
            kind: StatKind::File,
            mode: 0o4751,
            size: 5,
            mtime_secs: 1_600_000_000,
            mtime_nanos: 123_456_789,
            uid: meta.uid(),
            gid: meta.gid(),
            link_target: String::new(),
        }
    );
    let l = rfs.facts("/etc/demo/out").unwrap().unwrap();
    assert_eq!(l.kind, StatKind::Symlink);
    assert_eq!(l.link_target, j.out().to_string_lossy());
    assert_eq!(l.size, j.out().as_os_str().len() as u64);
    assert!(rfs.facts("/etc/demo/none").unwrap().is_none());
    // stat is the same facts, fewer of them.
    assert_eq!(
        rfs.stat("/etc/demo/f").unwrap().unwrap(),
        Stat {
            kind: StatKind::File,
            mode: 0o4751,
            link_target: String::new()
        }
    );
}

#[test]
fn chown_changes_the_entry_itself_inside_the_declared_paths_only() {
    use std::os::unix::fs::MetadataExt;
    let (j, rfs) = jail_with_escape();
    fs::write(j.r("etc/demo/f"), b"").unwrap();
    let meta = fs::metadata(j.r("etc/demo/f")).unwrap();
    // To our own ids (what an unprivileged test can do), one of them kept.
    rfs.chown("/etc/demo/f", meta.uid(), u32::MAX).unwrap();
    rfs.chown("/etc/demo/f", u32::MAX, meta.gid()).unwrap();
    // The link out of the root is changed itself, never followed.
    rfs.chown("/etc/demo/out", meta.uid(), meta.gid()).unwrap();
    if sys::euid() != 0 {
        // Giving a file away needs privileges: the kernel's refusal comes back.
        let e = rfs.chown("/etc/demo/f", 0, 0).unwrap_err().to_string();
        assert!(e.contains("chown /etc/demo/f"), "{e}");
    } else {
        rfs.chown("/etc/demo/f", 1234, 5678).unwrap();
        let m = fs::metadata(j.r("etc/demo/f")).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
        let secret = fs::metadata(j.out().join("secret")).unwrap();
        assert_ne!(secret.uid(), 1234);
    }
    let e = rfs
        .chown("/etc", meta.uid(), meta.gid())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"/etc\" is outside what this plugin may write"),
        "{e}"
    );
    let e = rfs
        .chown("/etc/demo/out/secret", meta.uid(), meta.gid())
        .unwrap_err()
        .to_string();
    assert!(e.contains("/etc/demo/out/secret"), "{e}");
    let e = rfs.chown("/etc/demo/none", 0, 0).unwrap_err().to_string();
    assert!(e.contains("No such file"), "{e}");
    j.assert_outside_untouched();
}

#[test]
fn symlinks_are_made_as_written_and_never_over_an_existing_name() {
    let (j, rfs) = jail_with_escape();
    rfs.symlink("../x/y", "/etc/demo/l").unwrap();
    assert_eq!(
        fs::read_link(j.r("etc/demo/l")).unwrap(),
        Path::new("../x/y")
    );
    let e = rfs.symlink("other", "/etc/demo/l").unwrap_err().to_string();
    assert!(e.contains("symlink /etc/demo/l: it already exists"), "{e}");
    assert_eq!(
        fs::read_link(j.r("etc/demo/l")).unwrap(),
        Path::new("../x/y")
    );
    let e = rfs.symlink("x", "/etc/l").unwrap_err().to_string();
    assert!(
        e.contains("\"/etc/l\" is outside what this plugin may write"),
        "{e}"
    );
    // Through the link out of the root: the directory resolves inside the root (and is
    // not there), so nothing is made outside.
    assert!(rfs.symlink("x", "/etc/demo/out/l").is_err());
    assert!(!j.r("etc/l").exists());
    j.assert_outside_untouched();
}

#[test]
fn renames_are_atomic_inside_the_declared_paths_with_noreplace_and_exchange() {
    let (j, rfs) = jail_with_escape();
    fs::write(j.r("etc/demo/a"), b"a").unwrap();
    fs::write(j.r("etc/demo/b"), b"b").unwrap();
    let e = rfs
        .rename("/etc/demo/a", "/etc/demo/b", libc::RENAME_NOREPLACE)
        .unwrap_err()
        .to_string();
    assert!(e.contains("/etc/demo/b already exists"), "{e}");
    rfs.rename("/etc/demo/a", "/etc/demo/b", libc::RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(fs::read(j.r("etc/demo/a")).unwrap(), b"b");
    assert_eq!(fs::read(j.r("etc/demo/b")).unwrap(), b"a");
    rfs.rename("/etc/demo/a", "/etc/demo/b", 0).unwrap();
    assert_eq!(ls(&j.r("etc/demo")), ["b", "out"]);
    assert_eq!(fs::read(j.r("etc/demo/b")).unwrap(), b"b");
    // A link is renamed itself, not its target.
    rfs.rename("/etc/demo/out", "/etc/demo/out2", 0).unwrap();
    assert_eq!(fs::read_link(j.r("etc/demo/out2")).unwrap(), j.out());
    // Either end outside the declared paths, or leading out of the root: refused.
    fs::write(j.r("etc/other"), b"o").unwrap();
    let e = rfs
        .rename("/etc/other", "/etc/demo/o", 0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"/etc/other\" is outside what this plugin may write"),
        "{e}"
    );
    let e = rfs
        .rename("/etc/demo/b", "/etc/other", 0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"/etc/other\" is outside what this plugin may write"),
        "{e}"
    );
    assert!(rfs.rename("/etc/demo/b", "/etc/demo/out2/b", 0).is_err());
    assert!(rfs
        .rename("/etc/demo/out2/secret", "/etc/demo/s", 0)
        .is_err());
    assert_eq!(fs::read(j.r("etc/other")).unwrap(), b"o");
    assert_eq!(fs::read(j.r("etc/demo/b")).unwrap(), b"b");
    j.assert_outside_untouched();
}

/// A hard link planted in a declared directory (to a file elsewhere in the root) does not
/// lead a writing open or an owner change to that file; reading it is fine.
#[test]
fn a_file_with_several_names_is_not_changed_in_place() {
    use std::os::unix::fs::MetadataExt;
    let (j, rfs) = jail_with_escape();
    fs::write(j.r("etc/shadow"), b"secret").unwrap();
    fs::hard_link(j.r("etc/shadow"), j.r("etc/demo/planted")).unwrap();
    let rw = OpenOptions {
        write: true,
        truncate: true,
        ..OpenOptions::default()
    };
    let e = rfs.open("/etc/demo/planted", &rw).unwrap_err().to_string();
    assert!(
        e.contains("open /etc/demo/planted: it has 2 hard links"),
        "{e}"
    );
    let me = fs::metadata(j.r("etc/shadow")).unwrap();
    let e = rfs
        .chown("/etc/demo/planted", me.uid(), me.gid())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("chown /etc/demo/planted: it has 2 hard links"),
        "{e}"
    );
    assert_eq!(fs::read(j.r("etc/shadow")).unwrap(), b"secret");
    assert!(rfs
        .open("/etc/demo/planted", &read_opts())
        .unwrap()
        .is_some());
    // Renaming it over (or removing it) leaves the other name alone.
    fs::write(j.r("etc/demo/new"), b"new").unwrap();
    rfs.rename("/etc/demo/new", "/etc/demo/planted", 0).unwrap();
    assert_eq!(fs::read(j.r("etc/shadow")).unwrap(), b"secret");
}
