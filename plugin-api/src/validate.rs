//! Checks that service configs share: host names, addresses, ports, URLs, UUIDs, base64,
//! PEM, iSCSI and NVMe names, OVSDB remotes, secret tokens, unique entries, and what any
//! text must be to land in a file or on a command line. Each returns whether the text is
//! well formed (or its parts); messages are the caller's, so they can name the field and
//! never echo a secret.

use std::net::{IpAddr, Ipv6Addr};

use serde::Serialize;
use serde_json::Value;

/// A DNS host name: dot-separated labels of letters, digits and `-` (not at either end),
/// 63 bytes each, 253 in all; one trailing dot allowed.
pub fn host_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// An IP address literal (v4 or v6, no brackets) or a host name.
pub fn ip_or_host(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok() || host_name(s)
}

/// A port written in decimal, 1 to 65535, without leading zeros.
pub fn port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || p.starts_with('0') || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|&n| n > 0)
}

/// An endpoint: `host`, `host:port`, `ipv4`, `ipv4:port`, a bare `ipv6`, or
/// `[ipv6]` / `[ipv6]:port`. Returns the host (without brackets) and the port.
pub fn endpoint(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) = rest.split_once(']')?;
        host.parse::<Ipv6Addr>().ok()?;
        let port = match tail {
            "" => None,
            t => Some(port(t.strip_prefix(':')?)?),
        };
        return Some((host, port));
    }
    if s.parse::<Ipv6Addr>().is_ok() {
        return Some((s, None));
    }
    match s.rsplit_once(':') {
        Some((host, p)) => {
            (ip_or_host(host) && !host.contains(':')).then_some((host, Some(port(p)?)))
        }
        None => ip_or_host(s).then_some((s, None)),
    }
}

/// An `http://` or `https://` URL (scheme in any case) with a valid host (an IPv6 host in
/// brackets) and optional port, no credentials, no whitespace or control characters.
pub fn http_url(url: &str) -> bool {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return false;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let bare_v6 = !authority.starts_with('[') && authority.parse::<Ipv6Addr>().is_ok();
    !authority.contains('@') && !bare_v6 && endpoint(authority).is_some()
}

/// A socket address: `ipv4:port` or `[ipv6]:port` (an IP, not a host name).
pub fn socket_addr(s: &str) -> bool {
    match endpoint(s) {
        Some((host, Some(_))) => {
            host.parse::<IpAddr>().is_ok() && (s.starts_with('[') || !host.contains(':'))
        }
        _ => false,
    }
}

/// A network in CIDR form (`10.0.0.0/24`, `2001:db8::/32`).
pub fn cidr(s: &str) -> bool {
    let Some((addr, len)) = s.split_once('/') else {
        return false;
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    !len.is_empty()
        && (len == "0" || !len.starts_with('0'))
        && len.bytes().all(|b| b.is_ascii_digit())
        && len.parse::<u8>().is_ok_and(|l| l <= max)
}

/// A UUID in its 8-4-4-4-12 hexadecimal form.
pub fn uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Standard base64 with padding.
pub fn base64(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !s.is_empty()
        && s.len().is_multiple_of(4)
        && s.len() - body.len() <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// The labels of the PEM blocks making up `text` (`CERTIFICATE`, `PRIVATE KEY`, ...).
/// Only blank lines may stand outside blocks; header lines (legacy encrypted keys) are
/// refused. Error messages never quote the input.
pub fn pem_labels(text: &str) -> Result<Vec<String>, String> {
    let mut labels = vec![];
    let mut open: Option<(String, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let (line, n) = (line.trim_end(), n + 1);
        match &mut open {
            None if line.is_empty() => {}
            None => {
                let label = line
                    .strip_prefix("-----BEGIN ")
                    .and_then(|l| l.strip_suffix("-----"))
                    .ok_or_else(|| format!("line {n}: text outside a PEM block"))?;
                open = Some((label.to_string(), String::new()));
            }
            Some((label, body)) => {
                if let Some(end) = line
                    .strip_prefix("-----END ")
                    .and_then(|l| l.strip_suffix("-----"))
                {
                    if end != label {
                        return Err(format!("line {n}: END {end} does not close BEGIN {label}"));
                    }
                    if !base64(body) {
                        return Err(format!("the {label} block is not valid base64"));
                    }
                    labels.push(std::mem::take(label));
                    open = None;
                } else if line.contains(':') {
                    return Err(format!(
                        "line {n}: PEM headers are not supported (encrypted keys cannot be used)"
                    ));
                } else {
                    body.push_str(line.trim_start());
                }
            }
        }
    }
    if let Some((label, _)) = open {
        return Err(format!("the {label} block is not closed"));
    }
    if labels.is_empty() {
        return Err("no PEM block found".into());
    }
    Ok(labels)
}

/// Whether `text` is PEM made only of blocks whose label ends with `label` (so
/// `PRIVATE KEY` accepts `RSA PRIVATE KEY` and `EC PRIVATE KEY` too).
pub fn pem_of(text: &str, label: &str) -> bool {
    pem_labels(text).is_ok_and(|l| l.iter().all(|x| x.ends_with(label)))
}

/// Text that fits on one line of a file or in one command-line argument: no control
/// character at all (no newline, carriage return, tab or NUL).
pub fn single_line(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

/// Text written to a file as it is (PEM and the like): line breaks and tabs are fine, NUL
/// and every other control character are not.
pub fn text(s: &str) -> bool {
    s.chars()
        .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'))
}

/// A secret handed to a tool as one argument (a Tailscale auth key, a NetBird setup key):
/// not empty, no whitespace and no control character. Nothing else is assumed about its
/// form, which is the issuer's business.
pub fn token(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The longest iSCSI name (RFC 3720) or NVMe qualified name, in bytes.
pub const MAX_NAME_LEN: usize = 223;

/// An iSCSI name (RFC 3720 section 3.2.6.3, RFC 3980), at most 223 bytes:
///
/// - `iqn.<yyyy>-<mm>.<reversed domain>[:<unique name>]`, e.g.
///   `iqn.2004-10.org.linuxcontainers:01:6f1c2a9b`;
/// - `eui.` and 16 hexadecimal digits (an EUI-64);
/// - `naa.` and 16 or 32 hexadecimal digits.
///
/// Names compare case-insensitively, so capitals are accepted (some arrays print them).
/// The unique name takes letters and digits (Unicode ones too, as the RFC's stringprep
/// profile does), `-`, `.`, `:` and, beyond the RFC, `_`, which iSCSI targets accept.
pub fn iscsi_name(name: &str) -> bool {
    let hex = |s: &str, lens: &[usize]| {
        lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
    };
    if name.len() > MAX_NAME_LEN {
        return false;
    }
    if let Some(eui) = name.strip_prefix("eui.") {
        return hex(eui, &[16]);
    }
    if let Some(naa) = name.strip_prefix("naa.") {
        return hex(naa, &[16, 32]);
    }
    let Some(rest) = name.strip_prefix("iqn.") else {
        return false;
    };
    let (authority, unique) = match rest.split_once(':') {
        Some((authority, unique)) => (authority, Some(unique)),
        None => (rest, None),
    };
    let Some((date, domain)) = authority.split_once('.') else {
        return false;
    };
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let date_ok = date.split_once('-').is_some_and(|(year, month)| {
        digits(year, 4) && digits(month, 2) && ("01"..="12").contains(&month)
    });
    let domain_ok = domain.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    let unique_ok = unique.is_none_or(|u| {
        !u.is_empty()
            && u.chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '-' | '.' | ':' | '_'))
    });
    date_ok && domain_ok && unique_ok
}

/// An NVMe qualified name: `nqn.` and at most 223 bytes in all, without whitespace or
/// control characters. The rest is left free: the NVMe specification lets its owner pick
/// any UTF-8 text after the naming authority.
pub fn nqn(s: &str) -> bool {
    s.len() > "nqn.".len()
        && s.len() <= MAX_NAME_LEN
        && s.starts_with("nqn.")
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// One OVSDB remote, as OVN's `ovn-remote` lists them (comma-separated):
/// `tcp:<host>[:<port>]`, `ssl:<host>[:<port>]` or `unix:<absolute path>`. The host is an
/// [`endpoint`] host, except that an IPv6 address must be in brackets (OVS would take the
/// part after its last colon for the port). A path has no whitespace, control character
/// or comma.
pub fn ovsdb_remote(remote: &str) -> bool {
    if let Some(path) = remote.strip_prefix("unix:") {
        return path.starts_with('/')
            && !path
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == ',');
    }
    let Some(addr) = remote
        .strip_prefix("tcp:")
        .or_else(|| remote.strip_prefix("ssl:"))
    else {
        return false;
    };
    endpoint(addr).is_some_and(|(host, _)| addr.starts_with('[') || !host.contains(':'))
}

/// Checks every string of a config, map keys included: each must be [`single_line`], or
/// [`text`] in the fields named in `multi_line` (by their own name: `tls_client_key`, or
/// `tls_trusted_certificates` for each of its entries). Config strings end up in files and
/// on command lines, where a line break starts a new line or a new directive and a NUL
/// cannot be passed at all. The error names the field by its path
/// (`targets[0].address: ...`) and never quotes the value.
pub fn config_strings(config: &impl Serialize, multi_line: &[&str]) -> Result<(), String> {
    let value = serde_json::to_value(config).map_err(|e| format!("invalid config: {e}"))?;
    strings(&value, "", None, multi_line)
}

/// [`config_strings`] below `path`; `field` is the name of the object key `value` is under.
fn strings(
    value: &Value,
    path: &str,
    field: Option<&str>,
    multi_line: &[&str],
) -> Result<(), String> {
    match value {
        Value::String(s) if field.is_some_and(|f| multi_line.contains(&f)) => {
            if text(s) {
                return Ok(());
            }
            Err(format!(
                "{path}: NUL and control characters other than line breaks and tabs are not \
                 allowed"
            ))
        }
        Value::String(s) => {
            if single_line(s) {
                return Ok(());
            }
            Err(format!(
                "{path}: line breaks, NUL and other control characters are not allowed"
            ))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| strings(item, &format!("{path}[{i}]"), field, multi_line)),
        Value::Object(map) => map.iter().try_for_each(|(key, item)| {
            let at = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            if !single_line(key) {
                let within = if path.is_empty() { "the config" } else { path };
                return Err(format!(
                    "{within}: a key holds a line break, NUL or another control character"
                ));
            }
            strings(item, &at, Some(key), multi_line)
        }),
        _ => Ok(()),
    }
}

/// The first entry that repeats an earlier one, compared by `key`: `Some((i, j))` where
/// entry `i` has the same key as the earlier entry `j` (the smallest such `i`, and its
/// first match `j`), `None` when all keys differ. For "entry i: duplicate of entry j"
/// errors.
pub fn first_duplicate<'a, T, K: PartialEq>(
    items: &'a [T],
    key: impl Fn(&'a T) -> K,
) -> Option<(usize, usize)> {
    let keys: Vec<K> = items.iter().map(key).collect();
    keys.iter()
        .enumerate()
        .find_map(|(i, k)| keys[..i].iter().position(|o| o == k).map(|j| (i, j)))
}

/// Checks a list of entries: each with `check` (its error becomes `<what> <i>: <error>`),
/// then that no two share a `key` (`<what> <i>: duplicate of <what> <j>`). The first
/// problem found is the error.
pub fn entries<'a, T, K: PartialEq>(
    items: &'a [T],
    what: &str,
    check: impl Fn(&'a T) -> Result<(), String>,
    key: impl Fn(&'a T) -> K,
) -> Result<(), String> {
    for (i, item) in items.iter().enumerate() {
        check(item).map_err(|e| format!("{what} {i}: {e}"))?;
    }
    match first_duplicate(items, key) {
        Some((i, j)) => Err(format!("{what} {i}: duplicate of {what} {j}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_checked_one_by_one_then_for_duplicates() {
        let check = |n: &u32| {
            if *n > 9 {
                Err(format!("{n} is too big"))
            } else {
                Ok(())
            }
        };
        assert_eq!(entries(&[1, 2, 3], "number", check, |n| *n), Ok(()));
        assert_eq!(
            entries(&[1, 2, 1, 12], "number", check, |n| *n),
            Err("number 3: 12 is too big".to_string())
        );
        assert_eq!(
            entries(&[1, 2, 1], "number", check, |n| *n),
            Err("number 2: duplicate of number 0".to_string())
        );
        assert_eq!(
            entries(&[1, 11], "number", check, |n| *n % 10),
            Err("number 1: 11 is too big".to_string())
        );
    }

    #[test]
    fn host_names_and_endpoints() {
        assert!(host_name("mon-1.example.org") && host_name("a.") && host_name("localhost"));
        assert!(!host_name("") && !host_name("-a") && !host_name("a b") && !host_name("a..b"));
        assert_eq!(endpoint("10.0.0.1:3300"), Some(("10.0.0.1", Some(3300))));
        assert_eq!(
            endpoint("[2001:db8::1]:6789"),
            Some(("2001:db8::1", Some(6789)))
        );
        assert_eq!(endpoint("2001:db8::1"), Some(("2001:db8::1", None)));
        assert_eq!(endpoint("mon.example.org"), Some(("mon.example.org", None)));
        for bad in [
            "10.0.0.1:0",
            "10.0.0.1:65536",
            "host:",
            "[::1",
            "[nope]:1",
            "a b:1",
            "1.2.3.4:08",
        ] {
            assert_eq!(endpoint(bad), None, "{bad}");
        }
    }

    #[test]
    fn urls_cidrs_uuids() {
        assert!(http_url("https://api.netbird.io:443/x") && http_url("http://[::1]:8080"));
        assert!(!http_url("ftp://x") && !http_url("https://") && !http_url("https://u:p@h"));
        assert!(
            http_url("HTTPS://Example.org")
                && !http_url("http://fd00::1")
                && !http_url("https://h/a b")
        );
        assert!(socket_addr("10.0.0.1:53") && socket_addr("[::1]:53"));
        assert!(!socket_addr("dns.example:53") && !socket_addr("10.0.0.1") && !socket_addr("::1"));
        assert!(!cidr("10.0.0.0/08") && cidr("0.0.0.0/0"));
        assert!(
            cidr("10.0.0.0/8")
                && cidr("2001:db8::/32")
                && !cidr("10.0.0.0/33")
                && !cidr("10.0.0.0")
        );
        assert!(uuid("6e0f3b5c-9a1d-4c57-8d2e-0f1a2b3c4d5e") && !uuid("6e0f3b5c9a1d"));
        assert!(base64("QUJD") && base64("QUI=") && !base64("QUI") && !base64("a*bc"));
    }

    #[test]
    fn pem() {
        let cert = "-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n";
        let key = "-----BEGIN RSA PRIVATE KEY-----\nQUJD\n-----END RSA PRIVATE KEY-----\n";
        assert_eq!(pem_labels(cert).unwrap(), ["CERTIFICATE"]);
        assert!(
            pem_of(cert, "CERTIFICATE")
                && pem_of(key, "PRIVATE KEY")
                && !pem_of(key, "CERTIFICATE")
        );
        assert!(pem_labels("hello").is_err());
        assert!(pem_labels("-----BEGIN X-----\nQUJD\n")
            .unwrap_err()
            .contains("not closed"));
        let secret = "-----BEGIN PRIVATE KEY-----\nsecret!!\n-----END PRIVATE KEY-----\n";
        assert!(!pem_labels(secret).unwrap_err().contains("secret"));
    }

    #[test]
    fn lines_text_and_tokens() {
        assert!(single_line("a b=c") && single_line(""));
        for bad in ["a\nb", "a\rb", "a\0b", "a\tb", "a\u{85}b"] {
            assert!(!single_line(bad), "{bad:?}");
        }
        assert!(text("-----BEGIN X-----\r\nQUJD\n\tx\n") && text(""));
        assert!(!text("QUJD\0") && !text("a\u{1b}[0m"));
        assert!(token("tskey-auth-k1-ABC?ephemeral=true") && token("6E1C4D2A-..."));
        for bad in ["", "a b", "a\n", "\0", "a\tb", "a\u{a0}b"] {
            assert!(!token(bad), "{bad:?}");
        }
    }

    #[test]
    fn iscsi_names() {
        for good in [
            "iqn.2004-10.org.linuxcontainers:01:6f1c2a9b7e3d",
            "iqn.2003-01.org.linux-iscsi.host.x8664:sn.d1a2b3c4d5e6",
            "iqn.2000-01.com.synology:DS920.Target-1.5c3d2f",
            "iqn.1992-08.com.netapp:sn.4082367740",
            "iqn.2005-10.org.freenas.ctl:disk_1",
            "iqn.2024-12.example",
            "eui.02004567A425678D",
            "naa.52004567ba64678d",
            "naa.6001405abcdef0123456789abcdef012",
        ] {
            assert!(iscsi_name(good), "{good}");
        }
        let long = format!("iqn.2024-01.com.example:{}", "a".repeat(200));
        for bad in [
            "",
            "iqn.",
            "storage.disk1",
            "IQN.2024-01.com.example:x",
            "iqn.2024-1.com.example:x",
            "iqn.2024-13.com.example:x",
            "iqn.24-01.com.example:x",
            "iqn.2024-01:x",
            "iqn.2024-01.:x",
            "iqn.2024-01.com..example:x",
            "iqn.2024-01.com.exa_mple:x",
            "iqn.2024-01.com.example:",
            "iqn.2024-01.com.example:a b",
            "iqn.2024-01.com.example:a\nb",
            "iqn.2024-01.com.example:a\0",
            "iqn.2024-01.com.example:a/b",
            "eui.02004567A425678",
            "eui.02004567A425678DX",
            "naa.52004567BA64678D0",
            long.as_str(),
        ] {
            assert!(!iscsi_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn nqns() {
        assert!(nqn(
            "nqn.2014-08.org.nvmexpress:uuid:6e0f3b5c-9a1d-4c57-8d2e-0f1a2b3c4d5e"
        ));
        assert!(nqn("nqn.2014-08.org.nvmexpress.discovery"));
        let long = format!("nqn.{}", "a".repeat(220));
        for bad in [
            "",
            "nqn.",
            "iqn.2024-01.x:y",
            "nqn.a b",
            "nqn.a\n",
            "nqn.\0",
            &long,
        ] {
            assert!(!nqn(bad), "{bad:?}");
        }
    }

    #[test]
    fn ovsdb_remotes() {
        for good in [
            "tcp:192.0.2.1:6642",
            "ssl:[2001:db8::1]:6642",
            "tcp:ovn.example.org",
            "ssl:ovn-central:6642",
            "unix:/run/ovn/ovnsb_db.sock",
        ] {
            assert!(ovsdb_remote(good), "{good}");
        }
        for bad in [
            "",
            "192.0.2.1:6642",
            "ptcp:6642",
            "tcp:",
            "tcp:2001:db8::1",
            "tcp:192.0.2.1:0",
            "tcp:a b:6642",
            "tcp:192.0.2.1:6642\n",
            "unix:",
            "unix:run/ovn.sock",
            "unix:/run/ovn\n.sock",
            "unix:/run/ovn\0",
            "unix:/run/my ovn.sock",
            "unix:/a,tcp:b",
        ] {
            assert!(!ovsdb_remote(bad), "{bad:?}");
        }
    }

    #[test]
    fn config_strings_name_the_field_and_never_quote_it() {
        let ok = serde_json::json!({
            "enabled": true,
            "targets": [{"address": "10.0.0.1", "port": 1}],
            "tls_key": "-----BEGIN X-----\r\nQUJD\n-----END X-----\n",
            "chain": ["a\nb", "c\td"],
        });
        assert_eq!(config_strings(&ok, &["tls_key", "chain"]), Ok(()));
        let err = |v: serde_json::Value| config_strings(&v, &["tls_key"]).unwrap_err();
        let e = err(serde_json::json!({"targets": [{"a": "x"}, {"address": "s3cret\n"}]}));
        assert!(
            e.starts_with("targets[1].address: line breaks") && !e.contains("s3cret"),
            "{e}"
        );
        assert!(err(serde_json::json!({"tls_key": "QUJD\0"})).starts_with("tls_key: NUL"));
        assert!(err(serde_json::json!({"other": "a\nb"})).starts_with("other: line breaks"));
        let e = err(serde_json::json!({"clusters": {"a\nb": {}}}));
        assert!(
            e.starts_with("clusters: a key holds") && !e.contains('\n'),
            "{e}"
        );
        let e = err(serde_json::json!({"m": {"k": ["ok", "\0"]}}));
        assert!(e.starts_with("m.k[1]: "), "{e}");
    }

    #[test]
    fn first_duplicate_names_the_repeat_and_what_it_repeats() {
        let none: [&str; 0] = [];
        assert_eq!(first_duplicate(&none, |s| *s), None);
        assert_eq!(first_duplicate(&["a", "b", "c"], |s| *s), None);
        assert_eq!(first_duplicate(&["a", "b", "a", "b"], |s| *s), Some((2, 0)));
        // The earliest repeat wins, matched with the first entry it repeats.
        assert_eq!(
            first_duplicate(&["x", "b", "b", "x", "b"], |s| *s),
            Some((2, 1))
        );
        // Compared by key only.
        let pairs = [("t", 1), ("t", 2), ("u", 1)];
        assert_eq!(first_duplicate(&pairs, |p| p.1), Some((2, 0)));
        assert_eq!(first_duplicate(&pairs, |p| p.0), Some((1, 0)));
        assert_eq!(first_duplicate(&pairs, |p| *p), None);
    }
}
