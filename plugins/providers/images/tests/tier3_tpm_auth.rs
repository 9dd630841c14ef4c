//! Tier 3: token registration with a real (software) TPM. The images provider, loaded as
//! the daemon loads it, makes its key with the real tpm2 tools on swtpm, registers with a
//! local server and signs its requests; the test checks each token as a server would
//! (decrypted with the authentication key, signature verified by openssl against the
//! registered public key).
//!
//! The tpm2 tools run on this machine with upstream's OS paths (`/var/lib/incus-os/...`,
//! `/run/incus-os/...`), while the plugin reads the same files through the host, under the
//! harness's temporary root. Each scenario runs on its own thread in a private mount
//! namespace where `/run` and `/var/lib` are that root's, so both see the same files and
//! nothing on this machine is touched.
#![allow(unsafe_code)] // audited: unshare(2) and mount(2) on a test thread, checked

mod common;

use std::ffi::CString;
use std::path::Path;
use std::process::Command;

use common::*;
use incus_osd_harness::testserver::Reply as HttpReply;
use incus_osd_harness::Harness;
use incus_osd_test_machine::{tier3_or_return, Swtpm};
use serde_json::json;

const PEM_PATH: &str = "/var/lib/incus-os/tpm-auth.pem";
const TOOLS: [&str; 8] = [
    "tpm2_getcap",
    "tpm2_readpublic",
    "tpm2_createprimary",
    "tpm2_create",
    "tpm2_load",
    "tpm2_evictcontrol",
    "tpm2_sign",
    "tpm2_flushcontext",
];

/// Gives the calling thread (and the commands it starts) a private mount namespace in
/// which `/run` and `/var/lib` are `root`'s.
fn private_mounts(root: &Path) {
    let c = |p: &str| CString::new(p).unwrap();
    // SAFETY: plain system calls with valid NUL-terminated strings; CLONE_NEWNS affects
    // only this thread (its fs state is unshared with it).
    unsafe {
        assert_eq!(
            libc::unshare(libc::CLONE_NEWNS),
            0,
            "unshare: {}",
            std::io::Error::last_os_error()
        );
        let none = c("none");
        let slash = c("/");
        assert_eq!(
            libc::mount(
                none.as_ptr(),
                slash.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            0,
            "making / private: {}",
            std::io::Error::last_os_error()
        );
        for dir in ["run", "var/lib"] {
            let source = c(root.join(dir).to_str().unwrap());
            let target = c(&format!("/{dir}"));
            assert_eq!(
                libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null()
                ),
                0,
                "bind {dir}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// The tpm2 tools the plugin ran since the last clear, without the flushes.
fn tpm_tools(h: &Harness) -> Vec<String> {
    h.host()
        .commands()
        .into_iter()
        .filter(|c| c[0].starts_with("tpm2_") && c[0] != "tpm2_flushcontext")
        .map(|c| c[0].clone())
        .collect()
}

/// Registers; returns the registration the server received, checked as a server checks
/// it: the token's machine id and stamp, and the initial token's signature by the key.
fn register_and_check(
    site: &Site,
    auth: &AuthKey,
    h: &Harness,
    query_mode: bool,
) -> serde_json::Value {
    let before = site.server.requests().len();
    register(h).unwrap_or_else(|e| panic!("register: {} {}", e.status, e.message));
    let reqs = site.server.requests();
    assert_eq!(reqs.len(), before + 1, "one registration request");
    let req = &reqs[before];
    assert!(req.path.starts_with("/os/register"), "{}", req.path);
    assert_eq!(req.header("x-incusos-authentication"), None);
    let reg = received_registration(req, query_mode);
    assert_eq!(reg["machine_id"], MACHINE_ID);
    assert_eq!(reg["token"], "registration-token");
    let public_key = reg["public_key"].as_str().unwrap();
    assert!(
        public_key.starts_with("-----BEGIN PUBLIC KEY-----"),
        "{public_key}"
    );
    assert_eq!(public_key, h.host().read_text(PEM_PATH));
    let initial = check_token(auth, reg["initial"].as_str().unwrap());
    assert!(
        signature_verifies(public_key, &initial.der, &initial.signature),
        "the initial token is signed by the registered key"
    );
    let mut tampered = initial.der.clone();
    tampered[0] ^= 1;
    assert!(!signature_verifies(
        public_key,
        &tampered,
        &initial.signature
    ));
    reg
}

fn scenario(tcti: &str, query_mode: bool) {
    let site = Site::new();
    let auth = AuthKey::new();
    let h = site.plugin(&auth);
    for tool in TOOLS {
        h.host().on_command_real(&[tool]);
    }
    make_key_dirs(&h);
    private_mounts(root_of(&h));
    let mut config = json!({"server_url": site.url(), "token": "registration-token"});
    if query_mode {
        config["authentication_by_query_param"] = json!("true");
        site.server
            .handle_prefix("/os/register/", HttpReply::new(200, ""));
    } else {
        site.server.handle("/os/register", HttpReply::new(200, ""));
    }
    h.apply_config(&config);

    // First registration: the key is made, loaded and made persistent.
    let first = register_and_check(&site, &auth, &h, query_mode);
    assert_eq!(
        tpm_tools(&h),
        [
            "tpm2_createprimary",
            "tpm2_create",
            "tpm2_load",
            "tpm2_evictcontrol",
            "tpm2_sign"
        ]
    );
    for f in [
        "/var/lib/incus-os/tpm-auth.pub",
        "/var/lib/incus-os/tpm-auth.priv",
        "/run/incus-os/tpm-auth.primary.ctx",
        "/run/incus-os/tpm-auth.key.ctx",
    ] {
        assert!(h.host().read_file(f).is_some(), "{f} written");
    }
    let persistent = Command::new("tpm2_getcap")
        .args(["-T", tcti, "handles-persistent"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&persistent.stdout).contains("0x81"),
        "the key is persistent: {}",
        String::from_utf8_lossy(&persistent.stdout)
    );

    // Later requests carry a token signed by the registered key.
    let public_key = first["public_key"].as_str().unwrap().to_string();
    lookup_os(&h).unwrap();
    let index = site.requests_to("/os/index.sjson");
    assert_eq!(index.len(), 1);
    let t = check_token(&auth, &carried_token(&index[0], query_mode));
    assert!(signature_verifies(&public_key, &t.der, &t.signature));

    // Registering again reuses the persisted key: it is only loaded.
    h.host().clear_effects();
    let second = register_and_check(&site, &auth, &h, query_mode);
    assert_eq!(second["public_key"], first["public_key"]);
    assert_eq!(tpm_tools(&h), ["tpm2_load", "tpm2_sign"]);

    // After a reboot (/run is empty) the primary is made again, the key still only loaded.
    for f in ["tpm-auth.primary.ctx", "tpm-auth.key.ctx"] {
        std::fs::remove_file(h.host().real_path(&format!("/run/incus-os/{f}"))).unwrap();
    }
    h.host().clear_effects();
    let third = register_and_check(&site, &auth, &h, query_mode);
    assert_eq!(third["public_key"], first["public_key"]);
    assert_eq!(
        tpm_tools(&h),
        ["tpm2_createprimary", "tpm2_load", "tpm2_sign"]
    );

    // A key the daemon made (its `/internal/auth` endpoints): persistent, its public half on
    // disk, no blobs. It is found by its public half among the persistent objects (the
    // second scenario has two there) and used; no key is made over it.
    for f in ["tpm-auth.pub", "tpm-auth.priv"] {
        std::fs::remove_file(h.host().real_path(&format!("/var/lib/incus-os/{f}"))).unwrap();
    }
    h.host().clear_effects();
    let fourth = register_and_check(&site, &auth, &h, query_mode);
    assert_eq!(fourth["public_key"], first["public_key"]);
    let tools = tpm_tools(&h);
    assert_eq!(
        tools.first().map(String::as_str),
        Some("tpm2_getcap"),
        "{tools:?}"
    );
    assert_eq!(
        tools.last().map(String::as_str),
        Some("tpm2_sign"),
        "{tools:?}"
    );
    assert!(
        tools[1..tools.len() - 1]
            .iter()
            .all(|t| t == "tpm2_readpublic"),
        "{tools:?}"
    );
    // A public half no persistent key has (the TPM was cleared) is replaced by a new key's.
    let stale = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEAQEBAQEBAQEBAQEBAQEBAQEBAQEB\nAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ==\n-----END PUBLIC KEY-----\n";
    std::fs::write(h.host().real_path(PEM_PATH), stale).unwrap();
    h.host().clear_effects();
    let fifth = register_and_check(&site, &auth, &h, query_mode);
    assert_ne!(fifth["public_key"], stale);
    assert_ne!(fifth["public_key"], first["public_key"]);
    assert!(tpm_tools(&h).iter().any(|t| t == "tpm2_create"));

    // The server's refusal is the error.
    let refusal = HttpReply::new(400, "this registration token was already used\n");
    if query_mode {
        site.server.handle_prefix("/os/register/", refusal);
    } else {
        site.server.handle("/os/register", refusal);
    }
    let err = register(&h).unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (500, "this registration token was already used")
    );
}

#[test]
fn tier3_token_registration_with_a_real_tpm() {
    tier3_or_return!();
    let tpm = Swtpm::start().expect("swtpm");
    let tcti = tpm.tcti();
    // The tools read it from the daemon's environment; this test binary runs only this
    // test, so nothing else reads the environment meanwhile.
    std::env::set_var("TPM2TOOLS_TCTI", &tcti);
    for query_mode in [false, true] {
        let tcti = tcti.clone();
        std::thread::spawn(move || scenario(&tcti, query_mode))
            .join()
            .unwrap_or_else(|_| panic!("query mode {query_mode}: see above"));
    }
    drop(tpm);
}
