//! Just enough YAML to read OpenFGA's preshared keys back from a `config.yaml` after a
//! restore: this plugin's own layout and the block style other YAML writers produce
//! (any indentation, plain, single- or double-quoted items, or a flow list).

/// The items of `authn.preshared.keys`.
pub fn preshared_keys(text: &str) -> Result<Vec<String>, String> {
    let mut path: Vec<(usize, String)> = vec![];
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("- ") {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let Some((key, rest)) = trimmed.split_once(':') else {
            continue;
        };
        path.retain(|(i, _)| *i < indent);
        path.push((indent, key.trim().to_string()));
        let keys: Vec<&str> = path.iter().map(|(_, k)| k.as_str()).collect();
        if keys != ["authn", "preshared", "keys"] {
            continue;
        }
        let rest = rest.trim();
        if let Some(flow) = rest.strip_prefix('[') {
            let inner = flow
                .strip_suffix(']')
                .ok_or("authn.preshared.keys: an unterminated list")?;
            return inner
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(scalar)
                .collect();
        }
        let mut out = vec![];
        while let Some(next) = lines.peek() {
            let t = next.trim_start();
            let i = next.len() - t.len();
            if t.is_empty() {
                lines.next();
                continue;
            }
            let item = if let Some(item) = t.strip_prefix("- ") {
                item
            } else if t == "-" {
                ""
            } else {
                break;
            };
            if i < indent {
                break;
            }
            out.push(scalar(item.trim())?);
            lines.next();
        }
        return Ok(out);
    }
    Err("no authn.preshared.keys".into())
}

fn scalar(s: &str) -> Result<String, String> {
    if s.starts_with('"') {
        return serde_json::from_str(s).map_err(|e| format!("a bad quoted key: {e}"));
    }
    if let Some(inner) = s.strip_prefix('\'') {
        let inner = inner.strip_suffix('\'').ok_or("a bad quoted key")?;
        return Ok(inner.replace("''", "'"));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_back_from_this_plugins_file_and_other_writers_layouts() {
        let ours = crate::config_file(&["A\"b".into(), "C2".into()]);
        assert_eq!(preshared_keys(&ours).unwrap(), ["A\"b", "C2"]);
        let other = "authn:\n    method: preshared\n    preshared:\n        keys:\n        - ABC\n        - 'it''s'\ngrpc:\n    addr: localhost:55123\n";
        assert_eq!(preshared_keys(other).unwrap(), ["ABC", "it's"]);
        let flow = "authn:\n  preshared:\n    keys: [X, \"Y\"]\n";
        assert_eq!(preshared_keys(flow).unwrap(), ["X", "Y"]);
        // Keys elsewhere do not count.
        assert!(preshared_keys("other:\n  preshared:\n    keys:\n      - Z\n").is_err());
        assert_eq!(
            preshared_keys("authn:\n  preshared:\n    keys:\n").unwrap(),
            Vec::<String>::new()
        );
    }
}
