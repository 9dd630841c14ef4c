//! Five-field cron expressions (minute, hour, day of month, month, day of week), as the
//! scrub schedule takes them, and the next time one fires. Fields take `*`, numbers,
//! ranges `a-b`, steps `*/n` and `a-b/n`, lists, and month and weekday names (`jan`,
//! `sun`); day of week 7 is Sunday too. As in standard cron, when both day fields are
//! restricted a day matches if either does.

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};

/// The scrub schedule upstream starts with: Sundays at 04:00.
pub const DEFAULT_SCRUB_SCHEDULE: &str = "0 4 * * 0";

/// Upstream's refusal for a schedule that does not parse (an empty one included).
pub const INVALID: &str = "invalid cron expression provided for scrub schedule";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_star: bool,
    weekdays_star: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(text: &str, min: u32, max: u32, names: &[&str], names_from: u32) -> Option<u32> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        return Some(i as u32 + names_from);
    }
    if text.is_empty() || !text.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n: u32 = text.parse().ok()?;
    (min..=max).contains(&n).then_some(n)
}

/// One field as a bit set over `min..=max`.
fn field(text: &str, min: u32, max: u32, names: &[&str], names_from: u32) -> Option<u64> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let s: u32 = s.parse().ok().filter(|s| *s > 0)?;
                (r, s)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                value(a, min, max, names, names_from)?,
                value(b, min, max, names, names_from)?,
            )
        } else {
            let v = value(range, min, max, names, names_from)?;
            // `5/10` means from 5 to the end in steps of 10.
            (v, if step > 1 { max } else { v })
        };
        if lo > hi {
            return None;
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Some(bits)
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let f: Vec<&str> = text.split_whitespace().collect();
        if f.len() != 5 {
            return Err(INVALID.into());
        }
        let parse = || -> Option<Schedule> {
            let mut weekdays = field(f[4], 0, 7, &WEEKDAYS, 0)?;
            if weekdays & (1 << 7) != 0 {
                weekdays |= 1;
            }
            Some(Schedule {
                minutes: field(f[0], 0, 59, &[], 0)?,
                hours: field(f[1], 0, 23, &[], 0)?,
                days: field(f[2], 1, 31, &[], 0)?,
                months: field(f[3], 1, 12, &MONTHS, 1)?,
                weekdays,
                days_star: f[2].starts_with('*'),
                weekdays_star: f[4].starts_with('*'),
            })
        };
        parse().ok_or_else(|| INVALID.to_string())
    }

    fn day_matches(&self, t: &DateTime<Utc>) -> bool {
        let dom = self.days & (1 << t.day()) != 0;
        let dow = self.weekdays & (1 << t.weekday().num_days_from_sunday()) != 0;
        match (self.days_star, self.weekdays_star) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }

    /// The first minute strictly after `after` the schedule fires at (within 5 years).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = after.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        let mut t = start;
        let limit = start + Duration::days(366 * 5);
        while t < limit {
            if self.months & (1 << t.month()) == 0 {
                // First minute of the next month.
                let (y, m) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single()?;
                continue;
            }
            if !self.day_matches(&t) {
                t = (t + Duration::days(1)).with_hour(0)?.with_minute(0)?;
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = (t + Duration::hours(1)).with_minute(0)?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t += Duration::minutes(1);
                continue;
            }
            return Some(t);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn next(expr: &str, after: &str) -> String {
        Schedule::parse(expr)
            .unwrap()
            .next_after(at(after))
            .unwrap()
            .to_rfc3339()
    }

    #[test]
    fn the_default_fires_on_sundays_at_four() {
        // 2026-12-07 is a Monday.
        assert_eq!(
            next(DEFAULT_SCRUB_SCHEDULE, "2026-12-07T12:00:00Z"),
            "2026-12-13T04:00:00+00:00"
        );
        assert_eq!(
            next(DEFAULT_SCRUB_SCHEDULE, "2026-12-13T04:00:00Z"),
            "2026-12-20T04:00:00+00:00",
            "strictly after"
        );
        assert_eq!(
            next("0 0 * * 5", "2026-12-07T12:00:00Z"),
            "2026-12-11T00:00:00+00:00"
        );
    }

    #[test]
    fn steps_ranges_lists_and_names() {
        assert_eq!(
            next("*/15 * * * *", "2026-12-07T12:07:30Z"),
            "2026-12-07T12:15:00+00:00"
        );
        assert_eq!(
            next("30 2-4/2 * * mon-fri", "2026-12-12T00:00:00Z"),
            "2026-12-14T02:30:00+00:00"
        );
        assert_eq!(
            next("0 0 1,15 feb *", "2026-12-07T00:00:00Z"),
            "2027-02-01T00:00:00+00:00"
        );
        assert_eq!(
            next("0 0 29 2 *", "2026-12-07T00:00:00Z"),
            "2028-02-29T00:00:00+00:00"
        );
        // Sunday as 7.
        assert_eq!(
            next("0 4 * * 7", "2026-12-07T12:00:00Z"),
            "2026-12-13T04:00:00+00:00"
        );
        // Both day fields restricted: either matches (the 8th, a Tuesday, first).
        assert_eq!(
            next("0 0 10 * tue", "2026-12-07T12:00:00Z"),
            "2026-12-08T00:00:00+00:00"
        );
    }

    #[test]
    fn bad_expressions_are_refused_with_upstreams_text() {
        for bad in [
            "",
            "* * * *",
            "* * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "a * * * *",
            "* * * * fun",
            "-1 * * * *",
        ] {
            assert_eq!(Schedule::parse(bad), Err(INVALID.into()), "{bad:?}");
        }
        assert!(Schedule::parse("0 4 * * 0").is_ok());
    }

    #[test]
    fn a_schedule_that_can_never_fire_has_no_next_time() {
        assert_eq!(
            Schedule::parse("0 0 31 2 *")
                .unwrap()
                .next_after(at("2026-12-07T00:00:00Z")),
            None
        );
    }
}
