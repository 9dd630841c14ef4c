//! An Operations Center **stand-in** for the provider's tests: the provisioning endpoints
//! the provider calls, answered with fixed Incus-style replies by the harness's
//! [`TestServer`] (which records every request), and the update files served from a
//! directory laid out as the download URLs are (`1.0/provisioning/updates/<uuid>/files/
//! <filename>`). It is not Operations Center: it checks nothing it is sent; the tests
//! check the recorded requests.

use std::path::Path;

use incus_osd_harness::testserver::{RecordedRequest, Reply, TestServer};
use incus_osd_provider_common::testing::sha256_hex;
use serde_json::{json, Value};

/// The identifier of the update [`OcStandIn::publish`] offers.
pub const UUID: &str = "6b1a4c3e-0d2f-4a5b-9c8d-7e6f5a4b3c2d";
/// Another update, listed first but on another channel.
pub const OTHER_UUID: &str = "0a0a0a0a-1111-4222-8333-444455556666";

pub const UPDATES: &str = "/1.0/provisioning/updates";
pub const SERVERS: &str = "/1.0/provisioning/servers";
pub const SELF_REGISTER: &str = "/1.0/provisioning/servers/:self_register";
pub const SELF: &str = "/1.0/provisioning/servers/:self";

/// A file of a published update.
pub struct File<'a> {
    pub filename: &'a str,
    pub data: &'a [u8],
    pub component: &'a str,
    pub kind: &'a str,
    pub architecture: &'a str,
}

pub struct OcStandIn {
    pub server: TestServer,
    dir: tempfile::TempDir,
}

/// An Incus-style sync response carrying `metadata`.
pub fn sync(metadata: Value) -> Reply {
    Reply::json(
        200,
        json!({"type": "sync", "status": "Success", "status_code": 200, "operation": "",
               "error_code": 0, "error": "", "metadata": metadata})
        .to_string(),
    )
}

/// An Incus-style error response.
pub fn error(code: u16, message: &str) -> Reply {
    Reply::json(
        code,
        json!({"type": "error", "status": "", "status_code": 0, "operation": "",
               "error_code": code, "error": message, "metadata": null})
        .to_string(),
    )
}

impl OcStandIn {
    /// Over HTTPS, TLS 1.3 only, as Operations Center serves.
    pub fn https() -> OcStandIn {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::builder().dir(dir.path()).tls13_only().start();
        Self::with(server, dir)
    }

    /// Over HTTPS, accepting only clients presenting a certificate of its CA.
    pub fn https_with_client_certificates() -> OcStandIn {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::builder()
            .dir(dir.path())
            .tls13_only()
            .require_client_cert()
            .start();
        Self::with(server, dir)
    }

    /// Over plain HTTP on the unix socket `socket` (a host path), as the local
    /// Operations Center serves its own machine.
    pub fn unix(socket: &Path) -> OcStandIn {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        let server = TestServer::unix(dir.path(), socket);
        Self::with(server, dir)
    }

    fn with(server: TestServer, dir: tempfile::TempDir) -> OcStandIn {
        server.handle(SERVERS, sync(json!({"certificate": ""})));
        server.handle(SELF_REGISTER, sync(json!({})));
        server.handle(SELF, sync(json!({})));
        server.handle(UPDATES, sync(json!([])));
        OcStandIn { server, dir }
    }

    /// The base URL (`https://127.0.0.1:<port>`, or `http://unix`).
    pub fn url(&self) -> String {
        self.server.url("")
    }

    /// Offers update `version` on `channels` with `files` (newest first: after an update
    /// on the `nightly` channel only).
    pub fn publish(&self, version: &str, channels: &[&str], files: &[File]) {
        let mut listed = vec![];
        for f in files {
            let path = self.dir.path().join(format!(
                "1.0/provisioning/updates/{UUID}/files/{}",
                f.filename
            ));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, f.data).unwrap();
            listed.push(json!({"filename": f.filename, "size": f.data.len(),
                               "component": f.component, "type": f.kind,
                               "architecture": f.architecture, "sha256": sha256_hex(f.data)}));
        }
        self.server.handle(
            UPDATES,
            sync(json!([
                {"uuid": OTHER_UUID, "version": "209901010000", "channels": ["nightly"],
                 "severity": "none", "origin": "images", "published_at": "2099-01-01T00:00:00Z",
                 "url": "", "status": "ready"},
                {"uuid": UUID, "version": version, "channels": channels, "severity": "low",
                 "origin": "images", "published_at": "2026-01-01T00:00:00Z", "url": "",
                 "status": "ready"},
            ])),
        );
        self.server.handle(
            &format!("{UPDATES}/{UUID}/files"),
            sync(Value::Array(listed)),
        );
    }

    /// The requests to `path` so far.
    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        self.server
            .requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}
