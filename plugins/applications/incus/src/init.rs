//! Incus' first initialization, through its own API on [`crate::SOCKET`]: the `incus`
//! seed's preseed applied as Incus' own client applies one, then (with `apply_defaults`,
//! the default when there is no seed) the defaults: a ZFS storage pool on `local/incus`,
//! the `incusbr0` bridge, and the API listening on `:8443`.
//!
//! The preseed is applied in Incus' order: server config, storage pools, networks of the
//! default project, projects, networks of other projects, storage volumes, profiles,
//! certificates, cluster, cluster groups. An existing object is updated (description and
//! config overridden key by key, profile devices merged), a missing one created.

use std::time::Duration;

use plugin_api::{Error, Host, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use incus_osd_application_common::{zfs, Api, COMMAND_TIMEOUT};

/// How long a call may stall: creating a storage pool or a cluster takes a while.
pub const API_TIMEOUT: Duration = Duration::from_secs(120);
/// The address Incus listens on unless told otherwise.
pub const DEFAULT_ADDRESS: &str = ":8443";
/// The pool, its dataset, the default bridge.
pub const POOL: &str = "local";
pub const POOL_DATASET: &str = "local/incus";
pub const BRIDGE: &str = "incusbr0";
/// The custom volumes the defaults create, each becoming `storage.<name>_volume`.
pub const VOLUMES: [&str; 3] = ["backups", "images", "logs"];

/// The `incus` seed (upstream's field names; unknown fields refused).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Seed {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    pub apply_defaults: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preseed: Option<Preseed>,
}

/// Incus' own preseed format (`incus admin init --preseed`), each object as Incus' API
/// takes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Preseed {
    pub config: Map<String, Value>,
    pub networks: Vec<Value>,
    pub storage_pools: Vec<Value>,
    pub storage_volumes: Vec<Value>,
    pub profiles: Vec<Value>,
    pub projects: Vec<Value>,
    pub certificates: Vec<Value>,
    pub cluster_groups: Vec<Value>,
    pub cluster: Option<Value>,
}

/// The client for Incus' API.
pub fn api() -> Api {
    Api::new("Incus", crate::SOCKET, API_TIMEOUT)
}

/// First initialization. `seed` is the `incus` seed (`None`: none was given, the defaults
/// apply); `instance_bridges` names the host's interfaces with the `instances` role, each
/// made an Incus `physical` network when it is a bridge.
pub fn initialize(host: &Host, seed: Option<&Seed>, instance_bridges: &[String]) -> Result<()> {
    let defaults = Seed {
        apply_defaults: true,
        ..Seed::default()
    };
    let seed = seed.unwrap_or(&defaults);
    let api = api();
    api.wait_ready(host)?;
    if let Some(preseed) = &seed.preseed {
        apply_preseed(host, &api, preseed)?;
    }
    if seed.apply_defaults {
        // The defaults set the address already.
        return apply_defaults(host, &api, instance_bridges);
    }
    ensure_listen_address(host, &api)
}

fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Go's `fmt.Sprintf("%v")` of a config value: strings as they are, others as JSON.
fn config_string(v: &Value) -> Value {
    match v {
        Value::String(_) => v.clone(),
        Value::Null => Value::String(String::new()),
        other => Value::String(other.to_string()),
    }
}

/// `current`'s writable part with `target`'s description (when set) and config keys.
fn overridden(current: &Value, target: &Value, extra: &[&str]) -> Value {
    let mut out = Map::new();
    let desc = text(target, "description");
    out.insert(
        "description".into(),
        Value::String(if desc.is_empty() {
            text(current, "description")
        } else {
            desc
        }),
    );
    let mut config = current
        .get("config")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(over) = target.get("config").and_then(Value::as_object) {
        for (k, v) in over {
            config.insert(k.clone(), config_string(v));
        }
    }
    out.insert("config".into(), Value::Object(config));
    for key in extra {
        if let Some(v) = current.get(*key) {
            out.insert(key.to_string(), v.clone());
        }
    }
    Value::Object(out)
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|u| u.rsplit('/').next().unwrap_or(u).to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn project_of(v: &Value) -> String {
    let p = text(v, "project");
    if p.is_empty() {
        "default".into()
    } else {
        p
    }
}

/// `v` without the keys only the preseed knows (`project`, `pool`).
fn without(v: &Value, keys: &[&str]) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        for k in keys {
            o.remove(*k);
        }
    }
    v
}

fn context(e: Error, what: String) -> Error {
    Error::new(e.status, format!("{what}: {}", e.message))
}

/// Applies a preseed as Incus' client does.
pub fn apply_preseed(host: &Host, api: &Api, p: &Preseed) -> Result<()> {
    if !p.config.is_empty() {
        let server = api.get(host, "/1.0")?;
        let target = json!({"config": p.config});
        let body = overridden(&server, &target, &[]);
        api.put(host, "/1.0", &json!({"config": body["config"]}))
            .map_err(|e| context(e, "Failed to update server configuration".into()))?;
    }
    if !p.storage_pools.is_empty() {
        let existing = names(&api.get(host, "/1.0/storage-pools")?);
        for pool in &p.storage_pools {
            let name = text(pool, "name");
            if !existing.contains(&name) {
                api.post(host, "/1.0/storage-pools", pool)
                    .map_err(|e| context(e, format!("Failed to create storage pool {name:?}")))?;
                continue;
            }
            let path = format!("/1.0/storage-pools/{name}");
            let current = api.get(host, &path)?;
            let (have, want) = (text(&current, "driver"), text(pool, "driver"));
            if have != want {
                return Err(Error::internal(format!(
                    "Storage pool {name:?} is of type {have:?} instead of {want:?}"
                )));
            }
            api.put(host, &path, &overridden(&current, pool, &[]))
                .map_err(|e| context(e, format!("Failed to update storage pool {name:?}")))?;
        }
    }
    for net in p.networks.iter().filter(|n| project_of(n) == "default") {
        apply_network(host, api, net)?;
    }
    if !p.projects.is_empty() {
        let existing = names(&api.get(host, "/1.0/projects")?);
        for project in &p.projects {
            let name = text(project, "name");
            if !existing.contains(&name) {
                api.post(host, "/1.0/projects", project).map_err(|e| {
                    context(e, format!("Failed to create local member project {name:?}"))
                })?;
                continue;
            }
            let path = format!("/1.0/projects/{name}");
            let current = api.get(host, &path)?;
            api.put(host, &path, &overridden(&current, project, &[]))
                .map_err(|e| {
                    context(e, format!("Failed to update local member project {name:?}"))
                })?;
        }
    }
    for net in p.networks.iter().filter(|n| project_of(n) != "default") {
        apply_network(host, api, net)?;
    }
    for vol in &p.storage_volumes {
        apply_volume(host, api, vol)?;
    }
    for profile in &p.profiles {
        apply_profile(host, api, profile)?;
    }
    for cert in &p.certificates {
        let name = text(cert, "name");
        api.post(host, "/1.0/certificates", cert)
            .map_err(|e| context(e, format!("Failed to create certificate {name:?}")))?;
    }
    if let Some(cluster) = &p.cluster {
        if cluster.get("enabled").and_then(Value::as_bool) == Some(true) {
            let current = api.get(host, "/1.0/cluster")?;
            if current.get("enabled").and_then(Value::as_bool) != Some(true) {
                api.put(host, "/1.0/cluster", cluster)
                    .map_err(|e| context(e, "Failed to configure cluster".into()))?;
            }
        }
    }
    for group in &p.cluster_groups {
        let name = text(group, "name");
        let path = format!("/1.0/cluster/groups/{name}");
        match api.get_opt(host, &path)? {
            Some(existing) => {
                let mut body = without(group, &["name"]);
                if body.get("members").is_none_or(Value::is_null) {
                    body["members"] = existing.get("members").cloned().unwrap_or(json!([]));
                }
                api.put(host, &path, &body)
                    .map_err(|e| context(e, "Failed to update cluster group".into()))?;
            }
            None => {
                api.post(host, "/1.0/cluster/groups", group)
                    .map_err(|e| context(e, "Failed to create cluster group".into()))?;
            }
        }
    }
    Ok(())
}

fn apply_network(host: &Host, api: &Api, net: &Value) -> Result<()> {
    let name = text(net, "name");
    let project = project_of(net);
    let path = format!("/1.0/networks/{name}?project={project}");
    match api.get_opt(host, &path)? {
        None => api
            .post(
                host,
                &format!("/1.0/networks?project={project}"),
                &without(net, &["project"]),
            )
            .map(drop)
            .map_err(|e| {
                context(
                    e,
                    format!(
                        "Failed to create local member network {name:?} in project {project:?}"
                    ),
                )
            }),
        Some(current) => api
            .put(host, &path, &overridden(&current, net, &[]))
            .map(drop)
            .map_err(|e| {
                context(
                    e,
                    format!(
                        "Failed to update local member network {name:?} in project {project:?}"
                    ),
                )
            }),
    }
}

fn apply_volume(host: &Host, api: &Api, vol: &Value) -> Result<()> {
    let name = text(vol, "name");
    let pool = text(vol, "pool");
    let project = project_of(vol);
    let kind = match text(vol, "type") {
        t if t.is_empty() => "custom".to_string(),
        t => t,
    };
    let base = format!("/1.0/storage-pools/{pool}/volumes/{kind}");
    match api.get_opt(host, &format!("{base}/{name}?project={project}"))? {
        None => {
            let mut body = without(vol, &["project", "pool"]);
            body["type"] = Value::String(kind.clone());
            api.post(host, &format!("{base}?project={project}"), &body)
                .map(drop)
                .map_err(|e| {
                    context(
                        e,
                        format!("Failed to create storage volume {name:?} in project {project:?} on pool {pool:?}"),
                    )
                })
        }
        Some(current) => {
            let have = text(&current, "type");
            if have != kind {
                return Err(Error::internal(format!(
                    "Storage volume {name:?} in project {project:?} is of type {have:?} instead of {kind:?}"
                )));
            }
            api.put(
                host,
                &format!("{base}/{name}?project={project}"),
                &overridden(&current, vol, &[]),
            )
            .map(drop)
            .map_err(|e| {
                context(
                    e,
                    format!("Failed to update storage volume {name:?} in project {project:?}"),
                )
            })
        }
    }
}

fn apply_profile(host: &Host, api: &Api, profile: &Value) -> Result<()> {
    let name = text(profile, "name");
    let project = project_of(profile);
    let path = format!("/1.0/profiles/{name}?project={project}");
    match api.get_opt(host, &path)? {
        None => api
            .post(
                host,
                &format!("/1.0/profiles?project={project}"),
                &without(profile, &["project"]),
            )
            .map(drop)
            .map_err(|e| {
                context(
                    e,
                    format!("Failed to create profile {name:?} in project {project:?}"),
                )
            }),
        Some(current) => {
            let mut body = overridden(&current, profile, &["devices"]);
            let mut devices = body
                .get("devices")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            if let Some(over) = profile.get("devices").and_then(Value::as_object) {
                for (dev, conf) in over {
                    match devices.get_mut(dev).and_then(Value::as_object_mut) {
                        Some(existing) => {
                            for (k, v) in conf.as_object().into_iter().flatten() {
                                existing.insert(k.clone(), config_string(v));
                            }
                        }
                        None => {
                            devices.insert(dev.clone(), conf.clone());
                        }
                    }
                }
            }
            body["devices"] = Value::Object(devices);
            api.put(host, &path, &body).map(drop).map_err(|e| {
                context(
                    e,
                    format!("Failed to update profile {name:?} in project {project:?}"),
                )
            })
        }
    }
}

/// The defaults: on a server without storage pools, where the zpool `local` exists and
/// `local/incus` does not, a ZFS pool `local` on `local/incus` with the `backups`,
/// `images` and `logs` volumes used for the server's artifacts and the default profile's
/// root disk on it; on a server without managed networks, the `incusbr0` bridge as the
/// default profile's `eth0` and every instance bridge as a `physical` network; the API
/// on `:8443` unless an address is set.
pub fn apply_defaults(host: &Host, api: &Api, instance_bridges: &[String]) -> Result<()> {
    let server = api.get(host, "/1.0")?;
    let mut config = server
        .get("config")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let profile = api.get(host, "/1.0/profiles/default")?;
    let mut devices = profile
        .get("devices")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let pools = names(&api.get(host, "/1.0/storage-pools")?);
    let networks = api.get(host, "/1.0/networks?recursion=1")?;
    let managed = networks
        .as_array()
        .map(|a| {
            a.iter()
                .any(|n| n.get("managed").and_then(Value::as_bool) == Some(true))
        })
        .unwrap_or(false);

    if pools.is_empty()
        && zfs::pool_exists(host, zfs::POOL)?
        && !zfs::dataset_exists(host, POOL_DATASET)?
    {
        api.post(
            host,
            "/1.0/storage-pools",
            &json!({
                "name": POOL,
                "driver": "zfs",
                "description": "Local storage pool (on system drive)",
                "config": {"source": POOL_DATASET},
            }),
        )?;
        host.run_ok(
            &["zfs", "set", "incusos:use=incus", POOL_DATASET],
            COMMAND_TIMEOUT,
        )?;
        for vol in VOLUMES {
            api.post(
                host,
                &format!("/1.0/storage-pools/{POOL}/volumes/custom"),
                &json!({
                    "name": vol,
                    "type": "custom",
                    "content_type": "filesystem",
                    "description": format!("Volume holding system {vol}"),
                }),
            )?;
            config.insert(
                format!("storage.{vol}_volume"),
                Value::String(format!("{POOL}/{vol}")),
            );
        }
        devices.insert(
            "root".into(),
            json!({"type": "disk", "path": "/", "pool": POOL}),
        );
    }

    if !managed {
        api.post(
            host,
            "/1.0/networks",
            &json!({"name": BRIDGE, "description": "Local network bridge (NAT)", "config": {}}),
        )?;
        devices.insert(
            "eth0".into(),
            json!({"type": "nic", "network": BRIDGE, "name": "eth0"}),
        );
        for bridge in instance_bridges {
            if !host.exists(&format!("/sys/class/net/{bridge}/bridge"))? {
                continue;
            }
            api.post(
                host,
                "/1.0/networks",
                &json!({"name": bridge, "type": "physical", "config": {"parent": bridge}}),
            )?;
        }
    }

    config
        .entry("core.https_address")
        .or_insert_with(|| Value::String(DEFAULT_ADDRESS.into()));
    let mut put = overridden(&profile, &json!({}), &[]);
    put["devices"] = Value::Object(devices);
    api.put(host, "/1.0/profiles/default", &put)?;
    api.put(host, "/1.0", &json!({"config": config}))?;
    Ok(())
}

/// Sets `core.https_address` to [`DEFAULT_ADDRESS`] when it is not set.
pub fn ensure_listen_address(host: &Host, api: &Api) -> Result<()> {
    let server = api.get(host, "/1.0")?;
    let mut config = server
        .get("config")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if config.contains_key("core.https_address") {
        return Ok(());
    }
    config.insert(
        "core.https_address".into(),
        Value::String(DEFAULT_ADDRESS.into()),
    );
    api.put(host, "/1.0", &json!({"config": config})).map(drop)
}

/// Trusts a client certificate (PEM) under `name`: the API made to listen first when it
/// does not, then the certificate added as a `client` one.
pub fn add_trusted_certificate(host: &Host, name: &str, certificate: &str) -> Result<()> {
    let api = api();
    ensure_listen_address(host, &api)?;
    api.post(
        host,
        "/1.0/certificates",
        &json!({"name": name, "type": "client", "certificate": certificate}),
    )
    .map(drop)
}

/// The address Incus listens on (`core.https_address`), empty when none.
pub fn listen_address(host: &Host) -> Result<String> {
    let server = api().get(host, "/1.0")?;
    Ok(server
        .pointer("/config/core.https_address")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string())
}

/// The client certificates (PEM) a preseed trusts (`certificates` of type `client`): what
/// the host adds to the fallback listener's trusted certificates at first initialization.
pub fn seeded_client_certificates(seed: Option<&Seed>) -> Vec<String> {
    seed.and_then(|s| s.preseed.as_ref())
        .map(|p| {
            p.certificates
                .iter()
                .filter(|c| text(c, "type") == "client")
                .map(|c| text(c, "certificate"))
                .filter(|c| !c.is_empty())
                .collect()
        })
        .unwrap_or_default()
}
