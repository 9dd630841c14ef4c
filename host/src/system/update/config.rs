//! The update configuration and state of `/1.0/system/update`, their validation, and the
//! update seed's merge rule.
//!
//! The JSON shape is upstream's: `{auto_reboot, channel, check_frequency,
//! maintenance_windows?}` for the config (the windows are left out when there are none) and
//! `{last_check, status, needs_reboot}` for the state. A window's days are weekday names
//! (`Sunday` .. `Saturday`); a window without days repeats every day. Hours and minutes are
//! plain integers, as upstream, so an out-of-range value reaches [`validate`] (which refuses
//! it, unlike upstream) instead of failing the JSON decoding.
//!
//! `check_frequency` is `never` or a Go duration (`90m`, `1h30m`, `0.5h`, ...), parsed by
//! [`parse_go_duration`] with Go's own error texts, which the API shows inside
//! `invalid update check frequency: <error>`.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, SecondsFormat, Timelike};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The channel of a fresh state.
pub const DEFAULT_CHANNEL: &str = "stable";
/// The check frequency of a fresh state.
pub const DEFAULT_CHECK_FREQUENCY: &str = "6h";
/// The `check_frequency` value that turns periodic checks off.
pub const NEVER: &str = "never";

/// `check_frequency` as the scheduler uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckFrequency {
    /// `never`: no periodic checks (once a primary application is installed).
    Never,
    /// A check every so often (may be zero).
    Every(Duration),
}

/// The update configuration (`config` of `/1.0/system/update`).
///
/// [`Default`] is a fresh state's config (`stable`, `6h`). Decoding does not fill those in:
/// a field left out of a PUT body is empty, as upstream, so a missing `check_frequency` is
/// refused by [`validate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateConfig {
    #[serde(default, deserialize_with = "null_as_default")]
    pub auto_reboot: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub channel: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub check_frequency: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub maintenance_windows: Vec<MaintenanceWindow>,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            auto_reboot: false,
            channel: DEFAULT_CHANNEL.to_string(),
            check_frequency: DEFAULT_CHECK_FREQUENCY.to_string(),
            maintenance_windows: Vec::new(),
        }
    }
}

impl UpdateConfig {
    /// The parsed check frequency (`Err` carries the same text as [`validate`]).
    pub fn frequency(&self) -> Result<CheckFrequency, String> {
        if self.check_frequency == NEVER {
            return Ok(CheckFrequency::Never);
        }
        let nanos = parse_go_duration(&self.check_frequency)
            .map_err(|e| format!("invalid update check frequency: {e}"))?;
        if nanos < 0 {
            return Err("invalid update check frequency: must be a positive value".to_string());
        }
        Ok(CheckFrequency::Every(Duration::from_nanos(nanos as u64)))
    }
}

/// A day of the week, as upstream names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Weekday {
    Sunday,
    Monday,
    Tuesday,
    Wednesday,
    Thursday,
    Friday,
    Saturday,
}

impl Weekday {
    const ALL: [Weekday; 7] = [
        Weekday::Sunday,
        Weekday::Monday,
        Weekday::Tuesday,
        Weekday::Wednesday,
        Weekday::Thursday,
        Weekday::Friday,
        Weekday::Saturday,
    ];

    /// The JSON name (`Sunday` .. `Saturday`).
    pub fn name(self) -> &'static str {
        match self {
            Weekday::Sunday => "Sunday",
            Weekday::Monday => "Monday",
            Weekday::Tuesday => "Tuesday",
            Weekday::Wednesday => "Wednesday",
            Weekday::Thursday => "Thursday",
            Weekday::Friday => "Friday",
            Weekday::Saturday => "Saturday",
        }
    }

    /// The day for an exact JSON name (case matters, as upstream).
    pub fn from_name(name: &str) -> Option<Weekday> {
        Weekday::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Days since Sunday (Sunday is 0, Saturday 6).
    pub fn days_from_sunday(self) -> u32 {
        self as u32
    }
}

/// A maintenance window: periodic checks run only inside one (when any is defined). Both days
/// left out means every day; times are local (the configured timezone), the end minute
/// included.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceWindow {
    #[serde(default, with = "day", skip_serializing_if = "Option::is_none")]
    pub start_day_of_week: Option<Weekday>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub start_hour: i64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub start_minute: i64,
    #[serde(default, with = "day", skip_serializing_if = "Option::is_none")]
    pub end_day_of_week: Option<Weekday>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub end_hour: i64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub end_minute: i64,
}

impl MaintenanceWindow {
    /// Minutes since midnight of the start time.
    pub fn start_of_day(&self) -> i64 {
        self.start_hour * 60 + self.start_minute
    }

    /// Minutes since midnight of the end time.
    pub fn end_of_day(&self) -> i64 {
        self.end_hour * 60 + self.end_minute
    }
}

/// The update state (`state` of `/1.0/system/update`). `last_check` is `None` until the
/// first check and shows as Go's zero time, `0001-01-01T00:00:00Z`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateState {
    #[serde(default, with = "go_time")]
    pub last_check: Option<DateTime<FixedOffset>>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub status: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub needs_reboot: bool,
}

/// Checks a config before it is stored (PUT and seed). The texts are upstream's, checked in
/// upstream's order (frequency, then each window's days); out-of-range hours and minutes,
/// which upstream accepts, are refused afterwards.
pub fn validate(c: &UpdateConfig) -> Result<(), String> {
    c.frequency()?;
    for w in &c.maintenance_windows {
        if w.start_day_of_week.is_some()
            && w.start_day_of_week == w.end_day_of_week
            && w.end_of_day() < w.start_of_day()
        {
            return Err("invalid migration window: end time is before start time".to_string());
        }
        if w.start_day_of_week.is_some() != w.end_day_of_week.is_some() {
            return Err(
                "invalid migration window: both StartDayOfWeek and EndDayOfWeek must be provided"
                    .to_string(),
            );
        }
    }
    for w in &c.maintenance_windows {
        for (what, v) in [("start_hour", w.start_hour), ("end_hour", w.end_hour)] {
            if !(0..=23).contains(&v) {
                return Err(format!(
                    "invalid migration window: {what} must be between 0 and 23, got {v}"
                ));
            }
        }
        for (what, v) in [
            ("start_minute", w.start_minute),
            ("end_minute", w.end_minute),
        ] {
            if !(0..=59).contains(&v) {
                return Err(format!(
                    "invalid migration window: {what} must be between 0 and 59, got {v}"
                ));
            }
        }
    }
    Ok(())
}

/// The update seed's rule: an empty channel or check frequency keeps the existing value, the
/// rest comes from the seed, and the result is validated like a PUT.
pub fn merge_seed(existing: &UpdateConfig, seed: UpdateConfig) -> Result<UpdateConfig, String> {
    let mut merged = seed;
    if merged.channel.is_empty() {
        merged.channel = existing.channel.clone();
    }
    if merged.check_frequency.is_empty() {
        merged.check_frequency = existing.check_frequency.clone();
    }
    validate(&merged)?;
    Ok(merged)
}

/// Parses a duration exactly as Go's `time.ParseDuration` does, into nanoseconds: an
/// optional sign, then one or more decimal numbers (fractions allowed) each followed by a
/// unit (`ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`); a bare `0` is allowed. Errors are Go's
/// texts: `time: invalid duration "abc"`, `time: missing unit in duration "5"`,
/// `time: unknown unit "d" in duration "1d"`.
pub fn parse_go_duration(orig: &str) -> Result<i64, String> {
    const LIMIT: u64 = 1 << 63;
    let invalid = || format!("time: invalid duration {}", go_quote(orig));
    let mut s = orig;
    let mut neg = false;
    if let Some(c) = s.chars().next() {
        if c == '-' || c == '+' {
            neg = c == '-';
            s = &s[1..];
        }
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        let b = s.as_bytes();
        if !(b[0] == b'.' || b[0].is_ascii_digit()) {
            return Err(invalid());
        }
        // The integer part.
        let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let mut v: u64 = 0;
        for &c in &b[..digits] {
            if v > LIMIT / 10 {
                return Err(invalid());
            }
            v = v * 10 + u64::from(c - b'0');
            if v > LIMIT {
                return Err(invalid());
            }
        }
        let pre = digits > 0;
        s = &s[digits..];
        // The fraction: digits past what fits are dropped, as Go does.
        let mut f: u64 = 0;
        let mut scale = 1.0_f64;
        let mut post = false;
        if s.starts_with('.') {
            s = &s[1..];
            let b = s.as_bytes();
            let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
            let mut overflow = false;
            for &c in &b[..digits] {
                if overflow {
                    continue;
                }
                if f > (LIMIT - 1) / 10 {
                    overflow = true;
                    continue;
                }
                let y = f * 10 + u64::from(c - b'0');
                if y > LIMIT {
                    overflow = true;
                    continue;
                }
                f = y;
                scale *= 10.0;
            }
            post = digits > 0;
            s = &s[digits..];
        }
        if !pre && !post {
            return Err(invalid());
        }
        // The unit: everything up to the next digit or dot.
        let unit_len = s
            .bytes()
            .take_while(|c| !(*c == b'.' || c.is_ascii_digit()))
            .count();
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {}", go_quote(orig)));
        }
        let unit_name = &s[..unit_len];
        s = &s[unit_len..];
        let unit: u64 = match unit_name {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    go_quote(unit_name),
                    go_quote(orig)
                ))
            }
        };
        if v > LIMIT / unit {
            return Err(invalid());
        }
        v *= unit;
        if f > 0 {
            v += (f as f64 * (unit as f64 / scale)) as u64;
            if v > LIMIT {
                return Err(invalid());
            }
        }
        total += v;
        if total > LIMIT {
            return Err(invalid());
        }
    }
    if neg {
        // -(1<<63) is the one negative value without a positive twin.
        return Ok((total as i64).wrapping_neg());
    }
    if total > LIMIT - 1 {
        return Err(invalid());
    }
    Ok(total as i64)
}

/// A string quoted the way Go's `time` package quotes it in these texts: `"` and `\` get a
/// backslash; control characters and every byte of a non-ASCII character are written `\xNN`.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c < ' ' || !c.is_ascii() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go decodes `null` into a field's zero value; so do we.
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A window's day: a weekday name, or `""`/`null`/absent for none.
mod day {
    use super::Weekday;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Weekday>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(d.map_or("", Weekday::name))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Weekday>, D::Error> {
        let name = Option::<String>::deserialize(d)?.unwrap_or_default();
        if name.is_empty() {
            return Ok(None);
        }
        Weekday::from_name(&name).map(Some).ok_or_else(|| {
            D::Error::custom(format!(
                "invalid day of week {name:?} (expected Sunday, Monday, Tuesday, Wednesday, Thursday, Friday or Saturday)"
            ))
        })
    }
}

/// Go's JSON form of a `time.Time`: RFC 3339 with the fraction's trailing zeros trimmed,
/// `Z` for UTC, and `0001-01-01T00:00:00Z` for the zero time (`None` here).
pub mod go_time {
    use super::*;

    /// Go's zero time.
    pub const ZERO: &str = "0001-01-01T00:00:00Z";

    /// The text of a time (`None` is the zero time).
    pub fn format(t: Option<&DateTime<FixedOffset>>) -> String {
        let Some(t) = t else {
            return ZERO.to_string();
        };
        let mut out = t.format("%Y-%m-%dT%H:%M:%S").to_string();
        let nanos = t.nanosecond() % 1_000_000_000;
        if nanos != 0 {
            let frac = format!("{nanos:09}");
            out.push('.');
            out.push_str(frac.trim_end_matches('0'));
        }
        if t.offset().local_minus_utc() == 0 {
            out.push('Z');
        } else {
            // `+hh:mm` (chrono's RFC 3339 form carries the offset the same way).
            let full = t.to_rfc3339_opts(SecondsFormat::Secs, false);
            out.push_str(&full[full.len() - 6..]);
        }
        out
    }

    /// Parses a time (the zero time gives `None`).
    pub fn parse(s: &str) -> Result<Option<DateTime<FixedOffset>>, String> {
        let t = DateTime::parse_from_rfc3339(s).map_err(|e| format!("invalid time {s:?}: {e}"))?;
        if t.to_utc()
            == DateTime::parse_from_rfc3339(ZERO)
                .expect("zero time")
                .to_utc()
        {
            return Ok(None);
        }
        Ok(Some(t))
    }

    pub fn serialize<S: Serializer>(
        t: &Option<DateTime<FixedOffset>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t.as_ref()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<DateTime<FixedOffset>>, D::Error> {
        use serde::de::Error;
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => parse(&s).map_err(D::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dur(s: &str) -> Result<i64, String> {
        parse_go_duration(s)
    }

    const SEC: i64 = 1_000_000_000;

    #[test]
    fn duration_accepts_go_forms() {
        assert_eq!(dur("0"), Ok(0));
        assert_eq!(dur("+0"), Ok(0));
        assert_eq!(dur("-0"), Ok(0));
        assert_eq!(dur("0s"), Ok(0));
        assert_eq!(dur("6h"), Ok(6 * 3600 * SEC));
        assert_eq!(dur("1h30m"), Ok(5400 * SEC));
        assert_eq!(dur("1.5h"), Ok(5400 * SEC));
        assert_eq!(dur(".5m"), Ok(30 * SEC));
        assert_eq!(dur("1.m"), Ok(60 * SEC));
        assert_eq!(dur("-1.5h"), Ok(-5400 * SEC));
        assert_eq!(dur("+10s"), Ok(10 * SEC));
        assert_eq!(dur("300ms"), Ok(300_000_000));
        assert_eq!(dur("2us"), Ok(2_000));
        assert_eq!(dur("2µs"), Ok(2_000));
        assert_eq!(dur("2μs"), Ok(2_000));
        assert_eq!(dur("7ns"), Ok(7));
        assert_eq!(dur("1h1m1s1ms1us1ns"), Ok(3661 * SEC + 1_001_001));
        assert_eq!(dur("9223372036854775807ns"), Ok(i64::MAX));
        assert_eq!(dur("-9223372036854775808ns"), Ok(i64::MIN));
        assert_eq!(dur("0.000000001s"), Ok(1));
        // Fraction digits past what fits are dropped, as Go does (no overflow error).
        let long = dur("0.100000000000000000000000h").unwrap();
        assert!((long - 360 * SEC).abs() <= 1, "{long}");
    }

    #[test]
    fn duration_errors_are_gos_texts() {
        assert_eq!(dur("abc"), Err(r#"time: invalid duration "abc""#.into()));
        assert_eq!(dur(""), Err(r#"time: invalid duration """#.into()));
        assert_eq!(dur("-"), Err(r#"time: invalid duration "-""#.into()));
        assert_eq!(dur("."), Err(r#"time: invalid duration ".""#.into()));
        assert_eq!(dur(".s"), Err(r#"time: invalid duration ".s""#.into()));
        assert_eq!(
            dur("5"),
            Err(r#"time: missing unit in duration "5""#.into())
        );
        assert_eq!(
            dur("1h5"),
            Err(r#"time: missing unit in duration "1h5""#.into())
        );
        assert_eq!(
            dur("1d"),
            Err(r#"time: unknown unit "d" in duration "1d""#.into())
        );
        assert_eq!(
            dur("1 h"),
            Err(r#"time: unknown unit " h" in duration "1 h""#.into())
        );
        assert_eq!(dur("h"), Err(r#"time: invalid duration "h""#.into()));
        assert_eq!(
            dur("9223372036854775808ns"),
            Err(r#"time: invalid duration "9223372036854775808ns""#.into())
        );
        assert_eq!(
            dur("3000000h"),
            Err(r#"time: invalid duration "3000000h""#.into())
        );
        assert_eq!(
            dur("99999999999999999999s"),
            Err(r#"time: invalid duration "99999999999999999999s""#.into())
        );
        // Quoted as Go's time package quotes: bytes of control and non-ASCII characters as
        // \xNN, a quote and a backslash escaped, DEL as it is.
        assert_eq!(
            dur("a\"\n\\\u{7f}"),
            Err("time: invalid duration \"a\\\"\\x0a\\\\\u{7f}\"".into())
        );
        assert_eq!(
            dur("1µ"),
            Err(r#"time: unknown unit "\xc2\xb5" in duration "1\xc2\xb5""#.into())
        );
    }

    fn config(freq: &str) -> UpdateConfig {
        UpdateConfig {
            check_frequency: freq.into(),
            ..UpdateConfig::default()
        }
    }

    fn window(
        sd: Option<Weekday>,
        sh: i64,
        sm: i64,
        ed: Option<Weekday>,
        eh: i64,
        em: i64,
    ) -> MaintenanceWindow {
        MaintenanceWindow {
            start_day_of_week: sd,
            start_hour: sh,
            start_minute: sm,
            end_day_of_week: ed,
            end_hour: eh,
            end_minute: em,
        }
    }

    #[test]
    fn frequency_never_or_non_negative_duration() {
        assert_eq!(validate(&config("never")), Ok(()));
        assert_eq!(validate(&config("6h")), Ok(()));
        assert_eq!(validate(&config("0")), Ok(()));
        assert_eq!(
            validate(&config("")),
            Err(r#"invalid update check frequency: time: invalid duration """#.into())
        );
        assert_eq!(
            validate(&config("Never")),
            Err(r#"invalid update check frequency: time: invalid duration "Never""#.into())
        );
        assert_eq!(
            validate(&config("5")),
            Err(r#"invalid update check frequency: time: missing unit in duration "5""#.into())
        );
        assert_eq!(
            validate(&config("-1h")),
            Err("invalid update check frequency: must be a positive value".into())
        );
        assert_eq!(config("never").frequency(), Ok(CheckFrequency::Never));
        assert_eq!(
            config("90m").frequency(),
            Ok(CheckFrequency::Every(Duration::from_secs(5400)))
        );
    }

    #[test]
    fn same_day_window_must_not_end_before_it_starts() {
        let mut c = config("6h");
        let d = Some(Weekday::Monday);
        c.maintenance_windows = vec![window(d, 10, 30, d, 10, 29)];
        assert_eq!(
            validate(&c),
            Err("invalid migration window: end time is before start time".into())
        );
        c.maintenance_windows = vec![window(d, 10, 30, d, 10, 30)];
        assert_eq!(validate(&c), Ok(()), "start == end is a one-minute window");
        // A daily window may end before it starts: it runs past midnight.
        c.maintenance_windows = vec![window(None, 23, 0, None, 2, 0)];
        assert_eq!(validate(&c), Ok(()));
        // Different days may have any times.
        c.maintenance_windows = vec![window(d, 23, 0, Some(Weekday::Sunday), 1, 0)];
        assert_eq!(validate(&c), Ok(()));
    }

    #[test]
    fn window_needs_both_days_or_neither() {
        let mut c = config("6h");
        for w in [
            window(Some(Weekday::Friday), 1, 0, None, 2, 0),
            window(None, 1, 0, Some(Weekday::Friday), 2, 0),
        ] {
            c.maintenance_windows = vec![window(None, 1, 0, None, 2, 0), w];
            assert_eq!(
                validate(&c),
                Err("invalid migration window: both StartDayOfWeek and EndDayOfWeek must be provided".into())
            );
        }
    }

    #[test]
    fn window_hours_and_minutes_must_be_in_range() {
        let mut c = config("6h");
        c.maintenance_windows = vec![window(None, 25, 0, None, 2, 0)];
        assert_eq!(
            validate(&c),
            Err("invalid migration window: start_hour must be between 0 and 23, got 25".into())
        );
        c.maintenance_windows = vec![window(None, 1, 0, None, 2, -1)];
        assert_eq!(
            validate(&c),
            Err("invalid migration window: end_minute must be between 0 and 59, got -1".into())
        );
        c.maintenance_windows = vec![window(None, 0, 0, None, 23, 59)];
        assert_eq!(validate(&c), Ok(()));
        // Upstream's own checks come first, across all windows.
        let d = Some(Weekday::Monday);
        c.maintenance_windows = vec![window(None, 24, 0, None, 2, 0), window(d, 10, 0, d, 9, 0)];
        assert_eq!(
            validate(&c),
            Err("invalid migration window: end time is before start time".into())
        );
    }

    #[test]
    fn config_json_is_upstreams() {
        let c = UpdateConfig::default();
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({"auto_reboot": false, "channel": "stable", "check_frequency": "6h"}),
            "no windows: the key is left out"
        );
        let c = UpdateConfig {
            maintenance_windows: vec![
                window(None, 22, 0, None, 2, 30),
                window(Some(Weekday::Saturday), 0, 0, Some(Weekday::Monday), 6, 0),
            ],
            ..UpdateConfig::default()
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v["maintenance_windows"],
            json!([
                {"start_hour": 22, "start_minute": 0, "end_hour": 2, "end_minute": 30},
                {"start_day_of_week": "Saturday", "start_hour": 0, "start_minute": 0,
                 "end_day_of_week": "Monday", "end_hour": 6, "end_minute": 0}
            ])
        );
        let back: UpdateConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn decoding_leaves_missing_fields_empty() {
        let c: UpdateConfig = serde_json::from_value(json!({"auto_reboot": true})).unwrap();
        assert_eq!(c.channel, "");
        assert_eq!(c.check_frequency, "");
        assert!(c.maintenance_windows.is_empty());
        let c: UpdateConfig = serde_json::from_value(json!({
            "channel": null, "check_frequency": "1h", "maintenance_windows": null
        }))
        .unwrap();
        assert_eq!(c.check_frequency, "1h");
        let w: MaintenanceWindow = serde_json::from_value(json!({
            "start_day_of_week": "", "end_day_of_week": null, "start_hour": 3
        }))
        .unwrap();
        assert_eq!(w, window(None, 3, 0, None, 0, 0));
    }

    #[test]
    fn unknown_day_name_is_refused() {
        for name in ["Funday", "sunday", "SUNDAY", "Sun"] {
            let err = serde_json::from_value::<MaintenanceWindow>(
                json!({"start_day_of_week": name, "end_day_of_week": "Monday"}),
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains(&format!("invalid day of week {name:?}")),
                "{err}"
            );
        }
    }

    #[test]
    fn state_json_zero_last_check() {
        let s = UpdateState::default();
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({"last_check": "0001-01-01T00:00:00Z", "status": "", "needs_reboot": false})
        );
        let back: UpdateState = serde_json::from_value(json!({
            "last_check": "0001-01-01T00:00:00Z", "status": "x", "needs_reboot": true
        }))
        .unwrap();
        assert_eq!(back.last_check, None);
    }

    #[test]
    fn state_json_last_check_like_go() {
        let t = DateTime::parse_from_rfc3339("2025-08-28T10:00:00.120000000+02:00").unwrap();
        assert_eq!(go_time::format(Some(&t)), "2025-08-28T10:00:00.12+02:00");
        let t = DateTime::parse_from_rfc3339("2025-08-28T10:00:00Z").unwrap();
        assert_eq!(go_time::format(Some(&t)), "2025-08-28T10:00:00Z");
        let t = DateTime::parse_from_rfc3339("2025-08-28T10:00:00.000000001-05:30").unwrap();
        assert_eq!(
            go_time::format(Some(&t)),
            "2025-08-28T10:00:00.000000001-05:30"
        );
        let s = UpdateState {
            last_check: Some(t),
            status: "Update check completed".into(),
            needs_reboot: false,
        };
        let back: UpdateState = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert!(go_time::parse("yesterday").is_err());
    }

    #[test]
    fn seed_inherits_empty_channel_and_frequency() {
        let existing = UpdateConfig {
            channel: "testing".into(),
            check_frequency: "12h".into(),
            ..UpdateConfig::default()
        };
        let seed = UpdateConfig {
            auto_reboot: true,
            channel: String::new(),
            check_frequency: String::new(),
            maintenance_windows: vec![window(None, 1, 0, None, 2, 0)],
        };
        let merged = merge_seed(&existing, seed.clone()).unwrap();
        assert_eq!(merged.channel, "testing");
        assert_eq!(merged.check_frequency, "12h");
        assert!(merged.auto_reboot);
        assert_eq!(merged.maintenance_windows, seed.maintenance_windows);

        let seed = UpdateConfig {
            channel: "edge".into(),
            check_frequency: "never".into(),
            ..UpdateConfig::default()
        };
        let merged = merge_seed(&existing, seed).unwrap();
        assert_eq!(
            (merged.channel.as_str(), merged.check_frequency.as_str()),
            ("edge", "never")
        );
    }

    #[test]
    fn seed_is_validated_after_the_merge() {
        let existing = UpdateConfig::default();
        let seed = UpdateConfig {
            check_frequency: "1d".into(),
            ..UpdateConfig::default()
        };
        assert_eq!(
            merge_seed(&existing, seed),
            Err(
                r#"invalid update check frequency: time: unknown unit "d" in duration "1d""#.into()
            )
        );
        let d = Some(Weekday::Tuesday);
        let seed = UpdateConfig {
            check_frequency: String::new(),
            maintenance_windows: vec![window(d, 5, 0, d, 4, 0)],
            ..UpdateConfig::default()
        };
        assert_eq!(
            merge_seed(&existing, seed),
            Err("invalid migration window: end time is before start time".into())
        );
    }
}
