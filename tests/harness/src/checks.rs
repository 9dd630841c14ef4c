//! Conformance checks every plugin must pass, whatever it does. Each check runs on a fresh
//! instance so the checks are independent.

use std::path::Path;

use plugin_api::{Hook, Kind};
use plugin_host::loader::LoadError;
use serde_json::{json, Map, Value};

use crate::Harness;

/// The outcome of one check. A skipped check (the plugin lacks the hooks it needs) has
/// `passed == true` and `skipped == true`; only `passed == false` is a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    pub name: String,
    pub passed: bool,
    pub skipped: bool,
    /// What was seen (on success), what went wrong (on failure) or why it was skipped.
    pub detail: String,
}

impl CheckOutcome {
    fn pass(name: &str, detail: impl Into<String>) -> Self {
        Self::new(name, true, false, detail)
    }
    fn fail(name: &str, detail: impl Into<String>) -> Self {
        Self::new(name, false, false, detail)
    }
    fn skip(name: &str, reason: impl Into<String>) -> Self {
        Self::new(name, true, true, reason)
    }
    fn new(name: &str, passed: bool, skipped: bool, detail: impl Into<String>) -> Self {
        CheckOutcome {
            name: name.to_string(),
            passed,
            skipped,
            detail: detail.into(),
        }
    }
}

/// The checks (by name) in the order they run.
pub const CHECKS: &[&str] = &[
    "manifest",
    "get-shape",
    "put-round-trip",
    "bad-json",
    "wrong-types",
    "backup-restore",
];

/// Runs every generic check on the library at `path`. When the library cannot be loaded,
/// the only outcome is a failed `manifest` check whose detail is the loader's reason.
pub fn run_generic_checks(path: impl AsRef<Path>) -> Vec<CheckOutcome> {
    let path = path.as_ref();
    let manifest = check_manifest(path);
    if !manifest.passed {
        return vec![manifest];
    }
    let mut out = vec![manifest];
    let checks: [(&str, Check); 5] = [
        ("get-shape", check_get_shape),
        ("put-round-trip", check_put_round_trip),
        ("bad-json", check_bad_json),
        ("wrong-types", check_wrong_types),
        ("backup-restore", check_backup_restore),
    ];
    for (name, check) in checks {
        let outcome = match Harness::load(path) {
            Ok(h) => match check(&h) {
                Ok(Some(detail)) => CheckOutcome::pass(name, detail),
                Ok(None) => CheckOutcome::skip(name, skip_reason(name, &h)),
                Err(detail) => CheckOutcome::fail(name, detail),
            },
            Err(e) => CheckOutcome::fail(name, format!("cannot load a fresh instance: {e:#}")),
        };
        out.push(outcome);
    }
    out
}

/// `Ok(Some(detail))`: passed; `Ok(None)`: not applicable; `Err(detail)`: failed.
type Check = fn(&Harness) -> Result<Option<String>, String>;

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
    if matches!(m.kind, Kind::Service | Kind::Application) {
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

fn has_shape(h: &Harness) -> bool {
    h.manifest().kind != Kind::Provider
}

fn skip_reason(name: &str, h: &Harness) -> String {
    let m = h.manifest();
    let needs: &[Hook] = match name {
        "get-shape" => &[Hook::Get],
        "put-round-trip" | "wrong-types" => &[Hook::Get, Hook::Put],
        "bad-json" => &[Hook::Put],
        "backup-restore" => &[Hook::Get, Hook::Backup, Hook::Restore, Hook::FactoryReset],
        _ => &[],
    };
    if name != "backup-restore" && !has_shape(h) {
        return "providers have no {state, config} document".to_string();
    }
    let missing: Vec<&str> = needs
        .iter()
        .filter(|hk| !m.has(**hk))
        .map(|hk| hk.op())
        .collect();
    format!("the plugin does not implement {}", missing.join(", "))
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

fn check_get_shape(h: &Harness) -> Result<Option<String>, String> {
    if !has_shape(h) || !h.manifest().has(Hook::Get) {
        return Ok(None);
    }
    let body = get_shaped(h)?;
    Ok(Some(format!("GET: {body}")))
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

fn put_and_compare(h: &Harness, body: &Value, what: &str) -> Result<(), String> {
    h.put(body)
        .map_err(|e| format!("PUT of {what} failed: {}", show(&e)))?;
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

fn check_put_round_trip(h: &Harness) -> Result<Option<String>, String> {
    let m = h.manifest();
    if !has_shape(h) || !m.has(Hook::Get) || !m.has(Hook::Put) {
        return Ok(None);
    }
    let body = get_shaped(h)?;
    put_and_compare(h, &body, "the GET body")?;
    let mut emptied = body.clone();
    let n = empty_arrays(&mut emptied["config"]);
    put_and_compare(h, &emptied, "the body with its arrays emptied")?;
    Ok(Some(format!(
        "config kept after PUT of the GET body and of the body with {n} array(s) emptied"
    )))
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

fn check_bad_json(h: &Harness) -> Result<Option<String>, String> {
    if !has_shape(h) || !h.manifest().has(Hook::Put) {
        return Ok(None);
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
        Ok(Some(format!(
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

fn check_wrong_types(h: &Harness) -> Result<Option<String>, String> {
    let m = h.manifest();
    if !has_shape(h) || !m.has(Hook::Get) || !m.has(Hook::Put) {
        return Ok(None);
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
        Ok(Some(format!(
            "{tried} of {} config field(s) refused with a wrong type",
            config.len()
        )))
    } else {
        Err(errors.join("; "))
    }
}

fn check_backup_restore(h: &Harness) -> Result<Option<String>, String> {
    let m = h.manifest();
    let needed = [Hook::Get, Hook::Backup, Hook::Restore, Hook::FactoryReset];
    if !needed.iter().all(|hk| m.has(*hk)) {
        return Ok(None);
    }
    let before = h.get().map_err(|e| format!("GET failed: {}", show(&e)))?;
    let archive = h
        .backup(&json!({}))
        .map_err(|e| format!("backup failed: {}", show(&e)))?;
    h.factory_reset()
        .map_err(|e| format!("factory-reset failed: {}", show(&e)))?;
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
    Ok(Some(format!(
        "backup ({} bytes), factory-reset and restore gave back the same GET",
        archive.len()
    )))
}

/// Asserts, from a plugin's own tests, that every generic check passes (a check the
/// plugin's hooks make irrelevant counts as passed, skipped).
pub fn assert_conformance(path: impl AsRef<Path>) {
    let outcomes = run_generic_checks(path);
    let failed: Vec<&CheckOutcome> = outcomes.iter().filter(|o| !o.passed).collect();
    assert!(failed.is_empty(), "generic checks failed: {failed:#?}");
    assert_eq!(outcomes.len(), CHECKS.len(), "{outcomes:#?}");
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
