//! Plugins built as a third-party author builds them, loaded by the (debug) daemon.
//!
//! - `tests/fixtures/sdk-only`: an application whose only dependencies are plugin-api and
//!   serde. The export macro must build there and export the root module abi_stable's loader
//!   finds, without abi_stable among the author's dependencies.
//! - `examples/third-party-app` (the `guestbook` application): its own cargo project outside
//!   the workspace, built in release by `tests/run-all` (`cargo build --release
//!   --manifest-path examples/third-party-app/Cargo.toml`). When its library is missing this
//!   test says so loudly and skips, and fails under CI (CI=true or CI=1).

use std::path::{Path, PathBuf};

use incus_osd_integration::{request, Daemon, Root};
use incus_osd_test_machine::under_ci;
use serde_json::{json, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The names in the `[dependencies]` table of a Cargo.toml.
fn dependencies(manifest: &str) -> Vec<String> {
    let mut names = vec![];
    let mut inside = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == "[dependencies]";
        } else if inside && !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['=', '.']).next().unwrap_or_default().trim();
            names.push(name.to_string());
        }
    }
    names
}

/// Copies `from` (a directory tree of plain files) to `to`, leaving out `target`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != "target" {
                copy_tree(&src, &dst);
            }
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// A copy of plugin-api away from this workspace is a complete package: no field or lint
/// table inherited from a workspace that is not there (cargo refuses such a manifest).
#[test]
fn plugin_api_is_a_complete_package_outside_the_workspace() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("plugin-api");
    copy_tree(&repo().join("plugin-api"), &copy);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .arg("--manifest-path")
        .arg(copy.join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo metadata failed: {stderr}");
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let package = &meta["packages"][0];
    assert_eq!(package["name"], "incus-osd-plugin-api");
    assert_eq!(package["edition"], "2021");
}

#[test]
fn the_sdk_only_fixture_depends_on_plugin_api_and_serde_alone() {
    let manifest =
        std::fs::read_to_string(repo().join("tests/fixtures/sdk-only/Cargo.toml")).unwrap();
    assert_eq!(dependencies(&manifest), ["plugin-api", "serde"]);
}

#[tokio::test]
async fn a_plugin_without_abi_stable_among_its_dependencies_loads_and_serves() {
    let root = Root::new();
    root.install_fixture("sdk_only", "sdk_only");
    root.install_application("sdk-only", "202601010000");
    let d = Daemon::start(&root, &[]);
    let path = "/1.0/applications/sdk-only";

    let (status, v) = request(&d.socket, "GET", path, "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["metadata"]["config"]["greeting"], "", "{v}");

    let body = json!({"config": {"greeting": "hello"}}).to_string();
    let (status, v) = request(&d.socket, "PUT", path, &body).await;
    assert_eq!(status, 200, "{v}");
    let (_, v) = request(&d.socket, "GET", path, "").await;
    assert_eq!(v["metadata"]["config"]["greeting"], "hello", "{v}");
}

/// The example's release library, or `None` (after saying so loudly) when it is not built.
fn guestbook_library() -> Option<PathBuf> {
    let example = repo().join("examples/third-party-app");
    let lib = example.join("target/release/libincus_osd_plugin_guestbook.so");
    if !lib.is_file() {
        let why = format!(
            "!!! THIRD-PARTY EXAMPLE NOT BUILT: {} is missing; build it with `cargo build \
             --release --manifest-path examples/third-party-app/Cargo.toml` (tests/run-all does)",
            lib.display()
        );
        if under_ci() {
            panic!("{why} (a skipped test fails under CI)");
        }
        // Straight to the process's stderr: libtest captures `eprintln!` of passing tests,
        // and a skip must not be silent.
        use std::io::Write;
        let _ = write!(std::io::stderr(), "\n{why}: SKIPPED\n\n");
        return None;
    }
    // The library must be newer than the example's sources: an old one would test old code.
    let built = std::fs::metadata(&lib).and_then(|m| m.modified()).unwrap();
    for source in [example.join("src/lib.rs"), example.join("Cargo.toml")] {
        let changed = std::fs::metadata(&source)
            .and_then(|m| m.modified())
            .unwrap();
        assert!(
            changed <= built,
            "{} is older than {}: rebuild it with `cargo build --release --manifest-path \
             examples/third-party-app/Cargo.toml`",
            lib.display(),
            source.display()
        );
    }
    Some(lib)
}

#[tokio::test]
async fn the_third_party_example_built_in_release_serves_in_the_daemon() {
    let Some(lib) = guestbook_library() else {
        return;
    };
    let root = Root::new();
    root.install_plugin(&lib, "guestbook");
    // Recorded as installed by the daemon itself, as docs/applications.md shows an author.
    let d = Daemon::start(&root, &["--dev-install", "guestbook"]);
    let path = "/1.0/applications/guestbook";
    let signatures = format!("{path}/signatures");

    let (status, v) = request(&d.socket, "GET", "/1.0/applications", "").await;
    assert_eq!((status, &v["metadata"]), (200, &json!([path])), "{v}");
    let (status, v) = request(&d.socket, "GET", &signatures, "").await;
    assert_eq!((status, &v["metadata"]), (200, &json!([])), "{v}");

    let body = json!({"config": {"greeting": "Welcome"}}).to_string();
    let (status, v) = request(&d.socket, "PUT", path, &body).await;
    assert_eq!(status, 200, "{v}");
    let greeting = root.path().join("var/lib/guestbook/greeting");
    assert_eq!(std::fs::read_to_string(greeting).unwrap(), "Welcome");

    let action = format!("{path}/:action");
    let sign = json!({"action": "sign", "config": {"name": "Ada"}}).to_string();
    let (status, v) = request(&d.socket, "POST", &action, &sign).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["metadata"], json!({"signatures": 1}), "{v}");

    let (status, v) = request(&d.socket, "GET", path, "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["metadata"]["config"]["greeting"], "Welcome", "{v}");
    let (_, v) = request(&d.socket, "GET", &signatures, "").await;
    assert_eq!(v["metadata"], json!(["Ada"]), "{v}");

    // Bad input is the plugin's 400, and changes nothing.
    let bad = json!({"action": "sign", "config": {"name": "a\nb"}}).to_string();
    let (status, v) = request(&d.socket, "POST", &action, &bad).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"], "name has a control character", "{v}");
    let (_, v) = request(&d.socket, "GET", &signatures, "").await;
    assert_eq!(v["metadata"], json!(["Ada"]), "{v}");
}

/// docs/applications.md shows the example's whole Cargo.toml: the copy there must be the
/// file the run builds, or an author following the page builds something else.
#[test]
fn the_docs_show_the_examples_cargo_toml_as_it_is() {
    let manifest =
        std::fs::read_to_string(repo().join("examples/third-party-app/Cargo.toml")).unwrap();
    let docs = std::fs::read_to_string(repo().join("docs/applications.md")).unwrap();
    assert!(
        docs.contains(&format!("```toml\n{manifest}```\n")),
        "docs/applications.md does not show examples/third-party-app/Cargo.toml as it is"
    );
}
