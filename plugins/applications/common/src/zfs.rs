//! The ZFS datasets applications keep their data on, in the `local` pool, through the
//! `zfs` and `zpool` commands (as upstream: subprocesses, never a library).

use plugin_api::{Error, Host, Result};

use crate::COMMAND_TIMEOUT;

/// The pool the system drive's free space forms.
pub const POOL: &str = "local";

/// Whether the zpool `pool` exists (`zpool list -H -o name <pool>` succeeds).
pub fn pool_exists(host: &Host, pool: &str) -> Result<bool> {
    Ok(host
        .run(
            &["zpool", "list", "-H", "-o", "name", pool],
            COMMAND_TIMEOUT,
        )?
        .status
        == 0)
}

/// Whether the dataset exists (`zfs list -H -o name <dataset>` succeeds).
pub fn dataset_exists(host: &Host, dataset: &str) -> Result<bool> {
    Ok(host
        .run(
            &["zfs", "list", "-H", "-o", "name", dataset],
            COMMAND_TIMEOUT,
        )?
        .status
        == 0)
}

/// `local/<app>`.
pub fn app_dataset(app: &str) -> String {
    format!("{POOL}/{app}")
}

/// `/var/lib/<app>/`, where an application's dataset is mounted.
pub fn app_mountpoint(app: &str) -> String {
    format!("/var/lib/{app}/")
}

/// Creates `local/<app>` mounted at `/var/lib/<app>/` and tagged `incusos:use=<app>`.
pub fn create_app_dataset(host: &Host, app: &str) -> Result<()> {
    let mountpoint = format!("mountpoint={}", app_mountpoint(app));
    let tag = format!("incusos:use={app}");
    let dataset = app_dataset(app);
    host.run_ok(
        &["zfs", "create", "-o", &mountpoint, "-o", &tag, &dataset],
        COMMAND_TIMEOUT,
    )
    .map(drop)
}

/// Mounts `local/<app>`; one already mounted is fine.
pub fn mount_app_dataset(host: &Host, app: &str) -> Result<()> {
    let dataset = app_dataset(app);
    let out = host.run(&["zfs", "mount", &dataset], COMMAND_TIMEOUT)?;
    if out.status == 0 || out.stderr.contains("already mounted") {
        return Ok(());
    }
    Err(Error::internal(format!(
        "Failed to run: zfs mount {dataset}: exit status {} ({})",
        out.status,
        out.stderr.trim()
    )))
}

/// An application's local storage before it starts: before its first initialization the
/// dataset is created (or, when an interrupted first start left it behind, mounted);
/// afterwards it is mounted.
pub fn configure_local_storage(host: &Host, app: &str, initialized: bool) -> Result<()> {
    if !initialized && !dataset_exists(host, &app_dataset(app))? {
        return create_app_dataset(host, app);
    }
    mount_app_dataset(host, app)
}

/// Destroys `local/<app>` (`zfs destroy`); one that does not exist is fine.
pub fn destroy_app_dataset(host: &Host, app: &str) -> Result<()> {
    let dataset = app_dataset(app);
    let out = host.run(&["zfs", "destroy", &dataset], COMMAND_TIMEOUT)?;
    if out.status == 0 || out.stderr.contains("dataset does not exist") {
        return Ok(());
    }
    Err(Error::internal(format!(
        "Failed to run: zfs destroy {dataset}: exit status {} ({})",
        out.status,
        out.stderr.trim()
    )))
}
