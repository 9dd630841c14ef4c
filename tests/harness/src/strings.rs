//! Control characters in a config's string fields: the cases a plugin's tests put to it.
//! Config strings end up in files and on command lines, so every one of them refuses line
//! breaks, NUL and other control characters, or, in a field holding text (a PEM file),
//! NUL and the controls other than line breaks and tabs
//! (`plugin_api::validate::config_strings`).

use serde_json::Value;

/// One refused value: a full config with a control character in one field.
#[derive(Debug, Clone)]
pub struct ControlCase {
    /// The field as the error names it (`targets[0].address`).
    pub field: String,
    /// What was appended to the field's value (followed by an `x`).
    pub bad: &'static str,
    /// The full config with the bad value.
    pub config: Value,
    /// The 400 message expected.
    pub message: String,
}

/// Appended to a one-line field: each must be refused.
const ONE_LINE_BAD: [&str; 4] = ["\n", "\r", "\0", "\t"];
/// Appended to a text field: files hold line breaks and tabs, not NUL, escape sequences or
/// DEL.
const TEXT_BAD: [&str; 3] = ["\0", "\u{1b}[2J", "\u{7f}"];

/// The JSON pointer of every string in `v`, in document order (object keys sorted).
pub fn string_pointers(v: &Value) -> Vec<String> {
    fn walk(v: &Value, at: &str, out: &mut Vec<String>) {
        match v {
            Value::String(_) => out.push(at.to_string()),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{at}/{i}"), out);
                }
            }
            Value::Object(map) => {
                for (k, item) in map {
                    walk(item, &format!("{at}/{k}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = vec![];
    walk(v, "", &mut out);
    out
}

/// Every control-character case of `full`, a config with every string field set to a
/// valid value. `fields` names each string field by its JSON pointer and by the name the
/// error uses (`("/targets/0/address", "targets[0].address")`), in document order; it
/// must list every string of `full` (asserted, so a field added later gets a case).
/// `text` lists the pointers of the fields holding text. Each case is `full` with one
/// refused character and an `x` appended to one field, with the 400 message expected:
/// check each with [`crate::Harness::assert_config_refused`].
#[track_caller]
pub fn control_character_cases(
    full: &Value,
    fields: &[(&str, &str)],
    text: &[&str],
) -> Vec<ControlCase> {
    assert_eq!(
        string_pointers(full),
        fields.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        "every string field has a case"
    );
    for t in text {
        assert!(
            fields.iter().any(|(p, _)| p == t),
            "text field {t} is not among the fields"
        );
    }
    let mut cases = vec![];
    for (pointer, field) in fields {
        let (bad, why): (&[&'static str], _) = if text.contains(pointer) {
            (
                &TEXT_BAD,
                "NUL and control characters other than line breaks and tabs are not allowed",
            )
        } else {
            (
                &ONE_LINE_BAD,
                "line breaks, NUL and other control characters are not allowed",
            )
        };
        for bad in bad {
            let mut config = full.clone();
            let value = config
                .pointer_mut(pointer)
                .unwrap_or_else(|| panic!("{pointer} is not in the config"));
            let now = value
                .as_str()
                .unwrap_or_else(|| panic!("{pointer} is not a string"));
            *value = Value::String(format!("{now}{bad}x"));
            cases.push(ControlCase {
                field: field.to_string(),
                bad,
                config,
                message: format!("{field}: {why}"),
            });
        }
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_field_gets_each_refused_character_and_its_message() {
        let full = json!({"a": "1", "b": ["2"], "n": 3, "pem": "k"});
        let cases = control_character_cases(
            &full,
            &[("/a", "a"), ("/b/0", "b[0]"), ("/pem", "pem")],
            &["/pem"],
        );
        let got: Vec<(&str, &str, String)> = cases
            .iter()
            .map(|c| (c.field.as_str(), c.bad, c.config.to_string()))
            .collect();
        assert_eq!(got.len(), 4 + 4 + 3);
        assert_eq!(
            got[0],
            (
                "a",
                "\n",
                json!({"a": "1\nx", "b": ["2"], "n": 3, "pem": "k"}).to_string()
            )
        );
        assert_eq!(
            got[4].2,
            json!({"a": "1", "b": ["2\nx"], "n": 3, "pem": "k"}).to_string()
        );
        assert_eq!(
            cases[4].message,
            "b[0]: line breaks, NUL and other control characters are not allowed"
        );
        assert_eq!(
            got[8..].iter().map(|g| g.1).collect::<Vec<_>>(),
            ["\0", "\u{1b}[2J", "\u{7f}"]
        );
        assert_eq!(
            cases[8].message,
            "pem: NUL and control characters other than line breaks and tabs are not allowed"
        );
    }

    #[test]
    #[should_panic(expected = "every string field has a case")]
    fn a_string_field_without_a_case_is_caught() {
        control_character_cases(&json!({"a": "1", "b": "2"}), &[("/a", "a")], &[]);
    }
}
