//! systemd unit control.

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

pub use plugin_host::units::{valid_unit_name, Unavailable, UnitAction, Units};

/// systemd as the daemon uses it: what plugins get ([`Units`]) plus power transitions.
/// Implementations are synchronous: they are called from blocking threads.
pub trait Systemd: Units {
    /// Requests a power transition.
    fn power(&self, action: PowerAction) -> Result<(), PlatformError>;

    /// Whether systemd can be reached at all (and if not, why).
    fn reachable(&self) -> Result<(), PlatformError>;
}

impl Systemd for Unavailable {
    fn power(&self, action: PowerAction) -> Result<(), PlatformError> {
        Err(self.refuse(action.as_str()))
    }

    fn reachable(&self) -> Result<(), PlatformError> {
        Err(PlatformError(format!(
            "systemd is not reachable ({})",
            self.reason()
        )))
    }
}
