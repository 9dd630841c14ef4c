//! A DHCPv4 and DNS server (`dnsmasq`) in a [`crate::NetNs`], for machines whose "physical"
//! NIC is the other end of a veth pair from that namespace.

use anyhow::{bail, Context, Result};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::process::{owned_tempdir, terminate, tool};
use crate::NetNs;

const LOG_PREFIX: &str = "incus-osd-dnsmasq";

/// `dnsmasq` running in the foreground inside a network namespace; stopped (by PID) on
/// drop. It answers DHCPv4 on one interface, and DNS: names given to
/// [`DnsmasqBuilder::host`] resolve, those under [`DnsmasqBuilder::no_such_domain`] get
/// NXDOMAIN, every other name is refused (it has no upstream).
#[derive(Debug)]
pub struct Dnsmasq {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// Configures a [`Dnsmasq`].
#[derive(Debug, Clone)]
pub struct DnsmasqBuilder {
    interface: String,
    range: Option<(String, String)>,
    hosts: Vec<(String, String)>,
    nxdomains: Vec<String>,
}

impl Dnsmasq {
    /// Serves on `interface` (which must already carry an address of the DHCP range's
    /// subnet).
    pub fn builder(interface: &str) -> DnsmasqBuilder {
        DnsmasqBuilder {
            interface: interface.to_string(),
            range: None,
            hosts: Vec::new(),
            nxdomains: Vec::new(),
        }
    }

    /// Its log so far (DHCP exchanges included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// The leases handed out so far (`dnsmasq`'s lease file lines).
    pub fn leases(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("leases")).unwrap_or_default()
    }

    /// Stops it (SIGTERM, then SIGKILL). Also done on drop.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(5));
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

impl DnsmasqBuilder {
    /// Hands out DHCPv4 leases from `first` to `last` (a /24 around them).
    pub fn dhcp_range(mut self, first: &str, last: &str) -> DnsmasqBuilder {
        self.range = Some((first.to_string(), last.to_string()));
        self
    }

    /// Answers `name` with the IPv4 address `ip`.
    pub fn host(mut self, name: &str, ip: &str) -> DnsmasqBuilder {
        self.hosts.push((name.to_string(), ip.to_string()));
        self
    }

    /// Answers `domain` and every name under it with "no such domain" (NXDOMAIN).
    pub fn no_such_domain(mut self, domain: &str) -> DnsmasqBuilder {
        self.nxdomains.push(domain.to_string());
        self
    }

    /// Starts it in `ns` and waits until it has started (10 s at most).
    pub fn start(self, ns: &NetNs) -> Result<Dnsmasq> {
        let dir = owned_tempdir(LOG_PREFIX)?;
        let log = dir.path().join("log");
        let mut cmd = tool("ip");
        cmd.args(["netns", "exec", ns.name()])
            .arg(crate::find_tool("dnsmasq").context("dnsmasq not found")?)
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--user=root",
                "--group=root",
                "--pid-file=",
                "--log-dhcp",
                "--log-queries",
            ])
            .arg(format!("--interface={}", self.interface))
            .arg(format!("--log-facility={}", log.display()))
            .arg(format!(
                "--dhcp-leasefile={}",
                dir.path().join("leases").display()
            ));
        if let Some((first, last)) = &self.range {
            cmd.arg(format!("--dhcp-range={first},{last},255.255.255.0,1h"));
        }
        for (name, ip) in &self.hosts {
            cmd.arg(format!("--address=/{name}/{ip}"));
        }
        for domain in &self.nxdomains {
            cmd.arg(format!("--address=/{domain}/"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning dnsmasq")?;
        let mut d = Dnsmasq {
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("dnsmasq exited ({st}):\n{}", d.log());
            }
            if d.log().contains("started, version") {
                return Ok(d);
            }
            if Instant::now() >= deadline {
                bail!("dnsmasq did not start within 10 s:\n{}", d.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
