//! Named network namespaces (`ip netns`).

use anyhow::{bail, Result};
use std::time::Duration;

use crate::process::{output_with_timeout, owned_by_dead_process, run_ok, tool, CommandOutput};

const TIMEOUT: Duration = Duration::from_secs(60);
const PREFIX: &str = "incus-t3";

/// A network namespace `ip netns add <unique name>`; deleted (with every link in it) on
/// drop. Links are made inside it, never in the host's namespace.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    live: bool,
}

impl NetNs {
    /// Creates `incus-t3-<pid>-<n>` and brings its `lo` up. (First deletes namespaces
    /// left by test processes that were killed before they could.)
    pub fn new() -> Result<NetNs> {
        sweep_stale();
        let name = crate::unique_name(PREFIX);
        run_ok(tool("ip").args(["netns", "add", &name]), TIMEOUT)?;
        let ns = NetNs { name, live: true };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name, for `ip netns exec` / `ip -n`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind-mounted namespace file, `/run/netns/<name>` (for `setns`).
    pub fn path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <name> <args>`; fails on a non-zero exit.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run_ok(tool("ip").args(["-n", &self.name]).args(args), TIMEOUT)
    }

    /// Runs a command in the namespace (`ip netns exec`), whatever its exit status.
    pub fn exec(&self, args: &[&str]) -> Result<CommandOutput> {
        if args.is_empty() {
            bail!("exec: empty command");
        }
        output_with_timeout(
            tool("ip").args(["netns", "exec", &self.name]).args(args),
            TIMEOUT,
        )
    }

    /// Runs a command in the namespace and returns its stdout; fails on a non-zero exit.
    pub fn exec_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.exec(args)?;
        out.into_result(&format!("{args:?} in netns {}", self.name))
    }

    /// A veth pair `a` <-> `b`, both ends in this namespace, both up.
    pub fn add_veth(&self, a: &str, b: &str) -> Result<()> {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
        self.set_up(a)?;
        self.set_up(b)
    }

    /// A veth pair with `a` here and `b` in `other`, both up.
    pub fn add_veth_to(&self, a: &str, other: &NetNs, b: &str) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            a,
            "type",
            "veth",
            "peer",
            "name",
            b,
            "netns",
            &other.name,
        ])?;
        self.set_up(a)?;
        other.set_up(b)
    }

    /// A veth pair with `a` here and `b` in the network namespace of process `pid` (e.g.
    /// [`crate::Machine::pid`]), `a` up (bring `b` up from the other side).
    pub fn add_veth_to_pid(&self, a: &str, pid: u32, b: &str) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            a,
            "type",
            "veth",
            "peer",
            "name",
            b,
            "netns",
            &pid.to_string(),
        ])?;
        self.set_up(a)
    }

    /// A bridge, up.
    pub fn add_bridge(&self, name: &str) -> Result<()> {
        self.ip(&["link", "add", name, "type", "bridge"])?;
        self.set_up(name)
    }

    /// Enslaves `link` to `bridge`.
    pub fn set_master(&self, link: &str, bridge: &str) -> Result<()> {
        self.ip(&["link", "set", link, "master", bridge])
            .map(|_| ())
    }

    pub fn set_up(&self, link: &str) -> Result<()> {
        self.ip(&["link", "set", link, "up"]).map(|_| ())
    }

    /// `ip addr add <cidr> dev <link>`.
    pub fn add_address(&self, link: &str, cidr: &str) -> Result<()> {
        self.ip(&["addr", "add", cidr, "dev", link]).map(|_| ())
    }

    /// The names of the links in the namespace.
    pub fn links(&self) -> Result<Vec<String>> {
        let out = self.ip(&["-o", "link", "show"])?;
        // "3: va@vb: <...> ..." -> "va"
        Ok(out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect())
    }

    /// The master (bridge) of `link`, if any.
    pub fn master_of(&self, link: &str) -> Result<Option<String>> {
        let out = self.ip(&["-o", "link", "show", "dev", link])?;
        let mut words = out.split_whitespace();
        while let Some(w) = words.next() {
            if w == "master" {
                return Ok(words.next().map(str::to_string));
            }
        }
        Ok(None)
    }

    /// Deletes the namespace. Also done on drop.
    pub fn delete(&mut self) -> Result<()> {
        if !std::mem::replace(&mut self.live, false) {
            return Ok(());
        }
        run_ok(tool("ip").args(["netns", "delete", &self.name]), TIMEOUT).map(|_| ())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = self.delete() {
            eprintln!(
                "incus-osd-test-machine: deleting netns {}: {e:#}",
                self.name
            );
        }
    }
}

fn sweep_stale() {
    let Ok(rd) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if owned_by_dead_process(&name, PREFIX) {
            let _ = run_ok(tool("ip").args(["netns", "delete", &name]), TIMEOUT);
        }
    }
}
