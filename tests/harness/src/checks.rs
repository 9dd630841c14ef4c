//! Conformance checks every plugin must pass, whatever it does. Each check runs on a fresh
//! instance so the checks are independent.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use plugin_api::application::BackupSpec;
use plugin_api::sdk::{PANIC_PREFIX, RESET_NOT_SUPPORTED};
use plugin_api::{Hook, Kind};
use plugin_host::loader::LoadError;
use serde_json::{json, Map, Value};

use crate::Harness;

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    Passed,
    Failed,
    /// Not applicable: the plugin lacks what the check needs (a hook, a kind). Neither a
    /// pass nor a failure.
    Skipped,
}

impl CheckStatus {
    /// `pass`, `fail` or `skip` (the command's words).
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passed => "pass",
            CheckStatus::Failed => "fail",
            CheckStatus::Skipped => "skip",
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    pub name: String,
    pub status: CheckStatus,
    /// What was seen (on success), what went wrong (on failure) or why it was skipped.
    pub detail: String,
}

impl CheckOutcome {
    fn pass(name: &str, detail: impl Into<String>) -> Self {
        Self::new(name, CheckStatus::Passed, detail)
    }
    fn fail(name: &str, detail: impl Into<String>) -> Self {
        Self::new(name, CheckStatus::Failed, detail)
    }
    fn skip(name: &str, reason: impl Into<String>) -> Self {
        Self::new(name, CheckStatus::Skipped, reason)
    }
    fn new(name: &str, status: CheckStatus, detail: impl Into<String>) -> Self {
        CheckOutcome {
            name: name.to_string(),
            status,
            detail: detail.into(),
        }
    }

    pub fn passed(&self) -> bool {
        self.status == CheckStatus::Passed
    }

    pub fn failed(&self) -> bool {
        self.status == CheckStatus::Failed
    }

    pub fn skipped(&self) -> bool {
        self.status == CheckStatus::Skipped
    }
}

/// The checks (by name) in the order they run.
pub const CHECKS: &[&str] = &[
    "manifest",
    "get-shape",
    "put-round-trip",
    "bad-json",
    "wrong-types",
    "reset",
    "backup-restore",
    "provider-ops",
];

/// Runs every generic check on the library at `path`. When the library cannot be loaded,
/// the only outcome is a failed `manifest` check whose detail is the loader's reason.
pub fn run_generic_checks(path: impl AsRef<Path>) -> Vec<CheckOutcome> {
    let path = path.as_ref();
    let manifest = check_manifest(path);
    if !manifest.passed() {
        return vec![manifest];
    }
    let mut out = vec![manifest];
    let checks: [(&str, Check); 7] = [
        ("get-shape", check_get_shape),
        ("put-round-trip", check_put_round_trip),
        ("bad-json", check_bad_json),
        ("wrong-types", check_wrong_types),
        ("reset", check_reset),
        ("backup-restore", check_backup_restore),
        ("provider-ops", check_provider_ops),
    ];
    for (name, check) in checks {
        let loaded = if name == "backup-restore" {
            // An application runs system tools on its way up and down (ZFS, systemd's):
            // here each one succeeds without output, as on a machine where all is well.
            Harness::load_with(path, |host| host.on_command(&[], crate::Reply::ok("")))
        } else {
            Harness::load(path)
        };
        let outcome = match loaded {
            Ok(h) => match check(&h) {
                Ok(Seen::Pass(detail)) => CheckOutcome::pass(name, detail),
                Ok(Seen::Skip(reason)) => CheckOutcome::skip(name, reason),
                Err(detail) => CheckOutcome::fail(name, detail),
            },
            Err(e) => CheckOutcome::fail(name, format!("cannot load a fresh instance: {e:#}")),
        };
        out.push(outcome);
    }
    out
}

/// What a check saw when it did not fail.
enum Seen {
    Pass(String),
    /// Not applicable, and why.
    Skip(String),
}

/// `Err(detail)`: the check failed.
type Check = fn(&Harness) -> Result<Seen, String>;

/// The loader's short reason for a failed load.
fn load_reason(e: &anyhow::Error) -> String {
    match e.downcast_ref::<LoadError>() {
        Some(le) => format!("{} check failed: {le}", le.check()),
        None => format!("{e:#}"),
    }
}

fn check_manifest(path: &Path) -> CheckOutcome {
    const NAME: &str = "manifest";
    let h = match Harness::load(path) {
        Ok(h) => h,
        Err(e) => return CheckOutcome::fail(NAME, load_reason(&e)),
    };
    let m = h.manifest();
    // Every kind has a config document: a provider's is the `config` of its
    // `/1.0/system/provider` document.
    let missing: Vec<&str> = [Hook::Get, Hook::Put]
        .into_iter()
        .filter(|hk| !m.has(*hk))
        .map(Hook::op)
        .collect();
    if !missing.is_empty() {
        return CheckOutcome::fail(
            NAME,
            format!("a {:?} must implement {}", m.kind, missing.join(", ")),
        );
    }
    CheckOutcome::pass(
        NAME,
        format!(
            "{} {} {} (plugin-api {})",
            kind_name(m.kind),
            m.name,
            m.version,
            m.api_version
        ),
    )
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Service => "service",
        Kind::Application => "application",
        Kind::Provider => "provider",
    }
}

/// `Some(skip)` when the plugin lacks one of `hooks`.
fn needs(h: &Harness, hooks: &[Hook]) -> Option<Seen> {
    let m = h.manifest();
    let missing: Vec<&str> = hooks
        .iter()
        .filter(|hk| !m.has(**hk))
        .map(|hk| hk.op())
        .collect();
    (!missing.is_empty()).then(|| {
        Seen::Skip(format!(
            "the plugin does not implement {}",
            missing.join(", ")
        ))
    })
}

fn show(e: &plugin_api::abi::PluginError) -> String {
    format!("{} {}", e.status, e.message)
}

/// GET, checked to be `{"state": {..}, "config": {..}}`; returns it.
fn get_shaped(h: &Harness) -> Result<Value, String> {
    let body = h.get().map_err(|e| format!("GET failed: {}", show(&e)))?;
    let Some(obj) = body.as_object() else {
        return Err(format!("GET returned {body}, not an object"));
    };
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    if keys != ["config", "state"] {
        return Err(format!(
            "GET returned the keys {keys:?}, expected exactly \"state\" and \"config\""
        ));
    }
    for k in ["state", "config"] {
        if !obj[k].is_object() {
            return Err(format!("GET's \"{k}\" is {}, not an object", obj[k]));
        }
    }
    Ok(body)
}

fn check_get_shape(h: &Harness) -> Result<Seen, String> {
    if let Some(skip) = needs(h, &[Hook::Get]) {
        return Ok(skip);
    }
    let body = get_shaped(h)?;
    Ok(Seen::Pass(format!("GET: {body}")))
}

/// Empties every array inside `v` (recursing through objects); returns how many.
fn empty_arrays(v: &mut Value) -> usize {
    match v {
        Value::Array(a) => {
            a.clear();
            1
        }
        Value::Object(o) => o.values_mut().map(empty_arrays).sum(),
        _ => 0,
    }
}

/// Another value of the same JSON type as `v`, for a config that differs from the
/// default (`None` for null, arrays and objects, and numbers that cannot grow).
fn changed(v: &Value) -> Option<Value> {
    Some(match v {
        Value::Bool(b) => json!(!b),
        Value::String(s) if s.is_empty() => json!("conformance"),
        Value::String(s) => json!(format!("{s}-conformance")),
        Value::Number(n) => {
            if let Some(i) = n.as_u64() {
                json!(i.checked_add(1)?)
            } else if let Some(i) = n.as_i64() {
                json!(i.checked_add(1)?)
            } else {
                json!(n.as_f64()? + 1.0)
            }
        }
        Value::Null | Value::Array(_) | Value::Object(_) => return None,
    })
}

fn put_and_compare(h: &Harness, body: &Value, what: &str) -> Result<(), String> {
    h.put(body)
        .map_err(|e| format!("PUT of {what} failed: {}", show(&e)))?;
    read_back(h, body, what)
}

/// GET's config must be `body`'s after a PUT of `body`.
fn read_back(h: &Harness, body: &Value, what: &str) -> Result<(), String> {
    let after = h
        .get()
        .map_err(|e| format!("GET after PUT of {what} failed: {}", show(&e)))?;
    if after["config"] != body["config"] {
        return Err(format!(
            "after PUT of {what}, GET's config is {} instead of {}",
            after["config"], body["config"]
        ));
    }
    Ok(())
}

/// PUTs the config of `body` with one top-level field after another changed (see
/// [`changed`]), keeping each change the plugin accepts; each accepted change must read
/// back. A change the plugin refuses (a value it finds invalid, a tool the harness does
/// not script) is dropped. Returns the last body accepted and the fields changed.
fn put_changed_fields(h: &Harness, body: &Value) -> Result<(Value, Vec<String>), String> {
    let mut current = body.clone();
    let mut fields = vec![];
    let config = body["config"].as_object().cloned().unwrap_or_default();
    for (field, value) in &config {
        let Some(new) = changed(value) else {
            continue;
        };
        let mut candidate = current.clone();
        candidate["config"][field] = new.clone();
        if h.put(&candidate).is_err() {
            continue;
        }
        read_back(h, &candidate, &format!("the config with {field} = {new}"))?;
        current = candidate;
        fields.push(field.clone());
    }
    Ok((current, fields))
}

fn check_put_round_trip(h: &Harness) -> Result<Seen, String> {
    if let Some(skip) = needs(h, &[Hook::Get, Hook::Put]) {
        return Ok(skip);
    }
    let mut body = get_shaped(h)?;
    let mut initialized = "";
    if h.put(&body).is_err() && h.manifest().kind == Kind::Application {
        // An application's config may need what its initialization gives it (OpenFGA's
        // first token): a PUT only ever reaches an installed, initialized application.
        h.invoke(Hook::Initialize.op(), &h.app_context())
            .map_err(|e| {
                format!(
                    "the GET body was refused, and initialize failed: {}",
                    show(&e)
                )
            })?;
        body = get_shaped(h)?;
        initialized = " (after the application's initialization)";
    }
    put_and_compare(h, &body, "the GET body")?;
    let mut emptied = body.clone();
    let n = empty_arrays(&mut emptied["config"]);
    let emptied_note = match put_or_refuse_cleanly(h, &emptied, "the body with its arrays emptied")?
    {
        None => format!("of the body with {n} array(s) emptied"),
        Some(refusal) => {
            format!("the body with {n} array(s) emptied refused with nothing changed ({refusal})")
        }
    };
    let (_, fields) = put_changed_fields(h, &body)?;
    Ok(Seen::Pass(format!(
        "config kept after PUT of the GET body{initialized}, {emptied_note} and with {}",
        changed_note(&fields)
    )))
}

/// A PUT of `body` that is either accepted and read back (`None`), or refused with a
/// message and nothing changed (`Some(status and message)`): a config may need a
/// non-empty list (upstream refuses OpenFGA without a token).
fn put_or_refuse_cleanly(h: &Harness, body: &Value, what: &str) -> Result<Option<String>, String> {
    let (state, saves) = (h.host().state(), h.host().save_count());
    match h.put(body) {
        Ok(_) => read_back(h, body, what).map(|()| None),
        Err(e) if e.message.trim().is_empty() => {
            Err(format!("PUT of {what} refused with an empty message"))
        }
        Err(e) => {
            if h.host().state() != state || h.host().save_count() != saves {
                return Err(format!(
                    "PUT of {what} was refused ({}) but the state document changed",
                    show(&e)
                ));
            }
            Ok(Some(show(&e)))
        }
    }
}

/// `"2 field(s) changed (a, b)"`, or that none could be.
fn changed_note(fields: &[String]) -> String {
    if fields.is_empty() {
        "no field changed (the plugin accepted no changed value)".to_string()
    } else {
        format!("{} field(s) changed ({})", fields.len(), fields.join(", "))
    }
}

/// A PUT the plugin must refuse with 400 without saving anything; `Err` says what went
/// wrong, and `expect_in_message` must appear in the message.
fn refused(
    h: &Harness,
    body: &[u8],
    what: &str,
    expect_in_message: Option<&str>,
) -> Result<(), String> {
    let (state, saves) = (h.host().state(), h.host().save_count());
    match h.put_raw(body) {
        Ok(v) => {
            return Err(format!(
                "{what}: PUT succeeded ({v}) instead of answering 400"
            ))
        }
        Err(e) if e.status != 400 => {
            return Err(format!("{what}: answered {} instead of 400", show(&e)))
        }
        Err(e) if e.message.trim().is_empty() => {
            return Err(format!("{what}: answered 400 with an empty message"))
        }
        Err(e) => {
            if let Some(field) = expect_in_message {
                if !e.message.contains(field) {
                    return Err(format!(
                        "{what}: the message {:?} does not name the field {field:?}",
                        e.message.as_str()
                    ));
                }
            }
        }
    }
    if h.host().state() != state || h.host().save_count() != saves {
        return Err(format!("{what}: the state document changed"));
    }
    Ok(())
}

fn check_bad_json(h: &Harness) -> Result<Seen, String> {
    if let Some(skip) = needs(h, &[Hook::Put]) {
        return Ok(skip);
    }
    let bodies: [(&[u8], &str); 3] = [
        (b"{not json", "`{not json`"),
        (b"", "an empty body"),
        (b"[]", "`[]`"),
    ];
    let errors: Vec<String> = bodies
        .iter()
        .filter_map(|(body, what)| refused(h, body, what, None).err())
        .collect();
    if errors.is_empty() {
        Ok(Seen::Pass(format!(
            "{} malformed bodies refused with 400",
            bodies.len()
        )))
    } else {
        Err(errors.join("; "))
    }
}

/// A value of another JSON type than `v` (`None` for null: any type may fit it).
fn other_type(v: &Value) -> Option<Value> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(_) => json!("x"),
        Value::String(_) => json!(12),
        Value::Number(_) => json!("x"),
        Value::Array(_) => json!({}),
        Value::Object(_) => json!([]),
    })
}

fn check_wrong_types(h: &Harness) -> Result<Seen, String> {
    if let Some(skip) = needs(h, &[Hook::Get, Hook::Put]) {
        return Ok(skip);
    }
    let body = get_shaped(h)?;
    let config: &Map<String, Value> = body["config"].as_object().expect("checked by get_shaped");
    let (mut tried, mut errors) = (0, vec![]);
    for (field, value) in config {
        let Some(wrong) = other_type(value) else {
            continue;
        };
        tried += 1;
        let mut bad = body.clone();
        bad["config"][field] = wrong.clone();
        let what = format!("config.{field} = {wrong}");
        if let Err(e) = refused(h, bad.to_string().as_bytes(), &what, Some(field)) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(Seen::Pass(format!(
            "{tried} of {} config field(s) refused with a wrong type",
            config.len()
        )))
    } else {
        Err(errors.join("; "))
    }
}

/// Whether `e` says the plugin has no reset: the SDK's text, or an unknown operation.
fn no_reset(e: &plugin_api::abi::PluginError) -> bool {
    (e.status == 500 && e.message.as_str() == RESET_NOT_SUPPORTED) || e.status == 501
}

/// A service advertises `reset` exactly when it implements it. The daemon answers a reset
/// of a service that does not advertise it itself (500, [`RESET_NOT_SUPPORTED`], as
/// upstream) without calling the plugin, so an unadvertised reset is unreachable, and an
/// advertised one must do something else than say it is not supported.
fn check_reset(h: &Harness) -> Result<Seen, String> {
    if h.manifest().kind != Kind::Service {
        return Ok(Seen::Skip("only services have reset".to_string()));
    }
    // The plugin itself, past the host's gate.
    let answer = h.invoke_raw(Hook::Reset.op(), b"");
    let answer_text = match &answer {
        Ok(out) => format!("succeeded ({})", String::from_utf8_lossy(out)),
        Err(e) => format!("answered {}", show(e)),
    };
    if h.manifest().has(Hook::Reset) {
        return match &answer {
            Err(e) if no_reset(e) => Err(format!(
                "the manifest advertises reset, but the plugin {answer_text}"
            )),
            _ => Ok(Seen::Pass(format!(
                "reset advertised and implemented (in the harness it {answer_text})"
            ))),
        };
    }
    match &answer {
        Err(e) if no_reset(e) => {}
        _ => {
            return Err(format!(
                "the plugin implements reset (it {answer_text}) but its manifest does not \
                 advertise it: the daemon answers {RESET_NOT_SUPPORTED:?} without calling it"
            ))
        }
    }
    Ok(Seen::Pass(format!(
        "reset neither advertised nor implemented: the daemon answers 500 {RESET_NOT_SUPPORTED:?}"
    )))
}

/// Every entry under the declared backup root that a backup keeps (not excluded, the
/// backup not `complete`): its path, kind, mode, and a file's size, mtime and content or a
/// link's target.
fn backed_up_tree(h: &Harness, spec: &BackupSpec) -> Result<Vec<String>, String> {
    fn walk(
        dir: &Path,
        rel: &str,
        spec: &BackupSpec,
        out: &mut Vec<String>,
    ) -> std::io::Result<()> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(rel))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        for name in names {
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let excluded = spec
                .excluded
                .iter()
                .chain(&spec.excluded_unless_complete)
                .any(|p| r.starts_with(p.as_str()));
            if excluded {
                continue;
            }
            let path = dir.join(&r);
            let meta = std::fs::symlink_metadata(&path)?;
            let mode = meta.permissions().mode() & 0o7777;
            let what = if meta.is_symlink() {
                format!("link to {}", std::fs::read_link(&path)?.display())
            } else if meta.is_dir() {
                format!("dir {mode:o}")
            } else {
                let data = std::fs::read(&path)?;
                format!(
                    "file {mode:o} mtime {} {:?}",
                    meta.mtime(),
                    String::from_utf8_lossy(&data)
                )
            };
            out.push(format!("{r}: {what}"));
            if meta.is_dir() {
                walk(dir, &r, spec, out)?;
            }
        }
        Ok(())
    }
    let root = h.host().root().join(spec.root.trim_start_matches('/'));
    let mut out = vec![];
    if root.exists() {
        walk(&root, "", spec, &mut out)
            .map_err(|e| format!("cannot read the backup root {}: {e}", spec.root))?;
    }
    Ok(out)
}

/// Backup, factory reset (the plugin's wipe, as the daemon runs it), restore: GET (the
/// plugin's own answer) must be as before, and for a declared backup every entry the
/// backup keeps must be back as it was. An application without any backup is skipped.
fn check_backup_restore(h: &Harness) -> Result<Seen, String> {
    let m = h.manifest();
    if m.kind != Kind::Application {
        return Ok(Seen::Skip("only applications have backups".to_string()));
    }
    let declared = m.backup.clone();
    if declared.is_none() && !(m.has(Hook::Backup) && m.has(Hook::Restore)) {
        return Ok(Seen::Skip(
            "no backup: the application declares neither BACKUP nor STREAMING_BACKUP".to_string(),
        ));
    }
    let tree = |h: &Harness| match &declared {
        Some(spec) => backed_up_tree(h, spec),
        None => Ok(vec![]),
    };
    // The application as an install leaves it: started, then initialized. What these need
    // beyond the harness (a daemon's API, another application's certificate) is not here:
    // a failure is noted, not failed; the round trip is about the data.
    let mut notes = vec![];
    let mut initialize_fails = false;
    let ctx = h.app_context();
    for hook in [Hook::Start, Hook::Initialize] {
        if let Err(e) = h.invoke(hook.op(), &ctx) {
            notes.push(format!(
                "{} could not run in the harness ({})",
                hook.op(),
                show(&e)
            ));
            initialize_fails |= hook == Hook::Initialize;
        }
    }
    // A config other than the default, where the plugin takes one: a backup that loses
    // the data would otherwise give back what a factory reset leaves.
    let changed_fields = if m.has(Hook::Put) {
        let body = get_shaped(h)?;
        put_changed_fields(h, &body)?.1
    } else {
        vec![]
    };
    if let Some(spec) = &declared {
        let root = h.host().root().join(spec.root.trim_start_matches('/'));
        if !root.exists() {
            // Nothing made the data directory here: a file of the check's own gives the
            // round trip something to carry.
            let file = root.join("incus-osd-check").join("data");
            std::fs::create_dir_all(file.parent().expect("a parent"))
                .and_then(|()| std::fs::write(&file, "written by the conformance check\n"))
                .map_err(|e| format!("cannot seed {}: {e}", file.display()))?;
            notes.push(format!(
                "the check seeded {} (nothing else made it)",
                spec.root
            ));
        }
    }
    let before = h.get().map_err(|e| format!("GET failed: {}", show(&e)))?;
    let tree_before = tree(h)?;
    let archive = h
        .backup(&json!({}))
        .map_err(|e| format!("backup failed: {}", show(&e)))?;
    let wiped = m.has(Hook::Wipe);
    let mut reset = None;
    if wiped {
        // The daemon's factory reset: stop and wipe must succeed; start and initialize as
        // at the bring-up above (initialize not tried again when it failed there).
        for hook in [Hook::Stop, Hook::Wipe, Hook::Start, Hook::Initialize] {
            if !m.has(hook) || (hook == Hook::Initialize && initialize_fails) {
                continue;
            }
            match h.invoke(hook.op(), &ctx) {
                Ok(_) => {}
                Err(e) if matches!(hook, Hook::Stop | Hook::Wipe) => {
                    return Err(format!("factory-reset failed: {}: {}", hook.op(), show(&e)))
                }
                Err(e) => notes.push(format!(
                    "the factory reset's {} could not run in the harness ({})",
                    hook.op(),
                    show(&e)
                )),
            }
        }
        let get = h
            .get()
            .map_err(|e| format!("GET after factory-reset failed: {}", show(&e)))?;
        reset = Some((get, tree(h)?));
    }
    h.restore(&archive)
        .map_err(|e| format!("restore failed: {}", show(&e)))?;
    let after = h
        .get()
        .map_err(|e| format!("GET after restore failed: {}", show(&e)))?;
    if after != before {
        return Err(format!(
            "GET after restore is {after}, before backup it was {before}"
        ));
    }
    let tree_after = tree(h)?;
    if tree_after != tree_before {
        let lost: Vec<&String> = tree_before
            .iter()
            .filter(|e| !tree_after.contains(e))
            .collect();
        let new: Vec<&String> = tree_after
            .iter()
            .filter(|e| !tree_before.contains(e))
            .collect();
        return Err(format!(
            "after restore the backup root differs: missing or changed {lost:?}, new {new:?}"
        ));
    }
    let how = match &declared {
        Some(spec) => format!(
            "declared backup of {} ({} entries kept)",
            spec.root,
            tree_before.len()
        ),
        None => "the plugin's own backup".to_string(),
    };
    let note = match &reset {
        None => {
            "; the application has no wipe hook, so the restore went over the live data".to_string()
        }
        Some((get, t)) if *get == before && *t == tree_before => {
            "; the factory reset changed nothing the check sees, so the round trip proves little"
                .to_string()
        }
        Some(_) => String::new(),
    };
    let note = if notes.is_empty() {
        note
    } else {
        format!("{note}; {}", notes.join("; "))
    };
    Ok(Seen::Pass(format!(
        "{how}, {} bytes: factory-reset and restore gave back the same GET{}, with {} \
         first{note}",
        archive.len(),
        if declared.is_some() { " and data" } else { "" },
        changed_note(&changed_fields)
    )))
}

/// A provider's typed operations: malformed input to `lookup` and `fetch` is refused with
/// a 400 that says something, `clear-cache` succeeds, and no operation panics (`register`,
/// `refresh` and `deregister` may refuse, as upstream's providers do, but with a message).
fn check_provider_ops(h: &Harness) -> Result<Seen, String> {
    if h.manifest().kind != Kind::Provider {
        return Ok(Seen::Skip(
            "only providers have provider operations".to_string(),
        ));
    }
    let mut errors = vec![];
    for (op, body, what) in [
        (Hook::Lookup, &b"{not json"[..], "`{not json`"),
        (Hook::Lookup, b"{}", "`{}`"),
        (Hook::Fetch, b"[]", "`[]`"),
    ] {
        match h.invoke_raw(op.op(), body) {
            Ok(out) => errors.push(format!(
                "{} of {what} succeeded ({}) instead of answering 400",
                op.op(),
                String::from_utf8_lossy(&out)
            )),
            Err(e) if e.status != 400 || e.message.trim().is_empty() => errors.push(format!(
                "{} of {what} answered {} instead of 400 with a message",
                op.op(),
                show(&e)
            )),
            Err(_) => {}
        }
    }
    if let Err(e) = h.invoke_raw(Hook::ClearCache.op(), b"") {
        errors.push(format!("clear-cache failed: {}", show(&e)));
    }
    for op in [Hook::Register, Hook::Refresh, Hook::Deregister] {
        if let Err(e) = h.invoke_raw(op.op(), b"") {
            if e.message.starts_with(PANIC_PREFIX) || e.message.trim().is_empty() {
                errors.push(format!("{} answered {}", op.op(), show(&e)));
            }
        }
    }
    if errors.is_empty() {
        Ok(Seen::Pass(
            "malformed lookup and fetch refused with 400; clear-cache, register, refresh and \
             deregister answer without panicking"
                .to_string(),
        ))
    } else {
        Err(errors.join("; "))
    }
}

/// Asserts, from a plugin's own tests, that no generic check fails (a check the plugin's
/// hooks make irrelevant is skipped, which is not a failure); returns the outcomes.
pub fn assert_conformance(path: impl AsRef<Path>) -> Vec<CheckOutcome> {
    let outcomes = run_generic_checks(path);
    let failed: Vec<&CheckOutcome> = outcomes.iter().filter(|o| o.failed()).collect();
    assert!(failed.is_empty(), "generic checks failed: {failed:#?}");
    assert_eq!(outcomes.len(), CHECKS.len(), "{outcomes:#?}");
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_gets_another_type() {
        for v in [
            json!(true),
            json!("s"),
            json!(1),
            json!(1.5),
            json!([1]),
            json!({"a": 1}),
        ] {
            let other = other_type(&v).unwrap();
            assert_ne!(
                std::mem::discriminant(&other),
                std::mem::discriminant(&v),
                "{v}"
            );
        }
        assert_eq!(other_type(&Value::Null), None);
    }

    #[test]
    fn arrays_are_emptied_recursively() {
        let mut v = json!({"a": [1, 2], "b": {"c": ["x"], "d": 1}, "e": "s"});
        assert_eq!(empty_arrays(&mut v), 2);
        assert_eq!(v, json!({"a": [], "b": {"c": [], "d": 1}, "e": "s"}));
    }
}
