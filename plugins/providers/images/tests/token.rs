//! Token registration and authenticated requests, with the tpm2 tools scripted (the real
//! TPM is tier 3: `tier3_tpm_auth.rs`) and the rest real: openssl encrypting to the
//! authentication certificate, the host's HTTP client, a local server.

mod common;

use common::*;
use incus_osd_harness::testserver::Reply as HttpReply;
use incus_osd_harness::{Harness, Reply};
use incus_osd_provider_common::testing::sha256_hex;
use serde_json::json;

const PEM: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQ\n-----END PUBLIC KEY-----\n";
const SIGNATURE: &str = "a scripted signature";

const LOAD: [&str; 9] = [
    "tpm2_load",
    "-C",
    "/run/incus-os/tpm-auth.primary.ctx",
    "-u",
    "/var/lib/incus-os/tpm-auth.pub",
    "-r",
    "/var/lib/incus-os/tpm-auth.priv",
    "-c",
    "/run/incus-os/tpm-auth.key.ctx",
];

/// Scripts the tpm2 tools: every one succeeds, `tpm2_sign` prints [`SIGNATURE`].
fn script_tpm(h: &Harness) {
    let host = h.host();
    for tool in [
        "tpm2_createprimary",
        "tpm2_create",
        "tpm2_load",
        "tpm2_evictcontrol",
        "tpm2_flushcontext",
    ] {
        host.on_command(&[tool], Reply::ok(""));
    }
    host.on_command(&["tpm2_sign"], Reply::ok(SIGNATURE));
}

/// A key made on an earlier boot: its files are there.
fn persisted_key(h: &Harness) {
    let host = h.host();
    host.put_file("/run/incus-os/tpm-auth.primary.ctx", b"primary", 0o600);
    host.put_file("/var/lib/incus-os/tpm-auth.pub", b"pub", 0o600);
    host.put_file("/var/lib/incus-os/tpm-auth.priv", b"priv", 0o600);
    host.put_file("/var/lib/incus-os/tpm-auth.pem", PEM.as_bytes(), 0o644);
}

/// The tpm2 commands run, without the flushes.
fn tpm_commands(h: &Harness) -> Vec<Vec<String>> {
    h.host()
        .commands()
        .into_iter()
        .filter(|c| c[0].starts_with("tpm2_") && c[0] != "tpm2_flushcontext")
        .collect()
}

fn registers_then_signs_every_request(query_mode: bool) {
    let site = Site::new();
    let auth = AuthKey::new();
    let h = site.plugin(&auth);
    script_tpm(&h);
    persisted_key(&h);
    let mut config = json!({"server_url": site.url(), "token": "the-registration-token"});
    if query_mode {
        config["authentication_by_query_param"] = json!("true");
        site.server
            .handle_prefix("/os/register/", HttpReply::new(200, ""));
    } else {
        site.server.handle("/os/register", HttpReply::new(200, ""));
    }
    h.apply_config(&config);

    register(&h).unwrap();
    let path = if query_mode {
        "/os/register/"
    } else {
        "/os/register"
    };
    let reqs = site.requests_to(path);
    assert_eq!(reqs.len(), 1);
    let reg = received_registration(&reqs[0], query_mode);
    let keys: Vec<&str> = reg
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["initial", "machine_id", "public_key", "token"]);
    assert_eq!(reg["machine_id"], MACHINE_ID);
    assert_eq!(reg["token"], "the-registration-token");
    assert_eq!(reg["public_key"], PEM);
    let initial = check_token(&auth, reg["initial"].as_str().unwrap());
    assert_eq!(initial.signature, SIGNATURE.as_bytes());
    // The registration itself carries no token.
    assert_eq!(reqs[0].header("x-incusos-authentication"), None);
    assert_eq!(
        h.host().logged(incus_osd_harness::LogLevel::Info),
        ["Server successfully registered with the 'images' provider"]
    );
    // The persisted key is loaded, not made again.
    assert_eq!(tpm_commands(&h)[0], LOAD);
    assert!(
        !tpm_commands(&h)
            .iter()
            .any(|c| c[0] == "tpm2_create" || c[0] == "tpm2_createprimary"),
        "{:?}",
        tpm_commands(&h)
    );
    // The key is signed over exactly the encrypted DER.
    let sign = h
        .host()
        .command_calls()
        .into_iter()
        .find(|c| c.argv[0] == "tpm2_sign")
        .unwrap();
    assert_eq!(sign.stdin, initial.der);

    // Every later request carries a fresh token.
    lookup_os(&h).unwrap();
    h.invoke("clear-cache", b"").unwrap();
    lookup_os(&h).unwrap();
    let index = site.requests_to("/os/index.sjson");
    assert_eq!(index.len(), 2);
    let tokens: Vec<String> = index.iter().map(|r| carried_token(r, query_mode)).collect();
    for t in &tokens {
        check_token(&auth, t);
    }
    assert_ne!(tokens[0], tokens[1], "a fresh token per request");

    // Downloads too.
    let file = b"an application image";
    std::fs::create_dir_all(site.dir.path().join("os/202601010000")).unwrap();
    std::fs::write(site.dir.path().join("os/202601010000/app.raw"), file).unwrap();
    let order = json!({"context": context(), "target": {"kind": "os"},
        "release": {"version": "202601010000", "files": [{"filename": "app.raw",
            "sha256": sha256_hex(file), "size": file.len(), "type": "application"}]},
        "target_dir": "/var/lib/incus-os-extensions/202601010000"});
    h.invoke("fetch", order.to_string().as_bytes()).unwrap();
    let got = site.requests_to("/os/202601010000/app.raw");
    assert_eq!(got.len(), 1);
    check_token(&auth, &carried_token(&got[0], query_mode));

    // Refreshing is a no-op with a token; deregistering only forgets.
    let before = site.server.requests().len();
    h.invoke("refresh", br#"{"cause":"system-is-ready"}"#)
        .unwrap();
    h.invoke("deregister", b"").unwrap();
    assert_eq!(site.server.requests().len(), before);
}

#[test]
fn header_mode_registers_and_signs_every_request() {
    registers_then_signs_every_request(false);
}

#[test]
fn query_mode_registers_and_signs_every_request() {
    registers_then_signs_every_request(true);
}

#[test]
fn the_first_registration_makes_and_persists_the_key() {
    let site = Site::new();
    let auth = AuthKey::new();
    let h = site.plugin(&auth);
    script_tpm(&h);
    // The scripted tpm2_create writes nothing: the PEM stands for what it would write.
    h.host()
        .put_file("/var/lib/incus-os/tpm-auth.pem", PEM.as_bytes(), 0o644);
    site.server.handle("/os/register", HttpReply::new(200, ""));
    h.apply_config(&json!({"server_url": site.url(), "token": "t"}));
    register(&h).unwrap();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        tpm_commands(&h),
        [
            s(&[
                "tpm2_createprimary",
                "-C",
                "e",
                "-c",
                "/run/incus-os/tpm-auth.primary.ctx"
            ]),
            s(&[
                "tpm2_create",
                "-G",
                "ecc",
                "-u",
                "/var/lib/incus-os/tpm-auth.pub",
                "-r",
                "/var/lib/incus-os/tpm-auth.priv",
                "-C",
                "/run/incus-os/tpm-auth.primary.ctx",
                "-f",
                "pem",
                "-o",
                "/var/lib/incus-os/tpm-auth.pem"
            ]),
            s(&LOAD),
            s(&[
                "tpm2_evictcontrol",
                "-C",
                "o",
                "-c",
                "/run/incus-os/tpm-auth.key.ctx"
            ]),
            s(&[
                "tpm2_sign",
                "-c",
                "/run/incus-os/tpm-auth.key.ctx",
                "--hash-algorithm",
                "sha256",
                "--scheme",
                "ecdsa",
                "--format",
                "plain",
                "--signature",
                "/dev/stdout",
                "/dev/stdin"
            ]),
        ]
    );
    // Each tpm2 tool is followed by a flush of transient objects.
    let all: Vec<String> = h
        .host()
        .commands()
        .into_iter()
        .filter(|c| c[0].starts_with("tpm2_"))
        .map(|c| c.join(" "))
        .collect();
    for pair in all.chunks(2) {
        assert_eq!(pair[1], "tpm2_flushcontext -t", "{all:#?}");
    }
}

#[test]
fn the_servers_refusal_is_the_error() {
    let site = Site::new();
    let auth = AuthKey::new();
    let h = site.plugin(&auth);
    script_tpm(&h);
    persisted_key(&h);
    h.apply_config(&json!({"server_url": site.url(), "token": "expired"}));
    site.server.handle(
        "/os/register",
        HttpReply::new(400, "registration token has expired\n"),
    );
    let err = register(&h).unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (500, "registration token has expired")
    );
    site.server
        .handle("/os/register", HttpReply::new(503, "busy"));
    let err = register(&h).unwrap_err();
    assert_eq!(err.message, "bad HTTP response code for registration: 503");
    assert!(h
        .host()
        .logged(incus_osd_harness::LogLevel::Info)
        .is_empty());
}

#[test]
fn without_the_auth_certificate_nothing_is_signed_or_sent() {
    let site = Site::new();
    let auth = AuthKey::new();
    let h = site.plugin(&auth);
    script_tpm(&h);
    persisted_key(&h);
    std::fs::remove_file(h.host().real_path(AUTH_CERT)).unwrap();
    site.server.handle("/os/register", HttpReply::new(200, ""));
    h.apply_config(&json!({"server_url": site.url(), "token": "t"}));
    let err = register(&h).unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (
            500,
            "authentication token generation isn't supported on this system"
        )
    );
    let err = lookup_os(&h).unwrap_err();
    assert_eq!(
        err.message,
        format!(
            "cannot get {}/index.sjson: authentication token generation isn't supported on this system",
            site.url()
        )
    );
    assert!(tpm_commands(&h).is_empty());
    assert!(site.server.requests().is_empty(), "nothing sent");
}

#[test]
fn a_tpm_failure_stops_the_registration_before_the_server_is_asked() {
    let site = Site::new();
    let auth = AuthKey::new();
    let h = site.plugin(&auth);
    script_tpm(&h);
    persisted_key(&h);
    h.host().on_command(
        &["tpm2_load"],
        Reply::fail(1, "ERROR: Unable to run tpm2_load"),
    );
    site.server.handle("/os/register", HttpReply::new(200, ""));
    h.apply_config(&json!({"server_url": site.url(), "token": "t"}));
    let err = register(&h).unwrap_err();
    assert_eq!(
        err.message,
        format!(
            "Failed to run: {}: exit status 1 (ERROR: Unable to run tpm2_load)",
            LOAD.join(" ")
        )
    );
    assert!(site.server.requests().is_empty());
    // The flush still ran after the failed tool.
    assert_eq!(
        h.host().commands().last().unwrap().join(" "),
        "tpm2_flushcontext -t"
    );
}

#[test]
fn a_bad_machine_id_makes_no_token() {
    let site = Site::new();
    let auth = AuthKey::new();
    let h = site.plugin(&auth);
    script_tpm(&h);
    persisted_key(&h);
    h.apply_config(&json!({"server_url": site.url(), "token": "t"}));
    let input = json!({"context": {"machine_id": ""}});
    let err = h
        .invoke("register", input.to_string().as_bytes())
        .unwrap_err();
    assert_eq!(
        err.message,
        "cannot make an authentication token: bad machine id \"\""
    );
    assert!(h.host().commands().is_empty());
}
