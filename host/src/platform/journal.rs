//! Reading the journal, under the root prefix (like `journalctl --root`).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::exec::run_with_timeout;
use super::PlatformError;

/// The filters of `GET /1.0/debug/log`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    pub unit: Option<String>,
    pub boot: Option<String>,
    pub entries: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
}

/// Why a query is refused before anything runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadQuery(pub String);

fn safe_value(v: &str) -> bool {
    !v.is_empty() && !v.starts_with('-') && !v.chars().any(char::is_control)
}

impl LogQuery {
    /// Builds the `journalctl` arguments, refusing values that are not what they claim to
    /// be (upstream passes them through unchecked).
    pub fn args(&self, root: &Path) -> Result<Vec<String>, BadQuery> {
        let mut a: Vec<String> = vec![
            "journalctl".into(),
            "--no-pager".into(),
            "-o".into(),
            "json".into(),
        ];
        if root != Path::new("/") {
            a.push(format!("--root={}", root.display()));
        }
        if let Some(u) = &self.unit {
            let ok = safe_value(u)
                && u.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b":_.@-\\*".contains(&b));
            if !ok {
                return Err(BadQuery(format!("invalid unit '{u}'")));
            }
            a.extend(["-u".into(), u.clone()]);
        }
        let boot = self.boot.as_deref().unwrap_or("0");
        let boot_ok = boot.parse::<i64>().is_ok()
            || (boot.len() == 32 && boot.bytes().all(|b| b.is_ascii_hexdigit()));
        if !boot_ok {
            return Err(BadQuery(format!(
                "invalid boot '{boot}' (expected an offset such as 0 or -1, or a boot ID)"
            )));
        }
        a.extend(["-b".into(), boot.to_string()]);
        if let Some(n) = &self.entries {
            if !n.parse::<u64>().is_ok_and(|n| n > 0) {
                return Err(BadQuery(format!(
                    "invalid entries '{n}' (expected a positive number)"
                )));
            }
            a.extend(["-n".into(), n.clone()]);
        }
        for (flag, v) in [("--since", &self.since), ("--until", &self.until)] {
            if let Some(v) = v {
                if !safe_value(v) {
                    return Err(BadQuery(format!("invalid {} '{v}'", &flag[2..])));
                }
                a.extend([flag.to_string(), v.clone()]);
            }
        }
        Ok(a)
    }
}

/// Runs the query; each output line is one entry object.
pub fn read(root: &Path, q: &LogQuery) -> Result<Vec<Value>, Result<BadQuery, PlatformError>> {
    let argv = q.args(root).map_err(Ok)?;
    let out = run_with_timeout(&argv, b"", Duration::from_secs(60)).map_err(Err)?;
    if out.status != 0 {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(Err(PlatformError(format!(
            "Failed to run: {}: exit status {} ({})",
            argv.join(" "),
            out.status,
            stderr.trim()
        ))));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| Err(PlatformError(format!("cannot parse a journal entry: {e}"))))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_follow_the_query() {
        let q = LogQuery {
            unit: Some("incus-osd".into()),
            boot: Some("-1".into()),
            entries: Some("100".into()),
            since: Some("2026-01-01 00:00:00".into()),
            until: None,
        };
        assert_eq!(
            q.args(Path::new("/srv/root")).unwrap(),
            [
                "journalctl",
                "--no-pager",
                "-o",
                "json",
                "--root=/srv/root",
                "-u",
                "incus-osd",
                "-b",
                "-1",
                "-n",
                "100",
                "--since",
                "2026-01-01 00:00:00"
            ]
        );
        assert_eq!(
            LogQuery::default().args(Path::new("/")).unwrap(),
            ["journalctl", "--no-pager", "-o", "json", "-b", "0"]
        );
    }

    #[test]
    fn option_injection_and_nonsense_are_refused() {
        let bad = [
            LogQuery {
                unit: Some("--all".into()),
                ..Default::default()
            },
            LogQuery {
                unit: Some("a b".into()),
                ..Default::default()
            },
            LogQuery {
                boot: Some("yesterday".into()),
                ..Default::default()
            },
            LogQuery {
                entries: Some("0".into()),
                ..Default::default()
            },
            LogQuery {
                entries: Some("-5".into()),
                ..Default::default()
            },
            LogQuery {
                since: Some("--reverse".into()),
                ..Default::default()
            },
        ];
        for q in bad {
            assert!(q.args(Path::new("/")).is_err(), "{q:?}");
        }
    }
}
