//! The Ceph cluster's containers, driven through the local Incus API as upstream does: they
//! live in Incus's `internal` project, the monitors as `ceph-central01` to `03`, one OSD per
//! server as `ceph-osd-<server>`. `incus` initializes the cluster
//! ([`initialize_cluster`]); `incus-ceph` adds, removes and refreshes its containers.

use std::collections::BTreeMap;

use crate::api::Api;
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

/// Changes a container's state (`start`, `stop`; `force`d or not) and waits for it.
pub fn set_state(host: &Host, api: &Api, name: &str, action: &str, force: bool) -> Result<()> {
    api.put(
        host,
        &format!("/1.0/instances/{name}/state?project={PROJECT}"),
        &json!({"action": action, "timeout": -1, "force": force, "stateful": false}),
    )
    .map(drop)
}

/// Deletes container `name` and waits for it.
fn delete_instance(host: &Host, api: &Api, name: &str) -> Result<()> {
    api.call(
        host,
        "DELETE",
        &format!("/1.0/instances/{name}?project={PROJECT}"),
        None,
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
    set_state(host, api, &name, "stop", false)?;
    delete_instance(host, api, &name)?;
    host.info(&format!("Removed the Ceph OSD container {name}"));
    Ok(Value::Null)
}

/// The registry the Ceph images come from, and the name an image has there by default.
pub const REGISTRY: &str = "quay.io";
/// The monitors' containers.
pub const CONTROL: [&str; 3] = ["ceph-central01", "ceph-central02", "ceph-central03"];
/// The `skopeo` Incus ships (the OS has none of its own).
pub const SKOPEO: &str = "/opt/incus/bin/skopeo";
/// The units enabled again in a monitor's container after its image is replaced.
const CONTROL_UNITS: [&str; 4] = ["ceph-mon", "ceph-mgr", "ceph-mds", "ceph-rbd-mirror"];

/// The waits of `refresh-images`: after a container starts again, and between containers
/// (for Ceph to settle). Upstream's are 5 s and 10 s; tests use none.
#[derive(Debug, Clone, Copy)]
pub struct Pauses {
    pub started: std::time::Duration,
    pub between: std::time::Duration,
}

impl Pauses {
    pub const UPSTREAM: Pauses = Pauses {
        started: std::time::Duration::from_secs(5),
        between: std::time::Duration::from_secs(10),
    };
}

/// `refresh-images`: every Ceph container (the three monitors, then each OSD) onto the
/// newest image of its tag, or of `oci_tag` (`ceph/ceph:<oci_tag>`) when given: a container
/// whose image is already the registry's newest, under the same name, is left alone;
/// otherwise the newer image is fetched (the older one deleted first), and the container is
/// stopped, rebuilt from it, its `image.id` set, started, and (a monitor) its Ceph units
/// enabled again.
pub fn refresh_images(
    host: &Host,
    api: &Api,
    oci_tag: Option<&str>,
    pauses: Pauses,
) -> Result<Value> {
    let mut containers: Vec<String> = CONTROL.iter().map(|c| c.to_string()).collect();
    containers.extend(
        osd_hosts(host, api)?
            .into_iter()
            .map(|h| format!("{OSD_PREFIX}{h}")),
    );
    for (i, name) in containers.iter().enumerate() {
        let alias = match oci_tag {
            Some(tag) if !tag.is_empty() => format!("ceph/ceph:{tag}"),
            _ => instance(host, api, name)?["config"]["image.id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        };
        refresh_one(host, api, name, &alias, pauses)?;
        if i + 1 < containers.len() {
            std::thread::sleep(pauses.between);
        }
    }
    Ok(Value::Null)
}

fn instance(host: &Host, api: &Api, name: &str) -> Result<Value> {
    api.get(host, &format!("/1.0/instances/{name}?project={PROJECT}"))
}

/// How an image alias appears in a URL path (`quay.io/ceph/ceph:v20`).
fn alias_path(alias: &str) -> String {
    alias.replace('/', "%2F")
}

/// The fingerprint Incus gives an OCI image: the SHA-256 of its layers' digests, in order,
/// as `skopeo inspect` lists them.
pub fn oci_fingerprint(inspect: &str) -> Result<String> {
    let info: Value = serde_json::from_str(inspect)
        .map_err(|e| Error::internal(format!("skopeo inspect: {e}")))?;
    let layers = info["Layers"]
        .as_array()
        .ok_or_else(|| Error::internal("skopeo inspect listed no layers"))?;
    let mut all = String::new();
    for l in layers {
        all.push_str(l.as_str().unwrap_or_default());
    }
    Ok(crate::sha256_hex(all.as_bytes()))
}

/// The registry's newest image of `alias`, by its fingerprint.
fn remote_fingerprint(host: &Host, alias: &str) -> Result<String> {
    let image = format!("docker://{REGISTRY}/{alias}");
    let out = host.run(
        &[SKOPEO, "--insecure-policy", "inspect", &image],
        std::time::Duration::from_secs(300),
    )?;
    if out.status != 0 {
        if out.stderr.contains("manifest unknown") {
            return Err(Error::internal(format!(
                "OCI image '{REGISTRY}/{alias}' doesn't exist"
            )));
        }
        return Err(Error::internal(format!(
            "skopeo inspect {image}: {}",
            out.stderr.trim()
        )));
    }
    oci_fingerprint(&out.stdout)
}

/// Fetches `alias` from the registry into the project, under `quay.io/<alias>`, unless an
/// image has that name already.
pub fn fetch_image(host: &Host, api: &Api, alias: &str) -> Result<()> {
    let local = format!("{REGISTRY}/{alias}");
    let path = format!(
        "/1.0/images/aliases/{}?project={PROJECT}",
        alias_path(&local)
    );
    if api.get_opt(host, &path)?.is_some() {
        return Ok(());
    }
    api.post(
        host,
        &format!("/1.0/images?project={PROJECT}"),
        &json!({
            "source": {"type": "image", "alias": alias, "server": format!("https://{REGISTRY}"), "protocol": "oci"},
            "aliases": [{"name": local}],
        }),
    )
    .map(drop)
}

/// One container of [`refresh_images`] onto the registry's newest `alias`.
pub fn refresh_one(host: &Host, api: &Api, name: &str, alias: &str, pauses: Pauses) -> Result<()> {
    let local = format!("{REGISTRY}/{alias}");
    let images = api.get(host, &format!("/1.0/images?recursion=1&project={PROJECT}"))?;
    let existing = images
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| {
            i["aliases"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a["name"] == local.as_str()))
        })
        .and_then(|i| i["fingerprint"].as_str())
        .unwrap_or_default()
        .to_string();
    let remote = remote_fingerprint(host, alias)?;
    let needed = existing != remote
        || instance(host, api, name)?["config"]["image.id"].as_str() != Some(alias);
    if !needed {
        return Ok(());
    }
    if existing != remote {
        if !existing.is_empty() {
            api.call(
                host,
                "DELETE",
                &format!("/1.0/images/{existing}?project={PROJECT}"),
                None,
            )?;
        }
        fetch_image(host, api, alias)?;
    }
    set_state(host, api, name, "stop", false)?;
    api.post(
        host,
        &format!("/1.0/instances/{name}/rebuild?project={PROJECT}"),
        &json!({"source": {"type": "image", "alias": local}}),
    )?;
    let mut current = instance(host, api, name)?;
    current["config"]["image.id"] = json!(alias);
    api.put(
        host,
        &format!("/1.0/instances/{name}?project={PROJECT}"),
        &current,
    )?;
    set_state(host, api, name, "start", false)?;
    std::thread::sleep(pauses.started);
    if !name.starts_with(OSD_PREFIX) {
        for unit in CONTROL_UNITS {
            let service = if unit == "ceph-rbd-mirror" {
                format!("{unit}@rbd-mirror.{name}.service")
            } else {
                format!("{unit}@{name}.service")
            };
            exec(host, api, name, &["systemctl", "enable", "--now", &service])?;
        }
    }
    host.info(&format!("Refreshed the Ceph container {name} onto {local}"));
    Ok(())
}

/// Runs `command` in container `name` (its output kept in the container's exec records
/// when `record`) and waits for it; returns its exit status.
fn exec_status(host: &Host, api: &Api, name: &str, command: &[&str], record: bool) -> Result<i64> {
    let done = api.post(
        host,
        &format!("/1.0/instances/{name}/exec?project={PROJECT}"),
        &json!({"command": command, "wait-for-websocket": false, "interactive": false, "record-output": record}),
    )?;
    Ok(done["return"].as_i64().unwrap_or(0))
}

/// Runs `command` in container `name` and waits for it. Its exit status is logged when
/// not 0, not an error (upstream does not look at it).
pub fn exec(host: &Host, api: &Api, name: &str, command: &[&str]) -> Result<()> {
    let status = exec_status(host, api, name, command, false)?;
    if status != 0 {
        host.warn(&format!(
            "`{}` in the Ceph container {name} exited with status {status}",
            command.join(" ")
        ));
    }
    Ok(())
}

/// The image a new Ceph container starts from (`quay.io/` + this).
pub const IMAGE: &str = "ceph/ceph:v20";
/// Where the script run in a new container is put.
pub const SETUP_SCRIPT: &str = "/root/incus-osd-ceph-setup.sh";
/// The OSD setup script; `@DEVICE_CLASS@` is replaced by the drive's class.
pub const OSD_SCRIPT: &str = include_str!("osd-setup.sh");
/// The cluster's files an OSD needs, as the first monitor has them.
pub const CLUSTER_FILES: [(&str, &str); 2] = [
    ("/etc/ceph/ceph.conf", "0644"),
    ("/etc/ceph/ceph.client.admin.keyring", "0600"),
];

/// The Ceph device class of a drive on `bus`.
pub fn device_class(bus: &str) -> &'static str {
    match bus {
        "nvme" => "nvme",
        "scsi" => "ssd",
        _ => "hdd",
    }
}

/// `add-drive` (`device_id`): an OSD on this server over drive `device_id` (one of
/// `/os/1.0/system/storage`'s drives), encrypted first when it is not: a container
/// `ceph-osd-<server>` from the Ceph image, with a data volume, the encrypted device passed
/// in, and the cluster's files from the first monitor; then the OSD set up inside it.
/// Refused when this server has an OSD already. A failure after the data volume was made
/// deletes what was made.
pub fn add_drive(host: &Host, api: &Api, device_id: &str, pauses: Pauses) -> Result<Value> {
    let server = server_name(host, api)?;
    if osd_hosts(host, api)?.contains(&server) {
        return Err(Error::internal(format!(
            "a Ceph OSD instance already exists on Incus server {server}"
        )));
    }
    let (device, class) = ensure_encrypted(host, api, device_id)?;
    let name = format!("{OSD_PREFIX}{server}");
    let project = api.get(host, &format!("/1.0/projects/{PROJECT}"))?;
    deploy(
        host,
        api,
        &project,
        &server,
        &name,
        Role::Osd {
            device: &device,
            class,
        },
        pauses,
    )?;
    host.info(&format!(
        "Added the Ceph OSD container {name} over {device}"
    ));
    Ok(Value::Null)
}

/// What a new Ceph container becomes.
#[derive(Debug, Clone, Copy)]
enum Role<'a> {
    /// The cluster's first monitor: it makes the cluster's configuration and keys.
    FirstMonitor,
    /// Another monitor, joining the first one's cluster.
    Monitor,
    /// An OSD over `device`.
    Osd { device: &'a str, class: &'a str },
}

/// Makes Ceph container `name` on Incus server `server` (its data volume, the container
/// from the Ceph image, started) and sets it up for `role` with a script run inside it;
/// the cluster's network and fsid are `project`'s (the `internal` project as Incus has it).
/// A failure after the volume was made deletes what was made.
fn deploy(
    host: &Host,
    api: &Api,
    project: &Value,
    server: &str,
    name: &str,
    role: Role,
    pauses: Pauses,
) -> Result<()> {
    let network = project["config"]["user.ceph.network"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if network.is_empty() {
        return Err(Error::internal(format!(
            "the Ceph cluster is not initialized: project {PROJECT} has no user.ceph.network"
        )));
    }
    let target = format!("project={PROJECT}&target={server}");
    let volume = format!("{name}-data");
    api.post(
        host,
        &format!("/1.0/storage-pools/local/volumes/custom?{target}"),
        &json!({"name": volume, "type": "custom"}),
    )?;
    let mut created = false;
    let made = (|| {
        fetch_image(host, api, IMAGE)?;
        let mut devices = json!({
            "eth0": {"type": "nic", "network": network},
            "etc": {"type": "disk", "pool": "local", "source": format!("{volume}/etc"), "path": "/etc/ceph/", "dependent": "true"},
            "var": {"type": "disk", "pool": "local", "source": format!("{volume}/var"), "path": "/var/lib/ceph/", "dependent": "true"},
        });
        if let Role::Osd { device, .. } = role {
            devices["ceph-1"] = json!({"type": "unix-block", "source": device, "path": "/dev/ceph-1", "uid": "167", "gid": "167"});
        }
        api.post(
            host,
            &format!("/1.0/instances?{target}"),
            &json!({
                "name": name,
                "type": "container",
                "start": true,
                "config": {"oci.entrypoint": "/sbin/init", "cluster.evacuate": "stop"},
                "devices": devices,
                "source": {"type": "image", "alias": format!("{REGISTRY}/{IMAGE}")},
            }),
        )?;
        created = true;
        std::thread::sleep(pauses.started);
        // The cluster's files from the first monitor (which makes them), as (from, to, mode).
        let mut files: Vec<(&str, &str, &str)> = match role {
            Role::FirstMonitor => vec![],
            _ => CLUSTER_FILES.iter().map(|&(p, m)| (p, p, m)).collect(),
        };
        if let Role::Monitor = role {
            files.push((MON_KEYRING, "/tmp/ceph.mon.keyring", "0600"));
        }
        for (from, to, mode) in files {
            let data = read_monitor_file(host, api, from)?;
            push_file(host, api, name, to, mode, &data)?;
        }
        let script = match role {
            Role::FirstMonitor => {
                let net = api.get(host, &format!("/1.0/networks/{network}"))?;
                let subnet = net["config"]["ipv6.address"].as_str().unwrap_or_default();
                let addr = instance_ipv6(host, api, name)?;
                let fsid = project["config"]["user.ceph.fsid"]
                    .as_str()
                    .unwrap_or_default();
                mon_script(name, true, fsid, &addr, subnet)
            }
            Role::Monitor => mon_script(name, false, "", "", ""),
            Role::Osd { class, .. } => OSD_SCRIPT.replace("@DEVICE_CLASS@", class),
        };
        push_file(host, api, name, SETUP_SCRIPT, "0700", script.as_bytes())?;
        run_setup(host, api, name)
    })();
    if let Err(e) = made {
        undo_container(host, api, name, created, &volume, &target);
        return Err(e);
    }
    Ok(())
}

/// A file of the first monitor's container.
fn read_monitor_file(host: &Host, api: &Api, path: &str) -> Result<Vec<u8>> {
    api.get_file(
        host,
        &format!(
            "/1.0/instances/{}/files?path={path}&project={PROJECT}",
            CONTROL[0]
        ),
    )
}

/// Deletes what a failed deployment made (each step logged when it fails in turn).
fn undo_container(host: &Host, api: &Api, name: &str, created: bool, volume: &str, target: &str) {
    if created {
        let deleted =
            set_state(host, api, name, "stop", true).and_then(|_| delete_instance(host, api, name));
        if let Err(e) = deleted {
            host.warn(&format!(
                "Cannot delete {name} after the failure: {}",
                e.message
            ));
            return;
        }
    }
    if let Err(e) = api.call(
        host,
        "DELETE",
        &format!("/1.0/storage-pools/local/volumes/custom/{volume}?{target}"),
        None,
    ) {
        host.warn(&format!(
            "Cannot delete the volume {volume} after the failure: {}",
            e.message
        ));
    }
}

/// The drive's device as encrypted (`encrypted_id`) and its Ceph class, encrypting it
/// first through the OS API (Incus's `/os` proxy to this daemon) when it is not.
fn ensure_encrypted(host: &Host, api: &Api, id: &str) -> Result<(String, &'static str)> {
    let find = |storage: &Value| -> Option<Value> {
        storage["state"]["drives"]
            .as_array()?
            .iter()
            .find(|d| d["id"] == id)
            .cloned()
    };
    let drive = find(&api.get(host, "/os/1.0/system/storage")?)
        .ok_or_else(|| Error::internal(format!("specified raw device '{id}' doesn't exist")))?;
    let class = device_class(drive["bus"].as_str().unwrap_or_default());
    let encrypted = |d: &Value| {
        d["encrypted"].as_bool() == Some(true)
            && d["encrypted_id"].as_str().is_some_and(|e| !e.is_empty())
    };
    if encrypted(&drive) {
        return Ok((
            drive["encrypted_id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            class,
        ));
    }
    api.post(
        host,
        "/os/1.0/system/storage/:encrypt-drive",
        &json!({"id": id}),
    )?;
    match find(&api.get(host, "/os/1.0/system/storage")?) {
        Some(d) if encrypted(&d) => Ok((
            d["encrypted_id"].as_str().unwrap_or_default().to_string(),
            class,
        )),
        _ => Err(Error::internal(format!(
            "the drive '{id}' is not listed as encrypted after its encryption"
        ))),
    }
}

/// Writes `data` to `path` in container `name` (root's, `mode`).
fn push_file(
    host: &Host,
    api: &Api,
    name: &str,
    path: &str,
    mode: &str,
    data: &[u8],
) -> Result<()> {
    api.post_file(
        host,
        &format!("/1.0/instances/{name}/files?path={path}&project={PROJECT}"),
        &[
            ("X-Incus-type", "file"),
            ("X-Incus-uid", "0"),
            ("X-Incus-gid", "0"),
            ("X-Incus-mode", mode),
            ("X-Incus-write", "overwrite"),
        ],
        data,
    )
}

/// Runs the setup script in container `name`; its exit status must be 0.
fn run_setup(host: &Host, api: &Api, name: &str) -> Result<()> {
    match exec_status(host, api, name, &["sh", "-eux", SETUP_SCRIPT], true)? {
        0 => Ok(()),
        status => Err(Error::internal(format!(
            "the Ceph setup script failed in {name} with status {status} (its output is in \
             the container's exec records)"
        ))),
    }
}

/// The monitors' keyring, in the first monitor's data.
pub const MON_KEYRING: &str = "/var/lib/ceph/mon/ceph-ceph-central01/keyring";
/// The control servers' setup script; see [`mon_script`].
pub const MON_SCRIPT: &str = include_str!("mon-setup.sh");
/// The Incus network the cluster uses unless told otherwise.
pub const DEFAULT_NETWORK: &str = "meshbr0";

/// The control server script for container `name`: the first one (`first`) with the
/// cluster's `fsid`, its own IPv6 address `addr` and the network's `subnet`.
pub fn mon_script(name: &str, first: bool, fsid: &str, addr: &str, subnet: &str) -> String {
    MON_SCRIPT
        .replace("@NAME@", name)
        .replace("@FIRST@", if first { "1" } else { "0" })
        .replace("@FSID@", fsid)
        .replace("@ADDR@", addr)
        .replace("@SUBNET@", subnet)
}

/// Container `name`'s first global IPv6 address (not link-local, not loopback).
fn instance_ipv6(host: &Host, api: &Api, name: &str) -> Result<String> {
    let state = api.get(
        host,
        &format!("/1.0/instances/{name}/state?project={PROJECT}"),
    )?;
    let found = state["network"].as_object().and_then(|nets| {
        nets.values().find_map(|n| {
            n["addresses"].as_array()?.iter().find_map(|a| {
                let addr = a["address"].as_str()?;
                (a["family"] == "inet6" && !addr.starts_with("fe80::") && addr != "::1")
                    .then(|| addr.to_string())
            })
        })
    });
    found.ok_or_else(|| Error::internal(format!("unable to determine IPv6 address for {name}")))
}

/// The `key` of `[client.admin]` in a Ceph keyring.
pub fn admin_key(keyring: &str) -> Option<String> {
    let mut in_admin = false;
    for line in keyring.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_admin = line == "[client.admin]";
        } else if in_admin {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == "key" {
                    return Some(v.trim().to_string());
                }
            }
        }
    }
    None
}

/// `initialize-ceph-cluster` (the `incus` application's action; `control_servers`, three
/// comma-separated Incus servers, else the first three members; `network`, default
/// [`DEFAULT_NETWORK`]): after upstream's checks (the network and project exist, Incus is a
/// cluster of at least three online members, none with a `ceph` cluster configured, no
/// control container yet), installs `incus-ceph` on every member, records the cluster's
/// fsid and network in the project, makes the three control containers, then configures
/// every member's `ceph` service with the cluster (fsid, monitors, admin key). A failure
/// after the project was written undoes what was done: the services told of the cluster
/// get their config back, the containers made are deleted, the project is restored.
pub fn initialize_cluster(
    host: &Host,
    api: &Api,
    config: &BTreeMap<String, String>,
    pauses: Pauses,
) -> Result<Value> {
    let network = match config.get("network").map(String::as_str) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => DEFAULT_NETWORK.to_string(),
    };
    let fail = |text: String| Err(Error::internal(text));
    // Incus answering at all first (upstream's client connects with this call).
    let server = api.get(host, "/1.0")?;
    if api.get(host, &format!("/1.0/networks/{network}")).is_err() {
        return fail(format!("the Incus network '{network}' doesn't exist"));
    }
    let Ok(project) = api.get(host, &format!("/1.0/projects/{PROJECT}")) else {
        return fail(format!("the Incus project '{PROJECT}' doesn't exist"));
    };
    if server["environment"]["server_clustered"] != true {
        return fail("can only deploy Ceph in an Incus cluster".into());
    }
    let members = api.get(host, "/1.0/cluster/members?recursion=1")?;
    let members: Vec<(String, String)> = members
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["server_name"].as_str().unwrap_or_default().to_string(),
                m["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    if members.len() < 3 {
        return fail("the Incus cluster must consist of at least three servers".into());
    }
    for (member, status) in &members {
        if status != "Online" {
            return fail(format!(
                "Incus server '{member}' state isn't Online: {status}"
            ));
        }
        // A member whose OS API cannot be asked is not checked (upstream's rule).
        if let Ok(service) = api.get(host, &format!("/os/1.0/services/ceph?target={member}")) {
            if !service["config"]["clusters"]["ceph"].is_null() {
                return fail(format!(
                    "the Ceph service is already configured for cluster 'ceph' on Incus Server '{member}'"
                ));
            }
        }
    }
    let control: Vec<String> = match config.get("control_servers").map(String::as_str) {
        None | Some("") => members.iter().take(3).map(|(m, _)| m.clone()).collect(),
        Some(list) => list.split(',').map(str::to_string).collect(),
    };
    if control.len() != 3 {
        return fail(
            "exactly zero or three Incus servers must be defined for hosting the Ceph data plane"
                .into(),
        );
    }
    for c in &control {
        if !members.iter().any(|(m, _)| m == c) {
            return fail(format!(
                "specified Incus server '{c}' isn't a member of the cluster"
            ));
        }
    }
    for c in CONTROL {
        if api
            .get_opt(host, &format!("/1.0/instances/{c}?project={PROJECT}"))?
            .is_some()
        {
            return fail(format!(
                "a Ceph container '{c}' currently exists; refusing to attempt to initialize a new Ceph cluster"
            ));
        }
    }
    for (member, _) in &members {
        let installed = api.post(
            host,
            &format!("/os/1.0/applications?target={member}"),
            &json!({"name": "incus-ceph"}),
        );
        match installed {
            Ok(_) => {}
            Err(e) if e.message.ends_with(": already exists") => {}
            Err(e) => return Err(e),
        }
    }
    let mut updated = project.clone();
    updated["config"]["user.ceph.fsid"] = json!(incus_osd_provider_common::random_uuid()?);
    updated["config"]["user.ceph.network"] = json!(network);
    let put_project = |p: &Value| {
        api.put(
            host,
            &format!("/1.0/projects/{PROJECT}"),
            &json!({"config": p["config"], "description": p["description"]}),
        )
    };
    put_project(&updated)?;
    // What was made, for the undo: the control containers (name, server), then each
    // member's `ceph` service config as it was before (member, config).
    let mut made: Vec<(&str, &str)> = vec![];
    let mut configured: Vec<(&str, Value)> = vec![];
    let fsid = updated["config"]["user.ceph.fsid"].clone();
    let built = (|| {
        for (i, name) in CONTROL.iter().enumerate() {
            let role = if i == 0 {
                Role::FirstMonitor
            } else {
                Role::Monitor
            };
            deploy(host, api, &updated, &control[i], name, role, pauses)?;
            made.push((name, &control[i]));
        }
        let keyring = read_monitor_file(host, api, CLUSTER_FILES[1].0)?;
        let key = admin_key(&String::from_utf8_lossy(&keyring))
            .ok_or_else(|| Error::internal("the admin keyring has no client.admin key"))?;
        let monitors = CONTROL
            .iter()
            .map(|c| instance_ipv6(host, api, c))
            .collect::<Result<Vec<_>>>()?;
        for (member, _) in &members {
            let path = format!("/os/1.0/services/ceph?target={member}");
            let mut service = api.get(host, &path)?;
            let before = service["config"].take();
            let mut cfg = if before.is_object() {
                before.clone()
            } else {
                json!({})
            };
            cfg["enabled"] = json!(true);
            if !cfg["clusters"].is_object() {
                cfg["clusters"] = json!({});
            }
            cfg["clusters"]["ceph"] = json!({
                "fsid": fsid,
                "monitors": monitors,
                "keyrings": {"admin": {"key": key}},
                "client_config": {},
            });
            api.put(host, &path, &json!({"config": cfg}))?;
            configured.push((member, before));
        }
        Ok(())
    })();
    if let Err(e) = built {
        // In reverse: the services told of the cluster, the containers, the project.
        for (member, before) in configured.iter().rev() {
            let path = format!("/os/1.0/services/ceph?target={member}");
            if let Err(u) = api.put(host, &path, &json!({"config": before})) {
                host.warn(&format!(
                    "Cannot restore the ceph service of {member}: {}",
                    u.message
                ));
            }
        }
        for (done, server) in made.iter().rev() {
            let target = format!("project={PROJECT}&target={server}");
            undo_container(host, api, done, true, &format!("{done}-data"), &target);
        }
        if let Err(u) = put_project(&project) {
            host.warn(&format!(
                "Cannot restore the project {PROJECT}: {}",
                u.message
            ));
        }
        return Err(e);
    }
    host.info(&format!(
        "Initialized the Ceph cluster {} on {}",
        fsid.as_str().unwrap_or_default(),
        control.join(", ")
    ));
    Ok(Value::Null)
}
