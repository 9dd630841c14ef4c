//! The SDK's lifecycle defaults and journal handling, over the harness host: which hook a
//! PUT calls for each on/off change, what a failed update or save leaves behind, what
//! boot start, shutdown and reset keep, and the same PUT handling for applications and
//! providers.

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RSlice, RSliceMut, RStr};
use incus_osd_harness::HarnessHost;
use plugin_api::abi::{
    ByteSink, ByteSink_TO, ByteSource, ByteSource_TO, LogLevel, PluginBox, PluginError,
};
use plugin_api::application::{AppContext, Replace};
use plugin_api::provider::{FetchOrder, Registration, Release, Target, UpdateContext};
use plugin_api::sdk::{
    self, ActionFn, CanReplaceFn, Error, Host, ResetFn, Result, StreamingBackup, Undo, WipeFn,
};
use plugin_api::{Application, Hook, Manifest, Provider, Service};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

const UNIT: &str = "probe.service";

#[derive(Serialize, Deserialize, Default, Clone)]
#[serde(default)]
struct ProbeConfig {
    enabled: bool,
    name: String,
    /// The hook that fails after doing its work: `bring_up`, `take_down` or `reset`.
    fail: String,
}

fn conf(name: &str) -> String {
    format!("/etc/probe/{name}.conf")
}

/// A service whose hooks log their calls and change a file and a unit through the journal.
struct Probe {
    host: Host,
}

impl Probe {
    fn failing(&self, hook: &str, config: &ProbeConfig) -> Result<()> {
        self.host.info(&format!("{hook} {}", config.name));
        if config.fail == hook {
            return Err(Error::internal(format!("{hook} failed")));
        }
        Ok(())
    }

    fn reset(&self, undo: &mut Undo, config: &ProbeConfig) -> Result<()> {
        undo.write_file("/etc/probe/reset", b"done", 0o600)?;
        self.failing("reset", config)
    }
}

impl Service for Probe {
    const NAME: &'static str = "probe";
    const PATHS: &'static [&'static str] = &["/etc/probe"];
    const RESET: Option<ResetFn<Self>> = Some(Self::reset);
    type Config = ProbeConfig;
    type State = Value;

    fn new(host: Host) -> Result<Self> {
        Ok(Probe { host })
    }
    fn state(&self, _: &ProbeConfig) -> Result<Value> {
        Ok(json!({}))
    }
    fn enabled(config: &ProbeConfig) -> bool {
        config.enabled
    }
    fn bring_up(&self, undo: &mut Undo, config: &ProbeConfig) -> Result<()> {
        undo.write_file(&conf(&config.name), config.name.as_bytes(), 0o600)?;
        undo.start_unit(UNIT)?;
        self.failing("bring_up", config)
    }
    fn take_down(&self, undo: &mut Undo, config: &ProbeConfig) -> Result<()> {
        undo.stop_unit(UNIT)?;
        undo.remove(&conf(&config.name))?;
        self.failing("take_down", config)
    }
}

/// The same service without a reset.
struct Plain;

impl Service for Plain {
    const NAME: &'static str = "plain";
    type Config = ProbeConfig;
    type State = Value;
    fn new(_: Host) -> Result<Self> {
        Ok(Plain)
    }
    fn state(&self, _: &ProbeConfig) -> Result<Value> {
        Ok(json!({}))
    }
    fn enabled(config: &ProbeConfig) -> bool {
        config.enabled
    }
}

/// A plugin instance over a fresh harness host.
struct Loaded {
    host: HarnessHost,
    plugin: PluginBox,
}

impl Loaded {
    fn new(
        manifest: Manifest,
        instance: fn(plugin_api::abi::HostHandle) -> Result<PluginBox>,
    ) -> Loaded {
        let host = HarnessHost::new(&manifest).unwrap();
        let plugin = instance(host.handle()).unwrap();
        Loaded { host, plugin }
    }

    fn service<T: Service>() -> Loaded {
        Self::new(
            sdk::__service_manifest::<T>("1.0.0", plugin_api::API_VERSION),
            sdk::__service_instance::<T>,
        )
    }

    fn invoke(&self, op: &str, input: &[u8]) -> std::result::Result<(), PluginError> {
        self.plugin
            .invoke(RStr::from_str(op), RSlice::from_slice(input))
            .into_result()
            .map(drop)
    }

    /// `invoke`'s output, as text.
    fn answer(&self, op: &str, input: &[u8]) -> std::result::Result<String, PluginError> {
        self.plugin
            .invoke(RStr::from_str(op), RSlice::from_slice(input))
            .into_result()
            .map(|out| String::from_utf8(out.to_vec()).unwrap())
    }

    fn put(&self, config: Value) -> std::result::Result<(), PluginError> {
        self.invoke("put", json!({ "config": config }).to_string().as_bytes())
    }

    /// The hooks called since the last [`HarnessHost::clear_effects`].
    fn calls(&self) -> Vec<String> {
        self.host
            .logs()
            .into_iter()
            .filter(|l| l.level == LogLevel::Info)
            .map(|l| l.message)
            .collect()
    }

    fn text(&self, path: &str) -> Option<String> {
        self.host
            .read_file(path)
            .map(|d| String::from_utf8(d).unwrap())
    }
}

fn on(name: &str) -> Value {
    json!({"enabled": true, "name": name})
}

fn off(name: &str) -> Value {
    json!({"enabled": false, "name": name})
}

fn saved(config: Value) -> Value {
    let mut c = json!({"enabled": false, "name": "", "fail": ""});
    for (k, v) in config.as_object().unwrap() {
        c[k] = v.clone();
    }
    json!({ "config": c })
}

#[test]
fn update_follows_the_switch() {
    let p = Loaded::service::<Probe>();
    p.put(off("a")).unwrap();
    assert!(p.calls().is_empty());
    assert!(p.host.units().is_empty() && p.host.file_effects().is_empty());
    assert_eq!(p.host.state(), saved(off("a")));

    p.put(on("a")).unwrap();
    assert_eq!(p.calls(), ["bring_up a"]);
    assert_eq!(p.text(&conf("a")).unwrap(), "a");
    assert_eq!(p.host.unit_state(UNIT), "active");

    p.host.clear_effects();
    p.put(on("b")).unwrap();
    assert_eq!(p.calls(), ["take_down a", "bring_up b"]);
    assert!(p.text(&conf("a")).is_none());
    assert_eq!(p.text(&conf("b")).unwrap(), "b");

    p.host.clear_effects();
    p.put(off("b")).unwrap();
    assert_eq!(p.calls(), ["take_down b"]);
    assert!(p.text(&conf("b")).is_none());
    assert_eq!(p.host.unit_state(UNIT), "inactive");
    assert_eq!(p.host.state(), saved(off("b")));
}

#[test]
fn a_failed_save_rolls_the_journal_back_without_another_update() {
    let p = Loaded::service::<Probe>();
    p.put(on("a")).unwrap();
    p.host.clear_effects();
    p.host.fail_next_save("disk full");

    let err = p.put(on("b")).unwrap_err();
    assert_eq!((err.status, err.message.as_str()), (500, "disk full"));
    // No second update (new back to old): the journal of this one is rolled back.
    assert_eq!(p.calls(), ["take_down a", "bring_up b"]);
    assert_eq!(p.text(&conf("a")).unwrap(), "a");
    assert!(p.text(&conf("b")).is_none());
    assert_eq!(p.host.unit_state(UNIT), "active");
    assert_eq!(p.host.state(), saved(on("a")));

    // Enabling whose save fails: back to nothing at all.
    let p = Loaded::service::<Probe>();
    p.host.fail_next_save("disk full");
    p.put(on("a")).unwrap_err();
    assert!(p.text(&conf("a")).is_none());
    assert_eq!(p.host.unit_state(UNIT), "inactive");
    assert_eq!(p.host.state(), Value::Null);
}

#[test]
fn a_failed_update_rolls_back_and_keeps_the_old_config() {
    let p = Loaded::service::<Probe>();
    p.put(on("a")).unwrap();
    let mut bad = on("b");
    bad["fail"] = json!("bring_up");
    let err = p.put(bad).unwrap_err();
    assert_eq!((err.status, err.message.as_str()), (500, "bring_up failed"));
    assert_eq!(p.text(&conf("a")).unwrap(), "a");
    assert!(p.text(&conf("b")).is_none());
    assert_eq!(p.host.unit_state(UNIT), "active");
    assert_eq!(p.host.state(), saved(on("a")));
    assert_eq!(p.host.save_count(), 1);
}

#[test]
fn start_and_stop_follow_the_switch_and_keep_what_they_did() {
    let p = Loaded::service::<Probe>();
    p.host.set_state(saved(off("a")));
    p.invoke("start", b"").unwrap();
    p.invoke("stop", b"").unwrap();
    assert!(p.calls().is_empty());
    assert!(p.host.file_effects().is_empty());

    let mut failing = on("a");
    failing["fail"] = json!("bring_up");
    p.host.set_state(saved(failing));
    let err = p.invoke("start", b"").unwrap_err();
    assert_eq!(err.message, "bring_up failed");
    // Boot has nothing to go back to: what was done stays.
    assert_eq!(p.text(&conf("a")).unwrap(), "a");
    assert_eq!(p.host.unit_state(UNIT), "active");

    p.host.clear_effects();
    let mut failing = on("a");
    failing["fail"] = json!("take_down");
    p.host.set_state(saved(failing));
    p.invoke("stop", b"").unwrap_err();
    assert_eq!(p.calls(), ["take_down a"]);
    assert!(p.text(&conf("a")).is_none());
    assert_eq!(p.host.unit_state(UNIT), "inactive");
    assert_eq!(p.host.save_count(), 0);
}

#[test]
fn reset_runs_the_declared_hook_with_a_kept_journal_or_is_refused() {
    let p = Loaded::service::<Probe>();
    let mut failing = on("a");
    failing["fail"] = json!("reset");
    p.host.set_state(saved(failing));
    let err = p.invoke("reset", b"").unwrap_err();
    assert_eq!(err.message, "reset failed");
    assert_eq!(p.calls(), ["reset a"]);
    assert_eq!(p.text("/etc/probe/reset").unwrap(), "done");

    let p = Loaded::service::<Plain>();
    let err = p.invoke("reset", b"").unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (500, sdk::RESET_NOT_SUPPORTED)
    );
}

// ---- applications and providers -----------------------------------------------------------

#[derive(Serialize, Deserialize, Default, Clone)]
#[serde(default)]
struct ValueConfig {
    locked: bool,
    value: String,
}

const VALUE: &str = "/var/lib/app/value";

fn check_change(old: &ValueConfig, new: &ValueConfig) -> Result<()> {
    if old.locked && old.value != new.value {
        return Err(Error::bad_request("value is locked"));
    }
    Ok(())
}

fn write_value(undo: &mut Undo, config: &ValueConfig) -> Result<()> {
    undo.create_dir("/var/lib/app", 0o700)?;
    undo.write_file(VALUE, config.value.as_bytes(), 0o600)
}

struct App;

impl Application for App {
    const NAME: &'static str = "app";
    const PATHS: &'static [&'static str] = &["/var/lib/app"];
    type Config = ValueConfig;
    fn new(_: Host) -> Result<Self> {
        Ok(App)
    }
    fn validate_change(&self, old: &ValueConfig, new: &ValueConfig) -> Result<()> {
        check_change(old, new)
    }
    fn update(&self, undo: &mut Undo, _: &ValueConfig, new: &ValueConfig) -> Result<()> {
        write_value(undo, new)
    }
    fn start(&self, undo: &mut Undo, _: &AppContext, config: &ValueConfig) -> Result<()> {
        write_value(undo, config)?;
        Err(Error::internal("start failed"))
    }
}

struct Prov;

impl Provider for Prov {
    const NAME: &'static str = "prov";
    type Config = ValueConfig;
    type State = Value;
    fn new(_: Host) -> Result<Self> {
        Ok(Prov)
    }
    fn state(&self, _: &ValueConfig) -> Result<Value> {
        Ok(json!({}))
    }
    fn validate_change(&self, old: &ValueConfig, new: &ValueConfig) -> Result<()> {
        check_change(old, new)
    }
    fn update(&self, undo: &mut Undo, _: &ValueConfig, new: &ValueConfig) -> Result<()> {
        write_value(undo, new)
    }
}

fn application() -> Loaded {
    Loaded::new(
        sdk::__application_manifest::<App>("1.0.0", plugin_api::API_VERSION),
        sdk::__application_instance::<App>,
    )
}

fn provider() -> Loaded {
    let mut manifest = sdk::__provider_manifest::<Prov>("1.0.0", plugin_api::API_VERSION);
    // Providers declare no paths; the test's writes need one.
    manifest.paths = vec!["/var/lib/app".into()];
    Loaded::new(manifest, sdk::__provider_instance::<Prov>)
}

#[test]
fn application_and_provider_puts_check_the_change_and_journal_the_update() {
    for p in [application(), provider()] {
        p.put(json!({"locked": true, "value": "one"})).unwrap();
        assert_eq!(p.text(VALUE).unwrap(), "one");

        // validate_change refuses before anything is touched.
        p.host.clear_effects();
        let err = p.put(json!({"locked": true, "value": "two"})).unwrap_err();
        assert_eq!((err.status, err.message.as_str()), (400, "value is locked"));
        assert!(p.host.file_effects().is_empty());

        // A failed save rolls the update back.
        p.put(json!({"locked": false, "value": "one"})).unwrap();
        p.host.fail_next_save("disk full");
        p.put(json!({"value": "two"})).unwrap_err();
        assert_eq!(p.text(VALUE).unwrap(), "one");
        assert_eq!(
            p.host.state(),
            json!({"config": {"locked": false, "value": "one"}})
        );
    }
}

#[test]
fn application_start_keeps_what_it_did() {
    let p = application();
    p.host
        .set_state(json!({"config": {"locked": false, "value": "boot"}}));
    let err = p.invoke("start", b"").unwrap_err();
    assert_eq!(err.message, "start failed");
    assert_eq!(p.text(VALUE).unwrap(), "boot");
}

// ---- every advertised hook reaches the plugin -----------------------------------------------

/// One plugin type of every kind, implementing every hook it can; each hook logs its name.
struct Every {
    host: Host,
}

impl Every {
    fn saw(&self, hook: Hook) -> Result<()> {
        self.host.info(hook.op());
        Ok(())
    }

    fn reset(&self, _: &mut Undo, _: &Value) -> Result<()> {
        self.saw(Hook::Reset)
    }
}

impl Service for Every {
    const NAME: &'static str = "every";
    const RESET: Option<ResetFn<Self>> = Some(Self::reset);
    type Config = Value;
    type State = Value;
    fn new(host: Host) -> Result<Self> {
        Ok(Every { host })
    }
    fn state(&self, _: &Value) -> Result<Value> {
        self.saw(Hook::Get).map(|()| json!({}))
    }
    fn enabled(_: &Value) -> bool {
        true
    }
    fn update(&self, _: &mut Undo, _: &Value, _: &Value) -> Result<()> {
        self.saw(Hook::Put)
    }
    fn start(&self, _: &mut Undo, _: &Value) -> Result<()> {
        self.saw(Hook::Start)
    }
    fn stop(&self, _: &mut Undo, _: &Value) -> Result<()> {
        self.saw(Hook::Stop)
    }
}

impl Every {
    fn wipe(&self, _: &AppContext, _: &Value) -> Result<()> {
        self.saw(Hook::Wipe)
    }
    fn action(&self, _: &Value, _: &str, _: &BTreeMap<String, String>) -> Result<Value> {
        self.saw(Hook::Action).map(|()| json!({}))
    }
    fn can_replace(&self, _: &Replace) -> Result<()> {
        self.saw(Hook::CanReplace)
    }
    fn backup(&self, _: bool, out: &mut dyn std::io::Write) -> Result<()> {
        out.write_all(b"archive")?;
        self.saw(Hook::Backup)
    }
    fn restore(&self, input: &mut dyn std::io::Read) -> Result<()> {
        std::io::copy(input, &mut std::io::sink())?;
        self.saw(Hook::Restore)
    }
}

impl Application for Every {
    const NAME: &'static str = "every";
    // Every optional hook there is.
    const WIPE: Option<WipeFn<Self>> = Some(Self::wipe);
    const ACTION: Option<ActionFn<Self>> = Some(Self::action);
    const CAN_REPLACE: Option<CanReplaceFn<Self>> = Some(Self::can_replace);
    const STREAMING_BACKUP: Option<StreamingBackup<Self>> = Some(StreamingBackup {
        backup: Self::backup,
        restore: Self::restore,
    });
    type Config = Value;
    fn new(host: Host) -> Result<Self> {
        Ok(Every { host })
    }
    fn friendly_version(&self, _: &AppContext, _: &Value) -> Result<String> {
        self.saw(Hook::Get).map(|()| String::new())
    }
    fn update(&self, _: &mut Undo, _: &Value, _: &Value) -> Result<()> {
        self.saw(Hook::Put)
    }
    fn start(&self, _: &mut Undo, _: &AppContext, _: &Value) -> Result<()> {
        self.saw(Hook::Start)
    }
    fn stop(&self, _: &mut Undo, _: &AppContext, _: &Value) -> Result<()> {
        self.saw(Hook::Stop)
    }
    fn initialize(&self, _: &AppContext, _: &Value) -> Result<()> {
        self.saw(Hook::Initialize)
    }
    fn reload(&self, _: &AppContext, _: &Value) -> Result<()> {
        self.saw(Hook::Reload)
    }
    fn restart(&self, _: &AppContext, _: &Value) -> Result<()> {
        self.saw(Hook::Restart)
    }
    fn running(&self, _: &AppContext, _: &Value) -> Result<bool> {
        self.saw(Hook::Running).map(|()| true)
    }
    fn restored(&self, _: &AppContext, _: &Value) -> Result<()> {
        self.saw(Hook::Restored)
    }
}

impl Provider for Every {
    const NAME: &'static str = "every";
    type Config = Value;
    type State = Value;
    fn new(host: Host) -> Result<Self> {
        Ok(Every { host })
    }
    fn state(&self, _: &Value) -> Result<Value> {
        self.saw(Hook::Get).map(|()| json!({}))
    }
    fn update(&self, _: &mut Undo, _: &Value, _: &Value) -> Result<()> {
        self.saw(Hook::Put)
    }
    fn register(&self, _: &Value, _: &Registration) -> Result<()> {
        self.saw(Hook::Register)
    }
    fn refresh(&self, _: &Value, _: &Registration) -> Result<()> {
        self.saw(Hook::Refresh)
    }
    fn deregister(&self, _: &Value, _: &Registration) -> Result<()> {
        self.saw(Hook::Deregister)
    }
    fn clear_cache(&self) {
        self.saw(Hook::ClearCache).unwrap();
    }
    fn lookup(&self, _: &Value, _: &UpdateContext, _: &Target) -> Result<Option<Release>> {
        self.saw(Hook::Lookup).map(|()| None)
    }
    fn fetch(&self, _: &Value, _: &FetchOrder) -> Result<Vec<String>> {
        self.saw(Hook::Fetch).map(|()| vec![])
    }
}

struct VecSink(Vec<u8>);

impl ByteSink for VecSink {
    fn write(&mut self, chunk: RSlice<'_, u8>) -> RResult<(), PluginError> {
        self.0.extend_from_slice(chunk.as_slice());
        RResult::ROk(())
    }
}

struct Empty;

impl ByteSource for Empty {
    fn read(&mut self, _: RSliceMut<'_, u8>) -> RResult<usize, PluginError> {
        RResult::ROk(0)
    }
}

/// Calls `hook` as the daemon does: backup and restore through their streams, every other
/// hook through `invoke`.
fn call(p: &Loaded, hook: Hook) -> std::result::Result<(), PluginError> {
    match hook {
        Hook::Backup => {
            let mut sink = VecSink(vec![]);
            let sink_ref = ByteSink_TO::from_ptr(&mut sink, TD_Opaque);
            p.plugin
                .backup(RSlice::from_slice(b"{}"), sink_ref)
                .into_result()?;
            assert_eq!(sink.0, b"archive");
            Ok(())
        }
        Hook::Restore => p
            .plugin
            .restore(ByteSource_TO::from_ptr(&mut Empty, TD_Opaque))
            .into_result(),
        Hook::Put => p.put(json!({})),
        Hook::Action => p.invoke(hook.op(), br#"{"action": "rebuild"}"#),
        Hook::Lookup => p.invoke(hook.op(), br#"{"context": {}, "target": {"kind": "os"}}"#),
        Hook::Fetch => p.invoke(
            hook.op(),
            br#"{"context": {}, "target": {"kind": "os"}, "release": {}, "target_dir": "/var/lib/updates"}"#,
        ),
        _ => p.invoke(hook.op(), b""),
    }
}

/// Whatever a plugin declares, its manifest lists only hooks its kind has, and each hook
/// the manifest lists reaches the plugin's own method (never "operation ... is not
/// implemented", which the host would then answer to a user).
#[test]
fn every_hook_a_manifest_advertises_reaches_the_plugin() {
    use Hook::*;
    let version = ("1.0.0", plugin_api::API_VERSION);
    type Instance = fn(plugin_api::abi::HostHandle) -> Result<PluginBox>;
    let kinds: [(Manifest, Instance, &[Hook]); 3] = [
        (
            sdk::__service_manifest::<Every>(version.0, version.1),
            sdk::__service_instance::<Every>,
            &[Get, Put, Reset, Start, Stop],
        ),
        (
            sdk::__application_manifest::<Every>(version.0, version.1),
            sdk::__application_instance::<Every>,
            &[
                Get, Put, Action, Backup, Restore, Restart, Start, Stop, Initialize, Reload, Wipe,
                CanReplace, Running, Restored,
            ],
        ),
        (
            sdk::__provider_manifest::<Every>(version.0, version.1),
            sdk::__provider_instance::<Every>,
            &[
                Get, Put, Register, Deregister, Refresh, ClearCache, Lookup, Fetch,
            ],
        ),
    ];
    for (manifest, instance, expected) in kinds {
        let kind = manifest.kind;
        assert_eq!(manifest.hooks, expected, "{kind:?}");
        let p = Loaded::new(manifest.clone(), instance);
        for hook in manifest.hooks {
            p.host.clear_effects();
            if let Err(e) = call(&p, hook) {
                panic!("{kind:?} advertises {hook:?}, which answers {e:?}");
            }
            assert_eq!(p.calls(), [hook.op()], "{kind:?} {hook:?}");
        }
    }
}

// ---- applications: the context, the plugin's GET, undeclared hooks --------------------------

/// An upstream-shaped application: its friendly version and whether it runs come from the
/// context the host passes; it declares only an action.
struct Versioned;

impl Versioned {
    fn action(
        &self,
        _: &ValueConfig,
        action: &str,
        args: &BTreeMap<String, String>,
    ) -> Result<Value> {
        match action {
            "echo" => Ok(json!(args)),
            other => Err(Error::unsupported_action(other)),
        }
    }
}

impl Application for Versioned {
    const NAME: &'static str = "versioned";
    const ACTION: Option<ActionFn<Self>> = Some(Self::action);
    type Config = ValueConfig;
    fn new(_: Host) -> Result<Self> {
        Ok(Versioned)
    }
    fn friendly_version(&self, ctx: &AppContext, _: &ValueConfig) -> Result<String> {
        Ok(format!("7.0.0 [{}] as {}", ctx.version, ctx.name))
    }
    fn running(&self, ctx: &AppContext, _: &ValueConfig) -> Result<bool> {
        Ok(ctx.initialized)
    }
}

fn versioned() -> Loaded {
    Loaded::new(
        sdk::__application_manifest::<Versioned>("1.0.0", plugin_api::API_VERSION),
        sdk::__application_instance::<Versioned>,
    )
}

#[test]
fn an_applications_get_is_its_friendly_version_and_config_for_the_context_given() {
    let p = versioned();
    p.host
        .set_saved_config(&json!({"locked": true, "value": "v"}));
    let ctx = br#"{"name": "incus-lts-7.0", "version": "202511041800", "initialized": true}"#;
    assert_eq!(
        p.answer("get", ctx).unwrap(),
        r#"{"state":{"friendly_version":"7.0.0 [202511041800] as incus-lts-7.0"},"config":{"locked":true,"value":"v"}}"#
    );
    // No input: the default context.
    assert_eq!(
        p.answer("get", b"").unwrap(),
        r#"{"state":{"friendly_version":"7.0.0 [] as "},"config":{"locked":true,"value":"v"}}"#
    );
    assert_eq!(p.answer("running", ctx).unwrap(), r#"{"running":true}"#);
    assert_eq!(p.answer("running", b"").unwrap(), r#"{"running":false}"#);
    let err = p.answer("get", b"{\"name\": 1}").unwrap_err();
    assert_eq!(err.status, 400, "{err:?}");
    assert!(err.message.contains("name"), "{err:?}");
}

#[test]
fn undeclared_application_hooks_answer_not_supported_and_unknown_actions_upstreams_text() {
    let p = versioned();
    let m = sdk::__application_manifest::<Versioned>("1.0.0", plugin_api::API_VERSION);
    assert!(m.has(Hook::Action) && !m.has(Hook::Wipe) && !m.has(Hook::CanReplace));
    assert!(!m.has(Hook::Backup) && !m.has(Hook::FactoryReset) && m.backup.is_none());
    for op in ["wipe", "can-replace"] {
        let err = p.answer(op, b"").unwrap_err();
        assert_eq!(
            (err.status, err.message.as_str()),
            (500, "not supported"),
            "{op}"
        );
    }
    let err = p
        .plugin
        .backup(
            RSlice::from_slice(b"{}"),
            ByteSink_TO::from_ptr(&mut VecSink(vec![]), TD_Opaque),
        )
        .into_result()
        .unwrap_err();
    assert_eq!((err.status, err.message.as_str()), (500, "not supported"));
    assert_eq!(
        p.answer("action", br#"{"action": "echo", "config": {"a": "b"}}"#)
            .unwrap(),
        r#"{"a":"b"}"#
    );
    let err = p.answer("action", br#"{"action": "explode"}"#).unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (500, "unsupported action 'explode'")
    );
    // Restart's default is upstream's: nothing, successfully.
    assert_eq!(p.answer("restart", b"").unwrap(), "{}");
}
