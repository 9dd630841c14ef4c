//! The Ceph cluster's containers, driven through the local Incus API as upstream does: they
//! live in Incus's `internal` project, the monitors as `ceph-central01` to `03`, one OSD per
//! server as `ceph-osd-<server>`.

use incus_osd_application_common::api::Api;
use plugin_api::{Error, Host, Result};
use serde_json::{json, Value};

/// Incus's local API.
pub const INCUS_SOCKET: &str = "/run/incus/unix.socket";
/// The Incus project holding the Ceph containers.
pub const PROJECT: &str = "internal";
/// The name prefix of OSD containers (`ceph-osd-<server>`).
pub const OSD_PREFIX: &str = "ceph-osd-";
/// Ceph keeps data safe with no fewer OSDs than this.
pub const MIN_OSDS: usize = 3;

/// How long each call to Incus may stall (stopping a container waits for it).
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Incus's local API.
pub fn incus() -> Api {
    Api::new("Incus", INCUS_SOCKET, TIMEOUT)
}

/// This server's name in the Incus cluster.
pub fn server_name(host: &Host, api: &Api) -> Result<String> {
    let server = api.get(host, "/1.0")?;
    server["environment"]["server_name"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| Error::internal("Incus did not say this server's name"))
}

/// The servers that host an OSD container, in Incus's order.
pub fn osd_hosts(host: &Host, api: &Api) -> Result<Vec<String>> {
    let list = api.get(
        host,
        &format!("/1.0/instances?instance-type=container&recursion=1&project={PROJECT}"),
    )?;
    let Some(instances) = list.as_array() else {
        return Err(Error::internal(
            "Incus listed the instances as something else than a list",
        ));
    };
    Ok(instances
        .iter()
        .filter(|i| {
            i["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(OSD_PREFIX))
        })
        .map(|i| i["location"].as_str().unwrap_or_default().to_string())
        .collect())
}

/// Changes a container's state (`start`, `stop`) and waits for it.
pub fn set_state(host: &Host, api: &Api, name: &str, action: &str) -> Result<()> {
    api.put(
        host,
        &format!("/1.0/instances/{name}/state?project={PROJECT}"),
        &json!({"action": action, "timeout": -1, "force": false, "stateful": false}),
    )
    .map(drop)
}

/// `remove-drive`: stops and deletes this server's OSD container. Refused when this server
/// has none, or when the cluster would be left with fewer than [`MIN_OSDS`] (remove the OSD
/// through Ceph first and let its data move: this removal is forced).
pub fn remove_drive(host: &Host, api: &Api) -> Result<Value> {
    let server = server_name(host, api)?;
    let hosts = osd_hosts(host, api)?;
    if !hosts.contains(&server) {
        return Err(Error::internal(format!(
            "no Ceph OSD instance exists on Incus server {server}"
        )));
    }
    if hosts.len() <= MIN_OSDS {
        return Err(Error::internal(format!(
            "a minimum of three OSDs are required by Ceph; refusing to remove OSD from Incus server {server}"
        )));
    }
    let name = format!("{OSD_PREFIX}{server}");
    set_state(host, api, &name, "stop")?;
    api.call(
        host,
        "DELETE",
        &format!("/1.0/instances/{name}?project={PROJECT}"),
        None,
    )?;
    host.info(&format!("Removed the Ceph OSD container {name}"));
    Ok(Value::Null)
}
