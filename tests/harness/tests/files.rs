//! The file capabilities of contract 1.3 as a plugin sees them, through the real ABI:
//! `tests/fixtures/files-1-3` (declared path `/var/lib/files-1-3`) calls them from its
//! routes, over the harness host (the daemon's own `HostOps` and `RootFs`).

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use incus_osd_harness::{built_plugin, FileEffect, Harness, PluginError};
use serde_json::{json, Value};

const DIR: &str = "/var/lib/files-1-3";

fn plugin() -> Harness {
    Harness::load(built_plugin("fixture_files_1_3")).expect("the fixture loads")
}

fn call(p: &Harness, op: &str, body: Value) -> Result<Value, PluginError> {
    p.invoke(op, json!({ "body": body }).to_string().as_bytes())
}

#[track_caller]
fn refused(p: &Harness, op: &str, body: Value, text: &str) -> PluginError {
    let e = call(p, op, body.clone()).expect_err(&format!("{op} {body} was allowed"));
    assert!(e.message.contains(text), "{op} {body}: {e:?}");
    e
}

fn fnv(data: &[u8]) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The outside directory, next to the harness's root, and a link to it from inside the
/// declared path (absolute: inside the root it names a path that is not there).
fn escape(p: &Harness) -> tempfile::TempDir {
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), b"outside").unwrap();
    fs::set_permissions(
        outside.path().join("secret"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let dir = p.host().real_path(DIR);
    fs::create_dir_all(&dir).unwrap();
    symlink(outside.path(), dir.join("out")).unwrap();
    outside
}

#[track_caller]
fn untouched(outside: &Path) {
    let names: Vec<_> = fs::read_dir(outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["secret"]);
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"outside");
    assert_eq!(
        fs::metadata(outside.join("secret")).unwrap().mode() & 0o7777,
        0o600
    );
}

#[test]
fn a_large_file_streams_through_its_descriptor() {
    let p = plugin();
    // Anywhere under the root may be read.
    let data: Vec<u8> = (0..40u32 << 20)
        .map(|i| (i.wrapping_mul(31) >> 3) as u8)
        .collect();
    p.host().put_file("/srv/big.img", &data, 0o644);
    let got = call(&p, "sum", json!({"path": "/srv/big.img"})).unwrap();
    assert_eq!(got, json!({"size": data.len(), "fnv": fnv(&data)}));
    // The same as the whole file moved across (1.2's file_read).
    assert_eq!(
        call(&p, "read", json!({"path": "/srv/big.img"})).unwrap(),
        got
    );
    assert_eq!(
        call(&p, "sum", json!({"path": "/srv/none"})).unwrap(),
        Value::Null
    );
}

#[test]
fn a_stream_is_written_atomically_and_nothing_is_left_behind() {
    let p = plugin();
    p.host().put_file(&format!("{DIR}/conf"), b"old", 0o600);
    let got = call(
        &p,
        "write",
        json!({"path": format!("{DIR}/conf"), "text": "new contents", "mode": 0o640}),
    )
    .unwrap();
    assert_eq!(got, json!({"written": 12}));
    assert_eq!(p.host().read_text(&format!("{DIR}/conf")), "new contents");
    assert_eq!(p.host().mode(&format!("{DIR}/conf")), 0o640);
    // Only the file is there: the temporary one was renamed over it.
    let names: Vec<_> = fs::read_dir(p.host().real_path(DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["conf"]);
    let effects = p.host().file_effects();
    assert!(
        matches!(&effects[..], [FileEffect::OpenedForWrite { path: tmp }, FileEffect::Renamed { from, to, flags: 0 }]
            if tmp == from && to == &format!("{DIR}/conf") && tmp.ends_with(".incus-osd-tmp")),
        "{effects:?}"
    );
    // The temporary name is one the host's clean-up of leftovers recognises.
    let FileEffect::OpenedForWrite { path: tmp } = &effects[0] else {
        unreachable!()
    };
    let tmp_name = tmp.rsplit('/').next().unwrap();
    assert_eq!(
        plugin_host::files::temp_target(std::ffi::OsStr::new(tmp_name)),
        Some(&b"conf"[..]),
        "{tmp_name}"
    );
    // Outside the declared paths: refused, nothing written.
    refused(
        &p,
        "write",
        json!({"path": "/etc/conf", "text": "x", "mode": 0o644}),
        "\"/etc/",
    );
    assert!(p.host().read_file("/etc/conf").is_none());
}

#[test]
fn facts_match_the_file() {
    let p = plugin();
    let path = format!("{DIR}/f");
    p.host().put_file(&path, b"12345", 0o751);
    let real = p.host().real_path(&path);
    let when = std::time::UNIX_EPOCH + Duration::new(1_700_000_000, 5);
    fs::File::options()
        .write(true)
        .open(&real)
        .unwrap()
        .set_modified(when)
        .unwrap();
    let meta = fs::metadata(&real).unwrap();
    let got = call(&p, "facts", json!({"path": path})).unwrap();
    assert_eq!(
        got,
        json!({"kind": "file", "mode": 0o751, "size": 5, "mtime": [1_700_000_000, 5],
               "uid": meta.uid(), "gid": meta.gid(), "link": ""})
    );
    let outside = escape(&p);
    let link = call(&p, "facts", json!({"path": format!("{DIR}/out")})).unwrap();
    assert_eq!(link["kind"], "symlink");
    assert_eq!(link["link"], outside.path().to_str().unwrap());
    assert_eq!(
        call(&p, "facts", json!({"path": format!("{DIR}/out/secret")})).unwrap(),
        Value::Null
    );
}

#[test]
fn chown_symlink_and_rename_work_inside_the_declared_paths_and_nowhere_else() {
    let p = plugin();
    let outside = escape(&p);
    let h = p.host();
    h.put_file(&format!("{DIR}/a"), b"a", 0o644);
    h.put_file(&format!("{DIR}/b"), b"b", 0o644);
    h.put_file("/etc/other", b"o", 0o644);
    let me = fs::metadata(h.real_path(&format!("{DIR}/a"))).unwrap();

    call(
        &p,
        "chown",
        json!({"path": format!("{DIR}/a"), "uid": me.uid(), "gid": me.gid()}),
    )
    .unwrap();
    call(
        &p,
        "chown",
        json!({"path": format!("{DIR}/out"), "gid": me.gid()}),
    )
    .unwrap();
    refused(
        &p,
        "chown",
        json!({"path": "/etc/other", "uid": me.uid()}),
        "\"/etc/other\" is outside what this plugin may write",
    );
    refused(
        &p,
        "chown",
        json!({"path": format!("{DIR}/out/secret"), "uid": me.uid()}),
        "out/secret",
    );

    call(
        &p,
        "symlink",
        json!({"target": "a", "path": format!("{DIR}/l")}),
    )
    .unwrap();
    assert_eq!(
        fs::read_link(h.real_path(&format!("{DIR}/l"))).unwrap(),
        Path::new("a")
    );
    refused(
        &p,
        "symlink",
        json!({"target": "b", "path": format!("{DIR}/l")}),
        "already exists",
    );
    refused(
        &p,
        "symlink",
        json!({"target": "x", "path": "/etc/l"}),
        "outside what this plugin may write",
    );
    refused(
        &p,
        "symlink",
        json!({"target": "x", "path": format!("{DIR}/out/l")}),
        "out/l",
    );

    refused(
        &p,
        "rename",
        json!({"from": format!("{DIR}/a"), "to": format!("{DIR}/b"), "how": "noreplace"}),
        "already exists",
    );
    call(
        &p,
        "rename",
        json!({"from": format!("{DIR}/a"), "to": format!("{DIR}/b"), "how": "exchange"}),
    )
    .unwrap();
    assert_eq!(h.read_text(&format!("{DIR}/a")), "b");
    call(
        &p,
        "rename",
        json!({"from": format!("{DIR}/a"), "to": format!("{DIR}/b")}),
    )
    .unwrap();
    assert_eq!(h.read_text(&format!("{DIR}/b")), "b");
    assert!(h.read_file(&format!("{DIR}/a")).is_none());
    refused(
        &p,
        "rename",
        json!({"from": format!("{DIR}/b"), "to": "/etc/other"}),
        "\"/etc/other\" is outside",
    );
    refused(
        &p,
        "rename",
        json!({"from": "/etc/other", "to": format!("{DIR}/c")}),
        "\"/etc/other\" is outside",
    );
    assert!(call(
        &p,
        "rename",
        json!({"from": format!("{DIR}/b"), "to": format!("{DIR}/out/b")})
    )
    .is_err());
    assert!(call(
        &p,
        "rename",
        json!({"from": format!("{DIR}/out/secret"), "to": format!("{DIR}/s")})
    )
    .is_err());
    assert_eq!(h.read_text("/etc/other"), "o");
    assert_eq!(h.read_text(&format!("{DIR}/b")), "b");

    // Writing opens: declared paths only; never through the link out of the root.
    let create = 2 | 4;
    refused(
        &p,
        "open",
        json!({"path": "/etc/other", "flags": 2}),
        "outside what this plugin may write",
    );
    assert!(call(
        &p,
        "open",
        json!({"path": format!("{DIR}/out/secret"), "flags": create, "mode": 0o644})
    )
    .is_err());
    assert!(call(
        &p,
        "open",
        json!({"path": format!("{DIR}/out/new"), "flags": create, "mode": 0o644})
    )
    .is_err());
    let e = refused(
        &p,
        "open",
        json!({"path": format!("{DIR}/b"), "flags": 64}),
        "unknown open flags",
    );
    assert_eq!(e.status, 400);
    untouched(outside.path());
}

#[test]
fn a_fifo_is_refused_without_hanging() {
    let p = plugin();
    let fifo = p.host().real_path(&format!("{DIR}/fifo"));
    fs::create_dir_all(fifo.parent().unwrap()).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let read = call(&p, "sum", json!({"path": format!("{DIR}/fifo")}));
        let write = call(
            &p,
            "open",
            json!({"path": format!("{DIR}/fifo"), "flags": 2}),
        );
        tx.send((read, write)).unwrap();
    });
    let (read, write) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a FIFO hung the open");
    assert!(read
        .unwrap_err()
        .message
        .contains("a FIFO, not a regular file"));
    assert!(write
        .unwrap_err()
        .message
        .contains("a FIFO, not a regular file"));
}

#[test]
fn a_directory_reached_through_the_host_is_backed_up_and_restored() {
    let p = plugin();
    let h = p.host();
    h.put_file(&format!("{DIR}/app/keep"), b"old", 0o600);
    h.put_file(&format!("{DIR}/app/sub/x"), b"x", 0o644);
    let backup = call(&p, "backup", json!({"path": format!("{DIR}/app")})).unwrap();
    assert_eq!(backup["entries"], 3);
    h.put_file(&format!("{DIR}/app/keep"), b"changed", 0o600);
    h.put_file(&format!("{DIR}/app/extra"), b"e", 0o600);
    let restored = call(
        &p,
        "restore",
        json!({"path": format!("{DIR}/app"), "archive": backup["archive"]}),
    )
    .unwrap();
    assert_eq!(restored["entries"], 3);
    assert_eq!(h.read_text(&format!("{DIR}/app/keep")), "old");
    assert!(h.read_file(&format!("{DIR}/app/extra")).is_none());
    assert_eq!(h.mode(&format!("{DIR}/app/keep")), 0o600);
    // A directory outside the declared paths is not handed out.
    refused(
        &p,
        "backup",
        json!({"path": "/etc"}),
        "\"/etc\" is outside what this plugin may write",
    );
}

/// The SDK's atomic write, called directly over the harness host: a fill that fails leaves
/// the target as it was and no temporary file behind.
#[test]
fn a_failed_atomic_write_leaves_the_target_and_no_temporary_file() {
    use std::io::Write;
    let p = plugin();
    let host = plugin_api::Host::from_handle(p.host().handle());
    let path = format!("{DIR}/conf");
    p.host().put_file(&path, b"old", 0o600);
    let e = host
        .write_atomic(&path, 0o644, |f| {
            f.write_all(b"half")?;
            Err(plugin_api::Error::internal("the source broke"))
        })
        .unwrap_err();
    assert_eq!(e.message, "the source broke");
    assert_eq!(p.host().read_text(&path), "old");
    let names: Vec<_> = fs::read_dir(p.host().real_path(DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["conf"]);
    // Outside the declared paths nothing is even created.
    assert!(host.write_atomic("/etc/conf", 0o644, |_| Ok(())).is_err());
    assert!(p.host().read_file("/etc").is_none());
    let mut text = String::new();
    std::io::Read::read_to_string(&mut host.open_read(&path).unwrap().unwrap(), &mut text).unwrap();
    assert_eq!(text, "old");
}
