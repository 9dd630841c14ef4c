//! `initialize-ceph-cluster` against a stand-in for Incus's API on its unix socket (Incus,
//! its cluster and Ceph cannot run here): upstream's checks and refusals, the calls that
//! make the cluster, what each member's `ceph` service is told, and the undo of a failure.

use std::collections::BTreeMap;

use incus_osd_application_common::ceph::{self, Pauses};
use incus_osd_application_common::testing::{call_lines, error, host, stand_in, sync};
use incus_osd_harness::testserver::{Reply, TestServer};
use incus_osd_harness::HarnessHost;
use plugin_api::Host;
use serde_json::{json, Value};

const NONE: Pauses = Pauses {
    started: std::time::Duration::ZERO,
    between: std::time::Duration::ZERO,
};

const KEYRING: &str = "[client.admin]\n\tkey = AQBsecret==\n\tcaps mon = \"allow *\"\n";

fn async_reply(id: &str) -> Reply {
    Reply::json(
        202,
        json!({"type": "async", "status": "Operation created", "status_code": 100,
               "operation": format!("/1.0/operations/{id}"), "metadata": {"id": id}})
        .to_string(),
    )
}

fn finished(server: &TestServer, id: &str, metadata: Value) {
    server.handle(
        &format!("/1.0/operations/{id}/wait"),
        sync(json!({"id": id, "status_code": 200, "metadata": metadata})),
    );
}

/// A three-member Incus cluster that answers every call of a successful initialization.
fn cluster() -> (HarnessHost, Host, TestServer) {
    let (hh, host) = host("incus", &[]);
    let server = stand_in(&hh, ceph::INCUS_SOCKET);
    server.handle(
        "/1.0",
        sync(json!({"environment": {"server_clustered": true, "server_name": "s1"}})),
    );
    server.handle(
        "/1.0/networks/meshbr0",
        sync(json!({"name": "meshbr0", "config": {"ipv6.address": "fd42::1/64"}})),
    );
    server.handle(
        "/1.0/projects/internal",
        sync(json!({"name": "internal", "description": "Internal", "config": {"features.images": "true"}})),
    );
    server.handle_method("PUT", "/1.0/projects/internal", sync(json!({})));
    server.handle(
        "/1.0/cluster/members",
        sync(json!([
            {"server_name": "s1", "status": "Online"},
            {"server_name": "s2", "status": "Online"},
            {"server_name": "s3", "status": "Online"},
        ])),
    );
    server.handle(
        "/os/1.0/services/ceph",
        sync(json!({"state": {}, "config": {"enabled": false, "clusters": {}}})),
    );
    server.handle_method("PUT", "/os/1.0/services/ceph", sync(json!({})));
    server.handle("/os/1.0/applications", sync(json!({})));
    for (i, c) in ceph::CONTROL.iter().enumerate() {
        server.handle(
            &format!("/1.0/instances/{c}"),
            error(404, "Instance not found"),
        );
        server.handle(
            &format!("/1.0/instances/{c}/state"),
            sync(json!({"network": {"eth0": {"addresses": [
                {"family": "inet", "address": "10.0.0.1"},
                {"family": "inet6", "address": "fe80::1"},
                {"family": "inet6", "address": format!("fd42::1{i}")},
            ]}}})),
        );
        server.handle_method(
            "POST",
            &format!("/1.0/instances/{c}/files"),
            sync(json!({})),
        );
        server.handle(
            &format!("/1.0/instances/{c}/exec"),
            async_reply(&format!("setup-{c}")),
        );
        finished(&server, &format!("setup-{c}"), json!({"return": 0}));
    }
    server.handle(
        "/1.0/instances/ceph-central01/files",
        Reply::new(200, KEYRING.as_bytes().to_vec()),
    );
    server.handle("/1.0/storage-pools/local/volumes/custom", sync(json!({})));
    server.handle(
        "/1.0/images/aliases/quay.io%2Fceph%2Fceph:v20",
        sync(json!({"name": "quay.io/ceph/ceph:v20"})),
    );
    server.handle_method("POST", "/1.0/instances", async_reply("create"));
    finished(&server, "create", Value::Null);
    (hh, host, server)
}

fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The bodies of the requests `method path` (any query).
fn bodies(server: &TestServer, method: &str, path: &str) -> Vec<(String, Vec<u8>)> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.method == method && r.path == path)
        .map(|r| (r.query, r.body))
        .collect()
}

fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap()
}

#[test]
fn a_cluster_of_three_gets_three_monitors_and_every_member_its_ceph_service() {
    let (_hh, host, server) = cluster();
    ceph::initialize_cluster(&host, &ceph::incus(), &args(&[]), NONE).expect("initialized");

    // incus-ceph installed on every member through the OS API.
    let installs = bodies(&server, "POST", "/os/1.0/applications");
    let targets: Vec<&str> = installs.iter().map(|(q, _)| q.as_str()).collect();
    assert_eq!(targets, ["target=s1", "target=s2", "target=s3"]);
    assert!(installs
        .iter()
        .all(|(_, b)| json_of(b) == json!({"name": "incus-ceph"})));

    // The project records the cluster, keeping what it had.
    let put = bodies(&server, "PUT", "/1.0/projects/internal");
    assert_eq!(put.len(), 1);
    let project = json_of(&put[0].1);
    let fsid = project["config"]["user.ceph.fsid"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(fsid.len(), 36, "{fsid}");
    assert_eq!(&fsid[14..15], "4", "a version 4 UUID: {fsid}");
    assert_eq!(project["config"]["user.ceph.network"], "meshbr0");
    assert_eq!(project["config"]["features.images"], "true");
    assert_eq!(project["description"], "Internal");

    // The three control containers, one per member, in order.
    let creates = bodies(&server, "POST", "/1.0/instances");
    let made: Vec<(String, String)> = creates
        .iter()
        .map(|(q, b)| (q.clone(), json_of(b)["name"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        made,
        [
            (
                "project=internal&target=s1".to_string(),
                "ceph-central01".to_string()
            ),
            (
                "project=internal&target=s2".to_string(),
                "ceph-central02".to_string()
            ),
            (
                "project=internal&target=s3".to_string(),
                "ceph-central03".to_string()
            ),
        ]
    );
    assert!(creates
        .iter()
        .all(|(_, b)| json_of(b)["devices"].get("ceph-1").is_none()));

    // The first monitor makes the cluster; the others get its files and join.
    let script = |c: &str| {
        let pushes = bodies(&server, "POST", &format!("/1.0/instances/{c}/files"));
        let (_, body) = pushes
            .iter()
            .find(|(q, _)| q.starts_with(&format!("path={}", ceph::SETUP_SCRIPT)))
            .expect("the setup script");
        (String::from_utf8(body.clone()).unwrap(), pushes)
    };
    let (first, pushed) = script("ceph-central01");
    assert!(first.contains("name=ceph-central01\nfirst=1\n"), "{first}");
    assert!(first.contains(&format!("fsid={fsid}\n")), "{first}");
    assert!(first.contains("addr=fd42::10\n"), "{first}");
    assert!(first.contains("public_network = fd42::1/64\n"), "{first}");
    for placeholder in ["@NAME@", "@FIRST@", "@FSID@", "@ADDR@", "@SUBNET@"] {
        assert!(
            !first.contains(placeholder),
            "{placeholder} filled: {first}"
        );
    }
    assert_eq!(pushed.len(), 1);
    let (second, pushed) = script("ceph-central02");
    assert!(
        second.contains("name=ceph-central02\nfirst=0\n"),
        "{second}"
    );
    let paths: Vec<&str> = pushed.iter().map(|(q, _)| q.as_str()).collect();
    assert_eq!(
        paths,
        [
            "path=/etc/ceph/ceph.conf&project=internal",
            "path=/etc/ceph/ceph.client.admin.keyring&project=internal",
            "path=/tmp/ceph.mon.keyring&project=internal",
            &format!("path={}&project=internal", ceph::SETUP_SCRIPT),
        ]
    );

    // Every member's ceph service: enabled, with the cluster's fsid, monitors and admin key.
    let services = bodies(&server, "PUT", "/os/1.0/services/ceph");
    let targets: Vec<&str> = services.iter().map(|(q, _)| q.as_str()).collect();
    assert_eq!(targets, ["target=s1", "target=s2", "target=s3"]);
    for (_, b) in &services {
        assert_eq!(
            json_of(b),
            json!({"config": {"enabled": true, "clusters": {"ceph": {
                "fsid": fsid,
                "monitors": ["fd42::10", "fd42::11", "fd42::12"],
                "keyrings": {"admin": {"key": "AQBsecret=="}},
                "client_config": {},
            }}}})
        );
    }
}

#[test]
fn upstreams_checks_refuse_before_anything_changes() {
    type Setup = fn(&TestServer);
    let cases: Vec<(&str, BTreeMap<String, String>, Setup)> = vec![
        ("the Incus network 'meshbr0' doesn't exist", args(&[]), |s| {
            s.handle("/1.0/networks/meshbr0", error(404, "Network not found"))
        }),
        ("the Incus network 'other' doesn't exist", args(&[("network", "other")]), |_| {}),
        ("the Incus project 'internal' doesn't exist", args(&[]), |s| {
            s.handle("/1.0/projects/internal", error(404, "Project not found"))
        }),
        ("can only deploy Ceph in an Incus cluster", args(&[]), |s| {
            s.handle("/1.0", sync(json!({"environment": {"server_clustered": false}})))
        }),
        ("the Incus cluster must consist of at least three servers", args(&[]), |s| {
            s.handle(
                "/1.0/cluster/members",
                sync(json!([{"server_name": "s1", "status": "Online"}, {"server_name": "s2", "status": "Online"}])),
            )
        }),
        ("Incus server 's2' state isn't Online: Evacuated", args(&[]), |s| {
            s.handle(
                "/1.0/cluster/members",
                sync(json!([{"server_name": "s1", "status": "Online"}, {"server_name": "s2", "status": "Evacuated"}, {"server_name": "s3", "status": "Online"}])),
            )
        }),
        ("the Ceph service is already configured for cluster 'ceph' on Incus Server 's1'", args(&[]), |s| {
            s.handle(
                "/os/1.0/services/ceph",
                sync(json!({"config": {"enabled": true, "clusters": {"ceph": {"fsid": "x"}}}})),
            )
        }),
        (
            "exactly zero or three Incus servers must be defined for hosting the Ceph data plane",
            args(&[("control_servers", "s1,s2")]),
            |_| {},
        ),
        (
            "specified Incus server 's9' isn't a member of the cluster",
            args(&[("control_servers", "s1,s2,s9")]),
            |_| {},
        ),
        (
            "a Ceph container 'ceph-central02' currently exists; refusing to attempt to initialize a new Ceph cluster",
            args(&[]),
            |s| s.handle("/1.0/instances/ceph-central02", sync(json!({"name": "ceph-central02"}))),
        ),
    ];
    for (want, a, setup) in cases {
        let (_hh, host, server) = cluster();
        setup(&server);
        let err = ceph::initialize_cluster(&host, &ceph::incus(), &a, NONE).unwrap_err();
        assert_eq!(err.message, want);
        let lines = call_lines(&server);
        assert!(
            lines.iter().all(|l| l.starts_with("GET ")),
            "{want}: {lines:?}"
        );
    }
}

#[test]
fn a_member_that_has_incus_ceph_already_is_fine() {
    let (_hh, host, server) = cluster();
    server.handle("/os/1.0/applications", error(400, "already exists"));
    ceph::initialize_cluster(&host, &ceph::incus(), &args(&[]), NONE).expect("initialized");
}

#[test]
fn a_failed_monitor_deletes_the_monitors_made_and_restores_the_project() {
    let (_hh, host, server) = cluster();
    finished(&server, "setup-ceph-central02", json!({"return": 1}));
    for c in ["ceph-central01", "ceph-central02"] {
        server.handle(&format!("/1.0/instances/{c}/state"), {
            // Stopping answers an operation; reading the addresses of the first one still works.
            if c == "ceph-central01" {
                sync(json!({"network": {"eth0": {"addresses": [{"family": "inet6", "address": "fd42::10"}]}}}))
            } else {
                sync(json!({}))
            }
        });
        server.handle_method("PUT", &format!("/1.0/instances/{c}/state"), sync(json!({})));
        server.handle_method("DELETE", &format!("/1.0/instances/{c}"), sync(json!({})));
        server.handle(
            &format!("/1.0/storage-pools/local/volumes/custom/{c}-data"),
            sync(json!({})),
        );
    }
    let err = ceph::initialize_cluster(&host, &ceph::incus(), &args(&[]), NONE).unwrap_err();
    assert!(
        err.message
            .starts_with("the Ceph setup script failed in ceph-central02 with status 1"),
        "{}",
        err.message
    );
    let lines = call_lines(&server);
    let deletes: Vec<&String> = lines.iter().filter(|l| l.starts_with("DELETE")).collect();
    assert_eq!(
        deletes,
        [
            "DELETE /1.0/instances/ceph-central02?project=internal",
            "DELETE /1.0/storage-pools/local/volumes/custom/ceph-central02-data?project=internal&target=s2",
            "DELETE /1.0/instances/ceph-central01?project=internal",
            "DELETE /1.0/storage-pools/local/volumes/custom/ceph-central01-data?project=internal&target=s1",
        ]
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("target=s3") && !l.starts_with("GET ") && !l.contains("/os/")),
        "nothing made for the third monitor: {lines:?}"
    );
    let puts = bodies(&server, "PUT", "/1.0/projects/internal");
    assert_eq!(puts.len(), 2);
    assert_eq!(
        json_of(&puts[1].1),
        json!({"config": {"features.images": "true"}, "description": "Internal"})
    );
    assert!(bodies(&server, "PUT", "/os/1.0/services/ceph").is_empty());
}

#[test]
fn the_admin_key_is_read_from_its_keyring_section() {
    assert_eq!(ceph::admin_key(KEYRING).as_deref(), Some("AQBsecret=="));
    assert_eq!(
        ceph::admin_key("[mon.]\n\tkey = MON==\n[client.admin]\nkey=ADMIN==\n").as_deref(),
        Some("ADMIN==")
    );
    assert_eq!(ceph::admin_key("[mon.]\n\tkey = MON==\n"), None);
}

/// A member's `ceph` service that refuses the cluster: everything made is undone, the three
/// monitors deleted and the project restored.
#[test]
fn a_refused_ceph_service_undoes_the_whole_cluster() {
    let (_hh, host, server) = cluster();
    server.handle_method(
        "PUT",
        "/os/1.0/services/ceph",
        error(400, "invalid ceph configuration"),
    );
    for c in ceph::CONTROL {
        server.handle_method("PUT", &format!("/1.0/instances/{c}/state"), sync(json!({})));
        server.handle_method("DELETE", &format!("/1.0/instances/{c}"), sync(json!({})));
        server.handle(
            &format!("/1.0/storage-pools/local/volumes/custom/{c}-data"),
            sync(json!({})),
        );
    }
    let err = ceph::initialize_cluster(&host, &ceph::incus(), &args(&[]), NONE).unwrap_err();
    assert_eq!(
        err.message,
        "Incus: PUT /os/1.0/services/ceph?target=s1: invalid ceph configuration"
    );
    let lines = call_lines(&server);
    let deleted: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("DELETE /1.0/instances/"))
        .collect();
    assert_eq!(
        deleted,
        [
            "DELETE /1.0/instances/ceph-central03?project=internal",
            "DELETE /1.0/instances/ceph-central02?project=internal",
            "DELETE /1.0/instances/ceph-central01?project=internal",
        ]
    );
    let puts = bodies(&server, "PUT", "/1.0/projects/internal");
    assert_eq!(puts.len(), 2);
    assert_eq!(
        json_of(&puts[1].1),
        json!({"config": {"features.images": "true"}, "description": "Internal"})
    );
    assert_eq!(
        lines.last().unwrap(),
        "PUT /1.0/projects/internal",
        "the project is restored last"
    );
}
