//! The nvme plugin as the daemon loads it, against the recording harness host.

use incus_osd_harness::{
    argv, assert_conformance, built_plugin, control_character_cases, FileEffect, Harness, Reply,
};
use serde_json::{json, Value};

const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:3f8e1c52-9b1e-4d6a-8f7e-2a51c0d4e6b7";
const UUID: &str = "c0f8a7d2-5e3b-4b8e-9d21-7a6f0e4b3c19";
const SUBNQN: &str = "nqn.1988-11.com.dell:powerstore:00:a1b2c3d4e5f6A1B2C3D4";
const FC_ADDR: &str = "nn-0x200400a0b85a1b2c:pn-0x201400a0b85a1b2c";
const FC_HOST1: &str = "nn-0x20000024ff7f0b4a:pn-0x21000024ff7f0b4a";
const FC_HOST2: &str = "nn-0x20000024ff7f0b4b:pn-0x21000024ff7f0b4b";

const LIB: &str = "incus_osd_plugin_nvme";

/// A plugin whose host loads modules, generates a host NQN, offers a random UUID and
/// answers every nvme call successfully.
fn scripted() -> Harness {
    let h = Harness::load_built(LIB);
    let host = h.host();
    host.on_command(&["modprobe"], Reply::ok(""));
    host.on_command(&["nvme", "gen-hostnqn"], Reply::ok(format!("{HOSTNQN}\n")));
    host.on_command(&["nvme"], Reply::ok(""));
    host.put_file(
        "/proc/sys/kernel/random/uuid",
        format!("{UUID}\n").as_bytes(),
        0o444,
    );
    h
}

fn tcp(address: &str, port: i64) -> Value {
    json!({"transport": "tcp", "address": address, "port": port})
}

fn tcp_nqn(address: &str, port: i64, nqn: &str) -> Value {
    json!({"transport": "tcp", "address": address, "port": port, "nqn": nqn})
}

fn config(enabled: bool, targets: &[Value]) -> Value {
    json!({"enabled": enabled, "targets": targets})
}

fn modprobe(module: &str) -> Vec<String> {
    argv(&["modprobe", module])
}

fn nvme(args: &[&str]) -> Vec<String> {
    let mut v = argv(&["nvme"]);
    v.extend(argv(args));
    v
}

fn tcp_args(address: &str, port: i64) -> [String; 3] {
    [
        "--transport=tcp".to_string(),
        format!("--traddr={address}"),
        format!("--trsvcid={port}"),
    ]
}

fn discover(address: &str, port: i64) -> Vec<String> {
    let mut v = nvme(&["discover"]);
    v.extend(tcp_args(address, port));
    v
}

fn connect(nqn: &str, args: &[String]) -> Vec<String> {
    let mut v = nvme(&["connect", &format!("--nqn={nqn}")]);
    v.extend(args.iter().cloned());
    v
}

fn sysfs(h: &Harness, path: &str, value: &str) {
    h.host()
        .put_file(&format!("/sys/class/{path}"), value.as_bytes(), 0o444);
}

/// A local PCIe drive (native multipath on) and a TCP array reached over two paths, as
/// the kernel lays them out under /sys/class/nvme-subsystem.
fn recorded_sysfs(h: &Harness) {
    let s0 = "nvme-subsystem/nvme-subsys0";
    sysfs(
        h,
        &format!("{s0}/subsysnqn"),
        "nqn.2014.08.org.nvmexpress:144d144dS5GXNX0R123456K     Samsung SSD 980 PRO 1TB                 \n",
    );
    sysfs(h, &format!("{s0}/model"), "Samsung SSD 980 PRO 1TB\n");
    sysfs(h, &format!("{s0}/iopolicy"), "numa\n");
    sysfs(h, &format!("{s0}/nvme0/transport"), "pcie\n");
    sysfs(h, &format!("{s0}/nvme0/address"), "0000:01:00.0\n");
    sysfs(h, &format!("{s0}/nvme0/state"), "live\n");
    sysfs(h, &format!("{s0}/nvme0/cntlid"), "6\n");
    sysfs(h, &format!("{s0}/nvme0/nvme0c0n1/size"), "1953525168\n");
    sysfs(h, &format!("{s0}/nvme0n1/size"), "1953525168\n");

    let s1 = "nvme-subsystem/nvme-subsys1";
    sysfs(h, &format!("{s1}/subsysnqn"), &format!("{SUBNQN}\n"));
    sysfs(h, &format!("{s1}/subsystype"), "nvm\n");
    for (ctrl, addr, state) in [
        ("nvme1", "192.0.2.10", "live"),
        ("nvme2", "192.0.2.11", "connecting"),
    ] {
        sysfs(h, &format!("{s1}/{ctrl}/transport"), "tcp\n");
        sysfs(
            h,
            &format!("{s1}/{ctrl}/address"),
            &format!("traddr={addr},trsvcid=4420,src_addr=192.0.2.1\n"),
        );
        sysfs(h, &format!("{s1}/{ctrl}/state"), &format!("{state}\n"));
        let c = &ctrl[4..];
        for ns in ["1", "2"] {
            sysfs(h, &format!("{s1}/{ctrl}/nvme1c{c}n{ns}/size"), "2097152\n");
        }
    }
    sysfs(h, &format!("{s1}/nvme1n1/size"), "2097152\n");
    sysfs(h, &format!("{s1}/nvme1n2/size"), "2097152\n");
}

fn recorded_subsystems() -> Value {
    json!([
        {
            "name": "nvme-subsys0",
            "nqn": "nqn.2014.08.org.nvmexpress:144d144dS5GXNX0R123456K     Samsung SSD 980 PRO 1TB",
            "controllers": [
                {"name": "nvme0", "transport": "pcie", "address": "0000:01:00.0",
                 "state": "live", "namespaces": ["nvme0n1"]}
            ]
        },
        {
            "name": "nvme-subsys1",
            "nqn": SUBNQN,
            "controllers": [
                {"name": "nvme1", "transport": "tcp",
                 "address": "traddr=192.0.2.10,trsvcid=4420,src_addr=192.0.2.1",
                 "state": "live", "namespaces": ["nvme1n1", "nvme1n2"]},
                {"name": "nvme2", "transport": "tcp",
                 "address": "traddr=192.0.2.11,trsvcid=4420,src_addr=192.0.2.1",
                 "state": "connecting", "namespaces": ["nvme1n1", "nvme1n2"]}
            ]
        }
    ])
}

fn local_fc_ports(h: &Harness) {
    for (host, nn, pn) in [
        ("host1", "0x20000024ff7f0b4a", "0x21000024ff7f0b4a"),
        ("host2", "0x20000024ff7f0b4b", "0x21000024ff7f0b4b"),
    ] {
        sysfs(h, &format!("fc_host/{host}/node_name"), &format!("{nn}\n"));
        sysfs(h, &format!("fc_host/{host}/port_name"), &format!("{pn}\n"));
        sysfs(h, &format!("fc_host/{host}/port_state"), "Online\n");
    }
}

#[test]
fn generic_checks_pass() {
    assert_conformance(built_plugin(LIB));
}

#[test]
fn fresh_get_is_exactly_the_default() {
    let h = Harness::load_built(LIB);
    assert_eq!(
        h.get_raw().unwrap(),
        r#"{"state":{"host_id":"","host_nqn":"","subsystems":[]},"config":{"enabled":false,"targets":[]}}"#
    );
    assert!(h.host().commands().is_empty());
    assert!(h.host().file_effects().is_empty());
}

#[test]
fn subsystems_are_read_from_sysfs_even_when_disabled() {
    let h = Harness::load_built(LIB);
    recorded_sysfs(&h);
    // The identity is only shown when enabled.
    h.host().put_file(
        "/etc/nvme/hostnqn",
        format!("{HOSTNQN}\n").as_bytes(),
        0o600,
    );
    assert_eq!(
        h.get().unwrap(),
        json!({
            "state": {"host_id": "", "host_nqn": "", "subsystems": recorded_subsystems()},
            "config": config(false, &[])
        })
    );
    assert!(h.host().commands().is_empty());
}

#[test]
fn the_host_identity_is_shown_when_enabled() {
    let h = scripted();
    recorded_sysfs(&h);
    h.apply_config(&config(true, &[]));
    let state = &h.get().unwrap()["state"];
    assert_eq!(state["host_id"], UUID);
    assert_eq!(state["host_nqn"], HOSTNQN);
    assert_eq!(state["subsystems"], recorded_subsystems());
}

#[test]
fn every_target_field_round_trips_and_empty_optionals_are_omitted() {
    let h = scripted();
    let targets = [
        json!({"transport": "tcp", "address": "192.0.2.10", "port": 4420, "nqn": SUBNQN}),
        json!({"transport": "fc", "address": FC_ADDR, "host_address": FC_HOST1, "port": 0}),
        tcp("fd00::10", 8009),
    ];
    h.put_config(&config(false, &targets)).unwrap();
    assert_eq!(h.get().unwrap()["config"], config(false, &targets));
    assert_eq!(h.host().state(), json!({"config": config(false, &targets)}));
    let raw = h.get_raw().unwrap();
    assert!(
        raw.contains(r#"{"transport":"tcp","address":"fd00::10","port":8009}"#),
        "{raw}"
    );
    // A disabled service touches nothing.
    assert!(h.host().commands().is_empty());
    assert!(h.host().file_effects().is_empty());
}

#[test]
fn null_targets_are_an_empty_list() {
    let h = scripted();
    h.put_config(&json!({"enabled": false, "targets": null}))
        .unwrap();
    assert_eq!(h.get().unwrap()["config"], config(false, &[]));
}

/// Each string field of a full config with a control character added is a 400 naming the
/// field that changes nothing, also
/// for a service enabled before.
#[test]
fn control_characters_are_refused_in_every_string_field() {
    let full = config(
        true,
        &[
            tcp_nqn("192.0.2.10", 4420, SUBNQN),
            json!({"transport": "fc", "address": FC_ADDR, "host_address": FC_HOST1, "port": 0}),
        ],
    );
    let fields = [
        ("/targets/0/address", "targets[0].address"),
        ("/targets/0/nqn", "targets[0].nqn"),
        ("/targets/0/transport", "targets[0].transport"),
        ("/targets/1/address", "targets[1].address"),
        ("/targets/1/host_address", "targets[1].host_address"),
        ("/targets/1/transport", "targets[1].transport"),
    ];
    for case in control_character_cases(&full, &fields, &[]) {
        let h = scripted();
        h.apply_config(&config(true, &[tcp("192.0.2.20", 4420)]));
        h.assert_config_refused(&case.config, &case.message);
    }
}

#[test]
fn invalid_configs_are_refused_with_400_and_change_nothing() {
    let fc = |address: &str, host_address: &str, port: i64| json!({"transport": "fc", "address": address, "host_address": host_address, "port": port});
    let cases: Vec<(Vec<Value>, &str)> = vec![
        (
            vec![json!({"transport": "", "address": "192.0.2.10", "port": 4420})],
            "target 0: transport is empty (expected tcp or fc)",
        ),
        (
            vec![json!({"transport": "rdma", "address": "192.0.2.10", "port": 4420})],
            "target 0: invalid transport 'rdma' (expected tcp or fc)",
        ),
        (vec![tcp("", 4420)], "target 0: address is empty"),
        (
            vec![tcp("192.0.2.10", 4420), tcp("bad host", 4420)],
            "target 1: invalid address 'bad host'",
        ),
        (
            vec![tcp("[fd00::10]", 4420)],
            "target 0: invalid address '[fd00::10]'",
        ),
        (
            vec![tcp("192.0.2.10", 0)],
            "target 0: invalid port 0 (must be 1 to 65535 with tcp)",
        ),
        (
            vec![tcp("192.0.2.10", 65536)],
            "target 0: invalid port 65536 (must be 1 to 65535 with tcp)",
        ),
        (
            vec![json!({"transport": "tcp", "address": "192.0.2.10", "port": 4420, "host_address": FC_HOST1})],
            "target 0: host_address is only used with the fc transport",
        ),
        (
            vec![fc("192.0.2.10", "", 0)],
            "target 0: invalid address '192.0.2.10' (expected nn-0x<WWNN>:pn-0x<WWPN>)",
        ),
        (
            vec![fc("nn-0x2004:pn-0x2014", "", 0)],
            "target 0: invalid address 'nn-0x2004:pn-0x2014' (expected nn-0x<WWNN>:pn-0x<WWPN>)",
        ),
        (
            vec![fc(FC_ADDR, "0x21000024ff7f0b4a", 0)],
            "target 0: invalid host_address '0x21000024ff7f0b4a' (expected nn-0x<WWNN>:pn-0x<WWPN>)",
        ),
        (
            vec![fc(FC_ADDR, "", -1)],
            "target 0: invalid port -1 (must be 0 to 65535)",
        ),
        (
            vec![tcp_nqn("192.0.2.10", 4420, "powerstore:00:a1b2")],
            "target 0: invalid nqn 'powerstore:00:a1b2' (expected an nqn. name of at most 223 characters)",
        ),
        (
            vec![tcp_nqn("192.0.2.10", 4420, "nqn.2014-08 x")],
            "target 0: invalid nqn 'nqn.2014-08 x' (expected an nqn. name of at most 223 characters)",
        ),
        (
            vec![
                tcp("192.0.2.10", 4420),
                tcp("192.0.2.11", 4420),
                tcp("192.0.2.10", 4420),
            ],
            "target 2: duplicate of target 0",
        ),
    ];
    let long_nqn = format!("nqn.{}", "a".repeat(220));
    let long_message = format!(
        "target 0: invalid nqn '{long_nqn}' (expected an nqn. name of at most 223 characters)"
    );
    let mut cases = cases;
    cases.push((
        vec![tcp_nqn("192.0.2.10", 4420, &long_nqn)],
        long_message.as_str(),
    ));
    for enabled in [true, false] {
        for (targets, message) in &cases {
            let h = scripted();
            h.assert_config_refused(&config(enabled, targets), message);
            let host = h.host();
            assert!(!host.root().join("etc").exists(), "{message}");
            assert_eq!(host.state(), Value::Null, "{message}");
        }
    }
}

#[test]
fn valid_targets_are_accepted() {
    let h = scripted();
    let targets = [
        tcp("san.example.com", 4420),
        tcp("2001:db8::10", 65535),
        json!({"transport": "fc", "address": FC_ADDR, "port": 4420}),
        tcp_nqn("192.0.2.10", 4420, &format!("nqn.{}", "a".repeat(219))),
    ];
    h.put_config(&config(false, &targets)).unwrap();
    assert_eq!(h.get().unwrap()["config"], config(false, &targets));
}

#[test]
fn enabling_loads_modules_creates_the_identity_and_connects() {
    let h = scripted();
    let targets = [tcp("192.0.2.10", 8009), tcp_nqn("192.0.2.20", 4420, SUBNQN)];
    h.put_config(&config(true, &targets)).unwrap();
    let host = h.host();
    assert_eq!(
        host.commands(),
        [
            modprobe("nvme"),
            modprobe("nvme-fabrics"),
            modprobe("nvme-tcp"),
            nvme(&["gen-hostnqn"]),
            discover("192.0.2.10", 8009),
            connect(SUBNQN, &tcp_args("192.0.2.20", 4420)),
            nvme(&["connect-all"]),
        ]
    );
    assert!(host.command_calls()[6].timeout_ms <= 30_000);
    assert_eq!(
        host.file_effects(),
        [
            FileEffect::dir_created("/etc/nvme", 0o700),
            FileEffect::written("/etc/nvme/hostnqn", 0o600),
            FileEffect::written("/etc/nvme/hostid", 0o600),
            FileEffect::written("/etc/nvme/discovery.conf", 0o600),
        ]
    );
    assert_eq!(
        host.read_file("/etc/nvme/hostnqn").unwrap(),
        format!("{HOSTNQN}\n").as_bytes()
    );
    assert_eq!(
        host.read_file("/etc/nvme/hostid").unwrap(),
        format!("{UUID}\n").as_bytes()
    );
    // Only the targets left to discovery are listed.
    assert_eq!(
        host.read_file("/etc/nvme/discovery.conf").unwrap(),
        b"--transport=tcp --traddr=192.0.2.10 --trsvcid=8009\n"
    );
    assert_eq!(h.host().mode("/etc/nvme"), 0o700);
    for f in ["hostnqn", "hostid", "discovery.conf"] {
        assert_eq!(h.host().mode(&format!("/etc/nvme/{f}")), 0o600, "{f}");
    }
    assert!(host.units().is_empty());
    assert_eq!(host.state(), json!({"config": config(true, &targets)}));
    assert_eq!(host.save_count(), 1);
}

#[test]
fn an_existing_identity_is_kept() {
    let h = scripted();
    let host = h.host();
    host.put_file(
        "/etc/nvme/hostnqn",
        b"nqn.2014-08.org.nvmexpress:uuid:kept\n",
        0o600,
    );
    host.put_file(
        "/etc/nvme/hostid",
        b"11111111-2222-3333-4444-555555555555\n",
        0o600,
    );
    h.put_config(&config(true, &[])).unwrap();
    assert_eq!(host.files_written(), ["/etc/nvme/discovery.conf"]);
    assert_eq!(host.read_file("/etc/nvme/discovery.conf").unwrap(), b"");
    assert!(!host.commands().contains(&nvme(&["gen-hostnqn"])));
    let state = &h.get().unwrap()["state"];
    assert_eq!(state["host_nqn"], "nqn.2014-08.org.nvmexpress:uuid:kept");
    assert_eq!(state["host_id"], "11111111-2222-3333-4444-555555555555");
}

#[test]
fn fibre_channel_targets_use_every_local_port_unless_one_is_given() {
    let h = scripted();
    local_fc_ports(&h);
    let targets = [
        json!({"transport": "fc", "address": FC_ADDR, "port": 0}),
        json!({"transport": "fc", "address": FC_ADDR, "host_address": FC_HOST2, "port": 0, "nqn": SUBNQN}),
    ];
    h.put_config(&config(true, &targets)).unwrap();
    let fc_args = |host: &str| {
        vec![
            "--transport=fc".to_string(),
            format!("--traddr={FC_ADDR}"),
            format!("--host-traddr={host}"),
        ]
    };
    let with = |verb: &str, args: Vec<String>| {
        let mut v = nvme(&[verb]);
        v.extend(args);
        v
    };
    let host = h.host();
    assert_eq!(
        host.commands(),
        [
            modprobe("nvme"),
            modprobe("nvme-fabrics"),
            modprobe("nvme-fc"),
            nvme(&["gen-hostnqn"]),
            with("discover", fc_args(FC_HOST1)),
            with("discover", fc_args(FC_HOST2)),
            connect(SUBNQN, &fc_args(FC_HOST2)),
            nvme(&["connect-all"]),
        ]
    );
    assert_eq!(
        host.read_file("/etc/nvme/discovery.conf").unwrap(),
        format!(
            "--transport=fc --traddr={FC_ADDR} --host-traddr={FC_HOST1}\n\
             --transport=fc --traddr={FC_ADDR} --host-traddr={FC_HOST2}\n"
        )
        .as_bytes()
    );
}

#[test]
fn a_fibre_channel_target_without_a_local_port_fails_before_touching_anything() {
    let h = scripted();
    let err = h
        .put_config(&config(
            true,
            &[json!({"transport": "fc", "address": FC_ADDR, "port": 0})],
        ))
        .unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (
            500,
            format!("no local Fibre Channel port found for NVME target \"{FC_ADDR}\"").as_str()
        )
    );
    assert!(h.host().commands().is_empty());
    assert!(h.host().file_effects().is_empty());
    assert_eq!(h.host().state(), Value::Null);
}

#[test]
fn a_direct_connection_is_retried_until_it_works() {
    let h = scripted();
    h.host().on_command_times(
        &["nvme", "connect"],
        2,
        Reply::fail(
            1,
            "could not add new controller: failed to write to nvme-fabrics device",
        ),
    );
    h.put_config(&config(true, &[tcp_nqn("192.0.2.20", 4420, SUBNQN)]))
        .unwrap();
    let connects = h
        .host()
        .commands()
        .into_iter()
        .filter(|c| c[1] == "connect")
        .count();
    assert_eq!(connects, 3);
}

#[test]
fn a_failing_discovery_is_only_a_warning() {
    let h = scripted();
    h.host().on_command(
        &["nvme", "discover"],
        Reply::fail(
            1,
            "Failed to write to /dev/nvme-fabrics: Connection refused",
        ),
    );
    h.put_config(&config(true, &[tcp("192.0.2.10", 8009)]))
        .unwrap();
    let host = h.host();
    let discoveries = host
        .commands()
        .into_iter()
        .filter(|c| *c == discover("192.0.2.10", 8009))
        .count();
    assert_eq!(discoveries, 10);
    assert_eq!(host.commands().last().unwrap(), &nvme(&["connect-all"]));
    let warnings = host.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("192.0.2.10"), "{warnings:?}");
    assert_eq!(
        host.state(),
        json!({"config": config(true, &[tcp("192.0.2.10", 8009)])})
    );
}

#[test]
fn a_failing_direct_connection_undoes_everything() {
    let h = scripted();
    let host = h.host();
    host.on_command(
        &["nvme", "connect"],
        Reply::fail(
            1,
            "could not add new controller: invalid arguments/configuration",
        ),
    );
    let targets = [tcp("192.0.2.10", 8009), tcp_nqn("192.0.2.20", 4420, SUBNQN)];
    let err = h.put_config(&config(true, &targets)).unwrap_err();
    assert_eq!(err.status, 500);
    assert_eq!(
        err.message.as_str(),
        format!(
            "couldn't connect to NVME subsystem \"{SUBNQN}\" on \"192.0.2.20\": Failed to run: nvme connect --nqn={SUBNQN} --transport=tcp --traddr=192.0.2.20 --trsvcid=4420: exit status 1 (could not add new controller: invalid arguments/configuration)"
        )
    );
    let commands = host.commands();
    assert_eq!(commands.iter().filter(|c| c[1] == "connect").count(), 10);
    assert!(!commands.contains(&nvme(&["connect-all"])));
    assert_eq!(commands.last().unwrap(), &nvme(&["disconnect-all"]));
    assert!(!host.root().join("etc/nvme").exists());
    // Undo, newest first.
    assert_eq!(
        host.files_removed(),
        [
            "/etc/nvme/discovery.conf",
            "/etc/nvme/hostid",
            "/etc/nvme/hostnqn",
            "/etc/nvme"
        ]
    );
    assert_eq!(host.state(), Value::Null);
    assert_eq!(host.save_count(), 0);
}

#[test]
fn a_failing_host_nqn_generation_leaves_no_empty_file() {
    let h = scripted();
    h.host().on_command(
        &["nvme", "gen-hostnqn"],
        Reply::fail(1, "\"gen-hostnqn\" not supported"),
    );
    let err = h.put_config(&config(true, &[])).unwrap_err();
    assert_eq!(
        err.message.as_str(),
        "Failed to run: nvme gen-hostnqn: exit status 1 (\"gen-hostnqn\" not supported)"
    );
    assert!(h.host().read_file("/etc/nvme/hostnqn").is_none());
    assert!(!h.host().root().join("etc/nvme").exists());
}

#[test]
fn no_usable_random_uuid_is_an_error() {
    let h = scripted();
    h.host()
        .put_file("/proc/sys/kernel/random/uuid", b"not-a-uuid\n", 0o444);
    let err = h.put_config(&config(true, &[])).unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (
            500,
            "cannot generate a host ID: /proc/sys/kernel/random/uuid gave \"not-a-uuid\""
        )
    );
    assert!(!h.host().root().join("etc/nvme").exists());
}

#[test]
fn disabling_disconnects_and_removes_the_discovery_file_only() {
    let h = scripted();
    h.apply_config(&config(true, &[tcp("192.0.2.10", 8009)]));
    h.put_config(&config(false, &[tcp("192.0.2.10", 8009)]))
        .unwrap();
    let host = h.host();
    assert_eq!(host.commands(), [nvme(&["disconnect-all"])]);
    assert_eq!(host.files_removed(), ["/etc/nvme/discovery.conf"]);
    assert!(host.read_file("/etc/nvme/hostnqn").is_some());
    assert!(host.read_file("/etc/nvme/hostid").is_some());
    assert_eq!(
        h.get().unwrap()["state"],
        json!({"host_id": "", "host_nqn": "", "subsystems": []})
    );
}

#[test]
fn a_failing_disconnect_changes_nothing() {
    let h = scripted();
    h.apply_config(&config(true, &[tcp("192.0.2.10", 8009)]));
    let host = h.host();
    host.on_command(&["nvme", "disconnect-all"], Reply::fail(1, "device busy"));
    let err = h.put_config(&config(false, &[])).unwrap_err();
    assert_eq!(
        err.message.as_str(),
        "Failed to run: nvme disconnect-all: exit status 1 (device busy)"
    );
    assert_eq!(host.commands(), [nvme(&["disconnect-all"])]);
    assert!(host.file_effects().is_empty());
    assert_eq!(
        host.state(),
        json!({"config": config(true, &[tcp("192.0.2.10", 8009)])})
    );
}

#[test]
fn updating_an_enabled_service_reconnects_with_the_new_targets() {
    let h = scripted();
    h.apply_config(&config(true, &[tcp("192.0.2.10", 8009)]));
    h.put_config(&config(true, &[tcp("192.0.2.11", 4420)]))
        .unwrap();
    let host = h.host();
    assert_eq!(
        host.commands(),
        [
            nvme(&["disconnect-all"]),
            modprobe("nvme"),
            modprobe("nvme-fabrics"),
            modprobe("nvme-tcp"),
            discover("192.0.2.11", 4420),
            nvme(&["connect-all"]),
        ]
    );
    assert_eq!(
        host.file_effects(),
        [
            FileEffect::removed("/etc/nvme/discovery.conf"),
            FileEffect::written("/etc/nvme/discovery.conf", 0o600),
        ]
    );
    assert_eq!(
        host.read_file("/etc/nvme/discovery.conf").unwrap(),
        b"--transport=tcp --traddr=192.0.2.11 --trsvcid=4420\n"
    );
}

#[test]
fn a_failing_update_brings_the_old_targets_back() {
    let h = scripted();
    let old = config(true, &[tcp("192.0.2.10", 8009)]);
    h.put_config(&old).unwrap();
    let host = h.host();
    host.clear_effects();
    host.on_command_times(
        &["nvme", "connect-all"],
        1,
        Reply::fail(1, "Failed to write to /dev/nvme-fabrics: Invalid argument"),
    );
    let err = h
        .put_config(&config(true, &[tcp("192.0.2.11", 4420)]))
        .unwrap_err();
    assert_eq!(
        err.message.as_str(),
        "Failed to run: nvme connect-all: exit status 1 (Failed to write to /dev/nvme-fabrics: Invalid argument)"
    );
    let modprobes = || {
        [
            modprobe("nvme"),
            modprobe("nvme-fabrics"),
            modprobe("nvme-tcp"),
        ]
    };
    let mut expected = vec![nvme(&["disconnect-all"])];
    expected.extend(modprobes());
    expected.extend([
        discover("192.0.2.11", 4420),
        nvme(&["connect-all"]),
        // Undo, then the old config back up.
        nvme(&["disconnect-all"]),
    ]);
    expected.extend(modprobes());
    expected.extend([discover("192.0.2.10", 8009), nvme(&["connect-all"])]);
    assert_eq!(host.commands(), expected);
    assert_eq!(
        host.read_file("/etc/nvme/discovery.conf").unwrap(),
        b"--transport=tcp --traddr=192.0.2.10 --trsvcid=8009\n"
    );
    assert_eq!(host.state(), json!({"config": old}));
}

#[test]
fn a_failing_save_is_undone() {
    let h = scripted();
    let host = h.host();
    host.fail_next_save("disk full");
    let err = h
        .put_config(&config(true, &[tcp("192.0.2.10", 8009)]))
        .unwrap_err();
    assert_eq!((err.status, err.message.as_str()), (500, "disk full"));
    assert_eq!(host.commands().last().unwrap(), &nvme(&["disconnect-all"]));
    assert!(host.read_file("/etc/nvme/discovery.conf").is_none());
    assert_eq!(host.state(), Value::Null);
}

#[test]
fn reset_reconnects_the_named_subsystems_and_connects_all() {
    let h = scripted();
    let targets = [tcp("192.0.2.10", 8009), tcp_nqn("192.0.2.20", 4420, SUBNQN)];
    h.apply_config(&config(true, &targets));
    // Already connected: the error is ignored.
    h.host()
        .on_command(&["nvme", "connect"], Reply::fail(1, "already connected"));
    h.reset().unwrap();
    assert_eq!(
        h.host().commands(),
        [
            connect(SUBNQN, &tcp_args("192.0.2.20", 4420)),
            nvme(&["connect-all"])
        ]
    );
    assert!(h.host().file_effects().is_empty());
    assert_eq!(h.host().save_count(), 1);
}

#[test]
fn reset_of_a_disabled_service_is_refused() {
    let h = scripted();
    let err = h.reset().unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (500, "NVME isn't currently enabled")
    );
    h.host().assert_untouched("reset");
}

#[test]
fn boot_start_and_shutdown_follow_the_config() {
    let h = scripted();
    let host = h.host();
    host.set_saved_config(&config(true, &[tcp("192.0.2.10", 8009)]));
    h.start().unwrap();
    assert_eq!(host.commands().last().unwrap(), &nvme(&["connect-all"]));
    assert!(host.read_file("/etc/nvme/discovery.conf").is_some());
    assert_eq!(host.save_count(), 0);

    host.clear_effects();
    h.stop().unwrap();
    assert_eq!(host.commands(), [nvme(&["disconnect-all"])]);
    assert_eq!(host.files_removed(), ["/etc/nvme/discovery.conf"]);
}

#[test]
fn boot_start_and_shutdown_do_nothing_when_disabled() {
    let h = scripted();
    h.start().unwrap();
    h.stop().unwrap();
    assert!(h.host().commands().is_empty());
    assert!(h.host().file_effects().is_empty());
}
