//! A plugin is its kind and its name together (tier 1, plugins compiled into the test):
//! upstream has a `debug` provider and a `debug` application, and both load side by side,
//! each with its own config and state slot, through a restart; dependencies are resolved
//! among plugins of the same kind (for applications, variants too).

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use http_body_util::BodyExt;
use incus_osd::testing::TestApp;
use plugin_api::sdk::{Host, Result};
use plugin_api::{Application, Kind, Provider};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tower::ServiceExt;

#[derive(Serialize, Deserialize, Default, Clone)]
#[serde(default, deny_unknown_fields)]
struct ProviderConfig {
    server: String,
}

/// An update provider named `debug` with a config.
struct DebugProvider;

impl Provider for DebugProvider {
    const NAME: &'static str = "debug";
    type Config = ProviderConfig;
    type State = Value;
    fn new(_: Host) -> Result<Self> {
        Ok(DebugProvider)
    }
    fn state(&self, _: &ProviderConfig) -> Result<Value> {
        Ok(json!({}))
    }
}

#[derive(Serialize, Deserialize, Default, Clone)]
#[serde(default, deny_unknown_fields)]
struct AppConfig {
    note: String,
}

/// An application named `debug`, like upstream's.
struct DebugApp;

impl Application for DebugApp {
    const NAME: &'static str = "debug";
    type Config = AppConfig;
    fn new(_: Host) -> Result<Self> {
        Ok(DebugApp)
    }
}

async fn call(r: &Router, method: &str, uri: &str, body: &str) -> (u16, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = r.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn both() -> TestApp {
    TestApp::new()
        .provider::<DebugProvider>()
        .application::<DebugApp>()
        .installed("debug", "202601010000")
}

async fn configs(r: &Router) -> (Value, Value) {
    let (s, provider) = call(r, "GET", "/1.0/system/provider", "").await;
    assert_eq!(s, 200, "{provider}");
    let (s, app) = call(r, "GET", "/1.0/applications/debug", "").await;
    assert_eq!(s, 200, "{app}");
    (
        provider["metadata"]["config"].clone(),
        app["metadata"]["config"].clone(),
    )
}

#[tokio::test]
async fn a_debug_provider_and_a_debug_application_each_keep_their_own_config() {
    let (r, app, dir) = both().router();
    assert!(app.registry.get(Kind::Provider, "debug").is_some());
    assert!(app.registry.get(Kind::Application, "debug").is_some());
    assert!(app.registry.get(Kind::Service, "debug").is_none());

    let (s, v) = call(
        &r,
        "PUT",
        "/1.0/system/provider",
        r#"{"config": {"name": "debug", "config": {"server": "https://updates.example"}}}"#,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        &r,
        "PUT",
        "/1.0/applications/debug",
        r#"{"config": {"note": "mine"}}"#,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(&r, "GET", "/1.0/applications", "").await;
    assert_eq!(
        (s, &v["metadata"]),
        (200, &json!(["/1.0/applications/debug"]))
    );

    let want_provider = json!({"name": "debug", "config": {"server": "https://updates.example"}});
    let (provider, application) = configs(&r).await;
    assert_eq!(provider, want_provider);
    assert_eq!(application, json!({"note": "mine"}));

    // One slot each in the state file.
    let on_disk: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("var/lib/incus-os/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        on_disk["plugins"]["provider/debug"],
        json!({"config": {"server": "https://updates.example"}})
    );
    assert_eq!(
        on_disk["plugins"]["application/debug"],
        json!({"config": {"note": "mine"}})
    );
    assert!(on_disk["plugins"].get("debug").is_none());

    // A restart over the same root: each finds its own again.
    drop((r, app));
    let (r, _app, _dir) = TestApp::reopen(dir)
        .provider::<DebugProvider>()
        .application::<DebugApp>()
        .router();
    let (provider, application) = configs(&r).await;
    assert_eq!(provider, want_provider);
    assert_eq!(application, json!({"note": "mine"}));
}

/// The upstream application that depends on `incus` (as `incus-ceph` does).
struct NeedsIncus;

impl Application for NeedsIncus {
    const NAME: &'static str = "needs-incus";
    const DEPENDENCIES: &'static [&'static str] = &["incus"];
    type Config = AppConfig;
    fn new(_: Host) -> Result<Self> {
        Ok(NeedsIncus)
    }
}

fn application<T: Application>(
    t: TestApp,
    edit: impl FnOnce(&mut plugin_api::Manifest),
) -> TestApp {
    let mut m = plugin_api::sdk::__application_manifest::<T>("1.0.0", plugin_api::API_VERSION);
    edit(&mut m);
    m.validate().unwrap();
    t.add(m, plugin_api::sdk::__application_instance::<T>)
}

#[tokio::test]
async fn an_application_dependency_is_met_by_an_application_or_its_variant_only() {
    // `incus` as a variant of the application named `incus-lts`: met, and started first.
    let t = application::<DebugApp>(TestApp::new(), |m| {
        m.name = "incus-lts".into();
        m.variants = vec!["incus".into()];
        m.start_weight = 10;
    });
    let (app, _d) = application::<NeedsIncus>(t, |_| {}).build();
    assert!(
        app.registry.failures().is_empty(),
        "{:?}",
        app.registry.failures()
    );
    let needs = app.registry.get(Kind::Application, "needs-incus").unwrap();
    let dep = app.registry.dependency(needs, "incus").unwrap();
    assert_eq!(dep.id(), (Kind::Application, "incus-lts".to_string()));
    let order: Vec<String> = app
        .registry
        .start_order()
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    assert_eq!(order, ["incus-lts", "needs-incus"]);

    // A provider named `incus` does not meet an application's dependency: refused, and the
    // failure says which kind it is and which kind was missing.
    struct IncusProvider;
    impl Provider for IncusProvider {
        const NAME: &'static str = "incus";
        type Config = ProviderConfig;
        type State = Value;
        fn new(_: Host) -> Result<Self> {
            Ok(IncusProvider)
        }
        fn state(&self, _: &ProviderConfig) -> Result<Value> {
            Ok(json!({}))
        }
    }
    let (app, _d) = TestApp::new()
        .provider::<IncusProvider>()
        .application::<NeedsIncus>()
        .build();
    assert!(app.registry.get(Kind::Application, "needs-incus").is_none());
    assert!(app.registry.get(Kind::Provider, "incus").is_some());
    let failures = serde_json::to_value(app.registry.failures()).unwrap();
    assert_eq!(failures[0]["name"], "needs-incus");
    assert_eq!(failures[0]["kind"], "application");
    assert_eq!(
        failures[0]["reason"],
        "missing dependency: application plugin 'incus' is not loaded"
    );
}

#[tokio::test]
async fn the_plugin_listing_shows_each_plugins_kind() {
    let (r, _app, _d) = both().router();
    let (s, v) = call(&r, "GET", "/1.0/plugins", "").await;
    assert_eq!(s, 200, "{v}");
    let loaded: Vec<(String, String)> = v["metadata"]["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_string(),
                p["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        loaded,
        [
            ("application".to_string(), "debug".to_string()),
            ("provider".to_string(), "debug".to_string())
        ]
    );
}

/// A start hook that killed the daemon leaves out that plugin only, not the one of the
/// other kind with the same name.
#[tokio::test]
async fn a_start_marker_names_the_plugins_kind() {
    let t = both().not_ready();
    let markers = t.root().join("var/lib/incus-os/starting");
    std::fs::create_dir_all(&markers).unwrap();
    std::fs::write(markers.join("provider:debug"), b"").unwrap();
    let (app, _d) = t.build();
    incus_osd::lifecycle::start_plugins(&app).await;
    let provider = app.registry.get(Kind::Provider, "debug").unwrap();
    let application = app.registry.get(Kind::Application, "debug").unwrap();
    assert_eq!(provider.run_state(), incus_osd::plugins::Run::NotStarted);
    assert!(provider.degraded().is_some());
    assert_eq!(application.run_state(), incus_osd::plugins::Run::Started);
    assert!(application.degraded().is_none());
    assert!(!markers.join("provider:debug").exists());
}
