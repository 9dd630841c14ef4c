//! Router tests (tier 1): the real router and state over a temporary root, with plugins
//! compiled into this test through the same SDK adapters a plugin library exports.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use incus_osd::testing::TestApp;
use plugin_api::application::AppContext;
use plugin_api::sdk::{
    ActionFn, Error, Host, ResetFn, Result, RouteRequest, RouteSpec, StreamingBackup, Undo, WipeFn,
};
use plugin_api::{Application, Service};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tower::ServiceExt;

// ---- plugins used by the tests ----------------------------------------------------------

#[derive(Serialize, Deserialize, Default, Clone, PartialEq, Debug)]
#[serde(default)]
struct EchoConfig {
    enabled: bool,
    name: String,
    count: i64,
}

struct Echo {
    host: Host,
}

impl Echo {
    fn reset(&self, _: &mut Undo, _config: &EchoConfig) -> Result<()> {
        self.host.info("echo reset");
        Ok(())
    }
}

impl Service for Echo {
    const NAME: &'static str = "echo";
    const RESET: Option<ResetFn<Self>> = Some(Self::reset);
    const START_WEIGHT: i32 = 5;
    const ROUTES: &'static [RouteSpec] = &[
        RouteSpec {
            method: plugin_api::Method::Post,
            suffix: ":ping",
            op: "ping",
        },
        RouteSpec {
            method: plugin_api::Method::Get,
            suffix: "peers",
            op: "peers",
        },
    ];
    type Config = EchoConfig;
    type State = Value;

    fn new(host: Host) -> Result<Self> {
        Ok(Echo { host })
    }
    fn state(&self, config: &EchoConfig) -> Result<Value> {
        Ok(json!({ "greeting": format!("hello {}", config.name) }))
    }
    fn validate(&self, config: &EchoConfig) -> Result<()> {
        if config.name.contains(' ') {
            return Err(Error::bad_request(format!(
                "invalid name <{}>: no spaces & no fun",
                config.name
            )));
        }
        Ok(())
    }
    fn enabled(config: &EchoConfig) -> bool {
        config.enabled
    }
    fn route(&self, op: &str, request: RouteRequest, config: &EchoConfig) -> Result<Value> {
        Ok(json!({ "op": op, "query": request.query, "body": request.body, "name": config.name }))
    }
}

#[derive(Serialize, Deserialize, Default, Clone)]
struct Empty {}

struct Plain;

impl Service for Plain {
    const NAME: &'static str = "plain";
    type Config = Empty;
    type State = Empty;
    fn new(_: Host) -> Result<Self> {
        Ok(Plain)
    }
    fn state(&self, _: &Empty) -> Result<Empty> {
        Ok(Empty {})
    }
    fn enabled(_: &Empty) -> bool {
        false
    }
}

struct Gated;

impl Service for Gated {
    const NAME: &'static str = "gated";
    const REQUIRES_APPLICATION: Option<&'static str> = Some("incus-ceph");
    type Config = Empty;
    type State = Empty;
    fn new(_: Host) -> Result<Self> {
        Ok(Gated)
    }
    fn state(&self, _: &Empty) -> Result<Empty> {
        Ok(Empty {})
    }
    fn enabled(_: &Empty) -> bool {
        false
    }
}

#[derive(Serialize, Deserialize, Default, Clone)]
#[serde(default)]
struct TroubleConfig {
    panic: bool,
    sleep_ms: u64,
}

/// Counts its own concurrent updates (per instance: tests run side by side).
#[derive(Default)]
struct Trouble {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Service for Trouble {
    const NAME: &'static str = "trouble";
    type Config = TroubleConfig;
    type State = Value;
    fn new(_: Host) -> Result<Self> {
        Ok(Trouble::default())
    }
    fn state(&self, c: &TroubleConfig) -> Result<Value> {
        if c.panic {
            panic!("trouble: deliberate panic");
        }
        Ok(json!({ "max_in_flight": self.max_in_flight.load(Ordering::SeqCst) }))
    }
    fn enabled(_: &TroubleConfig) -> bool {
        false
    }
    fn update(&self, _: &mut Undo, _: &TroubleConfig, new: &TroubleConfig) -> Result<()> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(new.sleep_ms));
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

#[derive(Serialize, Deserialize, Default, Clone)]
#[serde(default)]
struct DemoConfig {
    motd: String,
}

struct Demo {
    host: Host,
}

const DEMO_DATA: &str = "/var/lib/demo/data.txt";

impl Demo {
    fn wipe(&self, _: &AppContext, _: &DemoConfig) -> Result<()> {
        self.host.remove("/var/lib/demo")
    }
    fn action(
        &self,
        _: &DemoConfig,
        action: &str,
        args: &BTreeMap<String, String>,
    ) -> Result<Value> {
        match action {
            "write" => {
                let text = args.get("text").cloned().unwrap_or_default();
                self.host.write_file(DEMO_DATA, text.as_bytes(), 0o600)?;
                Ok(json!({}))
            }
            other => Err(Error::unsupported_action(other)),
        }
    }
    fn backup(&self, _complete: bool, out: &mut dyn Write) -> Result<()> {
        let data = self.host.read_file(DEMO_DATA)?.unwrap_or_default();
        // Large enough to need many chunks.
        for _ in 0..64 {
            out.write_all(&[b'#'; 4096])?;
        }
        out.write_all(&data)?;
        Ok(())
    }
    fn restore(&self, input: &mut dyn Read) -> Result<()> {
        let mut all = vec![];
        input.read_to_end(&mut all)?;
        let data = all
            .get(64 * 4096..)
            .ok_or_else(|| Error::bad_request("archive too short"))?;
        self.host.write_file(DEMO_DATA, data, 0o600)
    }
}

impl Application for Demo {
    const NAME: &'static str = "demo";
    const PRIMARY: bool = true;
    const PATHS: &'static [&'static str] = &["/var/lib/demo"];
    const WIPE: Option<WipeFn<Self>> = Some(Self::wipe);
    const ACTION: Option<ActionFn<Self>> = Some(Self::action);
    // An archive format of its own (not a tar): the host streams it as it is.
    const STREAMING_BACKUP: Option<StreamingBackup<Self>> = Some(StreamingBackup {
        backup: Self::backup,
        restore: Self::restore,
    });
    type Config = DemoConfig;
    fn new(host: Host) -> Result<Self> {
        Ok(Demo { host })
    }
    fn friendly_version(&self, ctx: &AppContext, _: &DemoConfig) -> Result<String> {
        let data = self.host.read_to_string(DEMO_DATA)?.unwrap_or_default();
        Ok(format!("{} ({data})", ctx.version))
    }
}

// ---- helpers ------------------------------------------------------------------------------

fn app() -> TestApp {
    TestApp::new()
        .service::<Echo>()
        .service::<Plain>()
        .service::<Gated>()
        .service::<Trouble>()
        .application::<Demo>()
        .installed("demo", "202511041601")
}

struct Resp {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn metadata(&self) -> Value {
        let v = self.json();
        assert_eq!(v["status_code"], 200, "{v}");
        v["metadata"].clone()
    }
    fn error(&self) -> (u16, String) {
        let v = self.json();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["status_code"], 0);
        assert_eq!(v["error_code"], self.status.as_u16());
        (
            self.status.as_u16(),
            v["error"].as_str().unwrap().to_string(),
        )
    }
}

async fn send(router: &Router, req: Request<Body>) -> Resp {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Resp {
        status,
        headers,
        body,
    }
}

async fn call(router: &Router, method: &str, uri: &str, body: &str) -> Resp {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_string()))
        .unwrap();
    send(router, req).await
}

async fn get(router: &Router, uri: &str) -> Resp {
    call(router, "GET", uri, "").await
}

// ---- envelope and routing -----------------------------------------------------------------

#[tokio::test]
async fn the_envelope_has_every_key_in_order_and_a_trailing_newline() {
    let (r, _, _d) = app().router();
    let resp = get(&r, "/").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.headers["content-type"], "application/json");
    assert_eq!(
        resp.text(),
        "{\"type\":\"sync\",\"status\":\"Success\",\"status_code\":200,\"operation\":\"\",\"error_code\":0,\"error\":\"\",\"metadata\":[\"/1.0\"]}\n"
    );
    let resp = call(&r, "DELETE", "/1.0", "").await;
    assert_eq!(resp.status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(resp.headers["x-content-type-options"], "nosniff");
    assert_eq!(
        resp.text(),
        "{\"type\":\"error\",\"status\":\"\",\"status_code\":0,\"operation\":\"\",\"error_code\":501,\"error\":\"not implemented\",\"metadata\":null}\n"
    );
}

#[tokio::test]
async fn unknown_paths_are_404_for_get_and_501_otherwise() {
    let (r, _, _d) = app().router();
    assert_eq!(
        get(&r, "/1.0/nonexistent").await.error(),
        (404, "not found".into())
    );
    assert_eq!(
        call(&r, "POST", "/1.0/nonexistent", "").await.error(),
        (501, "not implemented".into())
    );
    assert_eq!(
        call(&r, "HEAD", "/1.0", "").await.status,
        StatusCode::NOT_IMPLEMENTED
    );
    // A trailing slash is not a name.
    assert_eq!(get(&r, "/1.0/services/").await.error().0, 404);
    // The /os prefix is not stripped on the socket.
    assert_eq!(get(&r, "/os/1.0").await.error().0, 404);
}

#[tokio::test]
async fn unclean_paths_redirect_to_their_clean_form() {
    let (r, _, _d) = app().router();
    let resp = get(&r, "//1.0/./services?x=1").await;
    assert_eq!(resp.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(resp.headers["location"], "/1.0/services?x=1");
    let resp = get(&r, "/1.0/services/echo/../plain").await;
    assert_eq!(resp.headers["location"], "/1.0/services/plain");
}

#[tokio::test]
async fn list_urls_follow_the_first_proxy_header_value() {
    let (r, _, _d) = app().router();
    let req = |v: &[&str]| {
        let mut b = Request::builder().uri("/1.0/services");
        for x in v {
            b = b.header("X-IncusOS-Proxy", *x);
        }
        b.body(Body::empty()).unwrap()
    };
    assert_eq!(
        send(&r, req(&[])).await.metadata(),
        json!([
            "/1.0/services/echo",
            "/1.0/services/plain",
            "/1.0/services/trouble"
        ])
    );
    assert_eq!(
        send(&r, req(&["/os"])).await.metadata()[0],
        "/os/1.0/services/echo"
    );
    // A proxy appends its value after the client's: the first one wins.
    assert_eq!(
        send(&r, req(&["/", "/os"])).await.metadata()[0],
        "/1.0/services/echo"
    );
    let root = Request::builder()
        .uri("/")
        .header("X-IncusOS-Proxy", "/os")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&r, root).await.metadata(), json!(["/os/1.0"]));
}

#[tokio::test]
async fn internal_paths_refuse_proxied_requests_before_anything_else() {
    let (r, _, _d) = app().router();
    for method in ["GET", "POST", "DELETE"] {
        let req = Request::builder()
            .method(method)
            .uri("/internal/tui/:write-message")
            .header("X-IncusOS-Proxy", "/os")
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(&r, req).await.error(), (403, "not authorized".into()));
    }
    // Only real internal handlers answer 403: an unknown one is a 404, proxied or not.
    let req = Request::builder()
        .uri("/internal/nothing-here")
        .header("X-IncusOS-Proxy", "/os")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&r, req).await.error().0, 404);
}

#[tokio::test]
async fn info_reports_the_root_prefix_identity() {
    let (r, _, _d) = app().router();
    let env = get(&r, "/1.0").await.metadata()["environment"].clone();
    assert_eq!(env["os_name"], "IncusOS");
    assert_eq!(env["os_version"], "202511041601");
    // Nothing staged: the stored next release is empty.
    assert_eq!(env["os_version_next"], "");
    assert_eq!(env["machine_id"], "0123456789abcdef0123456789abcdef");
    assert_eq!(env["hostname"], "0123456789abcdef0123456789abcdef");
    assert_eq!(env["system_is_ready"], true);
    assert!(
        env["uptime"].as_u64().unwrap() >= 42,
        "uptime is a number: {env}"
    );
    assert!(env.get("os_version_alternate").is_none());

    let (r, _, _d) = app().not_ready().router();
    assert_eq!(
        get(&r, "/1.0").await.metadata()["environment"]["system_is_ready"],
        false
    );
}

#[tokio::test]
async fn a_bad_machine_id_is_a_500() {
    let t = app();
    std::fs::write(t.root().join("etc/machine-id"), b"abc\n").unwrap();
    let (r, _, _d) = t.router();
    assert_eq!(
        get(&r, "/1.0").await.error(),
        (500, "invalid length for a machine-id".into())
    );
}

// ---- services ------------------------------------------------------------------------------

#[tokio::test]
async fn services_look_up_the_name_before_the_method() {
    let (r, _, _d) = app().router();
    assert_eq!(
        call(&r, "DELETE", "/1.0/services/nope", "").await.error().0,
        404
    );
    assert_eq!(
        call(&r, "DELETE", "/1.0/services/echo", "").await.error().0,
        501
    );
    assert_eq!(
        call(&r, "GET", "/1.0/services/nope/:reset", "")
            .await
            .error()
            .0,
        404
    );
    assert_eq!(
        call(&r, "GET", "/1.0/services/echo/:reset", "")
            .await
            .error()
            .0,
        501
    );
}

#[tokio::test]
async fn a_service_get_put_round_trip_persists_the_config() {
    let (r, app, _d) = app().router();
    let v = get(&r, "/1.0/services/echo").await.metadata();
    assert_eq!(
        v,
        json!({"state": {"greeting": "hello "}, "config": {"enabled": false, "name": "", "count": 0}})
    );
    // Clients PUT back the whole object; state is ignored.
    let body = json!({"state": {"greeting": "ignored"}, "config": {"enabled": true, "name": "bob", "count": 3}});
    let resp = call(&r, "PUT", "/1.0/services/echo", &body.to_string()).await;
    assert_eq!(resp.metadata(), json!({}));
    let v = get(&r, "/1.0/services/echo").await.metadata();
    assert_eq!(
        v["config"],
        json!({"enabled": true, "name": "bob", "count": 3})
    );
    assert_eq!(v["state"]["greeting"], "hello bob");
    // Persisted in the state document under the plugin's namespace.
    let on_disk: Value = serde_json::from_slice(
        &std::fs::read(app.root.join("var/lib/incus-os/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(on_disk["plugins"]["echo"]["config"]["name"], "bob");
}

#[tokio::test]
async fn bad_service_input_is_a_400_and_changes_nothing() {
    let (r, app, _d) = app().router();
    let good = json!({"config": {"enabled": true, "name": "bob", "count": 1}}).to_string();
    call(&r, "PUT", "/1.0/services/echo", &good)
        .await
        .metadata();
    let state_file = app.root.join("var/lib/incus-os/state.json");
    let before = std::fs::read(&state_file).unwrap();
    for (body, needle) in [
        ("{not json", "invalid request body"),
        ("", "request body is empty"),
        ("[]", "invalid request body"),
        (r#"{"config": {"enabled": "yes"}}"#, "config.enabled"),
        (r#"{"config": {"count": "many"}}"#, "config.count"),
        (r#"{"state": {}}"#, "missing field `config`"),
    ] {
        let (code, msg) = call(&r, "PUT", "/1.0/services/echo", body).await.error();
        assert_eq!(code, 400, "{body}: {msg}");
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let (code, msg) = call(
        &r,
        "PUT",
        "/1.0/services/echo",
        r#"{"config": {"name": "a b"}}"#,
    )
    .await
    .error();
    assert_eq!(
        (code, msg.as_str()),
        (400, "invalid name <a b>: no spaces & no fun")
    );
    assert_eq!(std::fs::read(&state_file).unwrap(), before);
    assert_eq!(
        get(&r, "/1.0/services/echo").await.metadata()["config"]["name"],
        "bob"
    );
}

#[tokio::test]
async fn error_text_is_html_escaped_like_upstream() {
    let (r, _, _d) = app().router();
    let resp = call(
        &r,
        "PUT",
        "/1.0/services/echo",
        r#"{"config": {"name": "a b"}}"#,
    )
    .await;
    let text = resp.text();
    assert!(
        text.contains(r"invalid name \u003ca b\u003e: no spaces \u0026 no fun"),
        "{text}"
    );
}

#[tokio::test]
async fn reset_is_dispatched_or_refused_with_upstreams_error() {
    let (r, _, _d) = app().router();
    assert_eq!(
        call(&r, "POST", "/1.0/services/echo/:reset", "")
            .await
            .metadata(),
        json!({})
    );
    assert_eq!(
        call(&r, "POST", "/1.0/services/plain/:reset", "")
            .await
            .error(),
        (500, "reset isn't supported by this service".into())
    );
}

#[tokio::test]
async fn a_service_gated_on_an_application_appears_once_it_is_installed() {
    let (r, app, _d) = app().router();
    assert_eq!(get(&r, "/1.0/services/gated").await.error().0, 404);
    // Installed as an install leaves it (no plugin of that name here): the record, the
    // image and its link.
    incus_osd::testing::place_image(&app.root, "incus-ceph", "202511041601");
    std::os::unix::fs::symlink(
        "/var/lib/incus-os-extensions/202511041601/incus-ceph.raw",
        app.root.join("var/lib/extensions/incus-ceph.raw"),
    )
    .unwrap();
    assert_eq!(
        get(&r, "/1.0/services/gated").await.error().0,
        404,
        "no record yet"
    );
    app.store
        .lock()
        .unwrap()
        .update(|d| {
            d.applications
                .entry("incus-ceph".into())
                .or_default()
                .version = "202511041601".into();
        })
        .unwrap();
    assert!(get(&r, "/1.0/services")
        .await
        .metadata()
        .as_array()
        .unwrap()
        .contains(&json!("/1.0/services/gated")));
    assert_eq!(get(&r, "/1.0/services/gated").await.status, StatusCode::OK);
}

#[tokio::test]
async fn declared_routes_are_served_and_others_follow_the_fallback_rules() {
    let (r, _, _d) = app().router();
    let v = call(
        &r,
        "POST",
        "/1.0/services/echo/:ping?x=a%20b",
        r#"{"n": 1}"#,
    )
    .await
    .metadata();
    assert_eq!(
        v,
        json!({"op": "ping", "query": {"x": "a b"}, "body": {"n": 1}, "name": ""})
    );
    let v = get(&r, "/1.0/services/echo/peers").await.metadata();
    assert_eq!(v["op"], "peers");
    assert_eq!(v["body"], Value::Null);
    // Known path, wrong method: 501. Unknown: 404 for GET, 501 otherwise.
    assert_eq!(get(&r, "/1.0/services/echo/:ping").await.error().0, 501);
    assert_eq!(get(&r, "/1.0/services/echo/:nothing").await.error().0, 404);
    assert_eq!(
        call(&r, "POST", "/1.0/services/echo/:nothing", "")
            .await
            .error()
            .0,
        501
    );
}

// ---- failure isolation ------------------------------------------------------------------------

#[tokio::test]
async fn a_panicking_plugin_gets_a_500_is_marked_degraded_and_the_rest_keeps_serving() {
    let (r, _, _d) = app().router();
    call(
        &r,
        "PUT",
        "/1.0/services/trouble",
        r#"{"config": {"panic": true}}"#,
    )
    .await
    .metadata();
    let (code, msg) = get(&r, "/1.0/services/trouble").await.error();
    assert_eq!(code, 500);
    assert!(
        msg.contains("plugin panicked in get: trouble: deliberate panic"),
        "{msg}"
    );
    let plugins = get(&r, "/1.0/plugins").await.metadata();
    let trouble = plugins["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "trouble")
        .unwrap()
        .clone();
    assert!(trouble["degraded"]
        .as_str()
        .unwrap()
        .contains("deliberate panic"));
    assert_eq!(get(&r, "/1.0/services/echo").await.status, StatusCode::OK);
    assert_eq!(get(&r, "/1.0").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_change_that_times_out_is_reported_as_still_running_and_then_holds() {
    let (r, _, _d) = app().timeout(Duration::from_millis(300)).router();
    let (code, msg) = call(
        &r,
        "PUT",
        "/1.0/services/trouble",
        r#"{"config": {"sleep_ms": 1000}}"#,
    )
    .await
    .error();
    // Not "failed": it may still take effect, and the answer says where to look.
    assert_eq!(code, 504);
    assert!(msg.contains("'put' is still running after 0.3s"), "{msg}");
    assert!(
        msg.contains("GET /1.0/services/trouble shows the result"),
        "{msg}"
    );
    assert_eq!(get(&r, "/1.0/services/echo").await.status, StatusCode::OK);
    let degraded = |plugins: Value| {
        plugins["loaded"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "trouble")
            .unwrap()["degraded"]
            .clone()
    };
    let d = degraded(get(&r, "/1.0/plugins").await.metadata());
    assert!(
        d.as_str().unwrap().contains("did not finish within 0.3s"),
        "{d}"
    );
    // Once it ends, the change holds and the plugin recovers.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        get(&r, "/1.0/services/trouble").await.metadata()["config"]["sleep_ms"],
        1000
    );
    assert_eq!(
        degraded(get(&r, "/1.0/plugins").await.metadata()),
        Value::Null
    );
}

#[tokio::test]
async fn mutating_calls_to_one_plugin_are_serialized() {
    let (r, _, _d) = app().router();
    let body = r#"{"config": {"sleep_ms": 30}}"#;
    let calls = (0..4).map(|_| call(&r, "PUT", "/1.0/services/trouble", body));
    for resp in futures_util::future::join_all(calls).await {
        assert_eq!(resp.status, StatusCode::OK);
    }
    let state = get(&r, "/1.0/services/trouble").await.metadata()["state"].clone();
    assert_eq!(state["max_in_flight"], 1, "{state}");
}

// ---- applications -----------------------------------------------------------------------------

#[tokio::test]
async fn applications_are_listed_and_report_the_primary_flag() {
    let (r, _, _d) = app().router();
    assert_eq!(
        get(&r, "/1.0/applications").await.metadata(),
        json!(["/1.0/applications/demo"])
    );
    let v = get(&r, "/1.0/applications/demo").await.metadata();
    assert_eq!(v["state"]["is_primary"], true);
    assert_eq!(v["state"]["version"], "202511041601");
    assert_eq!(v["state"]["friendly_version"], "202511041601 ()");
    assert_eq!(v["config"], json!({"motd": ""}));
    assert_eq!(
        call(&r, "DELETE", "/1.0/applications/nope", "")
            .await
            .error()
            .0,
        404
    );
}

#[tokio::test]
async fn application_verbs_check_the_method_first_then_the_name() {
    let (r, _, _d) = app().router();
    assert_eq!(
        get(&r, "/1.0/applications/nope/:backup").await.error().0,
        501
    );
    assert_eq!(
        call(&r, "POST", "/1.0/applications/nope/:backup", "")
            .await
            .error()
            .0,
        404
    );
    // Upstream's default restart does nothing, and answers.
    assert_eq!(
        call(&r, "POST", "/1.0/applications/demo/:restart", "")
            .await
            .metadata(),
        json!({})
    );
}

#[tokio::test]
async fn application_backup_factory_reset_restore_round_trip() {
    let (r, app, _d) = app().router();
    let body = json!({"action": "write", "config": {"text": "precious"}}).to_string();
    call(&r, "POST", "/1.0/applications/demo/:action", &body)
        .await
        .metadata();
    let data = app.root.join("var/lib/demo/data.txt");
    assert_eq!(std::fs::read(&data).unwrap(), b"precious");

    let backup = call(&r, "POST", "/1.0/applications/demo/:backup", "").await;
    assert_eq!(backup.status, StatusCode::OK);
    assert_eq!(backup.headers["content-type"], "application/gzip");
    assert_eq!(backup.body.len(), 64 * 4096 + "precious".len());

    assert_eq!(
        call(&r, "POST", "/1.0/applications/demo/:factory-reset", "")
            .await
            .metadata(),
        json!({})
    );
    // The reset runs after the answer.
    for _ in 0..200 {
        if !data.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!data.exists(), "factory reset wiped the data");

    let req = Request::builder()
        .method("POST")
        .uri("/1.0/applications/demo/:restore")
        .header("content-type", "application/x-tar")
        .body(Body::from(backup.body.clone()))
        .unwrap();
    assert_eq!(send(&r, req).await.metadata(), json!({}));
    assert_eq!(std::fs::read(&data).unwrap(), b"precious");
    assert_eq!(
        get(&r, "/1.0/applications/demo").await.metadata()["state"]["friendly_version"],
        "202511041601 (precious)"
    );

    let (code, msg) = call(&r, "POST", "/1.0/applications/demo/:restore", "short")
        .await
        .error();
    assert_eq!((code, msg.as_str()), (400, "archive too short"));
    let (code, msg) = call(
        &r,
        "POST",
        "/1.0/applications/demo/:action",
        r#"{"action": "fly"}"#,
    )
    .await
    .error();
    assert_eq!((code, msg.as_str()), (500, "unsupported action 'fly'"));
}

#[tokio::test]
async fn changes_wait_for_start_up_to_finish_while_reads_answer_at_once() {
    let (r, app, _d) = app().not_ready().router();
    assert_eq!(get(&r, "/1.0/services/echo").await.status, StatusCode::OK);
    let body = r#"{"config": {"name": "early"}}"#;
    let put = tokio::spawn({
        let r = r.clone();
        async move { call(&r, "PUT", "/1.0/services/echo", body).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!put.is_finished(), "the change waits for start-up");
    assert_eq!(
        get(&r, "/1.0/services/echo").await.metadata()["config"]["name"],
        ""
    );
    incus_osd::lifecycle::start_plugins(&app).await;
    assert_eq!(put.await.unwrap().status, StatusCode::OK);
    assert_eq!(
        get(&r, "/1.0/services/echo").await.metadata()["config"]["name"],
        "early"
    );
}
