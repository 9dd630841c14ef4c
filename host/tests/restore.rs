//! Application restores (tier 1): the uploaded archive is stored on disk, then streamed to
//! the plugin; large archives pass, a broken-off upload never reaches the plugin.

use std::io::Read;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::Request;
use axum::Router;
use http_body_util::BodyExt;
use incus_osd::testing::TestApp;
use plugin_api::sdk::{Host, Result, StreamingBackup};
use plugin_api::Application;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tower::ServiceExt;

const RESULT: &str = "/var/lib/sink/result.json";

#[derive(Serialize, Deserialize, Default, Clone)]
struct Empty {}

/// Reads the archive piece by piece (never whole) and records its length and checksum.
struct Sink {
    host: Host,
}

impl Sink {
    fn backup(&self, _: bool, _: &mut dyn std::io::Write) -> Result<()> {
        Ok(())
    }
    fn restore(&self, input: &mut dyn Read) -> Result<()> {
        let (mut len, mut sum, mut largest) = (0u64, Fnv::new(), 0usize);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            len += n as u64;
            largest = largest.max(n);
            sum.feed(&buf[..n]);
        }
        let out = json!({"len": len, "sum": sum.0, "largest_read": largest});
        self.host
            .write_file(RESULT, out.to_string().as_bytes(), 0o600)
    }
}

impl Application for Sink {
    const NAME: &'static str = "sink";
    const PATHS: &'static [&'static str] = &["/var/lib/sink"];
    const STREAMING_BACKUP: Option<StreamingBackup<Self>> = Some(StreamingBackup {
        backup: Self::backup,
        restore: Self::restore,
    });
    type Config = Empty;
    fn new(host: Host) -> Result<Self> {
        Ok(Sink { host })
    }
}

/// FNV-1a, 64 bits.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn feed(&mut self, data: &[u8]) {
        for b in data {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// `n` chunks of 1 MiB of deterministic noise.
fn chunks(n: usize) -> Vec<Bytes> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            let mut c = Vec::with_capacity(1 << 20);
            while c.len() < 1 << 20 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.extend_from_slice(&x.to_le_bytes());
            }
            Bytes::from(c)
        })
        .collect()
}

async fn restore(r: &Router, body: Body) -> (u16, Value) {
    let req = Request::builder()
        .method("POST")
        .uri("/1.0/applications/sink/:restore")
        .header("content-type", "application/gzip")
        .body(body)
        .unwrap();
    let resp = r.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn uploads_left(root: &std::path::Path) -> usize {
    std::fs::read_dir(root.join("var/lib/incus-os/uploads"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_64_mib_archive_reaches_the_plugin_intact() {
    let (r, app, _d) = TestApp::new()
        .application::<Sink>()
        .installed("sink", "202511041601")
        .router();
    let data = chunks(64);
    let mut sum = Fnv::new();
    data.iter().for_each(|c| sum.feed(c));
    let stream = futures_util::stream::iter(data.into_iter().map(Ok::<_, std::io::Error>));
    let (status, v) = restore(&r, Body::from_stream(stream)).await;
    assert_eq!(status, 200, "{v}");
    let got: Value =
        serde_json::from_slice(&std::fs::read(app.root.join(&RESULT[1..])).unwrap()).unwrap();
    assert_eq!(got["len"], 64 << 20);
    assert_eq!(got["sum"], sum.0);
    // Handed over in pieces, never as one buffer.
    assert!(got["largest_read"].as_u64().unwrap() <= 1 << 20, "{got}");
    assert_eq!(uploads_left(&app.root), 0, "the stored archive is gone");
}

#[tokio::test]
async fn a_broken_off_upload_never_reaches_the_plugin() {
    let (r, app, _d) = TestApp::new()
        .application::<Sink>()
        .installed("sink", "202511041601")
        .router();
    let mut parts: Vec<std::io::Result<Bytes>> = chunks(3).into_iter().map(Ok).collect();
    parts.push(Err(std::io::Error::other("the client went away")));
    let (status, v) = restore(&r, Body::from_stream(futures_util::stream::iter(parts))).await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("cannot read request body"),
        "{v}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!app.root.join(&RESULT[1..]).exists(), "restore never ran");
    assert_eq!(uploads_left(&app.root), 0);
}

#[tokio::test]
async fn restore_checks_the_method_then_the_name() {
    let (r, _, _d) = TestApp::new()
        .application::<Sink>()
        .installed("sink", "202511041601")
        .router();
    let req = Request::builder()
        .method("GET")
        .uri("/1.0/applications/nope/:restore")
        .body(Body::empty())
        .unwrap();
    assert_eq!(r.clone().oneshot(req).await.unwrap().status(), 501);
    let req = Request::builder()
        .method("POST")
        .uri("/1.0/applications/nope/:restore")
        .body(Body::empty())
        .unwrap();
    assert_eq!(r.clone().oneshot(req).await.unwrap().status(), 404);
}
