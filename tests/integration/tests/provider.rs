//! `/1.0/system/provider` on the daemon with provider plugins as built: selecting a
//! provider, switching between two, and every failure point of a switch leaving the old
//! selection, its config and its registration as they were.

use incus_osd_integration::{get_ok, request, Daemon, Root};
use serde_json::{json, Value};

fn root_with_providers() -> Root {
    let root = Root::new();
    root.install_fixture("provider", "fixture");
    root.install_fixture("provider_b", "fixture_b");
    root
}

async fn put(d: &Daemon, body: Value) -> (u16, Value) {
    request(&d.socket, "PUT", "/1.0/system/provider", &body.to_string()).await
}

async fn calls(d: &Daemon, name: &str) -> Vec<String> {
    let v = get_ok(&d.socket, &format!("/1.0/system/provider/{name}/calls")).await;
    serde_json::from_value(v).unwrap()
}

/// Selects `fixture` with `config` and checks the answer.
async fn select(d: &Daemon, name: &str, config: Value) {
    let (status, v) = put(d, json!({"config": {"name": name, "config": config}})).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn a_fresh_system_shows_upstreams_default_selection() {
    let root = root_with_providers();
    let d = Daemon::start(&root, &[]);
    let v = get_ok(&d.socket, "/1.0/system/provider").await;
    assert_eq!(
        v,
        json!({"config": {"name": "images"}, "state": {"registered": false}})
    );
}

#[tokio::test]
async fn bad_requests_get_upstreams_texts_and_change_nothing() {
    let root = root_with_providers();
    let d = Daemon::start(&root, &[]);
    select(&d, "fixture", json!({})).await;
    let before = get_ok(&d.socket, "/1.0/system/provider").await;

    let (s, v) = put(&d, json!({"config": {"name": ""}})).await;
    assert_eq!(
        (s, v["error"].as_str().unwrap()),
        (400, "a provider name must be specified")
    );
    let (s, v) = put(&d, json!({})).await;
    assert_eq!(
        (s, v["error"].as_str().unwrap()),
        (400, "a provider name must be specified")
    );
    let (s, v) = put(&d, json!({"config": {"name": "nope"}})).await;
    assert_eq!(
        (s, v["error"].as_str().unwrap()),
        (500, "unknown provider \"nope\"")
    );
    let (s, _) = request(&d.socket, "PUT", "/1.0/system/provider", "").await;
    assert_eq!(s, 400, "an empty body is refused (strict decode)");
    let (s, _) = request(&d.socket, "PUT", "/1.0/system/provider", "[1]").await;
    assert_eq!(s, 400);
    // A config the provider refuses: its 400, and the old config stays.
    let (s, v) = put(
        &d,
        json!({"config": {"name": "fixture", "config": {"refuse": "no way"}}}),
    )
    .await;
    assert_eq!((s, v["error"].as_str().unwrap()), (400, "no way"));
    assert_eq!(get_ok(&d.socket, "/1.0/system/provider").await, before);
    let (s, _) = request(&d.socket, "POST", "/1.0/system/provider", "{}").await;
    assert_eq!(s, 501);
}

#[tokio::test]
async fn switching_deregisters_the_old_provider_and_registers_the_new_one() {
    let root = root_with_providers();
    let d = Daemon::start(&root, &[]);
    select(&d, "fixture", json!({})).await;
    let v = get_ok(&d.socket, "/1.0/system/provider").await;
    assert_eq!(v["state"]["registered"], true);
    assert_eq!(calls(&d, "fixture").await, ["put", "register"]);

    // Same provider again: a refresh, not a second registration.
    select(&d, "fixture", json!({"contents": {"a": "b"}})).await;
    assert_eq!(
        calls(&d, "fixture").await,
        ["put", "register", "put", "refresh:"]
    );
    let v = get_ok(&d.socket, "/1.0/system/provider").await;
    assert_eq!(v["config"]["config"], json!({"contents": {"a": "b"}}));

    select(&d, "fixture-b", json!({})).await;
    assert_eq!(calls(&d, "fixture").await.last().unwrap(), "deregister");
    assert_eq!(calls(&d, "fixture-b").await, ["put", "register"]);
    let v = get_ok(&d.socket, "/1.0/system/provider").await;
    assert_eq!(v["config"]["name"], "fixture-b");
    assert_eq!(v["state"]["registered"], true);

    // The selection survives a restart.
    drop(d);
    let d = Daemon::start(&root, &[]);
    let v = get_ok(&d.socket, "/1.0/system/provider").await;
    assert_eq!(v["config"]["name"], "fixture-b");
    assert_eq!(v["state"]["registered"], true);
}

#[tokio::test]
async fn a_provider_that_cannot_register_is_selected_unregistered() {
    let root = root_with_providers();
    let d = Daemon::start(&root, &[]);
    select(
        &d,
        "fixture",
        json!({"register_error": "registration unsupported"}),
    )
    .await;
    let v = get_ok(&d.socket, "/1.0/system/provider").await;
    assert_eq!(v["config"]["name"], "fixture");
    assert_eq!(v["state"]["registered"], false);
}

#[tokio::test]
async fn a_provider_that_cannot_be_left_keeps_the_selection() {
    let root = root_with_providers();
    let d = Daemon::start(&root, &[]);
    select(
        &d,
        "fixture",
        json!({"deregister_error": "deregistration unsupported"}),
    )
    .await;
    let before = get_ok(&d.socket, "/1.0/system/provider").await;
    let (s, v) = put(&d, json!({"config": {"name": "fixture-b"}})).await;
    assert_eq!(
        (s, v["error"].as_str().unwrap()),
        (500, "deregistration unsupported")
    );
    assert_eq!(get_ok(&d.socket, "/1.0/system/provider").await, before);
    assert!(
        calls(&d, "fixture-b").await.is_empty(),
        "the new provider was never touched"
    );
}

#[tokio::test]
async fn a_failed_registration_puts_everything_back() {
    let root = root_with_providers();
    let d = Daemon::start(&root, &[]);
    select(&d, "fixture", json!({"contents": {"keep": "me"}})).await;
    select(&d, "fixture-b", json!({"contents": {"old": "config"}})).await;
    select(&d, "fixture", json!({"contents": {"keep": "me"}})).await;
    let before = get_ok(&d.socket, "/1.0/system/provider").await;

    // fixture-b now refuses to register: the switch fails after fixture deregistered and
    // fixture-b's config was replaced.
    let (s, v) = put(
        &d,
        json!({"config": {"name": "fixture-b", "config": {"register_error": "server said no"}}}),
    )
    .await;
    assert_eq!((s, v["error"].as_str().unwrap()), (500, "server said no"));
    assert_eq!(get_ok(&d.socket, "/1.0/system/provider").await, before);
    // The old provider was registered again; fixture-b has its previous config back.
    let fixture = calls(&d, "fixture").await;
    assert_eq!(&fixture[fixture.len() - 2..], ["deregister", "register"]);
    let state: Value = serde_json::from_slice(&std::fs::read(root.state_file()).unwrap()).unwrap();
    assert_eq!(
        state["plugins"]["provider/fixture-b"]["config"],
        json!({"contents": {"old": "config"}})
    );
}

/// `tests/fixtures/older-provider` is built against the frozen 1.1 contract, before
/// providers had typed update operations: it loads, it is selected and registered (its
/// 1.1 hook), its config round-trips, and an update check says clearly why it cannot use
/// it.
#[tokio::test]
async fn a_provider_built_for_plugin_api_1_1_is_selected_and_checks_say_what_it_lacks() {
    let root = Root::new();
    root.install_fixture("older_provider", "older_provider");
    let d = Daemon::start(&root, &[]);
    assert!(d
        .log()
        .contains("older-provider: built against plugin-api 1.1.0"));
    select(&d, "older-provider", json!({"greeting": "hi"})).await;
    let v = get_ok(&d.socket, "/1.0/system/provider").await;
    assert_eq!(
        v,
        json!({"config": {"name": "older-provider", "config": {"greeting": "hi"}},
               "state": {"registered": true}})
    );
    assert!(d.log().contains("older-provider: registered hi"));
    // Selected again: no refresh to call (a 1.1 provider has none), still registered.
    select(&d, "older-provider", json!({"greeting": "again"})).await;
    let (s, v) = request(
        &d.socket,
        "POST",
        "/1.0/system/update/:check",
        r#"{"os_only": true}"#,
    )
    .await;
    assert_eq!(s, 500);
    assert_eq!(
        v["error"],
        "Failed to load the update provider: provider older-provider cannot look up updates: \
         it was built for plugin-api 1.1.0, and lookups came in 1.2"
    );
}

/// Waits until `GET /1.0/system/update` shows `status`.
async fn wait_status(d: &Daemon, status: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let v = get_ok(&d.socket, "/1.0/system/update").await;
        if v["state"]["status"] == status {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status never became {status:?}: {v}\n{}",
            d.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The checker loop runs a user-requested full check: the provider's cache is cleared, the
/// installed application's newer image lands in `/var/lib/incus-os-extensions/<version>/`,
/// the OS is looked up on the configured channel, and `last_check` is recorded.
#[tokio::test]
async fn a_requested_check_fetches_application_images_and_looks_up_the_os() {
    let root = root_with_providers();
    // An installed application (a fixture named `debug`), as an install leaves it.
    root.install_fixture("app_debug", "app_debug");
    root.install_application("debug", "202501010000");
    let d = Daemon::start(&root, &[]);
    let release = json!({"version": "202601010000", "files": [
        {"component": "debug", "type": "application", "filename": "x86_64/debug.raw.gz"}]});
    // A stand-in image the host's check takes: a GPT signature at 512.
    let image = format!("{}EFI PART", " ".repeat(512));
    select(
        &d,
        "fixture",
        json!({"applications": {"debug": release}, "contents": {"debug.raw": image}}),
    )
    .await;
    let (s, v) = request(
        &d.socket,
        "PUT",
        "/1.0/system/update",
        &json!({"config": {"channel": "testing", "check_frequency": "never"}}).to_string(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = request(&d.socket, "POST", "/1.0/system/update/:check", "").await;
    assert_eq!(s, 200);
    let v = wait_status(&d, "Update check completed").await;
    assert_ne!(v["state"]["last_check"], "0001-01-01T00:00:00Z");
    let calls = calls(&d, "fixture").await;
    let after_put: Vec<&str> = calls
        .iter()
        .map(String::as_str)
        .skip_while(|c| *c != "register")
        .skip(1)
        .collect();
    assert_eq!(
        after_put,
        [
            "clear-cache",
            "lookup:application/debug:testing",
            "fetch:202601010000",
            "lookup:os:testing"
        ],
        "{}",
        d.log()
    );
    let path = root
        .path()
        .join("var/lib/incus-os-extensions/202601010000/debug.raw");
    assert_eq!(std::fs::read_to_string(path).unwrap(), image);
    // Offline (a development root), the merge is refused: the record stays at the merged
    // version, and the image is kept for the next try.
    let app = get_ok(&d.socket, "/1.0/applications/debug").await;
    assert_eq!(
        app["state"]["version"],
        "202501010000",
        "{app}\n{}",
        d.log()
    );
}

/// A machine not registered with its selected provider registers at start, as upstream's
/// last start-up step does.
#[tokio::test]
async fn an_unregistered_machine_registers_at_start() {
    let root = root_with_providers();
    let d = Daemon::start(&root, &[]);
    // The server could not take the registration then: selected, not registered.
    select(
        &d,
        "fixture",
        json!({"register_error": "registration unsupported"}),
    )
    .await;
    let v = get_ok(&d.socket, "/1.0/system/provider").await;
    assert_eq!(v["state"]["registered"], false);
    drop(d);
    // Now it can (the provider's config, as its plugin stores it, changed meanwhile).
    let path = root.state_file();
    let mut state: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    state["plugins"]["provider/fixture"]["config"] = json!({});
    std::fs::write(&path, state.to_string()).unwrap();

    let d = Daemon::start(&root, &[]);
    let v = get_ok(&d.socket, "/1.0/system/provider").await;
    assert_eq!(v["state"]["registered"], true);
    assert_eq!(calls(&d, "fixture").await[0], "register");
}
