//! The management address this machine gives Operations Center to reach it.
//!
//! The host does not tell plugins about the network yet, so the address is read from the
//! kernel's own lists (under the host's root prefix): the first IPv4 address the machine
//! owns (`/proc/net/fib_trie`, its `/32 host LOCAL` entries) that is neither loopback nor
//! link-local, else the first global IPv6 address (`/proc/net/if_inet6`, scope 0) that is
//! not loopback. Which interface carries the `management` role is not known here: the
//! first usable address wins.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use plugin_api::{Host, Result};

/// The kernel's IPv4 routing trie (local addresses included).
pub const FIB_TRIE: &str = "/proc/net/fib_trie";
/// The kernel's IPv6 addresses.
pub const IF_INET6: &str = "/proc/net/if_inet6";
/// The port the primary application listens on, as upstream registers it.
pub const PORT: u16 = 8443;

/// The IPv4 addresses of this machine in `fib_trie` (in order, without repeats), minus
/// loopback and link-local ones.
pub fn ipv4_addresses(fib_trie: &str) -> Vec<Ipv4Addr> {
    let mut found = vec![];
    let mut last: Option<Ipv4Addr> = None;
    for line in fib_trie.lines() {
        let line = line.trim();
        if let Some(ip) = line.strip_prefix("|-- ") {
            last = ip.trim().parse().ok();
        } else if line.starts_with("/32 host LOCAL") {
            if let Some(ip) = last.take() {
                if !ip.is_loopback() && !ip.is_link_local() && !found.contains(&ip) {
                    found.push(ip);
                }
            }
        }
    }
    found
}

/// The global IPv6 addresses in `if_inet6` (in order), minus loopback.
pub fn ipv6_addresses(if_inet6: &str) -> Vec<Ipv6Addr> {
    let mut found = vec![];
    for line in if_inet6.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [hex, _index, _prefix, scope, ..] = fields[..] else {
            continue;
        };
        if scope != "00" || hex.len() != 32 {
            continue;
        }
        let Ok(bits) = u128::from_str_radix(hex, 16) else {
            continue;
        };
        let ip = Ipv6Addr::from(bits);
        if !ip.is_loopback() && !found.contains(&ip) {
            found.push(ip);
        }
    }
    found
}

/// This machine's management address (see the module documentation), `None` when it has
/// none.
pub fn management_address(host: &Host) -> Result<Option<IpAddr>> {
    if let Some(text) = host.read_to_string(FIB_TRIE)? {
        if let Some(ip) = ipv4_addresses(&text).first() {
            return Ok(Some(IpAddr::V4(*ip)));
        }
    }
    if let Some(text) = host.read_to_string(IF_INET6)? {
        if let Some(ip) = ipv6_addresses(&text).first() {
            return Ok(Some(IpAddr::V6(*ip)));
        }
    }
    Ok(None)
}

/// `https://<ip>:8443` (an IPv6 address in brackets).
pub fn connection_url(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => format!("https://{ip}:{PORT}"),
        IpAddr::V6(ip) => format!("https://[{ip}]:{PORT}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIB: &str = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 169.254.0.0/16 2 0 2
           |-- 169.254.3.4
              /32 host LOCAL
     +-- 192.0.2.0/24 2 0 2
        +-- 192.0.2.0/30 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
     |-- 198.51.100.7
        /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
           |-- 192.0.2.2
              /32 host LOCAL
";

    #[test]
    fn the_machines_own_ipv4_addresses_come_from_the_local_entries() {
        assert_eq!(
            ipv4_addresses(FIB),
            [Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(198, 51, 100, 7)]
        );
        assert!(ipv4_addresses("").is_empty());
    }

    #[test]
    fn only_global_ipv6_addresses_count() {
        let text = "fe8000000000000000fc00fffe000001 04 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
20010db8000000000000000000000002 04 40 00 80     eth0
garbage
";
        assert_eq!(
            ipv6_addresses(text),
            ["2001:db8::2".parse::<Ipv6Addr>().unwrap()]
        );
    }

    #[test]
    fn urls_put_ipv6_in_brackets() {
        assert_eq!(
            connection_url("192.0.2.2".parse().unwrap()),
            "https://192.0.2.2:8443"
        );
        assert_eq!(
            connection_url("2001:db8::2".parse().unwrap()),
            "https://[2001:db8::2]:8443"
        );
    }
}
