//! OS and application updates (`/1.0/system/update`): the configuration and its validation
//! ([`config`]), when to check ([`schedule`]), which offered version to take
//! ([`versions`]), and the runner that drives the selected provider. The decisions are
//! plain Rust without I/O; the runner talks to the provider, the disk and the clock.

pub mod config;
pub mod runner;
pub mod schedule;
pub mod stage;
pub mod versions;

use serde::{Deserialize, Serialize};

use crate::api::App;

/// What the state document records of updates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateDoc {
    /// `/1.0/system/update`'s config.
    pub config: config::UpdateConfig,
    /// When the checker last ran (or skipped a run); `None`: never.
    #[serde(with = "config::go_time")]
    pub last_check: Option<chrono::DateTime<chrono::FixedOffset>>,
}

/// The configured update channel (`stable` when none is set).
pub fn channel(app: &App) -> String {
    app.with_state(|s| {
        let c = &s.doc().system.update.config.channel;
        if c.is_empty() {
            "stable".to_string()
        } else {
            c.clone()
        }
    })
}
