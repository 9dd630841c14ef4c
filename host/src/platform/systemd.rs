//! systemd unit control.

use plugin_api::abi::UnitOp;

use super::PlatformError;

/// A power transition requested through systemd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    PowerOff,
    Suspend,
}

impl PowerAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::Reboot => "reboot",
            PowerAction::PowerOff => "poweroff",
            PowerAction::Suspend => "suspend",
        }
    }
}

/// systemd, as the daemon and its plugins use it. Implementations are synchronous: they
/// are called from blocking threads.
pub trait Units: Send + Sync {
    /// A unit operation. `ActiveState` returns the unit's active state; the others "".
    fn unit(&self, op: UnitOp, unit: &str) -> Result<String, PlatformError>;

    /// Makes systemd re-read unit files.
    fn daemon_reload(&self) -> Result<(), PlatformError>;

    /// Requests a power transition.
    fn power(&self, action: PowerAction) -> Result<(), PlatformError>;

    /// Whether systemd can be reached at all (and if not, why).
    fn reachable(&self) -> Result<(), PlatformError>;
}

/// No systemd to talk to: every operation fails and says why.
pub struct Unavailable {
    reason: String,
}

impl Unavailable {
    pub fn new(reason: &str) -> Self {
        Unavailable {
            reason: reason.to_string(),
        }
    }
}

impl Unavailable {
    fn refuse(&self, what: &str) -> PlatformError {
        PlatformError(format!(
            "cannot {what}: systemd is not reachable ({})",
            self.reason
        ))
    }
}

impl Units for Unavailable {
    fn unit(&self, op: UnitOp, unit: &str) -> Result<String, PlatformError> {
        Err(self.refuse(&format!("{} {unit}", op.as_str())))
    }

    fn daemon_reload(&self) -> Result<(), PlatformError> {
        Err(self.refuse("reload systemd"))
    }

    fn power(&self, action: PowerAction) -> Result<(), PlatformError> {
        Err(self.refuse(action.as_str()))
    }

    fn reachable(&self) -> Result<(), PlatformError> {
        Err(PlatformError(format!(
            "systemd is not reachable ({})",
            self.reason
        )))
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
    }

    #[test]
    fn unavailable_says_why() {
        let u = Unavailable::new("offline: dev root");
        let e = u.unit(UnitOp::Start, "iscsid.service").unwrap_err();
        assert_eq!(
            e.0,
            "cannot start iscsid.service: systemd is not reachable (offline: dev root)"
        );
    }
}
