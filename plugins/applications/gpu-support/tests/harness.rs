//! The gpu-support application as the daemon loads it, against the recording harness
//! host: sysfs is a tree under the harness's root, the module commands are scripted.

use incus_osd_harness::{argv, assert_conformance, built_plugin, Event, Harness, Reply};
use plugin_api::{Hook, Kind};
use serde_json::{json, Value};

const LIB: &str = "incus_osd_plugin_application_gpu_support";
const FIRMWARE_VERSION: &str = "/usr/lib/firmware/linux-firmware-gpu-version";

fn get(h: &Harness, version: &str) -> Value {
    let ctx = json!({"name": "gpu-support", "version": version});
    h.invoke("get", ctx.to_string().as_bytes()).unwrap()
}

/// A loaded module: `/sys/module/<module>`.
fn loaded(h: &Harness, module: &str) {
    std::fs::create_dir_all(h.host().real_path(&format!("/sys/module/{module}"))).unwrap();
}

/// A driver's directory as sysfs shows it: its own files (`unbind` empty) and a link per
/// bound device.
fn driver(h: &Harness, module: &str, devices: &[&str]) {
    let dir = format!("/sys/bus/pci/drivers/{module}");
    for file in ["bind", "unbind", "new_id", "remove_id", "uevent"] {
        h.host().put_file(&format!("{dir}/{file}"), b"", 0o200);
    }
    let real = h.host().real_path(&dir);
    std::os::unix::fs::symlink("../../../../module/x", real.join("module")).unwrap();
    for dev in devices {
        let target = format!("../../../../devices/pci0000:00/{dev}");
        std::os::unix::fs::symlink(target, real.join(dev)).unwrap();
    }
}

fn unbind_file(module: &str) -> String {
    format!("/sys/bus/pci/drivers/{module}/unbind")
}

fn opened(module: &str) -> Event {
    Event::File(incus_osd_harness::FileEffect::OpenedForWrite {
        path: unbind_file(module),
    })
}

fn command(words: &[&str]) -> Event {
    Event::Command(argv(words))
}

fn start(h: &Harness) {
    h.invoke("start", &h.app_context())
        .expect("start never fails");
}

#[test]
fn passes_the_generic_checks() {
    let outcomes = assert_conformance(built_plugin(LIB));
    let skipped: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.skipped())
        .map(|o| o.name.as_str())
        .collect();
    assert_eq!(
        skipped,
        ["reset", "backup-restore", "provider-ops"],
        "{outcomes:#?}"
    );
}

#[test]
fn writes_only_the_drivers_unbind_files_and_has_no_backup() {
    let h = Harness::load_built(LIB);
    let m = h.manifest();
    assert_eq!(
        (m.name.as_str(), m.kind),
        ("gpu-support", Kind::Application)
    );
    assert_eq!(m.start_weight, -1);
    assert!(!m.primary && m.dependencies.is_empty());
    assert_eq!(
        m.paths,
        ["amdgpu", "i915", "intel_vpu", "nouveau", "xe"].map(unbind_file)
    );
    assert_eq!(m.backup, None);
    for hook in [Hook::Wipe, Hook::Action, Hook::Backup, Hook::Restore] {
        assert!(!m.has(hook), "{hook:?}");
    }
    let err = h.factory_reset().unwrap_err();
    assert_eq!((err.status, err.message.as_str()), (500, "not supported"));
}

#[test]
fn start_unbinds_the_devices_then_reloads_each_loaded_module() {
    let h = Harness::load_built(LIB);
    loaded(&h, "amdgpu");
    driver(&h, "amdgpu", &["0000:03:00.0", "0000:04:00.0"]);
    // Not loaded: its driver directory is left alone.
    driver(&h, "i915", &["0000:00:02.0"]);
    // Loaded, no device bound (no driver directory at all).
    loaded(&h, "xe");
    h.host().on_command(&["rmmod"], Reply::ok(""));
    h.host().on_command(&["modprobe"], Reply::ok(""));
    start(&h);
    assert_eq!(
        h.host().events(),
        [
            opened("amdgpu"),
            opened("amdgpu"),
            command(&["rmmod", "amdgpu"]),
            command(&["modprobe", "amdgpu"]),
            command(&["rmmod", "xe"]),
            command(&["modprobe", "xe"]),
        ]
    );
    // The unbind file got one address per write (sysfs takes each write whole): the last
    // one is what the file holds here.
    assert_eq!(h.host().read_text(&unbind_file("amdgpu")), "0000:04:00.0");
    assert_eq!(h.host().read_text(&unbind_file("i915")), "");
    assert!(h.host().warnings().is_empty(), "{:?}", h.host().warnings());
}

#[test]
fn nothing_loaded_nothing_done() {
    let h = Harness::load_built(LIB);
    driver(&h, "nouveau", &["0000:01:00.0"]);
    start(&h);
    h.host().assert_untouched("no GPU module loaded");
}

#[test]
fn every_step_is_best_effort() {
    let h = Harness::load_built(LIB);
    // amdgpu: a device, but the driver has no unbind file: logged, the module still
    // reloads.
    loaded(&h, "amdgpu");
    let dir = h.host().real_path("/sys/bus/pci/drivers/amdgpu");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink("../x", dir.join("0000:03:00.0")).unwrap();
    // i915: cannot be unloaded: logged, not loaded again.
    loaded(&h, "i915");
    // nouveau: cannot be loaded again: logged.
    loaded(&h, "nouveau");
    h.host().on_command(&["rmmod"], Reply::ok(""));
    h.host().on_command(&["modprobe"], Reply::ok(""));
    h.host().on_command(
        &["rmmod", "i915"],
        Reply::fail(1, "rmmod: ERROR: Module i915 is in use"),
    );
    h.host().on_command(
        &["modprobe", "nouveau"],
        Reply::fail(1, "modprobe: FATAL: Module nouveau not found"),
    );
    start(&h);
    assert_eq!(
        h.host().commands(),
        [
            argv(&["rmmod", "amdgpu"]),
            argv(&["modprobe", "amdgpu"]),
            argv(&["rmmod", "i915"]),
            argv(&["rmmod", "nouveau"]),
            argv(&["modprobe", "nouveau"]),
        ]
    );
    let warnings = h.host().warnings();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(
        warnings[0].starts_with("Failed to unbind device 0000:03:00.0 (module amdgpu): "),
        "{warnings:?}"
    );
    assert!(
        warnings[1].starts_with("Failed to unload kernel module (module i915): ")
            && warnings[1].contains("in use"),
        "{warnings:?}"
    );
    assert!(
        warnings[2].starts_with("Failed to load kernel module (module nouveau): ")
            && warnings[2].contains("not found"),
        "{warnings:?}"
    );
}

#[test]
fn always_running() {
    let h = Harness::load_built(LIB);
    assert_eq!(
        h.invoke("running", &h.app_context()).unwrap(),
        json!({"running": true})
    );
    h.host().assert_untouched("running");
}

#[test]
fn the_friendly_version_is_the_firmwares_with_the_image_version() {
    let h = Harness::load_built(LIB);
    h.host().put_file(FIRMWARE_VERSION, b"20251111\n", 0o644);
    assert_eq!(
        get(&h, "202511041800"),
        json!({"state": {"friendly_version": "20251111 [202511041800]"}, "config": {}})
    );
    assert_eq!(get(&h, "")["state"]["friendly_version"], "20251111");
    assert!(h.host().warnings().is_empty());
}

#[test]
fn without_the_firmware_version_the_host_shows_the_image_version() {
    let h = Harness::load_built(LIB);
    assert_eq!(
        get(&h, "202511041800"),
        json!({"state": {"friendly_version": ""}, "config": {}})
    );
    assert_eq!(
        h.host().warnings(),
        [format!(
            "Cannot read the GPU firmware version: {FIRMWARE_VERSION} is missing or empty"
        )]
    );
}

#[test]
fn the_config_is_empty_and_anything_else_is_refused() {
    let h = Harness::load_built(LIB);
    h.apply_config(&json!({}));
    h.assert_config_refused(
        &json!({"modules": "x"}),
        "invalid request body: config.modules: unknown field `modules`, there are no fields at line 1 column 20",
    );
}
