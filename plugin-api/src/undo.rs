//! [`Undo`]: a journal of what a config change did to the system, so that a failure half
//! way can put everything back.
//!
//! ```ignore
//! let mut undo = Undo::new(&self.host);
//! undo.create_dir("/etc/demo", 0o700)?;
//! undo.write_file("/etc/demo/demo.conf", text.as_bytes(), 0o600)?;
//! undo.start_unit("demo.service")?;
//! if let Err(e) = self.host.run_ok(&["demo", "join"], TIMEOUT) {
//!     undo.rollback();
//!     return Err(e);
//! }
//! undo.commit();
//! ```
//!
//! Each step records the state it changes the first time it touches it: a file's previous
//! content and mode (or its absence), a directory's absence, a whole tree before it is
//! removed, a unit's previous `ActiveState`. `rollback` walks the steps backwards in three
//! rounds: files and compensations ([`Undo::on_rollback`]) first, then units (so a unit
//! comes back on its old files), then the compensations that need the units back
//! ([`Undo::on_rollback_after_units`], such as logging back in through a daemon that was
//! stopped). What cannot be restored is logged as a warning, never hidden. Dropping an
//! `Undo` without `commit` rolls back too, so an early `?` return cannot leave a
//! half-applied change.

use crate::abi::FileKind;
use crate::sdk::{Host, Result};

/// A compensating action registered with [`Undo::on_rollback`] or
/// [`Undo::on_rollback_after_units`].
type Compensation = Box<dyn FnOnce(&Host) -> Result<()> + Send>;

enum Step {
    /// A file that held `previous` (content, mode), or nothing.
    File {
        path: String,
        previous: Option<(Vec<u8>, u32)>,
    },
    /// A directory that did not exist.
    CreatedDir { path: String },
    /// A tree removed: its directories (path, mode) then its files.
    RemovedTree {
        dirs: Vec<(String, u32)>,
        files: Vec<(String, Vec<u8>, u32)>,
        links: Vec<String>,
    },
    /// A unit, whether it was active before, and whether we stopped or restarted it (a
    /// start of a running unit changes nothing).
    Unit {
        unit: String,
        was_active: bool,
        disturbed: bool,
    },
    /// A compensating action of the caller's, run before the units are put back or, when
    /// `after_units`, once they are.
    Action {
        what: String,
        run: Compensation,
        after_units: bool,
    },
}

/// A journal of changes; see the module documentation.
pub struct Undo {
    host: Host,
    steps: Vec<Step>,
    done: bool,
}

/// Running, or on its way to running (a unit being reloaded is running), by `ActiveState`.
pub fn is_active(state: &str) -> bool {
    matches!(state, "active" | "activating" | "reloading")
}

impl Undo {
    /// An empty journal over `host`. A hook gets its journal from the SDK; host code
    /// creates its own and commits or rolls it back.
    pub fn new(host: &Host) -> Undo {
        Undo {
            host: host.clone(),
            steps: vec![],
            done: false,
        }
    }

    fn touched_file(&self, path: &str) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, Step::File { path: p, .. } if p == path))
    }

    fn touched_unit(&self, unit: &str) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, Step::Unit { unit: u, .. } if u == unit))
    }

    /// Writes a file, remembering what it held. A path that exists but is not a regular
    /// file (a directory, a symlink) is refused: it is not ours to replace.
    pub fn write_file(&mut self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        let previous = if self.touched_file(path) {
            None
        } else {
            Some(match self.host.stat(path)? {
                None => None,
                Some(st) if st.kind == FileKind::File => {
                    self.host.read_file(path)?.map(|d| (d, st.mode))
                }
                Some(_) => {
                    return Err(crate::sdk::Error::internal(format!(
                        "{path} exists and is not a regular file"
                    )))
                }
            })
        };
        self.host.write_file(path, data, mode)?;
        // Recorded once written: a failed write changed nothing to put back.
        if let Some(previous) = previous {
            self.steps.push(Step::File {
                path: path.to_string(),
                previous,
            });
        }
        Ok(())
    }

    /// Creates a directory if it is missing (an existing one keeps its mode, like
    /// `mkdir -p`); a created one is removed again on rollback.
    pub fn create_dir(&mut self, path: &str, mode: u32) -> Result<()> {
        if self.host.exists(path)? {
            return Ok(());
        }
        // Record the outermost missing ancestor would be more thorough; the callers' paths
        // have existing parents (`/etc`, `/run`), so the directory itself is enough.
        self.host.create_dir(path, mode)?;
        self.steps.push(Step::CreatedDir {
            path: path.to_string(),
        });
        Ok(())
    }

    /// Removes a file or a whole tree, remembering its content to put it back.
    pub fn remove(&mut self, path: &str) -> Result<()> {
        let mut dirs = vec![];
        let mut files = vec![];
        let mut links = vec![];
        self.snapshot(path, &mut dirs, &mut files, &mut links)?;
        if dirs.is_empty() && files.is_empty() && links.is_empty() {
            return Ok(());
        }
        self.host.remove(path)?;
        self.steps.push(Step::RemovedTree { dirs, files, links });
        Ok(())
    }

    fn snapshot(
        &self,
        path: &str,
        dirs: &mut Vec<(String, u32)>,
        files: &mut Vec<(String, Vec<u8>, u32)>,
        links: &mut Vec<String>,
    ) -> Result<()> {
        let Some(st) = self.host.stat(path)? else {
            return Ok(());
        };
        match st.kind {
            FileKind::Dir => {
                dirs.push((path.to_string(), st.mode));
                for name in self.host.list_dir(path)?.unwrap_or_default() {
                    self.snapshot(&format!("{path}/{name}"), dirs, files, links)?;
                }
            }
            FileKind::File => {
                let data = self.host.read_file(path)?.unwrap_or_default();
                files.push((path.to_string(), data, st.mode));
            }
            FileKind::Symlink | FileKind::Other => links.push(path.to_string()),
        }
        Ok(())
    }

    fn unit_op(
        &mut self,
        unit: &str,
        disturbs: bool,
        op: impl FnOnce(&Host, &str) -> Result<()>,
    ) -> Result<()> {
        if !self.touched_unit(unit) {
            let was_active = is_active(&self.host.unit_active_state(unit)?);
            self.steps.push(Step::Unit {
                unit: unit.to_string(),
                was_active,
                disturbed: false,
            });
        }
        for step in &mut self.steps {
            if let Step::Unit {
                unit: u, disturbed, ..
            } = step
            {
                if u == unit {
                    *disturbed |= disturbs;
                }
            }
        }
        op(&self.host, unit)
    }

    /// Starts a unit; on rollback it is stopped again unless it was running before (then
    /// it is left alone).
    pub fn start_unit(&mut self, unit: &str) -> Result<()> {
        self.unit_op(unit, false, Host::start_unit)
    }

    /// Stops a unit; on rollback it is started again if it was running before.
    pub fn stop_unit(&mut self, unit: &str) -> Result<()> {
        self.unit_op(unit, true, Host::stop_unit)
    }

    /// Restarts a unit; on rollback it is restarted again (after the files it reads were
    /// put back) if it was running before, stopped otherwise.
    pub fn restart_unit(&mut self, unit: &str) -> Result<()> {
        self.unit_op(unit, true, Host::restart_unit)
    }

    /// Registers a compensating action (e.g. logging out of a target that was logged into),
    /// run at its place in reverse order on rollback, among the files and before any unit
    /// is put back: the units this change started are still running.
    pub fn on_rollback(
        &mut self,
        what: &str,
        run: impl FnOnce(&Host) -> Result<()> + Send + 'static,
    ) {
        self.steps.push(Step::Action {
            what: what.to_string(),
            run: Box::new(run),
            after_units: false,
        });
    }

    /// Registers a compensating action that needs the units back as they were (e.g. logging
    /// back in to targets through a daemon this change stopped): on rollback it runs after
    /// every file and unit is restored, newest first among such actions.
    pub fn on_rollback_after_units(
        &mut self,
        what: &str,
        run: impl FnOnce(&Host) -> Result<()> + Send + 'static,
    ) {
        self.steps.push(Step::Action {
            what: what.to_string(),
            run: Box::new(run),
            after_units: true,
        });
    }

    /// Runs `f` with a journal whose changes are kept whatever `f` returns: for boot start,
    /// shutdown and reset, which have no previous state to go back to (as upstream).
    pub fn kept<T>(host: &Host, f: impl FnOnce(&mut Undo) -> Result<T>) -> Result<T> {
        let mut undo = Undo::new(host);
        let res = f(&mut undo);
        undo.commit();
        res
    }

    /// Keeps every change.
    pub fn commit(mut self) {
        self.done = true;
    }

    /// Puts everything back, newest first. Failures are logged as warnings.
    pub fn rollback(mut self) {
        self.roll_back_steps();
    }

    fn roll_back_steps(&mut self) {
        self.done = true;
        let h = self.host.clone();
        let warn = |what: &str, e: crate::sdk::Error| h.warn(&format!("undo: {what}: {e}"));
        // Files, directories and compensations first, newest first; then the units, newest
        // first, so that a unit restarted to read new files is restarted again once the
        // old files are back (and a compensation still finds the units this change started
        // running); last the compensations that need the units as they were.
        let (late, steps): (Vec<Step>, Vec<Step>) =
            std::mem::take(&mut self.steps).into_iter().partition(|s| {
                matches!(
                    s,
                    Step::Action {
                        after_units: true,
                        ..
                    }
                )
            });
        let (units, others): (Vec<Step>, Vec<Step>) = steps
            .into_iter()
            .partition(|s| matches!(s, Step::Unit { .. }));
        let rounds = [others, units, late];
        for step in rounds.into_iter().flat_map(|round| round.into_iter().rev()) {
            match step {
                Step::File { path, previous } => {
                    let r = match previous {
                        Some((data, mode)) => h.write_file(&path, &data, mode),
                        None => h.remove(&path),
                    };
                    if let Err(e) = r {
                        warn(&format!("cannot restore {path}"), e);
                    }
                }
                Step::CreatedDir { path } => {
                    if let Err(e) = h.remove(&path) {
                        warn(&format!("cannot remove {path}"), e);
                    }
                }
                Step::RemovedTree { dirs, files, links } => {
                    for (d, mode) in &dirs {
                        if let Err(e) = h.create_dir(d, *mode) {
                            warn(&format!("cannot recreate {d}"), e);
                        }
                    }
                    for (f, data, mode) in &files {
                        if let Err(e) = h.write_file(f, data, *mode) {
                            warn(&format!("cannot restore {f}"), e);
                        }
                    }
                    for l in links {
                        h.warn(&format!(
                            "undo: cannot restore {l} (not a regular file or directory)"
                        ));
                    }
                }
                Step::Unit {
                    unit,
                    was_active,
                    disturbed,
                } => {
                    let r = match (was_active, disturbed) {
                        (true, true) => h.restart_unit(&unit),
                        (true, false) => Ok(()),
                        (false, _) => h.stop_unit(&unit),
                    };
                    if let Err(e) = r {
                        warn(&format!("cannot put {unit} back"), e);
                    }
                }
                Step::Action { what, run, .. } => {
                    if let Err(e) = run(&h) {
                        warn(&what, e);
                    }
                }
            }
        }
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if !self.done && !self.steps.is_empty() {
            self.roll_back_steps();
        }
    }
}
