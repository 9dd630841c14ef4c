//! The guestbook plugin as built, loaded by the incus-osd harness as the daemon loads it,
//! over a host whose files live in a temporary directory.
//!
//! `cargo test` builds this crate's library for these tests; the harness refuses a library
//! older than its sources.

use incus_osd_harness::{assert_conformance, built_plugin, Harness};
use serde_json::{json, Value};

fn library() -> std::path::PathBuf {
    built_plugin("incus_osd_plugin_guestbook")
}

fn guestbook() -> Harness {
    Harness::load(library()).expect("the guestbook plugin loads")
}

fn sign(h: &Harness, name: &str) -> Result<Value, (u16, String)> {
    let body = json!({"action": "sign", "config": {"name": name}});
    h.invoke("action", body.to_string().as_bytes())
        .map_err(|e| (e.status, e.message.to_string()))
}

/// `GET /1.0/applications/guestbook/signatures`, as the daemon forwards it.
fn signatures(h: &Harness) -> Value {
    h.invoke("signatures", br#"{"query": {}, "body": null}"#)
        .expect("signatures")
}

/// A gzip tar with the entries `add` appends.
fn archive(add: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    add(&mut b);
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}

#[test]
fn passes_the_harness_conformance_checks() {
    let outcomes = assert_conformance(library());
    let backup = outcomes
        .iter()
        .find(|o| o.name == "backup-restore")
        .unwrap();
    assert!(backup.passed(), "{backup:?}");
    assert!(
        backup
            .detail
            .starts_with("declared backup of /var/lib/guestbook"),
        "{backup:?}"
    );
}

#[test]
fn get_shows_the_friendly_version_of_the_installed_image_and_the_config() {
    let h = guestbook();
    h.apply_config(&json!({"greeting": "Welcome!"}));
    let ctx = json!({"name": "guestbook", "version": "202601010000", "initialized": true});
    assert_eq!(
        h.invoke("get", ctx.to_string().as_bytes()).unwrap(),
        json!({
            "state": {"friendly_version": "0.1.0 [202601010000]"},
            "config": {"greeting": "Welcome!"}
        })
    );
}

#[test]
fn a_put_writes_the_greeting_and_a_bad_one_is_refused() {
    let h = guestbook();
    h.apply_config(&json!({"greeting": "Welcome!"}));
    assert_eq!(
        h.host().read_text("/var/lib/guestbook/greeting"),
        "Welcome!"
    );

    h.assert_config_refused(
        &json!({"greeting": "x".repeat(201)}),
        "greeting is longer than 200 characters",
    );
    assert_eq!(
        h.host().read_text("/var/lib/guestbook/greeting"),
        "Welcome!"
    );
}

#[test]
fn sign_adds_a_name_and_refuses_bad_ones() {
    let h = guestbook();
    assert_eq!(sign(&h, "Ada").unwrap(), json!({"signatures": 1}));
    assert_eq!(sign(&h, "Grace").unwrap(), json!({"signatures": 2}));
    assert_eq!(signatures(&h), json!(["Ada", "Grace"]));

    assert_eq!(
        sign(&h, " ").unwrap_err(),
        (400, "sign needs a non-empty name".to_string())
    );
    assert_eq!(
        sign(&h, "Eve\nMallory").unwrap_err(),
        (400, "name has a control character".to_string())
    );
    let body = json!({"action": "erase", "config": {}});
    let err = h.invoke("action", body.to_string().as_bytes()).unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (500, "unsupported action 'erase'")
    );
    assert_eq!(signatures(&h), json!(["Ada", "Grace"]));
}

#[test]
fn backup_factory_reset_restore_gives_the_book_back() {
    let h = guestbook();
    h.apply_config(&json!({"greeting": "Hello"}));
    sign(&h, "Ada").unwrap();
    let archive = h.backup(&json!({})).expect("backup");

    h.factory_reset().expect("factory reset");
    assert_eq!(signatures(&h), json!([]));
    assert_eq!(h.host().read_file("/var/lib/guestbook/greeting"), None);

    h.restore(&archive).expect("restore");
    assert_eq!(signatures(&h), json!(["Ada"]));
    assert_eq!(h.host().read_text("/var/lib/guestbook/greeting"), "Hello");
    assert_eq!(h.host().mode("/var/lib/guestbook/book") & 0o777, 0o600);
}

#[test]
fn a_hostile_archive_is_refused_and_changes_nothing() {
    let h = guestbook();
    sign(&h, "Ada").unwrap();
    let traversal = archive(|b| {
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        // `set_path` refuses `..`: write the name into the header directly.
        header.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        header.set_cksum();
        b.append(&header, &b"hi"[..]).unwrap();
    });
    let through_link = archive(|b| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        b.append_link(&mut header, "out", "/etc").unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        b.append_data(&mut header, "out/passwd", &b"hi"[..])
            .unwrap();
    });
    for (what, bytes) in [
        ("traversal", traversal),
        ("write through a link", through_link),
        ("not gzip", b"plain text".to_vec()),
    ] {
        let err = h.restore(&bytes).expect_err(what);
        assert_eq!(err.status, 400, "{what}: {err:?}");
        assert_eq!(signatures(&h), json!(["Ada"]), "{what}: the book changed");
    }
    assert!(!h.host().real_path("/var/lib/escape").exists());
    assert!(!h.host().real_path("/etc/passwd").exists());
}
