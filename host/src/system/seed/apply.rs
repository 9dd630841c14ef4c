//! What the daemon does with the seeds at start.
//!
//! First start is a machine that never booted successfully and has no network
//! configuration yet (upstream's rule), without an `install` seed (an install medium is not
//! the system it installs). Then:
//! - before the plugins start ([`apply_early`]): the `security` seed's custom CAs (when none
//!   are stored), the `update` seed (an empty channel or frequency keeps the current value;
//!   validated as a PUT);
//! - the `network` seed is the first network configuration ([`first_network`]);
//! - after the plugins started ([`apply_late`]): the `provider` seed, as a PUT.
//!
//! At every start: the `kernel` seed's consoles when the kernel settings have none, and
//! the `services` seed once (a flag in the state remembers it was applied). The
//! `applications` seed chooses what the first update check installs
//! ([`seeded_applications`]); `incus`, `migration-manager` and `operations-center` are
//! handed to those applications when they initialize ([`for_application`]).
//!
//! A bad seed is logged at error (naming the seed, its file and the field) and not applied;
//! the daemon goes on.

use std::sync::Arc;

use plugin_api::{Hook, Kind};
use serde_json::Value;

use super::types::*;
use super::{Seed, Seeds};
use crate::api::App;
use crate::state::Document;
use crate::system::network::model::SystemNetworkConfig;

/// Upstream's first-start rule (the `install` seed is checked separately).
pub fn is_first_start(doc: &Document) -> bool {
    !doc.os.successful_boot && doc.system.network.config.is_none()
}

/// The first-start actions apply: first start, and not an install medium.
pub fn first_start_applies(app: &App) -> bool {
    app.first_start && !app.seeds.has(InstallSeed::NAME)
}

/// Seed `T`, or `None` with the error logged when it is present but bad.
pub fn get<T: Seed>(seeds: &Seeds) -> Option<T> {
    match seeds.get::<T>() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(seed = %e.seed, file = %e.file, error = %e.message, "bad seed, not applied: {e}");
            None
        }
    }
}

/// Logs a seed that could not be applied.
fn failed(seed: &str, error: &str) {
    tracing::error!(seed, error, "cannot apply the {seed} seed");
}

/// Before the plugins start.
pub fn apply_early(app: &App) {
    if !app.seeds.is_empty() {
        tracing::info!(source = %app.seeds.source, "seeds found");
    }
    apply_kernel(app);
    if !first_start_applies(app) {
        return;
    }
    apply_security(app);
    apply_update(app);
}

fn apply_kernel(app: &App) {
    let Some(seed) = get::<KernelSeed>(&app.seeds) else {
        return;
    };
    if seed.console.is_empty() || !app.with_state(|s| s.doc().system.kernel.console.is_empty()) {
        return;
    }
    if let Err(e) = app.with_state(|s| s.update(|d| d.system.kernel.console = seed.console)) {
        failed(KernelSeed::NAME, &e.to_string());
    }
}

fn apply_security(app: &App) {
    let Some(seed) = get::<SecuritySeed>(&app.seeds) else {
        return;
    };
    let certs = seed.config.custom_ca_certs.clone();
    let result = seed
        .check()
        .and_then(|()| crate::system::security::check_ca_certs(&certs));
    if let Err(e) = result {
        return failed(SecuritySeed::NAME, &e);
    }
    if certs.is_empty()
        || !app.with_state(|s| s.doc().system.security.config.custom_ca_certs.is_empty())
    {
        return;
    }
    if let Err(e) = crate::system::security::write_trust_store(&app.root, &certs) {
        return failed(SecuritySeed::NAME, &e);
    }
    match app.with_state(|s| s.update(|d| d.system.security.config.custom_ca_certs = certs)) {
        Ok(()) => tracing::info!("custom CA certificates from the security seed"),
        Err(e) => failed(SecuritySeed::NAME, &e.to_string()),
    }
}

fn apply_update(app: &App) {
    let Some(seed) = get::<UpdateSeed>(&app.seeds) else {
        return;
    };
    let existing = app.with_state(|s| s.doc().system.update.config.clone());
    let merged = match crate::system::update::config::merge_seed(&existing, seed.config) {
        Ok(m) => m,
        Err(e) => return failed(UpdateSeed::NAME, &e),
    };
    if let Err(e) = app.with_state(|s| s.update(|d| d.system.update.config = merged)) {
        failed(UpdateSeed::NAME, &e.to_string());
    }
}

/// The network configuration of a never-configured machine: the `network` seed (on first
/// start; its NIC list is the default one when it defines no device, its time zone UTC
/// when it has none), else every NIC on DHCP. `nics` are the NICs' names and MACs.
pub fn first_network(
    seed: Option<SystemNetworkConfig>,
    nics: &[(String, String)],
) -> Option<SystemNetworkConfig> {
    let defaults = || {
        SystemNetworkConfig::default_for_nics(nics.iter().map(|(n, m)| (n.as_str(), m.as_str())))
    };
    match seed {
        Some(mut config) => {
            if !config.has_devices() {
                let d = defaults();
                config.interfaces = d.interfaces;
            }
            config.fill_default_timezone();
            Some(config)
        }
        None if nics.is_empty() => None,
        None => Some(defaults()),
    }
}

/// The `network` seed's configuration, when the first-start actions apply.
pub fn network_seed(app: &App) -> Option<SystemNetworkConfig> {
    if !first_start_applies(app) {
        return None;
    }
    get::<NetworkSeed>(&app.seeds).map(|s| s.config)
}

/// After the plugins started, before the provider registers.
pub async fn apply_late(app: &Arc<App>) {
    apply_services(app).await;
    if first_start_applies(app) {
        apply_provider(app).await;
    }
}

async fn apply_provider(app: &App) {
    let Some(seed) = get::<ProviderSeed>(&app.seeds) else {
        return;
    };
    let config = seed
        .config
        .filter(|c| !c.is_null())
        .unwrap_or_else(|| Value::Object(Default::default()));
    match crate::system::provider::put(app, &seed.name, config).await {
        Ok(()) => tracing::info!(provider = %seed.name, "update provider from the provider seed"),
        Err(e) => failed(ProviderSeed::NAME, &e.message),
    }
}

/// The `services` seed, once: each service's configuration through its PUT. The flag is
/// set once every seeded service took its configuration.
async fn apply_services(app: &App) {
    if app.with_state(|s| s.doc().system.services_seed_applied) {
        return;
    }
    let Some(seed) = get::<ServicesSeed>(&app.seeds) else {
        return;
    };
    let mut all = true;
    for (name, config) in seed.configs() {
        let Some(plugin) = app.registry.get(Kind::Service, name) else {
            failed(
                ServicesSeed::NAME,
                &format!("service '{name}' is not available"),
            );
            all = false;
            continue;
        };
        if !plugin.manifest.has(Hook::Put) {
            failed(
                ServicesSeed::NAME,
                &format!("service '{name}' has no configuration"),
            );
            all = false;
            continue;
        }
        // The PUT's body: the configuration under `config`, as a client sends it.
        let body = serde_json::to_vec(&serde_json::json!({ "config": config })).unwrap_or_default();
        match plugin.hook(Hook::Put, body.into()).await {
            Ok(_) => tracing::info!(service = name, "service configured from the services seed"),
            Err(e) => {
                failed(
                    ServicesSeed::NAME,
                    &format!("service '{name}': {}", e.message),
                );
                all = false;
            }
        }
    }
    if all {
        if let Err(e) = app.with_state(|s| s.update(|d| d.system.services_seed_applied = true)) {
            failed(ServicesSeed::NAME, &e.to_string());
        }
    }
}

/// The applications a new system installs: the `applications` seed's list, with
/// `default_primary` added when it names no primary application. More than one primary is
/// a bad seed (logged): the default alone then. `is_primary` tells whether a name is a
/// primary application (`None`: no such application).
pub fn seeded_applications(
    seeds: &Seeds,
    default_primary: &str,
    is_primary: impl Fn(&str) -> Option<bool>,
) -> Vec<String> {
    let listed: Vec<String> = get::<ApplicationsSeed>(seeds)
        .map(|s| s.applications.into_iter().map(|a| a.name).collect())
        .unwrap_or_default();
    let primaries: Vec<&String> = listed
        .iter()
        .filter(|n| is_primary(n) == Some(true))
        .collect();
    if primaries.len() > 1 {
        let names: Vec<&str> = primaries.iter().map(|s| s.as_str()).collect();
        failed(
            ApplicationsSeed::NAME,
            &format!(
                "at most one primary application may be listed, got {}",
                names.join(", ")
            ),
        );
        return vec![default_primary.to_string()];
    }
    let mut out = vec![];
    if primaries.is_empty() {
        out.push(default_primary.to_string());
    }
    for n in listed {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// The seed an application reads when it initializes (`incus`, `migration-manager`,
/// `operations-center`; `None` for the others or when absent). A bad seed is logged and
/// not handed over.
pub fn for_application(seeds: &Seeds, name: &str) -> Option<Value> {
    let seed = if name.starts_with("incus-lts") {
        IncusSeed::NAME
    } else {
        name
    };
    let good = match seed {
        IncusSeed::NAME => get::<IncusSeed>(seeds).is_some(),
        MigrationManagerSeed::NAME => get::<MigrationManagerSeed>(seeds).is_some(),
        OperationsCenterSeed::NAME => get::<OperationsCenterSeed>(seeds).is_some(),
        _ => false,
    };
    if !good {
        return None;
    }
    seeds.raw(seed).ok().flatten().map(Value::Object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds(files: &[(&str, &str)]) -> Seeds {
        Seeds::from_files(
            "test",
            files
                .iter()
                .map(|(n, c)| (n.to_string(), c.as_bytes().to_vec())),
        )
    }

    fn nics() -> Vec<(String, String)> {
        vec![("eth0".into(), "00:16:3e:00:00:01".into())]
    }

    #[test]
    fn the_network_seed_gets_the_default_nics_and_utc_when_it_lacks_them() {
        let seed: NetworkSeed = seeds(&[("network.yaml", "dns:\n  hostname: host1\n")])
            .get()
            .unwrap()
            .unwrap();
        let c = first_network(Some(seed.config), &nics()).unwrap();
        assert_eq!(c.interfaces.len(), 1);
        assert_eq!(c.interfaces[0].name, "eth0");
        assert_eq!(c.interfaces[0].addresses, ["dhcp4", "slaac"]);
        assert_eq!(c.time.unwrap().timezone, "UTC");
        assert_eq!(c.dns.unwrap().hostname, "host1");

        // A seed with devices keeps them, and its time zone.
        let seed: NetworkSeed = seeds(&[(
            "network.yaml",
            "interfaces:\n  - name: uplink\n    hwaddr: 00:16:3e:00:00:02\n    addresses: [10.0.0.2/24]\ntime:\n  timezone: Europe/Paris\n",
        )])
        .get()
        .unwrap()
        .unwrap();
        let c = first_network(Some(seed.config), &nics()).unwrap();
        assert_eq!(c.interfaces.len(), 1);
        assert_eq!(c.interfaces[0].name, "uplink");
        assert_eq!(c.time.unwrap().timezone, "Europe/Paris");

        // No seed: every NIC on DHCP; no NIC, nothing.
        assert_eq!(first_network(None, &nics()).unwrap().interfaces.len(), 1);
        assert_eq!(first_network(None, &[]), None);
    }

    fn primary(n: &str) -> Option<bool> {
        match n {
            "incus" | "migration-manager" | "operations-center" => Some(true),
            "gpu-support" | "openfga" => Some(false),
            _ => None,
        }
    }

    #[test]
    fn the_applications_seed_gets_incus_when_it_names_no_primary() {
        assert_eq!(
            seeded_applications(&Seeds::default(), "incus", primary),
            ["incus"]
        );
        let s = seeds(&[(
            "applications.yaml",
            "applications:\n  - name: gpu-support\n",
        )]);
        assert_eq!(
            seeded_applications(&s, "incus", primary),
            ["incus", "gpu-support"]
        );
        let s = seeds(&[(
            "applications.json",
            r#"{"applications": [{"name": "openfga"}, {"name": "operations-center"}]}"#,
        )]);
        assert_eq!(
            seeded_applications(&s, "incus", primary),
            ["openfga", "operations-center"]
        );
    }

    #[test]
    fn two_primaries_or_a_bad_seed_fall_back_to_the_default() {
        let s = seeds(&[(
            "applications.yaml",
            "applications:\n  - name: incus\n  - name: migration-manager\n",
        )]);
        assert_eq!(seeded_applications(&s, "incus", primary), ["incus"]);
        let s = seeds(&[("applications.yaml", "apps: []\n")]);
        assert_eq!(seeded_applications(&s, "incus", primary), ["incus"]);
    }

    #[test]
    fn applications_get_their_own_seed_only_when_it_is_good() {
        let s = seeds(&[
            (
                "incus.yaml",
                "apply_defaults: true\npreseed:\n  networks: []\n",
            ),
            ("migration-manager.json", r#"{"colour": 1}"#),
        ]);
        assert_eq!(
            for_application(&s, "incus"),
            Some(serde_json::json!({"apply_defaults": true, "preseed": {"networks": []}}))
        );
        assert_eq!(
            for_application(&s, "incus-lts-7.0"),
            for_application(&s, "incus")
        );
        assert_eq!(for_application(&s, "migration-manager"), None);
        assert_eq!(for_application(&s, "operations-center"), None);
        assert_eq!(for_application(&s, "gpu-support"), None);
    }
}
