//! Importing upstream's state file (`state.txt`) into our [`Document`]: the migration path
//! from an upstream system, used when a restored archive carries upstream's state.
//!
//! The text is upstream's own format: a `#Version: N` first line, then one
//! `Go.Field.Path: value` line per non-zero value (slices as `Name[i]`, maps as
//! `Name[key]` with a `.` in a key written `__DOT__`, newlines in strings written `\n`).
//! Import runs in three steps:
//!
//! 1. the version upgrades upstream applies to older files (V1 .. V8: renamed paths, the
//!    proxy rewrite, the check frequency as a Go duration, added defaults), so a file of
//!    any version from 0 to [`MAX_VERSION`] imports; a newer file is refused;
//! 2. every line is decoded against a description of upstream's Go types (`STATE`),
//!    giving a JSON tree with upstream's JSON names, which are ours too. A path upstream's
//!    types do not have is an error naming the path and its line (nothing is silently
//!    lost); paths upstream knows but never saves (runtime state, fields tagged `-`) are
//!    accepted and dropped, since an older upstream did save some of them;
//! 3. each section of the tree is mapped onto our document and checked with our own
//!    validation where the section has one. A value our types do not carry over is an
//!    error too (checked by serializing each section back).
//!
//! What is dropped on purpose, and why, is listed in `docs/compatibility.md` ("Importing
//! an upstream state.txt").

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use super::{ApplicationRecord, Document, NetworkDoc, OsState, SCHEMA_VERSION};
use crate::system::fallback::{self, FallbackDoc};
use crate::system::logging::{self, LoggingConfig};
use crate::system::network::model::SystemNetworkConfig;
use crate::system::network::validate::{self as network_validate, MacCheck};
use crate::system::provider::{ProviderDoc, DEFAULT_PROVIDER};
use crate::system::security::{self, SecurityConfig, SecurityDoc};
use crate::system::storage::StorageDoc;
use crate::system::update::config::{self as update_config, UpdateConfig};
use crate::system::update::UpdateDoc;

/// The newest upstream state version this import knows.
pub const MAX_VERSION: u32 = 8;

/// The largest slice index accepted (a hostile file could otherwise ask for a huge list).
pub const MAX_INDEX: usize = 65_535;

/// How many list elements a file may leave out in all (the zero elements upstream does not
/// write, which the import puts back): with [`MAX_INDEX`] alone, a few thousand nested
/// indexes would still make billions.
pub const MAX_LEFT_OUT: usize = 65_536;

/// Upstream's application fields (Go name under `Applications`) and our application
/// names. `Incus` is shared upstream by `incus` and `incus-lts-7.0`; the record is kept
/// under `incus` (the plugin's name), with `name` left empty (see [`import`]).
pub const APPLICATIONS: [(&str, &str); 8] = [
    ("debug", "debug"),
    ("gpu_support", "gpu-support"),
    ("incus", "incus"),
    ("incus_ceph", "incus-ceph"),
    ("incus_linstor", "incus-linstor"),
    ("migration_manager", "migration-manager"),
    ("openfga", "openfga"),
    ("operations_center", "operations-center"),
];

/// Upstream's services (JSON name under `services`) are our service plugins of the same
/// name: the ten schema 1 knew.
pub const SERVICES: [&str; 10] = super::V1_SERVICES;

/// Upstream's providers and the config keys each takes (`System.Provider.Config.Config`).
pub const PROVIDERS: [(&str, &[&str]); 3] = [
    (
        "images",
        &[
            "authentication_by_query_param",
            "server_url",
            "token",
            "update_ca",
        ],
    ),
    (
        "operations-center",
        &["server_certificate", "server_token", "server_url"],
    ),
    ("debug", &[]),
];

// ---------------------------------------------------------------------------------------
// Upstream's types, as far as the state file goes.

/// The type of a field of upstream's state.
#[derive(Debug, Clone, Copy)]
enum Ty {
    Bool,
    Int,
    Str,
    Struct(&'static [Field]),
    Slice(&'static Ty),
    Map(&'static Ty),
    /// Upstream has the field but never saves it (runtime state, tagged `-`, or a
    /// `time.Time`, which has no exported fields): any line under it is dropped.
    Unsaved,
}

/// A field: its Go name (the state file's) and its JSON name (upstream's API and ours).
#[derive(Debug, Clone, Copy)]
struct Field {
    go: &'static str,
    json: &'static str,
    ty: Ty,
}

const fn f(go: &'static str, json: &'static str, ty: Ty) -> Field {
    Field { go, json, ty }
}

use Ty::{Bool, Int, Str, Unsaved};

const STRS: Ty = Ty::Slice(&Str);
const INTS: Ty = Ty::Slice(&Int);

const ROUTES: Ty = Ty::Slice(&Ty::Struct(&[f("To", "to", Str), f("Via", "via", Str)]));
const FIREWALL_RULES: Ty = Ty::Slice(&Ty::Struct(&[
    f("Action", "action", Str),
    f("Source", "source", Str),
    f("Protocol", "protocol", Str),
    f("Port", "port", Int),
]));
const ETHERNET: Ty = Ty::Struct(&[
    f("DisableEnergyEfficient", "disable_energy_efficient", Bool),
    f("DisableGRO", "disable_gro", Bool),
    f("DisableGSO", "disable_gso", Bool),
    f("DisableIPv4TSO", "disable_ipv4_tso", Bool),
    f("DisableIPv6TSO", "disable_ipv6_tso", Bool),
    f("WakeOnLAN", "wakeonlan", Bool),
    f("WakeOnLANModes", "wakeonlan_modes", STRS),
    f("WakeOnLANPassword", "wakeonlan_password", Str),
]);
const INTERFACE: Ty = Ty::Struct(&[
    f("Addresses", "addresses", STRS),
    f("Ethernet", "ethernet", ETHERNET),
    f("FirewallRules", "firewall_rules", FIREWALL_RULES),
    f("Hwaddr", "hwaddr", Str),
    f("LLDP", "lldp", Bool),
    f("MTU", "mtu", Int),
    f("Name", "name", Str),
    f("RequiredForOnline", "required_for_online", Str),
    f("Roles", "roles", STRS),
    f("Routes", "routes", ROUTES),
    f("StrictHwaddr", "strict_hwaddr", Bool),
    f("VLANTags", "vlan_tags", INTS),
]);
const BOND: Ty = Ty::Struct(&[
    f("Addresses", "addresses", STRS),
    f("Ethernet", "ethernet", ETHERNET),
    f("FirewallRules", "firewall_rules", FIREWALL_RULES),
    f("Hwaddr", "hwaddr", Str),
    f("LLDP", "lldp", Bool),
    f("Members", "members", STRS),
    f("Mode", "mode", Str),
    f("MTU", "mtu", Int),
    f("Name", "name", Str),
    f("RequiredForOnline", "required_for_online", Str),
    f("Roles", "roles", STRS),
    f("Routes", "routes", ROUTES),
    f("VLANTags", "vlan_tags", INTS),
]);
const VLAN: Ty = Ty::Struct(&[
    f("Addresses", "addresses", STRS),
    f("FirewallRules", "firewall_rules", FIREWALL_RULES),
    f("ID", "id", Int),
    f("MTU", "mtu", Int),
    f("Name", "name", Str),
    f("Parent", "parent", Str),
    f("RequiredForOnline", "required_for_online", Str),
    f("Roles", "roles", STRS),
    f("Routes", "routes", ROUTES),
]);
const WIREGUARD: Ty = Ty::Struct(&[
    f("Addresses", "addresses", STRS),
    f("FirewallRules", "firewall_rules", FIREWALL_RULES),
    f("MTU", "mtu", Int),
    f("Name", "name", Str),
    f(
        "Peers",
        "peers",
        Ty::Slice(&Ty::Struct(&[
            f("AllowedIPs", "allowed_ips", STRS),
            f("Endpoint", "endpoint", Str),
            f("PersistentKeepalive", "persistent_keepalive", Int),
            f("PresharedKey", "preshared_key", Str),
            f("PublicKey", "public_key", Str),
        ])),
    ),
    f("Port", "port", Int),
    f("PrivateKey", "private_key", Str),
    f("RequiredForOnline", "required_for_online", Str),
    f("Roles", "roles", STRS),
    f("Routes", "routes", ROUTES),
]);
const NETWORK_CONFIG: Ty = Ty::Struct(&[
    // Upstream clears it before it stores a configuration.
    f("ConfirmationTimeout", "confirmation_timeout", Unsaved),
    f(
        "DNS",
        "dns",
        Ty::Struct(&[
            f("Domain", "domain", Str),
            f("Hostname", "hostname", Str),
            f("Nameservers", "nameservers", STRS),
            f("SearchDomains", "search_domains", STRS),
            f("DNSOverTLS", "dns_over_tls", Bool),
        ]),
    ),
    f(
        "Time",
        "time",
        Ty::Struct(&[
            f("NTPServers", "ntp_servers", STRS),
            f("Timezone", "timezone", Str),
        ]),
    ),
    f(
        "Proxy",
        "proxy",
        Ty::Struct(&[
            f(
                "Rules",
                "rules",
                Ty::Slice(&Ty::Struct(&[
                    f("Destination", "destination", Str),
                    f("Target", "target", Str),
                ])),
            ),
            f(
                "Servers",
                "servers",
                Ty::Map(&Ty::Struct(&[
                    f("Auth", "auth", Str),
                    f("Host", "host", Str),
                    f("Password", "password", Str),
                    f("Realm", "realm", Str),
                    f("Username", "username", Str),
                    f("UseTLS", "use_tls", Bool),
                ])),
            ),
        ]),
    ),
    f("Interfaces", "interfaces", Ty::Slice(&INTERFACE)),
    f("Bonds", "bonds", Ty::Slice(&BOND)),
    f("VLANs", "vlans", Ty::Slice(&VLAN)),
    f("Wireguard", "wireguard", Ty::Slice(&WIREGUARD)),
]);

const APP_STATE: Ty = Ty::Struct(&[
    f("IsPrimary", "is_primary", Unsaved),
    f("Initialized", "initialized", Bool),
    f("FriendlyVersion", "friendly_version", Str),
    f("Version", "version", Str),
    f("AvailableVersions", "available_versions", STRS),
    f("LastRestored", "last_restored", Unsaved),
]);
const APP: Ty = Ty::Struct(&[
    f("State", "state", APP_STATE),
    f("Config", "config", Ty::Struct(&[])),
]);
const APP_INCUS: Ty = Ty::Struct(&[
    f("State", "state", APP_STATE),
    f(
        "Config",
        "config",
        Ty::Struct(&[f(
            "LXCFS",
            "lxcfs",
            Ty::Struct(&[
                f("CPUShares", "cpu_shares", Bool),
                f("LoadAverage", "load_average", Bool),
            ]),
        )]),
    ),
]);
const APP_OPENFGA: Ty = Ty::Struct(&[
    f("State", "state", APP_STATE),
    f(
        "Config",
        "config",
        Ty::Struct(&[
            f("APITokens", "api_tokens", STRS),
            f("Sync", "sync", Unsaved),
        ]),
    ),
]);

/// A service: its `Config` fields; its `State` is never saved.
macro_rules! svc {
    ($fields:expr) => {
        Ty::Struct(&[
            f("State", "state", Unsaved),
            f("Config", "config", Ty::Struct($fields)),
        ])
    };
}

const SERVICES_TY: Ty = Ty::Struct(&[
    f(
        "Ceph",
        "ceph",
        svc!(&[
            f("Enabled", "enabled", Bool),
            f(
                "Clusters",
                "clusters",
                Ty::Map(&Ty::Struct(&[
                    f("FSID", "fsid", Str),
                    f("Monitors", "monitors", STRS),
                    f(
                        "Keyrings",
                        "keyrings",
                        Ty::Map(&Ty::Struct(&[f("Key", "key", Str)])),
                    ),
                    f("ClientConfig", "client_config", Ty::Map(&Str)),
                ])),
            ),
        ]),
    ),
    f(
        "ISCSI",
        "iscsi",
        svc!(&[
            f("Enabled", "enabled", Bool),
            f(
                "Targets",
                "targets",
                Ty::Slice(&Ty::Struct(&[
                    f("Target", "target", Str),
                    f("Address", "address", Str),
                    f("Port", "port", Int),
                ])),
            ),
        ]),
    ),
    f(
        "Linstor",
        "linstor",
        svc!(&[
            f("Enabled", "enabled", Bool),
            f("ListenAddress", "listen_address", Str),
            f("TLSServerCertificate", "tls_server_certificate", Str),
            f("TLSServerKey", "tls_server_key", Str),
            f("TLSTrustedCertificates", "tls_trusted_certificates", STRS),
        ]),
    ),
    f(
        "LVM",
        "lvm",
        svc!(&[
            f("Enabled", "enabled", Bool),
            f("SystemID", "system_id", Int)
        ]),
    ),
    f(
        "Multipath",
        "multipath",
        svc!(&[f("Enabled", "enabled", Bool), f("WWNs", "wwns", STRS)]),
    ),
    f(
        "Netbird",
        "netbird",
        Ty::Struct(&[
            f(
                "Config",
                "config",
                Ty::Struct(&[
                    f("Enabled", "enabled", Bool),
                    f("SetupKey", "setup_key", Str),
                    f("ManagementURL", "management_url", Str),
                    f("AdminURL", "admin_url", Str),
                    f("Anonymize", "anonymize", Bool),
                    f("BlockInbound", "block_inbound", Bool),
                    f("BlockLanAccess", "block_lan_access", Bool),
                    f("DisableClientRoutes", "disable_client_routes", Bool),
                    f("DisableServerRoutes", "disable_server_routes", Bool),
                    f("DisableDNS", "disable_dns", Bool),
                    f("DisableFirewall", "disable_firewall", Bool),
                    f("DNSResolverAddress", "dns_resolver_address", Str),
                    f("ExternalIPMap", "external_ip_map", STRS),
                    f("ExtraDNSLabels", "extra_dns_labels", STRS),
                ]),
            ),
            // An empty struct upstream: it has no fields to save.
            f("State", "state", Ty::Struct(&[])),
        ]),
    ),
    f(
        "NVME",
        "nvme",
        svc!(&[
            f("Enabled", "enabled", Bool),
            f(
                "Targets",
                "targets",
                Ty::Slice(&Ty::Struct(&[
                    f("Transport", "transport", Str),
                    f("Address", "address", Str),
                    f("HostAddress", "host_address", Str),
                    f("Port", "port", Int),
                    f("NQN", "nqn", Str),
                ])),
            ),
        ]),
    ),
    f(
        "OVN",
        "ovn",
        svc!(&[
            f("Enabled", "enabled", Bool),
            f("ICChassis", "ic_chassis", Bool),
            f("Database", "database", Str),
            f("TLSClientCertificate", "tls_client_certificate", Str),
            f("TLSClientKey", "tls_client_key", Str),
            f("TLSCACertificate", "tls_ca_certificate", Str),
            f("TunnelAddress", "tunnel_address", Str),
            f("TunnelProtocol", "tunnel_protocol", Str),
        ]),
    ),
    f(
        "Tailscale",
        "tailscale",
        svc!(&[
            f("Enabled", "enabled", Bool),
            f("LoginServer", "login_server", Str),
            f("AuthKey", "auth_key", Str),
            f("AcceptRoutes", "accept_routes", Bool),
            f("AcceptDNS", "accept_dns", Bool),
            f("AdvertisedRoutes", "advertised_routes", STRS),
            f("AdvertiseExitNode", "advertise_exit_node", Bool),
            f("ExitNode", "exit_node", Str),
            f("ExitNodeAllowLanAccess", "exit_node_allow_lan_access", Bool),
            f("ServeEnabled", "serve_enabled", Bool),
            f("ServePort", "serve_port", Int),
            f("ServeService", "serve_service", Str),
        ]),
    ),
    f(
        "USBIP",
        "usbip",
        svc!(&[
            f("Enabled", "enabled", Bool),
            f(
                "Targets",
                "targets",
                Ty::Slice(&Ty::Struct(&[
                    f("Address", "address", Str),
                    f("BusID", "bus_id", Str),
                ])),
            ),
        ]),
    ),
]);

const SYSTEM: Ty = Ty::Struct(&[
    f(
        "FallbackListener",
        "fallback_listener",
        Ty::Struct(&[
            f(
                "Config",
                "config",
                Ty::Struct(&[
                    f("ListenAddress", "listen_address", Str),
                    f(
                        "TrustedClientCertificates",
                        "trusted_client_certificates",
                        STRS,
                    ),
                ]),
            ),
            f("State", "state", Unsaved),
        ]),
    ),
    f(
        "Kernel",
        "kernel",
        Ty::Struct(&[
            f(
                "Config",
                "config",
                Ty::Struct(&[
                    f(
                        "Console",
                        "console",
                        Ty::Slice(&Ty::Struct(&[
                            f("Device", "device", Str),
                            f("BaudRate", "baud_rate", Int),
                        ])),
                    ),
                    f("BlacklistModules", "blacklist_modules", STRS),
                    f(
                        "CPU",
                        "cpu",
                        Ty::Struct(&[f("ScalingGovernor", "scaling_governor", Str)]),
                    ),
                    f(
                        "Memory",
                        "memory",
                        Ty::Struct(&[
                            f("PersistentHugepages", "persistent_hugepages", Int),
                            f("ZramSwapSize", "zram_swap_size", Str),
                        ]),
                    ),
                    f(
                        "Network",
                        "network",
                        Ty::Struct(&[
                            f("BufferSize", "buffer_size", Int),
                            f("NetdevMaxBacklog", "netdev_max_backlog", Int),
                            f("QueuingDiscipline", "queuing_discipline", Str),
                            f("TCPCongestionAlgorithm", "tcp_congestion_algorithm", Str),
                            f("TCPMTUProbing", "tcp_mtu_probing", Bool),
                        ]),
                    ),
                    f(
                        "PCI",
                        "pci",
                        Ty::Struct(&[
                            f(
                                "Passthrough",
                                "passthrough",
                                Ty::Slice(&Ty::Struct(&[
                                    f("VendorID", "vendor_id", Str),
                                    f("ProductID", "product_id", Str),
                                    f("PCIAddress", "pci_address", Str),
                                ])),
                            ),
                            f(
                                "SRIOV",
                                "sriov",
                                Ty::Slice(&Ty::Struct(&[
                                    f("PCIAddress", "pci_address", Str),
                                    f("VFCount", "vf_count", Int),
                                ])),
                            ),
                        ]),
                    ),
                ]),
            ),
            f("State", "state", Unsaved),
        ]),
    ),
    f(
        "Logging",
        "logging",
        Ty::Struct(&[
            f(
                "Config",
                "config",
                Ty::Struct(&[f(
                    "Syslog",
                    "syslog",
                    Ty::Struct(&[
                        f("Address", "address", Str),
                        f("Protocol", "protocol", Str),
                        f("LogFormat", "log_format", Str),
                    ]),
                )]),
            ),
            f("State", "state", Unsaved),
        ]),
    ),
    f(
        "Network",
        "network",
        Ty::Struct(&[
            f("Config", "config", NETWORK_CONFIG),
            f("State", "state", Unsaved),
        ]),
    ),
    f(
        "Provider",
        "provider",
        Ty::Struct(&[
            f(
                "Config",
                "config",
                Ty::Struct(&[f("Name", "name", Str), f("Config", "config", Ty::Map(&Str))]),
            ),
            f(
                "State",
                "state",
                Ty::Struct(&[f("Registered", "registered", Bool)]),
            ),
        ]),
    ),
    f(
        "Security",
        "security",
        Ty::Struct(&[
            f(
                "Config",
                "config",
                Ty::Struct(&[
                    f("CustomCACerts", "custom_ca_certs", STRS),
                    f("EncryptionRecoveryKeys", "encryption_recovery_keys", STRS),
                ]),
            ),
            f(
                "State",
                "state",
                Ty::Struct(&[
                    f("EncryptedVolumes", "encrypted_volumes", Unsaved),
                    f(
                        "EncryptionRecoveryKeysRetrieved",
                        "encryption_recovery_keys_retrieved",
                        Bool,
                    ),
                    f("DriveRecoveryKeys", "drive_recovery_keys", Unsaved),
                    f("PoolRecoveryKeys", "pool_recovery_keys", Unsaved),
                    f(
                        "SecureBootCertificates",
                        "secure_boot_certificates",
                        Unsaved,
                    ),
                    f("SecureBootEnabled", "secure_boot_enabled", Unsaved),
                    f("SystemStateIsTrusted", "system_state_is_trusted", Unsaved),
                    f("SystemStateStatus", "system_state_status", Unsaved),
                    f("TPMStatus", "tpm_status", Unsaved),
                    f("TPMPublicKey", "tpm_public_key", Unsaved),
                ]),
            ),
        ]),
    ),
    f(
        "Update",
        "update",
        Ty::Struct(&[
            f(
                "Config",
                "config",
                Ty::Struct(&[
                    f("AutoReboot", "auto_reboot", Bool),
                    f("Channel", "channel", Str),
                    f("CheckFrequency", "check_frequency", Str),
                    f(
                        "MaintenanceWindows",
                        "maintenance_windows",
                        Ty::Slice(&Ty::Struct(&[
                            f("StartDayOfWeek", "start_day_of_week", Str),
                            f("StartHour", "start_hour", Int),
                            f("StartMinute", "start_minute", Int),
                            f("EndDayOfWeek", "end_day_of_week", Str),
                            f("EndHour", "end_hour", Int),
                            f("EndMinute", "end_minute", Int),
                        ])),
                    ),
                ]),
            ),
            // Tagged `-` (an older upstream saved `Status` and `NeedsReboot`).
            f("State", "state", Unsaved),
        ]),
    ),
    f(
        "Storage",
        "storage",
        Ty::Struct(&[
            f(
                "Config",
                "config",
                Ty::Struct(&[
                    f("ScrubSchedule", "scrub_schedule", Str),
                    f("Pools", "pools", Unsaved),
                ]),
            ),
            f("State", "state", Unsaved),
        ]),
    ),
]);

/// Upstream's whole state, as its state file has it.
const STATE: Ty = Ty::Struct(&[
    // Runtime fields, never saved.
    f("StateVersion", "-", Unsaved),
    f("UnrecognizedFields", "-", Unsaved),
    f("ShouldPerformInstall", "-", Unsaved),
    f("UpdateMutex", "-", Unsaved),
    f("JobScheduler", "-", Unsaved),
    f("NetworkConfigurationPending", "-", Unsaved),
    f("NetworkConfigurationChannel", "-", Unsaved),
    f("TriggerReboot", "-", Unsaved),
    f("TriggerShutdown", "-", Unsaved),
    f("TriggerSuspend", "-", Unsaved),
    f("TriggerUpdate", "-", Unsaved),
    f("TriggerFallbackListener", "-", Unsaved),
    f(
        "SecureBoot",
        "secure_boot",
        Ty::Struct(&[
            f("Version", "version", Str),
            f("FullyApplied", "fully_applied", Bool),
        ]),
    ),
    f("UsingSWTPM", "using_swtpm", Bool),
    f("SecureBootDisabled", "secure_boot_disabled", Bool),
    f("FullAgentEnabled", "full_agent_enabled", Bool),
    f("ServicesSeedApplied", "services_seed_applied", Bool),
    f(
        "Applications",
        "applications",
        Ty::Struct(&[
            f("Debug", "debug", APP),
            f("GPUSupport", "gpu_support", APP),
            f("Incus", "incus", APP_INCUS),
            f("IncusCeph", "incus_ceph", APP),
            f("IncusLinstor", "incus_linstor", APP),
            f("MigrationManager", "migration_manager", APP),
            f("OpenFGA", "openfga", APP_OPENFGA),
            f("OperationsCenter", "operations_center", APP),
        ]),
    ),
    f(
        "OS",
        "os",
        Ty::Struct(&[
            f("Name", "name", Str),
            f("RunningRelease", "running_release", Str),
            f("NextRelease", "next_release", Str),
            f("SuccessfulBoot", "successful_boot", Bool),
            f("SystemIsReady", "system_is_ready", Unsaved),
        ]),
    ),
    f("Services", "services", SERVICES_TY),
    f("System", "system", SYSTEM),
    f("PriorNetworkConfig", "prior_network_config", NETWORK_CONFIG),
]);

// ---------------------------------------------------------------------------------------
// Lines and upgrades.

/// A line of the file: its number in the file (`None` for a line an upgrade added) and
/// its text.
#[derive(Debug, Clone)]
struct Line {
    number: Option<usize>,
    text: String,
}

/// Where a line came from, for messages.
fn at(number: Option<usize>) -> String {
    match number {
        Some(n) => format!("line {n}"),
        None => "a line the version upgrade added".to_string(),
    }
}

type Upgrade = fn(Vec<Line>) -> Result<Vec<Line>, String>;

/// `UPGRADES[i]` turns a version `i` file into version `i + 1` (upstream's steps).
const UPGRADES: [Upgrade; MAX_VERSION as usize] = [
    upgrade_encryption_to_security,
    upgrade_proxy,
    upgrade_application_state,
    upgrade_update_names,
    upgrade_frequency_duration,
    upgrade_ntp_to_time,
    upgrade_scrub_schedule,
    upgrade_application_fields,
];

/// Replaces the first `from` in each line by `to`, on lines starting with `prefix`.
fn rename(lines: &mut [Line], prefix: &str, from: &str, to: &str) {
    for l in lines.iter_mut().filter(|l| l.text.starts_with(prefix)) {
        l.text = l.text.replacen(from, to, 1);
    }
}

/// V1: `System.Encryption` became `System.Security`, two fields renamed with it.
fn upgrade_encryption_to_security(mut lines: Vec<Line>) -> Result<Vec<Line>, String> {
    for l in lines
        .iter_mut()
        .filter(|l| l.text.starts_with("System.Encryption."))
    {
        l.text = l
            .text
            .replacen("System.Encryption.", "System.Security.", 1)
            .replacen(
                "System.Security.Config.RecoveryKeys",
                "System.Security.Config.EncryptionRecoveryKeys",
                1,
            )
            .replacen(
                "System.Security.State.RecoveryKeysRetrieved",
                "System.Security.State.EncryptionRecoveryKeysRetrieved",
                1,
            );
    }
    Ok(lines)
}

/// V2: the proxy strings (`HTTPProxy`, `HTTPSProxy`, `NoProxy`) became servers and rules.
fn upgrade_proxy(lines: Vec<Line>) -> Result<Vec<Line>, String> {
    const P: &str = "System.Network.Config.Proxy.";
    let mut rule = 0;
    let mut out = Vec::with_capacity(lines.len());
    for l in lines {
        let is_http = l.text.starts_with("System.Network.Config.Proxy.HTTPProxy");
        let is_https = l.text.starts_with("System.Network.Config.Proxy.HTTPSProxy");
        let is_none = l.text.starts_with("System.Network.Config.Proxy.NoProxy");
        if !(is_http || is_https || is_none) {
            out.push(l);
            continue;
        }
        let (_, value) = l
            .text
            .split_once(": ")
            .ok_or_else(|| format!("{}: malformed line {:?}", at(l.number), l.text))?;
        let mut add = |text: String| {
            out.push(Line {
                number: l.number,
                text,
            })
        };
        if is_none {
            add(format!(
                "{P}Rules[{rule}].Destination: {}",
                value.replace(',', "|")
            ));
            add(format!("{P}Rules[{rule}].Target: direct"));
        } else {
            let proxy = ProxyUrl::parse(value)
                .map_err(|e| format!("{}: proxy {value:?}: {e}", at(l.number)))?;
            let mut key = proxy.host.replace('.', "_");
            let mut host = proxy.host.clone();
            if let Some(port) = &proxy.port {
                key = format!("{key}_{port}");
                host = format!("{host}:{port}");
            }
            let auth = if proxy.user.is_some() {
                "basic"
            } else {
                "anonymous"
            };
            add(format!("{P}Servers[{key}].Host: {host}"));
            add(format!("{P}Servers[{key}].Auth: {auth}"));
            if let Some((user, password)) = &proxy.user {
                add(format!("{P}Servers[{key}].Username: {user}"));
                add(format!("{P}Servers[{key}].Password: {password}"));
            }
            let scheme = if is_https { "https" } else { "http" };
            add(format!("{P}Rules[{rule}].Destination: {scheme}://*"));
            add(format!("{P}Rules[{rule}].Target: {key}"));
        }
        rule += 1;
    }
    Ok(out)
}

/// The parts of a proxy URL the V2 step uses (`http://` assumed when no scheme is given).
#[derive(Debug, PartialEq)]
struct ProxyUrl {
    host: String,
    port: Option<String>,
    user: Option<(String, String)>,
}

impl ProxyUrl {
    fn parse(value: &str) -> Result<ProxyUrl, String> {
        let url = if value.starts_with("http") {
            value.to_string()
        } else {
            format!("http://{value}")
        };
        let rest = url
            .split_once("://")
            .map(|(_, r)| r)
            .ok_or("it is not a URL")?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => {
                let (u, p) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (Some((unescape(u)?, unescape(p)?)), hostport)
            }
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if let Some(p) = port {
            if !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("invalid port {p:?}"));
            }
        }
        Ok(ProxyUrl {
            host: host.to_string(),
            port: port.filter(|p| !p.is_empty()).map(str::to_string),
            user,
        })
    }
}

/// Undoes URL percent-escapes.
fn unescape(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("invalid escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("invalid escape in {s:?}"))
}

/// V3: an application's `Initialized` and `Version` moved under `State`.
fn upgrade_application_state(mut lines: Vec<Line>) -> Result<Vec<Line>, String> {
    rename(
        &mut lines,
        "Applications[",
        ".Initialized: ",
        ".State.Initialized: ",
    );
    rename(
        &mut lines,
        "Applications[",
        ".Version: ",
        ".State.Version: ",
    );
    Ok(lines)
}

/// V4: `UpdateFrequency` became `CheckFrequency`, `UpdateStatus` became `Status`, and the
/// channel was added (`stable`).
fn upgrade_update_names(mut lines: Vec<Line>) -> Result<Vec<Line>, String> {
    for l in &mut lines {
        l.text = l
            .text
            .replacen(
                "System.Update.Config.UpdateFrequency: ",
                "System.Update.Config.CheckFrequency: ",
                1,
            )
            .replacen(
                "System.Update.State.UpdateStatus: ",
                "System.Update.State.Status: ",
                1,
            );
    }
    lines.push(Line {
        number: None,
        text: "System.Update.Config.Channel: stable".into(),
    });
    Ok(lines)
}

/// V5: the check frequency, nanoseconds before, became a Go duration (`6h0m0s`).
fn upgrade_frequency_duration(mut lines: Vec<Line>) -> Result<Vec<Line>, String> {
    const KEY: &str = "System.Update.Config.CheckFrequency";
    for l in lines.iter_mut().filter(|l| l.text.starts_with(KEY)) {
        let (_, value) = l
            .text
            .split_once(": ")
            .ok_or_else(|| format!("{}: malformed line {:?}", at(l.number), l.text))?;
        let ns: i64 = value.parse().map_err(|_| {
            format!(
                "{}: {KEY}: invalid frequency {value:?} (nanoseconds expected before version 5)",
                at(l.number)
            )
        })?;
        l.text = format!("{KEY}: {}", go_duration(ns));
    }
    Ok(lines)
}

/// V6: `NTP.Timeservers` became `Time.NTPServers`.
fn upgrade_ntp_to_time(mut lines: Vec<Line>) -> Result<Vec<Line>, String> {
    for l in &mut lines {
        l.text = l.text.replacen(
            "System.Network.Config.NTP.Timeservers",
            "System.Network.Config.Time.NTPServers",
            1,
        );
    }
    Ok(lines)
}

/// V7: the scrub schedule was added (`0 4 * * 0`).
fn upgrade_scrub_schedule(mut lines: Vec<Line>) -> Result<Vec<Line>, String> {
    lines.push(Line {
        number: None,
        text: "System.Storage.Config.ScrubSchedule: 0 4 * * 0".into(),
    });
    Ok(lines)
}

/// V8: `Applications[<name>]` became `Applications.<GoName>`. Upstream's step leaves out
/// `openfga`, whose entries it then cannot read; this one moves them too.
fn upgrade_application_fields(mut lines: Vec<Line>) -> Result<Vec<Line>, String> {
    const NAMES: [(&str, &str); 8] = [
        ("debug", "Debug"),
        ("gpu-support", "GPUSupport"),
        ("incus", "Incus"),
        ("incus-ceph", "IncusCeph"),
        ("incus-linstor", "IncusLinstor"),
        ("migration-manager", "MigrationManager"),
        ("openfga", "OpenFGA"),
        ("operations-center", "OperationsCenter"),
    ];
    for l in lines
        .iter_mut()
        .filter(|l| l.text.starts_with("Applications["))
    {
        for (old, new) in NAMES {
            l.text = l.text.replacen(&format!("[{old}]"), &format!(".{new}"), 1);
        }
    }
    Ok(lines)
}

/// A duration as Go's `time.Duration.String` writes it (`6h0m0s`, `1.5s`, `300ms`).
pub fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let u = ns.unsigned_abs();
    // The integer part and the fraction (`.5`, or nothing) of `v / 10^prec`.
    let frac = |v: u64, prec: usize| {
        let p = 10u64.pow(prec as u32);
        let f = v % p;
        let fraction = if f == 0 {
            String::new()
        } else {
            format!(".{}", format!("{f:0prec$}").trim_end_matches('0'))
        };
        (v / p, fraction)
    };
    let body = if u < 1_000 {
        format!("{u}ns")
    } else if u < 1_000_000 {
        let (i, f) = frac(u, 3);
        format!("{i}{f}µs")
    } else if u < 1_000_000_000 {
        let (i, f) = frac(u, 6);
        format!("{i}{f}ms")
    } else {
        let (secs, f) = frac(u, 9);
        let (s, m) = (secs % 60, secs / 60);
        if m == 0 {
            format!("{s}{f}s")
        } else if m < 60 {
            format!("{m}m{s}{f}s")
        } else {
            format!("{}h{}m{s}{f}s", m / 60, m % 60)
        }
    };
    if ns < 0 {
        format!("-{body}")
    } else {
        body
    }
}

// ---------------------------------------------------------------------------------------
// Decoding lines into a JSON tree.

/// The decoded file: the tree (upstream's JSON names) and, for every value in it, where it
/// came from (JSON pointer -> line and Go path).
struct Decoded {
    tree: Value,
    origins: BTreeMap<String, (Option<usize>, String)>,
}

impl Decoded {
    /// `line N: Go.Path` of the value at `pointer`, or of the first value under it.
    fn origin(&self, pointer: &str) -> String {
        let under = format!("{pointer}/");
        let found = self.origins.get(pointer).or_else(|| {
            self.origins
                .range(under.clone()..)
                .next()
                .filter(|(k, _)| k.starts_with(&under))
                .map(|(_, v)| v)
        });
        match found {
            Some((n, path)) => format!("{}: {path}", at(*n)),
            None => pointer.to_string(),
        }
    }
}

/// A map key as a JSON pointer step.
fn pointer_step(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// One step of a path: `Name` or `Name[index]`.
struct Segment<'a> {
    name: &'a str,
    index: Option<&'a str>,
}

fn segment(s: &str) -> Option<Segment<'_>> {
    match s.split_once('[') {
        None => (!s.is_empty()).then_some(Segment {
            name: s,
            index: None,
        }),
        Some((name, rest)) => {
            let index = rest.strip_suffix(']')?;
            (!name.is_empty() && !index.contains(['[', ']'])).then_some(Segment {
                name,
                index: Some(index),
            })
        }
    }
}

/// The zero value of a type, for the gaps a slice has where upstream left out zero
/// elements.
fn zero(ty: &Ty) -> Value {
    match ty {
        Ty::Bool => Value::Bool(false),
        Ty::Int => Value::from(0),
        Ty::Str => Value::String(String::new()),
        Ty::Struct(_) => Value::Object(Map::new()),
        Ty::Slice(_) | Ty::Map(_) | Ty::Unsaved => Value::Null,
    }
}

/// A value of type `ty` from its text.
fn parse_value(ty: &Ty, text: &str) -> Result<Value, String> {
    match ty {
        // Go's strconv.ParseBool.
        Ty::Bool => match text {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(Value::Bool(true)),
            "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(Value::Bool(false)),
            _ => Err(format!("invalid boolean {text:?} (true or false expected)")),
        },
        Ty::Int => text
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("invalid integer {text:?}")),
        Ty::Str => Ok(Value::String(text.replace("\\n", "\n"))),
        Ty::Struct(_) | Ty::Slice(_) | Ty::Map(_) => {
            Err("not a value: the path must go on to one of its fields".into())
        }
        Ty::Unsaved => Ok(Value::Null),
    }
}

/// Decodes the lines after the upgrades into the tree.
fn decode(lines: &[Line]) -> Result<Decoded, String> {
    let mut out = Decoded {
        tree: Value::Object(Map::new()),
        origins: BTreeMap::new(),
    };
    let mut left_out = MAX_LEFT_OUT;
    for l in lines {
        let text = l.text.as_str();
        if text.trim().is_empty() || text.starts_with('#') {
            continue;
        }
        let (path, value) = text.split_once(": ").ok_or_else(|| {
            format!(
                "{}: malformed line {text:?} (\"Path: value\" expected)",
                at(l.number)
            )
        })?;
        let fail = |e: String| format!("{}: {path}: {e}", at(l.number));
        let segments = path
            .split('.')
            .map(|s| segment(s).ok_or_else(|| fail(format!("malformed path element {s:?}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let mut pointer = String::new();
        let kept = set(
            &mut out.tree,
            &STATE,
            &segments,
            value,
            &mut pointer,
            &mut left_out,
        )
        .map_err(fail)?;
        if kept {
            out.origins.insert(pointer, (l.number, path.to_string()));
        }
    }
    Ok(out)
}

/// Sets the value at `segments` under `node` (of type `ty`, a struct); `pointer` follows
/// the JSON path. Returns whether the value was kept (false: upstream never saves it).
fn set(
    node: &mut Value,
    ty: &Ty,
    segments: &[Segment],
    value: &str,
    pointer: &mut String,
    left_out: &mut usize,
) -> Result<bool, String> {
    let Some((seg, rest)) = segments.split_first() else {
        let v = parse_value(ty, value)?;
        *node = v;
        return Ok(true);
    };
    let Ty::Struct(fields) = ty else {
        return Err(format!("unknown path: {:?} has no fields", seg.name));
    };
    let field = fields
        .iter()
        .find(|f| f.go == seg.name)
        .ok_or_else(|| format!("unknown path (no field {:?} there)", seg.name))?;
    if matches!(field.ty, Ty::Unsaved) {
        return Ok(false);
    }
    if node.is_null() {
        *node = Value::Object(Map::new());
    }
    let obj = node.as_object_mut().expect("a struct is an object");
    pointer.push('/');
    pointer.push_str(field.json);
    let child = obj.entry(field.json).or_insert(Value::Null);
    match (field.ty, seg.index) {
        (Ty::Slice(elem), Some(index)) => {
            let i: usize = index
                .parse()
                .map_err(|_| format!("invalid index {index:?} of {}", seg.name))?;
            if i > MAX_INDEX {
                return Err(format!(
                    "index {i} of {} is too large (at most {MAX_INDEX})",
                    seg.name
                ));
            }
            if child.is_null() {
                *child = Value::Array(Vec::new());
            }
            let list = child.as_array_mut().expect("a slice is an array");
            let missing = (i + 1).saturating_sub(list.len() + 1);
            if missing > *left_out {
                return Err(format!(
                    "index {i} of {}: the file leaves out more than {MAX_LEFT_OUT} list elements in all",
                    seg.name
                ));
            }
            *left_out -= missing;
            while list.len() <= i {
                list.push(zero(elem));
            }
            pointer.push_str(&format!("/{i}"));
            leaf_or_struct(&mut list[i], elem, rest, value, pointer, left_out)
        }
        (Ty::Map(elem), Some(key)) => {
            let key = key.replace("__DOT__", ".");
            if child.is_null() {
                *child = Value::Object(Map::new());
            }
            let map = child.as_object_mut().expect("a map is an object");
            pointer.push('/');
            pointer.push_str(&pointer_step(&key));
            let entry = map.entry(key).or_insert_with(|| zero(elem));
            leaf_or_struct(entry, elem, rest, value, pointer, left_out)
        }
        (Ty::Slice(_), None) | (Ty::Map(_), None) => Err(format!(
            "{} is a list or a map: an index is expected",
            seg.name
        )),
        (_, Some(_)) => Err(format!("{} is not a list or a map", seg.name)),
        (ty, None) => leaf_or_struct(child, &ty, rest, value, pointer, left_out),
    }
}

/// Sets an element: the value itself when the path ends, else a field of the struct.
fn leaf_or_struct(
    node: &mut Value,
    ty: &Ty,
    rest: &[Segment],
    value: &str,
    pointer: &mut String,
    left_out: &mut usize,
) -> Result<bool, String> {
    if rest.is_empty() {
        *node = parse_value(ty, value)?;
        Ok(true)
    } else {
        set(node, ty, rest, value, pointer, left_out)
    }
}

// ---------------------------------------------------------------------------------------
// Mapping onto our document.

/// Parses upstream's state file and maps it onto our document (schema
/// [`SCHEMA_VERSION`]). Errors name the line and the Go path at fault.
///
/// Upstream keeps one `Incus` entry for both `incus` and `incus-lts-7.0`; which of the two
/// is installed shows only on the disk (the `/var/lib/extensions` link). The record is put
/// under `incus` with `name` empty (`incus`); a caller that finds the LTS link sets
/// `applications["incus"].name` to `incus-lts-7.0`.
pub fn import(text: &str) -> Result<Document, String> {
    let mut raw = text.split('\n');
    let first = raw.next().unwrap_or_default();
    let version = first
        .strip_prefix("#Version: ")
        .ok_or_else(|| {
            format!("line 1: not an upstream state file: {first:?} (\"#Version: N\" expected)")
        })?
        .trim_end_matches('\r');
    let version: u32 = version
        .parse()
        .map_err(|_| format!("line 1: invalid state version {version:?}"))?;
    if version > MAX_VERSION {
        return Err(format!(
            "the state file is version {version}, newer than this daemon knows ({MAX_VERSION}): \
             it comes from a newer upstream release and cannot be imported without losing what \
             the newer release saved"
        ));
    }
    let mut lines: Vec<Line> = raw
        .enumerate()
        .map(|(i, t)| Line {
            number: Some(i + 2),
            text: t.to_string(),
        })
        .collect();
    for step in &UPGRADES[version as usize..] {
        lines = step(lines)?;
    }
    let decoded = decode(&lines)?;
    map(&decoded)
}

/// The tree's value at `pointer` (`Null` when absent).
fn get<'a>(d: &'a Decoded, pointer: &str) -> &'a Value {
    d.tree.pointer(pointer).unwrap_or(&Value::Null)
}

/// The section at `pointer` as our type `T`, checked to carry every value over.
fn section<T: DeserializeOwned + Serialize + Default>(
    d: &Decoded,
    pointer: &str,
) -> Result<T, String> {
    let v = get(d, pointer);
    if v.is_null() {
        return Ok(T::default());
    }
    let typed: T = serde_json::from_value(v.clone())
        .map_err(|e| format!("{}: {e}", culprit::<T>(d, v, pointer)))?;
    let back = serde_json::to_value(&typed).expect("state serializes");
    check_kept(d, v, &back, pointer)?;
    Ok(typed)
}

/// Which line of the section at `pointer` our type `T` refuses: the one whose value, made
/// zero, lets the section through (the section's first line when no single one does).
fn culprit<T: DeserializeOwned>(d: &Decoded, v: &Value, pointer: &str) -> String {
    let under = format!("{pointer}/");
    let mut leaves: Vec<(&String, &(Option<usize>, String))> = d
        .origins
        .range(under.clone()..)
        .take_while(|(k, _)| k.starts_with(&under))
        .collect();
    leaves.sort_by_key(|(_, (line, _))| *line);
    for (leaf, (line, path)) in leaves {
        let mut copy = v.clone();
        if let Some(x) = copy.pointer_mut(&leaf[pointer.len()..]) {
            *x = match x {
                Value::Bool(_) => Value::Bool(false),
                Value::Number(_) => Value::from(0),
                Value::String(_) => Value::String(String::new()),
                _ => Value::Null,
            };
            if serde_json::from_value::<T>(copy).is_ok() {
                return format!("{}: {path}", at(*line));
            }
        }
    }
    d.origin(pointer)
}

/// Whether a value is a zero value (upstream never writes those, so neither side needs to
/// have them).
fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_i64() == Some(0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.iter().all(is_zero),
        Value::Object(o) => o.values().all(is_zero),
    }
}

/// Every non-zero value of `input` is in `output` (our type serialized back).
fn check_kept(d: &Decoded, input: &Value, output: &Value, pointer: &str) -> Result<(), String> {
    let lost = || {
        Err(format!(
            "{}: this value is not carried over by this daemon's state",
            d.origin(pointer)
        ))
    };
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                let p = format!("{pointer}/{}", pointer_step(k));
                match o.get(k) {
                    Some(ov) => check_kept(d, v, ov, &p)?,
                    None if is_zero(v) => {}
                    None => {
                        return Err(format!(
                            "{}: this value is not carried over by this daemon's state",
                            d.origin(&p)
                        ))
                    }
                }
            }
            Ok(())
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, v) in i.iter().enumerate() {
                let p = format!("{pointer}/{n}");
                match o.get(n) {
                    Some(ov) => check_kept(d, v, ov, &p)?,
                    None if is_zero(v) => {}
                    None => {
                        return Err(format!(
                            "{}: this value is not carried over by this daemon's state",
                            d.origin(&p)
                        ))
                    }
                }
            }
            Ok(())
        }
        (i, o) if i == o || (is_zero(i) && is_zero(o)) => Ok(()),
        _ => lost(),
    }
}

/// Our validation's refusal of the section at Go path `section`.
fn invalid(section: &str, e: String) -> String {
    format!("{section}: refused by this daemon's validation: {e}")
}

fn map(d: &Decoded) -> Result<Document, String> {
    let mut doc = Document {
        os: section::<OsState>(d, "/os")?,
        ..Document::default()
    };

    // Applications: the host's records, and the configs of the two that have one.
    for (field, name) in APPLICATIONS {
        let base = format!("/applications/{field}");
        if is_zero(get(d, &base)) {
            continue;
        }
        let state = get(d, &format!("{base}/state"));
        let text = |k: &str| state.get(k).and_then(Value::as_str).unwrap_or_default();
        let record = ApplicationRecord {
            name: String::new(),
            version: text("version").to_string(),
            available_versions: state
                .get("available_versions")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|v| v.as_str().unwrap_or_default().to_string())
                        .collect()
                })
                .unwrap_or_default(),
            initialized: state
                .get("initialized")
                .and_then(Value::as_bool)
                .unwrap_or_default(),
            last_restored: None,
        };
        doc.applications.insert(name.to_string(), record);
        let config = get(d, &format!("{base}/config"));
        let plugin_config = match field {
            "incus" if !is_zero(config) => {
                let lxcfs = config.get("lxcfs").unwrap_or(&Value::Null);
                let flag = |k: &str| lxcfs.get(k).and_then(Value::as_bool).unwrap_or_default();
                Some(serde_json::json!({"lxcfs": {
                    "cpu_shares": flag("cpu_shares"),
                    "load_average": flag("load_average"),
                }}))
            }
            "openfga" if !is_zero(config) => {
                let tokens = config.get("api_tokens").cloned().unwrap_or(Value::Null);
                Some(serde_json::json!({"api_tokens": tokens}))
            }
            _ => None,
        };
        if let Some(config) = plugin_config {
            let key = plugin_host::state_key(plugin_api::Kind::Application, name);
            doc.plugins
                .insert(key, serde_json::json!({ "config": config }));
        }
    }

    // Services: each one's config, as its plugin stores it (`{"config": ...}`).
    for name in SERVICES {
        let config = get(d, &format!("/services/{name}/config"));
        if !is_zero(config) {
            let key = plugin_host::state_key(plugin_api::Kind::Service, name);
            doc.plugins
                .insert(key, serde_json::json!({ "config": config.clone() }));
        }
    }

    // System.
    let logging: LoggingConfig = section(d, "/system/logging/config")?;
    logging::validate(&logging).map_err(|e| invalid("System.Logging.Config", e))?;
    doc.system.logging = logging;

    doc.system.provider = provider(d, &mut doc.plugins)?;

    // A file without a channel or a check frequency gets upstream's new-state defaults
    // (every upstream release since version 5 writes both).
    let mut update_config: UpdateConfig = section(d, "/system/update/config")?;
    let defaults = UpdateConfig::default();
    if update_config.channel.is_empty() {
        update_config.channel = defaults.channel;
    }
    if update_config.check_frequency.is_empty() {
        update_config.check_frequency = defaults.check_frequency;
    }
    update_config::validate(&update_config).map_err(|e| invalid("System.Update.Config", e))?;
    doc.system.update = UpdateDoc {
        config: update_config,
        last_check: None,
    };

    let security_config: SecurityConfig = section(d, "/system/security/config")?;
    security::check_ca_certs(&security_config.custom_ca_certs)
        .map_err(|e| invalid("System.Security.Config.CustomCACerts", e))?;
    let flag = |p: &str| get(d, p).as_bool().unwrap_or_default();
    doc.system.security = SecurityDoc {
        config: security_config,
        encryption_recovery_keys_retrieved: flag(
            "/system/security/state/encryption_recovery_keys_retrieved",
        ),
        using_swtpm: flag("/using_swtpm"),
        secure_boot_disabled: flag("/secure_boot_disabled"),
        full_agent_enabled: flag("/full_agent_enabled"),
        secure_boot: security::SecureBootUpdates {
            version: get(d, "/secure_boot/version")
                .as_str()
                .unwrap_or_default()
                .to_string(),
            fully_applied: flag("/secure_boot/fully_applied"),
        },
    };

    doc.system.network = NetworkDoc {
        config: network(d, "/system/network/config", "System.Network.Config")?,
        prior_config: network(d, "/prior_network_config", "PriorNetworkConfig")?,
    };

    doc.system.kernel = section(d, "/system/kernel/config")?;

    // Likewise the scrub schedule (added by the V7 step).
    let mut storage: StorageDoc = section(d, "/system/storage/config")?;
    if storage.scrub_schedule.is_empty() {
        storage.scrub_schedule = StorageDoc::default().scrub_schedule;
    }
    crate::system::storage::cron::Schedule::parse(&storage.scrub_schedule).map_err(|e| {
        format!(
            "{}: refused by this daemon's validation: {e}",
            d.origin("/system/storage/config/scrub_schedule")
        )
    })?;
    doc.system.storage = storage;

    let fallback_doc = FallbackDoc {
        config: section(d, "/system/fallback_listener/config")?,
    };
    if fallback_doc.config != Default::default() {
        fallback::validate(&fallback_doc.config)
            .map_err(|e| invalid("System.FallbackListener.Config", e))?;
    }
    doc.system.fallback_listener = fallback_doc;

    debug_assert_eq!(doc.schema_version, SCHEMA_VERSION);
    Ok(doc)
}

/// A network configuration (`None` when the file has none), checked as a stored one.
fn network(
    d: &Decoded,
    pointer: &str,
    go_path: &str,
) -> Result<Option<SystemNetworkConfig>, String> {
    // Upstream writes nothing for a configuration without values, and reads it back as
    // none.
    if is_zero(get(d, pointer)) {
        return Ok(None);
    }
    let config: SystemNetworkConfig = section(d, pointer)?;
    // A restore with `network-macs` skipped leaves interface names in `hwaddr`: the lenient
    // check, as for a configuration read at start-up. Validation may rewrite names
    // (`enx` prefixes), so it runs on a copy: the stored one stays as upstream had it.
    network_validate::validate(Some(&mut config.clone()), MacCheck::Lenient)
        .map_err(|e| invalid(go_path, e))?;
    Ok(Some(config))
}

/// The provider selection, and its config in the provider's plugin document.
fn provider(d: &Decoded, plugins: &mut BTreeMap<String, Value>) -> Result<ProviderDoc, String> {
    let name = get(d, "/system/provider/config/name")
        .as_str()
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_PROVIDER)
        .to_string();
    let Some((_, keys)) = PROVIDERS.iter().find(|(n, _)| *n == name) else {
        return Err(format!(
            "{}: unknown provider {name:?} (upstream has images, operations-center and debug)",
            d.origin("/system/provider/config/name")
        ));
    };
    let registered = get(d, "/system/provider/state/registered")
        .as_bool()
        .unwrap_or_default();
    if let Some(config) = get(d, "/system/provider/config/config").as_object() {
        for k in config.keys() {
            if !keys.contains(&k.as_str()) {
                return Err(format!(
                    "{}: the {name} provider has no config key {k:?}",
                    d.origin(&format!(
                        "/system/provider/config/config/{}",
                        pointer_step(k)
                    ))
                ));
            }
        }
        let key = plugin_host::state_key(plugin_api::Kind::Provider, &name);
        plugins.insert(key, serde_json::json!({ "config": config }));
    }
    Ok(ProviderDoc { name, registered })
}

#[cfg(test)]
#[path = "upstream_tests.rs"]
mod tests;
