//! Recovery mode's last step (tier 1): the update a recovery volume brought into
//! `/root/updates` is looked up through the `debug` provider, selected for that one check,
//! and the selection is restored and the directory removed afterwards. (Mounting a real
//! volume is `tier3_recovery.rs`; verifying and copying the volume's files are the unit
//! tests of `system::recovery`.)

use std::sync::Mutex;

use incus_osd::system::{provider, recovery};
use incus_osd::testing::{fake_file, TestApp};
use plugin_api::provider::{FetchOrder, Release, Target, UpdateContext};
use plugin_api::sdk::{Host, Result};
use serde_json::Value;

/// What the provider named `debug` saw: for each lookup, its target and the `RELEASE`
/// file it found.
static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct RecordingDebug {
    host: Host,
}

impl plugin_api::Provider for RecordingDebug {
    const NAME: &'static str = "debug";
    type Config = Value;
    type State = Value;
    fn new(host: Host) -> Result<Self> {
        Ok(RecordingDebug { host })
    }
    fn state(&self, _: &Value) -> Result<Value> {
        Ok(Value::Null)
    }
    fn lookup(&self, _: &Value, _: &UpdateContext, t: &Target) -> Result<Option<Release>> {
        let release = self.host.read_to_string("/root/updates/RELEASE")?;
        SEEN.lock()
            .unwrap()
            .push(format!("{t:?} {}", release.unwrap_or_default().trim()));
        Ok(None)
    }
    fn fetch(&self, _: &Value, _: &FetchOrder) -> Result<Vec<String>> {
        Ok(vec![])
    }
}

#[tokio::test]
async fn the_prepared_update_is_checked_through_the_debug_provider_then_the_selection_is_restored()
{
    let t = TestApp::new().provider::<RecordingDebug>();
    fake_file(t.root(), "/root/updates/RELEASE", "202601010000\n");
    fake_file(t.root(), "/root/updates/IncusOS_202601010000.efi", "efi");
    let (app, _d) = t.build();
    let before = provider::selection(&app);
    assert_eq!(before.name, "images");

    recovery::apply_prepared_update(&app, "202601010000").await;

    let seen = SEEN.lock().unwrap().clone();
    assert!(
        seen.contains(&"Os 202601010000".to_string()),
        "the debug provider was not asked for the OS: {seen:?}"
    );
    assert_eq!(provider::selection(&app), before);
    // Restored on disk too, not only in memory.
    let saved: Value = serde_json::from_slice(
        &std::fs::read(app.root.join("var/lib/incus-os/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["system"]["provider"]["name"], "images", "{saved}");
    assert!(!app.root.join("root/updates").exists());
}
