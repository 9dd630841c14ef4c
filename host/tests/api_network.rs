//! `/1.0/system/network` through the router, over a recording network OS and systemd:
//! upstream's refusals and texts, what an apply writes and runs, a failed apply putting
//! everything back, and trial changes confirmed or rolled back.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use http_body_util::BodyExt;
use incus_osd::api::App;
use incus_osd::platform::exec::{Commands, Output};
use incus_osd::platform::network::fake::{FakeNetworkOs, FakeState};
use incus_osd::platform::network::{LinkState, LinkStatus};
use incus_osd::platform::PlatformError;
use incus_osd::testing::{RecordingSystemd, TestApp};
use serde_json::{json, Value};
use tower::ServiceExt;

const MAC: &str = "52:54:00:12:34:56";
const OTHER_MAC: &str = "52:54:00:ab:cd:ef";

/// `nft -f -` succeeds and keeps the script it was given.
#[derive(Default)]
struct Nft {
    scripts: Mutex<Vec<String>>,
    /// What `wg show wg0 dump` prints.
    wg_dump: Mutex<String>,
}

impl Commands for Nft {
    fn run(&self, argv: &[String], stdin: &[u8], _: Duration) -> Result<Output, PlatformError> {
        if argv.join(" ") == "wg show wg0 dump" {
            return Ok(Output {
                status: 0,
                stdout: self.wg_dump.lock().unwrap().clone().into_bytes(),
                stderr: vec![],
            });
        }
        if argv.join(" ") != "nft -f -" {
            return Err(PlatformError(format!("unexpected command {argv:?}")));
        }
        self.scripts
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(stdin).into_owned());
        Ok(Output {
            status: 0,
            stdout: vec![],
            stderr: vec![],
        })
    }
}

struct Env {
    r: Router,
    app: Arc<App>,
    net: Arc<FakeNetworkOs>,
    units: Arc<RecordingSystemd>,
    nft: Arc<Nft>,
    _dir: tempfile::TempDir,
}

fn link(name: &str, kind: Option<&str>, mac: &str, addresses: &[&str]) -> LinkState {
    LinkState {
        name: name.into(),
        kind: kind.map(String::from),
        mtu: 1500,
        max_mtu: Some(9000),
        mac: Some(mac.into()),
        permanent_mac: kind.is_none().then(|| mac.to_string()),
        operstate: "up".into(),
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    }
}

fn env() -> Env {
    let mut status = BTreeMap::new();
    status.insert(
        "_veth0".to_string(),
        LinkStatus {
            online_state: Some("online".into()),
            operational_state: "routable".into(),
            address_state: "routable".into(),
            setup_state: "configured".into(),
        },
    );
    let net = Arc::new(FakeNetworkOs::new(FakeState {
        // Two NICs, and the links networkd makes for the configurations these tests
        // apply (this fake's networkd creates nothing).
        links: vec![
            link("enp1s0", None, MAC, &[]),
            link("enp2s0", None, OTHER_MAC, &["192.0.2.9/24"]),
            link("eth0", Some("bridge"), "52:54:00:00:00:02", &[]),
            link(
                "_veth0",
                Some("veth"),
                "52:54:00:00:00:01",
                &["10.0.0.2/24", "2001:db8::2/64"],
            ),
            link("eth1", Some("bridge"), "52:54:00:00:00:03", &[]),
            link("_veth1", Some("veth"), "52:54:00:00:00:04", &[]),
            link("bond0", Some("bridge"), "52:54:00:00:00:05", &[]),
            link("_vbond0", Some("veth"), "52:54:00:00:00:06", &[]),
            link("_bbond0", Some("bond"), "52:54:00:00:00:07", &[]),
        ],
        status,
        hostname: "localhost".into(),
        timezone: "UTC".into(),
        time_synced: true,
        ..Default::default()
    }));
    let units = Arc::new(RecordingSystemd::new(false));
    let nft = Arc::new(Nft::default());
    let (r, app, dir) = TestApp::new()
        .systemd(units.clone())
        .network(net.clone())
        .commands(nft.clone())
        .router();
    Env {
        r,
        app,
        net,
        units,
        nft,
        _dir: dir,
    }
}

impl Env {
    async fn call(&self, method: &str, uri: &str, body: String) -> (u16, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body))
            .unwrap();
        let resp = self.r.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    async fn put(&self, config: Value) -> (u16, Value) {
        self.call(
            "PUT",
            "/1.0/system/network",
            json!({ "config": config }).to_string(),
        )
        .await
    }

    async fn get(&self) -> Value {
        let (s, v) = self.call("GET", "/1.0/system/network", String::new()).await;
        assert_eq!(s, 200, "{v}");
        v["metadata"].clone()
    }

    fn files(&self) -> Vec<String> {
        let dir = self.app.root.join("run/systemd/network");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn stored(&self) -> Value {
        self.app
            .with_state(|s| serde_json::to_value(&s.doc().system.network).unwrap())
    }
}

fn dhcp(hwaddr: &str) -> Value {
    json!({"interfaces": [{"name": "eth0", "hwaddr": hwaddr, "addresses": ["dhcp4"]}],
           "dns": {"hostname": "host1"}})
}

#[tokio::test]
async fn refusals_come_in_upstreams_order_and_change_nothing() {
    let e = env();
    let (s, v) = e.call("PUT", "/1.0/system/network", String::new()).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = e.put(json!({})).await;
    assert_eq!(
        (s, v["error"].as_str().unwrap()),
        (400, "network configuration has no devices defined")
    );
    let (s, v) = e.put(json!({"wireguard": [{"name": "wg0"}]})).await;
    assert_eq!(
        (s, v["error"].as_str().unwrap()),
        (400, "network configuration has no devices defined")
    );
    let mut c = dhcp(MAC);
    c["confirmation_timeout"] = json!("bizbaz");
    let (s, v) = e.put(c.clone()).await;
    assert_eq!(
        (s, v["error"].as_str().unwrap()),
        (
            400,
            r#"invalid confirmation timeout provided: time: invalid duration "bizbaz""#
        )
    );
    c["confirmation_timeout"] = json!("-1m");
    let (s, v) = e.put(c).await;
    assert_eq!(
        (s, v["error"].as_str().unwrap()),
        (400, "confirmation timeout must be greater than zero")
    );
    let (s, v) = e
        .put(json!({"interfaces": [{"name": "eth0", "hwaddr": MAC, "addresses": ["dhcp4", "bizbaz"]}]}))
        .await;
    assert_eq!(
        (s, v["error"].as_str().unwrap()),
        (
            500,
            "interface 0 address 1 invalid IP address 'bizbaz', must provide a CIDR mask"
        )
    );
    let (s, v) = e
        .call("POST", "/1.0/system/network/:confirm", String::new())
        .await;
    assert_eq!(
        (s, v["error"].as_str().unwrap()),
        (400, "no network configuration is pending a confirmation")
    );
    assert!(e.files().is_empty());
    assert_eq!(e.stored()["config"], Value::Null);
    assert!(e.units.jobs().is_empty());
    assert!(e.nft.scripts.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_apply_writes_the_files_runs_the_steps_and_stores_names_resolved() {
    let e = env();
    let (s, v) = e.put(dhcp("enp1s0")).await;
    assert_eq!(s, 200, "{v}");
    let files = e.files();
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("00-_p") && f.ends_with(".link")),
        "{files:?}"
    );
    assert!(files.contains(&"10-eth0.netdev".to_string()), "{files:?}");
    assert!(
        files.contains(&"20-_veth0.network".to_string()),
        "{files:?}"
    );
    // The interface name became its MAC in what is stored.
    assert_eq!(e.stored()["config"]["interfaces"][0]["hwaddr"], MAC);
    let calls = e.net.calls();
    let random = calls[2].rsplit(' ').next().unwrap().to_string();
    let first: u8 = u8::from_str_radix(&random[..2], 16).unwrap();
    assert_eq!(
        first & 0x03,
        0x02,
        "unicast, locally administered: {random}"
    );
    assert_eq!(
        calls,
        [
            "set_hostname host1",
            // No udev here: the NIC is renamed over netlink.
            "rename_link enp1s0 _p525400123456",
            &format!("set_mac _p525400123456 {random}"),
            "wait_online _veth0",
            "check_dns linuxcontainers.org",
            "restart_timesyncd_and_wait"
        ]
    );
    assert_eq!(*e.units.jobs(), ["restart systemd-networkd.service"]);
    let hosts = std::fs::read_to_string(e.app.root.join("etc/hosts")).unwrap();
    assert!(hosts.contains("127.0.1.1"), "{hosts}");
    assert!(hosts.contains("host1"), "{hosts}");
    let scripts = e.nft.scripts.lock().unwrap().clone();
    assert_eq!(scripts.len(), 1);
    assert!(scripts[0].contains("incus-osd"), "{}", scripts[0]);

    // GET: the config (with the default time zone), and the live state of the bridge's
    // host side plus the NIC nothing configures.
    let v = e.get().await;
    assert_eq!(v["config"]["time"]["timezone"], "UTC");
    assert!(v["config"].get("confirmation_timeout").is_none());
    let eth0 = &v["state"]["interfaces"]["eth0"];
    assert_eq!(eth0["type"], "interface");
    assert_eq!(eth0["addresses"], json!(["10.0.0.2", "2001:db8::2"]));
    assert_eq!(eth0["state"], "routable");
    assert_eq!(eth0["roles"], json!(["management", "cluster"]));
    let nic = &v["state"]["interfaces"]["enp2s0"];
    assert_eq!(nic["type"], "physical");
    assert_eq!(nic["addresses"], json!(["192.0.2.9"]));
    assert!(
        v["state"]["interfaces"].get("_p525400123456").is_none(),
        "the renamed NIC is the configured interface's port, not shown apart"
    );
    assert_eq!(v["state"]["configuration_in_process"], false);
}

#[tokio::test]
async fn a_failed_apply_puts_back_files_units_firewall_and_hostname() {
    let e = env();
    assert_eq!(e.put(dhcp(MAC)).await.0, 200);
    let before = e.files();
    let hosts = std::fs::read_to_string(e.app.root.join("etc/hosts")).unwrap();
    e.net.state.lock().unwrap().never_online = vec!["_veth0".into()];
    let mut c = dhcp(MAC);
    c["dns"]["hostname"] = json!("host2");
    c["interfaces"][0]["mtu"] = json!(9000);
    let (s, v) = e.put(c).await;
    assert_eq!(s, 500);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("waiting for network devices to come online"),
        "{v}"
    );
    assert_eq!(e.files(), before);
    assert_eq!(
        std::fs::read_to_string(e.app.root.join("etc/hosts")).unwrap(),
        hosts
    );
    assert_eq!(e.net.state.lock().unwrap().hostname, "host1");
    assert_eq!(e.stored()["config"]["dns"]["hostname"], "host1");
    assert!(e.stored()["config"]["interfaces"][0].get("mtu").is_none());
    // networkd restarted on the new files, then again on the old ones; the firewall
    // loaded, then the previous rules again.
    assert_eq!(e.units.jobs().len(), 3, "{:?}", e.units.jobs());
    let scripts = e.nft.scripts.lock().unwrap().clone();
    assert_eq!(scripts.len(), 3);
    assert_eq!(
        scripts[2], scripts[0],
        "the previous ruleset is loaded again"
    );
}

async fn wait_for(e: &Env, what: &str, f: impl Fn(&Env) -> bool) {
    for _ in 0..400 {
        if f(e) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_change_is_rolled_back_unless_confirmed() {
    let e = env();
    assert_eq!(e.put(dhcp(MAC)).await.0, 200);
    let mut c = dhcp(MAC);
    c["dns"]["hostname"] = json!("trial");
    c["confirmation_timeout"] = json!("1s");
    let (s, v) = e.put(c.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(e.stored()["config"]["dns"]["hostname"], "trial");
    assert_eq!(
        e.stored()["prior_config"]["dns"]["hostname"],
        "host1",
        "kept for a reboot"
    );
    let (s, v) = e.put(dhcp(MAC)).await;
    assert_eq!(
        (s, v["error"].as_str().unwrap()),
        (400, "a pending network configuration must first be confirmed before a new configuration can be applied")
    );
    wait_for(&e, "the rollback", |e| {
        e.stored()["config"]["dns"]["hostname"] == "host1" && e.stored()["prior_config"].is_null()
    })
    .await;
    assert_eq!(e.net.state.lock().unwrap().hostname, "host1");

    // Confirmed in time: it stays.
    c["confirmation_timeout"] = json!("2s");
    assert_eq!(e.put(c.clone()).await.0, 200);
    let (s, _) = e
        .call("POST", "/1.0/system/network/:confirm", String::new())
        .await;
    assert_eq!(s, 200);
    assert!(e.stored()["prior_config"].is_null());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(e.stored()["config"]["dns"]["hostname"], "trial");
    let (s, _) = e
        .call("POST", "/1.0/system/network/:confirm", String::new())
        .await;
    assert_eq!(s, 400);

    // A trial that fails to apply is rolled back before the answer.
    c["interfaces"][0]["addresses"] = json!(["bizbaz"]);
    let (s, v) = e.put(c).await;
    assert_eq!(s, 500, "{v}");
    assert_eq!(e.stored()["config"]["dns"]["hostname"], "trial");
    assert!(e.stored()["prior_config"].is_null());
    assert!(!e.app.network.changes.phase().pending());
}

#[tokio::test]
async fn flush_dns_asks_resolved() {
    let e = env();
    let (s, _) = e
        .call("POST", "/1.0/system/network/:flush-dns", String::new())
        .await;
    assert_eq!(s, 200);
    assert_eq!(e.net.calls(), ["flush_dns_caches"]);
    let (s, _) = e
        .call("GET", "/1.0/system/network/:flush-dns", String::new())
        .await;
    assert_eq!(s, 501);
}

#[tokio::test]
async fn state_shows_lldp_neighbours_and_bond_members() {
    let e = env();
    e.net.state.lock().unwrap().lldp.insert(
        "_p525400123456".into(),
        vec![incus_osd::platform::network::LldpNeighbor {
            chassis_id: "00:11:22:33:44:55".into(),
            port_id: "swp7".into(),
            name: "switch1".into(),
            port_description: "uplink".into(),
        }],
    );
    let config = json!({
        "interfaces": [{"name": "eth0", "hwaddr": MAC, "addresses": ["dhcp4"]}],
        "bonds": [{"name": "bond0", "mode": "active-backup", "members": [OTHER_MAC],
                   "addresses": ["10.1.0.2/24"], "required_for_online": "no"}]
    });
    let (s, v) = e.put(config).await;
    assert_eq!(s, 200, "{v}");
    let files = e.files();
    assert!(
        files.contains(&"11-_bbond0.netdev".to_string()),
        "{files:?}"
    );
    let v = e.get().await;
    let i = &v["state"]["interfaces"];
    assert_eq!(
        i["eth0"]["lldp"],
        json!([{"chassis_id": "00:11:22:33:44:55", "name": "switch1", "port_id": "swp7", "port": "uplink"}])
    );
    assert_eq!(i["bond0"]["type"], "bond");
    let member = &i["bond0"]["members"]["_p525400abcdef"];
    assert_eq!(member["type"], "bond_member");
    assert_eq!(member["hwaddr"], OTHER_MAC);
    // Upstream's `lacp`: the address the member has now and the NIC's own.
    let now = e
        .net
        .state
        .lock()
        .unwrap()
        .links
        .iter()
        .find(|l| l.name == "_p525400abcdef")
        .and_then(|l| l.mac.clone())
        .unwrap();
    assert_ne!(now, OTHER_MAC);
    assert_eq!(
        member["lacp"],
        json!({"local_mac": now, "remote_mac": OTHER_MAC})
    );
    assert!(
        i.get("eth1").is_none(),
        "a bond member is not an unmanaged NIC"
    );
}

#[tokio::test]
async fn wake_on_lan_nics_get_their_permanent_mac_back_before_power_off() {
    let e = env();
    let config = json!({
        "interfaces": [{"name": "eth0", "hwaddr": MAC, "addresses": ["dhcp4"],
                        "ethernet": {"wakeonlan": true}},
                       {"name": "eth1", "hwaddr": OTHER_MAC, "addresses": ["dhcp4"]}]
    });
    assert_eq!(e.put(config).await.0, 200);
    let before = e.net.calls().len();
    let net = e.app.network.clone();
    tokio::task::spawn_blocking(move || net.restore_wake_on_lan_macs())
        .await
        .unwrap();
    assert_eq!(
        e.net.calls()[before..],
        [format!("set_mac _p525400123456 {MAC}")],
        "only the NIC with Wake-on-LAN"
    );
}

#[tokio::test]
async fn a_wireguard_devices_state_shows_its_port_key_and_peers() {
    let e = env();
    let peer = "oH5y2bqC8j8yG6qkZB3Y1TQ3nSAMVn2mXlWOPzHz9T0=";
    let config = json!({
        "interfaces": [{"name": "eth0", "hwaddr": MAC, "addresses": ["dhcp4"]}],
        "wireguard": [{"name": "wg0", "addresses": ["10.10.0.1/24"], "port": 51820,
                       "peers": [{"public_key": peer, "allowed_ips": ["10.10.0.2/32"],
                                  "endpoint": "192.0.2.7:51820"}]}]
    });
    // A device networkd could not create (this kernel has no WireGuard) fails the change,
    // naming it; the configuration stays as it was.
    let (s, v) = e.put(config.clone()).await;
    assert_eq!(
        (s, v["error"].as_str().unwrap()),
        (500, "systemd-networkd did not create wg0 (see its log)")
    );
    assert!(e.get().await["config"].is_null());
    e.net
        .state
        .lock()
        .unwrap()
        .links
        .push(link("wg0", Some("wireguard"), "", &["10.10.0.1/24"]));
    let (s, v) = e.put(config).await;
    assert_eq!(s, 200, "{v}");
    let handshake = chrono::Utc::now().timestamp() - 63;
    *e.nft.wg_dump.lock().unwrap() = format!(
        "cHJpdmF0ZQ==\tqN4vH2fUVlKoZ0z7r1yJj3lXb4Kd0g3zQ3V6bT2t0Ts=\t51820\toff\n\
         {peer}\t(none)\t192.0.2.7:51820\t10.10.0.2/32\t{handshake}\t15432\t98765\toff\n"
    );
    let v = e.get().await;
    let wg = &v["state"]["interfaces"]["wg0"];
    assert_eq!(wg["type"], "wireguard");
    assert_eq!(wg["wireguard"]["listening_port"], 51820);
    assert_eq!(
        wg["wireguard"]["public_key"],
        "qN4vH2fUVlKoZ0z7r1yJj3lXb4Kd0g3zQ3V6bT2t0Ts="
    );
    let p = &wg["wireguard"]["peers"][0];
    assert_eq!(p["public_key"], peer);
    assert_eq!(p["endpoint"], "192.0.2.7:51820");
    assert_eq!(p["allowed_ips"], json!(["10.10.0.2/32"]));
    assert!(
        p["latest_handshake"]
            .as_str()
            .unwrap()
            .starts_with("1 minute, "),
        "{p}"
    );
    assert_eq!(p["stats"]["rx_bytes"], 15432);
    assert_eq!(p["stats"]["tx_bytes"], 98765);
    // The private key never shows in the state.
    assert!(!v.to_string().contains("cHJpdmF0ZQ=="));
}

#[tokio::test]
async fn providers_are_told_the_management_devices_addresses_ipv4_first() {
    let e = env();
    let (s, v) = e.put(dhcp(MAC)).await;
    assert_eq!(s, 200, "{v}");
    let v = e.get().await;
    assert_eq!(v["state"]["interfaces"]["eth0"]["roles"][0], "management");
    let ctx = incus_osd::system::provider::context(&e.app, "stable");
    assert_eq!(ctx.management_addresses, ["10.0.0.2", "2001:db8::2"]);
}
