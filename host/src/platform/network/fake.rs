//! Stand-ins for [`NetworkOs`]: [`Unavailable`] for a daemon that must not touch the
//! machine's network (a dev root), and [`FakeNetworkOs`], a recording fake for the network
//! subsystem's own tests.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{LinkState, LinkStatus, LldpNeighbor, NetworkOs};
use crate::platform::PlatformError;

/// Refuses every call with its reason (the platform is offline or the bus unreachable).
pub struct Unavailable {
    reason: String,
}

impl Unavailable {
    pub fn new(reason: &str) -> Unavailable {
        Unavailable {
            reason: reason.to_string(),
        }
    }

    fn refuse<T>(&self, what: &str) -> Result<T, PlatformError> {
        Err(PlatformError(format!(
            "cannot {what}: the network is not reachable ({})",
            self.reason
        )))
    }
}

impl NetworkOs for Unavailable {
    fn links(&self) -> Result<Vec<LinkState>, PlatformError> {
        self.refuse("list network links")
    }
    fn set_mac(&self, link: &str, _mac: &str) -> Result<(), PlatformError> {
        self.refuse(&format!("set the MAC address of {link}"))
    }
    fn set_link_up(&self, link: &str) -> Result<(), PlatformError> {
        self.refuse(&format!("set {link} up"))
    }
    fn rename_link(&self, link: &str, new_name: &str) -> Result<(), PlatformError> {
        self.refuse(&format!("rename link {link} to {new_name}"))
    }
    fn delete_link(&self, link: &str) -> Result<bool, PlatformError> {
        self.refuse(&format!("delete link {link}"))
    }
    fn restart_networkd(&self) -> Result<(), PlatformError> {
        self.refuse("restart systemd-networkd")
    }
    fn reload_networkd(&self) -> Result<(), PlatformError> {
        self.refuse("reload systemd-networkd")
    }
    fn link_status(&self, link: &str) -> Result<Option<LinkStatus>, PlatformError> {
        self.refuse(&format!("read the state of {link}"))
    }
    fn lldp_neighbors(&self, link: &str) -> Result<Vec<LldpNeighbor>, PlatformError> {
        self.refuse(&format!("read the LLDP neighbours of {link}"))
    }
    fn wait_online(&self, _links: &[String], _timeout: Duration) -> Result<(), PlatformError> {
        self.refuse("wait for the network")
    }
    fn set_hostname(&self, _name: &str) -> Result<(), PlatformError> {
        self.refuse("set the hostname")
    }
    fn hostname(&self) -> Result<String, PlatformError> {
        self.refuse("read the hostname")
    }
    fn set_timezone(&self, _tz: &str) -> Result<(), PlatformError> {
        self.refuse("set the time zone")
    }
    fn timezone(&self) -> Result<String, PlatformError> {
        self.refuse("read the time zone")
    }
    fn flush_dns_caches(&self) -> Result<(), PlatformError> {
        self.refuse("flush the DNS caches")
    }
    fn check_dns(&self, _name: &str, _timeout: Duration) -> Result<(), PlatformError> {
        self.refuse("check DNS")
    }
    fn restart_timesyncd_and_wait(&self, _timeout: Duration) -> Result<bool, PlatformError> {
        self.refuse("restart systemd-timesyncd")
    }
}

/// The state a [`FakeNetworkOs`] holds; tests set it up and read it back.
#[derive(Debug, Clone, Default)]
pub struct FakeState {
    /// What `links` returns; `set_mac` and `delete_link` change it.
    pub links: Vec<LinkState>,
    /// What `link_status` returns per link.
    pub status: BTreeMap<String, LinkStatus>,
    pub lldp: BTreeMap<String, Vec<LldpNeighbor>>,
    pub hostname: String,
    pub timezone: String,
    /// Links `wait_online` reports as never coming up.
    pub never_online: Vec<String>,
    /// Whether `check_dns` fails.
    pub dns_broken: bool,
    /// What `restart_timesyncd_and_wait` returns.
    pub time_synced: bool,
    /// Every call, in order (`restart_networkd`, `set_hostname host1`, ...).
    pub calls: Vec<String>,
}

/// A recording fake: no OS is touched.
#[derive(Debug, Default)]
pub struct FakeNetworkOs {
    pub state: Mutex<FakeState>,
}

impl FakeNetworkOs {
    pub fn new(state: FakeState) -> FakeNetworkOs {
        FakeNetworkOs {
            state: Mutex::new(state),
        }
    }

    /// The calls made so far.
    pub fn calls(&self) -> Vec<String> {
        self.with(|s| s.calls.clone())
    }

    fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn record(&self, call: String) {
        self.with(|s| s.calls.push(call));
    }
}

impl NetworkOs for FakeNetworkOs {
    fn links(&self) -> Result<Vec<LinkState>, PlatformError> {
        Ok(self.with(|s| s.links.clone()))
    }
    fn set_mac(&self, link: &str, mac: &str) -> Result<(), PlatformError> {
        self.record(format!("set_mac {link} {mac}"));
        super::netlink::parse_mac(mac)?;
        self.with(|s| match s.links.iter_mut().find(|l| l.name == link) {
            Some(l) => {
                l.mac = Some(mac.to_ascii_lowercase());
                Ok(())
            }
            None => Err(PlatformError(format!("no network link named {link}"))),
        })
    }
    fn set_link_up(&self, link: &str) -> Result<(), PlatformError> {
        self.record(format!("set_link_up {link}"));
        Ok(())
    }
    fn rename_link(&self, link: &str, new_name: &str) -> Result<(), PlatformError> {
        self.record(format!("rename_link {link} {new_name}"));
        self.with(|s| match s.links.iter_mut().find(|l| l.name == link) {
            Some(l) => {
                l.name = new_name.to_string();
                Ok(())
            }
            None => Err(PlatformError(format!("no network link named {link}"))),
        })
    }
    fn delete_link(&self, link: &str) -> Result<bool, PlatformError> {
        self.record(format!("delete_link {link}"));
        Ok(self.with(|s| {
            let before = s.links.len();
            s.links.retain(|l| l.name != link);
            s.links.len() != before
        }))
    }
    fn restart_networkd(&self) -> Result<(), PlatformError> {
        self.record("restart_networkd".into());
        Ok(())
    }
    fn reload_networkd(&self) -> Result<(), PlatformError> {
        self.record("reload_networkd".into());
        Ok(())
    }
    fn link_status(&self, link: &str) -> Result<Option<LinkStatus>, PlatformError> {
        Ok(self.with(|s| s.status.get(link).cloned()))
    }
    fn lldp_neighbors(&self, link: &str) -> Result<Vec<LldpNeighbor>, PlatformError> {
        Ok(self.with(|s| s.lldp.get(link).cloned().unwrap_or_default()))
    }
    fn wait_online(&self, links: &[String], timeout: Duration) -> Result<(), PlatformError> {
        self.record(format!("wait_online {}", links.join(",")));
        let down: Vec<String> = self.with(|s| {
            links
                .iter()
                .filter(|l| s.never_online.contains(l))
                .cloned()
                .collect()
        });
        if down.is_empty() {
            Ok(())
        } else {
            Err(PlatformError(format!(
                "timed out after {}s waiting for network devices to come online: {}",
                timeout.as_secs(),
                down.join(", ")
            )))
        }
    }
    fn set_hostname(&self, name: &str) -> Result<(), PlatformError> {
        self.record(format!("set_hostname {name}"));
        self.with(|s| s.hostname = name.to_string());
        Ok(())
    }
    fn hostname(&self) -> Result<String, PlatformError> {
        Ok(self.with(|s| s.hostname.clone()))
    }
    fn set_timezone(&self, tz: &str) -> Result<(), PlatformError> {
        self.record(format!("set_timezone {tz}"));
        self.with(|s| s.timezone = tz.to_string());
        Ok(())
    }
    fn timezone(&self) -> Result<String, PlatformError> {
        Ok(self.with(|s| s.timezone.clone()))
    }
    fn flush_dns_caches(&self) -> Result<(), PlatformError> {
        self.record("flush_dns_caches".into());
        Ok(())
    }
    fn check_dns(&self, name: &str, timeout: Duration) -> Result<(), PlatformError> {
        self.record(format!("check_dns {name}"));
        if self.with(|s| s.dns_broken) {
            return Err(PlatformError(format!(
                "DNS does not work: resolving {name} failed for {}s: no answer in time",
                timeout.as_secs()
            )));
        }
        Ok(())
    }
    fn restart_timesyncd_and_wait(&self, _timeout: Duration) -> Result<bool, PlatformError> {
        self.record("restart_timesyncd_and_wait".into());
        Ok(self.with(|s| s.time_synced))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fake_records_calls_and_keeps_what_was_set() {
        let fake = FakeNetworkOs::new(FakeState {
            links: vec![LinkState {
                name: "eth0".into(),
                ..LinkState::default()
            }],
            never_online: vec!["eth1".into()],
            ..FakeState::default()
        });
        let os: &dyn NetworkOs = &fake;
        os.set_hostname("h1").unwrap();
        os.set_mac("eth0", "02:00:00:00:00:0A").unwrap();
        assert!(os.set_mac("eth0", "nope").is_err());
        assert_eq!(
            os.links().unwrap()[0].mac.as_deref(),
            Some("02:00:00:00:00:0a")
        );
        let e = os
            .wait_online(&["eth0".into(), "eth1".into()], Duration::from_secs(30))
            .unwrap_err();
        assert_eq!(
            e.0,
            "timed out after 30s waiting for network devices to come online: eth1"
        );
        assert!(os.delete_link("eth0").unwrap());
        assert!(!os.delete_link("eth0").unwrap());
        assert_eq!(os.hostname().unwrap(), "h1");
        assert_eq!(
            fake.calls(),
            [
                "set_hostname h1",
                "set_mac eth0 02:00:00:00:00:0A",
                "set_mac eth0 nope",
                "wait_online eth0,eth1",
                "delete_link eth0",
                "delete_link eth0"
            ]
        );
    }

    #[test]
    fn unavailable_says_why() {
        let os = Unavailable::new("offline: dev root");
        assert_eq!(
            os.restart_networkd().unwrap_err().0,
            "cannot restart systemd-networkd: the network is not reachable (offline: dev root)"
        );
    }
}
