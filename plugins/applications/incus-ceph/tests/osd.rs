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
