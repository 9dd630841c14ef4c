//! Pools as ZFS reports them: `zpool status -jp --json-int`, `zfs get -j keystatus` and
//! `zfs list -j --json-int` read into [`Pool`]s. Pure: the commands run elsewhere.
//!
//! The pool's type is read from its top-level vdevs (`mirror-0` alone is raid1, a second
//! mirror makes raid10, `raidzN-0` raidzN, plain disks raid0). Members are named by
//! their stable by-id path (the vdev's name under `/dev/disk/by-id/`; the `local-data`
//! partition label of older installs under `/dev/disk/by-partlabel/`; file vdevs by their
//! path). A member that is not `ONLINE` is listed among the class's degraded devices.
//! Lists are sorted, so positions are stable for the next change.

use serde_json::Value;

use super::model::{Pool, ScrubStatus, Special, Volume};

const BY_ID: &str = "/dev/disk/by-id/";

fn int(v: &Value) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        // Without --json-int (or from an older zfs), numbers come as strings.
        Value::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn children(v: &Value) -> Vec<(&String, &Value)> {
    v.get("vdevs")
        .and_then(Value::as_object)
        .map(|m| m.iter().collect())
        .unwrap_or_default()
}

fn member_path(name: &str, vdev: &Value) -> String {
    if text(vdev, "vdev_type") == "file" {
        return text(vdev, "path").to_string();
    }
    if name == "local-data" {
        return format!("/dev/disk/by-partlabel/{name}");
    }
    format!("{BY_ID}{name}")
}

#[derive(Default)]
struct Members {
    online: Vec<String>,
    degraded: Vec<String>,
}

impl Members {
    fn add(&mut self, name: &str, vdev: &Value) {
        let path = member_path(name, vdev);
        if text(vdev, "state") == "ONLINE" {
            self.online.push(path);
        } else {
            self.degraded.push(path);
        }
    }

    /// A top-level vdev: a disk (or file) itself, or a group whose children are members.
    fn add_vdev(&mut self, name: &str, vdev: &Value) {
        match text(vdev, "vdev_type") {
            "disk" | "file" => self.add(name, vdev),
            _ => {
                for (child, c) in children(vdev) {
                    self.add(child, c);
                }
            }
        }
    }

    fn sorted(mut self) -> (Vec<String>, Vec<String>) {
        self.online.sort();
        self.degraded.sort();
        (self.online, self.degraded)
    }
}

/// The pool type a set of top-level vdev names spells.
fn kind_of(top: &[(&String, &Value)]) -> Result<String, String> {
    let mut mirrors = 0;
    let mut kind = String::new();
    for (name, vdev) in top {
        match text(vdev, "vdev_type") {
            "disk" | "file" => {
                if kind.is_empty() {
                    kind = "zfs-raid0".into();
                }
            }
            "mirror" => mirrors += 1,
            "raidz" => {
                let level = name
                    .strip_prefix("raidz")
                    .and_then(|r| r.split('-').next())
                    .unwrap_or("");
                if !matches!(level, "1" | "2" | "3") {
                    return Err(format!("unexpected vdev '{name}'"));
                }
                kind = format!("zfs-raidz{level}");
            }
            other => return Err(format!("unexpected vdev '{name}' of type '{other}'")),
        }
    }
    Ok(match mirrors {
        0 => kind,
        1 => "zfs-raid1".into(),
        _ => "zfs-raid10".into(),
    })
}

/// Scrub progress as upstream shows it: finished is 100 %, a running scrub what it
/// examined of what it has to (never above 99.99 % until finished).
pub fn scrub_progress(state: &str, examined: i64, to_examine: i64) -> String {
    if state == "FINISHED" {
        return "100.00%".into();
    }
    if to_examine <= 0 {
        return "0.00%".into();
    }
    let p = examined as f64 / to_examine as f64 * 100.0;
    if p > 100.0 {
        return "99.99%".into();
    }
    format!("{p:.2}%")
}

fn unix(t: i64) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::from_timestamp(t, 0).map(|t| t.fixed_offset())
}

fn scrub(pool: &Value) -> Option<ScrubStatus> {
    let scan = pool.get("scan_stats")?;
    let start = int(scan.get("start_time").unwrap_or(&Value::Null));
    if start == 0 {
        return None;
    }
    let state = text(scan, "state");
    let get = |k: &str| int(scan.get(k).unwrap_or(&Value::Null));
    Some(ScrubStatus {
        state: match state {
            "SCANNING" => "IN_PROGRESS",
            "FINISHED" => "FINISHED",
            _ => "UNKNOWN",
        }
        .into(),
        start_time: unix(start),
        end_time: unix(get("end_time")),
        progress: scrub_progress(state, get("examined"), get("to_examine")),
        errors: get("errors"),
    })
}

/// The names of the pools in a `zpool status -j` document.
pub fn pool_names(status: &str) -> Result<Vec<String>, String> {
    let doc: Value =
        serde_json::from_str(status).map_err(|e| format!("cannot read zpool status: {e}"))?;
    let mut names: Vec<String> = doc
        .get("pools")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    Ok(names)
}

/// Pool `name` from a `zpool status -jp --json-int` document: type, members per class,
/// state, sizes, last scrub. Key status, volumes and `managed` are filled in by
/// [`with_keystatus`], [`volumes`] and the caller.
pub fn pool(status: &str, name: &str) -> Result<Pool, String> {
    let doc: Value =
        serde_json::from_str(status).map_err(|e| format!("cannot read zpool status: {e}"))?;
    let p = doc
        .get("pools")
        .and_then(|ps| ps.get(name))
        .ok_or_else(|| format!("zpool '{name}' doesn't exist"))?;
    let root = p
        .get("vdevs")
        .and_then(|v| v.get(name))
        .ok_or_else(|| format!("zpool '{name}' has no root vdev"))?;
    let top = children(root);
    let kind = kind_of(&top).map_err(|e| format!("{e} in zpool '{name}'"))?;
    let mut data = Members::default();
    let (mut alloc, mut total, mut usable) = (0, 0, 0);
    for (vname, vdev) in &top {
        data.add_vdev(vname, vdev);
        alloc += int(vdev.get("alloc_space").unwrap_or(&Value::Null));
        total += int(vdev.get("total_space").unwrap_or(&Value::Null));
        usable += int(vdev.get("def_space").unwrap_or(&Value::Null));
    }
    let class = |key: &str| -> (Vec<(&String, &Value)>, Members) {
        let mut m = Members::default();
        let list: Vec<(&String, &Value)> = p
            .get(key)
            .and_then(Value::as_object)
            .map(|o| o.iter().collect())
            .unwrap_or_default();
        for (vname, vdev) in &list {
            m.add_vdev(vname, vdev);
        }
        (list, m)
    };
    let (_, log) = class("logs");
    let (_, cache) = class("l2cache");
    let (special_top, special) = class("special");
    let (devices, devices_degraded) = data.sorted();
    let (log, log_degraded) = log.sorted();
    let (cache, cache_degraded) = cache.sorted();
    let (special_devices, special_degraded) = special.sorted();
    let special = if special_devices.is_empty() && special_degraded.is_empty() {
        None
    } else {
        Some(Special {
            kind: kind_of(&special_top).map_err(|e| format!("{e} in zpool '{name}'"))?,
            special_small_blocks_size_in_kb: 0,
            devices: special_devices,
        })
    };
    Ok(Pool {
        name: name.to_string(),
        kind,
        devices,
        devices_degraded,
        log,
        log_degraded,
        cache,
        cache_degraded,
        special,
        special_degraded,
        state: text(p, "state").to_string(),
        last_scrub: scrub(p),
        raw_pool_size_in_bytes: total,
        usable_pool_size_in_bytes: usable,
        pool_allocated_space_in_bytes: alloc,
        ..Default::default()
    })
}

/// A property's value from `zfs get -j <prop> <dataset>`.
pub fn property(get: &str, dataset: &str, prop: &str) -> Result<Value, String> {
    let doc: Value = serde_json::from_str(get).map_err(|e| format!("cannot read zfs get: {e}"))?;
    doc.get("datasets")
        .and_then(|d| d.get(dataset))
        .and_then(|d| d.get("properties"))
        .and_then(|p| p.get(prop))
        .and_then(|p| p.get("value"))
        .cloned()
        .ok_or_else(|| format!("no {prop} for {dataset}"))
}

/// The key status shown for a pool: `available`, `unavailable`, or `NONE` for a pool
/// without encryption (zfs says `-`).
pub fn keystatus(get: &str, pool: &str) -> Result<String, String> {
    match property(get, pool, "keystatus")? {
        Value::String(s) if s == "-" => Ok("NONE".into()),
        Value::String(s) => Ok(s),
        other => Err(format!("unexpected keystatus {other}")),
    }
}

/// The pool's own datasets (depth 1) from `zfs list -r -d1 <pool> -o
/// name,quota,used,incusos:use -j --json-int`, sorted by name.
pub fn volumes(list: &str, pool: &str) -> Result<Vec<Volume>, String> {
    let doc: Value =
        serde_json::from_str(list).map_err(|e| format!("cannot read zfs list: {e}"))?;
    let mut out = Vec::new();
    let Some(sets) = doc.get("datasets").and_then(Value::as_object) else {
        return Ok(out);
    };
    for (name, set) in sets {
        let Some(short) = name.strip_prefix(&format!("{pool}/")) else {
            continue;
        };
        let prop = |k: &str| {
            set.get("properties")
                .and_then(|p| p.get(k))
                .and_then(|p| p.get("value"))
                .cloned()
                .unwrap_or(Value::Null)
        };
        out.push(Volume {
            name: short.to_string(),
            usage_in_bytes: int(&prop("used")),
            quota_in_bytes: int(&prop("quota")),
            usage: match prop("incusos:use") {
                Value::String(s) if s != "-" => s,
                _ => String::new(),
            },
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `special_small_blocks` from `zfs get special_small_blocks -H -o value <pool>` (`32K`).
pub fn small_blocks_kb(value: &str) -> Result<i64, String> {
    let v = value.trim();
    let n = v.strip_suffix('K').unwrap_or(v);
    n.parse()
        .map_err(|_| format!("unexpected special_small_blocks value '{v}'"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn disk(name: &str, state: &str) -> (String, Value) {
        (
            name.to_string(),
            json!({"name": name, "vdev_type": "disk", "guid": 1, "path": format!("{BY_ID}{name}-part1"),
                   "state": state, "rep_dev_size": 10, "phys_space": 10,
                   "read_errors": 0, "write_errors": 0, "checksum_errors": 0}),
        )
    }

    fn group(
        name: &str,
        kind: &str,
        members: Vec<(String, Value)>,
        sizes: [i64; 3],
    ) -> (String, Value) {
        let vdevs: serde_json::Map<String, Value> = members.into_iter().collect();
        (
            name.to_string(),
            json!({"name": name, "vdev_type": kind, "state": "ONLINE",
                   "alloc_space": sizes[0], "total_space": sizes[1], "def_space": sizes[2],
                   "vdevs": vdevs}),
        )
    }

    /// A `zpool status -jp --json-int` document in the layout OpenZFS prints and
    /// documents (zpool-status(8), "Display the status output in JSON format").
    fn status(pool: &str, state: &str, top: Vec<(String, Value)>, extra: Value) -> String {
        let vdevs: serde_json::Map<String, Value> = top.into_iter().collect();
        let mut p = json!({
            "name": pool, "state": state, "guid": 3920273586464696295u64, "txg": 16597,
            "spa_version": 5000, "zpl_version": 5, "status": "OK",
            "vdevs": {pool: {"name": pool, "alloc_space": 1, "total_space": 2, "def_space": 3,
                              "read_errors": 0, "write_errors": 0, "checksum_errors": 0,
                              "vdevs": vdevs}},
            "error_count": 0
        });
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        json!({"output_version": {"command": "zpool status", "vers_major": 0, "vers_minor": 1},
               "pools": {pool: p}})
        .to_string()
    }

    #[test]
    fn a_mirror_with_a_failed_member_reads_as_degraded_raid1() {
        let doc = status(
            "tank",
            "DEGRADED",
            vec![group(
                "mirror-0",
                "mirror",
                vec![
                    disk("scsi-disk3", "ONLINE"),
                    disk("scsi-disk1", "UNAVAIL"),
                    disk("scsi-disk2", "ONLINE"),
                ],
                [100, 10200547328, 10200547328],
            )],
            json!({}),
        );
        let p = pool(&doc, "tank").unwrap();
        assert_eq!(p.kind, "zfs-raid1");
        assert_eq!(p.state, "DEGRADED");
        assert_eq!(
            p.devices,
            vec![format!("{BY_ID}scsi-disk2"), format!("{BY_ID}scsi-disk3")]
        );
        assert_eq!(p.devices_degraded, vec![format!("{BY_ID}scsi-disk1")]);
        assert_eq!(p.usable_pool_size_in_bytes, 10200547328);
        assert_eq!(p.pool_allocated_space_in_bytes, 100);
        assert_eq!(p.last_scrub, None);
        // Shown as upstream: empty lists and no scrub are absent.
        let shown = serde_json::to_value(&p).unwrap();
        for absent in ["log", "cache", "special", "last_scrub", "log_degraded"] {
            assert!(shown.get(absent).is_none(), "{absent}: {shown}");
        }
    }

    #[test]
    fn pool_types_come_from_the_top_level_vdevs() {
        let two = |n: &str| {
            vec![
                disk(&format!("{n}a"), "ONLINE"),
                disk(&format!("{n}b"), "ONLINE"),
            ]
        };
        let cases = [
            (vec![disk("a", "ONLINE"), disk("b", "ONLINE")], "zfs-raid0"),
            (
                vec![group("mirror-0", "mirror", two("m0"), [0; 3])],
                "zfs-raid1",
            ),
            (
                vec![
                    group("mirror-0", "mirror", two("m0"), [0; 3]),
                    group("mirror-1", "mirror", two("m1"), [0; 3]),
                ],
                "zfs-raid10",
            ),
            (
                vec![group("raidz1-0", "raidz", two("r"), [0; 3])],
                "zfs-raidz1",
            ),
            (
                vec![group("raidz3-0", "raidz", two("r"), [0; 3])],
                "zfs-raidz3",
            ),
        ];
        for (top, kind) in cases {
            let n = top.len();
            let p = pool(&status("tank", "ONLINE", top, json!({})), "tank").unwrap();
            assert_eq!(p.kind, kind);
            assert!(p.devices.len() >= n);
        }
        let e = pool(
            &status(
                "tank",
                "ONLINE",
                vec![group("draid1:0d:2c:0s-0", "draid", two("d"), [0; 3])],
                json!({}),
            ),
            "tank",
        )
        .unwrap_err();
        assert_eq!(
            e,
            "unexpected vdev 'draid1:0d:2c:0s-0' of type 'draid' in zpool 'tank'"
        );
    }

    #[test]
    fn log_cache_and_special_classes_are_read_with_their_types() {
        let doc = status(
            "tank",
            "ONLINE",
            vec![disk("data", "ONLINE")],
            json!({
                "logs": {"mirror-1": group("mirror-1", "mirror", vec![disk("log1", "ONLINE"), disk("log2", "FAULTED")], [0;3]).1},
                "l2cache": {"cache1": disk("cache1", "ONLINE").1},
                "special": {"mirror-2": group("mirror-2", "mirror", vec![disk("sp1", "ONLINE"), disk("sp2", "ONLINE")], [0;3]).1},
                "scan_stats": {"function": "SCRUB", "state": "FINISHED", "start_time": 1700000000,
                               "end_time": 1700000100, "to_examine": 4276224, "examined": 4268032,
                               "skipped": 0, "processed": 0, "errors": 0}
            }),
        );
        let p = pool(&doc, "tank").unwrap();
        assert_eq!(p.kind, "zfs-raid0");
        assert_eq!(p.log, vec![format!("{BY_ID}log1")]);
        assert_eq!(p.log_degraded, vec![format!("{BY_ID}log2")]);
        assert_eq!(p.cache, vec![format!("{BY_ID}cache1")]);
        let s = p.special.clone().unwrap();
        assert_eq!(s.kind, "zfs-raid1");
        assert_eq!(
            s.devices,
            vec![format!("{BY_ID}sp1"), format!("{BY_ID}sp2")]
        );
        let scrub = p.last_scrub.unwrap();
        assert_eq!(scrub.state, "FINISHED");
        assert_eq!(scrub.progress, "100.00%");
        let shown = serde_json::to_value(&scrub).unwrap();
        assert_eq!(shown["start_time"], "2023-11-14T22:13:20Z");
        assert_eq!(shown["end_time"], "2023-11-14T22:15:00Z");
    }

    #[test]
    fn the_local_pool_of_older_installs_is_named_by_partition_label() {
        let doc = status(
            "local",
            "ONLINE",
            vec![disk("local-data", "ONLINE")],
            json!({}),
        );
        let p = pool(&doc, "local").unwrap();
        assert_eq!(
            p.devices,
            vec!["/dev/disk/by-partlabel/local-data".to_string()]
        );
    }

    #[test]
    fn a_missing_pool_or_bad_json_is_a_clear_error() {
        let doc = status("tank", "ONLINE", vec![disk("a", "ONLINE")], json!({}));
        assert_eq!(
            pool(&doc, "other").unwrap_err(),
            "zpool 'other' doesn't exist"
        );
        assert!(pool("no json", "tank")
            .unwrap_err()
            .starts_with("cannot read zpool status: "));
        assert_eq!(pool_names(&doc).unwrap(), vec!["tank".to_string()]);
    }

    #[test]
    fn scrub_progress_is_shown_as_upstream() {
        assert_eq!(scrub_progress("FINISHED", 1, 2), "100.00%");
        assert_eq!(scrub_progress("SCANNING", 4268032, 4276224), "99.81%");
        assert_eq!(scrub_progress("SCANNING", 5268081, 4276224), "99.99%");
        assert_eq!(scrub_progress("SCANNING", 5268081, 0), "0.00%");
        assert_eq!(scrub_progress("SCANNING", 0, 4276224), "0.00%");
    }

    #[test]
    fn key_status_volumes_and_small_blocks_are_read() {
        let get = |v: &str| {
            json!({"output_version": {"command": "zfs get", "vers_major": 0, "vers_minor": 1},
                   "datasets": {"tank": {"name": "tank", "type": "FILESYSTEM", "pool": "tank",
                                          "properties": {"keystatus": {"value": v, "source": {"type": "NONE", "data": "-"}}}}}})
            .to_string()
        };
        assert_eq!(keystatus(&get("available"), "tank").unwrap(), "available");
        assert_eq!(keystatus(&get("-"), "tank").unwrap(), "NONE");
        assert!(keystatus(&get("x"), "other").is_err());
        let list = json!({"output_version": {"command": "zfs list", "vers_major": 0, "vers_minor": 1},
            "datasets": {
                "tank": {"name": "tank", "properties": {"used": {"value": 5}, "quota": {"value": 0}, "incusos:use": {"value": "-"}}},
                "tank/vol2": {"name": "tank/vol2", "properties": {"used": {"value": 24576}, "quota": {"value": 0}, "incusos:use": {"value": "linstor"}}},
                "tank/vol1": {"name": "tank/vol1", "properties": {"used": {"value": 98304}, "quota": {"value": 1073741824}, "incusos:use": {"value": "incus"}}}
            }})
        .to_string();
        let v = volumes(&list, "tank").unwrap();
        assert_eq!(
            v,
            vec![
                Volume {
                    name: "vol1".into(),
                    usage_in_bytes: 98304,
                    quota_in_bytes: 1073741824,
                    usage: "incus".into()
                },
                Volume {
                    name: "vol2".into(),
                    usage_in_bytes: 24576,
                    quota_in_bytes: 0,
                    usage: "linstor".into()
                },
            ]
        );
        assert_eq!(small_blocks_kb("32K\n"), Ok(32));
        assert_eq!(small_blocks_kb("0"), Ok(0));
        assert!(small_blocks_kb("x").is_err());
    }
}
