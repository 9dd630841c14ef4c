//! The update runner: the checker loop that turns the schedule's decisions into checks, and
//! the check itself (ask the selected provider, apply the version rules, download, stage,
//! record, notify, reboot when asked).
//!
//! A check holds the app's update lock (upstream's global update mutex), so provider
//! switches and checks never interleave.

use crate::system::applications::manage;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, FixedOffset, Utc};
use plugin_api::provider::{
    FetchOrder, FetchResult, Lookup, LookupResult, Release, Target, UpdateContext,
};
use plugin_api::{Hook, Kind};
use tokio::sync::mpsc;

use super::config::UpdateConfig;
use super::schedule::{
    self, Action, CheckKind, Clock, Event, Inputs, Scheduler, STATUS_COMPLETED, STATUS_RUNNING,
};
use super::stage::{self, Arch, SystemDisk};
use super::versions::{self, Decision};
use crate::api::App;
use crate::platform::files::RootFs;
use crate::platform::systemd::PowerAction;
use crate::plugins::Plugin;
use crate::system::provider;

/// Where OS update files are downloaded.
pub const UPDATES_DIR: &str = stage::UPDATES_DIR;
/// Where application images land, one directory per version.
pub const EXTENSIONS_DIR: &str = "/var/lib/incus-os-extensions";
/// Free space an OS update needs on the updates file system (upstream: 1 GiB).
pub const MIN_FREE_BYTES: u64 = 1 << 30;
/// The ESP's mount point.
pub const ESP: &str = "/boot";
/// Where a provider brings a Secure Boot key update (one of the SDK's `PROVIDER_PATHS`).
pub const SECUREBOOT_DIR: &str = "/var/lib/incus-os/secureboot-updates";
/// How long a start-up check waits before rebooting into new Secure Boot keys (upstream's
/// five seconds, for the console to show why).
const SECUREBOOT_REBOOT_DELAY: Duration = Duration::from_secs(5);

/// What `GET /1.0/system/update` shows beside the stored config and `last_check`; reset at
/// each start (as upstream's `needs_reboot`).
#[derive(Debug, Default)]
pub struct UpdateStatus {
    inner: Mutex<StatusInner>,
}

#[derive(Debug, Default, Clone)]
struct StatusInner {
    status: String,
    needs_reboot: bool,
}

impl UpdateStatus {
    pub fn status(&self) -> String {
        self.lock().status.clone()
    }
    pub fn needs_reboot(&self) -> bool {
        self.lock().needs_reboot
    }
    pub fn set_status(&self, status: impl Into<String>) {
        let status = status.into();
        tracing::debug!(status = %status, "update status");
        self.lock().status = status;
    }
    /// Whether a reboot is needed (false at each start).
    pub fn set_needs_reboot(&self, v: bool) {
        self.lock().needs_reboot = v;
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Download progress shows in the status while a file comes in.
impl plugin_host::net::Progress for UpdateStatus {
    fn progress(&self, _plugin: &str, target: &str, done: u64, total: Option<u64>) {
        let name = target.rsplit('/').next().unwrap_or(target);
        let mib = done / (1024 * 1024);
        let text = match total {
            Some(t) if t > 0 => format!(
                "Downloading {name}: {mib} MiB of {} MiB ({}%)",
                t / (1024 * 1024),
                done.saturating_mul(100) / t
            ),
            _ => format!("Downloading {name}: {mib} MiB"),
        };
        self.set_status(text);
    }
}

/// The runner's inbox: events for the schedule.
#[derive(Debug)]
pub struct Updates {
    pub status: Arc<UpdateStatus>,
    tx: mpsc::UnboundedSender<Event>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
}

impl Updates {
    pub fn new(status: Arc<UpdateStatus>) -> Updates {
        let (tx, rx) = mpsc::unbounded_channel();
        Updates {
            status,
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Tells the checker loop about an event (a user request, a config change).
    pub fn send(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    fn take_events(&self) -> Option<mpsc::UnboundedReceiver<Event>> {
        self.rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The machine's clock, local time in the daemon's timezone.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn local_offset(&self, at: DateTime<Utc>) -> FixedOffset {
        local_offset(at.timestamp())
    }
}

#[allow(unsafe_code)] // audited: localtime_r on a stack struct, the documented use
fn local_offset(t: i64) -> FixedOffset {
    let t = t as libc::time_t;
    // SAFETY: an all-zero `tm` is a valid value to be overwritten.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live values for the duration of the call.
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    let secs = if ok { tm.tm_gmtoff as i32 } else { 0 };
    FixedOffset::east_opt(secs).unwrap_or_else(|| FixedOffset::east_opt(0).expect("UTC"))
}

/// The stored config and last check.
fn inputs(app: &App) -> (UpdateConfig, Option<DateTime<Utc>>) {
    app.with_state(|s| {
        let u = &s.doc().system.update;
        (u.config.clone(), u.last_check.map(|t| t.to_utc()))
    })
}

fn has_primary(app: &App) -> bool {
    app.registry
        .of_kind(Kind::Application)
        .any(|p| p.manifest.primary && app.application_installed(p.name()))
}

fn record_last_check(app: &App, now: DateTime<Utc>) {
    let at = now.fixed_offset();
    if let Err(e) = app.with_state(|s| s.update(|d| d.system.update.last_check = Some(at))) {
        tracing::warn!(error = %e, "cannot record the update check time");
    }
}

/// The schedule's decision for `event`, on the stored config.
fn decide(app: &App, sched: &mut Scheduler, event: Event) -> Action {
    let (config, last_check) = inputs(app);
    let inputs = Inputs {
        config: &config,
        last_check,
        has_primary: has_primary(app),
    };
    sched.handle(event, &inputs, &SystemClock)
}

/// The startup check (upstream's blocking one, before the system is ready: an OS update
/// found at boot is staged and the machine rebooted into it), then the checker loop in the
/// background until the daemon stops.
pub async fn start(app: Arc<App>) {
    let Some(mut events) = app.updates.take_events() else {
        return;
    };
    let mut sched = Scheduler::new();
    // An installed application that serves its own update server (Migration Manager,
    // Operations Center) must be up first: the start-up check then runs 30 s later, in the
    // background (upstream's late update check).
    let late = manage::all_installed(&app)
        .iter()
        .find(|(p, _)| p.manifest.late_update_check)
        .map(|(_, name)| name.clone());
    if let Some(name) = late {
        tracing::info!(application = %name, "the start-up update check runs in {}s", LATE_CHECK_DELAY.as_secs());
        tokio::spawn(async move {
            tokio::time::sleep(LATE_CHECK_DELAY).await;
            if app.lifecycle.is_stopping() {
                return;
            }
            let event = turn(&app, &mut sched, Event::Startup, &mut events, false)
                .await
                .unwrap_or(Event::Tick);
            run(app, sched, event, events).await;
        });
        return;
    }
    // At start only a check is carried out here; a sleep is the loop's to take.
    let event = turn(&app, &mut sched, Event::Startup, &mut events, false)
        .await
        .unwrap_or(Event::Tick);
    tokio::spawn(run(app, sched, event, events));
}

/// How long after start-up the first update check waits when an installed application
/// needs the late check.
pub const LATE_CHECK_DELAY: Duration = Duration::from_secs(30);

/// One turn of the checker: the schedule's decision for `event`, carried out. Returns the
/// next event; `None` when the inbox closed, or (without `sleep`) where the decision was to
/// wait.
async fn turn(
    app: &Arc<App>,
    sched: &mut Scheduler,
    event: Event,
    events: &mut mpsc::UnboundedReceiver<Event>,
    sleep: bool,
) -> Option<Event> {
    match decide(app, sched, event) {
        Action::Check { kind, clear_cache } => {
            record_last_check(app, SystemClock.now());
            if let Err(e) = check(app, kind, clear_cache, false).await {
                tracing::warn!(error = %e, "update check failed");
            }
            // What came in meanwhile reaches the schedule while it still counts the check
            // as running: several requests make one more check, not several.
            while let Ok(queued) = events.try_recv() {
                decide(app, sched, queued);
            }
            Some(Event::CheckFinished)
        }
        _ if !sleep => None,
        Action::Skip { status, until } => {
            record_last_check(app, SystemClock.now());
            app.updates.status.set_status(status);
            tracing::info!("{status}");
            wait(until, events).await
        }
        Action::Sleep { until } => wait(until, events).await,
        Action::Wait => events.recv().await,
    }
}

/// The checker loop: runs until the daemon stops.
async fn run(
    app: Arc<App>,
    mut sched: Scheduler,
    mut event: Event,
    mut events: mpsc::UnboundedReceiver<Event>,
) {
    loop {
        if app.lifecycle.is_stopping() {
            // The checker ends with the daemon.
            return;
        }
        match turn(&app, &mut sched, event, &mut events, true).await {
            Some(next) => event = next,
            None => return,
        }
    }
}

/// Sleeps until `until` or the next event; `None` when the inbox closed.
async fn wait(until: DateTime<Utc>, events: &mut mpsc::UnboundedReceiver<Event>) -> Option<Event> {
    let dur = (until - Utc::now()).to_std().unwrap_or(Duration::ZERO);
    tokio::select! {
        _ = tokio::time::sleep(dur) => Some(Event::Tick),
        e = events.recv() => e,
    }
}

/// A provider call's JSON answer, decoded.
async fn call<T: serde::de::DeserializeOwned>(
    p: &Plugin,
    hook: Hook,
    input: &impl serde::Serialize,
) -> Result<T, String> {
    let body = serde_json::to_vec(input).map_err(|e| e.to_string())?;
    let out = p
        .hook(hook, Bytes::from(body))
        .await
        .map_err(|e| e.message)?;
    serde_json::from_slice(&out)
        .map_err(|e| format!("provider {} answered unreadable JSON: {e}", p.name()))
}

pub(crate) async fn lookup(
    p: &Plugin,
    context: &UpdateContext,
    target: Target,
) -> Result<Option<Release>, String> {
    let r: LookupResult = call(
        p,
        Hook::Lookup,
        &Lookup {
            context: context.clone(),
            target,
        },
    )
    .await?;
    match r.release {
        // The version names the directory the files land in: only digits are taken.
        Some(release) if !versions::is_version(&release.version) => Err(format!(
            "provider {} offered an invalid version {:?}",
            p.name(),
            release.version
        )),
        other => Ok(other),
    }
}

pub(crate) async fn fetch(
    p: &Plugin,
    context: &UpdateContext,
    target: Target,
    release: &Release,
    dir: &str,
) -> Result<Vec<String>, String> {
    let r: FetchResult = call(
        p,
        Hook::Fetch,
        &FetchOrder {
            context: context.clone(),
            target,
            release: release.clone(),
            target_dir: dir.to_string(),
        },
    )
    .await?;
    Ok(r.written)
}

/// One update check (upstream's `Checker` body): applications first (unless `os_only`),
/// then the OS. The status says what happened; the error is the status's failure text.
pub async fn check(
    app: &Arc<App>,
    kind: CheckKind,
    clear_cache: bool,
    os_only: bool,
) -> Result<(), String> {
    let _one_at_a_time = app.update_lock.lock().await;
    let status = &app.updates.status;
    status.set_status(STATUS_RUNNING);
    tracing::info!(kind = ?kind, os_only, "update check");
    let fail = |what: &str, e: String| {
        let text = format!("Failed to {what}: {e}");
        status.set_status(text.clone());
        text
    };
    let p = provider::selected(app).map_err(|e| fail("load the update provider", e.message))?;
    if !p.manifest.has(Hook::Lookup) || !p.manifest.has(Hook::Fetch) {
        let why = format!(
            "provider {} cannot look up updates: it was built for plugin-api {}, and lookups came in 1.2",
            p.name(),
            p.manifest.api_version
        );
        return Err(fail("load the update provider", why));
    }
    if clear_cache && p.manifest.has(Hook::ClearCache) {
        p.hook(Hook::ClearCache, Bytes::new())
            .await
            .map_err(|e| fail("clear the provider's cache", e.message))?;
    }
    let channel = super::channel(app);
    let context = provider::context(app, &channel);
    // An OS-only check (upstream's immediate `os_only`) leaves the keys alone.
    if !os_only
        && check_secure_boot(app, &p, &context)
            .await
            .map_err(|e| fail("apply the Secure Boot key update", e))?
    {
        status.set_needs_reboot(true);
        if kind == CheckKind::Startup {
            tracing::info!("Automatically rebooting system in five seconds");
            tokio::time::sleep(SECUREBOOT_REBOOT_DELAY).await;
            if let Err(e) = app.request_power(PowerAction::Reboot) {
                tracing::warn!(error = %e.message, "cannot reboot after the Secure Boot key update");
            }
        } else {
            tracing::info!("A reboot is required to finalize the Secure Boot key update");
        }
    }
    if !os_only {
        check_applications(app, &p, &context)
            .await
            .map_err(|e| fail("update applications", e))?;
    }
    let staged = check_os(app, &p, &context)
        .await
        .map_err(|e| fail("update the OS", e))?;
    match staged {
        Some(version) => {
            let os = &app.info.os().name;
            status.set_status(schedule::status_os_updated(os, &version));
            let auto_reboot = inputs(app).0.auto_reboot;
            let after = versions::after_os_update(kind, auto_reboot);
            status.set_needs_reboot(after.needs_reboot);
            for cause in after.notify {
                provider::notify(app, cause).await;
            }
            if after.reboot_now {
                tracing::info!(version = %version, "rebooting into the staged OS update");
                if let Err(e) = app.request_power(PowerAction::Reboot) {
                    tracing::warn!(error = %e.message, "cannot reboot after the OS update");
                }
            }
        }
        None => status.set_status(STATUS_COMPLETED),
    }
    Ok(())
}

/// The applications of the system: when none is installed, the one it runs is installed
/// (upstream's selection, [`manage::to_install`]); then each installed application's
/// update ([`manage::update_one`]): a newer image is downloaded, verified, merged and the
/// application reloaded. One application's failure is logged and does not keep the others
/// (or the OS) from updating.
async fn check_applications(app: &App, p: &Plugin, context: &UpdateContext) -> Result<(), String> {
    manage::install_selected(app).await;
    for (plugin, name) in manage::all_installed(app) {
        if let Err(e) = manage::update_one(app, p, context, &plugin).await {
            tracing::warn!(application = %name, error = %e, "cannot update the application");
        }
    }
    Ok(())
}

/// Upstream's step before the applications: the Secure Boot key update the provider
/// offers, taken when Secure Boot is on, no reboot is pending, and its version is not the
/// one recorded as fully applied (an older one is refused). The archive is fetched into
/// [`SECUREBOOT_DIR`] and at most one certificate is applied (KEK, then db, then dbx: see
/// `security::sbupdate::apply`). The record is marked not fully applied before anything
/// is written, and gets the version, fully applied, once nothing is left to apply.
/// Returns whether a certificate went in (a reboot is needed).
async fn check_secure_boot(
    app: &Arc<App>,
    p: &Plugin,
    context: &UpdateContext,
) -> Result<bool, String> {
    use crate::system::security;
    let kernel = &app.platform.kernel;
    if !security::secure_boot_enabled(kernel)? {
        return Ok(false);
    }
    if app.updates.status.needs_reboot() {
        tracing::info!("a reboot is pending: Secure Boot key updates wait for it");
        return Ok(false);
    }
    let Some(release) = lookup(p, context, Target::SecureBoot).await? else {
        return Ok(false);
    };
    let recorded = app.with_state(|s| s.doc().system.security.secure_boot.clone());
    if recorded.version == release.version && recorded.fully_applied {
        return Ok(false);
    }
    if versions::is_newer(&recorded.version, &release.version) {
        return Err(format!(
            "refusing to apply Secure Boot key update version ({}) that is older than the applied one ({})",
            release.version, recorded.version
        ));
    }
    let fs = RootFs::new(&app.root);
    fs.remove(SECUREBOOT_DIR).map_err(|e| e.to_string())?;
    fs.create_dir_handle(SECUREBOOT_DIR, 0o700)
        .map_err(|e| e.to_string())?;
    tracing::info!(version = %release.version, "Downloading SecureBoot update");
    let result = async {
        let written = fetch(p, context, Target::SecureBoot, &release, SECUREBOOT_DIR).await?;
        let [file] = written.as_slice() else {
            return Err(format!(
                "the Secure Boot key update {} is {} files, not one archive",
                release.version,
                written.len()
            ));
        };
        let data = fs
            .read(file)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the Secure Boot key update {file} is gone"))?;
        let updates = security::sbupdate::parse_archive(&data)?;
        let mut record = recorded.clone();
        record.fully_applied = false;
        app.with_state(|s| s.update(|d| d.system.security.secure_boot = record.clone()))
            .map_err(|e| e.to_string())?;
        tracing::info!(version = %release.version, "Applying Secure Boot certificate update");
        let _change = app.security.change.lock().await;
        let applied = {
            let app = app.clone();
            tokio::task::spawn_blocking(move || {
                security::sbupdate::apply(
                    app.platform.commands.as_ref(),
                    &app.root,
                    &app.platform.kernel,
                    &app.security,
                    &updates,
                )
            })
            .await
            .map_err(|e| e.to_string())??
        };
        if !applied {
            record.version = release.version.clone();
            record.fully_applied = true;
            app.with_state(|s| s.update(|d| d.system.security.secure_boot = record))
                .map_err(|e| e.to_string())?;
        }
        Ok(applied)
    }
    .await;
    if let Err(e) = fs.remove(SECUREBOOT_DIR) {
        tracing::warn!(error = %e, "cannot remove {SECUREBOOT_DIR}");
    }
    result
}

/// Asks for an OS update and stages it. Returns the staged version, `None` when there was
/// nothing to do.
async fn check_os(
    app: &App,
    p: &Plugin,
    context: &UpdateContext,
) -> Result<Option<String>, String> {
    let Some(release) = lookup(p, context, Target::Os).await? else {
        return Ok(None);
    };
    // The release running is the one this boot read from the OS, not a stored copy.
    let running = app.info.os().version.clone();
    let next = app.with_state(|s| s.doc().os.next_release.clone());
    let os_name = app.info.os().name.clone();
    let needs_reboot = app.updates.status.needs_reboot();
    match versions::os_update_decision(&os_name, &running, &next, &release.version, needs_reboot) {
        Decision::Install => {}
        Decision::Nothing => return Ok(None),
        Decision::Skip(why) => {
            tracing::warn!("{why}");
            return Ok(None);
        }
        Decision::Refuse(why) => return Err(why),
    }
    // A fresh directory first: what was downloaded for another release goes (the staged
    // slot is elsewhere and stays), and does not count against the free space.
    let fs = RootFs::new(&app.root);
    fs.remove(UPDATES_DIR).map_err(|e| e.to_string())?;
    let dir = fs
        .create_dir_handle(UPDATES_DIR, 0o700)
        .map_err(|e| e.to_string())?;
    let updates = dir.path().to_path_buf();
    let (free, _) = std::fs::File::open(&updates)
        .and_then(|d| crate::platform::uploads::space(&d))
        .map_err(|e| format!("cannot read the free space of {UPDATES_DIR}: {e}"))?;
    if free < MIN_FREE_BYTES {
        return Err(format!(
            "not enough free space for the OS update in {UPDATES_DIR}: {} MiB free, {} MiB needed",
            free >> 20,
            MIN_FREE_BYTES >> 20
        ));
    }
    tracing::info!(version = %release.version, "Downloading OS update");
    fetch(p, context, Target::Os, &release, UPDATES_DIR).await?;

    let disk = install_disk(app)?;
    let esp = fs.resolve(ESP).map_err(|e| e.to_string())?;
    let arch = Arch::native().ok_or("this architecture has no A/B update layout")?;
    if app.lifecycle.is_stopping() {
        return Err("the daemon is stopping: the update is not staged".into());
    }
    let commands = app.platform.commands.clone();
    let (version, running2) = (release.version.clone(), running.clone());
    let esp_dir = esp.clone();
    let staged = tokio::task::spawn_blocking(move || {
        let req = stage::Request {
            os_name: &os_name,
            version: &version,
            running: &running2,
            arch,
            updates_dir: &updates,
            disk: &disk,
            esp: &esp,
        };
        stage::stage(&SystemDisk::new(commands), &req).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    let staged = match staged {
        Ok(s) => s,
        Err(e) => {
            forget_lost_release(app, &esp_dir, &next);
            return Err(e);
        }
    };
    tracing::info!(version = %release.version, how = ?staged, "OS update staged");
    let version = release.version.clone();
    app.with_state(|s| s.update(|d| d.os.next_release = version.clone()))
        .map_err(|e| e.to_string())?;
    Ok(Some(release.version))
}

/// After a failed staging: if the release staged before (`next`) lost its UKI on the way
/// (staging prunes every UKI but the running one's first), it can no longer boot, so it is
/// no longer recorded as next and no reboot is pending for it. Otherwise nothing changes.
fn forget_lost_release(app: &App, esp: &Path, next: &str) {
    if next.is_empty() {
        return;
    }
    let os = app.info.os().name.clone();
    let dir = esp.join(stage::UKI_DIR);
    let still_there = std::fs::read_dir(&dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| stage::uki_version(n, &os))
                == Some(next)
        })
    });
    if still_there {
        return;
    }
    tracing::warn!(
        release = next,
        "the staged release was lost by a failed staging"
    );
    if let Err(e) = app.with_state(|s| s.update(|d| d.os.next_release.clear())) {
        tracing::warn!(error = %e, "cannot record that no release is staged");
    }
    app.updates.status.set_needs_reboot(false);
}

/// The disk holding both A/B slots: the configured one, else the disk of the partition
/// mounted on the ESP.
pub fn install_disk(app: &App) -> Result<PathBuf, String> {
    if let Some(d) = &app.install_disk {
        return Ok(d.clone());
    }
    let esp = RootFs::new(&app.root)
        .resolve(ESP)
        .map_err(|e| e.to_string())?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    let dev = esp_device(&mountinfo, &esp).ok_or_else(|| {
        format!(
            "cannot find the install disk: nothing is mounted on {} (start the daemon with --install-disk)",
            esp.display()
        )
    })?;
    disk_of(&dev).ok_or_else(|| {
        format!("cannot find the install disk: the ESP's device {dev} is not a disk partition")
    })
}

/// The `major:minor` of what is mounted on `mount_point`, from `/proc/self/mountinfo`.
pub fn esp_device(mountinfo: &str, mount_point: &Path) -> Option<String> {
    let want = mount_point.to_str()?;
    // The last mount on a point is the one in effect.
    mountinfo.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 4 && f[4] == want).then(|| f[2].to_string())
    })
}

/// `/dev/<disk>` for the partition `major:minor`, from sysfs.
fn disk_of(dev: &str) -> Option<PathBuf> {
    let sys = Path::new("/sys/dev/block").join(dev);
    if !sys.join("partition").exists() {
        return None;
    }
    let real = std::fs::canonicalize(&sys).ok()?;
    let disk = real.parent()?.file_name()?;
    Some(Path::new("/dev").join(disk))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_esp_device_is_read_from_mountinfo() {
        let mi = "22 1 8:2 / / rw - ext4 /dev/sda2 rw\n\
                  30 22 8:1 / /boot rw,relatime - vfat /dev/sda1 rw\n\
                  31 22 0:5 / /boot/efi rw - tmpfs none rw\n";
        assert_eq!(esp_device(mi, Path::new("/boot")).as_deref(), Some("8:1"));
        assert_eq!(esp_device(mi, Path::new("/srv")), None);
    }

    #[test]
    fn a_staged_release_whose_uki_a_failed_staging_removed_is_forgotten() {
        let (app, root) = crate::testing::TestApp::new().build();
        let esp = root.path().join("boot");
        std::fs::create_dir_all(esp.join("EFI/Linux")).unwrap();
        let stage_next = |v: &str| {
            app.with_state(|s| s.update(|d| d.os.next_release = v.into()))
                .unwrap();
            app.updates.status.set_needs_reboot(true);
        };
        let next = || app.with_state(|s| s.doc().os.next_release.clone());

        // Its UKI is still there (boot counting may have renamed it): kept.
        stage_next("202601010000");
        std::fs::write(esp.join("EFI/Linux/IncusOS_202601010000+2-1.efi"), b"uki").unwrap();
        forget_lost_release(&app, &esp, "202601010000");
        assert_eq!(next(), "202601010000");
        assert!(app.updates.status.needs_reboot());

        // Gone: it can no longer boot, so nothing is staged and no reboot is pending.
        std::fs::remove_file(esp.join("EFI/Linux/IncusOS_202601010000+2-1.efi")).unwrap();
        forget_lost_release(&app, &esp, "202601010000");
        assert_eq!(next(), "");
        assert!(!app.updates.status.needs_reboot());
    }

    #[test]
    fn progress_shows_in_the_status() {
        use plugin_host::net::Progress;
        let s = UpdateStatus::default();
        s.progress(
            "images",
            "/var/lib/updates/IncusOS_1.efi",
            5 << 20,
            Some(10 << 20),
        );
        assert_eq!(
            s.status(),
            "Downloading IncusOS_1.efi: 5 MiB of 10 MiB (50%)"
        );
        s.progress("images", "/var/lib/updates/x.raw", 3 << 20, None);
        assert_eq!(s.status(), "Downloading x.raw: 3 MiB");
    }
}
