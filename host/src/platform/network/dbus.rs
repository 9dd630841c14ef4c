//! systemd-networkd, hostnamed, timedated, resolved and timesyncd over D-Bus (zbus), plus
//! networkd's LLDP neighbours over its varlink socket (it has no D-Bus call for them).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::netlink::Netlink;
use super::{LinkState, LinkStatus, LldpNeighbor, NetworkOs};
use crate::platform::systemd::UnitAction;
use crate::platform::systemd_dbus::DbusSystemd;
use crate::platform::PlatformError;

#[zbus::proxy(
    interface = "org.freedesktop.network1.Manager",
    default_service = "org.freedesktop.network1",
    default_path = "/org/freedesktop/network1"
)]
trait Networkd {
    fn get_link_by_name(&self, name: &str) -> zbus::Result<(i32, zbus::zvariant::OwnedObjectPath)>;
    fn describe_link(&self, ifindex: i32) -> zbus::Result<String>;
    fn reload(&self) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.hostname1",
    default_service = "org.freedesktop.hostname1",
    default_path = "/org/freedesktop/hostname1"
)]
trait Hostnamed {
    fn set_static_hostname(&self, hostname: &str, interactive: bool) -> zbus::Result<()>;
    fn set_hostname(&self, hostname: &str, interactive: bool) -> zbus::Result<()>;
    #[zbus(property)]
    fn hostname(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn static_hostname(&self) -> zbus::Result<String>;
}

#[zbus::proxy(
    interface = "org.freedesktop.timedate1",
    default_service = "org.freedesktop.timedate1",
    default_path = "/org/freedesktop/timedate1"
)]
trait Timedated {
    fn set_timezone(&self, timezone: &str, interactive: bool) -> zbus::Result<()>;
    #[zbus(property)]
    fn timezone(&self) -> zbus::Result<String>;
}

#[zbus::proxy(
    interface = "org.freedesktop.resolve1.Manager",
    default_service = "org.freedesktop.resolve1",
    default_path = "/org/freedesktop/resolve1"
)]
trait Resolved {
    fn flush_caches(&self) -> zbus::Result<()>;
    #[allow(clippy::type_complexity)]
    fn resolve_hostname(
        &self,
        ifindex: i32,
        name: &str,
        family: i32,
        flags: u64,
    ) -> zbus::Result<(Vec<(i32, i32, Vec<u8>)>, String, u64)>;
}

/// timesyncd's last NTP exchange: leap, version, mode, stratum, precision, root delay,
/// root dispersion, reference, then the origin, receive, transmit and destination
/// timestamps, spike, packet count, jitter.
type NtpMessage = (
    u32,
    u32,
    u32,
    u32,
    i32,
    u64,
    u64,
    Vec<u8>,
    u64,
    u64,
    u64,
    u64,
    bool,
    u64,
    u64,
);

#[zbus::proxy(
    interface = "org.freedesktop.timesync1.Manager",
    default_service = "org.freedesktop.timesync1",
    default_path = "/org/freedesktop/timesync1"
)]
trait Timesyncd {
    #[zbus(property, name = "NTPMessage")]
    fn ntp_message(&self) -> zbus::Result<NtpMessage>;
}

const NETWORKD: &str = "systemd-networkd.service";
const TIMESYNCD: &str = "systemd-timesyncd.service";
/// How often waits poll.
const POLL: Duration = Duration::from_millis(250);
/// networkd's varlink socket, under the root prefix.
const NETWORKD_VARLINK: &str = "run/systemd/netif/io.systemd.Network";
/// Where networkd 252 keeps the LLDP frames heard per link, under the root prefix.
const NETWORKD_LLDP: &str = "run/systemd/netif/lldp";

fn err(what: &str, e: impl std::fmt::Display) -> PlatformError {
    PlatformError(format!("{what}: {e}"))
}

/// The D-Bus error's name and text (`org.freedesktop.DBus.Error.InvalidArgs: ...`).
fn dbus_message(e: zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, Some(msg), _) => format!("{}: {msg}", name.as_str()),
        zbus::Error::MethodError(name, None, _) => name.to_string(),
        other => other.to_string(),
    }
}

/// The live network OS: netlink in one namespace, the services on one system bus.
pub struct DbusNetwork {
    conn: zbus::Connection,
    systemd: DbusSystemd,
    netlink: Netlink,
    root: PathBuf,
    runtime: tokio::runtime::Handle,
}

impl DbusNetwork {
    /// Connects to the bus at `address` (the system bus when `None`); `netlink` reads the
    /// links of the same machine, and networkd's varlink socket is found under `root` (the
    /// root prefix). Call it inside a tokio runtime.
    pub async fn connect(
        address: Option<&str>,
        netlink: Netlink,
        root: &Path,
    ) -> Result<DbusNetwork, PlatformError> {
        let builder = match address {
            Some(a) => zbus::connection::Builder::address(a)
                .map_err(|e| err(&format!("invalid D-Bus address {a}"), e))?,
            None => zbus::connection::Builder::system()
                .map_err(|e| err("cannot use the system bus", e))?,
        };
        let conn = builder
            .build()
            .await
            .map_err(|e| err("cannot connect to the system bus", e))?;
        let systemd = DbusSystemd::connect(address).await?;
        Ok(DbusNetwork {
            conn,
            systemd,
            netlink,
            root: root.to_path_buf(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// The netlink side.
    pub fn netlink(&self) -> &Netlink {
        &self.netlink
    }

    async fn networkd(&self) -> Result<NetworkdProxy<'_>, PlatformError> {
        NetworkdProxy::new(&self.conn)
            .await
            .map_err(|e| err("networkd", e))
    }

    /// Restarts systemd-networkd and waits for the job (it re-reads every file under
    /// `/run/systemd/network`, recreates missing netdevs and reconfigures every link).
    pub async fn restart_networkd(&self) -> Result<(), PlatformError> {
        self.systemd.run_job(UnitAction::Restart, NETWORKD).await
    }

    /// networkd's `Reload`: re-reads its files and reconfigures links whose files changed,
    /// without a restart.
    pub async fn reload_networkd(&self) -> Result<(), PlatformError> {
        self.networkd()
            .await?
            .reload()
            .await
            .map_err(|e| err("cannot reload systemd-networkd", dbus_message(e)))
    }

    /// networkd's description of a link; `None` when networkd does not know the link
    /// (absent, or networkd not running).
    pub async fn link_status(&self, link: &str) -> Result<Option<LinkStatus>, PlatformError> {
        let nd = self.networkd().await?;
        let index = match nd.get_link_by_name(link).await {
            Ok((index, _)) => index,
            Err(zbus::Error::MethodError(..)) => return Ok(None),
            Err(e) => return Err(err(&format!("cannot look up {link} in networkd"), e)),
        };
        let json = nd
            .describe_link(index)
            .await
            .map_err(|e| err(&format!("cannot describe {link}"), dbus_message(e)))?;
        LinkStatus::from_json(&json).map(Some)
    }

    /// LLDP neighbours networkd heard on `link` (its `LLDP=` must be on): from its varlink
    /// call `io.systemd.Network.GetLLDPNeighbors` where networkd has that socket, else
    /// from the frames it keeps under `/run/systemd/netif/lldp/` (systemd 252, which has
    /// neither that call nor a D-Bus one). No file: no neighbour heard.
    pub async fn lldp_neighbors(&self, link: &str) -> Result<Vec<LldpNeighbor>, PlatformError> {
        let index = self
            .netlink
            .link(link)
            .await?
            .ok_or_else(|| PlatformError(format!("no network link named {link}")))?
            .index;
        let socket = self.root.join(NETWORKD_VARLINK);
        if socket.exists() {
            let reply = varlink_call(
                &socket,
                "io.systemd.Network.GetLLDPNeighbors",
                serde_json::json!({ "InterfaceIndex": index }),
            )
            .await?;
            return Ok(LldpNeighbor::from_varlink(&reply));
        }
        let file = self.root.join(format!("{NETWORKD_LLDP}/{index}"));
        match tokio::fs::read(&file).await {
            Ok(data) => Ok(super::lldp::parse_networkd_file(&data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(err(&format!("cannot read {}", file.display()), e)),
        }
    }

    /// Waits until every link of `links` is `online` for networkd and has a routable
    /// (non-link-local) address, for at most `timeout`. The error names each link still
    /// missing and why.
    pub async fn wait_online(
        &self,
        links: &[String],
        timeout: Duration,
    ) -> Result<(), PlatformError> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut waiting = Vec::new();
            for link in links {
                if let Some(why) = self.not_online(link).await? {
                    waiting.push(format!("{link} ({why})"));
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(PlatformError(format!(
                    "timed out after {}s waiting for network devices to come online: {}",
                    timeout.as_secs(),
                    waiting.join(", ")
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Why `link` is not online yet, or `None` when it is.
    async fn not_online(&self, link: &str) -> Result<Option<String>, PlatformError> {
        let Some(status) = self.link_status(link).await? else {
            return Ok(Some("unknown to systemd-networkd".into()));
        };
        let online = status.online_state.as_deref() == Some("online");
        let addresses = self
            .netlink
            .link(link)
            .await?
            .map(|l| l.addresses)
            .unwrap_or_default();
        Ok(match (online, addresses.is_empty()) {
            (true, false) => None,
            (true, true) => Some("no routable address".into()),
            (false, _) => Some(format!(
                "online state {}, operational state {}",
                status.online_state.as_deref().unwrap_or("unset"),
                status.operational_state
            )),
        })
    }

    /// Sets the static and the transient hostname through hostnamed.
    pub async fn set_hostname(&self, name: &str) -> Result<(), PlatformError> {
        let h = HostnamedProxy::new(&self.conn)
            .await
            .map_err(|e| err("hostnamed", e))?;
        h.set_static_hostname(name, false).await.map_err(|e| {
            err(
                &format!("cannot set the hostname to {name:?}"),
                dbus_message(e),
            )
        })?;
        h.set_hostname(name, false).await.map_err(|e| {
            err(
                &format!("cannot set the hostname to {name:?}"),
                dbus_message(e),
            )
        })
    }

    /// The hostname in use (hostnamed's `Hostname`).
    pub async fn hostname(&self) -> Result<String, PlatformError> {
        let h = HostnamedProxy::builder(&self.conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| err("hostnamed", e))?;
        h.hostname()
            .await
            .map_err(|e| err("cannot read the hostname", dbus_message(e)))
    }

    /// Sets the system time zone (an IANA name such as `Europe/Paris`) through timedated.
    pub async fn set_timezone(&self, tz: &str) -> Result<(), PlatformError> {
        let t = TimedatedProxy::new(&self.conn)
            .await
            .map_err(|e| err("timedated", e))?;
        t.set_timezone(tz, false).await.map_err(|e| {
            err(
                &format!("cannot set the time zone to {tz:?}"),
                dbus_message(e),
            )
        })
    }

    /// The system time zone (timedated's `Timezone`).
    pub async fn timezone(&self) -> Result<String, PlatformError> {
        let t = TimedatedProxy::builder(&self.conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| err("timedated", e))?;
        t.timezone()
            .await
            .map_err(|e| err("cannot read the time zone", dbus_message(e)))
    }

    async fn resolved(&self) -> Result<ResolvedProxy<'_>, PlatformError> {
        ResolvedProxy::new(&self.conn)
            .await
            .map_err(|e| err("resolved", e))
    }

    /// Empties resolved's caches.
    pub async fn flush_dns_caches(&self) -> Result<(), PlatformError> {
        self.resolved()
            .await?
            .flush_caches()
            .await
            .map_err(|e| err("cannot flush the DNS caches", dbus_message(e)))
    }

    /// Whether DNS works: resolves `name` through resolved until it answers, for at most
    /// `timeout`. An answer, and also "no such name" (NXDOMAIN) and "refused" from a
    /// server, count as working (a server answered); no server, a timeout or a failure
    /// do not, and the error gives resolved's last reason.
    pub async fn check_dns(&self, name: &str, timeout: Duration) -> Result<(), PlatformError> {
        let r = self.resolved().await?;
        let deadline = Instant::now() + timeout;
        let pause = Duration::from_millis(500);
        let mut last = None;
        loop {
            let attempt =
                tokio::time::timeout_at(deadline, r.resolve_hostname(0, name, 0, 0)).await;
            match attempt {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(zbus::Error::MethodError(n, _, _))) if dns_answered(n.as_str()) => {
                    return Ok(())
                }
                Ok(Err(e)) => last = Some(dbus_message(e)),
                // A reason resolved gave earlier says more than a cut-off last attempt.
                Err(_) => {
                    last.get_or_insert_with(|| "no answer in time".to_string());
                }
            }
            if Instant::now() + pause >= deadline {
                return Err(PlatformError(format!(
                    "DNS does not work: resolving {name} failed for {}s: {}",
                    timeout.as_secs(),
                    last.unwrap_or_default()
                )));
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Restarts systemd-timesyncd and waits for its first synchronisation (an NTP reply
    /// received), for at most `timeout`. `Ok(false)` when none came in time: the caller
    /// treats time sync as non-fatal. A failed restart is an error.
    pub async fn restart_timesyncd_and_wait(
        &self,
        timeout: Duration,
    ) -> Result<bool, PlatformError> {
        let deadline = Instant::now() + timeout;
        self.systemd.run_job(UnitAction::Restart, TIMESYNCD).await?;
        let t = TimesyncdProxy::builder(&self.conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| err("timesyncd", e))?;
        loop {
            match t.ntp_message().await {
                Ok(m) if ntp_synchronised(&m) => return Ok(true),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "timesyncd's NTPMessage"),
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn block<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, PlatformError>>,
    ) -> Result<T, PlatformError> {
        self.runtime.block_on(f)
    }
}

/// resolved's errors that mean a server answered (`...DnsError.NXDOMAIN`, `...REFUSED`).
fn dns_answered(error_name: &str) -> bool {
    matches!(
        error_name,
        "org.freedesktop.resolve1.DnsError.NXDOMAIN" | "org.freedesktop.resolve1.DnsError.REFUSED"
    )
}

/// timesyncd accepted a reply (it records the arrival time only then) and did not set it
/// aside as a spike.
fn ntp_synchronised(m: &NtpMessage) -> bool {
    m.11 != 0 && !m.12
}

/// One varlink call on a unix socket: the request and the reply are JSON objects, each
/// ended by a NUL byte. A reply with `error` becomes an error naming it.
async fn varlink_call(
    socket: &Path,
    method: &str,
    parameters: serde_json::Value,
) -> Result<serde_json::Value, PlatformError> {
    let what = format!("{method} on {}", socket.display());
    let call = async {
        let mut s = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| err(&format!("cannot connect for {what}"), e))?;
        let mut req = serde_json::to_vec(&serde_json::json!({
            "method": method,
            "parameters": parameters,
        }))
        .map_err(|e| err(&what, e))?;
        req.push(0);
        s.write_all(&req).await.map_err(|e| err(&what, e))?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.map_err(|e| err(&what, e))?;
            if n == 0 {
                return Err(PlatformError(format!(
                    "{what}: connection closed before a reply"
                )));
            }
            reply.extend_from_slice(&buf[..n]);
            if let Some(end) = reply.iter().position(|b| *b == 0) {
                reply.truncate(end);
                break;
            }
            if reply.len() > 4 << 20 {
                return Err(PlatformError(format!("{what}: reply too large")));
            }
        }
        let v: serde_json::Value = serde_json::from_slice(&reply).map_err(|e| err(&what, e))?;
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            return Err(PlatformError(format!("{what}: {e}")));
        }
        Ok(v.get("parameters")
            .cloned()
            .unwrap_or(serde_json::Value::Null))
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .map_err(|_| PlatformError(format!("{what}: no reply within 10s")))?
}

impl NetworkOs for DbusNetwork {
    fn links(&self) -> Result<Vec<LinkState>, PlatformError> {
        self.block(self.netlink.links())
    }
    fn set_mac(&self, link: &str, mac: &str) -> Result<(), PlatformError> {
        self.block(self.netlink.set_mac(link, mac))
    }
    fn set_link_up(&self, link: &str) -> Result<(), PlatformError> {
        self.block(self.netlink.set_up(link))
    }
    fn rename_link(&self, link: &str, new_name: &str) -> Result<(), PlatformError> {
        self.block(self.netlink.rename(link, new_name))
    }
    fn delete_link(&self, link: &str) -> Result<bool, PlatformError> {
        self.block(self.netlink.delete(link))
    }
    fn restart_networkd(&self) -> Result<(), PlatformError> {
        self.block(DbusNetwork::restart_networkd(self))
    }
    fn reload_networkd(&self) -> Result<(), PlatformError> {
        self.block(DbusNetwork::reload_networkd(self))
    }
    fn link_status(&self, link: &str) -> Result<Option<LinkStatus>, PlatformError> {
        self.block(DbusNetwork::link_status(self, link))
    }
    fn lldp_neighbors(&self, link: &str) -> Result<Vec<LldpNeighbor>, PlatformError> {
        self.block(DbusNetwork::lldp_neighbors(self, link))
    }
    fn wait_online(&self, links: &[String], timeout: Duration) -> Result<(), PlatformError> {
        self.block(DbusNetwork::wait_online(self, links, timeout))
    }
    fn set_hostname(&self, name: &str) -> Result<(), PlatformError> {
        self.block(DbusNetwork::set_hostname(self, name))
    }
    fn hostname(&self) -> Result<String, PlatformError> {
        self.block(DbusNetwork::hostname(self))
    }
    fn set_timezone(&self, tz: &str) -> Result<(), PlatformError> {
        self.block(DbusNetwork::set_timezone(self, tz))
    }
    fn timezone(&self) -> Result<String, PlatformError> {
        self.block(DbusNetwork::timezone(self))
    }
    fn flush_dns_caches(&self) -> Result<(), PlatformError> {
        self.block(DbusNetwork::flush_dns_caches(self))
    }
    fn check_dns(&self, name: &str, timeout: Duration) -> Result<(), PlatformError> {
        self.block(DbusNetwork::check_dns(self, name, timeout))
    }
    fn restart_timesyncd_and_wait(&self, timeout: Duration) -> Result<bool, PlatformError> {
        self.block(DbusNetwork::restart_timesyncd_and_wait(self, timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_nxdomain_and_refused_count_as_a_working_dns() {
        assert!(dns_answered("org.freedesktop.resolve1.DnsError.NXDOMAIN"));
        assert!(dns_answered("org.freedesktop.resolve1.DnsError.REFUSED"));
        for not in [
            "org.freedesktop.resolve1.NoNameServers",
            "org.freedesktop.resolve1.DnsError.SERVFAIL",
            "org.freedesktop.resolve1.TransactionTimeout",
        ] {
            assert!(!dns_answered(not), "{not}");
        }
    }
}
