use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;

use super::*;
use crate::platform::exec::{Commands, Output};
use crate::platform::systemd::{PowerAction, Systemd, UnitAction, Units};
use crate::platform::{kernel, Mode, PlatformError};

const V1: &str = "202601010000";
const V2: &str = "202601150000";
const V3: &str = "202602010000";

/// What the fake machine was asked to do, in order: `systemd-sysext refresh` (with the
/// link of `incus` at that moment) and `daemon-reload`.
#[derive(Default)]
struct Log {
    calls: Mutex<Vec<String>>,
}

/// Commands: `systemd-sysext refresh` fails the first `fail_refresh` times; it merges
/// every linked image except those named in `incompatible` (skipped, as systemd 252 skips
/// an image made for another OS: exit 0, a log line). `systemd-sysext status --json=short`
/// answers what the last refresh merged, in systemd 252's shape (recorded in a tier-3
/// machine, see `tier3_sysext.rs`); it is not logged.
struct FakeCommands {
    root: std::path::PathBuf,
    log: Arc<Log>,
    fail_refresh: AtomicUsize,
    incompatible: Mutex<Vec<String>>,
    merged: Mutex<Vec<String>>,
}

/// systemd 252's `status --json=short` with `names` merged over `/usr`.
fn recorded_status(names: &[String]) -> String {
    let usr = if names.is_empty() {
        r#""extensions":"none","since":null"#.to_string()
    } else {
        format!(
            r#""extensions":{},"since":1796638054544665"#,
            serde_json::to_string(names).unwrap()
        )
    };
    format!(
        r#"[{{"hierarchy":"/opt","extensions":"none","since":null}},{{"hierarchy":"/usr",{usr}}}]"#
    )
}

/// systemd 252's log lines of a successful `refresh` (on stderr).
fn recorded_refresh_log(merged: &[String], ignored: usize) -> String {
    if merged.is_empty() {
        format!("No suitable extensions found ({ignored} ignored due to incompatible version).\nUnmerged '/usr'.\n")
    } else {
        let names: Vec<String> = merged.iter().map(|n| format!("'{n}'")).collect();
        format!(
            "Using extensions {}.\nUnmerged '/usr'.\nMerged extensions into '/usr'.\n",
            names.join(", ")
        )
    }
}

impl Commands for FakeCommands {
    fn run(&self, argv: &[String], _: &[u8], _: Duration) -> Result<Output, PlatformError> {
        if argv.join(" ") == "systemd-sysext status --json=short" {
            return Ok(Output {
                status: 0,
                stdout: recorded_status(&self.merged.lock().unwrap()).into_bytes(),
                stderr: vec![],
            });
        }
        let link = std::fs::read_link(self.root.join("var/lib/extensions/incus.raw"))
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "-".into());
        self.log
            .calls
            .lock()
            .unwrap()
            .push(format!("{} [incus -> {link}]", argv.join(" ")));
        let fail = self
            .fail_refresh
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Ok(Output {
                status: 1,
                stdout: vec![],
                stderr: b"Failed to merge extensions: Invalid argument".to_vec(),
            });
        }
        let incompatible = self.incompatible.lock().unwrap().clone();
        let mut linked: Vec<String> = std::fs::read_dir(self.root.join("var/lib/extensions"))
            .map(|d| {
                d.filter_map(|e| {
                    let name = e.ok()?.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".raw").map(str::to_string)
                })
                .collect()
            })
            .unwrap_or_default();
        linked.sort();
        let (ignored, merged): (Vec<String>, Vec<String>) =
            linked.into_iter().partition(|n| incompatible.contains(n));
        let log = recorded_refresh_log(&merged, ignored.len());
        *self.merged.lock().unwrap() = merged;
        Ok(Output {
            status: 0,
            stdout: vec![],
            stderr: log.into_bytes(),
        })
    }
}

struct FakeUnits {
    log: Arc<Log>,
    fail_reload: AtomicBool,
}

impl Units for FakeUnits {
    fn unit(&self, _: UnitAction, _: &str) -> Result<String, PlatformError> {
        Ok("inactive".into())
    }
    fn daemon_reload(&self) -> Result<(), PlatformError> {
        self.log.calls.lock().unwrap().push("daemon-reload".into());
        if self.fail_reload.swap(false, Ordering::SeqCst) {
            return Err(PlatformError("Access denied".into()));
        }
        Ok(())
    }
}

impl Systemd for FakeUnits {
    fn power(&self, _: PowerAction) -> Result<(), PlatformError> {
        Ok(())
    }
    fn reachable(&self) -> Result<(), PlatformError> {
        Ok(())
    }
}

struct Machine {
    dir: tempfile::TempDir,
    store: Store,
    log: Arc<Log>,
    commands: Option<Arc<FakeCommands>>,
}

impl Machine {
    fn root(&self) -> &Path {
        self.dir.path()
    }
    fn calls(&self) -> Vec<String> {
        self.log.calls.lock().unwrap().clone()
    }
    fn link(&self, app: &str) -> Option<String> {
        std::fs::read_link(self.root().join(format!("var/lib/extensions/{app}.raw")))
            .ok()
            .map(|t| t.display().to_string())
    }
    fn has_image(&self, v: &str, app: &str) -> bool {
        self.root()
            .join(format!("var/lib/incus-os-extensions/{v}/{app}.raw"))
            .exists()
    }
    /// A stand-in image: a GPT header at sector 1 (512-byte sectors), nothing else.
    fn image(&self, v: &str, app: &str) {
        let mut data = vec![0u8; 1024];
        data[512..520].copy_from_slice(b"EFI PART");
        self.write(&format!("var/lib/incus-os-extensions/{v}/{app}.raw"), &data);
    }
    fn write(&self, rel: &str, data: &[u8]) {
        let p = self.root().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    fn symlink(&self, rel: &str, target: &str) {
        let p = self.root().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
    }
}

fn machine(fail_refresh: usize, fail_reload: bool) -> Machine {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::default());
    let commands = Arc::new(FakeCommands {
        root: dir.path().to_path_buf(),
        log: log.clone(),
        fail_refresh: AtomicUsize::new(fail_refresh),
        incompatible: Mutex::default(),
        merged: Mutex::default(),
    });
    let platform = Platform {
        mode: Mode::Live,
        units: Arc::new(FakeUnits {
            log: log.clone(),
            fail_reload: AtomicBool::new(fail_reload),
        }),
        commands: commands.clone(),
        kernel: kernel::KernelFiles::for_root(dir.path()),
        network: Arc::new(crate::platform::network::fake::Unavailable::new(
            "no network in this test",
        )),
    };
    let store = Store::new(dir.path(), &platform);
    Machine {
        dir,
        store,
        log,
        commands: Some(commands),
    }
}

fn installed(name: &str, recorded: &str) -> Installed {
    Installed {
        name: name.into(),
        recorded: recorded.into(),
    }
}

fn same_release(running: &str) -> OsFacts {
    OsFacts {
        running: running.into(),
        other: String::new(),
        prior: running.into(),
        from_backup: false,
    }
}

#[test]
fn local_versions_are_the_directories_holding_the_image() {
    let m = machine(0, false);
    m.image(V2, "incus");
    m.image(V1, "incus");
    m.image(V3, "debug");
    m.write("var/lib/incus-os-extensions/stray.raw", b"x");
    std::fs::create_dir_all(m.root().join("var/lib/incus-os-extensions/empty")).unwrap();
    assert_eq!(m.store.local_versions("incus").unwrap(), vec![V1, V2]);
    assert_eq!(m.store.local_versions("debug").unwrap(), vec![V3]);
    assert!(m.store.local_versions("gpu-support").unwrap().is_empty());
    assert_eq!(
        m.store.local_versions("../x").unwrap_err().message,
        "invalid application name \"../x\""
    );
}

#[test]
fn verify_refuses_missing_empty_foreign_and_linked_images() {
    let m = machine(0, false);
    let msg = |v: &str| m.store.verify("incus", v).unwrap_err().message;
    assert!(msg(V1).ends_with("does not exist"), "{}", msg(V1));
    m.write(&format!("var/lib/incus-os-extensions/{V1}/incus.raw"), b"");
    assert!(msg(V1).ends_with("is empty"), "{}", msg(V1));
    m.write(
        &format!("var/lib/incus-os-extensions/{V1}/incus.raw"),
        &[7u8; 8192],
    );
    assert!(
        msg(V1).ends_with("not a disk image (no GPT header)"),
        "{}",
        msg(V1)
    );
    // A link out of the store, even to a good image, is not an image of the store.
    m.write("elsewhere/incus.raw", b"secret");
    m.symlink(
        &format!("var/lib/incus-os-extensions/{V2}/incus.raw"),
        "/elsewhere/incus.raw",
    );
    assert!(
        msg(V2).contains("is a symlink (to /elsewhere/incus.raw)"),
        "{}",
        msg(V2)
    );
    // A version directory that is a link elsewhere.
    m.symlink(&format!("var/lib/incus-os-extensions/{V3}"), "/elsewhere");
    assert!(
        msg(V3).contains("version directory that is a symlink"),
        "{}",
        msg(V3)
    );
    assert!(m.store.verify("incus", "..").is_err());

    m.image(V1, "incus");
    m.store.verify("incus", V1).unwrap();
    // 4096-byte sectors: the header at 4096.
    let mut data = vec![0u8; 8192];
    data[4096..4104].copy_from_slice(b"EFI PART");
    m.write(
        &format!("var/lib/incus-os-extensions/{V2}/debug.raw"),
        &data,
    );
    m.store.verify("debug", V2).unwrap();
}

#[test]
fn activate_swaps_the_link_and_rollback_puts_the_previous_one_back() {
    let m = machine(0, false);
    m.image(V1, "incus");
    m.image(V2, "incus");
    let mut undo = Undo::new(m.store.host());
    m.store.activate(&mut undo, "incus", V1).unwrap();
    undo.commit();
    assert_eq!(m.link("incus").unwrap(), image_path(V1, "incus"));
    assert_eq!(
        m.store.active_version("incus").unwrap().as_deref(),
        Some(V1)
    );

    let mut undo = Undo::new(m.store.host());
    m.store.activate(&mut undo, "incus", V2).unwrap();
    assert_eq!(m.link("incus").unwrap(), image_path(V2, "incus"));
    undo.rollback();
    assert_eq!(m.link("incus").unwrap(), image_path(V1, "incus"));
    // No temporary link left behind.
    let names: Vec<_> = std::fs::read_dir(m.root().join("var/lib/extensions"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("incus.raw")]);

    // A first activation rolled back leaves no link (and no directory it created).
    m.image(V1, "debug");
    std::fs::remove_dir_all(m.root().join("var/lib/extensions")).unwrap();
    let mut undo = Undo::new(m.store.host());
    m.store.activate(&mut undo, "debug", V1).unwrap();
    assert!(m.link("debug").is_some());
    drop(undo);
    assert!(!m.root().join("var/lib/extensions").exists());
}

#[test]
fn activate_refuses_a_corrupt_image_and_a_regular_file_in_the_links_place() {
    let m = machine(0, false);
    m.write(
        &format!("var/lib/incus-os-extensions/{V1}/incus.raw"),
        b"junk",
    );
    let mut undo = Undo::new(m.store.host());
    let e = m.store.activate(&mut undo, "incus", V1).unwrap_err();
    assert!(e.message.contains("no GPT header"), "{e:?}");
    assert!(m.link("incus").is_none());

    m.image(V2, "incus");
    m.write("var/lib/extensions/incus.raw", b"hand-placed image");
    let e = m.store.activate(&mut undo, "incus", V2).unwrap_err();
    assert_eq!(
        e.message,
        "/var/lib/extensions/incus.raw exists and is not a symlink: refusing to replace it"
    );
    assert_eq!(
        std::fs::read(m.root().join("var/lib/extensions/incus.raw")).unwrap(),
        b"hand-placed image"
    );
}

#[test]
fn a_links_directory_leading_elsewhere_is_refused() {
    let m = machine(0, false);
    m.image(V1, "incus");
    std::fs::create_dir_all(m.root().join("elsewhere")).unwrap();
    m.symlink("var/lib/extensions", "/elsewhere");
    let mut undo = Undo::new(m.store.host());
    let e = m.store.activate(&mut undo, "incus", V1).unwrap_err();
    assert!(e.message.contains("through a symlink"), "{e:?}");
    assert_eq!(
        std::fs::read_dir(m.root().join("elsewhere"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn refresh_links_the_chosen_versions_merges_them_and_deletes_what_is_no_longer_available() {
    let m = machine(0, false);
    for v in [V1, V2, V3] {
        m.image(v, "incus");
    }
    m.image(V1, "debug");
    // An uninstalled application's link goes; a hand-placed image file stays.
    m.image(V1, "gpu-support");
    m.symlink(
        "var/lib/extensions/gpu-support.raw",
        &image_path(V1, "gpu-support"),
    );
    m.write("var/lib/extensions/custom.raw", b"by hand");

    let out = m
        .store
        .refresh_extensions(
            &[installed("incus", V2), installed("debug", "")],
            &OsFacts {
                other: V1.into(),
                ..same_release(V3)
            },
        )
        .unwrap();
    assert_eq!(out[0].name, "incus");
    assert_eq!(out[0].version, V2);
    assert_eq!(out[0].available, vec![V1, V2, V3]);
    assert_eq!(out[1].version, V1);
    assert_eq!(m.link("incus").unwrap(), image_path(V2, "incus"));
    assert_eq!(m.link("debug").unwrap(), image_path(V1, "debug"));
    assert!(m.link("gpu-support").is_none());
    assert!(m.root().join("var/lib/extensions/custom.raw").exists());
    // Linked first, then merged, then the units reloaded.
    assert_eq!(
        m.calls(),
        vec![
            format!(
                "systemd-sysext refresh [incus -> {}]",
                image_path(V2, "incus")
            ),
            "daemon-reload".to_string()
        ]
    );

    // Upgraded to a release whose image is not V1's: V1 is no longer available and goes.
    let out = m
        .store
        .refresh_extensions(
            &[installed("incus", V2)],
            &OsFacts {
                prior: V2.into(),
                ..same_release(V3)
            },
        )
        .unwrap();
    assert_eq!(out[0].version, V3);
    assert_eq!(out[0].available, vec![V2, V3]);
    assert_eq!(out[0].removed, vec![V1]);
    assert!(!m.has_image(V1, "incus"));
    // Another application's image in the same release directory stays.
    assert!(m.has_image(V1, "debug"));
    assert!(m.has_image(V2, "incus") && m.has_image(V3, "incus"));
}

#[test]
fn a_failed_refresh_puts_the_previous_links_back_and_merges_them_again() {
    let m = machine(1, false);
    m.image(V1, "incus");
    m.image(V2, "incus");
    m.image(V1, "gpu-support");
    m.symlink("var/lib/extensions/incus.raw", &image_path(V1, "incus"));
    m.symlink(
        "var/lib/extensions/gpu-support.raw",
        &image_path(V1, "gpu-support"),
    );

    let e = m
        .store
        .refresh_extensions(&[installed("incus", V2)], &same_release(V2))
        .unwrap_err();
    assert_eq!(
        e.message,
        "cannot refresh system extensions: Failed to run: systemd-sysext refresh: exit status 1 (Failed to merge extensions: Invalid argument)"
    );
    assert_eq!(m.link("incus").unwrap(), image_path(V1, "incus"));
    assert_eq!(
        m.link("gpu-support").unwrap(),
        image_path(V1, "gpu-support")
    );
    // The failed merge saw the new link; the second one merged the old links again.
    assert_eq!(
        m.calls(),
        vec![
            format!(
                "systemd-sysext refresh [incus -> {}]",
                image_path(V2, "incus")
            ),
            format!(
                "systemd-sysext refresh [incus -> {}]",
                image_path(V1, "incus")
            ),
            "daemon-reload".to_string(),
        ]
    );
    // Nothing deleted.
    assert!(m.has_image(V1, "incus") && m.has_image(V2, "incus"));
}

#[test]
fn a_failed_daemon_reload_rolls_back_too() {
    let m = machine(0, true);
    m.image(V1, "incus");
    m.image(V2, "incus");
    m.symlink("var/lib/extensions/incus.raw", &image_path(V1, "incus"));
    let e = m
        .store
        .refresh_extensions(&[installed("incus", V2)], &same_release(V2))
        .unwrap_err();
    assert_eq!(e.message, "cannot reload systemd units: Access denied");
    assert_eq!(m.link("incus").unwrap(), image_path(V1, "incus"));
    assert_eq!(m.calls().len(), 4, "{:?}", m.calls());
}

#[test]
fn offline_the_refresh_is_refused_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path(), &Platform::for_root(dir.path()));
    let m = Machine {
        dir,
        store,
        log: Arc::default(),
        commands: None,
    };
    m.image(V1, "incus");
    m.image(V2, "incus");
    m.symlink("var/lib/extensions/incus.raw", &image_path(V1, "incus"));
    let e = m
        .store
        .refresh_extensions(&[installed("incus", V2)], &same_release(V2))
        .unwrap_err();
    assert!(
        e.message
            .starts_with("cannot refresh system extensions: cannot run systemd-sysext: offline"),
        "{e:?}"
    );
    assert_eq!(m.link("incus").unwrap(), image_path(V1, "incus"));
}

#[test]
fn corrupt_images_are_deleted_except_the_recorded_one_which_is_not_activated() {
    let m = machine(0, false);
    m.image(V1, "incus");
    m.write(
        &format!("var/lib/incus-os-extensions/{V2}/incus.raw"),
        b"torn",
    );
    m.write(
        &format!("var/lib/incus-os-extensions/{V3}/incus.raw"),
        b"torn",
    );
    let out = m
        .store
        .refresh_extensions(&[installed("incus", V2)], &same_release(V3))
        .unwrap();
    assert_eq!(out[0].version, V1);
    assert_eq!(out[0].removed, vec![V3]);
    assert!(
        m.has_image(V2, "incus"),
        "the recorded image is only logged"
    );
    assert!(!m
        .root()
        .join(format!("var/lib/incus-os-extensions/{V3}"))
        .exists());
    assert_eq!(m.link("incus").unwrap(), image_path(V1, "incus"));
}

#[test]
fn an_application_without_any_usable_image_changes_nothing() {
    let m = machine(0, false);
    m.image(V1, "incus");
    m.symlink("var/lib/extensions/debug.raw", "/nowhere");
    let e = m
        .store
        .refresh_extensions(
            &[installed("incus", V1), installed("debug", V1)],
            &same_release(V1),
        )
        .unwrap_err();
    assert_eq!(
        e.message,
        "no on-disk sysext image found for application 'debug'"
    );
    assert!(m.link("incus").is_none());
    assert_eq!(m.link("debug").unwrap(), "/nowhere");
    assert!(m.calls().is_empty());
}

#[test]
fn booting_the_backup_slot_activates_the_older_releases_image_and_keeps_the_newer() {
    let m = machine(0, false);
    m.image(V1, "incus");
    m.image(V3, "incus");
    m.symlink("var/lib/extensions/incus.raw", &image_path(V3, "incus"));
    let out = m
        .store
        .refresh_extensions(
            &[installed("incus", V3)],
            &OsFacts {
                running: V1.into(),
                other: V3.into(),
                prior: V3.into(),
                from_backup: true,
            },
        )
        .unwrap();
    assert_eq!(
        (out[0].version.as_str(), out[0].rule),
        (V1, Rule::BackupSlot)
    );
    assert_eq!(m.link("incus").unwrap(), image_path(V1, "incus"));
    assert!(m.has_image(V3, "incus"));
}

#[test]
fn removing_an_application_unlinks_refreshes_then_deletes_its_images() {
    let m = machine(0, false);
    m.image(V1, "debug");
    m.image(V2, "debug");
    m.image(V2, "incus");
    m.symlink("var/lib/extensions/debug.raw", &image_path(V2, "debug"));
    m.store.remove_application("debug").unwrap();
    assert!(m.link("debug").is_none());
    assert!(!m.has_image(V1, "debug") && !m.has_image(V2, "debug"));
    assert!(m.has_image(V2, "incus"));
    assert_eq!(m.calls()[0], "systemd-sysext refresh [incus -> -]");

    // A failed refresh: the link is back, the images stay.
    let m = machine(1, false);
    m.image(V1, "debug");
    m.symlink("var/lib/extensions/debug.raw", &image_path(V1, "debug"));
    assert!(m.store.remove_application("debug").is_err());
    assert_eq!(m.link("debug").unwrap(), image_path(V1, "debug"));
    assert!(m.has_image(V1, "debug"));
}

#[test]
fn an_image_systemd_sysext_skips_fails_the_refresh_and_the_links_go_back() {
    let m = machine(0, false);
    m.image(V1, "debug");
    m.image(V1, "incus");
    m.symlink("var/lib/extensions/debug.raw", &image_path(V1, "debug"));
    let fake = m.commands.clone().unwrap();
    *fake.incompatible.lock().unwrap() = vec!["incus".into()];
    m.store
        .refresh_extensions(&[installed("debug", V1)], &same_release(V1))
        .unwrap();

    // Beside a merged one: the refresh exits 0, but `incus` is not merged.
    let e = m
        .store
        .refresh_extensions(
            &[installed("debug", V1), installed("incus", V1)],
            &same_release(V1),
        )
        .unwrap_err();
    assert_eq!(
        e.message,
        "cannot refresh system extensions: systemd-sysext did not merge incus (Using extensions 'debug'.; Unmerged '/usr'.; Merged extensions into '/usr'.)"
    );
    assert!(m.link("incus").is_none(), "the link is rolled back");
    assert_eq!(m.link("debug").unwrap(), image_path(V1, "debug"));
    // Merged again without it, and only then were the units reloaded.
    assert_eq!(*fake.merged.lock().unwrap(), ["debug"]);
    assert_eq!(
        m.calls()[2..],
        [
            format!(
                "systemd-sysext refresh [incus -> {}]",
                image_path(V1, "incus")
            ),
            "systemd-sysext refresh [incus -> -]".to_string(),
            "daemon-reload".to_string(),
        ]
    );

    // Alone: nothing merged at all.
    let e = m
        .store
        .refresh_extensions(&[installed("incus", V1)], &same_release(V1))
        .unwrap_err();
    assert_eq!(
        e.message,
        "cannot refresh system extensions: systemd-sysext did not merge incus (No suitable extensions found (1 ignored due to incompatible version).; Unmerged '/usr'.)"
    );
    assert!(m.link("incus").is_none());
    assert_eq!(m.link("debug").unwrap(), image_path(V1, "debug"));
    assert_eq!(*fake.merged.lock().unwrap(), ["debug"]);
    // Nothing deleted.
    assert!(m.has_image(V1, "incus") && m.has_image(V1, "debug"));
}

#[test]
fn what_systemd_sysext_status_says_is_read_as_recorded() {
    assert_eq!(
        merged_extensions(r#"[{"hierarchy":"/opt","extensions":"none","since":null},{"hierarchy":"/usr","extensions":["debug","incus"],"since":1796638054544665}]"#).unwrap(),
        ["debug", "incus"]
    );
    assert!(merged_extensions(r#"[{"hierarchy":"/opt","extensions":"none","since":null},{"hierarchy":"/usr","extensions":"none","since":null}]"#).unwrap().is_empty());
    let e = merged_extensions("Failed to parse").unwrap_err();
    assert_eq!(
        e,
        "cannot read what systemd-sysext status says: Failed to parse"
    );
    assert!(merged_extensions(r#"{"hierarchy":"/usr"}"#).is_err());
}
