//! The ceph plugin as the daemon loads it, against the recording harness host.

use incus_osd_harness::{
    assert_conformance, built_plugin, control_character_cases, FileEffect, Harness, Reply,
};
use serde_json::{json, Value};

const FSID: &str = "b5e0c2ba-3b57-11ef-9d4e-525400c1f7a9";
const FSID2: &str = "0f3c9d8e-1a2b-4c5d-8e9f-0123456789ab";
const ADMIN_KEY: &str = "AQDR6NCepZSwLkAKmYP4x+38jkYCIa96xhCfAg==";
const INCUS_KEY: &str = "AQC4lhKKlURKrjFsHs4NSKNLmQpqCPNho53csw==";
const KEYS: [&str; 2] = [ADMIN_KEY, INCUS_KEY];
const STATUS: &[&str] = &["ceph", "status", "--format=json"];

/// `ceph status --format=json` of a three-node Reef cluster with an RGW daemon and two
/// health warnings, as the tool prints it (one line).
const CEPH_STATUS_JSON: &str = r#"{"fsid":"b5e0c2ba-3b57-11ef-9d4e-525400c1f7a9","health":{"status":"HEALTH_WARN","checks":{"RECENT_CRASH":{"severity":"HEALTH_WARN","summary":{"message":"1 daemons have recently crashed","count":1},"muted":false},"POOL_APP_NOT_ENABLED":{"severity":"HEALTH_WARN","summary":{"message":"1 pool(s) do not have an application enabled","count":1},"muted":false}},"mutes":[]},"election_epoch":16,"quorum":[0,1,2],"quorum_names":["server01","server02","server03"],"quorum_age":351017,"monmap":{"epoch":3,"min_mon_release_name":"reef","num_mons":3},"osdmap":{"epoch":152,"num_osds":6,"num_up_osds":6,"osd_up_since":1719834124,"num_in_osds":6,"osd_in_since":1719500873,"num_remapped_pgs":0},"pgmap":{"pgs_by_state":[{"state_name":"active+clean","count":64},{"state_name":"active+clean+scrubbing","count":1}],"num_pgs":65,"num_pools":3,"num_objects":2581,"data_bytes":9846226051,"bytes_used":30170292224,"bytes_avail":5971410395136,"bytes_total":6001580687360,"read_bytes_sec":2730,"write_bytes_sec":413696,"read_op_per_sec":3,"write_op_per_sec":42},"fsmap":{"epoch":1,"btime":"2024-06-27T13:41:14:462112+0000","by_rank":[],"up:standby":0},"mgrmap":{"available":true,"num_standbys":2,"modules":["dashboard","iostat","nfs","prometheus","restful"],"services":{"dashboard":"https://10.0.0.11:8443/","prometheus":"http://10.0.0.11:9283/"}},"servicemap":{"epoch":31,"modified":"2024-07-04T09:12:44.417273+0000","services":{"rgw":{"daemons":{"summary":"","24131":{"start_epoch":29,"start_stamp":"2024-07-04T09:11:52.801839+0000","gid":24131,"addr":"10.0.0.11:0/2961213543","metadata":{"arch":"x86_64","ceph_release":"reef","ceph_version":"ceph version 18.2.2 (531c0d11a1c5d39fbfe6aa8a521f023abf3bf3e2) reef (stable)","hostname":"server01","zone_name":"default"},"task_status":{}}}}}},"progress_events":{}}
"#;

const LIB: &str = "incus_osd_plugin_ceph";

fn main_cluster() -> Value {
    json!({
        "fsid": FSID,
        "monitors": ["10.0.0.11", "10.0.0.12:6789", "[fd00::13]:3300"],
        "keyrings": {"admin": {"key": ADMIN_KEY}, "incus": {"key": INCUS_KEY}},
        "client_config": {"rbd_cache": "true", "log file": "/var/log/ceph/$cluster-$name.log"}
    })
}

fn backup_cluster() -> Value {
    json!({
        "fsid": FSID2,
        "monitors": ["v2:192.0.2.10:3300"],
        "keyrings": null,
        "client_config": null
    })
}

fn enabled_config() -> Value {
    json!({"enabled": true, "clusters": {"ceph": main_cluster(), "backup": backup_cluster()}})
}

const CEPH_CONF: &str = "[global]
fsid = b5e0c2ba-3b57-11ef-9d4e-525400c1f7a9
mon_host = 10.0.0.11,10.0.0.12:6789,[fd00::13]:3300

[client]
log file = /var/log/ceph/$cluster-$name.log
rbd_cache = true
";

const BACKUP_CONF: &str = "[global]
fsid = 0f3c9d8e-1a2b-4c5d-8e9f-0123456789ab
mon_host = v2:192.0.2.10:3300
";

#[test]
fn generic_checks_pass() {
    assert_conformance(built_plugin(LIB));
}

#[test]
fn fresh_get_is_exactly_the_default() {
    let h = Harness::load_built(LIB);
    assert_eq!(
        h.get_raw().unwrap(),
        r#"{"state":{},"config":{"enabled":false,"clusters":{}}}"#
    );
    assert!(h.host().commands().is_empty());
}

#[test]
fn enabling_writes_each_cluster_conf_and_keyring() {
    let h = Harness::load_built(LIB);
    let cfg = enabled_config();
    h.put_config(&cfg).unwrap();

    let host = h.host();
    assert_eq!(
        host.file_effects(),
        [
            FileEffect::dir_created("/etc/ceph", 0o755),
            FileEffect::written("/etc/ceph/backup.conf", 0o644),
            FileEffect::written("/etc/ceph/ceph.conf", 0o644),
            FileEffect::written("/etc/ceph/ceph.client.admin.keyring", 0o600),
            FileEffect::written("/etc/ceph/ceph.client.incus.keyring", 0o600),
        ]
    );
    assert_eq!(h.host().mode("/etc/ceph"), 0o755);
    assert_eq!(h.host().read_text("/etc/ceph/ceph.conf"), CEPH_CONF);
    assert_eq!(h.host().mode("/etc/ceph/ceph.conf"), 0o644);
    assert_eq!(h.host().read_text("/etc/ceph/backup.conf"), BACKUP_CONF);
    assert_eq!(h.host().mode("/etc/ceph/backup.conf"), 0o644);
    assert_eq!(
        h.host().read_text("/etc/ceph/ceph.client.admin.keyring"),
        format!("[client.admin]\nkey = {ADMIN_KEY}\n")
    );
    assert_eq!(h.host().mode("/etc/ceph/ceph.client.admin.keyring"), 0o600);
    assert_eq!(
        h.host().read_text("/etc/ceph/ceph.client.incus.keyring"),
        format!("[client.incus]\nkey = {INCUS_KEY}\n")
    );
    assert_eq!(h.host().mode("/etc/ceph/ceph.client.incus.keyring"), 0o600);
    assert!(host.commands().is_empty());
    assert!(host.units().is_empty());
    assert_eq!(host.state(), json!({ "config": cfg }));
    assert_eq!(host.save_count(), 1);
    h.host().assert_not_logged(&KEYS);
}

#[test]
fn every_config_field_round_trips() {
    let h = Harness::load_built(LIB);
    h.host()
        .on_command(STATUS, Reply::fail(1, "connection timed out"));
    let cfg = json!({"enabled": true, "clusters": {
        "ceph": main_cluster(),
        "backup": backup_cluster(),
        "empty-maps": {"fsid": FSID2, "monitors": ["mon.example.com"], "keyrings": {}, "client_config": {}},
    }});
    h.put_config(&cfg).unwrap();
    assert_eq!(h.get().unwrap()["config"], cfg);
    // Go's nil maps stay null, empty ones stay empty.
    let raw = h.get_raw().unwrap();
    assert!(
        raw.contains(r#""keyrings":null,"client_config":null"#),
        "{raw}"
    );
    assert!(raw.contains(r#""keyrings":{},"client_config":{}"#), "{raw}");

    let disabled = json!({"enabled": false, "clusters": {"ceph": main_cluster()}});
    h.put_config(&disabled).unwrap();
    assert_eq!(h.get().unwrap()["config"], disabled);
}

#[test]
fn null_and_missing_fields_read_as_zero_values() {
    let h = Harness::load_built(LIB);
    h.put_config(&json!({"enabled": null, "clusters": null}))
        .unwrap();
    assert_eq!(
        h.get_raw().unwrap(),
        r#"{"state":{},"config":{"enabled":false,"clusters":{}}}"#
    );
    h.put_config(&json!({"clusters": {"ceph": {"fsid": FSID, "monitors": ["10.0.0.1"]}}}))
        .unwrap();
    assert_eq!(
        h.get().unwrap()["config"],
        json!({"enabled": false, "clusters": {"ceph": {
            "fsid": FSID, "monitors": ["10.0.0.1"], "keyrings": null, "client_config": null
        }}})
    );
}

fn cluster_with(field: &str, value: Value) -> Value {
    let mut c = main_cluster();
    c[field] = value;
    c
}

#[test]
fn invalid_configs_are_refused_with_400_and_change_nothing() {
    let key = |k: &str| json!({"admin": {"key": k}});
    let cases: Vec<(&str, Value, String)> = vec![
        (
            "ceph/x",
            main_cluster(),
            r#"invalid cluster name "ceph/x" (allowed: letters, digits, '_' and '-')"#.into(),
        ),
        (
            "",
            main_cluster(),
            r#"invalid cluster name "" (allowed: letters, digits, '_' and '-')"#.into(),
        ),
        (
            "..",
            main_cluster(),
            r#"invalid cluster name ".." (allowed: letters, digits, '_' and '-')"#.into(),
        ),
        (
            "ceph",
            cluster_with("fsid", json!("")),
            r#"cluster "ceph": invalid fsid "" (expected a UUID)"#.into(),
        ),
        (
            "ceph",
            cluster_with("fsid", json!("b5e0c2ba-3b57-11ef-9d4e-525400c1f7a")),
            r#"cluster "ceph": invalid fsid "b5e0c2ba-3b57-11ef-9d4e-525400c1f7a" (expected a UUID)"#.into(),
        ),
        (
            "ceph",
            cluster_with("monitors", json!([])),
            r#"cluster "ceph": monitors: at least one monitor is required"#.into(),
        ),
        (
            "ceph",
            cluster_with("monitors", Value::Null),
            r#"cluster "ceph": monitors: at least one monitor is required"#.into(),
        ),
        (
            "ceph",
            cluster_with("monitors", json!(["10.0.0.11", "10.0.0.12:99999"])),
            r#"cluster "ceph": monitor 1: invalid address "10.0.0.12:99999" (expected IP[:port], [IPv6][:port], v1:/v2:<ip>:<port> or a host name[:port])"#.into(),
        ),
        (
            "ceph",
            cluster_with("monitors", json!(["10.0.0.256"])),
            r#"cluster "ceph": monitor 0: invalid address "10.0.0.256" (expected IP[:port], [IPv6][:port], v1:/v2:<ip>:<port> or a host name[:port])"#.into(),
        ),
        (
            "ceph",
            cluster_with("monitors", json!(["fd00::13:3300:x"])),
            r#"cluster "ceph": monitor 0: invalid address "fd00::13:3300:x" (expected IP[:port], [IPv6][:port], v1:/v2:<ip>:<port> or a host name[:port])"#.into(),
        ),
        (
            "ceph",
            cluster_with("monitors", json!(["v2:mon1.example.com:3300"])),
            r#"cluster "ceph": monitor 0: invalid address "v2:mon1.example.com:3300" (expected IP[:port], [IPv6][:port], v1:/v2:<ip>:<port> or a host name[:port])"#.into(),
        ),
        (
            "ceph",
            cluster_with("monitors", json!(["10.0.0.11,10.0.0.12"])),
            r#"cluster "ceph": monitor 0: invalid address "10.0.0.11,10.0.0.12" (expected IP[:port], [IPv6][:port], v1:/v2:<ip>:<port> or a host name[:port])"#.into(),
        ),
        (
            "ceph",
            cluster_with("monitors", json!(["10.0.0.11", "10.0.0.11"])),
            r#"cluster "ceph": monitor 1: duplicate of monitor 0"#.into(),
        ),
        (
            "ceph",
            cluster_with("keyrings", json!({"ad min": {"key": ADMIN_KEY}})),
            r#"cluster "ceph": invalid keyring name "ad min" (allowed: letters, digits, '.', '_' and '-')"#.into(),
        ),
        (
            "ceph",
            cluster_with("keyrings", json!({"../x": {"key": ADMIN_KEY}})),
            r#"cluster "ceph": invalid keyring name "../x" (allowed: letters, digits, '.', '_' and '-')"#.into(),
        ),
        (
            "ceph",
            cluster_with("keyrings", key("")),
            r#"cluster "ceph": keyring "admin": key is empty"#.into(),
        ),
        (
            "ceph",
            cluster_with("keyrings", key(&format!("{ADMIN_KEY}\n[client.evil]"))),
            "clusters.ceph.keyrings.admin.key: line breaks, NUL and other control characters \
             are not allowed"
                .into(),
        ),
        (
            "ceph",
            cluster_with("keyrings", key(&ADMIN_KEY[1..])),
            r#"cluster "ceph": keyring "admin": key is not valid base64"#.into(),
        ),
        (
            "ceph",
            cluster_with("client_config", json!({"rbd_cache]": "true"})),
            r#"cluster "ceph": client_config: invalid option name "rbd_cache]""#.into(),
        ),
        (
            "ceph",
            cluster_with("client_config", json!({"": "true"})),
            r#"cluster "ceph": client_config: invalid option name """#.into(),
        ),
        (
            "ceph",
            cluster_with("client_config", json!({"rbd_cache": "true\nkeyring = /tmp/x"})),
            "clusters.ceph.client_config.rbd_cache: line breaks, NUL and other control \
             characters are not allowed"
                .into(),
        ),
        (
            "ceph",
            cluster_with("client_config", json!({"rbd_cache": "true # on"})),
            r#"cluster "ceph": client_config "rbd_cache": the value must be one line without '#' or ';'"#.into(),
        ),
    ];
    for enabled in [true, false] {
        for (name, cluster, message) in &cases {
            let h = Harness::load_built(LIB);
            let cfg = json!({"enabled": enabled, "clusters": {name.to_string(): cluster}});
            let err = h.assert_config_refused(&cfg, message);
            for k in KEYS {
                assert!(!err.message.contains(k), "{message}");
            }
            let host = h.host();
            assert!(!host.root().join("etc").exists(), "{message}");
            assert_eq!(host.state(), Value::Null, "{message}");
            h.host().assert_not_logged(&KEYS);
        }
    }
}

/// Each string field of a full config with a control character added is a 400 naming the
/// field that changes nothing (and never
/// quotes a key).
#[test]
fn control_characters_are_refused_in_every_string_field() {
    let full = json!({"enabled": true, "clusters": {"ceph": main_cluster()}});
    let fields = [
        (
            "/clusters/ceph/client_config/log file",
            "clusters.ceph.client_config.log file",
        ),
        (
            "/clusters/ceph/client_config/rbd_cache",
            "clusters.ceph.client_config.rbd_cache",
        ),
        ("/clusters/ceph/fsid", "clusters.ceph.fsid"),
        (
            "/clusters/ceph/keyrings/admin/key",
            "clusters.ceph.keyrings.admin.key",
        ),
        (
            "/clusters/ceph/keyrings/incus/key",
            "clusters.ceph.keyrings.incus.key",
        ),
        ("/clusters/ceph/monitors/0", "clusters.ceph.monitors[0]"),
        ("/clusters/ceph/monitors/1", "clusters.ceph.monitors[1]"),
        ("/clusters/ceph/monitors/2", "clusters.ceph.monitors[2]"),
    ];
    for case in control_character_cases(&full, &fields, &[]) {
        let h = Harness::load_built(LIB);
        let err = h.assert_config_refused(&case.config, &case.message);
        for k in KEYS {
            assert!(!err.message.contains(k), "{}", case.field);
        }
        assert_eq!(h.host().state(), Value::Null, "{}", case.field);
    }
}

/// Map keys become file names and config lines too.
#[test]
fn control_characters_are_refused_in_names() {
    let cases = [
        (
            json!({"ceph\n": main_cluster()}),
            "clusters: a key holds a line break, NUL or another control character",
        ),
        (
            json!({"ceph": cluster_with("keyrings", json!({"admin\u{0}": {"key": ADMIN_KEY}}))}),
            "clusters.ceph.keyrings: a key holds a line break, NUL or another control character",
        ),
        (
            json!({"ceph": cluster_with("client_config", json!({"rbd_cache\nkeyring": "x"}))}),
            "clusters.ceph.client_config: a key holds a line break, NUL or another control \
             character",
        ),
    ];
    for (clusters, message) in cases {
        let h = Harness::load_built(LIB);
        h.assert_config_refused(&json!({"enabled": true, "clusters": clusters}), message);
    }
}

#[test]
fn monitor_forms_and_names_are_accepted() {
    let h = Harness::load_built(LIB);
    let monitors = json!([
        "10.0.0.11",
        "10.0.0.12:6789",
        "fd00::13",
        "[fd00::14]",
        "[fd00::15]:3300",
        "v1:10.0.0.16:6789",
        "v2:10.0.0.17:3300/0",
        "v2:[fd00::18]:3300",
        "mon1.example.com",
        "mon2:6789"
    ]);
    let cfg = json!({"enabled": false, "clusters": {
        "ceph_2-b": {"fsid": FSID.to_uppercase(), "monitors": monitors,
                     "keyrings": {"rgw.server01_a-1": {"key": ADMIN_KEY}},
                     "client_config": {"rbd default features": "61"}}
    }});
    h.put_config(&cfg).unwrap();
    assert_eq!(h.get().unwrap()["config"], cfg);
}

#[test]
fn disabling_removes_etc_ceph() {
    let h = Harness::load_built(LIB);
    let host = h.host();
    h.put_config(&enabled_config()).unwrap();
    host.clear_effects();

    let disabled = json!({"enabled": false, "clusters": {"ceph": main_cluster()}});
    h.put_config(&disabled).unwrap();
    assert_eq!(host.file_effects(), [FileEffect::removed("/etc/ceph")]);
    assert!(!host.real_path("/etc/ceph").exists());
    assert!(host.commands().is_empty());
    assert_eq!(host.state(), json!({ "config": disabled }));
    // Staying disabled touches nothing.
    host.clear_effects();
    h.put_config(&json!({"enabled": false, "clusters": {}}))
        .unwrap();
    assert!(host.file_effects().is_empty());
}

#[test]
fn an_update_rewrites_etc_ceph_from_scratch() {
    let h = Harness::load_built(LIB);
    let host = h.host();
    h.put_config(&enabled_config()).unwrap();
    host.clear_effects();

    let cfg = json!({"enabled": true, "clusters": {"backup": backup_cluster()}});
    h.put_config(&cfg).unwrap();
    assert_eq!(
        host.file_effects(),
        [
            FileEffect::removed("/etc/ceph"),
            FileEffect::dir_created("/etc/ceph", 0o755),
            FileEffect::written("/etc/ceph/backup.conf", 0o644),
        ]
    );
    assert_eq!(
        std::fs::read_dir(host.real_path("/etc/ceph"))
            .unwrap()
            .count(),
        1
    );
    assert_eq!(h.host().read_text("/etc/ceph/backup.conf"), BACKUP_CONF);
    assert_eq!(host.state(), json!({ "config": cfg }));
}

#[test]
fn a_failing_write_puts_every_file_back() {
    let h = Harness::load_built(LIB);
    let host = h.host();
    // An existing /etc/ceph: a file of ours to be replaced, a foreign one, and a directory
    // where a keyring must go, which makes the bring-up fail half way.
    host.put_file("/etc/ceph/ceph.conf", b"[global]\nold = 1\n", 0o644);
    host.put_file("/etc/ceph/rbdmap", b"# foreign\n", 0o644);
    host.put_file("/etc/ceph/ceph.client.incus.keyring/x", b"", 0o600);

    let err = h.put_config(&enabled_config()).unwrap_err();
    assert_eq!(err.status, 500, "{err:?}");
    assert!(
        err.message.contains("/etc/ceph/ceph.client.incus.keyring"),
        "{err:?}"
    );
    assert_eq!(
        h.host().read_text("/etc/ceph/ceph.conf"),
        "[global]\nold = 1\n"
    );
    assert_eq!(h.host().read_text("/etc/ceph/rbdmap"), "# foreign\n");
    // The directory in the way is left alone.
    assert!(host
        .real_path("/etc/ceph/ceph.client.incus.keyring/x")
        .exists());
    assert!(host.read_file("/etc/ceph/backup.conf").is_none());
    assert!(host
        .read_file("/etc/ceph/ceph.client.admin.keyring")
        .is_none());
    assert!(host.real_path("/etc/ceph").exists());
    assert_eq!(
        host.files_removed(),
        [
            "/etc/ceph/ceph.client.admin.keyring",
            "/etc/ceph/backup.conf"
        ]
    );
    assert_eq!(host.state(), Value::Null);
    assert_eq!(host.save_count(), 0);
    assert_eq!(
        h.get().unwrap()["config"],
        json!({"enabled": false, "clusters": {}})
    );
    h.host().assert_not_logged(&KEYS);
}

#[test]
fn a_failing_save_after_enabling_removes_etc_ceph() {
    let h = Harness::load_built(LIB);
    let host = h.host();
    host.fail_next_save("disk full");
    let err = h.put_config(&enabled_config()).unwrap_err();
    assert_eq!((err.status, err.message.as_str()), (500, "disk full"));
    // The journal is rolled back: each file written, then the directory it created.
    let removed = host.files_removed();
    assert_eq!(removed.last().unwrap(), "/etc/ceph");
    assert_eq!(removed.len() - 1, host.files_written().len(), "{removed:?}");
    assert!(!host.real_path("/etc/ceph").exists());
    assert_eq!(host.state(), Value::Null);
    assert_eq!(host.save_count(), 0);
}

#[test]
fn a_failing_save_brings_the_old_config_back() {
    let h = Harness::load_built(LIB);
    let host = h.host();
    let old = enabled_config();
    h.put_config(&old).unwrap();
    host.fail_next_save("disk full");

    let new =
        json!({"enabled": true, "clusters": {"other": {"fsid": FSID2, "monitors": ["10.1.0.1"]}}});
    let err = h.put_config(&new).unwrap_err();
    assert_eq!((err.status, err.message.as_str()), (500, "disk full"));
    assert!(host.read_file("/etc/ceph/other.conf").is_none());
    assert_eq!(h.host().read_text("/etc/ceph/ceph.conf"), CEPH_CONF);
    assert_eq!(h.host().read_text("/etc/ceph/backup.conf"), BACKUP_CONF);
    assert_eq!(
        h.host().read_text("/etc/ceph/ceph.client.admin.keyring"),
        format!("[client.admin]\nkey = {ADMIN_KEY}\n")
    );
    assert_eq!(host.state(), json!({ "config": old }));
    assert_eq!(host.save_count(), 1);
}

#[test]
fn the_state_is_the_parsed_ceph_status() {
    let h = Harness::load_built(LIB);
    h.host().on_command(STATUS, Reply::ok(CEPH_STATUS_JSON));
    h.put_config(&enabled_config()).unwrap();
    h.host().clear_effects();

    let state = h.get().unwrap()["state"].clone();
    assert_eq!(
        state,
        json!({
            "fsid": FSID,
            "health": {
                "status": "HEALTH_WARN",
                "checks": {
                    "POOL_APP_NOT_ENABLED": {
                        "severity": "HEALTH_WARN",
                        "summary": {"message": "1 pool(s) do not have an application enabled", "count": 1},
                        "muted": false
                    },
                    "RECENT_CRASH": {
                        "severity": "HEALTH_WARN",
                        "summary": {"message": "1 daemons have recently crashed", "count": 1},
                        "muted": false
                    }
                }
            },
            "election_epoch": 16,
            "quorum": [0, 1, 2],
            "quorum_names": ["server01", "server02", "server03"],
            "quorum_age": 351017,
            "monmap": {"epoch": 3, "min_mon_release_name": "reef", "num_mons": 3},
            "osdmap": {
                "epoch": 152, "num_osds": 6, "num_up_osds": 6, "osd_up_since": 1719834124,
                "num_in_osds": 6, "osd_in_since": 1719500873, "num_remapped_pgs": 0
            },
            "pgmap": {
                "pgs_by_state": [
                    {"state_name": "active+clean", "count": 64},
                    {"state_name": "active+clean+scrubbing", "count": 1}
                ],
                "num_pgs": 65, "num_pools": 3, "num_objects": 2581, "data_bytes": 9846226051_i64,
                "bytes_used": 30170292224_i64, "bytes_avail": 5971410395136_i64,
                "bytes_total": 6001580687360_i64
            },
            "fsmap": {"epoch": 1, "btime": "2024-06-27T13:41:14:462112+0000"},
            "mgrmap": {
                "available": true, "num_standbys": 2,
                "modules": ["dashboard", "iostat", "nfs", "prometheus", "restful"]
            },
            "servicemap": {
                "epoch": 31,
                "modified": "2024-07-04T09:12:44.417273+0000",
                "services": {"rgw": {"daemons": {
                    "summary": "",
                    "24131": {
                        "start_epoch": 29,
                        "start_stamp": "2024-07-04T09:11:52.801839+0000",
                        "gid": 24131,
                        "addr": "10.0.0.11:0/2961213543",
                        "metadata": {
                            "arch": "x86_64",
                            "ceph_release": "reef",
                            "ceph_version": "ceph version 18.2.2 (531c0d11a1c5d39fbfe6aa8a521f023abf3bf3e2) reef (stable)",
                            "hostname": "server01",
                            "zone_name": "default"
                        },
                        "task_status": {}
                    }
                }}}
            }
        })
    );
    let calls = h.host().command_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].argv, STATUS);
    assert_eq!(calls[0].timeout_ms, 5_000);
}

#[test]
fn a_sparse_status_omits_what_ceph_did_not_say() {
    let h = Harness::load_built(LIB);
    // A cluster right after bootstrap: no checks, no quorum age, zero epochs.
    h.host().on_command(
        STATUS,
        Reply::ok(
            r#"{"fsid":"b5e0c2ba-3b57-11ef-9d4e-525400c1f7a9","health":{"status":"HEALTH_OK","checks":{},"mutes":[]},"election_epoch":0,"quorum":[],"quorum_names":[],"quorum_age":0,"pgmap":{"num_pgs":0},"mgrmap":{"available":false}}"#,
        ),
    );
    h.put_config(&json!({"enabled": true, "clusters": {}}))
        .unwrap();
    assert_eq!(
        h.get_raw().unwrap(),
        r#"{"state":{"fsid":"b5e0c2ba-3b57-11ef-9d4e-525400c1f7a9","health":{"status":"HEALTH_OK"},"pgmap":{"pgs_by_state":null,"num_pgs":0,"num_pools":0,"num_objects":0,"data_bytes":0,"bytes_used":0,"bytes_avail":0,"bytes_total":0},"mgrmap":{"available":false,"num_standbys":0,"modules":null}},"config":{"enabled":true,"clusters":{}}}"#
    );
}

#[test]
fn an_unreachable_cluster_or_missing_tool_gives_an_empty_state() {
    let h = Harness::load_built(LIB);
    let host = h.host();
    h.put_config(&enabled_config()).unwrap();

    // No `ceph` binary: the host cannot run it.
    assert_eq!(h.get().unwrap()["state"], json!({}));

    host.on_command(
        STATUS,
        Reply::fail(
            1,
            "[errno 110] RADOS timed out (error connecting to the cluster)",
        ),
    );
    assert_eq!(h.get().unwrap()["state"], json!({}));

    host.on_command(STATUS, Reply::ok("not json"));
    assert_eq!(h.get().unwrap()["state"], json!({}));
    let warnings = host.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("ceph status"), "{warnings:?}");
}

#[test]
fn ceph_status_is_not_run_while_disabled() {
    let h = Harness::load_built(LIB);
    h.host().on_command(STATUS, Reply::ok(CEPH_STATUS_JSON));
    h.put_config(&json!({"enabled": false, "clusters": {"ceph": main_cluster()}}))
        .unwrap();
    assert_eq!(h.get().unwrap()["state"], json!({}));
    assert!(h.host().commands().is_empty());
}

#[test]
fn boot_start_writes_the_files_and_shutdown_removes_them() {
    let h = Harness::load_built(LIB);
    let host = h.host();
    host.set_saved_config(&enabled_config());
    h.start().unwrap();
    assert_eq!(h.host().read_text("/etc/ceph/ceph.conf"), CEPH_CONF);
    assert_eq!(h.host().mode("/etc/ceph/ceph.client.incus.keyring"), 0o600);
    assert_eq!(host.save_count(), 0);

    host.clear_effects();
    h.stop().unwrap();
    assert_eq!(host.files_removed(), ["/etc/ceph"]);
    assert!(!host.real_path("/etc/ceph").exists());
    h.host().assert_not_logged(&KEYS);
}

#[test]
fn boot_start_and_stop_do_nothing_when_disabled() {
    let h = Harness::load_built(LIB);
    let host = h.host();
    host.set_saved_config(&json!({"enabled": false, "clusters": {"ceph": main_cluster()}}));
    host.put_file("/etc/ceph/ceph.conf", b"kept\n", 0o644);
    h.start().unwrap();
    h.stop().unwrap();
    assert!(host.file_effects().is_empty());
    assert!(host.commands().is_empty());
    assert_eq!(h.host().read_text("/etc/ceph/ceph.conf"), "kept\n");
}
