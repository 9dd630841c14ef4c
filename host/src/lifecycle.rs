//! The daemon's lifecycle, held in one place.
//!
//! One phase ([`Phase`]: starting, ready, stopping for a reason, stopped) that moves only
//! along the transitions [`transition`] allows. Changes are taken only when ready (the
//! API's guard asks [`Lifecycle::admit_change`]). Also here: the shutdown budget that
//! keeps stopping inside the unit's `TimeoutStopSec`, and the start markers that keep a
//! plugin whose start hook killed the daemon from being started again right away.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::api::App;
use crate::daemon::STATE_DIR;
use crate::platform::files::RootFs;
use crate::platform::systemd::PowerAction;

/// Why the daemon is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The daemon itself stops (SIGTERM or SIGINT).
    Shutdown,
    /// A reboot was requested through the API.
    Reboot,
    /// A power-off was requested through the API.
    PowerOff,
}

impl StopReason {
    /// The reason a power action stops the daemon for; `None` for suspend, which does not.
    pub fn for_power(action: PowerAction) -> Option<StopReason> {
        match action {
            PowerAction::Reboot => Some(StopReason::Reboot),
            PowerAction::PowerOff => Some(StopReason::PowerOff),
            PowerAction::Suspend => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            StopReason::Shutdown => "shutdown",
            StopReason::Reboot => "reboot",
            StopReason::PowerOff => "power-off",
        }
    }
}

/// Where the daemon is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The API answers; plugins are starting. Changes to a plugin wait for that plugin's
    /// start; other changes wait for the end of start-up.
    Starting,
    /// Every plugin started (or gave up): changes are taken.
    Ready,
    /// Plugins are being (or have been) stopped: changes are refused.
    Stopping(StopReason),
    /// Everything stopped; the process is about to exit.
    Stopped,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::Starting => f.write_str("starting"),
            Phase::Ready => f.write_str("ready"),
            Phase::Stopping(r) => write!(f, "stopping ({})", r.as_str()),
            Phase::Stopped => f.write_str("stopped"),
        }
    }
}

/// A move the lifecycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the daemon cannot go from {from} to {to}")]
pub struct IllegalTransition {
    pub from: Phase,
    pub to: Phase,
}

/// Checks a move: returns the new phase, or why it is illegal.
///
/// - starting -> ready (start-up finished), or -> stopping for shutdown (SIGTERM during
///   start-up; a power action is a change, refused until ready);
/// - ready -> stopping, for any reason;
/// - stopping for a power action -> ready (systemd refused it: plugins are started again),
///   or -> stopping for shutdown (systemd stops the daemon as part of the reboot);
/// - stopping -> stopped.
///
/// Nothing else: no phase moves to itself, nothing goes back to starting, nothing leaves
/// stopped, and a shutdown is never turned into anything else.
pub fn transition(from: Phase, to: Phase) -> Result<Phase, IllegalTransition> {
    use Phase::*;
    use StopReason::*;
    let legal = matches!(
        (from, to),
        (Starting, Ready)
            | (Starting, Stopping(Shutdown))
            | (Ready, Stopping(_))
            | (Stopping(Reboot | PowerOff), Ready)
            | (Stopping(Reboot | PowerOff), Stopping(Shutdown))
            | (Stopping(_), Stopped)
    );
    if legal {
        Ok(to)
    } else {
        Err(IllegalTransition { from, to })
    }
}

/// The one holder of the daemon's phase.
#[derive(Debug)]
pub struct Lifecycle {
    phase: watch::Sender<Phase>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// A lifecycle in [`Phase::Starting`].
    pub fn new() -> Lifecycle {
        Lifecycle {
            phase: watch::Sender::new(Phase::Starting),
        }
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Moves to `to` if [`transition`] allows it (checked and applied atomically); returns
    /// the phase it left.
    pub fn move_to(&self, to: Phase) -> Result<Phase, IllegalTransition> {
        let mut result = None;
        self.phase.send_if_modified(|p| {
            let from = *p;
            match transition(from, to) {
                Ok(next) => {
                    *p = next;
                    result = Some(Ok(from));
                    true
                }
                Err(e) => {
                    result = Some(Err(e));
                    false
                }
            }
        });
        let result = result.expect("send_if_modified runs the closure");
        match &result {
            Ok(from) => tracing::debug!(from = %from, to = %to, "lifecycle"),
            Err(e) => tracing::debug!(error = %e, "lifecycle move refused"),
        }
        result
    }

    pub fn is_ready(&self) -> bool {
        self.phase() == Phase::Ready
    }

    /// Whether plugins are being stopped (or were): nothing may start them now.
    pub fn is_stopping(&self) -> bool {
        matches!(self.phase(), Phase::Stopping(_) | Phase::Stopped)
    }

    /// Whether a change may go ahead now. `for_plugin`: the change goes to one plugin,
    /// which holds it until that plugin started, so start-up does not hold it here. Other
    /// changes wait for the end of start-up, at most `wait`. Once stopping, every change
    /// is refused at once. The error is the message for a 503.
    pub async fn admit_change(&self, for_plugin: bool, wait: Duration) -> Result<(), String> {
        if self.phase() == Phase::Starting && !for_plugin {
            let mut rx = self.phase.subscribe();
            let _ = tokio::time::timeout(wait, rx.wait_for(|p| *p != Phase::Starting)).await;
        }
        match self.phase() {
            Phase::Ready => Ok(()),
            Phase::Starting if for_plugin => Ok(()),
            Phase::Starting => Err("the system is still starting, try again later".into()),
            Phase::Stopping(StopReason::Reboot) => {
                Err("the system is rebooting: changes are refused".into())
            }
            Phase::Stopping(StopReason::PowerOff) => {
                Err("the system is powering off: changes are refused".into())
            }
            Phase::Stopping(StopReason::Shutdown) | Phase::Stopped => {
                Err("the daemon is shutting down: changes are refused".into())
            }
        }
    }
}

/// `TimeoutStopSec` in `host/systemd/incus-osd.service` (a test checks they agree): past
/// it, systemd kills the daemon. Everything below is derived from it.
pub const UNIT_STOP_TIMEOUT: Duration = Duration::from_secs(90);

/// How long requests in flight may take to finish once stopping began; the rest are cut.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Kept back from the unit's limit for cutting off requests still running after the
/// drain (2 s at most), saving the state and leaving the process (2 s at most for the
/// runtime's blocking threads).
pub const EXIT_MARGIN: Duration = Duration::from_secs(10);

/// All plugins' stop hooks together: what the unit's limit leaves after the drain and the
/// margin.
pub const STOP_HOOKS_BUDGET: Duration = Duration::from_secs(
    UNIT_STOP_TIMEOUT.as_secs() - DRAIN_DEADLINE.as_secs() - EXIT_MARGIN.as_secs(),
);

/// The longest one plugin's stop hook may take (less when the budget runs out, and never
/// more than `--plugin-change-timeout`).
pub const STOP_HOOK_DEADLINE: Duration = Duration::from_secs(15);

/// Which plugins' start hooks are running, noted on disk, so a start hook that kills the
/// daemon (an abort, `exit`, a double panic) is found at the next start: one empty file
/// per plugin in `<state dir>/starting/`, created before the hook and removed once it
/// returned (and, for hooks still running, at a clean stop). Like every daemon file, they
/// resolve inside the root prefix.
#[derive(Debug, Clone)]
pub struct StartMarkers {
    fs: RootFs,
    dir: String,
}

impl StartMarkers {
    /// The markers of the daemon running over `root`.
    pub fn new(root: &Path) -> StartMarkers {
        StartMarkers {
            fs: RootFs::new(root),
            dir: format!("{STATE_DIR}/starting"),
        }
    }

    /// The marker name of plugin `name` of `kind`: a service's bare name, `<kind>:<name>`
    /// for the other kinds (a name never holds a `:`), so a `debug` provider and a `debug`
    /// application have a marker each.
    pub fn key(kind: plugin_api::Kind, name: &str) -> String {
        match kind {
            plugin_api::Kind::Service => name.to_string(),
            other => format!("{}:{name}", other.as_str()),
        }
    }

    fn path(&self, plugin: &str) -> String {
        format!("{}/{plugin}", self.dir)
    }

    /// The plugins (their marker names, [`StartMarkers::key`]) whose start hook was running
    /// when the daemon last ended without a clean stop. Their markers are removed: such a plugin is left out of this start
    /// only, and the next start of the daemon tries it again.
    pub fn take_crashed(&self) -> BTreeSet<String> {
        let names = match self.fs.list(&self.dir) {
            Ok(names) => names.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the start markers");
                return BTreeSet::new();
            }
        };
        for name in &names {
            self.clear(name);
        }
        names.into_iter().collect()
    }

    /// Notes that `plugin`'s start hook is about to run.
    pub fn set(&self, plugin: &str) {
        if let Err(e) = self.fs.write(&self.path(plugin), b"", 0o600) {
            tracing::warn!(plugin, error = %e, "cannot note the start hook on disk");
        }
    }

    /// Notes that `plugin`'s start hook returned.
    pub fn clear(&self, plugin: &str) {
        if let Err(e) = self.fs.remove(&self.path(plugin)) {
            tracing::warn!(plugin, error = %e, "cannot remove a start marker");
        }
    }

    /// At a clean stop: start hooks still running did not kill the daemon.
    pub fn clear_all(&self) {
        self.take_crashed();
    }
}

/// Starts the plugins: each one's start hook runs once its dependencies started (a hook
/// that blocks delays only its own plugin and those depending on it), except plugins whose
/// start hook was running when the daemon died last time: those are left out, degraded.
/// Returns once every plugin started or gave up.
pub async fn start_plugins(app: &App) {
    let markers = Arc::new(StartMarkers::new(&app.root));
    let crashed = markers.take_crashed();
    app.registry
        .start_all(markers, &crashed, app.lifecycle.clone())
        .await;
}

/// Stops the plugins in reverse start order within [`STOP_HOOKS_BUDGET`].
pub async fn stop_plugins(app: &App) {
    // Applications first (upstream's order), while the services they use still run.
    crate::system::applications::manage::stop_installed(app).await;
    app.registry
        .stop_all(STOP_HOOKS_BUDGET, STOP_HOOK_DEADLINE)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use Phase::*;
    use StopReason::*;

    const ALL: [Phase; 6] = [
        Starting,
        Ready,
        Stopping(Shutdown),
        Stopping(Reboot),
        Stopping(PowerOff),
        Stopped,
    ];

    fn legal(from: Phase, to: Phase) {
        assert_eq!(transition(from, to), Ok(to), "{from} -> {to} must be legal");
        let l = Lifecycle::new();
        l.phase.send_replace(from);
        assert_eq!(l.move_to(to), Ok(from));
        assert_eq!(l.phase(), to);
    }

    fn illegal(from: Phase, to: Phase) {
        assert_eq!(
            transition(from, to),
            Err(IllegalTransition { from, to }),
            "{from} -> {to} must be illegal"
        );
        let l = Lifecycle::new();
        l.phase.send_replace(from);
        assert!(l.move_to(to).is_err());
        assert_eq!(l.phase(), from, "a refused move changes nothing");
    }

    #[test]
    fn start_up_finishes_or_is_cut_short_by_a_shutdown() {
        legal(Starting, Ready);
        legal(Starting, Stopping(Shutdown));
    }

    #[test]
    fn a_power_action_is_refused_while_starting() {
        illegal(Starting, Stopping(Reboot));
        illegal(Starting, Stopping(PowerOff));
        illegal(Starting, Stopped);
    }

    #[test]
    fn a_ready_daemon_stops_for_any_reason() {
        legal(Ready, Stopping(Shutdown));
        legal(Ready, Stopping(Reboot));
        legal(Ready, Stopping(PowerOff));
        illegal(Ready, Stopped);
    }

    #[test]
    fn a_refused_power_action_returns_to_ready_and_a_granted_one_ends_in_a_shutdown() {
        for r in [Reboot, PowerOff] {
            legal(Stopping(r), Ready);
            legal(Stopping(r), Stopping(Shutdown));
            legal(Stopping(r), Stopped);
        }
    }

    #[test]
    fn a_shutdown_is_final() {
        illegal(Stopping(Shutdown), Ready);
        illegal(Stopping(Shutdown), Stopping(Reboot));
        illegal(Stopping(Shutdown), Stopping(PowerOff));
        legal(Stopping(Shutdown), Stopped);
        illegal(Stopping(Reboot), Stopping(PowerOff));
        illegal(Stopping(PowerOff), Stopping(Reboot));
    }

    #[test]
    fn nothing_leaves_stopped_and_nothing_returns_to_starting() {
        for to in ALL {
            illegal(Stopped, to);
            if to != Starting {
                continue;
            }
            for from in ALL {
                illegal(from, Starting);
            }
        }
    }

    #[test]
    fn no_phase_moves_to_itself() {
        for p in ALL {
            illegal(p, p);
        }
    }

    #[test]
    fn every_pair_is_decided_as_documented() {
        // The whole table, so a new rule cannot slip in unnoticed: 12 legal moves of 36.
        let legal_moves: Vec<(Phase, Phase)> = ALL
            .iter()
            .flat_map(|f| ALL.iter().map(move |t| (*f, *t)))
            .filter(|(f, t)| transition(*f, *t).is_ok())
            .collect();
        assert_eq!(
            legal_moves,
            [
                (Starting, Ready),
                (Starting, Stopping(Shutdown)),
                (Ready, Stopping(Shutdown)),
                (Ready, Stopping(Reboot)),
                (Ready, Stopping(PowerOff)),
                (Stopping(Shutdown), Stopped),
                (Stopping(Reboot), Ready),
                (Stopping(Reboot), Stopping(Shutdown)),
                (Stopping(Reboot), Stopped),
                (Stopping(PowerOff), Ready),
                (Stopping(PowerOff), Stopping(Shutdown)),
                (Stopping(PowerOff), Stopped),
            ]
        );
    }

    #[tokio::test]
    async fn changes_are_admitted_only_when_ready() {
        let l = Lifecycle::new();
        let wait = Duration::from_millis(20);
        // Starting: a plugin's change goes on to the plugin's own gate; others wait, then 503.
        assert_eq!(l.admit_change(true, wait).await, Ok(()));
        assert_eq!(
            l.admit_change(false, wait).await.unwrap_err(),
            "the system is still starting, try again later"
        );
        l.move_to(Ready).unwrap();
        assert_eq!(l.admit_change(false, wait).await, Ok(()));
        l.move_to(Stopping(Reboot)).unwrap();
        for for_plugin in [true, false] {
            assert_eq!(
                l.admit_change(for_plugin, wait).await.unwrap_err(),
                "the system is rebooting: changes are refused"
            );
        }
        l.move_to(Stopping(Shutdown)).unwrap();
        assert!(l
            .admit_change(true, wait)
            .await
            .unwrap_err()
            .contains("shutting down"));
    }

    #[tokio::test]
    async fn a_change_waiting_for_start_up_goes_ahead_once_ready() {
        let l = Arc::new(Lifecycle::new());
        let waiting = tokio::spawn({
            let l = l.clone();
            async move { l.admit_change(false, Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        l.move_to(Ready).unwrap();
        assert_eq!(waiting.await.unwrap(), Ok(()));
    }

    #[test]
    fn the_shutdown_budget_fits_the_units_stop_timeout() {
        let unit = include_str!("../systemd/incus-osd.service");
        let line = unit
            .lines()
            .find_map(|l| l.strip_prefix("TimeoutStopSec="))
            .expect("the unit sets TimeoutStopSec explicitly");
        let secs: u64 = line
            .trim()
            .trim_end_matches('s')
            .parse()
            .expect("TimeoutStopSec in seconds");
        assert_eq!(Duration::from_secs(secs), UNIT_STOP_TIMEOUT);
        assert!(DRAIN_DEADLINE + STOP_HOOKS_BUDGET + EXIT_MARGIN <= UNIT_STOP_TIMEOUT);
        assert!(STOP_HOOK_DEADLINE <= STOP_HOOKS_BUDGET);
        assert!(!EXIT_MARGIN.is_zero());
    }

    #[test]
    fn start_markers_name_the_plugins_whose_start_never_returned() {
        let root = tempfile::tempdir().unwrap();
        let m = StartMarkers::new(root.path());
        assert!(m.take_crashed().is_empty(), "nothing noted yet");
        m.set("a");
        m.set("b");
        m.clear("a");
        assert_eq!(m.take_crashed(), BTreeSet::from(["b".to_string()]));
        assert!(
            m.take_crashed().is_empty(),
            "taken once: the next start tries again"
        );
        m.set("c");
        assert!(root.path().join("var/lib/incus-os/starting/c").is_file());
        m.clear_all();
        assert!(m.take_crashed().is_empty());
        // A symlink planted in the root does not lead the markers out of it.
        let outside = tempfile::tempdir().unwrap();
        std::fs::remove_dir_all(root.path().join("var/lib/incus-os/starting")).unwrap();
        std::os::unix::fs::symlink(
            outside.path(),
            root.path().join("var/lib/incus-os/starting"),
        )
        .unwrap();
        m.set("d");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}
