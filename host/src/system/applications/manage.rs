//! What the host owns of every application: whether and which version of it is installed,
//! the primary rule, dependencies, `initialized`, and the lifecycle steps that run around
//! an install, an update, a version switch, a removal and a factory reset.
//!
//! An application is installed when its record has a version, its link in
//! `/var/lib/extensions/` exists and the image of that version is on disk (upstream's
//! rule). The record lives in the state document under the plugin's name; a plugin with
//! variants (`incus`, `incus-lts-7.0`) has one record, naming the variant installed.
//!
//! Changes to images (install, update, switch, remove) hold `App::update_lock`, so they
//! never overlap one another or an update check.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use plugin_api::application::{errors, AppContext, PluginState, Replace, Running};
use plugin_api::provider::{RefreshCause, Release, Target};
use plugin_api::{Hook, Kind};

use super::store::{self, Installed, OsFacts, Store};
use super::versions as app_versions;
use crate::api::App;
use crate::platform::files::RootFs;
use crate::plugins::{CallError, Plugin};
use crate::state::ApplicationRecord;
use crate::system::provider;
use crate::system::update::runner::{self, EXTENSIONS_DIR};
use crate::system::update::versions::{self, Decision};

/// How long the work of an "answer first" operation waits after the answer (upstream's
/// one second: the request may come through the primary application, which the work
/// restarts).
pub const DEFERRED: Duration = Duration::from_secs(1);

/// Free space a download needs (upstream: 1 GiB).
const MIN_FREE_BYTES: u64 = 1 << 30;

fn from_sdk(e: plugin_api::sdk::Error) -> CallError {
    CallError::new(e.status, e.message)
}

/// The application plugin answering to `name` (its own name or a variant).
pub fn find(app: &App, name: &str) -> Option<Arc<Plugin>> {
    app.registry
        .of_kind(Kind::Application)
        .find(|p| p.manifest.names().any(|n| n == name))
        .cloned()
}

/// The record of `plugin` (its slot in the state document).
pub fn record(app: &App, plugin: &Plugin) -> Option<ApplicationRecord> {
    app.with_state(|s| s.doc().applications.get(plugin.name()).cloned())
}

/// The name `record` says is installed: the variant, or the plugin's own name.
fn installed_as<'a>(plugin: &'a Plugin, record: &'a ApplicationRecord) -> &'a str {
    if record.name.is_empty() {
        plugin.name()
    } else {
        &record.name
    }
}

/// The store of application images under the daemon's root.
pub fn image_store(app: &App) -> Store {
    Store::new(&app.root, &app.platform)
}

/// Whether the link and the image of `name` at `version` exist.
fn on_disk(app: &App, name: &str, version: &str) -> bool {
    let fs = RootFs::new(&app.root);
    let exists = |p: &str| fs.stat(p).ok().flatten().is_some();
    !version.is_empty()
        && exists(&store::link_path(name))
        && exists(&store::image_path(version, name))
}

/// The name `plugin` is installed as, if it is installed (record, link and image).
pub fn installed(app: &App, plugin: &Plugin) -> Option<String> {
    let record = record(app, plugin)?;
    let name = installed_as(plugin, &record).to_string();
    on_disk(app, &name, &record.version).then_some(name)
}

/// Every installed application: its plugin and the name it is installed as, in start
/// order.
pub fn all_installed(app: &App) -> Vec<(Arc<Plugin>, String)> {
    app.registry
        .start_order()
        .into_iter()
        .filter(|p| p.manifest.kind == Kind::Application)
        .filter_map(|p| installed(app, &p).map(|n| (p, n)))
        .collect()
}

/// Whether an application named `name` (a plugin name or a variant) is installed. With no
/// plugin for it (a system without that plugin), the record, link and image decide.
pub fn is_installed(app: &App, name: &str) -> bool {
    match find(app, name) {
        Some(p) => installed(app, &p).as_deref() == Some(name),
        None => {
            let version = app.with_state(|s| {
                s.doc()
                    .applications
                    .get(name)
                    .map(|r| r.version.clone())
                    .unwrap_or_default()
            });
            on_disk(app, name, &version)
        }
    }
}

/// What a hook of `plugin` gets to know about its install.
pub fn context(app: &App, plugin: &Plugin) -> AppContext {
    let record = record(app, plugin).unwrap_or_default();
    AppContext {
        name: installed_as(plugin, &record).to_string(),
        version: record.version.clone(),
        initialized: record.initialized,
        seed: None,
    }
}

fn json<T: serde::Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("a context serializes"))
}

/// Calls an application hook with its context, when the plugin has it. A plugin built for
/// an older contract (no such hook) is treated as having the default: nothing to do.
pub async fn call(app: &App, plugin: &Plugin, hook: Hook) -> Result<Vec<u8>, CallError> {
    if !plugin.manifest.has(hook) {
        return Ok(b"{}".to_vec());
    }
    let mut ctx = context(app, plugin);
    if hook == Hook::Initialize {
        // The application's own seed goes with its first initialization.
        ctx.seed = crate::system::seed::apply::for_application(&app.seeds, &ctx.name);
    }
    plugin.hook(hook, json(&ctx)).await
}

/// Changes the record of `plugin`. Only an install creates one: a change that finds none
/// (the application was removed meanwhile) does nothing.
fn update_record(
    app: &App,
    plugin: &Plugin,
    f: impl FnOnce(&mut ApplicationRecord),
) -> Result<(), CallError> {
    let name = plugin.name().to_string();
    app.with_state(|s| {
        if !s.doc().applications.contains_key(&name) {
            return Ok(());
        }
        s.update(|d| {
            if let Some(r) = d.applications.get_mut(&name) {
                f(r);
            }
        })
    })
    .map_err(|e| CallError::internal(format!("cannot save the state: {e}")))
}

/// Creates or replaces the record of `plugin` (an install).
fn set_record(app: &App, plugin: &Plugin, record: ApplicationRecord) -> Result<(), CallError> {
    let name = plugin.name().to_string();
    app.with_state(|s| {
        s.update(|d| {
            d.applications.insert(name, record);
        })
    })
    .map_err(|e| CallError::internal(format!("cannot save the state: {e}")))
}

fn drop_record(app: &App, plugin: &Plugin) -> Result<(), CallError> {
    let name = plugin.name().to_string();
    app.with_state(|s| {
        s.update(|d| {
            d.applications.remove(&name);
        })
    })
    .map_err(|e| CallError::internal(format!("cannot save the state: {e}")))
}

/// What the version choice needs to know of the OS. `prior` is the previous boot's
/// release at the first refresh of a boot, the running one afterwards.
pub fn os_facts(app: &App, first_of_boot: bool) -> OsFacts {
    let running = app.info.os().version.clone();
    let next = app.with_state(|s| s.doc().os.next_release.clone());
    let prior = if first_of_boot {
        app.prior_release.clone()
    } else {
        running.clone()
    };
    let from_backup = versions::running_from_backup(&running, &next);
    // The other slot: the staged release when one is, else the one booted before this
    // release (after an update, the previous release stays in the other slot).
    let other = if !next.is_empty() && next != running {
        next
    } else if !app.prior_release.is_empty() && app.prior_release != running {
        app.prior_release.clone()
    } else {
        String::new()
    };
    OsFacts {
        running,
        other,
        prior,
        from_backup,
    }
}

/// Links every installed application's chosen image, refreshes the merge, and records
/// what was chosen. `extra` is an application being installed (not yet "installed" by the
/// rule, since its link does not exist yet).
async fn refresh(
    app: &App,
    extra: Option<(&Plugin, &str)>,
    first_of_boot: bool,
) -> Result<(), CallError> {
    let mut apps: Vec<(String, Installed)> = all_installed(app)
        .into_iter()
        .map(|(p, name)| {
            let recorded = record(app, &p).unwrap_or_default().version;
            (p.name().to_string(), Installed { name, recorded })
        })
        .collect();
    if let Some((p, name)) = extra {
        if !apps.iter().any(|(slot, _)| slot == p.name()) {
            let recorded = record(app, p).unwrap_or_default().version;
            apps.push((
                p.name().to_string(),
                Installed {
                    name: name.to_string(),
                    recorded,
                },
            ));
        }
    }
    let os = os_facts(app, first_of_boot);
    let list: Vec<Installed> = apps.iter().map(|(_, i)| i.clone()).collect();
    let store = image_store(app);
    let activated = tokio::task::spawn_blocking(move || store.refresh_extensions(&list, &os))
        .await
        .map_err(|e| CallError::internal(e.to_string()))?
        .map_err(from_sdk)?;
    app.with_state(|s| {
        s.update(|d| {
            for a in &activated {
                let Some((slot, _)) = apps.iter().find(|(_, i)| i.name == a.name) else {
                    continue;
                };
                let r = d.applications.entry(slot.clone()).or_default();
                r.version = a.version.clone();
                r.available_versions = a.available.clone();
            }
        })
    })
    .map_err(|e| CallError::internal(format!("cannot save the state: {e}")))
}

/// At boot, before anything starts: the images every installed application uses, chosen
/// for the release that booted (section 6.2's rules).
pub async fn refresh_at_boot(app: &App) {
    if all_installed(app).is_empty() {
        return;
    }
    let _changes = app.update_lock.lock().await;
    if let Err(e) = refresh(app, None, true).await {
        tracing::error!(error = %e.message, "cannot refresh the system extensions");
    }
}

/// Starts an application and initializes it when it never was (upstream's
/// `StartInitialize`).
pub async fn start_initialize(app: &App, plugin: &Plugin) -> Result<(), CallError> {
    call(app, plugin, Hook::Start).await?;
    let ctx = context(app, plugin);
    if !ctx.initialized {
        tracing::info!(name = %ctx.name, version = %ctx.version, "Initializing application");
        call(app, plugin, Hook::Initialize).await?;
        update_record(app, plugin, |r| r.initialized = true)?;
    }
    Ok(())
}

/// At boot, after the startup update check: every installed application started (and
/// initialized if needed), non-primary ones with a weight up to 0 first, then the
/// primary, then the rest (upstream's order). Returns whether the primary application
/// failed to start (the fallback listener's cue).
pub async fn start_installed(app: &App) -> bool {
    let mut apps = all_installed(app);
    let rank = |p: &Plugin| match (p.manifest.primary, p.manifest.start_weight) {
        (false, w) if w <= 0 => 0,
        (true, _) => 1,
        (false, _) => 2,
    };
    apps.sort_by_key(|(p, _)| rank(p));
    let mut primary_failed = false;
    for (p, name) in apps {
        if app.lifecycle.is_stopping() {
            return primary_failed;
        }
        if let Err(e) = start_initialize(app, &p).await {
            tracing::error!(application = %name, error = %e.message, "cannot start the application");
            primary_failed |= p.manifest.primary;
        }
    }
    primary_failed
}

/// At shutdown, before the other plugins stop: every installed application stopped, in
/// reverse start order.
pub async fn stop_installed(app: &App) {
    for (p, name) in all_installed(app).into_iter().rev() {
        if let Err(e) = call(app, &p, Hook::Stop).await {
            tracing::error!(application = %name, error = %e.message, "cannot stop the application");
        }
    }
}

/// The installed primary application, other than `plugin`.
fn other_primary(app: &App, plugin: &Plugin) -> Option<(Arc<Plugin>, String)> {
    all_installed(app)
        .into_iter()
        .find(|(p, _)| p.manifest.primary && p.name() != plugin.name())
}

/// What `POST /1.0/applications` decided.
pub enum Install {
    /// Installed (synchronously).
    Done,
    /// A variant replaces the installed one: allowed, carried out in the background.
    Replacing,
}

/// `POST /1.0/applications`: the checks in upstream's order, then the install (with the
/// dependencies first). A variant of an installed application is a replacement.
pub async fn install(app: &Arc<App>, name: &str) -> Result<Install, CallError> {
    if name.is_empty() {
        return Err(CallError::new(400, "missing application name"));
    }
    let Some(plugin) = find(app, name) else {
        return Err(CallError::new(400, format!("unknown application '{name}'")));
    };
    let current = installed(app, &plugin);
    if current.as_deref() == Some(name) {
        return Err(CallError::new(409, "already exists"));
    }
    if let Some(from) = current {
        // Another variant of the same plugin is installed: a replacement.
        return replace(app, plugin, &from, name).await;
    }
    if plugin.manifest.primary {
        if let Some((_, other)) = other_primary(app, &plugin) {
            // Upstream's text, which clients match; the name goes to the log.
            tracing::info!(installed = %other, requested = %name, "a primary application is already installed");
            return Err(CallError::new(
                400,
                "a primary application is already installed",
            ));
        }
    }
    let _changes = app.update_lock.lock().await;
    install_with_dependencies(app, &plugin, name, &mut vec![]).await?;
    Ok(Install::Done)
}

/// Installs the dependencies of `plugin` that are missing (each under its plugin's own
/// name), then `plugin` as `name`.
fn install_with_dependencies<'a>(
    app: &'a App,
    plugin: &'a Arc<Plugin>,
    name: &'a str,
    seen: &'a mut Vec<String>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), CallError>> + Send + 'a>> {
    Box::pin(async move {
        if seen.iter().any(|s| s == plugin.name()) {
            return Err(CallError::internal(format!(
                "application '{name}' depends on itself through its dependencies"
            )));
        }
        seen.push(plugin.name().to_string());
        for dep in plugin.manifest.dependencies.clone() {
            let Some(dp) = find(app, &dep) else {
                return Err(CallError::internal(format!(
                    "application '{name}' needs '{dep}', which this system does not offer"
                )));
            };
            if installed(app, &dp).is_some() {
                continue;
            }
            if dp.manifest.primary {
                if let Some((_, other)) = other_primary(app, &dp) {
                    return Err(CallError::new(
                        400,
                        format!(
                            "application '{name}' needs '{dep}', but the primary application '{other}' is installed"
                        ),
                    ));
                }
            }
            tracing::info!(application = %name, dependency = %dep, "installing a dependency first");
            let dep_name = dp.name().to_string();
            install_with_dependencies(app, &dp, &dep_name, seen).await?;
        }
        install_one(app, plugin, name).await
    })
}

/// Downloads the newest image of `name` from the selected provider and brings it up. On
/// any failure what this install did is undone: the image, the link, the record.
async fn install_one(app: &App, plugin: &Arc<Plugin>, name: &str) -> Result<(), CallError> {
    // Nothing could be merged: say so before downloading anything.
    if let crate::platform::Mode::Offline(why) = &app.platform.mode {
        return Err(CallError::internal(format!(
            "cannot install application '{name}': {why}"
        )));
    }
    let p = provider::selected(app)?;
    let channel = crate::system::update::channel(app);
    let context = provider::context(app, &channel);
    let release = runner::lookup(&p, &context, Target::Application(name.to_string()))
        .await
        .map_err(CallError::internal)?
        .ok_or_else(|| {
            CallError::internal(format!(
                "provider {} has no application '{name}' on channel {channel}",
                p.name()
            ))
        })?;
    tracing::info!(application = %name, channel = %channel, version = %release.version, "Downloading application update");
    download(app, &p, &context, name, &release).await?;
    let version = release.version.clone();
    let (store, n, v) = (image_store(app), name.to_string(), version.clone());
    tokio::task::spawn_blocking(move || {
        let verified = store.verify(&n, &v);
        if verified.is_err() && store.active_version(&n).ok().flatten().as_ref() != Some(&v) {
            // The refused download goes; every other local version stays.
            let others: Vec<String> = store
                .local_versions(&n)
                .unwrap_or_default()
                .into_iter()
                .filter(|x| *x != v)
                .collect();
            let _ = store.remove_versions(&n, &others);
        }
        verified
    })
    .await
    .map_err(|e| CallError::internal(e.to_string()))?
    .map_err(from_sdk)?;
    // A replacement keeps `initialized` (the variants share the application's data).
    let initialized = record(app, plugin).is_some_and(|r| r.initialized);
    set_record(
        app,
        plugin,
        ApplicationRecord {
            name: if name == plugin.name() {
                String::new()
            } else {
                name.to_string()
            },
            version: version.clone(),
            available_versions: vec![version.clone()],
            initialized,
            last_restored: None,
        },
    )?;
    let mut started = false;
    let result = async {
        refresh(app, Some((plugin, name)), false).await?;
        started = true;
        start_initialize(app, plugin).await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(application = %name, error = %e.message, "the install failed, undoing it");
        if started {
            let _ = call(app, plugin, Hook::Stop).await;
        }
        let _ = drop_record(app, plugin);
        let (store, n) = (image_store(app), name.to_string());
        let undone = tokio::task::spawn_blocking(move || {
            // A failed merge already put the links back; a merged image is unmerged.
            if store.active_version(&n)?.is_some() {
                store.remove_application(&n)
            } else {
                store.remove_versions(&n, &[]).map(drop)
            }
        })
        .await;
        if let Ok(Err(u)) = undone {
            tracing::error!(application = %name, error = %u.message, "cannot undo the install");
        }
        return Err(e);
    }
    provider::notify(app, RefreshCause::ApplicationUpdateApplied).await;
    Ok(())
}

/// Checks the free space, then has the provider fetch the image into its version
/// directory.
async fn download(
    app: &App,
    p: &Plugin,
    context: &plugin_api::provider::UpdateContext,
    name: &str,
    release: &Release,
) -> Result<(), CallError> {
    let dir = format!("{EXTENSIONS_DIR}/{}", release.version);
    let fs = RootFs::new(&app.root);
    let handle = fs
        .create_dir_handle(&dir, 0o755)
        .map_err(|e| CallError::internal(e.to_string()))?;
    let (free, _) = std::fs::File::open(handle.path())
        .and_then(|d| crate::platform::uploads::space(&d))
        .map_err(|e| CallError::internal(format!("cannot read the free space of {dir}: {e}")))?;
    if free < MIN_FREE_BYTES {
        return Err(CallError::internal(format!(
            "not enough free space for the application in {dir}: {} MiB free, {} MiB needed",
            free >> 20,
            MIN_FREE_BYTES >> 20
        )));
    }
    runner::fetch(
        p,
        context,
        Target::Application(name.to_string()),
        release,
        &dir,
    )
    .await
    .map_err(CallError::internal)?;
    Ok(())
}

/// A variant replaces the installed one (`incus` and `incus-lts-7.0`): the plugin decides
/// whether it may; the work runs in the background (the record keeps `initialized`, the
/// old image goes, the new one is installed; local data stays).
async fn replace(
    app: &Arc<App>,
    plugin: Arc<Plugin>,
    from: &str,
    to: &str,
) -> Result<Install, CallError> {
    if !plugin.manifest.has(Hook::CanReplace) {
        return Err(CallError::new(
            400,
            format!("unable to replace application '{from}' with '{to}': unsupported application"),
        ));
    }
    let mut ctx = context(app, &plugin);
    ctx.name = from.to_string();
    let ask = Replace {
        from: ctx,
        to: to.to_string(),
    };
    plugin
        .hook(Hook::CanReplace, json(&ask))
        .await
        .map_err(|e| CallError::new(if e.status == 500 { 400 } else { e.status }, e.message))?;
    let (app, from, to) = (app.clone(), from.to_string(), to.to_string());
    tokio::spawn(async move {
        tokio::time::sleep(DEFERRED).await;
        let _changes = app.update_lock.lock().await;
        let result = async {
            call(&app, &plugin, Hook::Stop).await?;
            let store = image_store(&app);
            let old = from.clone();
            tokio::task::spawn_blocking(move || store.remove_application(&old))
                .await
                .map_err(|e| CallError::internal(e.to_string()))?
                .map_err(from_sdk)?;
            update_record(&app, &plugin, |r| {
                r.version.clear();
                r.available_versions.clear();
                r.last_restored = None;
            })?;
            install_one(&app, &plugin, &to).await
        }
        .await;
        match result {
            Ok(()) => tracing::info!(from = %from, to = %to, "application replaced"),
            Err(e) => {
                tracing::error!(from = %from, to = %to, error = %e.message, "cannot replace the application")
            }
        }
    });
    Ok(Install::Replacing)
}

/// The applications an update check installs when none is (upstream's selection): the
/// `applications` seed's list, `incus` added when it names no primary (see
/// [`crate::system::seed::apply::seeded_applications`]); names no plugin provides are
/// skipped. Dependencies come with each install.
pub fn to_install(app: &App) -> Vec<String> {
    if !all_installed(app).is_empty() {
        return vec![];
    }
    crate::system::seed::apply::seeded_applications(&app.seeds, DEFAULT_PRIMARY, |n| {
        find(app, n).map(|p| p.manifest.primary)
    })
    .into_iter()
    .filter(|n| find(app, n).is_some())
    .collect()
}

/// The primary application a system gets when its seed names none.
pub const DEFAULT_PRIMARY: &str = "incus";

/// Installs what [`to_install`] selects, during an update check (holding `update_lock`).
/// Each failure is logged; the check goes on.
pub async fn install_selected(app: &App) {
    for name in to_install(app) {
        let Some(plugin) = find(app, &name) else {
            continue;
        };
        if installed(app, &plugin).is_some() {
            continue;
        }
        tracing::info!(application = %name, "installing the application this system runs");
        if let Err(e) = install_with_dependencies(app, &plugin, &name, &mut vec![]).await {
            tracing::warn!(application = %name, error = %e.message, "cannot install the application");
        }
    }
}

/// The application installed as `name`, or 404.
pub fn installed_plugin(app: &App, name: &str) -> Result<Arc<Plugin>, CallError> {
    find(app, name)
        .filter(|p| installed(app, p).as_deref() == Some(name))
        .ok_or_else(|| CallError::new(404, "not found"))
}

/// `POST /1.0/applications/<name>/:remove`: refused for the primary; otherwise the
/// application is stopped, its data wiped (when it has data), its image and record gone.
pub async fn remove(app: &App, name: &str) -> Result<(), CallError> {
    let plugin = installed_plugin(app, name)?;
    if plugin.manifest.primary {
        return Err(CallError::internal(errors::REMOVE_PRIMARY));
    }
    if let Some((_, n)) = all_installed(app)
        .into_iter()
        .find(|(p, _)| p.manifest.dependencies.iter().any(|d| d == plugin.name()))
    {
        return Err(CallError::new(
            400,
            format!("application '{n}' depends on '{name}': remove it first"),
        ));
    }
    let _changes = app.update_lock.lock().await;
    call(app, &plugin, Hook::Stop).await?;
    call(app, &plugin, Hook::Wipe).await?;
    let store = image_store(app);
    let n = name.to_string();
    tokio::task::spawn_blocking(move || store.remove_application(&n))
        .await
        .map_err(|e| CallError::internal(e.to_string()))?
        .map_err(from_sdk)?;
    drop_record(app, &plugin)?;
    tracing::info!(application = %name, "application removed");
    Ok(())
}

/// `POST /1.0/applications/<name>/:switch-version`: to a local version (empty: the one
/// before the current), merged before the answer; the restart follows in the background.
pub async fn switch_version(app: &Arc<App>, name: &str, version: &str) -> Result<(), CallError> {
    let plugin = installed_plugin(app, name)?;
    let _changes = app.update_lock.lock().await;
    let record = record(app, &plugin).unwrap_or_default();
    let target = app_versions::switch_target(version, &record.version, &record.available_versions)
        .map_err(|e| CallError::new(400, e))?;
    let previous = record.version.clone();
    update_record(app, &plugin, |r| r.version = target.clone())?;
    if let Err(e) = refresh(app, None, false).await {
        let _ = update_record(app, &plugin, |r| r.version = previous);
        return Err(e);
    }
    tracing::info!(application = %name, from = %record.version, to = %target, "application version switched");
    deferred(app, plugin, Hook::Restart, "restart");
    Ok(())
}

/// Runs `hook` after [`DEFERRED`], in the background; a failure is only logged, with
/// upstream's text.
pub fn deferred(app: &Arc<App>, plugin: Arc<Plugin>, hook: Hook, what: &'static str) {
    let app = app.clone();
    tokio::spawn(async move {
        tokio::time::sleep(DEFERRED).await;
        let name = context(&app, &plugin).name;
        if let Err(e) = call(&app, &plugin, hook).await {
            tracing::error!(error = %e.message, "Failed to {what} application '{name}'");
        }
    });
}

/// `:factory-reset`, after [`DEFERRED`]: stop, wipe, start, initialize. An application
/// without data (no wipe hook) answers "not supported", only in the log (as upstream).
pub fn factory_reset(app: &Arc<App>, plugin: Arc<Plugin>) {
    let app = app.clone();
    tokio::spawn(async move {
        tokio::time::sleep(DEFERRED).await;
        let name = context(&app, &plugin).name;
        let result = async {
            if !plugin.manifest.has(Hook::Wipe) {
                if plugin.manifest.has(Hook::FactoryReset) {
                    // A plugin built for an older contract resets itself.
                    return call(&app, &plugin, Hook::FactoryReset).await.map(drop);
                }
                return Err(CallError::internal(errors::NOT_SUPPORTED));
            }
            call(&app, &plugin, Hook::Stop).await?;
            call(&app, &plugin, Hook::Wipe).await?;
            update_record(&app, &plugin, |r| r.initialized = false)?;
            start_initialize(&app, &plugin).await
        }
        .await;
        match result {
            Ok(()) => tracing::info!(application = %name, "application factory reset"),
            Err(e) => {
                tracing::error!(error = %e.message, "Failed to perform factory reset of application '{name}'")
            }
        }
    });
}

/// `:check-update`, after [`DEFERRED`]: this one application's update.
pub fn check_update(app: &Arc<App>, plugin: Arc<Plugin>) {
    let app = app.clone();
    tokio::spawn(async move {
        tokio::time::sleep(DEFERRED).await;
        let _changes = app.update_lock.lock().await;
        let result = async {
            let p = provider::selected(&app)?;
            let channel = crate::system::update::channel(&app);
            let context = provider::context(&app, &channel);
            update_one(&app, &p, &context, &plugin)
                .await
                .map_err(CallError::internal)
        }
        .await;
        if let Err(e) = result {
            tracing::error!(application = %plugin.name(), error = %e.message, "application update check failed");
        }
    });
}

/// One installed application's update (the update check calls it for each, holding
/// `update_lock`): a newer image on offer is downloaded, verified, recorded as current (or
/// only kept as available when the machine runs from the backup slot), merged, and the
/// application reloaded (or started, when it was not running). Returns whether a new
/// image was installed.
pub async fn update_one(
    app: &App,
    p: &Plugin,
    context: &plugin_api::provider::UpdateContext,
    plugin: &Plugin,
) -> Result<bool, String> {
    let Some(name) = installed(app, plugin) else {
        return Ok(false);
    };
    let record = record(app, plugin).unwrap_or_default();
    let Some(release) = runner::lookup(p, context, Target::Application(name.clone())).await? else {
        return Ok(false);
    };
    match versions::application_update_decision(&name, &record.version, &release.version) {
        Decision::Install => {}
        Decision::Nothing => return Ok(false),
        Decision::Skip(why) => {
            tracing::warn!(application = %name, "{why}");
            return Ok(false);
        }
        Decision::Refuse(why) => return Err(why),
    }
    tracing::info!(application = %name, channel = %context.channel, version = %release.version, "Downloading application update");
    download(app, p, context, &name, &release)
        .await
        .map_err(|e| e.message)?;
    let store = image_store(app);
    let (n, v) = (name.clone(), release.version.clone());
    tokio::task::spawn_blocking(move || store.verify(&n, &v))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.message)?;
    let running = app.info.os().version.clone();
    let next = app.with_state(|s| s.doc().os.next_release.clone());
    let needs_reboot = app.updates.status.needs_reboot();
    let current = app_versions::download_becomes_current(
        true,
        needs_reboot,
        versions::running_from_backup(&running, &next),
    );
    let version = release.version.clone();
    update_record(app, plugin, |r| {
        if current {
            r.version = version.clone();
        }
        if !r.available_versions.contains(&version) {
            r.available_versions.push(version.clone());
        }
    })
    .map_err(|e| e.message)?;
    if let Err(e) = refresh(app, None, false).await {
        // The links were put back: so is the record (the image stays for the next try).
        let _ = update_record(app, plugin, |r| *r = record.clone());
        return Err(e.message);
    }
    if current {
        let Running { running } = call(app, plugin, Hook::Running)
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let reloaded = if running {
            call(app, plugin, Hook::Reload).await.map(drop)
        } else {
            start_initialize(app, plugin).await
        };
        if let Err(e) = reloaded {
            tracing::error!(application = %name, error = %e.message, "the updated application did not come up");
        }
        provider::notify(app, RefreshCause::ApplicationUpdateApplied).await;
    }
    Ok(true)
}

/// The `state` of `GET /1.0/applications/<name>`, in upstream's field order.
#[derive(Debug, serde::Serialize)]
pub struct StateView {
    pub is_primary: bool,
    pub initialized: bool,
    pub friendly_version: String,
    pub version: String,
    pub available_versions: Vec<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "crate::system::update::config::go_time"
    )]
    pub last_restored: Option<chrono::DateTime<chrono::FixedOffset>>,
}

/// The host's facts around the plugin's friendly version (empty: the image version).
pub fn state_view(app: &App, plugin: &Plugin, from_plugin: &PluginState) -> StateView {
    let record = record(app, plugin).unwrap_or_default();
    let mut available = record.available_versions.clone();
    available.sort();
    StateView {
        is_primary: plugin.manifest.primary,
        initialized: record.initialized,
        friendly_version: if from_plugin.friendly_version.is_empty() {
            record.version.clone()
        } else {
            from_plugin.friendly_version.clone()
        },
        version: record.version,
        available_versions: available,
        last_restored: record.last_restored,
    }
}

/// Records when a restore was swapped in.
pub fn restored_now(app: &App, plugin: &Plugin) -> Result<(), CallError> {
    let now = chrono::Utc::now().fixed_offset();
    update_record(app, plugin, |r| r.last_restored = Some(now))
}
