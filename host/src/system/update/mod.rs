//! OS and application updates: the configuration, the checker's schedule, the version
//! rules, the staging of an OS update into the inactive A/B slot, and the runner that
//! drives the selected provider.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::App;

/// What the state document records of updates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateDoc {
    /// `/1.0/system/update`'s config.
    pub config: Value,
}

/// The configured update channel (`stable` when none is set).
pub fn channel(app: &App) -> String {
    app.with_state(|s| {
        s.doc()
            .system
            .update
            .config
            .get("channel")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .unwrap_or("stable")
            .to_string()
    })
}
