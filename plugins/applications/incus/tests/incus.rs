//! The incus application's logic over the recording harness host: units and commands as
//! they run, files under the harness root, and initialization against a stand-in for
//! Incus' API on its unix socket (a test server answering the calls the plugin makes).

use incus_osd_application_common::testing::{call_lines, calls, error, host, stand_in, sync};
use incus_osd_harness::testserver::TestServer;
use incus_osd_harness::{argv, Event, HarnessHost, Reply, UnitCall, UnitOp};
use incus_osd_plugin_application_incus::{self as incus, init, Config, Lxcfs};
use plugin_api::{Host, Undo};
use serde_json::{json, Value};

fn incus_host() -> (HarnessHost, Host) {
    host("incus", &incus::PATHS)
}

fn config(cpu_shares: bool, load_average: bool) -> Config {
    Config {
        lxcfs: Lxcfs {
            cpu_shares,
            load_average,
        },
    }
}

#[test]
fn the_config_has_upstreams_field_names() {
    let c: Config =
        serde_json::from_value(json!({"lxcfs": {"cpu_shares": true, "load_average": false}}))
            .unwrap();
    assert_eq!(c, config(true, false));
    assert_eq!(
        serde_json::to_value(Config::default()).unwrap(),
        json!({"lxcfs": {"cpu_shares": false, "load_average": false}})
    );
    assert!(serde_json::from_value::<Config>(json!({"lxcfs": {"cfs": true}})).is_err());
}

#[test]
fn lxcfs_flags_go_to_etc_default_incus_and_incus_restarts() {
    let (hh, host) = incus_host();
    let mut undo = Undo::new(&host);
    incus::apply_config(&host, &mut undo, &Config::default(), &config(true, true)).unwrap();
    undo.commit();
    assert_eq!(
        hh.read_text("/etc/default/incus"),
        "LXCFS_OPTS=\"--enable-cfs --enable-loadavg\"\n"
    );
    assert_eq!(
        hh.unit_changes(),
        [
            UnitCall::new(UnitOp::DaemonReload, ""),
            UnitCall::new(UnitOp::Restart, "incus.service")
        ]
    );

    hh.clear_effects();
    let mut undo = Undo::new(&host);
    incus::apply_config(&host, &mut undo, &config(true, true), &config(false, true)).unwrap();
    undo.commit();
    assert_eq!(
        hh.read_text("/etc/default/incus"),
        "LXCFS_OPTS=\"--enable-loadavg\"\n"
    );

    // None selected: the file goes.
    let mut undo = Undo::new(&host);
    incus::apply_config(&host, &mut undo, &config(false, true), &Config::default()).unwrap();
    undo.commit();
    assert!(hh.read_file("/etc/default/incus").is_none());
}

#[test]
fn an_unchanged_config_touches_nothing() {
    let (hh, host) = incus_host();
    let mut undo = Undo::new(&host);
    incus::apply_config(&host, &mut undo, &config(true, false), &config(true, false)).unwrap();
    undo.commit();
    hh.assert_untouched("same config");
}

#[test]
fn a_failed_restart_puts_the_previous_options_back() {
    let (hh, host) = incus_host();
    hh.put_file(
        "/etc/default/incus",
        b"LXCFS_OPTS=\"--enable-cfs\"\n",
        0o644,
    );
    hh.fail_unit("incus.service", "Job for incus.service failed");
    let mut undo = Undo::new(&host);
    let err = incus::apply_config(&host, &mut undo, &config(true, false), &config(true, true))
        .unwrap_err();
    undo.rollback();
    assert_eq!(err.message, "Job for incus.service failed");
    assert_eq!(
        hh.read_text("/etc/default/incus"),
        "LXCFS_OPTS=\"--enable-cfs\"\n"
    );
}

#[test]
fn start_refreshes_users_and_sysctls_then_starts_the_units_in_order() {
    let (hh, host) = incus_host();
    hh.on_command(&["systemd-sysusers"], Reply::ok(""));
    incus::start(&host).unwrap();
    assert_eq!(
        hh.events(),
        [
            Event::Command(argv(&["systemd-sysusers"])),
            Event::Unit(UnitCall::new(UnitOp::Restart, "systemd-sysctl.service")),
            Event::Unit(UnitCall::new(UnitOp::Start, "incus.socket")),
            Event::Unit(UnitCall::new(UnitOp::Start, "incus-lxcfs.service")),
            Event::Unit(UnitCall::new(UnitOp::Start, "incus-startup.service")),
            Event::Unit(UnitCall::new(UnitOp::Start, "incus.service")),
        ]
    );
    assert!(incus::running(&host).unwrap());
}

#[test]
fn a_failing_sysusers_stops_the_start_with_its_error() {
    let (hh, host) = incus_host();
    hh.on_command(&["systemd-sysusers"], Reply::fail(1, "bad sysusers.d line"));
    let err = incus::start(&host).unwrap_err();
    assert_eq!(
        err.message,
        "Failed to run: systemd-sysusers: exit status 1 (bad sysusers.d line)"
    );
    assert!(hh.unit_changes().is_empty());
}

#[test]
fn stop_shuts_instances_down_first_then_the_rest() {
    let (hh, host) = incus_host();
    incus::stop(&host).unwrap();
    let stopped: Vec<String> = hh.unit_changes().into_iter().map(|c| c.unit).collect();
    assert_eq!(
        stopped,
        [
            "incus-startup.service",
            "incus.service",
            "incus.socket",
            "incus-lxcfs.service"
        ]
    );
    assert!(hh.unit_changes().iter().all(|c| c.op == UnitOp::Stop));
    assert!(!incus::running(&host).unwrap());
}

#[test]
fn reload_after_an_update_refreshes_users_reloads_systemd_and_restarts_incus() {
    let (hh, host) = incus_host();
    hh.on_command(&["systemd-sysusers"], Reply::ok(""));
    incus::reload(&host).unwrap();
    assert_eq!(
        hh.events(),
        [
            Event::Command(argv(&["systemd-sysusers"])),
            Event::Unit(UnitCall::new(UnitOp::DaemonReload, "")),
            Event::Unit(UnitCall::new(UnitOp::Restart, "incus.service")),
        ]
    );
    hh.clear_effects();
    incus::restart(&host).unwrap();
    assert_eq!(
        hh.unit_changes(),
        [UnitCall::new(UnitOp::Restart, "incus.service")]
    );
}

#[test]
fn the_friendly_version_is_incus_own_with_the_image_version() {
    let (hh, host) = incus_host();
    hh.on_command(&["incus", "--version"], Reply::ok("7.0.0\n"));
    assert_eq!(
        incus::friendly_version(&host, "202511041800").unwrap(),
        "7.0.0 [202511041800]"
    );
}

#[test]
fn stable_gives_way_to_lts_only_from_exactly_7_0_0() {
    let (hh, host) = incus_host();
    hh.on_command(&["incus", "--version"], Reply::ok("7.0.0\n"));
    incus::can_replace(&host, "incus", "incus-lts-7.0").unwrap();
    hh.on_command(&["incus", "--version"], Reply::ok("7.1.0\n"));
    let err = incus::can_replace(&host, "incus", "incus-lts-7.0").unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (400, "unable to replace application 'incus' with 'incus-lts-7.0': current Incus version (7.1.0) is too new to rollback to older LTS branch")
    );
    // LTS to stable: always, without asking Incus.
    hh.clear_effects();
    incus::can_replace(&host, "incus-lts-7.0", "incus").unwrap();
    assert!(hh.commands().is_empty());
}

#[test]
fn replacements_other_than_the_incus_swap_are_refused_with_upstreams_texts() {
    let (_hh, host) = incus_host();
    let cases = [
        ("incus", "incus", "can't replace application 'incus' with itself"),
        (
            "incus",
            "migration-manager",
            "unable to replace application 'incus' with 'migration-manager': unsupported application",
        ),
        (
            "incus-lts-7.0",
            "operations-center",
            "can't replace application 'incus-lts-7.0' with a non-Incus application",
        ),
    ];
    for (from, to, text) in cases {
        let err = incus::can_replace(&host, from, to).unwrap_err();
        assert_eq!(
            (err.status, err.message.as_str()),
            (400, text),
            "{from} -> {to}"
        );
    }
}

#[test]
fn a_wipe_unmounts_the_logs_volume_lazily_and_removes_incus_data() {
    let (hh, host) = incus_host();
    hh.put_file("/var/lib/incus/database/global/db.bin", b"db", 0o600);
    hh.put_file("/var/lib/incus-lxcfs/x", b"x", 0o600);
    hh.put_file("/var/log/incus/incusd.log", b"log", 0o600);
    std::fs::create_dir_all(hh.real_path("/var/lib/incus/storage-pools/local/custom/default_logs"))
        .unwrap();
    std::os::unix::fs::symlink(
        "storage-pools/local/custom/default_logs",
        hh.real_path("/var/lib/incus/logs"),
    )
    .unwrap();
    hh.on_command(&["umount"], Reply::ok(""));
    incus::wipe(&host).unwrap();
    assert_eq!(
        hh.commands(),
        [argv(&[
            "umount",
            "-l",
            "/var/lib/incus/storage-pools/local/custom/default_logs"
        ])]
    );
    for dir in ["/var/lib/incus", "/var/lib/incus-lxcfs", "/var/log/incus"] {
        assert!(!hh.real_path(dir).exists(), "{dir} is still there");
    }
    // Nothing to unmount without the link; still wiped.
    hh.clear_effects();
    hh.put_file("/var/lib/incus/x", b"x", 0o600);
    incus::wipe(&host).unwrap();
    assert!(hh.commands().is_empty());
    assert!(!hh.real_path("/var/lib/incus").exists());
}

#[test]
fn the_server_certificate_is_the_clusters_when_there_is_one() {
    let (hh, host) = incus_host();
    assert_eq!(incus::server_certificate(&host).unwrap(), None);
    hh.put_file("/var/lib/incus/server.crt", b"server-crt", 0o644);
    hh.put_file("/var/lib/incus/server.key", b"server-key", 0o600);
    assert_eq!(
        incus::server_certificate(&host).unwrap(),
        Some(("server-crt".into(), "server-key".into()))
    );
    hh.put_file("/var/lib/incus/cluster.crt", b"cluster-crt", 0o644);
    hh.put_file("/var/lib/incus/cluster.key", b"cluster-key", 0o600);
    assert_eq!(
        incus::server_certificate(&host).unwrap(),
        Some(("cluster-crt".into(), "cluster-key".into()))
    );
    assert_eq!(
        incus::client_certificate(&host).unwrap(),
        Some(("server-crt".into(), "server-key".into()))
    );
}

#[test]
fn the_backup_spec_is_upstreams_and_fits_the_paths() {
    let spec = incus::backup_spec();
    assert_eq!(spec.root, "/var/lib/incus/");
    assert_eq!(spec.excluded, ["guestapi", "shmounts", "unix.socket"]);
    assert_eq!(
        spec.units,
        [
            "incus-startup.service",
            "incus.socket",
            "incus.service",
            "incus-lxcfs.service"
        ]
    );
    let paths: Vec<String> = incus::PATHS.iter().map(|p| p.to_string()).collect();
    spec.validate(&paths).unwrap();
}

// --- initialization against a stand-in for Incus' API ---------------------------------

/// A stand-in for a fresh Incus: no pools, only unmanaged networks, an empty default
/// profile, no listen address.
fn fresh_incus(hh: &HarnessHost) -> TestServer {
    let server = stand_in(hh, incus::SOCKET);
    server.handle("/1.0", sync(json!({"config": {}, "api_extensions": []})));
    server.handle(
        "/1.0/profiles/default",
        sync(
            json!({"name": "default", "description": "Default Incus profile",
                    "config": {}, "devices": {}, "used_by": []}),
        ),
    );
    server.handle("/1.0/storage-pools", sync(json!([])));
    server.handle(
        "/1.0/networks",
        sync(json!([{"name": "eth0", "managed": false, "type": "physical"}])),
    );
    server.handle("/1.0/storage-pools/local/volumes/custom", sync(json!({})));
    server
}

fn zfs_pool_without_incus_dataset(hh: &HarnessHost) {
    hh.on_command(&["zpool", "list"], Reply::ok("local\n"));
    hh.on_command(
        &["zfs", "list"],
        Reply::fail(1, "cannot open 'local/incus': dataset does not exist"),
    );
    hh.on_command(&["zfs", "set"], Reply::ok(""));
}

fn body_of(server: &TestServer, line: &str) -> Value {
    let idx = call_lines(server)
        .iter()
        .position(|l| l == line)
        .unwrap_or_else(|| panic!("no {line} in {:?}", call_lines(server)));
    calls(server).remove(idx).2
}

#[test]
fn without_a_seed_the_defaults_make_a_pool_a_bridge_and_listen_on_8443() {
    let (hh, host) = incus_host();
    let server = fresh_incus(&hh);
    zfs_pool_without_incus_dataset(&hh);
    init::initialize(&host, None, &[]).unwrap();
    assert_eq!(
        call_lines(&server),
        [
            "GET /1.0",
            "GET /1.0",
            "GET /1.0/profiles/default",
            "GET /1.0/storage-pools",
            "GET /1.0/networks?recursion=1",
            "POST /1.0/storage-pools",
            "POST /1.0/storage-pools/local/volumes/custom",
            "POST /1.0/storage-pools/local/volumes/custom",
            "POST /1.0/storage-pools/local/volumes/custom",
            "POST /1.0/networks",
            "PUT /1.0/profiles/default",
            "PUT /1.0",
        ]
    );
    assert_eq!(
        body_of(&server, "POST /1.0/storage-pools"),
        json!({"name": "local", "driver": "zfs",
               "description": "Local storage pool (on system drive)",
               "config": {"source": "local/incus"}})
    );
    let volumes: Vec<Value> = calls(&server)
        .into_iter()
        .filter(|(_, p, _)| p == "/1.0/storage-pools/local/volumes/custom")
        .map(|(_, _, b)| b["name"].clone())
        .collect();
    assert_eq!(volumes, [json!("backups"), json!("images"), json!("logs")]);
    assert_eq!(
        body_of(&server, "POST /1.0/networks"),
        json!({"name": "incusbr0", "description": "Local network bridge (NAT)", "config": {}})
    );
    assert_eq!(
        body_of(&server, "PUT /1.0/profiles/default"),
        json!({"description": "Default Incus profile", "config": {}, "devices": {
            "root": {"type": "disk", "path": "/", "pool": "local"},
            "eth0": {"type": "nic", "network": "incusbr0", "name": "eth0"},
        }})
    );
    assert_eq!(
        body_of(&server, "PUT /1.0"),
        json!({"config": {
            "storage.backups_volume": "local/backups",
            "storage.images_volume": "local/images",
            "storage.logs_volume": "local/logs",
            "core.https_address": ":8443",
        }})
    );
    assert_eq!(
        hh.commands(),
        [
            argv(&["zpool", "list", "-H", "-o", "name", "local"]),
            argv(&["zfs", "list", "-H", "-o", "name", "local/incus"]),
            argv(&["zfs", "set", "incusos:use=incus", "local/incus"]),
        ]
    );
}

#[test]
fn no_pool_is_made_without_the_local_zpool_or_when_local_incus_exists() {
    for (zpool, dataset) in [(false, false), (true, true)] {
        let (hh, host) = incus_host();
        let server = fresh_incus(&hh);
        hh.on_command(
            &["zpool", "list"],
            if zpool {
                Reply::ok("local\n")
            } else {
                Reply::fail(1, "cannot open 'local': no such pool")
            },
        );
        hh.on_command(
            &["zfs", "list"],
            if dataset {
                Reply::ok("local/incus\n")
            } else {
                Reply::fail(1, "no dataset")
            },
        );
        init::initialize(&host, None, &[]).unwrap();
        let lines = call_lines(&server);
        assert!(
            !lines
                .iter()
                .any(|l| l.starts_with("POST /1.0/storage-pools")),
            "zpool {zpool}, dataset {dataset}: {lines:?}"
        );
        let profile = body_of(&server, "PUT /1.0/profiles/default");
        assert!(profile["devices"].get("root").is_none());
        assert!(!hh.commands().iter().any(|c| c[..2] == ["zfs", "set"]));
    }
}

#[test]
fn an_incus_with_pools_and_managed_networks_only_gets_its_listen_address() {
    let (hh, host) = incus_host();
    let server = fresh_incus(&hh);
    server.handle(
        "/1.0/storage-pools",
        sync(json!(["/1.0/storage-pools/default"])),
    );
    server.handle(
        "/1.0/networks",
        sync(json!([{"name": "lxdbr0", "managed": true}])),
    );
    server.handle(
        "/1.0",
        sync(json!({"config": {"core.https_address": "10.0.0.1:8443"}})),
    );
    init::initialize(&host, None, &[]).unwrap();
    assert!(
        hh.commands().is_empty(),
        "no ZFS look-up: {:?}",
        hh.commands()
    );
    assert!(!call_lines(&server).iter().any(|l| l.starts_with("POST")));
    assert_eq!(
        body_of(&server, "PUT /1.0"),
        json!({"config": {"core.https_address": "10.0.0.1:8443"}})
    );
}

#[test]
fn instance_bridges_become_physical_networks() {
    let (hh, host) = incus_host();
    let server = fresh_incus(&hh);
    hh.on_command(&["zpool", "list"], Reply::fail(1, "no pool"));
    std::fs::create_dir_all(hh.real_path("/sys/class/net/br-inst/bridge")).unwrap();
    std::fs::create_dir_all(hh.real_path("/sys/class/net/enp5s0")).unwrap();
    init::initialize(&host, None, &["br-inst".into(), "enp5s0".into()]).unwrap();
    let nets: Vec<Value> = calls(&server)
        .into_iter()
        .filter(|(m, p, _)| m == "POST" && p == "/1.0/networks")
        .map(|(_, _, b)| b)
        .collect();
    assert_eq!(
        nets,
        [
            json!({"name": "incusbr0", "description": "Local network bridge (NAT)", "config": {}}),
            json!({"name": "br-inst", "type": "physical", "config": {"parent": "br-inst"}}),
        ]
    );
}

#[test]
fn a_daemon_error_stops_initialization_with_incus_own_text() {
    let (hh, host) = incus_host();
    let server = fresh_incus(&hh);
    zfs_pool_without_incus_dataset(&hh);
    server.handle(
        "/1.0/storage-pools/local/volumes/custom",
        error(409, "Volume by that name already exists"),
    );
    let err = init::initialize(&host, None, &[]).unwrap_err();
    assert_eq!(err.status, 500);
    assert_eq!(
        err.message,
        "Incus: POST /1.0/storage-pools/local/volumes/custom: Volume by that name already exists"
    );
    // Nothing after the failed call: no network, no profile or server change.
    let lines = call_lines(&server);
    assert_eq!(
        lines.last().unwrap(),
        "POST /1.0/storage-pools/local/volumes/custom"
    );
    assert!(!lines.iter().any(|l| l.starts_with("PUT")), "{lines:?}");
}

#[test]
fn a_preseed_is_applied_in_incus_order_creating_or_updating_each_object() {
    let (hh, host) = incus_host();
    let server = stand_in(&hh, incus::SOCKET);
    server.handle(
        "/1.0",
        sync(json!({"config": {"images.auto_update_interval": "6"}})),
    );
    server.handle(
        "/1.0/storage-pools",
        sync(json!(["/1.0/storage-pools/data"])),
    );
    server.handle(
        "/1.0/storage-pools/data",
        sync(json!({"name": "data", "driver": "dir", "description": "old", "config": {"source": "/data"}})),
    );
    server.handle("/1.0/networks/br1", error(404, "Network not found"));
    server.handle("/1.0/networks", sync(json!({})));
    server.handle(
        "/1.0/profiles/default",
        sync(
            json!({"name": "default", "description": "Default", "config": {"limits.cpu": "2"},
                    "devices": {"eth0": {"type": "nic", "network": "incusbr0", "name": "eth0"}}}),
        ),
    );
    server.handle("/1.0/certificates", sync(json!({})));
    let seed: init::Seed = serde_json::from_value(json!({
        "apply_defaults": false,
        "preseed": {
            "config": {"core.https_address": "[::]:8443", "images.remote_cache_expiry": 5},
            "storage_pools": [{"name": "data", "driver": "dir", "config": {"volume.size": "1GiB"}}],
            "networks": [{"name": "br1", "type": "bridge", "config": {"ipv4.address": "auto"}}],
            "profiles": [{"name": "default", "devices": {
                "eth0": {"network": "br1"},
                "root": {"type": "disk", "path": "/", "pool": "data"}}}],
            "certificates": [{"name": "admin", "type": "client", "certificate": "PEM"}],
        }
    }))
    .unwrap();
    init::initialize(&host, Some(&seed), &[]).unwrap();
    assert_eq!(
        call_lines(&server),
        [
            "GET /1.0",
            "GET /1.0",
            "PUT /1.0",
            "GET /1.0/storage-pools",
            "GET /1.0/storage-pools/data",
            "PUT /1.0/storage-pools/data",
            "GET /1.0/networks/br1?project=default",
            "POST /1.0/networks?project=default",
            "GET /1.0/profiles/default?project=default",
            "PUT /1.0/profiles/default?project=default",
            "POST /1.0/certificates",
            // No apply_defaults: the address is checked (the stand-in does not remember
            // the PUT, so it is set again).
            "GET /1.0",
            "PUT /1.0",
        ]
    );
    let c = calls(&server);
    assert_eq!(
        c[2].2,
        json!({"config": {"images.auto_update_interval": "6",
                          "core.https_address": "[::]:8443",
                          "images.remote_cache_expiry": "5"}})
    );
    assert_eq!(
        c[5].2,
        json!({"description": "old", "config": {"source": "/data", "volume.size": "1GiB"}})
    );
    assert_eq!(
        c[7].2,
        json!({"name": "br1", "type": "bridge", "config": {"ipv4.address": "auto"}})
    );
    assert_eq!(
        c[9].2,
        json!({"description": "Default", "config": {"limits.cpu": "2"}, "devices": {
            "eth0": {"type": "nic", "network": "br1", "name": "eth0"},
            "root": {"type": "disk", "path": "/", "pool": "data"}}})
    );
    assert_eq!(
        c[10].2,
        json!({"name": "admin", "type": "client", "certificate": "PEM"})
    );
    assert_eq!(init::seeded_client_certificates(Some(&seed)), ["PEM"]);
    assert!(hh.commands().is_empty());
}

#[test]
fn a_pool_of_another_driver_is_refused() {
    let (hh, host) = incus_host();
    let server = stand_in(&hh, incus::SOCKET);
    server.handle("/1.0", sync(json!({"config": {}})));
    server.handle(
        "/1.0/storage-pools",
        sync(json!(["/1.0/storage-pools/data"])),
    );
    server.handle(
        "/1.0/storage-pools/data",
        sync(json!({"name": "data", "driver": "dir", "config": {}})),
    );
    let seed: init::Seed = serde_json::from_value(json!({
        "preseed": {"storage_pools": [{"name": "data", "driver": "zfs"}]}
    }))
    .unwrap();
    let err = init::initialize(&host, Some(&seed), &[]).unwrap_err();
    assert_eq!(
        err.message,
        "Storage pool \"data\" is of type \"dir\" instead of \"zfs\""
    );
    assert!(!call_lines(&server).iter().any(|l| l.starts_with("PUT")));
}

#[test]
fn a_trusted_certificate_is_added_as_a_client_one() {
    let (hh, host) = incus_host();
    let server = stand_in(&hh, incus::SOCKET);
    server.handle(
        "/1.0",
        sync(json!({"config": {"core.https_address": ":8443"}})),
    );
    server.handle("/1.0/certificates", sync(json!({})));
    init::add_trusted_certificate(&host, "oc", "PEM").unwrap();
    assert_eq!(call_lines(&server), ["GET /1.0", "POST /1.0/certificates"]);
    assert_eq!(
        calls(&server)[1].2,
        json!({"name": "oc", "type": "client", "certificate": "PEM"})
    );
    assert_eq!(init::listen_address(&host).unwrap(), ":8443");
}

#[test]
fn a_seed_with_unknown_fields_is_refused() {
    assert!(serde_json::from_value::<init::Seed>(json!({"apply_default": true})).is_err());
}
