//! Tier 3: the network subsystem's OS calls against real parts. A container with its own
//! network namespace runs systemd-networkd, resolved, hostnamed, timedated and timesyncd;
//! its "physical" NIC `nic0` is one end of a veth pair whose other end, `peer0`, sits in a
//! peer namespace on the host with `dnsmasq` (DHCPv4 and DNS) behind it. The host reads the
//! container's links over a netlink socket opened in the container's namespace and talks
//! to its services over the container's D-Bus socket.

use std::path::PathBuf;

use incus_osd::platform::kernel::KernelFiles;
use incus_osd::platform::network::netlink::Netlink;
use incus_osd::platform::network::{LinkState, Route};
use incus_osd_test_machine::{tier3_or_return, Machine, NetNs};

/// Packages the machine needs beside the base ones (networkd, hostnamed and timedated are
/// part of `systemd` in Debian 12).
const PACKAGES: &[&str] = &["systemd-resolved", "systemd-timesyncd"];

/// The container's NIC, the peer end and their addresses.
const NIC: &str = "nic0";
const PEER: &str = "peer0";
const PEER_V4: &str = "192.0.2.1";
const PEER_V6: &str = "2001:db8::1";

/// A booted machine and the peer namespace its `nic0` is linked to.
struct Bed {
    m: Machine,
    peer: NetNs,
}

impl Bed {
    async fn new() -> Bed {
        let (m, peer) = tokio::task::spawn_blocking(|| {
            let m = Machine::builder().packages(PACKAGES).boot().expect("boot");
            let peer = NetNs::new().expect("peer netns");
            peer.add_veth_to_pid(PEER, m.pid(), NIC).expect("veth");
            peer.add_address(PEER, &format!("{PEER_V4}/24")).unwrap();
            peer.ip(&[
                "addr",
                "add",
                &format!("{PEER_V6}/64"),
                "dev",
                PEER,
                "nodad",
            ])
            .unwrap();
            (m, peer)
        })
        .await
        .unwrap();
        eprintln!("machine {} booted in {:?}", m.name(), m.boot_duration());
        Bed { m, peer }
    }

    /// A netlink socket in the container's network namespace, reading speeds from the
    /// container's sysfs.
    fn netlink(&self) -> Netlink {
        let ns = PathBuf::from(format!("/proc/{}/ns/net", self.m.pid()));
        let sys = KernelFiles {
            proc: self.m.host_path("/proc"),
            sys: self.m.host_path("/sys"),
        };
        Netlink::connect_in(&ns, sys).expect("netlink in the container's namespace")
    }

    fn sh(&self, script: &str) -> String {
        self.m
            .sh(script)
            .unwrap_or_else(|e| panic!("{script}: {e:#}"))
    }

    /// The container's own view of a sysfs attribute of a link.
    fn sysfs(&self, link: &str, attr: &str) -> String {
        self.sh(&format!("cat /sys/class/net/{link}/{attr}"))
            .trim()
            .to_string()
    }

    fn ping_from_peer(&self, ip: &str) {
        let out = self
            .peer
            .exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", ip])
            .unwrap();
        assert!(out.success(), "ping {ip} from the peer: {out:?}");
    }
}

async fn link(nl: &Netlink, name: &str) -> LinkState {
    nl.link(name)
        .await
        .expect("read links")
        .unwrap_or_else(|| panic!("no link {name}"))
}

fn route(to: &str, via: Option<&str>) -> Route {
    Route {
        to: to.into(),
        via: via.map(Into::into),
        ipv6: to.contains(':') || via.is_some_and(|v| v.contains(':')),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netlink_reads_links_addresses_routes_and_counters_of_the_container_namespace() {
    tier3_or_return!();
    let bed = Bed::new().await;
    bed.sh(&format!(
        "ip link set {NIC} mtu 1400 up && \
         ip addr add 192.0.2.2/24 dev {NIC} && \
         ip addr add 2001:db8::2/64 dev {NIC} nodad && \
         ip route add 198.51.100.0/24 via {PEER_V4} && \
         ip link add br0 type bridge && ip link add v1 type veth peer name v2 && \
         ip link set v1 master br0"
    ));
    let nl = bed.netlink();

    let links = nl.links().await.unwrap();
    let mut names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
    names.sort_unstable();
    // Only the container's links: the host's and the peer's are in other namespaces.
    assert_eq!(names, ["br0", "lo", NIC, "v1", "v2"]);
    assert!(
        !names.contains(&PEER),
        "the peer's end is in another namespace"
    );

    let nic = link(&nl, NIC).await;
    assert_eq!(nic.kind.as_deref(), Some("veth"));
    assert_eq!(nic.mtu, 1400);
    assert_eq!(nic.max_mtu, Some(65535), "veth's largest MTU");
    assert_eq!(nic.mac.as_deref(), Some(bed.sysfs(NIC, "address").as_str()));
    assert_eq!(nic.permanent_mac, None, "a veth has no permanent address");
    assert_eq!(nic.operstate, "up");
    assert_eq!(nic.master, None);
    // The kernel's fe80:: address is there but left out.
    assert!(bed
        .sh(&format!("ip -6 addr show dev {NIC}"))
        .contains("fe80::"));
    assert_eq!(nic.addresses, ["192.0.2.2/24", "2001:db8::2/64"]);
    assert!(
        nic.routes
            .contains(&route("198.51.100.0/24", Some(PEER_V4))),
        "{:?}",
        nic.routes
    );
    assert!(
        nic.routes.contains(&route("192.0.2.0/24", None)),
        "{:?}",
        nic.routes
    );
    assert!(
        nic.routes.contains(&route("2001:db8::/64", None)),
        "{:?}",
        nic.routes
    );
    assert!(
        nic.routes.iter().all(|r| !r.to.starts_with("fe80:")),
        "{:?}",
        nic.routes
    );
    assert_eq!(nic.speed.as_deref(), Some(bed.sysfs(NIC, "speed").as_str()));

    let v1 = link(&nl, "v1").await;
    assert_eq!(v1.master.as_deref(), Some("br0"));
    assert_eq!(v1.operstate, "down");
    assert_eq!(link(&nl, "br0").await.kind.as_deref(), Some("bridge"));

    // Counters move with real traffic, both ways.
    let before = nic.stats;
    bed.ping_from_peer("192.0.2.2");
    bed.ping_from_peer("2001:db8::2");
    let after = link(&nl, NIC).await.stats;
    assert!(
        after.rx_packets >= before.rx_packets + 6,
        "{before:?} -> {after:?}"
    );
    assert!(
        after.tx_packets >= before.tx_packets + 6,
        "{before:?} -> {after:?}"
    );
    assert!(after.rx_bytes > before.rx_bytes && after.tx_bytes > before.tx_bytes);
    assert_eq!(after.rx_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netlink_sets_a_mac_brings_a_link_up_and_deletes_a_virtual_link() {
    tier3_or_return!();
    let bed = Bed::new().await;
    bed.sh("ip link add v1 type veth peer name v2");
    let nl = bed.netlink();

    nl.set_mac(NIC, "02:11:22:33:44:55").await.expect("set mac");
    assert_eq!(bed.sysfs(NIC, "address"), "02:11:22:33:44:55");
    assert_eq!(
        link(&nl, NIC).await.mac.as_deref(),
        Some("02:11:22:33:44:55")
    );
    let e = nl.set_mac(NIC, "02:11:22:33:44").await.unwrap_err();
    assert_eq!(e.0, "invalid MAC address \"02:11:22:33:44\"");
    let e = nl.set_mac("nope0", "02:11:22:33:44:55").await.unwrap_err();
    assert_eq!(e.0, "no network link named nope0");
    // A multicast address is refused by the kernel, with its reason.
    let e = nl.set_mac(NIC, "01:00:5e:00:00:01").await.unwrap_err();
    assert!(
        e.0.starts_with("cannot set the MAC address of nic0 to 01:00:5e:00:00:01: "),
        "{e}"
    );
    assert_eq!(bed.sysfs(NIC, "address"), "02:11:22:33:44:55", "unchanged");

    assert_eq!(bed.sysfs("v1", "flags"), "0x1002", "v1 starts down");
    nl.set_up("v1").await.expect("up");
    assert_eq!(bed.sysfs("v1", "flags"), "0x1003", "IFF_UP set");

    assert!(nl.delete("v1").await.expect("delete"));
    // Deleting one end of a veth takes its peer too.
    let out = bed.m.run(&["ip", "link", "show", "v2"]).unwrap();
    assert!(!out.success(), "v2 should be gone: {out:?}");
    assert!(link_absent(&nl, "v1").await);
    assert!(
        !nl.delete("v1").await.expect("delete again"),
        "nothing to delete"
    );
}

async fn link_absent(nl: &Netlink, name: &str) -> bool {
    nl.link(name).await.unwrap().is_none()
}
