//! `remove-drive` against a stand-in Incus API on its unix socket (Incus cannot run here):
//! the calls upstream makes, in its order, and its refusals.

use incus_osd_application_common::testing::{call_lines, calls, host, stand_in, sync};
use incus_osd_harness::testserver::{Reply, TestServer};
use incus_osd_plugin_application_incus_ceph::osd;
use serde_json::{json, Value};

const INSTANCES: &str = "/1.0/instances";

fn incus(
    server_name: &str,
    osds_on: &[&str],
) -> (incus_osd_harness::HarnessHost, plugin_api::Host, TestServer) {
    let (hh, host) = host("incus-ceph", &[]);
    let server = stand_in(&hh, osd::INCUS_SOCKET);
    server.handle(
        "/1.0",
        sync(json!({"environment": {"server_name": server_name}})),
    );
    let mut list: Vec<Value> = vec![
        json!({"name": "ceph-central01", "location": "a"}),
        json!({"name": "web", "location": server_name}),
    ];
    list.extend(
        osds_on
            .iter()
            .map(|s| json!({"name": format!("ceph-osd-{s}"), "location": s})),
    );
    server.handle(INSTANCES, sync(Value::Array(list)));
    (hh, host, server)
}

/// An `async` answer for operation `id`, and its successful end.
fn operation(server: &TestServer, path: &str, id: &str) {
    server.handle(
        path,
        Reply::json(
            202,
            json!({"type": "async", "status": "Operation created", "status_code": 100,
                   "operation": format!("/1.0/operations/{id}"), "metadata": {"id": id}})
            .to_string(),
        ),
    );
    server.handle(
        &format!("/1.0/operations/{id}/wait"),
        sync(json!({"id": id, "status_code": 200, "metadata": null})),
    );
}

#[test]
fn remove_drive_stops_then_deletes_this_servers_osd_container() {
    let (_hh, host, server) = incus("s4", &["s1", "s2", "s3", "s4"]);
    operation(&server, "/1.0/instances/ceph-osd-s4/state", "stop");
    operation(&server, "/1.0/instances/ceph-osd-s4", "delete");
    osd::remove_drive(&host, &osd::incus()).expect("removed");
    assert_eq!(
        call_lines(&server),
        [
            "GET /1.0",
            "GET /1.0/instances?instance-type=container&recursion=1&project=internal",
            "PUT /1.0/instances/ceph-osd-s4/state?project=internal",
            "GET /1.0/operations/stop/wait",
            "DELETE /1.0/instances/ceph-osd-s4?project=internal",
            "GET /1.0/operations/delete/wait",
        ]
    );
    assert_eq!(
        calls(&server)[2].2,
        json!({"action": "stop", "timeout": -1, "force": false, "stateful": false})
    );
}

#[test]
fn remove_drive_refuses_to_leave_fewer_than_three_osds() {
    let (_hh, host, server) = incus("s3", &["s1", "s2", "s3"]);
    let err = osd::remove_drive(&host, &osd::incus()).unwrap_err();
    assert_eq!(
        err.message,
        "a minimum of three OSDs are required by Ceph; refusing to remove OSD from Incus server s3"
    );
    assert_eq!(call_lines(&server).len(), 2, "nothing changed");
}

#[test]
fn remove_drive_refuses_a_server_without_an_osd() {
    let (_hh, host, server) = incus("s9", &["s1", "s2", "s3", "s4"]);
    let err = osd::remove_drive(&host, &osd::incus()).unwrap_err();
    assert_eq!(
        err.message,
        "no Ceph OSD instance exists on Incus server s9"
    );
    assert_eq!(call_lines(&server).len(), 2, "nothing changed");
}

#[test]
fn remove_drive_stops_at_a_failed_stop_and_deletes_nothing() {
    let (_hh, host, server) = incus("s4", &["s1", "s2", "s3", "s4"]);
    operation(&server, "/1.0/instances/ceph-osd-s4/state", "stop");
    server.handle(
        "/1.0/operations/stop/wait",
        sync(json!({"id": "stop", "status_code": 400, "err": "Failed to stop the instance"})),
    );
    let err = osd::remove_drive(&host, &osd::incus()).unwrap_err();
    assert_eq!(
        err.message,
        "Incus: PUT /1.0/instances/ceph-osd-s4/state?project=internal: Failed to stop the instance"
    );
    assert!(
        !call_lines(&server).iter().any(|l| l.starts_with("DELETE")),
        "{:?}",
        call_lines(&server)
    );
}

// --- refresh-images ------------------------------------------------------------------

const NONE: osd::Pauses = osd::Pauses {
    started: std::time::Duration::ZERO,
    between: std::time::Duration::ZERO,
};

/// `skopeo inspect`'s answer for an image with two layers, and the fingerprint Incus gives
/// it (the SHA-256 of `sha256:aaaasha256:bbbb`, computed apart).
const INSPECT: &str = r#"{"Name": "quay.io/ceph/ceph", "Digest": "sha256:ffff", "Architecture": "amd64",
    "Layers": ["sha256:aaaa", "sha256:bbbb"]}"#;
const REMOTE: &str = "cf451b213d4d2fcfdc8f42b806d5980e5b073e6b7f9871a1218b19609f999c24";

fn skopeo(hh: &incus_osd_harness::HarnessHost, reply: incus_osd_harness::Reply) {
    hh.on_command(&[osd::SKOPEO, "--insecure-policy", "inspect"], reply);
}

fn images(server: &TestServer, fingerprint: &str, alias: &str) {
    server.handle(
        "/1.0/images",
        sync(json!([{"fingerprint": fingerprint, "aliases": [{"name": alias}]}])),
    );
}

#[test]
fn incus_fingerprints_an_oci_image_by_its_layers() {
    assert_eq!(osd::oci_fingerprint(INSPECT).unwrap(), REMOTE);
    assert!(osd::oci_fingerprint(r#"{"Digest": "x"}"#).is_err());
}

#[test]
fn a_newer_registry_image_replaces_the_old_one_and_rebuilds_the_monitor() {
    let (hh, host, server) = incus("s1", &[]);
    skopeo(&hh, incus_osd_harness::Reply::ok(INSPECT));
    images(&server, "old", "quay.io/ceph/ceph:v20");
    server.handle(
        "/1.0/images/aliases/quay.io%2Fceph%2Fceph:v20",
        incus_osd_application_common::testing::error(404, "Image alias not found"),
    );
    operation(&server, "/1.0/images/old", "delete-image");
    // (The stand-in answers by path, whatever the method: the fetch, a POST to the path
    // the list of images is a GET of, gets the list back, a sync answer not waited for.)
    operation(&server, "/1.0/instances/ceph-central01/state", "state");
    operation(&server, "/1.0/instances/ceph-central01/rebuild", "rebuild");
    operation(&server, "/1.0/instances/ceph-central01/exec", "exec");
    server.handle(
        "/1.0/instances/ceph-central01",
        sync(json!({"name": "ceph-central01", "config": {"image.id": "ceph/ceph:v20", "oci.entrypoint": "/sbin/init"}, "devices": {}})),
    );
    osd::refresh_one(
        &host,
        &osd::incus(),
        "ceph-central01",
        "ceph/ceph:v20",
        NONE,
    )
    .expect("refreshed");
    let lines = call_lines(&server);
    let p = "?project=internal";
    let exec = format!("POST /1.0/instances/ceph-central01/exec{p}");
    let mut want: Vec<String> = [
        format!("GET /1.0/images?recursion=1{}", "&project=internal"),
        format!("DELETE /1.0/images/old{p}"),
        "GET /1.0/operations/delete-image/wait".to_string(),
        format!("GET /1.0/images/aliases/quay.io%2Fceph%2Fceph:v20{p}"),
        format!("POST /1.0/images{p}"),
        format!("PUT /1.0/instances/ceph-central01/state{p}"),
        "GET /1.0/operations/state/wait".to_string(),
        format!("POST /1.0/instances/ceph-central01/rebuild{p}"),
        "GET /1.0/operations/rebuild/wait".to_string(),
        format!("GET /1.0/instances/ceph-central01{p}"),
        format!("PUT /1.0/instances/ceph-central01{p}"),
        format!("PUT /1.0/instances/ceph-central01/state{p}"),
        "GET /1.0/operations/state/wait".to_string(),
    ]
    .to_vec();
    for _ in 0..4 {
        want.push(exec.clone());
        want.push("GET /1.0/operations/exec/wait".to_string());
    }
    assert_eq!(lines, want);
    let sent = calls(&server);
    let body = |line: &str| {
        sent.iter()
            .filter(|(m, p, _)| format!("{m} {p}") == line)
            .map(|(_, _, b)| b.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        body(&format!("POST /1.0/images{p}"))[0],
        json!({"source": {"type": "image", "alias": "ceph/ceph:v20", "server": "https://quay.io", "protocol": "oci"},
               "aliases": [{"name": "quay.io/ceph/ceph:v20"}]})
    );
    assert_eq!(
        body(&format!("POST /1.0/instances/ceph-central01/rebuild{p}"))[0],
        json!({"source": {"type": "image", "alias": "quay.io/ceph/ceph:v20"}})
    );
    assert_eq!(
        body(&format!("PUT /1.0/instances/ceph-central01{p}"))[0]["config"],
        json!({"image.id": "ceph/ceph:v20", "oci.entrypoint": "/sbin/init"})
    );
    let states: Vec<Value> = body(&format!("PUT /1.0/instances/ceph-central01/state{p}"))
        .into_iter()
        .map(|b| b["action"].clone())
        .collect();
    assert_eq!(states, [json!("stop"), json!("start")]);
    let units: Vec<Value> = body(&exec)
        .into_iter()
        .map(|b| b["command"][3].clone())
        .collect();
    assert_eq!(
        units,
        [
            json!("ceph-mon@ceph-central01.service"),
            json!("ceph-mgr@ceph-central01.service"),
            json!("ceph-mds@ceph-central01.service"),
            json!("ceph-rbd-mirror@rbd-mirror.ceph-central01.service"),
        ]
    );
    assert_eq!(
        hh.commands(),
        [vec![
            osd::SKOPEO.to_string(),
            "--insecure-policy".into(),
            "inspect".into(),
            "docker://quay.io/ceph/ceph:v20".into()
        ]]
    );
}

#[test]
fn containers_already_on_the_newest_image_are_left_alone() {
    let (hh, host, server) = incus("s1", &["s1", "s2", "s3"]);
    skopeo(&hh, incus_osd_harness::Reply::ok(INSPECT));
    images(&server, REMOTE, "quay.io/ceph/ceph:v20");
    for c in [
        "ceph-central01",
        "ceph-central02",
        "ceph-central03",
        "ceph-osd-s1",
        "ceph-osd-s2",
        "ceph-osd-s3",
    ] {
        server.handle(
            &format!("/1.0/instances/{c}"),
            sync(json!({"name": c, "config": {"image.id": "ceph/ceph:v20"}})),
        );
    }
    osd::refresh_images(&host, &osd::incus(), None, NONE).expect("nothing to do");
    let lines = call_lines(&server);
    assert!(lines.iter().all(|l| l.starts_with("GET ")), "{lines:?}");
    // The instances, then for each container: its image name, the local images, then its
    // image name again.
    assert_eq!(lines.len(), 1 + 6 * 3, "{lines:?}");
    assert_eq!(hh.commands().len(), 6);
}

#[test]
fn a_tag_the_registry_does_not_have_is_refused_before_any_change() {
    let (hh, host, server) = incus("s1", &[]);
    skopeo(
        &hh,
        incus_osd_harness::Reply::fail(
            1,
            "time=\"...\" level=fatal msg=\"Error parsing image name: manifest unknown\"",
        ),
    );
    images(&server, "old", "quay.io/ceph/ceph:v19");
    let err = osd::refresh_images(&host, &osd::incus(), Some("v99"), NONE).unwrap_err();
    assert_eq!(
        err.message,
        "OCI image 'quay.io/ceph/ceph:v99' doesn't exist"
    );
    assert!(
        call_lines(&server).iter().all(|l| l.starts_with("GET ")),
        "{:?}",
        call_lines(&server)
    );
}

// --- add-drive -------------------------------------------------------------------------

const CONF: &str = "[global]\nfsid = 1234\n";

/// A stand-in for a cluster with OSDs on s1 to s3, this server `s4`, and the OS API (through
/// Incus's `/os` proxy) listing drive `disk1` on `bus`, encrypted or not.
fn cluster(
    bus: &str,
    encrypted: bool,
) -> (incus_osd_harness::HarnessHost, plugin_api::Host, TestServer) {
    let (hh, host, server) = incus("s4", &["s1", "s2", "s3"]);
    let drive = |enc: bool| {
        let mut d = json!({"id": "disk1", "bus": bus});
        if enc {
            d["encrypted"] = json!(true);
            d["encrypted_id"] = json!("/dev/mapper/luks-disk1");
        }
        sync(json!({"state": {"drives": [d, {"id": "disk2", "bus": "sata"}]}}))
    };
    server.handle("/os/1.0/system/storage", drive(encrypted));
    server.handle(
        "/1.0/projects/internal",
        sync(json!({"name": "internal", "config": {"user.ceph.network": "meshbr0"}})),
    );
    server.handle(
        "/1.0/images/aliases/quay.io%2Fceph%2Fceph:v20",
        sync(json!({"name": "quay.io/ceph/ceph:v20", "target": "abcd"})),
    );
    server.handle("/1.0/storage-pools/local/volumes/custom", sync(json!({})));
    server.handle_method("POST", INSTANCES, async_reply("create"));
    wait_ok(&server, "create");
    server.handle(
        "/1.0/instances/ceph-central01/files",
        Reply::new(200, CONF.as_bytes().to_vec()),
    );
    server.handle("/1.0/instances/ceph-osd-s4/files", sync(json!({})));
    operation(&server, "/1.0/instances/ceph-osd-s4/exec", "setup");
    server.handle(
        "/1.0/operations/setup/wait",
        sync(json!({"id": "setup", "status_code": 200, "metadata": {"return": 0}})),
    );
    (hh, host, server)
}

fn async_reply(id: &str) -> Reply {
    Reply::json(
        202,
        json!({"type": "async", "status": "Operation created", "status_code": 100,
               "operation": format!("/1.0/operations/{id}"), "metadata": {"id": id}})
        .to_string(),
    )
}

fn wait_ok(server: &TestServer, id: &str) {
    server.handle(
        &format!("/1.0/operations/{id}/wait"),
        sync(json!({"id": id, "status_code": 200, "metadata": null})),
    );
}

fn sent_to<'a>(sent: &'a [(String, String, Value)], line: &str) -> Vec<&'a Value> {
    sent.iter()
        .filter(|(m, p, _)| format!("{m} {p}") == line)
        .map(|(_, _, b)| b)
        .collect()
}

#[test]
fn add_drive_builds_the_osd_container_over_the_encrypted_drive() {
    let (_hh, host, server) = cluster("nvme", true);
    osd::add_drive(&host, &osd::incus(), "disk1", NONE).expect("added");
    let p = "project=internal";
    let t = "project=internal&target=s4";
    assert_eq!(
        call_lines(&server),
        [
            "GET /1.0".to_string(),
            format!("GET /1.0/instances?instance-type=container&recursion=1&{p}"),
            "GET /os/1.0/system/storage".to_string(),
            "GET /1.0/projects/internal".to_string(),
            format!("POST /1.0/storage-pools/local/volumes/custom?{t}"),
            format!("GET /1.0/images/aliases/quay.io%2Fceph%2Fceph:v20?{p}"),
            format!("POST /1.0/instances?{t}"),
            "GET /1.0/operations/create/wait".to_string(),
            format!("GET /1.0/instances/ceph-central01/files?path=/etc/ceph/ceph.conf&{p}"),
            format!("POST /1.0/instances/ceph-osd-s4/files?path=/etc/ceph/ceph.conf&{p}"),
            format!("GET /1.0/instances/ceph-central01/files?path=/etc/ceph/ceph.client.admin.keyring&{p}"),
            format!("POST /1.0/instances/ceph-osd-s4/files?path=/etc/ceph/ceph.client.admin.keyring&{p}"),
            format!("POST /1.0/instances/ceph-osd-s4/files?path={}&{p}", osd::SETUP_SCRIPT),
            format!("POST /1.0/instances/ceph-osd-s4/exec?{p}"),
            "GET /1.0/operations/setup/wait".to_string(),
        ]
    );
    let requests = server.requests();
    let create = requests
        .iter()
        .find(|r| r.method == "POST" && r.path == INSTANCES)
        .unwrap();
    let create: Value = serde_json::from_slice(&create.body).unwrap();
    assert_eq!(create["name"], "ceph-osd-s4");
    assert_eq!(create["source"]["alias"], "quay.io/ceph/ceph:v20");
    assert_eq!(create["devices"]["eth0"]["network"], "meshbr0");
    assert_eq!(
        create["devices"]["ceph-1"],
        json!({"type": "unix-block", "source": "/dev/mapper/luks-disk1", "path": "/dev/ceph-1", "uid": "167", "gid": "167"})
    );
    assert_eq!(create["devices"]["var"]["source"], "ceph-osd-s4-data/var");
    // The files: the monitor's copy, root's, overwritten; the script with the drive's class.
    let pushes: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/1.0/instances/ceph-osd-s4/files")
        .collect();
    assert_eq!(pushes[0].body, CONF.as_bytes());
    assert_eq!(pushes[0].header("x-incus-mode"), Some("0644"));
    assert_eq!(pushes[1].header("x-incus-mode"), Some("0600"));
    assert_eq!(pushes[1].header("x-incus-write"), Some("overwrite"));
    let script = String::from_utf8(pushes[2].body.clone()).unwrap();
    assert!(script.contains("class=nvme\n"), "{script}");
    assert!(!script.contains("@DEVICE_CLASS@"), "{script}");
    let sent = calls(&server);
    assert_eq!(
        sent_to(&sent, &format!("POST /1.0/instances/ceph-osd-s4/exec?{p}"))[0]["command"],
        json!(["sh", "-eux", osd::SETUP_SCRIPT])
    );
}

/// A plain drive is encrypted through the OS API first; the stand-in keeps listing it
/// plain, so the second look refuses it, before anything is made.
#[test]
fn add_drive_encrypts_a_plain_drive_first_and_checks_it_took() {
    let (_hh, host, server) = cluster("scsi", false);
    server.handle("/os/1.0/system/storage/:encrypt-drive", sync(json!({})));
    let err = osd::add_drive(&host, &osd::incus(), "disk1", NONE).unwrap_err();
    assert_eq!(
        err.message,
        "the drive 'disk1' is not listed as encrypted after its encryption"
    );
    assert_eq!(
        call_lines(&server)[2..],
        [
            "GET /os/1.0/system/storage",
            "POST /os/1.0/system/storage/:encrypt-drive",
            "GET /os/1.0/system/storage",
        ]
    );
    assert_eq!(calls(&server)[3].2, json!({"id": "disk1"}));
}

#[test]
fn a_drives_bus_gives_its_ceph_device_class() {
    assert_eq!(osd::device_class("nvme"), "nvme");
    assert_eq!(osd::device_class("scsi"), "ssd");
    assert_eq!(osd::device_class("sata"), "hdd");
    assert_eq!(osd::device_class(""), "hdd");
}

#[test]
fn add_drive_refuses_an_unknown_drive_and_a_second_osd() {
    let (_hh, host, server) = cluster("nvme", true);
    let err = osd::add_drive(&host, &osd::incus(), "nope", NONE).unwrap_err();
    assert_eq!(err.message, "specified raw device 'nope' doesn't exist");
    let (_hh2, host2, _server2) = {
        let (hh, host, server) = incus("s2", &["s1", "s2", "s3"]);
        (hh, host, server)
    };
    let err = osd::add_drive(&host2, &osd::incus(), "disk1", NONE).unwrap_err();
    assert_eq!(
        err.message,
        "a Ceph OSD instance already exists on Incus server s2"
    );
    assert!(call_lines(&server).iter().all(|l| l.starts_with("GET ")));
}

#[test]
fn a_failed_setup_deletes_the_container_and_its_volume() {
    let (_hh, host, server) = cluster("nvme", true);
    server.handle(
        "/1.0/operations/setup/wait",
        sync(json!({"id": "setup", "status_code": 200, "metadata": {"return": 1}})),
    );
    operation(&server, "/1.0/instances/ceph-osd-s4/state", "stop");
    server.handle_method(
        "DELETE",
        "/1.0/instances/ceph-osd-s4",
        async_reply("delete"),
    );
    wait_ok(&server, "delete");
    server.handle(
        "/1.0/storage-pools/local/volumes/custom/ceph-osd-s4-data",
        sync(json!({})),
    );
    let err = osd::add_drive(&host, &osd::incus(), "disk1", NONE).unwrap_err();
    assert!(
        err.message
            .starts_with("the Ceph setup script failed in ceph-osd-s4 with status 1"),
        "{}",
        err.message
    );
    let lines = call_lines(&server);
    let tail: Vec<&str> = lines[lines.len() - 5..]
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(
        tail,
        [
            "PUT /1.0/instances/ceph-osd-s4/state?project=internal",
            "GET /1.0/operations/stop/wait",
            "DELETE /1.0/instances/ceph-osd-s4?project=internal",
            "GET /1.0/operations/delete/wait",
            "DELETE /1.0/storage-pools/local/volumes/custom/ceph-osd-s4-data?project=internal&target=s4",
        ]
    );
    let sent = calls(&server);
    assert_eq!(
        sent_to(
            &sent,
            "PUT /1.0/instances/ceph-osd-s4/state?project=internal"
        )[0]["force"],
        true
    );
}
