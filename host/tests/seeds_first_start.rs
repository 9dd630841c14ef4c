//! Seeds applied at start (tier 1): the security, update and kernel seeds before the
//! plugins, the services seed once, the provider seed, and what decides that it is a first
//! start, on a test app (the lookup itself is tested in `system::seed`, the real media in
//! `tier3_factory_reset.rs`).

use incus_osd::system::seed::apply;
use incus_osd::system::seed::Seeds;
use incus_osd::testing::TestApp;
use plugin_api::sdk::{Error, Host, Result};
use plugin_api::Service;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

fn seeds(files: &[(&str, &str)]) -> Seeds {
    Seeds::from_files(
        "test",
        files
            .iter()
            .map(|(n, c)| (n.to_string(), c.as_bytes().to_vec())),
    )
}

fn ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

#[test]
fn on_first_start_the_security_update_and_kernel_seeds_are_stored() {
    let pem = ca_pem();
    let security =
        serde_json::to_string(&json!({"version": "1", "custom_ca_certs": [pem]})).unwrap();
    let s = seeds(&[
        ("security.json", &security),
        ("update.yaml", "check_frequency: 12h\nauto_reboot: true\n"),
        (
            "kernel.yaml",
            "console:\n  - device: ttyS0\n    baud_rate: 115200\n",
        ),
    ]);
    let (app, root) = TestApp::new().seeds(s, true).build();
    let before = app.with_state(|st| st.doc().system.update.config.clone());
    apply::apply_early(&app);
    let doc = app.with_state(|st| st.doc().clone());
    assert_eq!(
        doc.system.security.config.custom_ca_certs,
        vec![pem.clone()]
    );
    let bundle =
        std::fs::read_to_string(root.path().join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(bundle.contains(pem.trim()), "{bundle}");
    // An empty channel keeps the current one.
    assert_eq!(doc.system.update.config.channel, before.channel);
    assert_eq!(doc.system.update.config.check_frequency, "12h");
    assert!(doc.system.update.config.auto_reboot);
    assert_eq!(doc.system.kernel.console.len(), 1);
    assert_eq!(doc.system.kernel.console[0].device, "ttyS0");
}

#[test]
fn after_first_start_only_the_kernel_consoles_are_taken() {
    let s = seeds(&[
        ("update.yaml", "check_frequency: 12h\n"),
        ("kernel.yaml", "console:\n  - device: tty1\n"),
    ]);
    let (app, _root) = TestApp::new().seeds(s, false).build();
    let before = app.with_state(|st| st.doc().system.update.config.clone());
    apply::apply_early(&app);
    let doc = app.with_state(|st| st.doc().clone());
    assert_eq!(doc.system.update.config, before);
    assert_eq!(doc.system.kernel.console[0].device, "tty1");

    // An install medium is not the system it installs: nothing of the first start.
    let s = seeds(&[
        ("install.yaml", "force_install: true\n"),
        ("update.yaml", "check_frequency: 12h\n"),
    ]);
    let (app, _root) = TestApp::new().seeds(s, true).build();
    apply::apply_early(&app);
    assert_eq!(
        app.with_state(|st| st.doc().system.update.config.clone()),
        before
    );
}

#[test]
fn a_bad_seed_is_not_applied_and_the_others_are() {
    let s = seeds(&[
        (
            "security.yaml",
            "encryption_recovery_keys: [abc]\ncustom_ca_certs: [x]\n",
        ),
        ("update.yaml", "check_frequency: 12h\ncolour: red\n"),
        ("kernel.yaml", "console:\n  - device: ttyS1\n"),
    ]);
    let (app, _root) = TestApp::new().seeds(s, true).build();
    let before = app.with_state(|st| st.doc().clone());
    apply::apply_early(&app);
    let doc = app.with_state(|st| st.doc().clone());
    assert_eq!(doc.system.security.config, before.system.security.config);
    assert_eq!(doc.system.update.config, before.system.update.config);
    assert_eq!(doc.system.kernel.console[0].device, "ttyS1");

    // An update seed that fails the PUT's validation is not applied either.
    let s = seeds(&[("update.yaml", "check_frequency: often\n")]);
    let (app, _root) = TestApp::new().seeds(s, true).build();
    apply::apply_early(&app);
    assert_eq!(
        app.with_state(|st| st.doc().system.update.config.clone()),
        before.system.update.config
    );
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct IscsiConfig {
    enabled: bool,
    target: String,
}

struct Iscsi;

impl Service for Iscsi {
    const NAME: &'static str = "iscsi";
    type Config = IscsiConfig;
    type State = Value;
    fn new(_: Host) -> Result<Self> {
        Ok(Iscsi)
    }
    fn state(&self, _: &IscsiConfig) -> Result<Value> {
        Ok(json!({}))
    }
    fn validate(&self, c: &IscsiConfig) -> Result<()> {
        if c.target.contains(' ') {
            return Err(Error::bad_request("no spaces"));
        }
        Ok(())
    }
    fn enabled(c: &IscsiConfig) -> bool {
        c.enabled
    }
}

async fn iscsi_config(r: &axum::Router) -> Value {
    let (status, body) = incus_osd::testing::call(r, "GET", "/1.0/services/iscsi", "").await;
    assert_eq!(status, 200, "{body}");
    body["metadata"]["config"].clone()
}

#[tokio::test]
async fn the_services_seed_is_applied_once() {
    let s = seeds(&[("services.yaml", "iscsi:\n  target: iqn.x\n")]);
    let (r, app, root) = TestApp::new().seeds(s, false).service::<Iscsi>().router();
    apply::apply_late(&app).await;
    assert_eq!(iscsi_config(&r).await["target"], "iqn.x");
    assert!(app.with_state(|st| st.doc().system.services_seed_applied));

    // Changed afterwards by the user: a later start leaves it alone.
    let (status, body) = incus_osd::testing::call(
        &r,
        "PUT",
        "/1.0/services/iscsi",
        r#"{"config": {"target": "iqn.user"}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    drop((r, app));
    let s = seeds(&[("services.yaml", "iscsi:\n  target: iqn.x\n")]);
    let (r, app, _root) = TestApp::reopen(root)
        .seeds(s, false)
        .service::<Iscsi>()
        .router();
    apply::apply_late(&app).await;
    assert_eq!(iscsi_config(&r).await["target"], "iqn.user");
}

#[tokio::test]
async fn a_services_seed_a_service_refuses_is_tried_again_at_the_next_start() {
    let s = seeds(&[("services.yaml", "iscsi:\n  target: has spaces\n")]);
    let (r, app, _root) = TestApp::new().seeds(s, false).service::<Iscsi>().router();
    apply::apply_late(&app).await;
    assert_eq!(iscsi_config(&r).await["target"], "");
    assert!(!app.with_state(|st| st.doc().system.services_seed_applied));
}

#[test]
fn first_start_is_no_successful_boot_and_no_network_configuration() {
    let (app, _root) = TestApp::new().build();
    let mut doc = app.with_state(|st| st.doc().clone());
    assert!(apply::is_first_start(&doc));
    doc.os.successful_boot = true;
    assert!(!apply::is_first_start(&doc));
    doc.os.successful_boot = false;
    doc.system.network.config = Some(Default::default());
    assert!(!apply::is_first_start(&doc));
}

/// An application that notes the seed its initialize hook gets.
struct Seeded {
    host: Host,
}

impl plugin_api::Application for Seeded {
    const NAME: &'static str = "incus";
    const PRIMARY: bool = true;
    const PATHS: &'static [&'static str] = &["/var/log/seeded"];
    type Config = Value;
    fn new(host: Host) -> Result<Self> {
        Ok(Seeded { host })
    }
    fn initialize(&self, ctx: &plugin_api::application::AppContext, _: &Value) -> Result<()> {
        let text = serde_json::to_string(&ctx.seed).unwrap();
        self.host
            .write_file("/var/log/seeded", text.as_bytes(), 0o644)
    }
}

#[tokio::test]
async fn an_application_gets_its_own_seed_when_it_initializes() {
    use incus_osd::system::applications::manage;
    let s = seeds(&[
        (
            "incus.yaml",
            "apply_defaults: true\npreseed:\n  networks: []\n",
        ),
        ("network.yaml", "dns:\n  hostname: x\n"),
    ]);
    let (app, root) = TestApp::new()
        .seeds(s, true)
        .application::<Seeded>()
        .installed("incus", "202511041601")
        .build();
    let plugin = manage::find(&app, "incus").unwrap();
    manage::start_initialize(&app, &plugin).await.unwrap();
    let got = std::fs::read_to_string(root.path().join("var/log/seeded")).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&got).unwrap(),
        json!({"apply_defaults": true, "preseed": {"networks": []}})
    );

    // A bad seed is not handed over: the application initializes as without one.
    let s = seeds(&[("incus.yaml", "apply_defaults: maybe\n")]);
    let (app, root) = TestApp::new()
        .seeds(s, true)
        .application::<Seeded>()
        .installed("incus", "202511041601")
        .build();
    let plugin = manage::find(&app, "incus").unwrap();
    manage::start_initialize(&app, &plugin).await.unwrap();
    let got = std::fs::read_to_string(root.path().join("var/log/seeded")).unwrap();
    assert_eq!(got, "null");
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct SiteConfig {
    server_url: String,
}

struct Site;

impl plugin_api::Provider for Site {
    const NAME: &'static str = "site";
    type Config = SiteConfig;
    type State = Value;
    fn new(_: Host) -> Result<Self> {
        Ok(Site)
    }
    fn state(&self, _: &SiteConfig) -> Result<Value> {
        Ok(json!({}))
    }
}

#[tokio::test]
async fn on_first_start_the_provider_seed_selects_and_configures_the_provider() {
    let s = seeds(&[(
        "provider.yaml",
        "name: site\nconfig:\n  server_url: https://updates.example\n",
    )]);
    let (r, app, _root) = TestApp::new().seeds(s, true).provider::<Site>().router();
    apply::apply_late(&app).await;
    assert_eq!(
        app.with_state(|st| st.doc().system.provider.name.clone()),
        "site"
    );
    let (status, body) = incus_osd::testing::call(&r, "GET", "/1.0/system/provider", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["metadata"]["config"]["name"], "site", "{body}");
    assert_eq!(
        body["metadata"]["config"]["config"]["server_url"], "https://updates.example",
        "{body}"
    );

    // Not the first start: the stored selection stays.
    let s = seeds(&[("provider.yaml", "name: site\n")]);
    let (_r, app, _root) = TestApp::new().seeds(s, false).provider::<Site>().router();
    let before = app.with_state(|st| st.doc().system.provider.name.clone());
    apply::apply_late(&app).await;
    assert_eq!(
        app.with_state(|st| st.doc().system.provider.name.clone()),
        before
    );
    assert_ne!(before, "site");
}
