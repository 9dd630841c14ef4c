//! systemd unit operations as the host performs them for plugins (and for itself).
//!
//! The platform has its own operation type, [`UnitAction`]: the plugin ABI's `UnitOp` is
//! translated once, in [`crate::host_ops`].

use crate::PlatformError;

/// An operation on one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitAction {
    Start,
    Stop,
    Restart,
    Reload,
    /// Returns the unit's `ActiveState` (`active`, `inactive`, `failed`, ...).
    ActiveState,
    /// SIGKILL to every process of the unit.
    Kill,
}

impl UnitAction {
    pub fn as_str(self) -> &'static str {
        match self {
            UnitAction::Start => "start",
            UnitAction::Stop => "stop",
            UnitAction::Restart => "restart",
            UnitAction::Reload => "reload",
            UnitAction::ActiveState => "active-state",
            UnitAction::Kill => "kill",
        }
    }
}

/// systemd as plugins use it. Implementations are synchronous: they are called from
/// blocking threads.
pub trait Units: Send + Sync {
    /// A unit operation. [`UnitAction::ActiveState`] returns the unit's active state; the
    /// others return "".
    fn unit(&self, action: UnitAction, unit: &str) -> Result<String, PlatformError>;

    /// Makes systemd re-read unit files.
    fn daemon_reload(&self) -> Result<(), PlatformError>;
}

/// No systemd to talk to: every operation fails and says why.
#[derive(Debug, Clone)]
pub struct Unavailable {
    reason: String,
}

impl Unavailable {
    pub fn new(reason: &str) -> Self {
        Unavailable {
            reason: reason.to_string(),
        }
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The error for an attempt to `what`.
    pub fn refuse(&self, what: &str) -> PlatformError {
        PlatformError(format!(
            "cannot {what}: systemd is not reachable ({})",
            self.reason
        ))
    }
}

impl Units for Unavailable {
    fn unit(&self, action: UnitAction, unit: &str) -> Result<String, PlatformError> {
        Err(self.refuse(&format!("{} {unit}", action.as_str())))
    }

    fn daemon_reload(&self) -> Result<(), PlatformError> {
        Err(self.refuse("reload systemd"))
    }
}

/// Checks a unit name before it goes anywhere near systemd.
pub fn valid_unit_name(unit: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        ".service",
        ".socket",
        ".target",
        ".mount",
        ".timer",
        ".path",
        ".device",
        ".swap",
        ".slice",
        ".scope",
        ".automount",
    ];
    !unit.is_empty()
        && unit.len() <= 255
        && SUFFIXES
            .iter()
            .any(|s| unit.ends_with(s) && unit.len() > s.len())
        && unit
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names() {
        assert!(valid_unit_name("iscsid.service"));
        assert!(valid_unit_name("getty@tty1.service"));
        assert!(!valid_unit_name("iscsid"));
        assert!(!valid_unit_name("../x.service"));
        assert!(!valid_unit_name("a b.service"));
        assert!(!valid_unit_name("x.service\n"));
    }

    #[test]
    fn unavailable_says_why() {
        let u = Unavailable::new("offline: dev root");
        let e = u.unit(UnitAction::Start, "iscsid.service").unwrap_err();
        assert_eq!(
            e.0,
            "cannot start iscsid.service: systemd is not reachable (offline: dev root)"
        );
    }
}
