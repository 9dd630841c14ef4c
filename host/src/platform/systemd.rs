//! systemd unit control.

use plugin_api::abi::UnitOp;

use super::PlatformError;

/// Unit operations. `ActiveState` returns the unit's active state; the others return "".
pub trait Units: Send + Sync {
    fn unit(&self, op: UnitOp, unit: &str) -> Result<String, PlatformError>;
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

impl Units for Unavailable {
    fn unit(&self, op: UnitOp, unit: &str) -> Result<String, PlatformError> {
        Err(PlatformError(format!(
            "cannot {} {unit}: systemd is not reachable ({})",
            op.as_str(),
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
