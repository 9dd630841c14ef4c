//! Checks that service configs share: host names, addresses, ports, URLs, UUIDs, base64
//! and PEM. Each returns whether the text is well formed (or its parts); messages are the
//! caller's, so they can name the field and never echo a secret.

use std::net::{IpAddr, Ipv6Addr};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
