//! The local proxy's files: /etc/environment and kpx.yaml (tier 1, pure).

use incus_osd::system::network::model::SystemNetworkProxy;
use incus_osd::system::network::proxy::{
    effective_rules, environment, kpx_config, setup, ProxySetup,
};
use serde_json::json;

fn proxy(value: serde_json::Value) -> SystemNetworkProxy {
    serde_json::from_value(value).unwrap()
}

#[test]
fn no_proxy_turns_everything_off() {
    assert_eq!(setup(None).unwrap(), ProxySetup::Off);
}

#[test]
fn a_proxy_config_writes_both_files() {
    let p = proxy(json!({}));
    assert_eq!(
        setup(Some(&p)).unwrap(),
        ProxySetup::Local {
            environment: "http_proxy=http://localhost:3128\nhttps_proxy=http://localhost:3128\n"
                .into(),
            kpx_yaml: "bind: localhost\nport: 3128\ncheck: false\nrules:\n    - host: '*'\n      proxy: direct\n"
                .into(),
        }
    );
    assert_eq!(
        environment(),
        "http_proxy=http://localhost:3128\nhttps_proxy=http://localhost:3128\n"
    );
}

#[test]
fn without_rules_everything_goes_to_the_first_server_by_name() {
    let p = proxy(json!({"servers": {
        "zeta": {"auth": "anonymous", "host": "z.example.org:8080"},
        "alpha": {"auth": "anonymous", "host": "a.example.org"}
    }}));
    assert_eq!(effective_rules(&p)[0].target, "alpha");
    assert_eq!(
        kpx_config(&p).unwrap(),
        "bind: localhost
port: 3128
check: false
proxies:
    alpha:
        host: a.example.org
        ssl: false
        type: anonymous
    zeta:
        host: z.example.org
        port: 8080
        ssl: false
        type: anonymous
rules:
    - host: '*'
      proxy: alpha
"
    );
}

#[test]
fn servers_credentials_kerberos_and_rules() {
    let p = proxy(json!({
        "servers": {
            "krb": {"auth": "kerberos", "host": "krb.corp.example.net:3128", "realm": "CORP.EXAMPLE.NET",
                    "username": "svc", "password": "s3cret"},
            "basic": {"auth": "basic", "host": "basic.corp.example.net:8443", "use_tls": true,
                      "username": "user", "password": "it's 1234"},
            "v6": {"auth": "anonymous", "host": "[fd00::3128]:3128"},
            "plain": {"auth": "anonymous", "host": "http://plain.example.org"},
            "tls": {"auth": "anonymous", "host": "https://tls.example.org/ignored/path"}
        },
        "rules": [
            {"destination": "*.blocked.example.net|blocked.example.net", "target": "none"},
            {"destination": "*.lan", "target": "direct"},
            {"destination": "*.example.net", "target": "basic"},
            {"destination": "*", "target": "krb"}
        ]
    }));
    assert_eq!(
        kpx_config(&p).unwrap(),
        "bind: localhost
port: 3128
check: false
proxies:
    basic:
        host: basic.corp.example.net
        port: 8443
        ssl: true
        type: basic
        credential: basic
    krb:
        host: krb.corp.example.net
        port: 3128
        ssl: false
        type: kerberos
        realm: CORP.EXAMPLE.NET
        credential: krb
        spn: HTTP
    plain:
        host: plain.example.org
        port: 80
        ssl: false
        type: anonymous
    tls:
        host: tls.example.org
        port: 443
        ssl: true
        type: anonymous
    v6:
        host: 'fd00::3128'
        port: 3128
        ssl: false
        type: anonymous
credentials:
    basic:
        login: user
        password: 'it''s 1234'
    krb:
        login: svc
        password: s3cret
rules:
    - host: '*.blocked.example.net|blocked.example.net'
      proxy: none
    - host: '*.lan'
      proxy: direct
    - host: '*.example.net'
      proxy: basic
    - host: '*'
      proxy: krb
"
    );
}

#[test]
fn values_yaml_would_misread_are_quoted() {
    let p = proxy(
        json!({"servers": {"s": {"auth": "basic", "host": "h", "username": "true",
        "password": "line\nbreak"}}}),
    );
    let text = kpx_config(&p).unwrap();
    assert!(
        text.contains("        login: 'true'\n        password: \"line\\nbreak\"\n"),
        "{text}"
    );
    let p = proxy(
        json!({"servers": {"s": {"auth": "basic", "host": "h", "username": "",
        "password": "0123"}}}),
    );
    let text = kpx_config(&p).unwrap();
    assert!(
        text.contains("        login: ''\n        password: '0123'\n"),
        "{text}"
    );
}

#[test]
fn refusals() {
    let cases = [
        (
            json!({"servers": {"direct": {"auth": "anonymous", "host": "p:3128"}}}),
            "cannot use reserved keyword 'direct' for proxy definition",
        ),
        (
            json!({"servers": {"none": {"auth": "anonymous", "host": "p:3128"}}}),
            "cannot use reserved keyword 'none' for proxy definition",
        ),
        (
            json!({"servers": {"p": {"auth": "ntlm", "host": "p:3128"}}}),
            "unsupported proxy authentication type ntlm",
        ),
        (
            json!({"rules": [{"destination": "*.example.org", "target": "corp"}]}),
            "no proxy defined for target corp",
        ),
        (
            json!({"servers": {"p": {"auth": "anonymous", "host": "p:99999"}}}),
            "proxy 'p' has an invalid host 'p:99999': invalid port '99999'",
        ),
        (
            json!({"servers": {"p": {"auth": "anonymous", "host": "socks5://p:1080"}}}),
            "proxy 'p' has an invalid host 'socks5://p:1080': unsupported scheme 'socks5'",
        ),
        (
            json!({"servers": {"p": {"auth": "anonymous", "host": "[fd00::1:3128"}}}),
            "proxy 'p' has an invalid host '[fd00::1:3128': missing ']' in host",
        ),
        (
            json!({"servers": {"p": {"auth": "anonymous", "host": ""}}}),
            "proxy 'p' has an invalid host '': no host name",
        ),
    ];
    for (config, want) in cases {
        assert_eq!(kpx_config(&proxy(config)).unwrap_err(), want);
    }
}

#[test]
fn a_host_named_like_a_scheme_is_still_a_host() {
    // Upstream only prefixes `http://` to hosts not starting with "http", so `httpproxy:3128`
    // would lose its name there; here it is a host like any other.
    let p = proxy(json!({"servers": {"p": {"auth": "anonymous", "host": "httpproxy:3128"}}}));
    assert!(kpx_config(&p)
        .unwrap()
        .contains("        host: httpproxy\n        port: 3128\n"));
}
