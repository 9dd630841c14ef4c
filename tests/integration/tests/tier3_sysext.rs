//! Tier 3: the host's application image store against a real `systemd-sysext` (Debian
//! 12's systemd 252) in a booted machine. Stand-in images of `incus` (a shell-script
//! daemon and a unit named `incus.service`, each saying it is a stand-in) are built at
//! test time as GPT disk images with a `usr` partition; the machine attaches them on loop
//! devices ([`MachineBuilder::loop_devices`]). The store is driven by a small tool run
//! inside the machine (`incus-osd-sysext-store`, the daemon's own `Store` code on `/`):
//! activation, a switch of version, the version chosen after booting the other slot and
//! coming back, a refresh that fails on a corrupt image and puts the
//! previous link back and merged, and removal; and the daemon as its unit, restarted from
//! a `/usr` with an application merged.

use std::path::Path;
use std::time::{Duration, Instant};

use incus_osd::platform::systemd::UnitAction;
use incus_osd_integration::get_ok;
use incus_osd_integration::sysext::{build_sysext_image, wipe_partition, ExtFile, StandIn};
use incus_osd_integration::tier3::{
    install_and_start, socket, wait_for, wait_system_ready, Site, IMAGE_VERSION, UNIT as T3_UNIT,
};
use incus_osd_test_machine::{tier3_or_return, Machine, MachineBuilder};
use serde_json::Value;

const V1: &str = "202601010000";
const V2: &str = "202601150000";
const V3: &str = "202602010000";
const TOOL: &str = "/srv/incus-osd-sysext-store";
const UNIT: &str = "incus.service";

fn boot() -> Machine {
    let m = MachineBuilder::new()
        .loop_devices()
        .bind_ro(env!("CARGO_BIN_EXE_incus-osd-sysext-store"), TOOL)
        .boot()
        .expect("boot");
    eprintln!("machine {} booted in {:?}", m.name(), m.boot_duration());
    m
}

/// Puts `image` in the store as `version`'s image of `app`.
fn place(m: &Machine, version: &str, app: &str, image: &Path) {
    m.write_file(
        format!("/var/lib/incus-os-extensions/{version}/{app}.raw"),
        std::fs::read(image).unwrap(),
    )
    .unwrap();
}

/// Runs the store tool; `Ok(stdout as JSON)` or `Err(stderr)`.
fn store(m: &Machine, args: &[&str]) -> Result<Value, String> {
    let mut argv = vec![TOOL];
    argv.extend_from_slice(args);
    let started = Instant::now();
    let out = m.run(&argv).unwrap();
    eprintln!("{args:?}: {:?}", started.elapsed());
    if out.status.success() {
        Ok(serde_json::from_str(&out.stdout).unwrap())
    } else {
        Err(out.stderr)
    }
}

/// The extensions merged over `/usr` and since when, as `systemd-sysext status` reports
/// them.
fn merged_since(m: &Machine) -> (Vec<String>, Value) {
    let out = m
        .run_ok(&["systemd-sysext", "status", "--json=short"])
        .unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    let usr = v
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hierarchy"] == "/usr")
        .unwrap_or_else(|| panic!("no /usr in {v}"))
        .clone();
    let names = match &usr["extensions"] {
        Value::Array(names) => names
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect(),
        // "none" when nothing is merged.
        _ => vec![],
    };
    (names, usr["since"].clone())
}

/// The extensions merged over `/usr`.
fn merged(m: &Machine) -> Vec<String> {
    merged_since(m).0
}

fn link(m: &Machine) -> String {
    m.run_ok(&["readlink", "/var/lib/extensions/incus.raw"])
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn show(m: &Machine, prop: &str) -> String {
    m.run_ok(&["systemctl", "show", "-p", prop, "--value", UNIT])
        .unwrap()
        .trim()
        .to_string()
}

/// Waits until the stand-in daemon started by the unit says it runs `version`.
fn running_daemon_is(m: &Machine, version: &str) {
    wait_for(
        &format!("the stand-in daemon of {version}"),
        Duration::from_secs(10),
        || {
            let v = m
                .run_ok(&["cat", "/run/incus-stand-in/version"])
                .unwrap_or_default();
            (v.trim() == version).then_some(())
        },
    );
}

fn read(m: &Machine, path: &str) -> String {
    m.run_ok(&["cat", path]).unwrap().trim().to_string()
}

#[test]
fn store_activates_switches_rolls_back_and_removes_real_system_extensions() {
    tier3_or_return!();
    let started = Instant::now();
    let build = tempfile::tempdir().unwrap();
    let images: Vec<_> = [V1, V2, V3]
        .iter()
        .map(|v| {
            let dir = build.path().join(v);
            std::fs::create_dir(&dir).unwrap();
            StandIn::new("incus", v, &[UNIT]).build(&dir)
        })
        .collect();
    // V3's image is corrupt past its partition table: the store's own check passes,
    // systemd cannot mount it.
    wipe_partition(&images[2]);
    eprintln!("images built in {:?}", started.elapsed());

    let m = boot();
    place(&m, V1, "incus", &images[0]);
    place(&m, V2, "incus", &images[1]);
    assert_eq!(show(&m, "LoadState"), "not-found");

    // Installed at V1: linked, merged, the unit known to systemd after the reload.
    let done = store(&m, &["refresh", "--running", V1, &format!("incus={V1}")]).unwrap();
    assert_eq!(done[0]["version"], V1, "{done}");
    assert_eq!(done[0]["available"], serde_json::json!([V1, V2]), "{done}");
    assert_eq!(
        link(&m),
        format!("/var/lib/incus-os-extensions/{V1}/incus.raw")
    );
    assert_eq!(merged(&m), ["incus"]);
    let list = m.run_ok(&["systemd-sysext", "list"]).unwrap();
    assert!(list.contains("incus") && list.contains("raw"), "{list}");
    assert_eq!(read(&m, "/usr/share/incus-stand-in/version"), V1);
    assert_eq!(show(&m, "LoadState"), "loaded");
    assert!(show(&m, "Description").contains(&format!("stand-in for {UNIT} of incus {V1}")));
    m.run_ok(&["systemctl", "start", UNIT]).unwrap();
    assert_eq!(show(&m, "ActiveState"), "active");
    running_daemon_is(&m, V1);

    // Switched to V2: the link moves, V2 is what is merged, a restart runs V2's daemon.
    let done = store(&m, &["refresh", "--running", V1, &format!("incus={V2}")]).unwrap();
    assert_eq!(done[0]["version"], V2, "{done}");
    assert_eq!(
        link(&m),
        format!("/var/lib/incus-os-extensions/{V2}/incus.raw")
    );
    assert_eq!(merged(&m), ["incus"]);
    assert_eq!(read(&m, "/usr/share/incus-stand-in/version"), V2);
    assert!(show(&m, "Description").contains(V2));
    m.run_ok(&["systemctl", "restart", UNIT]).unwrap();
    running_daemon_is(&m, V2);

    // A boot of the backup slot (the previous boot ran V2's release, V1's runs now): the
    // image downloaded with the running release is merged. Back on V2's release: the newest.
    let done = store(
        &m,
        &[
            "refresh",
            "--running",
            V1,
            "--other",
            V2,
            "--prior",
            V2,
            &format!("incus={V2}"),
        ],
    )
    .unwrap();
    assert_eq!(
        (&done[0]["version"], &done[0]["rule"]),
        (&V1.into(), &"BackupSlot".into())
    );
    assert_eq!(read(&m, "/usr/share/incus-stand-in/version"), V1);
    let done = store(
        &m,
        &[
            "refresh",
            "--running",
            V2,
            "--other",
            V1,
            "--prior",
            V1,
            &format!("incus={V1}"),
        ],
    )
    .unwrap();
    assert_eq!(
        (&done[0]["version"], &done[0]["rule"]),
        (&V2.into(), &"NewerRelease".into())
    );
    assert_eq!(read(&m, "/usr/share/incus-stand-in/version"), V2);

    // V3 is recorded but its image cannot be merged: the refresh fails, the link to V2 is
    // back and V2 merged again, the unit still there. (systemd 252 fails that refresh
    // while reading the images, before unmerging: V2's merge is then redone by the
    // rollback, hence a new merge time.)
    place(&m, V3, "incus", &images[2]);
    let (_, since) = merged_since(&m);
    let err = store(&m, &["refresh", "--running", V1, &format!("incus={V3}")]).unwrap_err();
    eprintln!("{err}");
    assert!(err.contains("cannot refresh system extensions"), "{err}");
    assert!(
        err.contains("Failed to read metadata for image incus"),
        "{err}"
    );
    assert_eq!(
        link(&m),
        format!("/var/lib/incus-os-extensions/{V2}/incus.raw")
    );
    let (names, since_after) = merged_since(&m);
    assert_eq!(names, ["incus"]);
    assert_ne!(since_after, since, "merged again by the rollback");
    assert_eq!(read(&m, "/usr/share/incus-stand-in/version"), V2);
    assert_eq!(show(&m, "LoadState"), "loaded");
    assert!(show(&m, "Description").contains(V2));
    // Nothing was deleted by the failed attempt.
    for v in [V1, V2, V3] {
        m.run_ok(&[
            "test",
            "-f",
            &format!("/var/lib/incus-os-extensions/{v}/incus.raw"),
        ])
        .unwrap();
    }

    // Removed: no link, nothing merged, the unit gone from systemd, the images deleted.
    m.run_ok(&["systemctl", "stop", UNIT]).unwrap();
    store(&m, &["remove", "incus"]).unwrap();
    assert_eq!(link(&m), "");
    assert!(merged(&m).is_empty());
    assert_eq!(show(&m, "LoadState"), "not-found");
    let left = m
        .run_ok(&["find", "/var/lib/incus-os-extensions", "-name", "*.raw"])
        .unwrap();
    assert_eq!(left.trim(), "");
    eprintln!("whole test: {:?}", started.elapsed());
}

/// An image made for another OS (its extension release names `ID=other-os`): systemd-sysext
/// skips it and still exits 0. The store sees that it is not merged and fails the refresh,
/// so the install or update does not go on as if it were: the link is rolled back, an
/// application merged before (`debug`) stays merged, the incompatible one is not.
#[test]
fn an_image_made_for_another_os_is_not_merged_and_the_refresh_fails() {
    tier3_or_return!();
    let started = Instant::now();
    let build = tempfile::tempdir().unwrap();
    let debug = StandIn::new("debug", V1, &["debug.service"]).build(build.path());
    let mut files = StandIn::new("incus", V1, &[UNIT]).files();
    files.push(ExtFile::new(
        "lib/extension-release.d/extension-release.incus",
        "ID=other-os\n",
        0o644,
    ));
    let foreign = build_sysext_image(build.path(), "incus", &files);

    let m = boot();
    place(&m, V1, "debug", &debug);
    place(&m, V1, "incus", &foreign);
    store(&m, &["refresh", "--running", V1, &format!("debug={V1}")]).unwrap();
    assert_eq!(merged(&m), ["debug"]);
    // What systemd-sysext itself says of the image: exit 0, skipped.
    m.run_ok(&[
        "ln",
        "-s",
        &format!("/var/lib/incus-os-extensions/{V1}/incus.raw"),
        "/var/lib/extensions/incus.raw",
    ])
    .unwrap();
    let out = m.run(&["systemd-sysext", "refresh"]).unwrap();
    eprintln!(
        "systemd-sysext refresh: {:?}\nstdout: {}\nstderr: {}",
        out.status, out.stdout, out.stderr
    );
    assert!(out.status.success());
    let status = m
        .run_ok(&["systemd-sysext", "status", "--json=short"])
        .unwrap();
    eprintln!("systemd-sysext status --json=short: {status}");
    assert_eq!(merged(&m), ["debug"]);
    m.run_ok(&["rm", "/var/lib/extensions/incus.raw"]).unwrap();
    store(&m, &["refresh", "--running", V1, &format!("debug={V1}")]).unwrap();

    let err = store(
        &m,
        &[
            "refresh",
            "--running",
            V1,
            &format!("debug={V1}"),
            &format!("incus={V1}"),
        ],
    )
    .unwrap_err();
    eprintln!("{err}");
    assert!(
        err.contains(
            "cannot refresh system extensions: systemd-sysext did not merge incus (Using extensions 'debug'.;"
        ),
        "{err}"
    );
    assert_eq!(link(&m), "", "the link is rolled back");
    assert_eq!(merged(&m), ["debug"]);
    assert_eq!(show(&m, "LoadState"), "not-found");

    // The incompatible image alone (`debug` no longer installed): systemd-sysext merges
    // nothing and still exits 0; the refresh fails, `debug`'s link is back and merged.
    let err = store(&m, &["refresh", "--running", V1, &format!("incus={V1}")]).unwrap_err();
    eprintln!("{err}");
    assert!(
        err.contains("systemd-sysext did not merge incus (No suitable extensions found"),
        "{err}"
    );
    assert!(err.contains("ignored due to incompatible version"), "{err}");
    assert_eq!(link(&m), "");
    assert_eq!(merged(&m), ["debug"]);
    m.run_ok(&["test", "-L", "/var/lib/extensions/debug.raw"])
        .unwrap();
    eprintln!("whole test: {:?}", started.elapsed());
}

/// The daemon as `incus-osd.service` in a machine that merges an application image: its
/// binary, plugins and OS identity are in `/usr` (copied, as on IncusOS, not bound), so
/// after the merge it still answers, and restarts from the merged `/usr` with every
/// plugin and the same OS identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_restarts_from_a_usr_with_an_application_merged() {
    tier3_or_return!();
    let started = Instant::now();
    let build = tempfile::tempdir().unwrap();
    let image = StandIn::new("incus", V1, &[UNIT]).build(build.path());
    let site = Site::new();
    let b = site
        .sysext_builder()
        .bind_ro(env!("CARGO_BIN_EXE_incus-osd-sysext-store"), TOOL);
    let m = tokio::task::spawn_blocking(move || b.boot().expect("boot"))
        .await
        .unwrap();
    site.install_in_usr(&m);
    let (sd, _) = install_and_start(&m).await;
    let sock = socket(&m);
    let plugins = get_ok(&sock, "/1.0/plugins").await["loaded"]
        .as_array()
        .unwrap()
        .len();
    assert!(plugins > 0);

    place(&m, V1, "incus", &image);
    // The machine lives (and runs the daemon) until the end of the test.
    let _machine = tokio::task::spawn_blocking(move || {
        store(&m, &["refresh", "--running", V1, &format!("incus={V1}")]).unwrap();
        assert_eq!(merged(&m), ["incus"]);
        assert_eq!(show(&m, "LoadState"), "loaded");
        m
    })
    .await
    .unwrap();
    assert_eq!(
        get_ok(&sock, "/1.0").await["environment"]["os_version"],
        IMAGE_VERSION
    );

    sd.run_job(UnitAction::Restart, T3_UNIT).await.unwrap();
    wait_system_ready(&sock).await;
    let after = get_ok(&sock, "/1.0/plugins").await;
    assert_eq!(after["failed"], serde_json::json!([]), "{after}");
    assert_eq!(after["loaded"].as_array().unwrap().len(), plugins);
    assert_eq!(
        get_ok(&sock, "/1.0").await["environment"]["os_version"],
        IMAGE_VERSION
    );
    eprintln!("whole test: {:?}", started.elapsed());
}
