//! A private cgroup per container.
//!
//! Without a host systemd, `systemd-nspawn --keep-unit` creates `payload/` and
//! `supervisor/` sub-cgroups *of the cgroup it was started in*, and the container's
//! systemd builds its tree under `payload/`. Two containers started from the same cgroup
//! would share that tree, so each container's nspawn is first moved into a fresh cgroup of
//! its own (one per mounted hierarchy that systemd uses: the cgroup2 one and the legacy
//! `name=systemd` one). On drop everything left in it is killed and the tree removed.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::process::{owned_by_dead_process, signal};

pub(crate) const PREFIX: &str = "incus-osd-t3";

/// A cgroup created in every relevant hierarchy.
#[derive(Debug)]
pub(crate) struct Cgroup {
    dirs: Vec<PathBuf>,
}

/// The hierarchies to create cgroups in, each with our own cgroup's directory in it.
fn parents() -> Vec<PathBuf> {
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let own_path = |pred: &dyn Fn(&str) -> bool| -> Option<String> {
        own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
            pred(ctrl).then(|| path.to_string())
        })
    };
    let join = |mount: &str, rel: Option<String>| {
        let rel = rel.unwrap_or_default();
        let p = Path::new(mount).join(rel.trim_start_matches('/'));
        // A cgroup path can show as "/.." from inside a cgroup namespace: fall back to
        // the mount point itself then.
        if rel.contains("..") || !p.is_dir() {
            PathBuf::from(mount)
        } else {
            p
        }
    };
    let mut out = Vec::new();
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        // Pure cgroup2.
        out.push(join("/sys/fs/cgroup", own_path(&|c| c.is_empty())));
        return out;
    }
    if Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
        out.push(join("/sys/fs/cgroup/unified", own_path(&|c| c.is_empty())));
    }
    if Path::new("/sys/fs/cgroup/systemd/cgroup.procs").exists() {
        out.push(join(
            "/sys/fs/cgroup/systemd",
            own_path(&|c| c == "name=systemd"),
        ));
    }
    out
}

impl Cgroup {
    /// Creates `<parent>/<name>` in each hierarchy (after sweeping leftovers of dead test
    /// processes there).
    pub(crate) fn create(name: &str) -> anyhow::Result<Cgroup> {
        let parents = parents();
        sweep_stale(&parents);
        let mut cg = Cgroup { dirs: Vec::new() };
        for p in parents {
            let d = p.join(name);
            fs::create_dir(&d)
                .map_err(|e| anyhow::anyhow!("creating cgroup {}: {e}", d.display()))?;
            cg.dirs.push(d);
        }
        Ok(cg)
    }

    /// The `cgroup.procs` files a process must write its PID to, to join this cgroup.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Kills every process left in the cgroup tree and removes it.
    pub(crate) fn destroy(&mut self) {
        for d in std::mem::take(&mut self.dirs) {
            destroy_tree(&d);
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// Every PID in a cgroup tree.
fn pids_in(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(s) = fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(rd) = fs::read_dir(&d) {
            stack.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

fn destroy_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = pids_in(dir);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            signal(pid, libc::SIGKILL);
        }
        if Instant::now() >= deadline {
            eprintln!(
                "incus-osd-test-machine: processes still in cgroup {} after SIGKILL",
                dir.display()
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Depth first: children before parents. A just-emptied cgroup may refuse for a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while remove_tree(dir).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn remove_tree(dir: &Path) -> std::io::Result<()> {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path())?;
            }
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes `incus-osd-t3-<pid>-<n>` cgroups whose test process `<pid>` is gone.
fn sweep_stale(parents: &[PathBuf]) {
    for p in parents {
        let Ok(rd) = fs::read_dir(p) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owned_by_dead_process(&name, PREFIX) {
                destroy_tree(&e.path());
            }
        }
    }
}
