//! Support for the integration tests: the real `incus-osd` binary started over a
//! temporary root with a chosen set of built plugin libraries, and a small HTTP client
//! for its unix socket.
#![allow(unsafe_code)] // audited: test support: signals to daemon processes the tests spawned

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub use incus_osd_harness::built_plugin;

pub mod sysext;
pub mod tier3;

/// The cargo output directory the tests' libraries and binaries were built into.
pub fn artifact_dir() -> PathBuf {
    built_plugin("incus_osd_plugin_iscsi")
        .parent()
        .expect("artifact dir")
        .to_path_buf()
}

/// The built daemon binary.
pub fn daemon_binary() -> PathBuf {
    let p = artifact_dir().join("incus-osd");
    assert!(
        p.is_file(),
        "{} not built: run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// Every workspace plugin library (`libincus_osd_plugin_*.so`) in the artifact dir.
pub fn workspace_plugins() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(artifact_dir())
        .expect("artifact dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(incus_osd::plugins::loader::is_plugin_file_name)
        })
        .collect();
    v.sort();
    v
}

/// A temporary root with an OS identity, and a plugin directory in it.
pub struct Root {
    pub dir: tempfile::TempDir,
}

impl Default for Root {
    fn default() -> Self {
        Self::new()
    }
}

impl Root {
    pub fn new() -> Root {
        let dir = tempfile::tempdir().expect("temp dir");
        let w = |p: &str, d: &[u8]| {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, d).unwrap();
        };
        w(
            "lib/os-release",
            b"NAME=\"IncusOS\"\nIMAGE_VERSION=202511041601\n",
        );
        w("etc/machine-id", b"0123456789abcdef0123456789abcdef\n");
        w("proc/uptime", b"100.00 100.00\n");
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        Root { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn plugin_dir(&self) -> PathBuf {
        self.path().join("plugins")
    }

    pub fn socket(&self) -> PathBuf {
        self.path().join("run/incus-os/unix.socket")
    }

    pub fn state_file(&self) -> PathBuf {
        self.path().join("var/lib/incus-os/state.json")
    }

    /// Copies a built library into the plugin dir as `libincus_osd_plugin_<name>.so`.
    pub fn install_plugin(&self, lib: &Path, name: &str) {
        std::fs::copy(
            lib,
            self.plugin_dir()
                .join(format!("libincus_osd_plugin_{name}.so")),
        )
        .expect("copy plugin");
    }

    /// Leaves application `app` installed at `version` as an install does: a stand-in image
    /// (a file with a GPT header, which the image check wants), the link systemd-sysext
    /// would merge, and the install record in the state document (created when missing).
    /// Under a development root nothing is merged; the daemon starts the application.
    pub fn install_application(&self, app: &str, version: &str) {
        let dir = self
            .path()
            .join("var/lib/incus-os-extensions")
            .join(version);
        std::fs::create_dir_all(&dir).unwrap();
        let mut image = vec![0u8; 1024];
        image[512..520].copy_from_slice(b"EFI PART");
        std::fs::write(dir.join(format!("{app}.raw")), image).unwrap();
        let links = self.path().join("var/lib/extensions");
        std::fs::create_dir_all(&links).unwrap();
        std::os::unix::fs::symlink(
            format!("/var/lib/incus-os-extensions/{version}/{app}.raw"),
            links.join(format!("{app}.raw")),
        )
        .unwrap();
        let state = self.state_file();
        std::fs::create_dir_all(state.parent().unwrap()).unwrap();
        let mut doc: serde_json::Value = std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| serde_json::json!({"schema_version": 2}));
        doc["applications"][app] =
            serde_json::json!({"version": version, "available_versions": [version]});
        std::fs::write(&state, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    }

    /// Installs a fixture library (`libfixture_<stem>.so`) under `name`.
    pub fn install_fixture(&self, stem: &str, name: &str) {
        self.install_plugin(&built_plugin(&format!("fixture_{stem}")), name);
    }
}

/// A running daemon process; killed when dropped.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts the daemon on `root` and waits until it is ready.
    pub fn start(root: &Root, extra: &[&str]) -> Daemon {
        let d = Self::spawn(root, extra);
        d.wait_ready();
        d
    }

    /// Starts the daemon without waiting.
    pub fn spawn(root: &Root, extra: &[&str]) -> Daemon {
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("daemon.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(daemon_binary())
            .arg("--root")
            .arg(root.path())
            .arg("--plugins")
            .arg(root.plugin_dir())
            .args(extra)
            .env("INCUS_OSD_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("spawn incus-osd");
        Daemon {
            child: Some(child),
            socket: root.socket(),
            log,
            _log_dir: log_dir,
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The plugins instantiated so far (a `plugin loaded` line each), sorted.
    pub fn loaded(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .log()
            .lines()
            .filter(|l| l.contains("plugin loaded"))
            .map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("plugin="))
                    .unwrap_or("?")
                    .to_string()
            })
            .collect();
        v.sort();
        v
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.log().contains("System is ready") {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("daemon did not become ready:\n{}", self.log());
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        wait_timeout(&mut child, Duration::from_secs(30)).expect("daemon exits after SIGTERM")
    }

    /// Waits for the process to exit on its own (a failed start).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        wait_timeout(&mut child, Duration::from_secs(30)).expect("daemon exits")
    }
}

fn wait_timeout(child: &mut Child, t: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + t;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    None
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One HTTP/1.1 request over the unix socket: (status, parsed JSON body).
pub async fn request(socket: &Path, method: &str, path: &str, body: &str) -> (u16, Value) {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = sender.send_request(req).await.expect("request");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    (status, v)
}

/// `GET path`, expecting success; returns the metadata.
pub async fn get_ok(socket: &Path, path: &str) -> Value {
    let (status, v) = request(socket, "GET", path, "").await;
    assert_eq!(status, 200, "GET {path}: {v}");
    v["metadata"].clone()
}
