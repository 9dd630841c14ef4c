//! The API listener over a real unix socket (tier 1): header and idle timeouts, stalled
//! bodies, the connection cap, many idle connections, graceful shutdown.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use incus_osd::api::listener::{self, Limits};
use incus_osd::testing::TestApp;
use plugin_api::sdk::{Host, Result};
use plugin_api::Service;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[derive(Serialize, Deserialize, Default, Clone)]
#[serde(default)]
struct SlowConfig {
    sleep_ms: u64,
}

/// A service whose GET takes `sleep_ms`.
struct Slow;

impl Service for Slow {
    const NAME: &'static str = "slow";
    type Config = SlowConfig;
    type State = Value;
    fn new(_: Host) -> Result<Self> {
        Ok(Slow)
    }
    fn state(&self, c: &SlowConfig) -> Result<Value> {
        std::thread::sleep(Duration::from_millis(c.sleep_ms));
        Ok(json!({}))
    }
    fn enabled(_: &SlowConfig) -> bool {
        false
    }
}

struct Server {
    sock: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Server {
    async fn start(limits: Limits) -> Server {
        let (router, _app, root) = TestApp::new().service::<Slow>().router();
        let sockdir = tempfile::tempdir().unwrap();
        let sock = sockdir.path().join("unix.socket");
        let l = tokio::net::UnixListener::bind(&sock).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(listener::serve(l, router, limits, async move {
            let _ = stopped.await;
        }));
        Server {
            sock,
            stop: Some(stop),
            task,
            _dirs: (root, sockdir),
        }
    }

    async fn connect(&self) -> UnixStream {
        UnixStream::connect(&self.sock).await.unwrap()
    }

    /// Begins the graceful shutdown.
    fn stop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
    }
}

/// Short timeouts, a generous cap.
fn quick() -> Limits {
    Limits {
        header_timeout: Duration::from_millis(400),
        body_timeout: Duration::from_millis(400),
        max_connections: 64,
        shutdown_grace: Duration::from_secs(5),
    }
}

/// Sends one request on `s` (keep-alive) and reads the answer: status and JSON body.
async fn request(s: &mut UnixStream, method: &str, path: &str, body: &str) -> (u16, Value) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    read_response(s).await.expect("a response")
}

/// Reads one response (a body that is not JSON comes as a string); `None` if the
/// connection closed first.
async fn read_response(s: &mut UnixStream) -> Option<(u16, Value)> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("content-length");
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed inside a body");
        body.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&body[..len]).to_string();
    Some((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// Waits until the server closes `s` (reads return end of file or fail); how long it took.
async fn closed_within(s: &mut UnixStream, limit: Duration) -> Duration {
    let t = Instant::now();
    let mut sink = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit, s.read(&mut sink)).await {
            Err(_) => panic!("the connection is still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return t.elapsed(),
            Ok(Ok(_)) => {} // e.g. a 408: keep reading until it closes
        }
    }
}

#[tokio::test]
async fn a_slow_loris_connection_is_closed_after_the_header_timeout() {
    let server = Server::start(quick()).await;
    let mut clients = vec![];
    for _ in 0..4 {
        let mut s = server.connect().await;
        s.write_all(b"GET /1.0 HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        clients.push(s);
    }
    let t = Instant::now();
    // A header line every 100 ms for three times the timeout: the timeout covers the whole
    // head, not each read.
    for i in 0..12 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for s in &mut clients {
            let _ = s.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes()).await;
        }
    }
    for s in &mut clients {
        closed_within(s, Duration::from_secs(1)).await;
    }
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // The server still answers.
    let mut s = server.connect().await;
    assert_eq!(request(&mut s, "GET", "/1.0", "").await.0, 200);
}

#[tokio::test]
async fn idle_connections_are_closed_new_and_kept_alive_alike() {
    let server = Server::start(quick()).await;
    let mut fresh = server.connect().await;
    let mut kept = server.connect().await;
    assert_eq!(request(&mut kept, "GET", "/1.0", "").await.0, 200);
    // Keep-alive works while the connection is in use.
    assert_eq!(request(&mut kept, "GET", "/1.0", "").await.0, 200);
    let waited = closed_within(&mut kept, Duration::from_secs(3)).await;
    assert!(
        waited >= Duration::from_millis(300),
        "closed too early: {waited:?}"
    );
    closed_within(&mut fresh, Duration::from_secs(3)).await;
}

#[tokio::test]
async fn a_stalled_request_body_fails_the_request() {
    let server = Server::start(quick()).await;
    let mut s = server.connect().await;
    s.write_all(
        b"PUT /1.0/services/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"config\":",
    )
    .await
    .unwrap();
    let t = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(3), read_response(&mut s))
        .await
        .expect("an answer or a close within the body timeout");
    if let Some((status, v)) = answer {
        assert_eq!(status, 400, "{v}");
    }
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn beyond_the_cap_connections_wait_while_accepted_ones_keep_working() {
    let server = Server::start(Limits {
        max_connections: 2,
        header_timeout: Duration::from_secs(30),
        ..quick()
    })
    .await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    assert_eq!(request(&mut a, "GET", "/1.0", "").await.0, 200);
    assert_eq!(request(&mut b, "GET", "/1.0", "").await.0, 200);
    // A third waits in the backlog: connected, not answered.
    let mut c = server.connect().await;
    c.write_all(b"GET /1.0 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), read_response(&mut c))
            .await
            .is_err(),
        "a connection beyond the cap was served"
    );
    assert_eq!(request(&mut a, "GET", "/1.0", "").await.0, 200);
    drop(b);
    let (status, _) = tokio::time::timeout(Duration::from_secs(3), read_response(&mut c))
        .await
        .expect("served once a place is free")
        .expect("a response");
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_2000_idle_connections_get_and_put_still_answer() {
    const IDLE: usize = 2000;
    // As the daemon starts under systemd's default soft limit, then raises it.
    lower_soft_open_files(1024);
    let limit = incus_osd::platform::limits::raise_open_files().unwrap();
    assert!(
        limit >= 2 * IDLE as u64 + 200,
        "this test needs a hard open-file limit of at least {} (both ends of {IDLE} connections \
         live in this process); it is {limit}",
        2 * IDLE + 200
    );
    let server = Server::start(Limits {
        header_timeout: Duration::from_secs(60),
        ..Limits::for_this_process()
    })
    .await;
    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let mut s = server.connect().await;
        if i % 2 == 0 {
            // Half of them half-way through their headers.
            s.write_all(b"GET /1.0 HTTP/1.1\r\n").await.unwrap();
        }
        idle.push(s);
    }
    let t = Instant::now();
    let mut s = server.connect().await;
    let (status, v) =
        tokio::time::timeout(Duration::from_secs(10), request(&mut s, "GET", "/1.0", ""))
            .await
            .expect("GET /1.0 answers");
    assert_eq!(status, 200, "{v}");
    let body = r#"{"config":{"sleep_ms":0}}"#;
    let (status, v) = tokio::time::timeout(
        Duration::from_secs(10),
        request(&mut s, "PUT", "/1.0/services/slow", body),
    )
    .await
    .expect("PUT answers");
    assert_eq!(status, 200, "{v}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    drop(idle);
}

#[allow(unsafe_code)] // audited: getrlimit/setrlimit on a local struct
fn lower_soft_open_files(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid rlimit pointers for the calls.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = n.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish_and_closes_idle_ones() {
    let mut server = Server::start(quick()).await;
    let mut s = server.connect().await;
    let body = r#"{"config":{"sleep_ms":600}}"#;
    assert_eq!(
        request(&mut s, "PUT", "/1.0/services/slow", body).await.0,
        200
    );
    let mut idle = server.connect().await;
    let mut busy = server.connect().await;
    busy.write_all(b"GET /1.0/services/slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let t = Instant::now();
    server.stop();
    closed_within(&mut idle, Duration::from_millis(300)).await;
    let (status, _) = read_response(&mut busy)
        .await
        .expect("the request finished");
    assert_eq!(status, 200);
    tokio::time::timeout(Duration::from_secs(3), &mut server.task)
        .await
        .expect("serve returns once the requests finished")
        .unwrap()
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(
        UnixStream::connect(&server.sock).await.is_err(),
        "still listening"
    );
}

#[tokio::test]
async fn shutdown_cuts_off_requests_past_the_grace() {
    let mut server = Server::start(Limits {
        shutdown_grace: Duration::from_millis(300),
        ..quick()
    })
    .await;
    let mut s = server.connect().await;
    let body = r#"{"config":{"sleep_ms":3000}}"#;
    assert_eq!(
        request(&mut s, "PUT", "/1.0/services/slow", body).await.0,
        200
    );
    let mut busy = server.connect().await;
    busy.write_all(b"GET /1.0/services/slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    server.stop();
    tokio::time::timeout(Duration::from_secs(2), &mut server.task)
        .await
        .expect("serve returns at the grace deadline")
        .unwrap()
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(
        read_response(&mut busy).await.is_none(),
        "cut off, no answer"
    );
}

/// The unit raises the open-file limit far enough for the cap to hold thousands of clients.
#[test]
fn the_unit_raises_the_open_file_limit() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/incus-osd.service"),
    )
    .unwrap();
    let nofile: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .expect("LimitNOFILE= in the unit")
        .trim()
        .parse()
        .unwrap();
    assert!(
        Limits::for_open_files(nofile).max_connections >= 4000,
        "{nofile}"
    );
}
