//! State files written by hand in upstream's format: a whole machine at version 8, older
//! files going through the upgrade steps, and each kind of bad input.

use super::*;
use crate::state::Store;

/// A self-signed certificate (PEM) with common name `cn`.
fn cert(cn: &str) -> String {
    let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    p.self_signed(&key).unwrap().pem()
}

/// A string as upstream's state file writes it (newlines escaped).
fn esc(s: &str) -> String {
    s.replace('\n', "\\n")
}

struct Machine {
    text: String,
    update_ca: String,
    custom_ca: String,
    client: String,
}

/// A whole upstream machine, as upstream's encoder writes it (fields in Go order, zero
/// values left out).
fn machine() -> Machine {
    let update_ca = cert("Update CA");
    let custom_ca = cert("Corp Root CA");
    let client = cert("operator");
    let text = format!(
        "#Version: 8
SecureBoot.Version: 202510010000
SecureBoot.FullyApplied: true
FullAgentEnabled: true
ServicesSeedApplied: true
Applications.Incus.State.Initialized: true
Applications.Incus.State.FriendlyVersion: 6.18
Applications.Incus.State.Version: 202511041800
Applications.Incus.State.AvailableVersions[0]: 202510281500
Applications.Incus.State.AvailableVersions[1]: 202511041800
Applications.Incus.Config.LXCFS.LoadAverage: true
Applications.OpenFGA.State.Initialized: true
Applications.OpenFGA.State.Version: 202511041800
Applications.OpenFGA.Config.APITokens[0]: fga-token-1
OS.Name: IncusOS
OS.RunningRelease: 202511041800
OS.NextRelease: 202511041800
OS.SuccessfulBoot: true
Services.ISCSI.Config.Enabled: true
Services.ISCSI.Config.Targets[0].Target: iqn.2004-04.net.example:store
Services.ISCSI.Config.Targets[0].Address: 192.0.2.50
Services.ISCSI.Config.Targets[0].Port: 3260
Services.LVM.Config.Enabled: true
Services.LVM.Config.SystemID: 7
Services.OVN.Config.Enabled: true
Services.OVN.Config.Database: ssl:192.0.2.10:6642,ssl:192.0.2.11:6642
Services.OVN.Config.TunnelAddress: 192.0.2.20
Services.OVN.Config.TunnelProtocol: geneve
System.FallbackListener.Config.ListenAddress: 192.0.2.20:8443
System.FallbackListener.Config.TrustedClientCertificates[0]: {client}
System.Kernel.Config.BlacklistModules[0]: pcspkr
System.Logging.Config.Syslog.Address: 192.0.2.99
System.Logging.Config.Syslog.Protocol: udp
System.Network.Config.DNS.Domain: example.net
System.Network.Config.DNS.Hostname: server01
System.Network.Config.DNS.Nameservers[0]: 192.0.2.1
System.Network.Config.DNS.SearchDomains[0]: example.net
System.Network.Config.Time.NTPServers[0]: pool.ntp.org
System.Network.Config.Time.Timezone: Europe/Paris
System.Network.Config.Proxy.Rules[0].Destination: *
System.Network.Config.Proxy.Rules[0].Target: proxy.example.net
System.Network.Config.Proxy.Servers[proxy__DOT__example__DOT__net].Auth: anonymous
System.Network.Config.Proxy.Servers[proxy__DOT__example__DOT__net].Host: proxy.example.net:3128
System.Network.Config.Interfaces[0].Addresses[0]: dhcp4
System.Network.Config.Interfaces[0].Addresses[1]: slaac
System.Network.Config.Interfaces[0].Ethernet.DisableGRO: true
System.Network.Config.Interfaces[0].Hwaddr: 10:66:6a:7c:8c:b0
System.Network.Config.Interfaces[0].Name: uplink
System.Network.Config.Interfaces[0].RequiredForOnline: no
System.Network.Config.Interfaces[0].Roles[0]: management
System.Network.Config.Interfaces[0].Roles[1]: instances
System.Network.Config.Interfaces[1].Addresses[0]: 10.0.0.5/24
System.Network.Config.Interfaces[1].Hwaddr: 10:66:6a:7c:8c:b1
System.Network.Config.Interfaces[1].MTU: 9000
System.Network.Config.Interfaces[1].Name: storage
System.Network.Config.Interfaces[1].Roles[0]: storage
System.Network.Config.Interfaces[1].Routes[0].To: 10.1.0.0/16
System.Network.Config.Interfaces[1].Routes[0].Via: 10.0.0.1
System.Network.Config.Bonds[0].Addresses[0]: 10.2.0.5/24
System.Network.Config.Bonds[0].FirewallRules[0].Action: accept
System.Network.Config.Bonds[0].FirewallRules[0].Protocol: tcp
System.Network.Config.Bonds[0].FirewallRules[0].Port: 8443
System.Network.Config.Bonds[0].Members[0]: 10:66:6a:7c:8c:c0
System.Network.Config.Bonds[0].Members[1]: 10:66:6a:7c:8c:c1
System.Network.Config.Bonds[0].Mode: 802.3ad
System.Network.Config.Bonds[0].Name: san
System.Network.Config.Bonds[0].Roles[0]: cluster
System.Network.Config.VLANs[0].Addresses[0]: 192.0.2.21/24
System.Network.Config.VLANs[0].ID: 100
System.Network.Config.VLANs[0].Name: mgmt100
System.Network.Config.VLANs[0].Parent: uplink
System.Network.Config.VLANs[0].Roles[0]: management
System.Network.Config.Wireguard[0].Addresses[0]: 10.9.0.1/24
System.Network.Config.Wireguard[0].Name: wg0
System.Network.Config.Wireguard[0].Peers[0].AllowedIPs[0]: 10.9.0.2/32
System.Network.Config.Wireguard[0].Peers[0].Endpoint: 198.51.100.7:51820
System.Network.Config.Wireguard[0].Peers[0].PersistentKeepalive: 25
System.Network.Config.Wireguard[0].Peers[0].PublicKey: xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
System.Network.Config.Wireguard[0].Port: 51820
System.Network.Config.Wireguard[0].PrivateKey: yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=
System.Provider.Config.Name: images
System.Provider.Config.Config[server_url]: https://images.example.net/os
System.Provider.Config.Config[update_ca]: {update_ca}
System.Provider.State.Registered: true
System.Security.Config.CustomCACerts[0]: {custom_ca}
System.Security.Config.EncryptionRecoveryKeys[0]: fkrjdrbjhdbbtejkjvlhckvdcggkcguh
System.Security.Config.EncryptionRecoveryKeys[1]: vvbtnhltjnrfgcklcjhdhiuuidkkcrtf
System.Security.State.EncryptionRecoveryKeysRetrieved: true
System.Update.Config.AutoReboot: true
System.Update.Config.Channel: stable
System.Update.Config.CheckFrequency: 6h0m0s
System.Update.Config.MaintenanceWindows[0].StartDayOfWeek: Saturday
System.Update.Config.MaintenanceWindows[0].StartHour: 1
System.Update.Config.MaintenanceWindows[0].EndDayOfWeek: Sunday
System.Update.Config.MaintenanceWindows[0].EndHour: 5
System.Update.Config.MaintenanceWindows[0].EndMinute: 30
System.Storage.Config.ScrubSchedule: 0 2 * * 6
",
        client = esc(&client),
        update_ca = esc(&update_ca),
        custom_ca = esc(&custom_ca),
    );
    Machine {
        text,
        update_ca,
        custom_ca,
        client,
    }
}

#[test]
fn a_whole_version_8_machine_maps_onto_every_section() {
    let m = machine();
    let doc = import(&m.text).unwrap();
    assert_eq!(doc.schema_version, SCHEMA_VERSION);

    assert_eq!(doc.os.name, "IncusOS");
    assert_eq!(doc.os.running_release, "202511041800");
    assert!(doc.os.successful_boot);

    // Applications: the host's records, and the configs in the plugins' documents.
    let apps: Vec<&str> = doc.applications.keys().map(String::as_str).collect();
    assert_eq!(apps, ["incus", "openfga"]);
    let incus = &doc.applications["incus"];
    assert_eq!(incus.version, "202511041800");
    assert_eq!(incus.available_versions, ["202510281500", "202511041800"]);
    assert!(incus.initialized);
    assert_eq!(incus.name, "");
    assert_eq!(
        doc.plugins["application/incus"],
        serde_json::json!({"config": {"lxcfs": {"cpu_shares": false, "load_average": true}}})
    );
    assert_eq!(
        doc.plugins["application/openfga"],
        serde_json::json!({"config": {"api_tokens": ["fga-token-1"]}})
    );

    // Services, each in its plugin's namespace.
    assert_eq!(
        doc.plugins["lvm"],
        serde_json::json!({"config": {"enabled": true, "system_id": 7}})
    );
    assert_eq!(
        doc.plugins["iscsi"],
        serde_json::json!({"config": {"enabled": true, "targets": [
            {"target": "iqn.2004-04.net.example:store", "address": "192.0.2.50", "port": 3260}
        ]}})
    );
    assert_eq!(
        doc.plugins["ovn"]["config"]["database"],
        "ssl:192.0.2.10:6642,ssl:192.0.2.11:6642"
    );
    assert_eq!(doc.plugins["ovn"]["config"]["tunnel_protocol"], "geneve");

    // The provider: the selection, and its config (a multi-line value whole).
    assert_eq!(doc.system.provider.name, "images");
    assert!(doc.system.provider.registered);
    let images = &doc.plugins["provider/images"]["config"];
    assert_eq!(images["server_url"], "https://images.example.net/os");
    assert_eq!(images["update_ca"], m.update_ca.as_str());
    assert!(m.update_ca.lines().count() > 3);

    let u = &doc.system.update.config;
    assert!(u.auto_reboot);
    assert_eq!(u.channel, "stable");
    assert_eq!(u.check_frequency, "6h0m0s");
    assert_eq!(u.maintenance_windows.len(), 1);
    assert_eq!(u.maintenance_windows[0].end_minute, 30);
    assert!(u.maintenance_windows[0].start_day_of_week.is_some());

    let s = &doc.system.security;
    assert_eq!(s.config.encryption_recovery_keys.len(), 2);
    assert!(s.encryption_recovery_keys_retrieved);
    assert_eq!(s.config.custom_ca_certs, [m.custom_ca]);
    assert!(s.full_agent_enabled);
    assert!(!s.using_swtpm);
    assert_eq!(s.secure_boot.version, "202510010000");
    assert!(s.secure_boot.fully_applied);

    let n = doc.system.network.config.as_ref().unwrap();
    let names: Vec<&str> = n.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["uplink", "storage"]);
    assert_eq!(n.interfaces[0].roles, ["management", "instances"]);
    assert_eq!(n.interfaces[1].mtu, 9000);
    assert_eq!(n.interfaces[1].routes[0].via, "10.0.0.1");
    assert_eq!(n.bonds[0].members.len(), 2);
    assert_eq!(n.bonds[0].firewall_rules[0].port, 8443);
    assert_eq!(n.vlans[0].id, 100);
    assert_eq!(n.vlans[0].parent, "uplink");
    assert!(n.interfaces[0].ethernet.as_ref().unwrap().disable_gro);
    let wg = &n.wireguard[0];
    assert_eq!((wg.name.as_str(), wg.port), ("wg0", 51820));
    assert_eq!(wg.peers[0].allowed_ips, ["10.9.0.2/32"]);
    assert_eq!(wg.peers[0].persistent_keepalive, 25);
    let dns = n.dns.as_ref().unwrap();
    assert_eq!(
        (dns.hostname.as_str(), dns.domain.as_str()),
        ("server01", "example.net")
    );
    assert_eq!(n.time.as_ref().unwrap().timezone, "Europe/Paris");
    let proxy = n.proxy.as_ref().unwrap();
    assert_eq!(
        proxy.servers["proxy.example.net"].host,
        "proxy.example.net:3128"
    );
    assert_eq!(proxy.rules[0].target, "proxy.example.net");
    assert!(doc.system.network.prior_config.is_none());

    assert_eq!(doc.system.logging.syslog.address, "192.0.2.99");
    assert_eq!(doc.system.kernel.blacklist_modules, ["pcspkr"]);
    assert_eq!(doc.system.storage.scrub_schedule, "0 2 * * 6");
    let fl = &doc.system.fallback_listener.config;
    assert_eq!(fl.listen_address, "192.0.2.20:8443");
    assert_eq!(fl.trusted_client_certificates, [m.client]);
}

#[test]
fn the_imported_document_saves_and_loads_through_the_state_store_unchanged() {
    let doc = import(&machine().text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::load_or_create(dir.path()).unwrap();
    store.update(|d| *d = doc.clone()).unwrap();
    let again = Store::load_or_create(dir.path()).unwrap();
    assert_eq!(again.doc(), &doc);
}

#[test]
fn a_pending_network_change_keeps_the_prior_configuration() {
    let text = "#Version: 8
System.Network.Config.Interfaces[0].Hwaddr: 10:66:6a:7c:8c:b0
System.Network.Config.Interfaces[0].Name: new
System.Network.Config.Interfaces[0].Addresses[0]: dhcp4
PriorNetworkConfig.Interfaces[0].Hwaddr: 10:66:6a:7c:8c:b0
PriorNetworkConfig.Interfaces[0].Name: old
PriorNetworkConfig.Interfaces[0].Addresses[0]: slaac
System.Update.Config.CheckFrequency: never
";
    let doc = import(text).unwrap();
    assert_eq!(doc.system.network.config.unwrap().interfaces[0].name, "new");
    let prior = doc.system.network.prior_config.unwrap();
    assert_eq!(prior.interfaces[0].name, "old");
    assert_eq!(prior.interfaces[0].addresses, ["slaac"]);
}

/// A version 0 file: every upgrade step runs (encryption renamed to security, the proxy
/// strings rewritten, application fields moved twice, the frequency in nanoseconds, NTP
/// renamed, the channel and the scrub schedule added).
#[test]
fn a_version_0_file_goes_through_every_upgrade_step() {
    let text = "#Version: 0
Applications[incus].Initialized: true
Applications[incus].Version: 202506241635
Applications[openfga].Version: 202506241635
Applications[migration-manager].Version: 202506241635
OS.Name: IncusOS
System.Encryption.Config.RecoveryKeys[0]: fkrjdrbjhdbbtejkjvlhckvdcggkcguh
System.Encryption.State.RecoveryKeysRetrieved: true
System.Network.Config.Proxy.HTTPProxy: http://alice:p%40ss@proxy.example.net:3128
System.Network.Config.Proxy.HTTPSProxy: secure.example.net
System.Network.Config.Proxy.NoProxy: localhost,.example.net
System.Network.Config.NTP.Timeservers[0]: ntp.example.net
System.Network.Config.Interfaces[0].Hwaddr: 10:66:6a:7c:8c:b0
System.Network.Config.Interfaces[0].Name: uplink
System.Network.Config.Interfaces[0].Addresses[0]: dhcp4
System.Update.Config.UpdateFrequency: 21600000000000
System.Update.State.UpdateStatus: Update applied
";
    let doc = import(text).unwrap();
    let incus = &doc.applications["incus"];
    assert_eq!(incus.version, "202506241635");
    assert!(incus.initialized);
    assert_eq!(doc.applications["openfga"].version, "202506241635");
    assert_eq!(
        doc.applications["migration-manager"].version,
        "202506241635"
    );
    let s = &doc.system.security;
    assert_eq!(
        s.config.encryption_recovery_keys,
        ["fkrjdrbjhdbbtejkjvlhckvdcggkcguh"]
    );
    assert!(s.encryption_recovery_keys_retrieved);
    let n = doc.system.network.config.unwrap();
    assert_eq!(n.time.unwrap().ntp_servers, ["ntp.example.net"]);
    let proxy = n.proxy.unwrap();
    let server = &proxy.servers["proxy_example_net_3128"];
    assert_eq!(server.host, "proxy.example.net:3128");
    assert_eq!(server.auth, "basic");
    assert_eq!(server.username, "alice");
    assert_eq!(server.password, "p@ss");
    let secure = &proxy.servers["secure_example_net"];
    assert_eq!(
        (secure.host.as_str(), secure.auth.as_str()),
        ("secure.example.net", "anonymous")
    );
    let rules: Vec<(&str, &str)> = proxy
        .rules
        .iter()
        .map(|r| (r.destination.as_str(), r.target.as_str()))
        .collect();
    assert_eq!(
        rules,
        [
            ("http://*", "proxy_example_net_3128"),
            ("https://*", "secure_example_net"),
            ("localhost|.example.net", "direct"),
        ]
    );
    let u = &doc.system.update.config;
    assert_eq!(u.check_frequency, "6h0m0s");
    assert_eq!(u.channel, "stable");
    assert_eq!(doc.system.storage.scrub_schedule, "0 4 * * 0");
}

/// A version 4 file: applications still by name, the frequency in nanoseconds, NTP under
/// its old name, no scrub schedule.
#[test]
fn a_version_4_file_gets_the_later_steps_only() {
    let text = "#Version: 4
Applications[incus].State.Version: 202509010000
Applications[incus].State.AvailableVersions[0]: 202509010000
Applications[gpu-support].State.Version: 202509010000
System.Network.Config.NTP.Timeservers[0]: ntp.example.net
System.Update.Config.Channel: testing
System.Update.Config.CheckFrequency: 5400000000000
";
    let doc = import(text).unwrap();
    assert_eq!(
        doc.applications["incus"].available_versions,
        ["202509010000"]
    );
    assert_eq!(doc.applications["gpu-support"].version, "202509010000");
    assert_eq!(doc.system.update.config.channel, "testing");
    assert_eq!(doc.system.update.config.check_frequency, "1h30m0s");
    assert_eq!(doc.system.storage.scrub_schedule, "0 4 * * 0");
    let n = doc.system.network.config.unwrap();
    assert_eq!(n.time.unwrap().ntp_servers, ["ntp.example.net"]);
}

/// Upstream's version 8 form of a field read at an older version is not renamed again:
/// the V4 step would not find `UpdateFrequency`, and a frequency of the new form fails
/// the V5 step with a message naming it.
#[test]
fn an_older_file_with_a_duration_frequency_is_refused_by_the_v5_step() {
    let err = import("#Version: 4\nSystem.Update.Config.CheckFrequency: 6h0m0s\n").unwrap_err();
    assert!(
        err.contains("line 2") && err.contains("System.Update.Config.CheckFrequency"),
        "{err}"
    );
}

fn err_of(body: &str) -> String {
    import(&format!("#Version: 8\nOS.Name: IncusOS\n{body}")).unwrap_err()
}

#[test]
fn an_unknown_path_is_refused_naming_it_and_its_line() {
    let e = err_of("System.Network.Config.Interfaces[0].Colour: red\n");
    assert!(
        e.starts_with("line 3: System.Network.Config.Interfaces[0].Colour: unknown path"),
        "{e}"
    );
    let e = err_of("Applications.Frobnicator.State.Version: 1\n");
    assert!(
        e.starts_with("line 3: Applications.Frobnicator.State.Version: unknown path"),
        "{e}"
    );
    // A value where upstream has a struct, and a field under a value.
    assert!(err_of("System.Network.Config.DNS: x\n").contains("not a value"));
    assert!(err_of("OS.Name.First: x\n").starts_with("line 3: OS.Name.First: unknown path"));
}

#[test]
fn fields_upstream_never_saves_are_accepted_and_dropped() {
    let doc = import(
        "#Version: 8
System.Security.State.TPMStatus: ok
System.Storage.Config.Pools[0].Name: local
Services.LVM.State.PVs[0].PVName: /dev/sda
Applications.Incus.State.IsPrimary: true
",
    )
    .unwrap();
    assert!(doc.plugins.is_empty());
    assert!(doc.applications.is_empty());
    assert!(doc
        .system
        .security
        .config
        .encryption_recovery_keys
        .is_empty());
}

#[test]
fn a_file_without_update_or_scrub_settings_gets_upstreams_defaults() {
    let doc = import("#Version: 8\nSystem.Update.Config.AutoReboot: true\n").unwrap();
    let u = &doc.system.update.config;
    assert!(u.auto_reboot);
    assert_eq!(
        (u.channel.as_str(), u.check_frequency.as_str()),
        ("stable", "6h")
    );
    assert_eq!(doc.system.storage.scrub_schedule, "0 4 * * 0");
    assert_eq!(doc.system.provider.name, "images");
    assert!(doc.system.network.config.is_none());
}

#[test]
fn a_value_our_types_refuse_names_its_line() {
    let e = err_of(
        "System.Update.Config.MaintenanceWindows[0].StartDayOfWeek: Funday
System.Update.Config.MaintenanceWindows[0].EndDayOfWeek: Sunday
",
    );
    assert!(
        e.starts_with("line 3: System.Update.Config.MaintenanceWindows[0].StartDayOfWeek: "),
        "{e}"
    );
}

/// The check behind "nothing silently lost": a value the typed section does not give
/// back is an error naming its line, a zero value missing on our side is not.
#[test]
fn a_value_our_section_would_drop_is_an_error_naming_its_line() {
    let d = Decoded {
        tree: Value::Null,
        origins: BTreeMap::from([
            ("/s/a".to_string(), (Some(4), "S.A".to_string())),
            ("/s/b/0".to_string(), (Some(5), "S.B[0]".to_string())),
        ]),
    };
    let input = serde_json::json!({"a": "kept", "b": ["dropped"], "c": ""});
    check_kept(
        &d,
        &input,
        &serde_json::json!({"a": "kept", "b": ["dropped"]}),
        "/s",
    )
    .unwrap();
    let e = check_kept(&d, &input, &serde_json::json!({"a": "kept"}), "/s").unwrap_err();
    assert_eq!(
        e,
        "line 5: S.B[0]: this value is not carried over by this daemon's state"
    );
    let e = check_kept(
        &d,
        &input,
        &serde_json::json!({"a": "other", "b": ["dropped"]}),
        "/s",
    )
    .unwrap_err();
    assert!(e.starts_with("line 4: S.A: "), "{e}");
}

#[test]
fn a_bad_value_is_refused_naming_the_path() {
    let e = err_of("OS.SuccessfulBoot: yes\n");
    assert_eq!(
        e,
        "line 3: OS.SuccessfulBoot: invalid boolean \"yes\" (true or false expected)"
    );
    let e = err_of("Services.LVM.Config.SystemID: seven\n");
    assert_eq!(
        e,
        "line 3: Services.LVM.Config.SystemID: invalid integer \"seven\""
    );
}

#[test]
fn a_newer_version_is_refused() {
    let e = import("#Version: 9\nOS.Name: IncusOS\n").unwrap_err();
    assert!(
        e.contains("version 9, newer than this daemon knows (8)"),
        "{e}"
    );
    assert!(import("OS.Name: IncusOS\n")
        .unwrap_err()
        .contains("not an upstream state file"));
    assert!(import("#Version: eight\n")
        .unwrap_err()
        .contains("invalid state version"));
}

#[test]
fn a_malformed_line_is_refused_with_its_number() {
    let e = err_of("OS.RunningRelease 202511041800\n");
    assert_eq!(
        e,
        "line 3: malformed line \"OS.RunningRelease 202511041800\" (\"Path: value\" expected)"
    );
    let e = err_of("OS..Name: x\n");
    assert!(e.contains("malformed path element"), "{e}");
}

#[test]
fn a_bad_index_is_refused() {
    let p = "System.Network.Config.Interfaces";
    let e = err_of(&format!("{p}[x].Name: eth0\n"));
    assert!(e.contains("invalid index \"x\" of Interfaces"), "{e}");
    let e = err_of(&format!("{p}[-1].Name: eth0\n"));
    assert!(e.contains("invalid index \"-1\""), "{e}");
    let e = err_of(&format!("{p}[99999999].Name: eth0\n"));
    assert!(e.contains("too large"), "{e}");
    // Many nested indexes, each under the limit, leaving out too much in all.
    let many: String = (0..300)
        .map(|i| format!("{p}[{i}].Addresses[299]: dhcp4\n"))
        .collect();
    let e = err_of(&many);
    assert!(
        e.contains("leaves out more than 65536 list elements in all"),
        "{e}"
    );
    let e = err_of(&format!("{p}.Name: eth0\n"));
    assert!(e.contains("an index is expected"), "{e}");
    let e = err_of("OS[0].Name: x\n");
    assert!(e.contains("OS is not a list or a map"), "{e}");
}

#[test]
fn an_unknown_provider_or_provider_key_is_refused() {
    let e = err_of("System.Provider.Config.Name: local\n");
    assert!(e.contains("unknown provider \"local\""), "{e}");
    let e = err_of("System.Provider.Config.Config[colour]: red\n");
    assert_eq!(
        e,
        "line 3: System.Provider.Config.Config[colour]: the images provider has no config key \"colour\""
    );
}

#[test]
fn a_value_our_validation_refuses_names_its_section() {
    let e = err_of("System.Update.Config.CheckFrequency: sometimes\n");
    assert!(e.contains("refused by this daemon's validation"), "{e}");
    let e = err_of("System.Storage.Config.ScrubSchedule: every day\n");
    assert!(
        e.starts_with("line 3: System.Storage.Config.ScrubSchedule: refused"),
        "{e}"
    );
    let e = err_of("System.Network.Config.Bonds[0].Name: b0\nSystem.Network.Config.Bonds[0].Mode: lacp\nSystem.Network.Config.Bonds[0].Members[0]: eth0\n");
    assert!(e.contains("invalid Mode value 'lacp'"), "{e}");
}

#[test]
fn slices_with_left_out_zero_elements_keep_their_positions() {
    // Upstream leaves out an empty string element; the next one keeps its index.
    let doc = import(
        "#Version: 8
System.Kernel.Config.BlacklistModules[1]: pcspkr
System.Update.Config.CheckFrequency: 6h0m0s
",
    )
    .unwrap();
    assert_eq!(doc.system.kernel.blacklist_modules, ["", "pcspkr"]);
}

#[test]
fn go_durations_are_written_as_go_writes_them() {
    for (ns, s) in [
        (0, "0s"),
        (21_600_000_000_000, "6h0m0s"),
        (5_400_000_000_000, "1h30m0s"),
        (90_000_000_000, "1m30s"),
        (1_500_000_000, "1.5s"),
        (300_000_000, "300ms"),
        (1_500, "1.5µs"),
        (42, "42ns"),
        (-3_600_000_000_000, "-1h0m0s"),
    ] {
        assert_eq!(go_duration(ns), s);
        if ns >= 0 {
            assert_eq!(update_config::parse_go_duration(s).unwrap(), ns);
        }
    }
}

#[test]
fn proxy_urls_of_old_files_split_as_upstream_splits_them() {
    let p = ProxyUrl::parse("http://[2001:db8::1]:3128/").unwrap();
    assert_eq!(
        (p.host.as_str(), p.port.as_deref()),
        ("2001:db8::1", Some("3128"))
    );
    let p = ProxyUrl::parse("proxy.example.net").unwrap();
    assert_eq!(
        (p.host.as_str(), p.port, p.user),
        ("proxy.example.net", None, None)
    );
    let p = ProxyUrl::parse("https://a%3Ab:c%2Fd@h:1").unwrap();
    assert_eq!(p.user, Some(("a:b".to_string(), "c/d".to_string())));
    assert!(ProxyUrl::parse("http://h:port").is_err());
    assert!(ProxyUrl::parse("http://u:%zz@h").is_err());
    // The whole step: a bad proxy in an old file names its line.
    let e =
        import("#Version: 1\nSystem.Network.Config.Proxy.HTTPProxy: http://h:port\n").unwrap_err();
    assert!(
        e.starts_with("line 2: proxy \"http://h:port\": invalid port"),
        "{e}"
    );
}
