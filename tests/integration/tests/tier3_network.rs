//! Tier 3: the network subsystem's OS calls against real parts. A container with its own
//! network namespace runs systemd-networkd, resolved, hostnamed, timedated and timesyncd;
//! its "physical" NIC `nic0` is one end of a veth pair whose other end, `peer0`, sits in a
//! peer namespace on the host with `dnsmasq` (DHCPv4 and DNS) and an NTP server behind it.
//! The host reads the container's links over a netlink socket opened in the container's
//! namespace and talks to its services over the container's D-Bus socket.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use incus_osd::platform::kernel::KernelFiles;
use incus_osd::platform::network::dbus::DbusNetwork;
use incus_osd::platform::network::netlink::Netlink;
use incus_osd::platform::network::{LinkState, NetworkOs, Route};
use incus_osd_test_machine::{tier3_or_return, Dnsmasq, Machine, NetNs, NtpServer};

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

    /// The network OS calls against the container: its bus, its namespace, its root.
    async fn os(&self) -> DbusNetwork {
        DbusNetwork::connect(Some(self.m.bus_address()), self.netlink(), self.m.root())
            .await
            .expect("connect to the container's services")
    }

    fn set_hostname_inside(&self, name: &str) {
        self.sh(&format!("hostname {name}"));
    }

    /// Writes `/run/systemd/network/<name>`.
    fn network_file(&self, name: &str, text: &str) {
        self.m
            .write_file(format!("/run/systemd/network/{name}"), text)
            .unwrap();
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

/// nic0 with static IPv4 and IPv6 addresses, a route through the peer, an MTU, and the
/// peer's dnsmasq as DNS server.
const STATIC_NIC: &str = "[Match]\nName=nic0\n\n[Link]\nMTUBytes=1400\nRequiredForOnline=yes\n\n\
[Network]\nAddress=192.0.2.2/24\nAddress=2001:db8::2/64\nDNS=192.0.2.1\n\n\
[Route]\nDestination=198.51.100.0/24\nGateway=192.0.2.1\n";

const ONLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networkd_brings_static_addresses_a_route_and_the_mtu_online_as_netlink_reads_them() {
    tier3_or_return!();
    let bed = Bed::new().await;
    let _dns = Dnsmasq::builder(PEER)
        .host("example.test", "192.0.2.53")
        .no_such_domain("gone.test")
        .start(&bed.peer)
        .expect("dnsmasq");
    bed.network_file("10-nic0.network", STATIC_NIC);
    let os = bed.os().await;
    os.restart_networkd().await.expect("restart networkd");
    os.wait_online(&[NIC.to_string()], ONLINE)
        .await
        .expect("nic0 online");

    let status = os
        .link_status(NIC)
        .await
        .unwrap()
        .expect("networkd knows nic0");
    assert_eq!(status.online_state.as_deref(), Some("online"));
    assert_eq!(status.operational_state, "routable");
    assert_eq!(status.address_state, "routable");
    // Online does not wait for the last of networkd's configuration steps.
    assert!(
        ["configuring", "configured"].contains(&status.setup_state.as_str()),
        "{status:?}"
    );

    let nic = link(os.netlink(), NIC).await;
    assert_eq!(nic.mtu, 1400);
    assert_eq!(nic.operstate, "up");
    assert_eq!(nic.addresses, ["192.0.2.2/24", "2001:db8::2/64"]);
    assert!(
        nic.routes
            .contains(&route("198.51.100.0/24", Some(PEER_V4))),
        "{:?}",
        nic.routes
    );

    // Traffic from the peer reaches the configured addresses and moves the counters.
    bed.ping_from_peer("192.0.2.2");
    bed.ping_from_peer("2001:db8::2");
    let after = link(os.netlink(), NIC).await.stats;
    assert!(
        after.rx_packets >= nic.stats.rx_packets + 6,
        "{:?} -> {after:?}",
        nic.stats
    );

    // The same state through the trait object, from a blocking thread, as the subsystem
    // calls it.
    let os = std::sync::Arc::new(os);
    let shared: std::sync::Arc<dyn NetworkOs> = os.clone();
    let links = tokio::task::spawn_blocking(move || shared.links())
        .await
        .unwrap()
        .unwrap();
    let again = links.iter().find(|l| l.name == NIC).unwrap();
    assert_eq!(again.addresses, nic.addresses);

    // DNS through resolved, using the server networkd handed it: a known name resolves;
    // an unknown one is refused by the server, and a name it says does not exist gets
    // NXDOMAIN: both still count as DNS working.
    os.check_dns("example.test", Duration::from_secs(10))
        .await
        .expect("resolves");
    os.check_dns("linuxcontainers.org", Duration::from_secs(10))
        .await
        .expect("refused counts as working");
    os.check_dns("gone.test", Duration::from_secs(10))
        .await
        .expect("no such domain counts as working");
    let out = bed.m.run(&["resolvectl", "query", "gone.test"]).unwrap();
    // resolvectl's words for NXDOMAIN.
    assert_eq!(out.stderr.trim(), "gone.test: Name 'gone.test' not found");
    os.flush_dns_caches().await.expect("flush caches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_changed_network_file_without_restarting_networkd() {
    tier3_or_return!();
    let bed = Bed::new().await;
    let file = |addr: &str| format!("[Match]\nName=nic0\n\n[Network]\nAddress={addr}\n");
    bed.network_file("10-nic0.network", &file("192.0.2.2/24"));
    let os = bed.os().await;
    os.restart_networkd().await.expect("restart networkd");
    os.wait_online(&[NIC.to_string()], ONLINE)
        .await
        .expect("online");
    let pid = bed.sh("systemctl show -P MainPID systemd-networkd");

    bed.network_file("10-nic0.network", &file("192.0.2.3/24"));
    os.reload_networkd().await.expect("reload");
    let deadline = Instant::now() + ONLINE;
    loop {
        let nic = link(os.netlink(), NIC).await;
        if nic.addresses.contains(&"192.0.2.3/24".to_string()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new address: {:?}",
            nic.addresses
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        bed.sh("systemctl show -P MainPID systemd-networkd"),
        pid,
        "not restarted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networkd_takes_a_dhcp4_lease_and_default_route_from_dnsmasq() {
    tier3_or_return!();
    let bed = Bed::new().await;
    let dnsmasq = Dnsmasq::builder(PEER)
        .dhcp_range("192.0.2.100", "192.0.2.150")
        .start(&bed.peer)
        .expect("dnsmasq");
    bed.network_file(
        "10-nic0.network",
        "[Match]\nName=nic0\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\n",
    );
    let os = bed.os().await;
    os.restart_networkd().await.expect("restart networkd");
    os.wait_online(&[NIC.to_string()], ONLINE)
        .await
        .unwrap_or_else(|e| panic!("{e}\ndnsmasq:\n{}", dnsmasq.log()));

    let nic = link(os.netlink(), NIC).await;
    assert_eq!(nic.addresses.len(), 1, "{:?}", nic.addresses);
    let addr = &nic.addresses[0];
    let ip = addr.strip_suffix("/24").expect("a /24 lease");
    let last: u8 = ip.strip_prefix("192.0.2.").unwrap().parse().unwrap();
    assert!((100..=150).contains(&last), "{addr} outside the range");
    assert!(
        dnsmasq.leases().contains(ip),
        "dnsmasq's leases: {}",
        dnsmasq.leases()
    );
    assert!(
        nic.routes.contains(&route("default", Some(PEER_V4))),
        "{:?}",
        nic.routes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_online_times_out_naming_each_device_that_does_not_come_up() {
    tier3_or_return!();
    let bed = Bed::new().await;
    // v1's peer v2 stays down: v1 never gets a carrier. nic9 does not exist.
    bed.sh("ip link add v1 type veth peer name v2");
    bed.network_file("10-nic0.network", STATIC_NIC);
    bed.network_file(
        "20-v1.network",
        "[Match]\nName=v1\n\n[Network]\nAddress=10.9.0.1/24\n",
    );
    bed.network_file(
        "30-nic9.network",
        "[Match]\nName=nic9\n\n[Network]\nAddress=10.8.0.1/24\n",
    );
    let os = bed.os().await;
    os.restart_networkd().await.expect("restart networkd");

    let started = Instant::now();
    let want = ["nic0", "v1", "nic9"].map(String::from);
    let e = os
        .wait_online(&want, Duration::from_secs(4))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert_eq!(
        e.0,
        "timed out after 4s waiting for network devices to come online: \
         v1 (online state offline, operational state no-carrier), \
         nic9 (unknown to systemd-networkd)"
    );
    // nic0 alone is online.
    os.wait_online(&want[..1], Duration::from_secs(1))
        .await
        .expect("nic0 online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostname_and_timezone_set_through_hostnamed_and_timedated_read_back() {
    tier3_or_return!();
    let bed = Bed::new().await;
    let os = bed.os().await;

    os.set_hostname("incus-net-t3").await.expect("set hostname");
    assert_eq!(os.hostname().await.unwrap(), "incus-net-t3");
    assert_eq!(bed.sh("cat /etc/hostname").trim(), "incus-net-t3");
    assert_eq!(
        bed.sh("cat /proc/sys/kernel/hostname").trim(),
        "incus-net-t3"
    );
    let e = os.set_hostname("-bad name").await.unwrap_err();
    assert!(
        e.0.starts_with("cannot set the hostname to \"-bad name\": "),
        "{e}"
    );
    assert_eq!(os.hostname().await.unwrap(), "incus-net-t3", "unchanged");

    os.set_timezone("Europe/Paris").await.expect("set timezone");
    assert_eq!(os.timezone().await.unwrap(), "Europe/Paris");
    assert_eq!(
        bed.sh("readlink /etc/localtime").trim(),
        "../usr/share/zoneinfo/Europe/Paris"
    );
    let e = os.set_timezone("Mars/Olympus_Mons").await.unwrap_err();
    assert!(
        e.0.starts_with("cannot set the time zone to \"Mars/Olympus_Mons\": "),
        "{e}"
    );
    assert_eq!(os.timezone().await.unwrap(), "Europe/Paris", "unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_check_fails_with_resolveds_reason_when_no_server_is_known() {
    tier3_or_return!();
    let bed = Bed::new().await;
    // No compiled-in fallback servers either.
    bed.m
        .write_file(
            "/run/systemd/resolved.conf.d/t3.conf",
            "[Resolve]\nFallbackDNS=\n",
        )
        .unwrap();
    bed.sh("systemctl restart systemd-resolved");
    let os = bed.os().await;
    os.flush_dns_caches().await.expect("flush caches");
    let started = Instant::now();
    let e = os
        .check_dns("linuxcontainers.org", Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(6));
    assert!(
        e.0.starts_with(
            "DNS does not work: resolving linuxcontainers.org failed for 2s: \
             org.freedesktop.resolve1.NoNameServers: "
        ),
        "{e}"
    );
}

/// Lets Debian's timesyncd unit run in a container without CAP_SYS_TIME (it skips both).
fn allow_timesyncd(bed: &Bed) {
    bed.m
        .write_file(
            "/run/systemd/system/systemd-timesyncd.service.d/t3.conf",
            "[Unit]\nConditionVirtualization=\nConditionCapability=\n",
        )
        .unwrap();
    bed.sh("systemctl daemon-reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timesyncd_restart_waits_then_reports_no_sync_without_a_server() {
    tier3_or_return!();
    let bed = Bed::new().await;
    let os = bed.os().await;
    // As shipped, the unit skips containers: systemd calls the start done (as `systemctl`
    // does), nothing runs, and there is no synchronisation to report.
    let synced = os
        .restart_timesyncd_and_wait(Duration::from_secs(1))
        .await
        .expect("a start skipped by the unit's condition is not an error");
    assert!(!synced);
    assert_eq!(
        bed.sh("systemctl show -p ConditionResult --value systemd-timesyncd")
            .trim(),
        "no"
    );
    // Allowed, it runs, finds no server and the wait ends at the timeout, without error.
    allow_timesyncd(&bed);
    let started = Instant::now();
    let synced = os
        .restart_timesyncd_and_wait(Duration::from_secs(3))
        .await
        .expect("restart timesyncd");
    let took = started.elapsed();
    assert!(!synced);
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert_eq!(
        bed.sh("systemctl is-active systemd-timesyncd").trim(),
        "active"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timesyncd_synchronises_with_the_ntp_server_networkd_hands_it() {
    tier3_or_return!();
    let bed = Bed::new().await;
    let ntp = NtpServer::start(&bed.peer, PEER_V4).expect("ntp server");
    allow_timesyncd(&bed);
    bed.network_file(
        "10-nic0.network",
        &format!("[Match]\nName=nic0\n\n[Network]\nAddress=192.0.2.2/24\nNTP={PEER_V4}\n"),
    );
    let os = bed.os().await;
    os.restart_networkd().await.expect("restart networkd");
    os.wait_online(&[NIC.to_string()], ONLINE)
        .await
        .expect("online");
    let synced = os
        .restart_timesyncd_and_wait(Duration::from_secs(20))
        .await
        .expect("restart timesyncd");
    assert!(
        synced,
        "no sync; server answered {} requests; timesyncd:\n{}",
        ntp.answered(),
        bed.m
            .run(&["journalctl", "-u", "systemd-timesyncd", "--no-pager"])
            .map(|o| o.stdout)
            .unwrap_or_default()
    );
    assert!(ntp.answered() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_netdev_networkd_created_removes_the_link() {
    tier3_or_return!();
    let bed = Bed::new().await;
    bed.network_file("05-br9.netdev", "[NetDev]\nName=br9\nKind=bridge\n");
    bed.network_file(
        "05-br9.network",
        "[Match]\nName=br9\n\n[Network]\nConfigureWithoutCarrier=yes\n",
    );
    let os = bed.os().await;
    os.restart_networkd().await.expect("restart networkd");
    let nl = os.netlink();
    let made = tokio::time::timeout(ONLINE, async {
        while nl.link("br9").await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(made.is_ok(), "networkd did not create br9");
    assert_eq!(link(nl, "br9").await.kind.as_deref(), Some("bridge"));
    assert!(os.link_status("br9").await.unwrap().is_some());

    let os: std::sync::Arc<dyn NetworkOs> = std::sync::Arc::new(os);
    let deleted = tokio::task::spawn_blocking(move || {
        let first = os.delete_link("br9");
        let again = os.delete_link("br9");
        let left = os.links().map(|l| l.iter().any(|l| l.name == "br9"));
        (first, again, left)
    })
    .await
    .unwrap();
    assert_eq!(deleted, (Ok(true), Ok(false), Ok(false)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lldp_neighbours_networkd_heard_are_read_back() {
    tier3_or_return!();
    let bed = Bed::new().await;
    bed.set_hostname_inside("lldp-sender");
    // networkd talks LLDP with itself across a veth pair: v1 sends, v2 listens.
    bed.sh("ip link add v1 type veth peer name v2");
    bed.network_file(
        "20-v1.network",
        "[Match]\nName=v1\n\n[Network]\nLinkLocalAddressing=no\nEmitLLDP=yes\n",
    );
    bed.network_file(
        "20-v2.network",
        "[Match]\nName=v2\n\n[Network]\nLinkLocalAddressing=no\nLLDP=yes\n",
    );
    let os = bed.os().await;
    os.restart_networkd().await.expect("restart networkd");
    assert_eq!(
        os.lldp_neighbors("v1").await.unwrap(),
        [],
        "v1 does not listen"
    );

    let deadline = Instant::now() + ONLINE;
    let heard = loop {
        let n = os.lldp_neighbors("v2").await.expect("lldp");
        if !n.is_empty() || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let machine_id = bed.sh("cat /etc/machine-id").trim().to_string();
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert_eq!(heard[0].chassis_id, machine_id);
    assert_eq!(heard[0].port_id, "v1");
    assert_eq!(heard[0].name, "lldp-sender");

    let e = os.lldp_neighbors("nope0").await.unwrap_err();
    assert_eq!(e.0, "no network link named nope0");
}
