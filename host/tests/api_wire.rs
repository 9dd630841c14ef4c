//! Router tests (tier 1) for the wire details an upstream client or a hostile one meets:
//! the proxy rule, error envelopes for every rejection, body limits and shapes, routing of
//! escaped paths and unknown sub-paths, URL joining, `GET /1.0` and log-line integrity.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use incus_osd::testing::TestApp;
use plugin_api::application::AppContext;
use plugin_api::sdk::{ActionFn, Host, Result, RouteRequest, RouteSpec, StreamingBackup};
use plugin_api::{Application, Service};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tower::ServiceExt;

// ---- plugins ------------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Default, Clone)]
#[serde(default)]
struct Config {
    enabled: bool,
    name: String,
}

#[derive(Serialize)]
struct State {
    up: bool,
}

/// A service with the default key order and two declared routes.
struct Conf;

impl Service for Conf {
    const NAME: &'static str = "conf";
    const ROUTES: &'static [RouteSpec] = &[RouteSpec {
        method: plugin_api::Method::Get,
        suffix: "peers",
        op: "peers",
    }];
    type Config = Config;
    type State = State;
    fn new(_: Host) -> Result<Self> {
        Ok(Conf)
    }
    fn state(&self, c: &Config) -> Result<State> {
        Ok(State { up: c.enabled })
    }
    fn enabled(c: &Config) -> bool {
        c.enabled
    }
    fn route(&self, op: &str, req: RouteRequest, _: &Config) -> Result<Value> {
        Ok(json!({ "op": op, "query": req.query }))
    }
}

/// A service mirroring an upstream struct that declares `config` first.
struct Ordered;

impl Service for Ordered {
    const NAME: &'static str = "ordered";
    const CONFIG_FIRST: bool = true;
    type Config = Config;
    type State = State;
    fn new(_: Host) -> Result<Self> {
        Ok(Ordered)
    }
    fn state(&self, c: &Config) -> Result<State> {
        Ok(State { up: c.enabled })
    }
    fn enabled(c: &Config) -> bool {
        c.enabled
    }
}

struct App {
    restored: Arc<Mutex<usize>>,
}

impl App {
    fn action(
        &self,
        _: &Config,
        action: &str,
        _: &std::collections::BTreeMap<String, String>,
    ) -> Result<Value> {
        Ok(json!({ "action": action }))
    }
    fn backup(&self, _: bool, _: &mut dyn std::io::Write) -> Result<()> {
        Ok(())
    }
    fn restore(&self, input: &mut dyn std::io::Read) -> Result<()> {
        let mut all = vec![];
        input.read_to_end(&mut all)?;
        *self.restored.lock().unwrap() = all.len();
        Ok(())
    }
}

impl Application for App {
    const NAME: &'static str = "app";
    const PRIMARY: bool = true;
    const ACTION: Option<ActionFn<Self>> = Some(Self::action);
    const STREAMING_BACKUP: Option<StreamingBackup<Self>> = Some(StreamingBackup {
        backup: Self::backup,
        restore: Self::restore,
    });
    type Config = Config;
    fn new(_: Host) -> Result<Self> {
        Ok(App {
            restored: Arc::default(),
        })
    }
    fn friendly_version(&self, _: &AppContext, _: &Config) -> Result<String> {
        Ok(format!("restored {}", self.restored.lock().unwrap()))
    }
}

fn app() -> TestApp {
    TestApp::new()
        .service::<Conf>()
        .service::<Ordered>()
        .application::<App>()
        .installed("app", "202511041601")
}

// ---- helpers -----------------------------------------------------------------------------

struct Resp {
    status: StatusCode,
    content_type: String,
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {}: not JSON ({e}): {}",
                self.status,
                self.content_type,
                self.text()
            )
        })
    }
    fn metadata(&self) -> Value {
        let v = self.json();
        assert_eq!(v["status_code"], 200, "{v}");
        v["metadata"].clone()
    }
    /// The error envelope (JSON, `status_code: 0`, `error_code` the HTTP status).
    fn error(&self) -> (u16, String) {
        assert_eq!(self.content_type, "application/json", "{}", self.text());
        let v = self.json();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["status_code"], 0, "{v}");
        assert_eq!(v["error_code"], self.status.as_u16(), "{v}");
        (
            self.status.as_u16(),
            v["error"].as_str().unwrap().to_string(),
        )
    }
}

async fn send(router: &Router, req: Request<Body>) -> Resp {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Resp {
        status,
        content_type,
        body,
    }
}

fn request(method: &str, uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(body.into())
        .unwrap()
}

async fn call(router: &Router, method: &str, uri: &str, body: &str) -> Resp {
    send(router, request(method, uri, body.to_string())).await
}

async fn get(router: &Router, uri: &str) -> Resp {
    call(router, "GET", uri, "").await
}

/// A request carrying the given `X-IncusOS-Proxy` values, in order.
fn proxied(method: &str, uri: &str, values: &[&[u8]], body: &str) -> Request<Body> {
    let mut req = request(method, uri, body.to_string());
    for v in values {
        req.headers_mut()
            .append("x-incusos-proxy", HeaderValue::from_bytes(v).unwrap());
    }
    req
}

// ---- item 1: the proxy rule ----------------------------------------------------------------

const MESSAGE: &str = r#"{"level":"INFO","message":"proxy rule test"}"#;

#[tokio::test]
async fn any_form_of_the_proxy_header_is_refused_by_socket_only_endpoints() {
    let (r, _, _d) = app().router();
    let variants: [&[&[u8]]; 9] = [
        &[b"/os"],
        &[b""],
        &[b"   "],
        &[b"\t"],
        &[b"\xff\xfe"],
        &[b"/\xc3\xa9t\xc3\xa9"],
        &[b"", b"/os"],
        &[b"", b""],
        &[b"/", b"/os"],
    ];
    for path in [
        "/internal/tui/:write-message",
        "/1.0/debug/tui/:write-message",
    ] {
        // Without the header the message is written.
        assert_eq!(call(&r, "POST", path, MESSAGE).await.metadata(), json!({}));
        for values in variants {
            for method in ["POST", "GET"] {
                let resp = send(&r, proxied(method, path, values, MESSAGE)).await;
                assert_eq!(
                    resp.error(),
                    (403, "not authorized".into()),
                    "{method} {path} {values:?}"
                );
            }
        }
    }
    // Unknown internal paths are plain 404s through the proxy, as upstream.
    for values in variants {
        let resp = send(&r, proxied("GET", "/internal/nothing-here", values, "")).await;
        assert_eq!(resp.error(), (404, "not found".into()), "{values:?}");
        let resp = send(&r, proxied("GET", "/internal", values, "")).await;
        assert_eq!(resp.error().0, 404, "{values:?}");
    }
}

// ---- item 5: no log forgery -----------------------------------------------------------------

/// A log writer into a shared buffer.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_written_message_cannot_forge_journal_lines_or_priorities() {
    let (r, _, _d) = app().router();
    let buf = LogBuffer::default();
    let writer = buf.clone();
    let sub = incus_osd::logging::subscriber(
        tracing_subscriber::EnvFilter::new("info"),
        move || writer.clone(),
        true,
        false,
    );
    let _guard = tracing::subscriber::set_default(sub);
    for message in [
        "first\n<3>ERROR forged entry",
        "<2>critical from a client",
        "cr\r<1>alert\0nul",
    ] {
        let body = json!({"level": "INFO", "message": message}).to_string();
        let resp = call(&r, "POST", "/internal/tui/:write-message", &body).await;
        assert_eq!(resp.metadata(), json!({}));
    }
    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            r"<6>INFO first\n<3>ERROR forged entry",
            r"<6>INFO \x3c2>critical from a client",
            r"<6>INFO cr\r<1>alert\x00nul",
        ],
        "{out}"
    );
}

// ---- items 8 and 18: bodies have a limit, answered in the envelope ----------------------------

#[tokio::test]
async fn json_bodies_over_the_limit_are_a_413_envelope_and_change_nothing() {
    let (r, _, _d) = app().router();
    let limit = incus_osd::api::JSON_BODY_LIMIT;
    assert!(limit <= 512 * 1024, "a small limit");
    // Valid JSON, just too large.
    let big = format!(
        r#"{{"config": {{"enabled": true, "name": "{}"}}}}"#,
        "x".repeat(limit)
    );
    let at_limit = format!(
        r#"{{"config": {{"enabled": true, "name": "{}"}}}}"#,
        "y".repeat(limit - 64)
    );
    assert!(at_limit.len() <= limit);
    for (method, path) in [
        ("PUT", "/1.0/services/conf"),
        ("PUT", "/1.0/applications/app"),
        ("POST", "/1.0/applications/app/:action"),
        ("PUT", "/1.0/system/logging"),
        ("POST", "/internal/tui/:write-message"),
        ("GET", "/1.0/services/conf/peers"),
    ] {
        // With a declared length (refused before reading) and streamed (refused once the
        // limit is crossed).
        let (code, msg) = call(&r, method, path, &big).await.error();
        assert_eq!(code, 413, "{method} {path}: {msg}");
        assert!(msg.contains("request body too large"), "{msg}");
        let chunks: Vec<std::result::Result<Vec<u8>, std::io::Error>> = big
            .as_bytes()
            .chunks(8192)
            .map(|c| Ok(c.to_vec()))
            .collect();
        let streamed = Body::from_stream(futures_util::stream::iter(chunks));
        let resp = send(&r, request(method, path, streamed)).await;
        assert_eq!(resp.error().0, 413, "{method} {path} (streamed)");
    }
    assert_eq!(
        get(&r, "/1.0/services/conf").await.metadata()["config"]["enabled"],
        false
    );
    // Up to the limit is fine.
    let resp = call(&r, "PUT", "/1.0/services/conf", &at_limit).await;
    assert_eq!(resp.metadata(), json!({}));
    // Archives stream to the plugin, with no limit.
    let archive = vec![b'#'; 3 * limit];
    let resp = send(
        &r,
        request("POST", "/1.0/applications/app/:restore", archive),
    )
    .await;
    assert_eq!(resp.metadata(), json!({}));
    assert_eq!(
        get(&r, "/1.0/applications/app").await.metadata()["state"]["friendly_version"],
        format!("restored {}", 3 * limit)
    );
}

// ---- item 17: a JSON array is not an object ---------------------------------------------------

#[tokio::test]
async fn bodies_that_are_json_but_not_objects_are_refused() {
    let (r, app, _d) = app().router();
    let good = r#"{"config": {"enabled": true, "name": "kept"}}"#;
    call(&r, "PUT", "/1.0/services/conf", good).await.metadata();
    call(&r, "PUT", "/1.0/applications/app", good)
        .await
        .metadata();
    let state_file = app.root.join("var/lib/incus-os/state.json");
    let before = std::fs::read(&state_file).unwrap();
    for body in [
        "[{}]",
        r#"[{"enabled": false}]"#,
        "[]",
        "null",
        "1",
        "\"x\"",
        "true",
    ] {
        for (method, path) in [
            ("PUT", "/1.0/services/conf"),
            ("PUT", "/1.0/applications/app"),
            ("POST", "/1.0/applications/app/:action"),
            ("PUT", "/1.0/system/logging"),
            ("POST", "/internal/tui/:write-message"),
            ("POST", "/1.0/debug/tui/:write-message"),
        ] {
            let (code, msg) = call(&r, method, path, body).await.error();
            assert_eq!(code, 400, "{method} {path} {body}: {msg}");
            assert!(
                msg.starts_with("invalid request body: expected a JSON object, found"),
                "{method} {path} {body}: {msg}"
            );
        }
    }
    let (code, msg) = call(
        &r,
        "POST",
        "/internal/tui/:write-message",
        r#"["WARN","x"]"#,
    )
    .await
    .error();
    assert_eq!(
        (code, msg.as_str()),
        (
            400,
            "invalid request body: expected a JSON object, found an array"
        )
    );
    assert_eq!(std::fs::read(&state_file).unwrap(), before);
    assert_eq!(
        get(&r, "/1.0/services/conf").await.metadata()["config"]["name"],
        "kept"
    );
}

// ---- item 18: every error is the envelope -------------------------------------------------------

#[tokio::test]
async fn rejected_paths_and_queries_are_envelopes_too() {
    let (r, _, _d) = app().router();
    // Path segments that are not UTF-8 match no name.
    for (method, path, code) in [
        ("GET", "/1.0/services/%FF", 404),
        ("PUT", "/1.0/services/%FF", 404),
        ("GET", "/1.0/services/%C3%28", 404),
        ("POST", "/1.0/services/%FF/:reset", 404),
        ("GET", "/1.0/applications/%FF", 404),
        ("POST", "/1.0/applications/%FF/:backup", 404),
        ("GET", "/1.0/applications/%FF/:backup", 501),
        ("GET", "/1.0/system/%FF", 404),
        ("GET", "/1.0/services/conf/%FF", 404),
        ("GET", "/1.0/%FF", 404),
        ("GET", "/1.0/services/%zz", 404),
    ] {
        let resp = call(&r, method, path, "").await;
        assert_eq!(resp.error().0, code, "{method} {path}");
    }
    // Repeated query keys: the first value is the one used (`--all` is refused, `ok` is
    // looked up in a journal that does not exist under this root).
    let (code, msg) = get(&r, "/1.0/debug/log?unit=--all&unit=ok").await.error();
    assert_eq!(code, 400, "{msg}");
    let (code, msg) = get(&r, "/1.0/debug/log?unit=ok&unit=--all").await.error();
    assert_eq!(code, 500, "{msg}");
    assert!(msg.contains("journalctl"), "{msg}");
    // Bad query strings, with Go's texts.
    assert_eq!(
        get(&r, "/1.0/debug/log?unit=%zz").await.error(),
        (400, "invalid URL escape \"%zz\"".into())
    );
    assert_eq!(
        get(&r, "/1.0/debug/log?unit;x=1").await.error(),
        (400, "invalid semicolon separator in query".into())
    );
    assert_eq!(
        get(&r, "/1.0/services/conf/peers?x=%G1").await.error().0,
        400
    );
    // A declared route takes the first value too.
    assert_eq!(
        get(&r, "/1.0/services/conf/peers?x=1&x=2").await.metadata()["query"],
        json!({"x": "1"})
    );
}

// ---- item 19: /1.0/debug lists what is served -------------------------------------------------

#[tokio::test]
async fn every_debug_entry_listed_is_served() {
    let t = app();
    let w = |p: &str, d: &str| {
        let path = t.root().join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, d).unwrap();
    };
    w("proc/sys/kernel/osrelease", "6.1.0-test\n");
    w("proc/modules", "");
    let (r, _, _d) = t.router();
    let listed = get(&r, "/1.0/debug").await.metadata();
    assert_eq!(
        listed,
        json!([
            "/1.0/debug/kernel",
            "/1.0/debug/log",
            "/1.0/debug/processes",
            "/1.0/debug/:run-script",
            "/1.0/debug/secureboot"
        ])
    );
    for url in listed.as_array().unwrap() {
        let url = url.as_str().unwrap();
        if url.contains(':') {
            // Served (a GET is the wrong method, not an unknown path).
            assert_eq!(call(&r, "GET", url, "").await.error().0, 501);
            assert_eq!(call(&r, "POST", url, "").await.error().0, 400);
            continue;
        }
        let resp = get(&r, url).await;
        // The journal does not exist under this root (500), but the endpoint is there.
        assert!(
            resp.status != StatusCode::NOT_FOUND && resp.status != StatusCode::NOT_IMPLEMENTED,
            "{url}: {}",
            resp.text()
        );
    }
}

// ---- item 21: GET /1.0 --------------------------------------------------------------------------

#[tokio::test]
async fn info_reads_per_request_in_upstreams_key_order() {
    let t = app();
    let root = t.root().to_path_buf();
    let (r, app, _d) = t.router();
    let text = get(&r, "/1.0").await.text();
    let env = text
        .split("\"metadata\":")
        .nth(1)
        .unwrap()
        .trim_end()
        .trim_end_matches('}');
    // Upstream's environment is a Go map: keys sorted.
    assert!(
        env.starts_with(
            r#"{"environment":{"hostname":"0123456789abcdef0123456789abcdef","machine_id":"0123456789abcdef0123456789abcdef","os_name":"IncusOS","os_version":"202511041601","os_version_next":"","system_is_ready":true,"uptime":"#
        ),
        "{text}"
    );

    // The stored next release, once an update is staged.
    app.store
        .lock()
        .unwrap()
        .update(|d| d.os.next_release = "202512010000".into())
        .unwrap();
    // The other A/B image and the machine id, read per request.
    std::fs::create_dir_all(root.join("boot/EFI/Linux")).unwrap();
    std::fs::write(root.join("boot/EFI/Linux/IncusOS_202511041601.efi"), b"").unwrap();
    std::fs::write(root.join("boot/EFI/Linux/IncusOS_202512010000.efi"), b"").unwrap();
    std::fs::write(
        root.join("etc/machine-id"),
        b"fedcba9876543210fedcba9876543210\n",
    )
    .unwrap();
    // Changes show once the daemon's watcher thread ran (microseconds).
    let mut text = get(&r, "/1.0").await.text();
    for _ in 0..2000 {
        if text.contains("fedcba9876543210fedcba9876543210")
            && text.contains("202512010000\",\"os_version_next")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        text = get(&r, "/1.0").await.text();
    }
    assert!(
        text.contains(r#""machine_id":"fedcba9876543210fedcba9876543210","os_name":"IncusOS","os_version":"202511041601","os_version_alternate":"202512010000","os_version_next":"202512010000","system_is_ready":true,"#),
        "{text}"
    );
    // A machine id broken after start is upstream's 500.
    std::fs::write(root.join("etc/machine-id"), b"short\n").unwrap();
    let mut answer = get(&r, "/1.0").await;
    for _ in 0..2000 {
        if answer.status != StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        answer = get(&r, "/1.0").await;
    }
    assert_eq!(
        answer.error(),
        (500, "invalid length for a machine-id".into())
    );
}

// ---- item 22: key order, unknown sub-paths, escaped paths, URL joins --------------------------

#[tokio::test]
async fn get_bodies_keep_the_upstream_structs_key_order() {
    let (r, _, _d) = app().router();
    let text = get(&r, "/1.0/services/ordered").await.text();
    assert!(
        text.contains(r#""metadata":{"config":{"enabled":false,"name":""},"state":{"up":false}}"#),
        "{text}"
    );
    let text = get(&r, "/1.0/services/conf").await.text();
    assert!(
        text.contains(r#""metadata":{"state":{"up":false},"config":{"enabled":false,"name":""}}"#),
        "{text}"
    );
    // Applications: state first, in upstream's order; the plugin's config order kept.
    let text = get(&r, "/1.0/applications/app").await.text();
    assert!(
        text.contains(r#""metadata":{"state":{"is_primary":true,"initialized":false,"friendly_version":"restored 0","version":"202511041601","available_versions":["202511041601"]},"config":{"enabled":false,"name":""}}"#),
        "{text}"
    );
}

#[tokio::test]
async fn unknown_sub_paths_are_upstreams_catch_all_whatever_the_name() {
    let (r, _, _d) = app().router();
    for path in [
        "/1.0/services/nope/:nothing",
        "/1.0/services/conf/:nothing",
        "/1.0/services/conf/a/b",
        "/1.0/applications/nope/:nothing",
        "/1.0/applications/app/:nothing",
    ] {
        assert_eq!(
            get(&r, path).await.error(),
            (404, "not found".into()),
            "{path}"
        );
        for method in ["POST", "PUT", "DELETE"] {
            assert_eq!(
                call(&r, method, path, "").await.error(),
                (501, "not implemented".into()),
                "{method} {path}"
            );
        }
    }
    // :reset looks the name up first.
    assert_eq!(
        call(&r, "POST", "/1.0/services/nope/:reset", "")
            .await
            .error()
            .0,
        404
    );
    // Application verbs check the method first, then the name.
    for verb in [":check-update", ":debug", ":remove", ":switch-version"] {
        let path = format!("/1.0/applications/nope/{verb}");
        assert_eq!(get(&r, &path).await.error().0, 501, "{path}");
        assert_eq!(call(&r, "POST", &path, "").await.error().0, 404, "{path}");
        let path = format!("/1.0/applications/app/{verb}");
        assert_eq!(get(&r, &path).await.error().0, 501, "{path}");
    }
    // `:debug` is upstream's for Incus only (its log bundle), not built here.
    assert_eq!(
        call(&r, "POST", "/1.0/applications/app/:debug", "")
            .await
            .error(),
        (501, "not implemented".into())
    );
}

#[tokio::test]
async fn escaped_path_segments_match_what_they_decode_to() {
    let (r, _, _d) = app().router();
    assert_eq!(
        get(&r, "/1.0/servic%65s").await.metadata(),
        json!(["/1.0/services/conf", "/1.0/services/ordered"])
    );
    assert_eq!(
        get(&r, "/%31.0/services/con%66").await.metadata()["state"],
        json!({"up": false})
    );
    let body = r#"{"config": {"enabled": true, "name": "via escapes"}}"#;
    assert_eq!(
        call(&r, "PUT", "/1.0/services/%63onf", body)
            .await
            .metadata(),
        json!({})
    );
    assert_eq!(
        get(&r, "/1.0/services/conf").await.metadata()["config"]["name"],
        "via escapes"
    );
    // `:reset` spelled with an escaped colon is `:reset` (this service has none).
    assert_eq!(
        call(&r, "POST", "/1.0/services/conf/%3Areset", "")
            .await
            .error(),
        (500, "reset isn't supported by this service".into())
    );
    assert_eq!(
        get(&r, "/1.0/services/conf/p%65ers").await.metadata()["op"],
        "peers"
    );
    // An escaped slash stays inside its segment: no such service.
    assert_eq!(get(&r, "/1.0/services/conf%2Fpeers").await.error().0, 404);
    // Escaped dots are cleaned like plain ones.
    let resp = get(&r, "/1.0/services/%2E%2E/services").await;
    assert_eq!(resp.status, StatusCode::MOVED_PERMANENTLY);
}

#[tokio::test]
async fn proxy_values_are_joined_as_upstream_joins_them() {
    let (r, _, _d) = app().router();
    for (value, root, service) in [
        (&b"os"[..], "os/1.0", "os/1.0/services/conf"),
        (b"/os", "/os/1.0", "/os/1.0/services/conf"),
        (
            b"/my site",
            "/my%20site/1.0",
            "/my%20site/1.0/services/conf",
        ),
        (
            b"https://example.com/os",
            "https://example.com/os/1.0",
            "https://example.com/os/1.0/services/conf",
        ),
        (
            b"https://example.com",
            "https://example.com/1.0",
            "https://example.com/1.0/services/conf",
        ),
        (b"/\xc3\xa9", "/%C3%A9/1.0", "/%C3%A9/1.0/services/conf"),
        (b"%zz", "", "services/conf"),
    ] {
        let shown = String::from_utf8_lossy(value);
        let resp = send(&r, proxied("GET", "/", &[value], "")).await;
        assert_eq!(resp.metadata(), json!([root]), "{shown}");
        let resp = send(&r, proxied("GET", "/1.0/services", &[value], "")).await;
        assert_eq!(resp.metadata()[0], service, "{shown}");
    }
    let resp = send(&r, proxied("GET", "/1.0/debug", &[b"os"], "")).await;
    assert_eq!(resp.metadata()[0], "os/1.0/debug/kernel");
    let resp = send(&r, proxied("GET", "/1.0/system", &[b"/my site"], "")).await;
    assert_eq!(resp.metadata()[0], "/my%20site/1.0/system/kernel");
    let resp = send(&r, proxied("GET", "/1.0/applications", &[b"os"], "")).await;
    assert_eq!(resp.metadata(), json!(["os/1.0/applications/app"]));
}

// ---- item 23: decoding like upstream ------------------------------------------------------------

#[tokio::test]
async fn write_message_refuses_empty_and_null_levels_with_slogs_texts() {
    let (r, _, _d) = app().router();
    for (body, want) in [
        (
            r#"{"level":"","message":"x"}"#,
            r#"slog: level string "": unknown name"#,
        ),
        (r#"{"level":null,"message":"x"}"#, "invalid syntax"),
        (r#"{"level":4,"message":"x"}"#, "invalid syntax"),
        (
            r#"{"level":"LOUD","message":"x"}"#,
            r#"slog: level string "LOUD": unknown name"#,
        ),
        (
            r#"{"level":"INFO+x","message":"x"}"#,
            r#"slog: level string "INFO+x": strconv.Atoi: parsing "+x": invalid syntax"#,
        ),
        // The level is decoded before the message is checked.
        (
            r#"{"level":"","message":""}"#,
            r#"slog: level string "": unknown name"#,
        ),
        (r#"{"message":null}"#, "no log message provided"),
    ] {
        let resp = call(&r, "POST", "/internal/tui/:write-message", body).await;
        assert_eq!(resp.error(), (400, want.to_string()), "{body}");
    }
    let resp = call(
        &r,
        "POST",
        "/internal/tui/:write-message",
        r#"{"message":"x"}"#,
    )
    .await;
    assert_eq!(resp.metadata(), json!({}), "no level is INFO");
}

#[tokio::test]
async fn a_put_whose_state_is_not_an_object_does_not_decode() {
    let (r, _, _d) = app().router();
    for path in ["/1.0/services/conf", "/1.0/applications/app"] {
        for state in ["5", "[]", "\"up\"", "true"] {
            let body = format!(r#"{{"state": {state}, "config": {{"enabled": true}}}}"#);
            let (code, msg) = call(&r, "PUT", path, &body).await.error();
            assert_eq!(code, 400, "{path} {body}: {msg}");
            assert!(
                msg.starts_with("invalid request body: state: invalid type:"),
                "{path} {body}: {msg}"
            );
        }
        // An object or null is fine (its content is ignored).
        for state in ["{\"up\": 7}", "null"] {
            let body = format!(r#"{{"state": {state}, "config": {{"enabled": false}}}}"#);
            assert_eq!(call(&r, "PUT", path, &body).await.metadata(), json!({}));
        }
    }
    assert_eq!(
        get(&r, "/1.0/services/conf").await.metadata()["config"]["enabled"],
        false
    );
}

/// Upstream's route table (every operation it serves), `{name}` an installed application
/// (`app`) or a loaded service (`conf`).
const UPSTREAM_OPERATIONS: &[(&str, &str)] = &[
    ("GET", "/"),
    ("POST", "/internal/auth/:generate-registration"),
    ("POST", "/internal/auth/:generate-token"),
    ("GET", "/internal/secureboot"),
    ("POST", "/internal/tui/:write-message"),
    ("GET", "/1.0"),
    ("GET", "/1.0/applications"),
    ("POST", "/1.0/applications"),
    ("GET", "/1.0/applications/app"),
    ("PUT", "/1.0/applications/app"),
    ("POST", "/1.0/applications/app/:action"),
    ("POST", "/1.0/applications/app/:backup"),
    ("POST", "/1.0/applications/app/:check-update"),
    // The test application declares no logs: `:debug` answers upstream's own 501 for it,
    // so an unknown name shows the route (404, where the catch-all says 501).
    ("POST", "/1.0/applications/nope/:debug"),
    ("POST", "/1.0/applications/app/:factory-reset"),
    ("POST", "/1.0/applications/app/:remove"),
    ("POST", "/1.0/applications/app/:restart"),
    ("POST", "/1.0/applications/app/:restore"),
    ("POST", "/1.0/applications/app/:switch-version"),
    ("GET", "/1.0/debug"),
    ("GET", "/1.0/debug/kernel"),
    ("GET", "/1.0/debug/log"),
    ("GET", "/1.0/debug/processes"),
    ("POST", "/1.0/debug/:run-script"),
    ("GET", "/1.0/debug/secureboot"),
    ("GET", "/1.0/debug/secureboot/event-log"),
    ("POST", "/1.0/debug/secureboot/:update"),
    ("GET", "/1.0/services"),
    ("GET", "/1.0/services/conf"),
    ("PUT", "/1.0/services/conf"),
    ("POST", "/1.0/services/conf/:reset"),
    ("GET", "/1.0/system"),
    ("POST", "/1.0/system/:backup"),
    ("POST", "/1.0/system/:factory-reset"),
    ("POST", "/1.0/system/:poweroff"),
    ("POST", "/1.0/system/:reboot"),
    ("POST", "/1.0/system/:restore"),
    ("POST", "/1.0/system/:suspend"),
    ("GET", "/1.0/system/fallback-listener"),
    ("PUT", "/1.0/system/fallback-listener"),
    ("GET", "/1.0/system/kernel"),
    ("PUT", "/1.0/system/kernel"),
    ("GET", "/1.0/system/logging"),
    ("PUT", "/1.0/system/logging"),
    ("GET", "/1.0/system/network"),
    ("PUT", "/1.0/system/network"),
    ("POST", "/1.0/system/network/:confirm"),
    ("POST", "/1.0/system/network/:flush-dns"),
    ("GET", "/1.0/system/provider"),
    ("PUT", "/1.0/system/provider"),
    ("GET", "/1.0/system/resources"),
    ("GET", "/1.0/system/security"),
    ("PUT", "/1.0/system/security"),
    ("POST", "/1.0/system/security/:retrieved"),
    ("POST", "/1.0/system/security/:tpm-rebind"),
    ("GET", "/1.0/system/storage"),
    ("PUT", "/1.0/system/storage"),
    ("POST", "/1.0/system/storage/:cleanup-root"),
    ("POST", "/1.0/system/storage/:create-volume"),
    ("POST", "/1.0/system/storage/:delete-pool"),
    ("POST", "/1.0/system/storage/:delete-volume"),
    ("POST", "/1.0/system/storage/:encrypt-drive"),
    ("POST", "/1.0/system/storage/:import-encrypted-drive"),
    ("POST", "/1.0/system/storage/:import-pool"),
    ("POST", "/1.0/system/storage/:scrub-pool"),
    ("POST", "/1.0/system/storage/:wipe-drive"),
    ("GET", "/1.0/system/update"),
    ("PUT", "/1.0/system/update"),
    ("POST", "/1.0/system/update/:check"),
];

#[tokio::test]
async fn every_upstream_operation_is_served() {
    assert_eq!(UPSTREAM_OPERATIONS.len(), 69);
    let (r, _app, _d) = app().router();
    for (method, path) in UPSTREAM_OPERATIONS {
        // A body that is no valid input: each answers its own error or its result, never
        // the catch-all's (GET 404 `not found`, others 501 `not implemented`) nor a
        // "not implemented by this daemon" refusal.
        let resp = call(&r, method, path, "{\"x\": [").await;
        let text = resp.text();
        let catch_all = match *method {
            "GET" => resp.status == 404 && text.contains("\"not found\""),
            _ => resp.status == 501 && text.contains("\"not implemented\""),
        };
        assert!(!catch_all, "{method} {path}: {} {text}", resp.status);
        assert!(
            !text.contains("not implemented by this daemon"),
            "{method} {path}: {text}"
        );
    }
}
