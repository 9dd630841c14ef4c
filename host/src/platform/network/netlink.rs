//! Link, address and route state over rtnetlink, and the few link changes the network
//! subsystem makes itself (MAC address, up, delete). No `ip` output is parsed.
//!
//! A [`Netlink`] owns one `NETLINK_ROUTE` socket. The socket belongs to the network
//! namespace it was opened in and stays there: [`Netlink::connect_in`] opens it on a
//! short-lived thread that first joins another namespace (a test container's
//! `/proc/<pid>/ns/net`), so the daemon's own threads never change namespace.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkInfo, LinkMessage, State};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use super::{LinkState, LinkStats, Route};
use crate::platform::kernel::KernelFiles;
use crate::platform::PlatformError;

/// One rtnetlink socket, in the namespace it was opened in.
#[derive(Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    /// Where `class/net/<dev>/speed` is read (the same namespace's sysfs).
    sys: KernelFiles,
}

fn err(what: &str, e: impl std::fmt::Display) -> PlatformError {
    PlatformError(format!("{what}: {e}"))
}

impl Netlink {
    /// A socket in the daemon's own network namespace. Call it inside a tokio runtime: the
    /// socket's driver runs as a task on it.
    pub fn connect(sys: KernelFiles) -> Result<Netlink, PlatformError> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| err("cannot open a netlink socket", e))?;
        tokio::spawn(conn);
        Ok(Netlink { handle, sys })
    }

    /// A socket in the network namespace whose file is `netns` (such as
    /// `/proc/<pid>/ns/net` or `/run/netns/<name>`): a fresh thread joins that namespace,
    /// opens the socket and exits; the socket keeps talking to that namespace. `sys` should
    /// be a sysfs mounted in the same namespace (e.g. `/proc/<pid>/root/sys`). Call it
    /// inside a tokio runtime.
    pub fn connect_in(netns: &Path, sys: KernelFiles) -> Result<Netlink, PlatformError> {
        let runtime = tokio::runtime::Handle::current();
        let path: PathBuf = netns.to_path_buf();
        let opened = std::thread::spawn(move || -> Result<_, PlatformError> {
            let ns = std::fs::File::open(&path)
                .map_err(|e| err(&format!("cannot open {}", path.display()), e))?;
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(|e| {
                err(
                    &format!("cannot join network namespace {}", path.display()),
                    e,
                )
            })?;
            let _entered = runtime.enter();
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|e| err("cannot open a netlink socket", e))?;
            Ok((conn, handle))
        })
        .join()
        .map_err(|_| PlatformError("the netlink thread panicked".into()))?;
        let (conn, handle) = opened?;
        tokio::spawn(conn);
        Ok(Netlink { handle, sys })
    }

    /// Every link with its addresses (link-local left out), routes and counters.
    pub async fn links(&self) -> Result<Vec<LinkState>, PlatformError> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| err("cannot list links", e))?;
        let names: HashMap<u32, String> = links
            .iter()
            .filter_map(|l| link_name(l).map(|n| (l.header.index, n)))
            .collect();
        let addresses: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| err("cannot list addresses", e))?;
        let mut routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| err("cannot list IPv4 routes", e))?;
        let v6: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| err("cannot list IPv6 routes", e))?;
        routes.extend(v6);

        let mut out: Vec<LinkState> = links.iter().filter_map(|l| link_state(l, &names)).collect();
        for state in &mut out {
            state.addresses = addresses
                .iter()
                .filter(|a| a.header.index == state.index)
                .filter_map(address_cidr)
                .collect();
            state.routes = routes
                .iter()
                .filter(|r| route_oif(r) == Some(state.index))
                .filter_map(route_entry)
                .collect();
            state.speed = self.speed(&state.name);
        }
        out.sort_by_key(|l| l.index);
        Ok(out)
    }

    /// One link by name; `None` when there is no such link.
    pub async fn link(&self, name: &str) -> Result<Option<LinkState>, PlatformError> {
        Ok(self.links().await?.into_iter().find(|l| l.name == name))
    }

    async fn index(&self, name: &str) -> Result<Option<u32>, PlatformError> {
        let found: Result<Vec<LinkMessage>, _> = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_collect()
            .await;
        match found {
            Ok(v) => Ok(v.first().map(|l| l.header.index)),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(err(&format!("cannot look up link {name}"), e)),
        }
    }

    async fn existing(&self, name: &str) -> Result<u32, PlatformError> {
        self.index(name)
            .await?
            .ok_or_else(|| PlatformError(format!("no network link named {name}")))
    }

    /// Sets a link's MAC address (`aa:bb:cc:dd:ee:ff`), as done to restore a NIC's
    /// permanent address before power-off so Wake-on-LAN packets match.
    pub async fn set_mac(&self, name: &str, mac: &str) -> Result<(), PlatformError> {
        let bytes = parse_mac(mac)?;
        let index = self.existing(name).await?;
        let msg = LinkUnspec::new_with_index(index).address(bytes).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| err(&format!("cannot set the MAC address of {name} to {mac}"), e))
    }

    /// Renames a link: down first (the kernel renames only links that are down).
    pub async fn rename(&self, name: &str, new_name: &str) -> Result<(), PlatformError> {
        let index = self.existing(name).await?;
        let down = LinkUnspec::new_with_index(index).down().build();
        self.handle
            .link()
            .set(down)
            .execute()
            .await
            .map_err(|e| err(&format!("cannot set {name} down"), e))?;
        let msg = LinkUnspec::new_with_index(index)
            .name(new_name.to_string())
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| err(&format!("cannot rename {name} to {new_name}"), e))
    }

    /// Sets a link administratively up.
    pub async fn set_up(&self, name: &str) -> Result<(), PlatformError> {
        let index = self.existing(name).await?;
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| err(&format!("cannot set {name} up"), e))
    }

    /// Deletes a (virtual) link, as `networkctl delete` does (`RTM_DELLINK`). Returns
    /// whether there was one to delete.
    pub async fn delete(&self, name: &str) -> Result<bool, PlatformError> {
        let Some(index) = self.index(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(false),
            Err(e) => Err(err(&format!("cannot delete link {name}"), e)),
        }
    }

    /// `class/net/<dev>/speed` in Mb/s; `None` when the driver has none (down, virtual
    /// without one) or reports it unknown (`-1`).
    fn speed(&self, name: &str) -> Option<String> {
        let path = self.sys.sys_path(&format!("class/net/{name}/speed"));
        let raw = std::fs::read_to_string(path).ok()?;
        let v = raw.trim();
        (!v.is_empty() && v != "-1").then(|| v.to_string())
    }
}

fn link_name(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn link_state(l: &LinkMessage, names: &HashMap<u32, String>) -> Option<LinkState> {
    let mut s = LinkState {
        index: l.header.index,
        name: link_name(l)?,
        ..LinkState::default()
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::Mtu(m) => s.mtu = *m,
            LinkAttribute::MaxMtu(m) => s.max_mtu = Some(*m),
            LinkAttribute::Address(b) => s.mac = format_mac(b),
            LinkAttribute::PermAddress(b) => s.permanent_mac = format_mac(b),
            LinkAttribute::OperState(st) => s.operstate = operstate(st),
            LinkAttribute::Controller(i) => s.master = names.get(i).cloned(),
            LinkAttribute::Stats64(st) => {
                s.stats = LinkStats {
                    rx_bytes: st.rx_bytes,
                    rx_packets: st.rx_packets,
                    rx_errors: st.rx_errors,
                    rx_dropped: st.rx_dropped,
                    tx_bytes: st.tx_bytes,
                    tx_packets: st.tx_packets,
                    tx_errors: st.tx_errors,
                    tx_dropped: st.tx_dropped,
                }
            }
            LinkAttribute::LinkInfo(infos) => {
                s.kind = infos.iter().find_map(|i| match i {
                    LinkInfo::Kind(k) => Some(k.to_string()),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    Some(s)
}

/// The kernel's `operstate` words, as in `/sys/class/net/<dev>/operstate`.
fn operstate(s: &State) -> String {
    match s {
        State::Unknown => "unknown".into(),
        State::NotPresent => "notpresent".into(),
        State::Down => "down".into(),
        State::LowerLayerDown => "lowerlayerdown".into(),
        State::Testing => "testing".into(),
        State::Dormant => "dormant".into(),
        State::Up => "up".into(),
        State::Other(n) => format!("unknown ({n})"),
        _ => "unknown".into(),
    }
}

/// `aa:bb:cc:dd:ee:ff`; `None` for an empty or all-zero address (a link without one).
pub(crate) fn format_mac(b: &[u8]) -> Option<String> {
    if b.is_empty() || b.iter().all(|x| *x == 0) {
        return None;
    }
    Some(
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// Six colon-separated hex bytes.
pub(crate) fn parse_mac(mac: &str) -> Result<Vec<u8>, PlatformError> {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|p| {
            if p.len() == 2 {
                u8::from_str_radix(p, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<_>>()
        .ok_or_else(|| PlatformError(format!("invalid MAC address {mac:?}")))?;
    if bytes.len() != 6 {
        return Err(PlatformError(format!("invalid MAC address {mac:?}")));
    }
    Ok(bytes)
}

/// Link-local: `fe80::/10` and `169.254.0.0/16`.
pub(crate) fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// `addr/prefix`, link-local addresses left out. For IPv4 the local address (`IFA_LOCAL`)
/// is the link's own; `IFA_ADDRESS` is the peer's on a point-to-point link.
fn address_cidr(a: &AddressMessage) -> Option<String> {
    if a.header.scope == AddressScope::Link {
        return None;
    }
    let local = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let ip = local.or_else(|| {
        a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })?;
    (!is_link_local(&ip)).then(|| format!("{ip}/{}", a.header.prefix_len))
}

fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A unicast route of the main table; link-local destinations (`fe80::/64`) left out.
fn route_entry(r: &RouteMessage) -> Option<Route> {
    if route_table(r) != u32::from(RouteHeader::RT_TABLE_MAIN)
        || r.header.kind != RouteType::Unicast
    {
        return None;
    }
    let dst = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => route_ip(d),
        _ => None,
    });
    let via = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(g) => route_ip(g),
        _ => None,
    });
    let to = match dst {
        Some(ip) if is_link_local(&ip) => return None,
        Some(ip) => format!("{ip}/{}", r.header.destination_prefix_length),
        None => "default".to_string(),
    };
    Some(Route {
        to,
        via: via.map(|v| v.to_string()),
        ipv6: r.header.address_family == AddressFamily::Inet6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip_and_bad_ones_are_refused() {
        let b = parse_mac("0a:1B:2c:3d:4e:5f").unwrap();
        assert_eq!(format_mac(&b).as_deref(), Some("0a:1b:2c:3d:4e:5f"));
        for bad in [
            "",
            "0a:1b:2c:3d:4e",
            "0a:1b:2c:3d:4e:5f:60",
            "0a:1b:2c:3d:4e:zz",
            "a:1b:2c:3d:4e:5f",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
        assert_eq!(format_mac(&[0; 6]), None);
        assert_eq!(format_mac(&[]), None);
    }

    #[test]
    fn link_local_covers_both_families() {
        for ll in ["fe80::1", "febf::1", "169.254.3.4"] {
            assert!(is_link_local(&ll.parse().unwrap()), "{ll}");
        }
        for not in ["fec0::1", "2001:db8::1", "10.0.0.1", "::1"] {
            assert!(!is_link_local(&not.parse().unwrap()), "{not}");
        }
    }
}
