//! The update provider: which provider plugin is selected, whether this machine is
//! registered with it, switching providers without ever leaving a half-switched system,
//! and notifying the selected provider of events.
//!
//! The selection (`name`, `registered`) lives in the daemon's state document; each
//! provider's own config lives in its plugin's state slot and is changed through the
//! plugin's `put` hook, which validates it.

use std::sync::Arc;

use bytes::Bytes;
use plugin_api::provider::{errors, RefreshCause, Registration, UpdateContext};
use plugin_api::{Hook, Kind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::App;
use crate::plugins::{CallError, Plugin};

/// The provider selected on a fresh system (upstream's default).
pub const DEFAULT_PROVIDER: &str = "images";

/// What the state document records of the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderDoc {
    /// The selected provider plugin.
    pub name: String,
    /// Whether this machine registered with it.
    pub registered: bool,
}

impl Default for ProviderDoc {
    fn default() -> Self {
        ProviderDoc {
            name: DEFAULT_PROVIDER.to_string(),
            registered: false,
        }
    }
}

/// The selection as stored.
pub fn selection(app: &App) -> ProviderDoc {
    app.with_state(|s| s.doc().system.provider.clone())
}

/// The loaded provider plugin named `name`.
pub fn plugin(app: &App, name: &str) -> Option<Arc<Plugin>> {
    app.registry.get(Kind::Provider, name).cloned()
}

/// The selected provider's plugin, or upstream's error when it is not loaded.
pub fn selected(app: &App) -> Result<Arc<Plugin>, CallError> {
    let name = selection(app).name;
    plugin(app, &name).ok_or_else(|| unknown(&name))
}

fn unknown(name: &str) -> CallError {
    CallError::internal(format!("unknown provider {name:?}"))
}

/// What every provider call says about this machine.
pub fn context(app: &App, channel: &str) -> UpdateContext {
    let next = app.with_state(|s| s.doc().os.next_release.clone());
    let running = app.info.os().version.clone();
    let env = app.info.environment(&next, app.is_ready()).ok();
    UpdateContext {
        channel: channel.to_string(),
        architecture: std::env::consts::ARCH.to_string(),
        os_name: app.info.os().name.clone(),
        running_version: running,
        machine_id: env
            .as_ref()
            .map(|e| e.machine_id.clone())
            .unwrap_or_default(),
        hostname: env.map(|e| e.hostname).unwrap_or_default(),
        management_addresses: management_addresses(app),
    }
}

/// The addresses of the devices with the `management` role, IPv4 first (none when the
/// network state cannot be read). The state is read on a thread of its own: the network
/// platform blocks on the runtime for its D-Bus calls, which a runtime thread (where this
/// is called from) must not do.
fn management_addresses(app: &App) -> Vec<String> {
    let network = &app.network;
    let read = std::thread::scope(|s| s.spawn(|| network.state()).join());
    let Ok(Ok(mut state)) = read else {
        return Vec::new();
    };
    state.apply_role_defaults();
    let mut out: Vec<std::net::IpAddr> = state
        .interfaces
        .values()
        .filter(|i| i.roles.iter().any(|r| r == "management"))
        .flat_map(|i| i.addresses.iter())
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect();
    out.sort_by_key(|ip| ip.is_ipv6());
    out.dedup();
    out.iter().map(ToString::to_string).collect()
}

fn registration(app: &App, cause: RefreshCause) -> Bytes {
    let channel = crate::system::update::channel(app);
    let reg = Registration {
        context: context(app, &channel),
        cause,
    };
    Bytes::from(serde_json::to_vec(&reg).unwrap_or_default())
}

/// The provider's own config: the `config` of its plugin's GET, `None` when it has none
/// to show (an empty object).
async fn plugin_config(p: &Plugin) -> Result<Option<Value>, CallError> {
    let out = p.hook(Hook::Get, Bytes::new()).await?;
    let doc: Value = serde_json::from_slice(&out).map_err(|e| {
        CallError::internal(format!(
            "provider {} answered unreadable JSON: {e}",
            p.name()
        ))
    })?;
    Ok(match doc.get("config") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) if m.is_empty() => None,
        Some(v) => Some(v.clone()),
    })
}

/// `GET /1.0/system/provider`'s metadata.
pub async fn get(app: &App) -> Result<Value, CallError> {
    let sel = selection(app);
    let mut config = serde_json::Map::new();
    config.insert("name".into(), Value::from(sel.name.clone()));
    if let Some(p) = plugin(app, &sel.name) {
        if let Some(c) = plugin_config(&p).await? {
            config.insert("config".into(), c);
        }
    }
    Ok(serde_json::json!({
        "config": config,
        "state": { "registered": sel.registered },
    }))
}

fn is(e: &CallError, text: &str) -> bool {
    e.message == text
}

async fn put_config(p: &Plugin, config: &Value) -> Result<(), CallError> {
    let body = serde_json::to_vec(&serde_json::json!({ "config": config })).unwrap_or_default();
    p.hook(Hook::Put, Bytes::from(body)).await.map(drop)
}

/// Registers with `p`, or refreshes an existing registration. Returns whether the machine
/// is registered afterwards (`registration unsupported` leaves it unregistered, not an
/// error).
async fn register_or_refresh(app: &App, p: &Plugin, registered: bool) -> Result<bool, CallError> {
    if registered {
        // A provider built before 1.2 has nothing to refresh.
        if p.manifest.has(Hook::Refresh) {
            p.hook(Hook::Refresh, registration(app, RefreshCause::Default))
                .await?;
        }
        return Ok(true);
    }
    if !p.manifest.has(Hook::Register) {
        return Ok(false);
    }
    match p
        .hook(Hook::Register, registration(app, RefreshCause::Default))
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if is(&e, errors::REGISTRATION_UNSUPPORTED) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `PUT /1.0/system/provider`: select provider `name` with `config` (its own config
/// object, which replaces the provider's whole config).
///
/// Order, and what a failure at each step puts back:
/// 1. an empty name is refused (400), an unknown one too (500), before anything changes;
/// 2. switching away: the old provider deregisters (refusal: 500, nothing changed);
/// 3. the new provider's config is put (refusal: its status; the old provider is
///    registered again if it was);
/// 4. the new provider registers, or refreshes its registration (failure: its previous
///    config is put back, the old provider registered again);
/// 5. the selection is saved (failure: as 4).
pub async fn put(app: &App, name: &str, config: Value) -> Result<(), CallError> {
    let _switching = app.update_lock.lock().await;
    if name.is_empty() {
        return Err(CallError {
            status: 400,
            message: "a provider name must be specified".into(),
        });
    }
    let old = selection(app);
    let new_plugin = plugin(app, name).ok_or_else(|| unknown(name))?;
    let switching = old.name != name;
    let old_plugin = plugin(app, &old.name);

    // 2. Leave the old provider.
    let mut deregistered = false;
    let mut registered = old.registered;
    if switching {
        if let Some(op) = &old_plugin {
            if !op.manifest.has(Hook::Deregister) {
                return Err(CallError::internal(errors::DEREGISTRATION_UNSUPPORTED));
            }
            match op
                .hook(Hook::Deregister, registration(app, RefreshCause::Default))
                .await
            {
                Ok(_) => deregistered = old.registered,
                Err(e) if is(&e, errors::REGISTRATION_UNSUPPORTED) => {}
                Err(e) => return Err(e),
            }
        }
        registered = false;
    }
    // Puts the old provider back as it was registered, when step 2 undid that.
    let rejoin_old = || async {
        if let (true, Some(op)) = (deregistered, &old_plugin) {
            // It deregistered, so it has the hooks of 1.2.
            if let Err(e) = op
                .hook(Hook::Register, registration(app, RefreshCause::Default))
                .await
            {
                tracing::warn!(provider = %old.name, error = %e.message, "cannot register again with the previous provider");
            }
        }
    };

    // 3. The new provider's config.
    let previous_config = match plugin_config(&new_plugin).await {
        Ok(c) => c.unwrap_or_else(|| Value::Object(Default::default())),
        Err(e) => {
            rejoin_old().await;
            return Err(e);
        }
    };
    if let Err(e) = put_config(&new_plugin, &config).await {
        rejoin_old().await;
        return Err(e);
    }
    let put_back_config = || async {
        if let Err(e) = put_config(&new_plugin, &previous_config).await {
            tracing::warn!(provider = %name, error = %e.message, "cannot put the provider's previous config back");
        }
    };

    // 4. Register with it.
    let registered = match register_or_refresh(app, &new_plugin, registered).await {
        Ok(r) => r,
        Err(e) => {
            put_back_config().await;
            rejoin_old().await;
            return Err(e);
        }
    };

    // 5. Save.
    let doc = ProviderDoc {
        name: name.to_string(),
        registered,
    };
    if let Err(e) = app.with_state(|s| s.update(|d| d.system.provider = doc)) {
        put_back_config().await;
        rejoin_old().await;
        return Err(CallError::internal(e.to_string()));
    }
    if switching {
        tracing::info!(from = %old.name, to = %name, registered, "update provider changed");
    }
    Ok(())
}

/// Tells the selected provider about an event (upstream's `providers.Notify`), when this
/// machine is registered with it. Failures are logged: an event is never refused for them.
pub async fn notify(app: &App, cause: RefreshCause) {
    let sel = selection(app);
    if !sel.registered {
        return;
    }
    let Some(p) = plugin(app, &sel.name).filter(|p| p.manifest.has(Hook::Refresh)) else {
        return;
    };
    if let Err(e) = p.hook(Hook::Refresh, registration(app, cause)).await {
        tracing::warn!(provider = %sel.name, cause = cause.as_str(), error = %e.message, "provider notification failed");
    }
}

/// At start (upstream's last start-up step): when this machine is not registered with the
/// selected provider, it registers now (`registration unsupported` is no error). Failures
/// are logged; the next provider change tries again.
pub async fn register_at_start(app: &App) {
    // Serialized with provider switches: a switch meanwhile must not be written over.
    let _switching = app.update_lock.lock().await;
    let sel = selection(app);
    if sel.registered {
        return;
    }
    let Some(p) = plugin(app, &sel.name).filter(|p| p.manifest.has(Hook::Register)) else {
        return;
    };
    match p
        .hook(Hook::Register, registration(app, RefreshCause::Default))
        .await
    {
        Ok(_) => {
            let doc = ProviderDoc {
                registered: true,
                ..sel.clone()
            };
            if let Err(e) = app.with_state(|s| s.update(|d| d.system.provider = doc)) {
                tracing::warn!(provider = %sel.name, error = %e, "cannot record the registration");
            } else {
                tracing::info!(provider = %sel.name, "registered with the update provider");
            }
        }
        Err(e) if is(&e, errors::REGISTRATION_UNSUPPORTED) => {}
        Err(e) => {
            tracing::warn!(provider = %sel.name, error = %e.message, "cannot register with the update provider")
        }
    }
}
