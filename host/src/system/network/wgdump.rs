//! A WireGuard device's live state from `wg show <device> dump`: wg's machine-readable
//! listing (tab-separated; the device's line, then one line per peer), not the text for
//! people that upstream reads. Counters are exact byte counts (upstream rounds wg's
//! `1.23 KiB`); the latest handshake is shown as wg shows it to people (`1 minute, 3
//! seconds ago`), which is upstream's field.

use super::model::{
    SystemNetworkInterfaceStats, SystemNetworkWireguardPeerState, SystemNetworkWireguardState,
};

/// Parses a dump taken at `now` (seconds since the epoch).
pub fn parse(dump: &str, now: i64) -> Result<SystemNetworkWireguardState, String> {
    let mut lines = dump.lines().filter(|l| !l.trim().is_empty());
    let device: Vec<&str> = lines
        .next()
        .ok_or("wg printed nothing for the device")?
        .split('\t')
        .collect();
    // private-key public-key listen-port fwmark
    let [_, public_key, port, _] = device[..] else {
        return Err(format!(
            "wg's device line has {} fields, not 4",
            device.len()
        ));
    };
    let mut state = SystemNetworkWireguardState {
        listening_port: port
            .parse()
            .map_err(|_| format!("wg's listening port {port:?} is not a number"))?,
        public_key: public_key.to_string(),
        peers: Vec::new(),
    };
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        // public-key preshared-key endpoint allowed-ips latest-handshake rx tx keepalive
        let [key, _, endpoint, allowed, handshake, rx, tx, keepalive] = f[..] else {
            return Err(format!("a wg peer line has {} fields, not 8", f.len()));
        };
        let number = |what: &str, v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("wg's peer {what} {v:?} is not a number"))
        };
        let handshake = number("handshake", handshake)?;
        state.peers.push(SystemNetworkWireguardPeerState {
            allowed_ips: match allowed {
                "(none)" | "" => Vec::new(),
                list => list.split(',').map(str::to_string).collect(),
            },
            endpoint: none_as_empty(endpoint),
            latest_handshake: if handshake == 0 {
                String::new()
            } else {
                ago(now - handshake as i64)
            },
            persistent_keepalive: match keepalive {
                "off" | "" => String::new(),
                secs => format!("every {}", duration(number("keepalive", secs)? as i64)),
            },
            public_key: key.to_string(),
            stats: SystemNetworkInterfaceStats {
                rx_bytes: number("received bytes", rx)?,
                tx_bytes: number("sent bytes", tx)?,
                ..Default::default()
            },
        });
    }
    Ok(state)
}

fn none_as_empty(v: &str) -> String {
    if v == "(none)" {
        String::new()
    } else {
        v.to_string()
    }
}

/// `1 minute, 3 seconds ago`, `Now` at zero (wg's wording).
fn ago(secs: i64) -> String {
    if secs <= 0 {
        return "Now".into();
    }
    format!("{} ago", duration(secs))
}

/// `2 days, 1 hour, 5 seconds` (wg's wording: years, days, hours, minutes, seconds; the
/// zero ones left out).
fn duration(secs: i64) -> String {
    let units = [
        ("year", 365 * 24 * 3600),
        ("day", 24 * 3600),
        ("hour", 3600),
        ("minute", 60),
        ("second", 1),
    ];
    let mut left = secs.max(0);
    let mut parts = vec![];
    for (name, size) in units {
        let n = left / size;
        left %= size;
        if n > 0 {
            parts.push(format!("{n} {name}{}", if n == 1 { "" } else { "s" }));
        }
    }
    if parts.is_empty() {
        "0 seconds".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `wg show wg0 dump` of a device with two peers (one never reached), as wg prints it.
    const DUMP: &str = "YBLi6hhw7ozCAdcvQJ6dJHu9V1cj4DcxlHJSFJ2TKmQ=\tqN4vH2fUVlKoZ0z7r1yJj3lXb4Kd0g3zQ3V6bT2t0Ts=\t51820\toff\n\
oH5y2bqC8j8yG6qkZB3Y1TQ3nSAMVn2mXlWOPzHz9T0=\t(none)\t192.0.2.7:51820\t10.10.0.2/32,fd00::2/128\t1765100000\t15432\t98765\toff\n\
Xk2p0j4Vd9nqk3M8y5F8v0rj3Qn4s8Wq9t7L1c2d3e4=\t(none)\t(none)\t10.10.0.3/32\t0\t0\t0\t25\n";

    #[test]
    fn a_dump_gives_the_device_and_each_peer() {
        let s = parse(DUMP, 1765100063).unwrap();
        assert_eq!(s.listening_port, 51820);
        assert_eq!(s.public_key, "qN4vH2fUVlKoZ0z7r1yJj3lXb4Kd0g3zQ3V6bT2t0Ts=");
        assert_eq!(s.peers.len(), 2);
        let p = &s.peers[0];
        assert_eq!(p.public_key, "oH5y2bqC8j8yG6qkZB3Y1TQ3nSAMVn2mXlWOPzHz9T0=");
        assert_eq!(p.endpoint, "192.0.2.7:51820");
        assert_eq!(p.allowed_ips, ["10.10.0.2/32", "fd00::2/128"]);
        assert_eq!(p.latest_handshake, "1 minute, 3 seconds ago");
        assert_eq!((p.stats.rx_bytes, p.stats.tx_bytes), (15432, 98765));
        assert_eq!(p.persistent_keepalive, "");
        let q = &s.peers[1];
        assert_eq!((q.endpoint.as_str(), q.latest_handshake.as_str()), ("", ""));
        assert_eq!(q.persistent_keepalive, "every 25 seconds");
    }

    #[test]
    fn durations_read_as_wg_writes_them() {
        assert_eq!(ago(0), "Now");
        assert_eq!(ago(1), "1 second ago");
        assert_eq!(ago(3600 + 1), "1 hour, 1 second ago");
        assert_eq!(ago(2 * 86400 + 120), "2 days, 2 minutes ago");
        assert_eq!(ago(365 * 86400 + 86400), "1 year, 1 day ago");
    }

    #[test]
    fn a_dump_that_is_not_wgs_is_an_error() {
        assert!(parse("", 0).unwrap_err().contains("nothing"));
        assert!(parse("a\tb\n", 0).unwrap_err().contains("not 4"));
        assert!(parse("a\tb\tport\toff\n", 0)
            .unwrap_err()
            .contains("is not a number"));
        let bad_peer = "a\tb\t51820\toff\nk\t(none)\t(none)\t(none)\tsoon\t0\t0\toff\n";
        assert!(parse(bad_peer, 0).unwrap_err().contains("handshake"));
    }
}
