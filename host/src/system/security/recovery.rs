//! Recovery keys: systemd's recovery-key format for the keys the daemon makes, and
//! upstream's complexity rules for the ones an operator supplies.
//!
//! A recovery key is 256 random bits written in "modhex" (the 16 letters
//! `cbdefghijklnrtuv`, which read the same on most keyboard layouts), as 8 groups of 8
//! letters joined with dashes: 71 characters.

/// The modhex alphabet: nibble `n` is `MODHEX[n]`.
pub const MODHEX: &[u8; 16] = b"cbdefghijklnrtuv";

/// A fresh recovery key from the system's random source, drawn again (a few times at
/// most) when it happens to fail the complexity rules operators' keys must pass, so that
/// a key the daemon made is always one an operator could have given.
pub fn generate() -> Result<String, String> {
    let mut last = String::new();
    for _ in 0..32 {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|e| format!("no random bytes: {e}"))?;
        last = format_key(&bytes);
        if check_complexity(&last).is_ok() {
            return Ok(last);
        }
    }
    Err(format!(
        "cannot make a recovery key that passes the complexity rules (last: {})",
        check_complexity(&last).unwrap_err()
    ))
}

/// The recovery key text of 32 bytes.
pub fn format_key(bytes: &[u8; 32]) -> String {
    let mut out = String::with_capacity(71);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            out.push('-');
        }
        out.push(MODHEX[(b >> 4) as usize] as char);
        out.push(MODHEX[(b & 0xf) as usize] as char);
    }
    out
}

/// Whether `key` has the recovery-key format (8 dash-separated groups of 8 modhex letters).
pub fn is_recovery_key(key: &str) -> bool {
    let groups: Vec<&str> = key.split('-').collect();
    groups.len() == 8
        && groups
            .iter()
            .all(|g| g.len() == 8 && g.bytes().all(|b| MODHEX.contains(&b)))
}

/// The shortest key accepted.
pub const MIN_LENGTH: usize = 15;
/// The fewest different characters (case-folded) a key must have.
pub const MIN_DIFFERENT: usize = 5;

/// Checks an operator's key as upstream does (the crunchy library with its options: at
/// least 15 bytes, 5 different characters, one symbol, not too systematic; no digit needed,
/// as systemd's own keys have none; no dictionary). The error texts are the library's.
pub fn check_complexity(key: &str) -> Result<(), String> {
    if key.trim().is_empty() {
        return Err("Password is empty or all whitespace".into());
    }
    if key.len() < MIN_LENGTH {
        return Err("Password is too short".into());
    }
    let mut seen: Vec<char> = key.chars().flat_map(char::to_lowercase).collect();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() < MIN_DIFFERENT {
        return Err("Password does not contain enough different/unique characters".into());
    }
    // A symbol: anything but an ASCII letter, digit or underscore and ASCII white space.
    let symbol = key
        .chars()
        .any(|c| !(c.is_ascii_alphanumeric() || c == '_' || " \t\n\r\x0c".contains(c)));
    if !symbol {
        return Err("Password does not contain any special symbols".into());
    }
    // Neighbouring characters one code point apart ("abc", "321"), as cracklib counts.
    let chars: Vec<u32> = key.chars().map(u32::from).collect();
    let systematic = chars
        .windows(2)
        .filter(|w| w[1] == w[0] + 1 || w[1] + 1 == w[0])
        .count();
    let allowed = (3.0 + 0.09 * key.len() as f64) as usize;
    if systematic > allowed {
        return Err("Password is too systematic".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_systemds_format() {
        let k = generate().unwrap();
        assert_eq!(k.len(), 71);
        assert!(is_recovery_key(&k), "{k}");
        assert_ne!(k, generate().unwrap());
        // Nibbles map high first: 0x00 -> "cc", 0x1f -> "bv", 0xff -> "vv".
        let mut b = [0u8; 32];
        b[0] = 0x1f;
        b[31] = 0xff;
        let k = format_key(&b);
        assert!(k.starts_with("bvcccccc-"), "{k}");
        assert!(k.ends_with("-ccccccvv"), "{k}");
        // Every key made passes the complexity rules operators' keys must pass (a random
        // modhex key alone sometimes does not: it is drawn again).
        for _ in 0..300 {
            check_complexity(&generate().unwrap()).unwrap();
        }
    }

    #[test]
    fn the_format_check_refuses_near_misses() {
        let good = "ebbbibiu-ltgjfuhk-ebbbibiu-ltgjfuhk-ebbbibiu-ltgjfuhk-ebbbibiu-ltgjfuhk";
        assert!(is_recovery_key(good));
        for bad in [
            "",
            &good[..62],
            &good.replace('e', "a"),
            &good.replace('-', "_"),
            &good.to_uppercase(),
            &format!("{good}-cccccccc"),
        ] {
            assert!(!is_recovery_key(bad), "{bad}");
        }
    }

    #[test]
    fn complexity_follows_upstreams_table() {
        let cases: &[(&str, Result<(), &str>)] = &[
            ("foo-bar-biz-1234", Ok(())),
            ("   ", Err("Password is empty or all whitespace")),
            ("short-key", Err("Password is too short")),
            (
                "aaaa-aaaa-aaaa-aaaa",
                Err("Password does not contain enough different/unique characters"),
            ),
            (
                "AaBbAaBbAaBb-Cc",
                Err("Password does not contain enough different/unique characters"),
            ),
            (
                "correcthorsebatterystaple",
                Err("Password does not contain any special symbols"),
            ),
            (
                "under_score_only_1",
                Err("Password does not contain any special symbols"),
            ),
            ("abcdefghijklmnop!", Err("Password is too systematic")),
            ("pässwörd-straße", Ok(())),
            ("a1!b2@c3#d4$e5%f", Ok(())),
        ];
        for (key, want) in cases {
            assert_eq!(check_complexity(key), want.map_err(str::to_string), "{key}");
        }
    }
}
