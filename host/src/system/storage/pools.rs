//! What creating or changing a ZFS pool takes, decided before anything runs.
//!
//! [`plan_create`] and [`plan_update`] check a request against the pool as it is and
//! return every command in order, or the first refusal (upstream's texts). Nothing runs
//! until the whole change is known to be acceptable: upstream checks some rules (how many
//! devices an expansion may add) only after it already replaced devices, and so can
//! leave a change half done; here such a request is refused before the first command.
//!
//! Device names given by the client (`/dev/sdb`, a by-id path) are resolved to their
//! stable `/dev/disk/by-id/` names through [`Disks`], which is also how the plans learn
//! which disk the system runs from and whether a degraded member is still present.

/// The pool (and special vdev) types upstream supports.
pub const POOL_TYPES: [&str; 6] = [
    "zfs-raid0",
    "zfs-raid1",
    "zfs-raid10",
    "zfs-raidz1",
    "zfs-raidz2",
    "zfs-raidz3",
];

/// The pool created at first boot on the system drive's data partition.
pub const LOCAL: &str = "local";

/// Where a pool's raw key lives; a pool is managed by this daemon iff its key file exists.
pub fn key_file(pool: &str) -> String {
    format!("/var/lib/incus-os/zpool.{pool}.key")
}

/// The partition of a disk `local` uses (the system drive's data partition number).
pub fn local_partition(disk: &str) -> String {
    format!("{disk}-part11")
}

/// What the plans need to know about the machine's disks.
pub trait Disks {
    /// The stable `/dev/disk/by-id/...` name of a device given by path or id.
    fn to_id(&self, device: &str) -> Result<String, String>;
    /// The by-id name of the disk the system runs from.
    fn system_disk(&self) -> Result<String, String>;
    /// Whether a device path exists (a failed disk may have been pulled out).
    fn present(&self, device: &str) -> bool;
}

/// One step of a pool change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `zpool <args>`.
    Zpool(Vec<String>),
    /// `zfs <args>`.
    Zfs(Vec<String>),
    /// Clears a disk that left a pool (signatures, partition table), when it is still
    /// there.
    Wipe(String),
    /// Gives a whole disk joining `local` as a mirror the same data partition the system
    /// drive has (partition 11 at the same offset), then waits for
    /// `<disk>-part11` to appear.
    PartitionForLocal(String),
}

fn zpool(args: &[&str]) -> Step {
    Step::Zpool(args.iter().map(|s| s.to_string()).collect())
}

/// A checked pool creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatePlan {
    /// Written (32 random bytes) before `create` runs, removed when it fails.
    pub key_file: String,
    /// `zpool` arguments; `-f` is appended for a retry when the devices differ in size
    /// and the request allows it.
    pub create: Vec<String>,
    pub allow_mixed_dev_sizes: bool,
    /// Run after the pool exists.
    pub after: Vec<Step>,
}

/// What `zpool create` says when the devices of a vdev differ in size.
pub const MIXED_SIZES_MARK: &str = "contains devices of different sizes";
pub const MIXED_SIZES_REFUSED: &str =
    "refusing to create new zpool with devices of different sizes unless AllowMixedDevSizes is true";

fn check_counts(kind: &str, n: usize, what: &str) -> Result<(), String> {
    match kind {
        "zfs-raid1" if n < 2 => Err(format!(
            "at least two devices must be specified when creating a raid1 {what}"
        )),
        "zfs-raid10" if n < 4 => Err(format!(
            "at least four devices must be specified when creating a raid10 {what}"
        )),
        "zfs-raid10" if !n.is_multiple_of(2) => Err(format!(
            "an even number of devices must be specified when creating a raid10 {what}"
        )),
        _ => Ok(()),
    }
}

/// The vdev words for `devices` as a `kind` group.
fn vdev_spec(kind: &str, devices: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let group = |out: &mut Vec<String>, word: &str, devs: &[String]| {
        out.push(word.to_string());
        out.extend(devs.iter().cloned());
    };
    match kind {
        "zfs-raid1" => group(&mut out, "mirror", devices),
        "zfs-raid10" => {
            // Two mirrors, each of half the devices.
            let (a, b) = devices.split_at(devices.len() / 2);
            group(&mut out, "mirror", a);
            group(&mut out, "mirror", b);
        }
        "zfs-raidz1" | "zfs-raidz2" | "zfs-raidz3" => {
            group(&mut out, kind.trim_start_matches("zfs-"), devices)
        }
        _ => out.extend(devices.iter().cloned()),
    }
    out
}

fn resolve_all(disks: &dyn Disks, devices: &[String]) -> Result<Vec<String>, String> {
    devices.iter().map(|d| disks.to_id(d)).collect()
}

/// Checks a new pool and spells out its creation. `exists`: a pool of that name is
/// imported; `key_exists`: its key file is there.
pub fn plan_create(
    pool: &super::model::Pool,
    exists: bool,
    key_exists: bool,
    disks: &dyn Disks,
) -> Result<CreatePlan, String> {
    let name = pool.name.as_str();
    if name.is_empty() {
        return Err("a name for the zpool must be provided".into());
    }
    if exists {
        return Err(format!("zpool '{name}' already exists"));
    }
    if key_exists {
        return Err(format!("encryption key for '{name}' already exists"));
    }
    if !POOL_TYPES.contains(&pool.kind.as_str()) {
        return Err(format!("unsupported pool type {}", pool.kind));
    }
    if pool.devices.is_empty() {
        return Err("at least one device must be specified".into());
    }
    check_counts(&pool.kind, pool.devices.len(), "pool")?;
    if let Some(special) = &pool.special {
        if !POOL_TYPES.contains(&special.kind.as_str()) {
            return Err(format!("unsupported special device type {}", special.kind));
        }
        check_counts(&special.kind, special.devices.len(), "special vdev")?;
    }
    let devices = resolve_all(disks, &pool.devices)?;
    let cache = resolve_all(disks, &pool.cache)?;
    let log = resolve_all(disks, &pool.log)?;
    let special = match &pool.special {
        Some(s) => resolve_all(disks, &s.devices)?,
        None => Vec::new(),
    };
    // The system drive (or any of its partitions) is never given to another pool; `local`
    // is made on its data partition.
    let system = disks.system_disk()?;
    let local_data = local_partition(&system);
    let on_system = |d: &String| {
        (d == &system || d.starts_with(&format!("{system}-part")))
            && !(name == LOCAL && *d == local_data)
    };
    if let Some(d) = devices
        .iter()
        .chain(&cache)
        .chain(&log)
        .chain(&special)
        .find(|d| on_system(d))
    {
        return Err(format!(
            "list of devices includes the system root drive {d}, which can't be used in other zpools"
        ));
    }
    let mut all: Vec<&String> = devices
        .iter()
        .chain(&cache)
        .chain(&log)
        .chain(&special)
        .collect();
    all.sort();
    if let Some(w) = all.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("device {} is listed more than once", w[0]));
    }

    let key_file = key_file(name);
    let mut create: Vec<String> = [
        "create",
        "-o",
        "ashift=12",
        "-O",
        "mountpoint=none",
        "-O",
        "encryption=aes-256-gcm",
        "-O",
        "keyformat=raw",
        "-O",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    create.push(format!("keylocation=file://{key_file}"));
    create.push(name.to_string());
    create.extend(vdev_spec(&pool.kind, &devices));
    if !cache.is_empty() {
        create.push("cache".into());
        create.extend(cache);
    }
    if !log.is_empty() {
        create.push("log".into());
        if log.len() > 1 {
            create.push("mirror".into());
        }
        create.extend(log);
    }
    let mut after = Vec::new();
    if let Some(s) = &pool.special {
        if !special.is_empty() {
            create.push("special".into());
            create.extend(vdev_spec(&s.kind, &special));
        }
        if s.special_small_blocks_size_in_kb != 0 {
            after.push(Step::Zfs(vec![
                "set".into(),
                format!(
                    "special_small_blocks={}K",
                    s.special_small_blocks_size_in_kb
                ),
                name.to_string(),
            ]));
        }
    }
    Ok(CreatePlan {
        key_file,
        create,
        allow_mixed_dev_sizes: pool.allow_mixed_dev_sizes,
        after,
    })
}

/// A device class of a pool as it is: its members (sorted, as shown) and its degraded
/// members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Class {
    pub kind: String,
    pub devices: Vec<String>,
    pub degraded: Vec<String>,
}

/// Checks a change of an existing pool (`current`, read from ZFS) into `wanted` and
/// spells out its steps: per position, an empty entry takes the device out, another
/// device replaces it; entries past the current ones are added.
pub fn plan_update(
    current: &super::model::Pool,
    wanted: &super::model::Pool,
    disks: &dyn Disks,
) -> Result<Vec<Step>, String> {
    let name = wanted.name.as_str();
    if !POOL_TYPES.contains(&current.kind.as_str()) {
        return Err(format!("unsupported pool type {}", current.kind));
    }
    let short = |n: usize, m: usize, what: &str| {
        Err(format!(
            "only {n} {what}provided in update, expected at least {m}"
        ))
    };
    if wanted.devices.len() < current.devices.len() {
        return short(wanted.devices.len(), current.devices.len(), "devices ");
    }
    if wanted.log.len() < current.log.len() {
        return short(wanted.log.len(), current.log.len(), "log devices ");
    }
    if wanted.cache.len() < current.cache.len() {
        return short(wanted.cache.len(), current.cache.len(), "cache devices ");
    }
    let current_special = current.special.clone().unwrap_or_default();
    if let Some(s) = &wanted.special {
        if s.devices.len() < current_special.devices.len() {
            return short(
                s.devices.len(),
                current_special.devices.len(),
                "special device devices ",
            );
        }
    }
    if name == LOCAL {
        if wanted.kind != "zfs-raid0" && wanted.kind != "zfs-raid1" {
            return Err("special zpool 'local' type must be either zfs-raid0 or zfs-raid1".into());
        }
        if wanted.devices.len() > 2 {
            return Err("special zpool 'local' cannot consist of more than two devices".into());
        }
        if !wanted.log.is_empty() {
            return Err("special zpool 'local' cannot have any log devices".into());
        }
        if !wanted.cache.is_empty() {
            return Err("special zpool 'local' cannot have any cache devices".into());
        }
        let system = local_partition(&disks.system_disk()?);
        if !wanted.devices.contains(&system) {
            return Err(format!(
                "special zpool 'local' must always include main system partition '{system}'"
            ));
        }
    }

    let mut steps = Vec::new();
    if current.kind == "zfs-raid0" && wanted.kind == "zfs-raid1" {
        steps.extend(to_mirror(name, &current.devices, &wanted.devices, disks)?);
    } else {
        let data = Class {
            kind: wanted.kind.clone(),
            devices: current.devices.clone(),
            degraded: current.devices_degraded.clone(),
        };
        steps.extend(update_class(name, &data, &wanted.devices, disks)?);
    }
    let log_kind = if wanted.log.len() > 1 {
        "zfs-raid1"
    } else {
        "zfs-raid0"
    };
    let log = Class {
        kind: log_kind.into(),
        devices: current.log.clone(),
        degraded: current.log_degraded.clone(),
    };
    steps.extend(update_class(name, &log, &wanted.log, disks)?);
    let cache = Class {
        kind: "zfs-raid0".into(),
        devices: current.cache.clone(),
        degraded: current.cache_degraded.clone(),
    };
    steps.extend(update_class(name, &cache, &wanted.cache, disks)?);
    if let Some(s) = &wanted.special {
        let special = Class {
            kind: s.kind.clone(),
            devices: current_special.devices.clone(),
            degraded: current.special_degraded.clone(),
        };
        steps.extend(update_class(name, &special, &s.devices, disks)?);
    }
    Ok(steps)
}

/// A single-device pool becomes a two-way mirror.
fn to_mirror(
    pool: &str,
    current: &[String],
    wanted: &[String],
    disks: &dyn Disks,
) -> Result<Vec<Step>, String> {
    if current.len() != 1 {
        return Err("cannot convert a pool with more than one device to a mirrored pool".into());
    }
    if wanted.len() != 2 {
        return Err("converting to a mirrored pool requires exactly two devices".into());
    }
    let existing = disks.to_id(&current[0])?;
    let mut new = disks.to_id(&wanted[0])?;
    if new == existing {
        new = disks.to_id(&wanted[1])?;
    }
    let mut steps = Vec::new();
    if pool == LOCAL {
        steps.push(Step::PartitionForLocal(new.clone()));
        new = local_partition(&new);
    }
    steps.push(Step::Zpool(vec![
        "attach".into(),
        pool.into(),
        existing,
        new,
    ]));
    Ok(steps)
}

/// One class's changes.
fn update_class(
    pool: &str,
    class: &Class,
    wanted: &[String],
    disks: &dyn Disks,
) -> Result<Vec<Step>, String> {
    let mut current = class.devices.clone();
    // A degraded member that is gone (a failed disk pulled out) is not shown among the
    // drives; a user adds a new disk to make up for it. Such an extra device replaces the
    // missing member rather than growing a still-degraded pool.
    for gone in &class.degraded {
        if current.len() >= wanted.len() {
            break;
        }
        if !disks.present(gone) {
            current.push(gone.clone());
        }
    }
    let mirrored_local = pool == LOCAL && class.kind == "zfs-raid1";
    let mut steps = Vec::new();
    for (old, new) in current.iter().zip(wanted) {
        if new.is_empty() {
            let old = disks.to_id(old)?;
            if class.kind == "zfs-raid0" {
                steps.push(Step::Zpool(vec!["remove".into(), pool.into(), old.clone()]));
                steps.push(Step::Wipe(old));
            } else {
                steps.push(Step::Zpool(vec!["offline".into(), pool.into(), old]));
            }
        } else if new != old {
            // The same device by another name (`/dev/sdb` for its by-id path) is no
            // change (upstream compares the names and replaces a device by itself).
            let old = disks.to_id(old)?;
            let mut new = disks.to_id(new)?;
            if new == old {
                continue;
            }
            if mirrored_local {
                steps.push(Step::PartitionForLocal(new.clone()));
                new = local_partition(&new);
            }
            steps.push(Step::Zpool(vec![
                "replace".into(),
                pool.into(),
                old.clone(),
                new,
            ]));
            let old_disk = if mirrored_local {
                old.trim_end_matches("-part11").to_string()
            } else {
                old
            };
            if disks.present(&old_disk) {
                steps.push(Step::Wipe(old_disk));
            }
        }
    }
    let added = &wanted[current.len().min(wanted.len())..];
    if added.is_empty() {
        return Ok(steps);
    }
    let added = resolve_all(disks, added)?;
    if class.kind == "zfs-raid0" {
        let mut args = vec!["add".to_string(), pool.to_string()];
        args.extend(added);
        steps.push(Step::Zpool(args));
        return Ok(steps);
    }
    // A single "new" device that is an offlined member comes back online.
    if added.len() == 1 {
        let degraded: Vec<String> = class
            .degraded
            .iter()
            .filter_map(|d| disks.to_id(d).ok())
            .collect();
        if degraded.contains(&added[0]) {
            steps.push(zpool(&["online", pool, &added[0]]));
            return Ok(steps);
        }
    }
    if class.kind == "zfs-raid10" {
        if added.len() != 2 {
            return Err("expanding a raid10 pool requires a pair of new devices".into());
        }
    } else if added.len() != 1 {
        return Err(
            "expanding a pool can only be performed one device at a time, due to a required resilver between expansions"
                .into(),
        );
    }
    let Some(first) = class.devices.first() else {
        return Err(format!("pool '{pool}' has no device to attach to"));
    };
    let target = if class.kind.starts_with("zfs-raidz") {
        format!("{}-0", class.kind.trim_start_matches("zfs-"))
    } else {
        first.clone()
    };
    let mut new = added[0].clone();
    if mirrored_local {
        steps.push(Step::PartitionForLocal(new.clone()));
        new = local_partition(&new);
    }
    steps.push(Step::Zpool(vec!["attach".into(), pool.into(), target, new]));
    if class.kind == "zfs-raid10" {
        let last = class.devices.last().cloned().unwrap_or_default();
        steps.push(Step::Zpool(vec![
            "attach".into(),
            pool.into(),
            last,
            added[1].clone(),
        ]));
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::super::model::{Pool, Special};
    use super::*;
    use std::collections::BTreeSet;

    const ID: &str = "/dev/disk/by-id/";

    /// Disks `sda`..: `/dev/sdX` resolves to `/dev/disk/by-id/disk-X`, a by-id name to
    /// itself; `sda` is the system drive; `gone` lists absent devices.
    struct Fake {
        gone: BTreeSet<String>,
    }

    fn fake() -> Fake {
        Fake {
            gone: BTreeSet::new(),
        }
    }

    fn id(x: &str) -> String {
        format!("{ID}disk-{x}")
    }

    impl Disks for Fake {
        fn to_id(&self, device: &str) -> Result<String, String> {
            if let Some(x) = device.strip_prefix("/dev/sd") {
                return Ok(id(x));
            }
            if device.starts_with(ID) {
                return Ok(device.to_string());
            }
            Err(format!("unknown device {device}"))
        }
        fn system_disk(&self) -> Result<String, String> {
            Ok(id("a"))
        }
        fn present(&self, device: &str) -> bool {
            !self.gone.contains(device)
        }
    }

    fn pool(name: &str, kind: &str, devices: &[&str]) -> Pool {
        Pool {
            name: name.into(),
            kind: kind.into(),
            devices: devices.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    const HEAD: &str = "create -o ashift=12 -O mountpoint=none -O encryption=aes-256-gcm -O keyformat=raw -O keylocation=file:///var/lib/incus-os/zpool.tank.key tank";

    fn create(p: &Pool) -> Result<CreatePlan, String> {
        plan_create(p, false, false, &fake())
    }

    #[test]
    fn every_pool_type_gets_upstreams_vdev_layout() {
        let d = |x: &str| id(x);
        for (kind, devs, spec) in [
            ("zfs-raid0", vec!["/dev/sdb"], d("b")),
            (
                "zfs-raid1",
                vec!["/dev/sdb", "/dev/sdc"],
                format!("mirror {} {}", d("b"), d("c")),
            ),
            (
                "zfs-raid10",
                vec![
                    "/dev/sdb", "/dev/sdc", "/dev/sdd", "/dev/sde", "/dev/sdf", "/dev/sdg",
                ],
                format!(
                    "mirror {} {} {} mirror {} {} {}",
                    d("b"),
                    d("c"),
                    d("d"),
                    d("e"),
                    d("f"),
                    d("g")
                ),
            ),
            (
                "zfs-raidz2",
                vec!["/dev/sdb", "/dev/sdc", "/dev/sdd"],
                format!("raidz2 {} {} {}", d("b"), d("c"), d("d")),
            ),
        ] {
            let plan = create(&pool("tank", kind, &devs)).unwrap();
            assert_eq!(plan.create, words(&format!("{HEAD} {spec}")), "{kind}");
            assert_eq!(plan.key_file, "/var/lib/incus-os/zpool.tank.key");
            assert!(plan.after.is_empty());
        }
    }

    #[test]
    fn cache_log_and_special_follow_the_data_vdevs() {
        let mut p = pool("tank", "zfs-raid0", &["/dev/sdb"]);
        p.cache = vec!["/dev/sdc".into()];
        p.log = vec!["/dev/sdd".into(), "/dev/sde".into()];
        p.special = Some(Special {
            kind: "zfs-raid1".into(),
            special_small_blocks_size_in_kb: 32,
            devices: vec!["/dev/sdf".into(), "/dev/sdg".into()],
        });
        p.allow_mixed_dev_sizes = true;
        let plan = create(&p).unwrap();
        assert_eq!(
            plan.create,
            words(&format!(
                "{HEAD} {} cache {} log mirror {} {} special mirror {} {}",
                id("b"),
                id("c"),
                id("d"),
                id("e"),
                id("f"),
                id("g")
            ))
        );
        assert!(plan.allow_mixed_dev_sizes);
        assert_eq!(
            plan.after,
            vec![Step::Zfs(words("set special_small_blocks=32K tank"))]
        );
        // One log device is not mirrored.
        p.log.pop();
        let plan = create(&p).unwrap();
        let at = plan.create.iter().position(|w| w == "log").unwrap();
        assert_eq!(plan.create[at + 1], id("d"));
    }

    #[test]
    fn creation_refusals_come_in_upstreams_order_and_words() {
        let ok = pool("tank", "zfs-raid1", &["/dev/sdb", "/dev/sdc"]);
        let e =
            |p: &Pool, exists: bool, key: bool| plan_create(p, exists, key, &fake()).unwrap_err();
        assert_eq!(
            e(&pool("", "bogus", &[]), true, true),
            "a name for the zpool must be provided"
        );
        assert_eq!(e(&ok, true, true), "zpool 'tank' already exists");
        assert_eq!(
            e(&ok, false, true),
            "encryption key for 'tank' already exists"
        );
        assert_eq!(
            e(&pool("tank", "zfs-raid5", &[]), false, false),
            "unsupported pool type zfs-raid5"
        );
        assert_eq!(
            e(&pool("tank", "zfs-raid0", &[]), false, false),
            "at least one device must be specified"
        );
        assert_eq!(
            e(&pool("tank", "zfs-raid1", &["/dev/sdb"]), false, false),
            "at least two devices must be specified when creating a raid1 pool"
        );
        assert_eq!(
            e(
                &pool("tank", "zfs-raid10", &["/dev/sdb", "/dev/sdc", "/dev/sdd"]),
                false,
                false
            ),
            "at least four devices must be specified when creating a raid10 pool"
        );
        assert_eq!(
            e(
                &pool(
                    "tank",
                    "zfs-raid10",
                    &["/dev/sdb", "/dev/sdc", "/dev/sdd", "/dev/sde", "/dev/sdf"]
                ),
                false,
                false
            ),
            "an even number of devices must be specified when creating a raid10 pool"
        );
        let mut s = ok.clone();
        s.special = Some(Special {
            kind: "mirror".into(),
            ..Default::default()
        });
        assert_eq!(
            e(&s, false, false),
            "unsupported special device type mirror"
        );
        s.special = Some(Special {
            kind: "zfs-raid1".into(),
            devices: vec!["/dev/sdd".into()],
            ..Default::default()
        });
        assert_eq!(
            e(&s, false, false),
            "at least two devices must be specified when creating a raid1 special vdev"
        );
        for system in ["/dev/sda", "/dev/disk/by-id/disk-a-part11"] {
            let p = pool("tank", "zfs-raid1", &["/dev/sdb", system]);
            assert_eq!(
                e(&p, false, false),
                format!(
                    "list of devices includes the system root drive {}, which can't be used in other zpools",
                    fake().to_id(system).unwrap()
                )
            );
        }
        // `local` alone may sit on the system drive, on its data partition only.
        let local = pool(LOCAL, "zfs-raid0", &["/dev/disk/by-id/disk-a-part11"]);
        let plan = plan_create(&local, false, false, &fake()).unwrap();
        assert!(plan
            .create
            .ends_with(&words("local /dev/disk/by-id/disk-a-part11")));
        for system in ["/dev/sda", "/dev/disk/by-id/disk-a-part3"] {
            let p = pool(LOCAL, "zfs-raid0", &[system]);
            assert!(
                e(&p, false, false).starts_with("list of devices includes the system root drive")
            );
        }
        let mut dup = ok.clone();
        dup.cache = vec!["/dev/sdc".into()];
        assert_eq!(
            e(&dup, false, false),
            format!("device {} is listed more than once", id("c"))
        );
        assert_eq!(
            e(&pool("tank", "zfs-raid0", &["/dev/nvme0n1"]), false, false),
            "unknown device /dev/nvme0n1"
        );
    }

    fn current(kind: &str, devices: &[&str]) -> Pool {
        let ids: Vec<String> = devices.iter().map(|x| id(x)).collect();
        Pool {
            name: "tank".into(),
            kind: kind.into(),
            devices: ids,
            ..Default::default()
        }
    }

    fn wanted(kind: &str, devices: &[&str]) -> Pool {
        let ids: Vec<String> = devices
            .iter()
            .map(|x| if x.is_empty() { String::new() } else { id(x) })
            .collect();
        Pool {
            name: "tank".into(),
            kind: kind.into(),
            devices: ids,
            ..Default::default()
        }
    }

    fn update(cur: &Pool, want: &Pool) -> Result<Vec<Step>, String> {
        plan_update(cur, want, &fake())
    }

    fn z(s: &str) -> Step {
        Step::Zpool(words(s))
    }

    #[test]
    fn an_unchanged_pool_needs_no_step() {
        let c = current("zfs-raid1", &["b", "c"]);
        assert_eq!(update(&c, &wanted("zfs-raid1", &["b", "c"])), Ok(vec![]));
    }

    #[test]
    fn a_member_named_by_its_kernel_name_is_no_change() {
        let c = current("zfs-raid0", &["b"]);
        let mut w = wanted("zfs-raid0", &["b", "c"]);
        w.devices[0] = "/dev/sdb".into();
        assert_eq!(
            update(&c, &w),
            Ok(vec![z(&format!("add tank {}", id("c")))])
        );
        let c = current("zfs-raid1", &["b", "c"]);
        let mut w = wanted("zfs-raid1", &["b", "c"]);
        w.devices[1] = "/dev/sdc".into();
        assert_eq!(update(&c, &w), Ok(vec![]));
    }

    #[test]
    fn raid0_grows_by_any_number_of_devices_at_once_and_shrinks_by_removal() {
        let c = current("zfs-raid0", &["b"]);
        assert_eq!(
            update(&c, &wanted("zfs-raid0", &["b", "c", "d", "e"])),
            Ok(vec![z(&format!(
                "add tank {} {} {}",
                id("c"),
                id("d"),
                id("e")
            ))])
        );
        let c = current("zfs-raid0", &["b", "c"]);
        assert_eq!(
            update(&c, &wanted("zfs-raid0", &["b", ""])),
            Ok(vec![
                z(&format!("remove tank {}", id("c"))),
                Step::Wipe(id("c"))
            ])
        );
    }

    #[test]
    fn a_mirror_member_given_as_empty_is_taken_offline_and_comes_back_online() {
        let c = current("zfs-raid1", &["b", "c", "d"]);
        assert_eq!(
            update(&c, &wanted("zfs-raid1", &["", "c", "d"])),
            Ok(vec![z(&format!("offline tank {}", id("b")))])
        );
        // Read back: two online, one degraded; listing it again brings it back.
        let mut degraded = current("zfs-raid1", &["c", "d"]);
        degraded.devices_degraded = vec![id("b")];
        assert_eq!(
            update(&degraded, &wanted("zfs-raid1", &["c", "d", "b"])),
            Ok(vec![z(&format!("online tank {}", id("b")))])
        );
    }

    #[test]
    fn a_different_device_at_a_position_replaces_and_wipes_the_old_one() {
        let c = current("zfs-raid1", &["b", "c", "d"]);
        assert_eq!(
            update(&c, &wanted("zfs-raid1", &["b", "c", "e"])),
            Ok(vec![
                z(&format!("replace tank {} {}", id("d"), id("e"))),
                Step::Wipe(id("d"))
            ])
        );
    }

    #[test]
    fn a_pulled_out_degraded_member_is_replaced_by_the_extra_device() {
        let mut c = current("zfs-raid1", &["b"]);
        c.devices_degraded = vec![id("c")];
        let disks = Fake {
            gone: [id("c")].into(),
        };
        assert_eq!(
            plan_update(&c, &wanted("zfs-raid1", &["b", "d"]), &disks),
            Ok(vec![z(&format!("replace tank {} {}", id("c"), id("d")))]),
            "no wipe of a disk that is not there"
        );
        // Still present (offlined, not failed): the extra device grows the mirror.
        assert_eq!(
            update(&c, &wanted("zfs-raid1", &["b", "d"])),
            Ok(vec![z(&format!("attach tank {} {}", id("b"), id("d")))])
        );
    }

    #[test]
    fn mirrors_and_raidz_grow_one_device_at_a_time_and_raid10_by_pairs() {
        let c = current("zfs-raid1", &["b", "c"]);
        assert_eq!(
            update(&c, &wanted("zfs-raid1", &["b", "c", "d"])),
            Ok(vec![z(&format!("attach tank {} {}", id("b"), id("d")))])
        );
        let one_at_a_time = "expanding a pool can only be performed one device at a time, due to a required resilver between expansions";
        assert_eq!(
            update(&c, &wanted("zfs-raid1", &["b", "c", "d", "e"])),
            Err(one_at_a_time.into())
        );
        let c = current("zfs-raidz1", &["b", "c", "d"]);
        assert_eq!(
            update(&c, &wanted("zfs-raidz1", &["b", "c", "d", "e"])),
            Ok(vec![z(&format!("attach tank raidz1-0 {}", id("e")))])
        );
        assert_eq!(
            update(&c, &wanted("zfs-raidz1", &["b", "c", "d", "e", "f"])),
            Err(one_at_a_time.into())
        );
        let c = current("zfs-raid10", &["b", "c", "d", "e"]);
        assert_eq!(
            update(&c, &wanted("zfs-raid10", &["b", "c", "d", "e", "f"])),
            Err("expanding a raid10 pool requires a pair of new devices".into())
        );
        assert_eq!(
            update(&c, &wanted("zfs-raid10", &["b", "c", "d", "e", "f", "g"])),
            Ok(vec![
                z(&format!("attach tank {} {}", id("b"), id("f"))),
                z(&format!("attach tank {} {}", id("e"), id("g"))),
            ])
        );
    }

    #[test]
    fn a_refused_expansion_refuses_the_whole_change_before_any_step() {
        // Upstream would have replaced d by x before refusing the expansion.
        let c = current("zfs-raid1", &["b", "c", "d"]);
        assert!(update(&c, &wanted("zfs-raid1", &["b", "c", "x", "e", "f"])).is_err());
    }

    #[test]
    fn a_single_device_pool_converts_to_a_mirror() {
        let c = current("zfs-raid0", &["b"]);
        assert_eq!(
            update(&c, &wanted("zfs-raid1", &["b", "c"])),
            Ok(vec![z(&format!("attach tank {} {}", id("b"), id("c")))])
        );
        // The new device may come first.
        assert_eq!(
            update(&c, &wanted("zfs-raid1", &["c", "b"])),
            Ok(vec![z(&format!("attach tank {} {}", id("b"), id("c")))])
        );
        assert_eq!(
            update(&c, &wanted("zfs-raid1", &["b", "c", "d"])),
            Err("converting to a mirrored pool requires exactly two devices".into())
        );
        let c = current("zfs-raid0", &["b", "c"]);
        assert_eq!(
            update(&c, &wanted("zfs-raid1", &["b", "c"])),
            Err("cannot convert a pool with more than one device to a mirrored pool".into())
        );
    }

    #[test]
    fn too_few_entries_in_any_class_are_refused() {
        let mut c = current("zfs-raid0", &["b", "c"]);
        assert_eq!(
            update(&c, &wanted("zfs-raid0", &["b"])),
            Err("only 1 devices provided in update, expected at least 2".into())
        );
        c.log = vec![id("d"), id("e")];
        let mut w = wanted("zfs-raid0", &["b", "c"]);
        w.log = vec![id("d")];
        assert_eq!(
            update(&c, &w),
            Err("only 1 log devices provided in update, expected at least 2".into())
        );
        w.log = c.log.clone();
        c.cache = vec![id("f")];
        assert_eq!(
            update(&c, &w),
            Err("only 0 cache devices provided in update, expected at least 1".into())
        );
        w.cache = c.cache.clone();
        c.special = Some(Special {
            kind: "zfs-raid0".into(),
            devices: vec![id("g")],
            ..Default::default()
        });
        w.special = Some(Special {
            kind: "zfs-raid0".into(),
            ..Default::default()
        });
        assert_eq!(
            update(&c, &w),
            Err("only 0 special device devices provided in update, expected at least 1".into())
        );
    }

    #[test]
    fn log_and_cache_devices_are_added_and_removed() {
        let c = current("zfs-raid0", &["b"]);
        let mut w = wanted("zfs-raid0", &["b"]);
        w.log = vec![id("c")];
        assert_eq!(
            update(&c, &w),
            Ok(vec![z(&format!("add tank {}", id("c")))])
        );
        let mut c2 = c.clone();
        c2.log = vec![id("c")];
        w.log = vec![id("c"), id("d")];
        assert_eq!(
            update(&c2, &w),
            Ok(vec![z(&format!("attach tank {} {}", id("c"), id("d")))]),
            "a second log device mirrors the first"
        );
        c2.cache = vec![id("e")];
        w.log = c2.log.clone();
        w.cache = vec![String::new()];
        assert_eq!(
            update(&c2, &w),
            Ok(vec![
                z(&format!("remove tank {}", id("e"))),
                Step::Wipe(id("e"))
            ])
        );
    }

    fn local(kind: &str, devices: &[&str]) -> Pool {
        Pool {
            name: LOCAL.into(),
            kind: kind.into(),
            devices: devices.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn local_keeps_its_rules() {
        let system = local_partition(&id("a"));
        let c = local("zfs-raid0", &[&system]);
        let e = |w: Pool| update(&c, &w).unwrap_err();
        assert_eq!(
            e(local("zfs-raidz1", &[&system])),
            "special zpool 'local' type must be either zfs-raid0 or zfs-raid1"
        );
        assert_eq!(
            e(local("zfs-raid0", &[&system, &id("b"), &id("c")])),
            "special zpool 'local' cannot consist of more than two devices"
        );
        let mut w = local("zfs-raid0", &[&system]);
        w.log = vec![id("b")];
        assert_eq!(e(w), "special zpool 'local' cannot have any log devices");
        let mut w = local("zfs-raid0", &[&system]);
        w.cache = vec![id("b")];
        assert_eq!(e(w), "special zpool 'local' cannot have any cache devices");
        assert_eq!(
            e(local("zfs-raid0", &[&id("b")])),
            format!("special zpool 'local' must always include main system partition '{system}'")
        );
    }

    #[test]
    fn a_whole_disk_joining_local_as_a_mirror_is_partitioned_first() {
        let system = local_partition(&id("a"));
        let c = local("zfs-raid0", &[&system]);
        assert_eq!(
            update(&c, &local("zfs-raid1", &[&system, &id("b")])),
            Ok(vec![
                Step::PartitionForLocal(id("b")),
                z(&format!("attach local {system} {}-part11", id("b")))
            ])
        );
        // As raid0, a whole disk is added as it is.
        assert_eq!(
            update(&c, &local("zfs-raid0", &[&system, &id("b")])),
            Ok(vec![z(&format!("add local {}", id("b")))])
        );
        // Replacing the mirror's second member partitions the new disk and wipes the old.
        let c = local("zfs-raid1", &[&system, &local_partition(&id("b"))]);
        assert_eq!(
            update(&c, &local("zfs-raid1", &[&system, &id("c")])),
            Ok(vec![
                Step::PartitionForLocal(id("c")),
                z(&format!(
                    "replace local {}-part11 {}-part11",
                    id("b"),
                    id("c")
                )),
                Step::Wipe(id("b")),
            ])
        );
    }
}
