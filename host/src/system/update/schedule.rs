//! When to check for updates: the update checker as an explicit state machine over an
//! injected [`Clock`]. No I/O and no sleeping here: the runner feeds [`Event`]s to a
//! [`Scheduler`] and does what the returned [`Action`] says.
//!
//! The rules (upstream's checker loop, see `docs/updates.md`):
//! - The startup run checks once, whatever the windows say; with `check_frequency: never`
//!   and a primary application installed it does not check at all.
//! - A user-requested run checks once, whatever the windows and `never` say, and clears the
//!   provider cache first.
//! - Periodic checks: `never` with a primary application means no check, re-evaluated every
//!   hour; `never` without one counts as `6h` (so a fresh machine still gets its primary
//!   application). Otherwise a check is due `check_frequency` after the last check, or as
//!   soon as a maintenance window has started since the last check, whichever comes first;
//!   the runner sleeps until then plus one minute. A due check outside every window (when
//!   windows are defined) is skipped, and the skip counts as a check.
//! - Windows are in local time: [`Clock::local_offset`] gives the configured timezone's
//!   offset from UTC (the runner computes it, DST included; nothing here reads a timezone
//!   database).

use std::time::Duration;

use chrono::{DateTime, Datelike, FixedOffset, TimeDelta, Timelike, Utc};

use super::config::{CheckFrequency, MaintenanceWindow, UpdateConfig};

/// The status of a periodic check skipped outside the maintenance windows (upstream's text).
pub const STATUS_SKIPPED: &str = "Skipping update check outside of maintenance window(s)";
/// The status while a check runs (upstream's text).
pub const STATUS_RUNNING: &str = "Running update check";
/// The status after a check that staged no OS update (upstream's text).
pub const STATUS_COMPLETED: &str = "Update check completed";

/// The status after a check that staged an OS update (upstream's text).
pub fn status_os_updated(os_name: &str, version: &str) -> String {
    format!("{os_name} has been updated to version {version}")
}

/// How long `never` waits before looking again, when a primary application is installed.
pub const NEVER_RECHECK: Duration = Duration::from_secs(3600);
/// Added to every periodic sleep, so a wake-up lands inside a window that starts on the
/// minute (upstream does the same).
pub const WAKE_MARGIN: Duration = Duration::from_secs(60);
/// The shortest time between two periodic checks. Upstream accepts a frequency of `0` and
/// then checks back to back; here it means once a minute.
pub const MIN_FREQUENCY: Duration = Duration::from_secs(60);

const DAY: i64 = 24 * 60;
const WEEK: i64 = 7 * DAY;

/// The time source: now, and the local timezone's offset from UTC at a given instant.
pub trait Clock {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
    /// The configured timezone's offset from UTC at `at` (east positive).
    fn local_offset(&self, at: DateTime<Utc>) -> FixedOffset;
}

/// A clock that says what it is told: for tests, and for callers that already know the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedClock {
    pub now: DateTime<Utc>,
    pub offset: FixedOffset,
}

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        self.now
    }

    fn local_offset(&self, _at: DateTime<Utc>) -> FixedOffset {
        self.offset
    }
}

/// What a check is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// The one run at daemon start.
    Startup,
    /// `POST /1.0/system/update/:check`.
    UserRequested,
    /// The periodic checker (or a provider notification).
    Periodic,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The daemon started (first event; later ones count as [`Event::Tick`]).
    Startup,
    /// A user asked for a full check.
    UserRequested,
    /// The update provider reports that it may have something new (our addition: upstream
    /// has no such input). Handled like a periodic wake-up that is due now: `never` (with a
    /// primary application) and the maintenance windows still apply.
    ProviderNotification,
    /// The update config changed: the next wake-up is computed again.
    ConfigChanged,
    /// The sleep returned by the last [`Action::Sleep`] ended (an early tick is harmless).
    Tick,
    /// The check returned by the last [`Action::Check`] ended (success or not).
    CheckFinished,
}

/// What the runner does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Record `last_check = now` and status [`STATUS_RUNNING`], clear the provider cache if
    /// asked, run the check, then send [`Event::CheckFinished`].
    Check { kind: CheckKind, clear_cache: bool },
    /// Record `last_check = now` and this status, then sleep until `until` (or an event).
    Skip {
        status: &'static str,
        until: DateTime<Utc>,
    },
    /// Sleep until `until` (or an event), then send [`Event::Tick`].
    Sleep { until: DateTime<Utc> },
    /// A check is running: wait for it to finish (a user request is queued behind it).
    Wait,
}

/// What the scheduler needs to know besides the time.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub config: &'a UpdateConfig,
    /// The last check (or skip); `None` if there was none.
    pub last_check: Option<DateTime<Utc>>,
    /// Whether a primary application is installed.
    pub has_primary: bool,
}

/// Where the checker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for [`Event::Startup`].
    Booting,
    /// No check running.
    Idle,
    /// A check of this kind is running.
    Checking(CheckKind),
}

/// The update checker's state machine.
#[derive(Debug, Clone)]
pub struct Scheduler {
    phase: Phase,
    user_pending: bool,
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::new()
    }
}

impl Scheduler {
    /// A checker waiting for [`Event::Startup`].
    pub fn new() -> Self {
        Scheduler {
            phase: Phase::Booting,
            user_pending: false,
        }
    }

    /// Where the checker is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether a user request waits for the running check to finish.
    pub fn user_request_pending(&self) -> bool {
        self.user_pending
    }

    /// Takes an event and says what to do next.
    pub fn handle(&mut self, event: Event, inputs: &Inputs<'_>, clock: &dyn Clock) -> Action {
        if let Phase::Checking(_) = self.phase {
            match event {
                Event::UserRequested => self.user_pending = true,
                Event::CheckFinished => {
                    self.phase = Phase::Idle;
                    if std::mem::take(&mut self.user_pending) {
                        return self.start(CheckKind::UserRequested);
                    }
                    return periodic(inputs, clock, false);
                }
                _ => {}
            }
            return Action::Wait;
        }
        let booting = self.phase == Phase::Booting;
        self.phase = Phase::Idle;
        match event {
            Event::UserRequested => self.start(CheckKind::UserRequested),
            Event::Startup if booting => {
                if never_with_primary(inputs) {
                    periodic(inputs, clock, false)
                } else {
                    self.start(CheckKind::Startup)
                }
            }
            Event::ProviderNotification => match periodic(inputs, clock, true) {
                Action::Check { .. } => self.start(CheckKind::Periodic),
                other => other,
            },
            Event::Startup | Event::ConfigChanged | Event::Tick | Event::CheckFinished => {
                match periodic(inputs, clock, false) {
                    Action::Check { .. } => self.start(CheckKind::Periodic),
                    other => other,
                }
            }
        }
    }

    fn start(&mut self, kind: CheckKind) -> Action {
        self.phase = Phase::Checking(kind);
        Action::Check {
            kind,
            clear_cache: kind == CheckKind::UserRequested,
        }
    }
}

fn never_with_primary(inputs: &Inputs<'_>) -> bool {
    inputs.has_primary && inputs.config.frequency() == Ok(CheckFrequency::Never)
}

/// The periodic decision at `clock.now()`. `due_now` makes the check due whatever the
/// frequency says (a provider notification).
fn periodic(inputs: &Inputs<'_>, clock: &dyn Clock, due_now: bool) -> Action {
    let now = clock.now();
    let frequency = match inputs.config.frequency() {
        Ok(CheckFrequency::Never) if inputs.has_primary => {
            return Action::Sleep {
                until: now + delta(NEVER_RECHECK),
            }
        }
        Ok(CheckFrequency::Every(d)) => d.max(MIN_FREQUENCY),
        // `never` without a primary application, or a stored value that no longer parses
        // (every write is validated, so only a hand-edited state): the default.
        Ok(CheckFrequency::Never) | Err(_) => default_frequency(),
    };
    let windows = &inputs.config.maintenance_windows;
    let offset = clock.local_offset(now);
    let due = due_now
        || match inputs.last_check {
            None => true,
            Some(last) => {
                now >= last + delta(frequency)
                    || last_window_start(windows, clock).is_some_and(|start| start > last)
            }
        };
    if !due {
        let last = inputs.last_check.unwrap_or(now);
        let mut wake = last + delta(frequency);
        if let Some(start) = next_window_start(windows, clock) {
            wake = wake.min(start);
        }
        return Action::Sleep {
            until: wake + delta(WAKE_MARGIN),
        };
    }
    if windows.is_empty() || in_window(windows, now, offset) {
        return Action::Check {
            kind: CheckKind::Periodic,
            clear_cache: false,
        };
    }
    // The skip counts as a check: the next one is due a frequency from now, or at the next
    // window's start.
    let mut wake = now + delta(frequency);
    if let Some(start) = next_window_start(windows, clock) {
        wake = wake.min(start);
    }
    Action::Skip {
        status: STATUS_SKIPPED,
        until: wake + delta(WAKE_MARGIN),
    }
}

/// A fresh config's frequency (`6h`).
fn default_frequency() -> Duration {
    match UpdateConfig::default().frequency() {
        Ok(CheckFrequency::Every(d)) => d,
        _ => Duration::from_secs(6 * 3600),
    }
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// A window's stretches on the week circle: (start minute since Sunday 00:00, length in
/// minutes, the end minute included).
fn spans(w: &MaintenanceWindow) -> Vec<(i64, i64)> {
    let start = w.start_of_day();
    let end = w.end_of_day();
    match (w.start_day_of_week, w.end_day_of_week) {
        (Some(sd), Some(ed)) => {
            let s = i64::from(sd.days_from_sunday()) * DAY + start;
            let e = i64::from(ed.days_from_sunday()) * DAY + end;
            vec![(s.rem_euclid(WEEK), (e - s).rem_euclid(WEEK))]
        }
        // A daily window (both days are set or neither once validated); one that ends
        // before it starts runs past midnight.
        _ => {
            let len = (end - start).rem_euclid(DAY);
            (0..7)
                .map(|d| ((d * DAY + start).rem_euclid(WEEK), len))
                .collect()
        }
    }
}

/// Local minutes since Sunday 00:00 at `now`, and `now` cut down to the minute.
fn week_minute(now: DateTime<Utc>, offset: FixedOffset) -> (i64, DateTime<Utc>) {
    let local = now.with_timezone(&offset);
    let minute = i64::from(local.weekday().num_days_from_sunday()) * DAY
        + i64::from(local.hour()) * 60
        + i64::from(local.minute());
    let floor = now
        - TimeDelta::seconds(i64::from(local.second()))
        - TimeDelta::nanoseconds(i64::from(local.nanosecond() % 1_000_000_000));
    (minute, floor)
}

/// Whether `w` is open at `now` (local time from `offset`), to the minute: the start and
/// end minutes are both inside.
pub fn window_active(w: &MaintenanceWindow, now: DateTime<Utc>, offset: FixedOffset) -> bool {
    let (m, _) = week_minute(now, offset);
    spans(w)
        .into_iter()
        .any(|(start, len)| (m - start).rem_euclid(WEEK) <= len)
}

/// Whether any of `windows` is open at `now`.
pub fn in_window(windows: &[MaintenanceWindow], now: DateTime<Utc>, offset: FixedOffset) -> bool {
    windows.iter().any(|w| window_active(w, now, offset))
}

/// The next start of a window that is not open now (none when there are no windows, or every
/// stretch is open). Always after now.
pub fn next_window_start(
    windows: &[MaintenanceWindow],
    clock: &dyn Clock,
) -> Option<DateTime<Utc>> {
    let now = clock.now();
    let offset = clock.local_offset(now);
    let (m, floor) = week_minute(now, offset);
    windows
        .iter()
        .flat_map(spans)
        .filter(|&(start, len)| (m - start).rem_euclid(WEEK) > len)
        .map(|(start, _)| (start - m).rem_euclid(WEEK))
        .min()
        .map(|ahead| at_local_offset(floor + TimeDelta::minutes(ahead), offset, clock))
}

/// The latest window start at or before now (none when there are no windows).
fn last_window_start(windows: &[MaintenanceWindow], clock: &dyn Clock) -> Option<DateTime<Utc>> {
    let now = clock.now();
    let offset = clock.local_offset(now);
    let (m, floor) = week_minute(now, offset);
    windows
        .iter()
        .flat_map(spans)
        .map(|(start, _)| (m - start).rem_euclid(WEEK))
        .min()
        .map(|back| at_local_offset(floor - TimeDelta::minutes(back), offset, clock))
}

/// `t` was computed with today's offset; when the offset differs there (a daylight saving
/// change in between), move it so it shows the same local time under that offset.
fn at_local_offset(t: DateTime<Utc>, offset: FixedOffset, clock: &dyn Clock) -> DateTime<Utc> {
    let there = clock.local_offset(t);
    t + TimeDelta::seconds(i64::from(
        offset.local_minus_utc() - there.local_minus_utc(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::update::config::Weekday;
    use chrono::TimeZone;

    // 2025-08-28 is a Thursday.
    fn at(d: u32, h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 8, d, h, m, 0).unwrap()
    }

    fn utc() -> FixedOffset {
        FixedOffset::east_opt(0).unwrap()
    }

    fn clock(now: DateTime<Utc>) -> FixedClock {
        FixedClock { now, offset: utc() }
    }

    fn daily(sh: i64, sm: i64, eh: i64, em: i64) -> MaintenanceWindow {
        MaintenanceWindow {
            start_hour: sh,
            start_minute: sm,
            end_hour: eh,
            end_minute: em,
            ..MaintenanceWindow::default()
        }
    }

    fn days(sd: Weekday, sh: i64, sm: i64, ed: Weekday, eh: i64, em: i64) -> MaintenanceWindow {
        MaintenanceWindow {
            start_day_of_week: Some(sd),
            start_hour: sh,
            start_minute: sm,
            end_day_of_week: Some(ed),
            end_hour: eh,
            end_minute: em,
        }
    }

    fn cfg(freq: &str, windows: Vec<MaintenanceWindow>) -> UpdateConfig {
        UpdateConfig {
            check_frequency: freq.into(),
            maintenance_windows: windows,
            ..UpdateConfig::default()
        }
    }

    fn inputs(config: &UpdateConfig, last: Option<DateTime<Utc>>, primary: bool) -> Inputs<'_> {
        Inputs {
            config,
            last_check: last,
            has_primary: primary,
        }
    }

    /// A scheduler past its startup run.
    fn idle() -> Scheduler {
        Scheduler {
            phase: Phase::Idle,
            user_pending: false,
        }
    }

    fn periodic_check() -> Action {
        Action::Check {
            kind: CheckKind::Periodic,
            clear_cache: false,
        }
    }

    fn sleep(until: DateTime<Utc>) -> Action {
        Action::Sleep { until }
    }

    fn active(w: &MaintenanceWindow, now: DateTime<Utc>) -> bool {
        window_active(w, now, utc())
    }

    // --- windows -------------------------------------------------------------------------

    #[test]
    fn daily_window_includes_start_and_end_minutes() {
        let w = daily(10, 0, 11, 15);
        assert!(!active(&w, at(28, 9, 59)));
        assert!(active(&w, at(28, 10, 0)));
        assert!(active(&w, at(28, 10, 45)));
        assert!(active(&w, at(28, 11, 15)));
        assert!(active(&w, at(28, 11, 15) + TimeDelta::seconds(59)));
        assert!(!active(&w, at(28, 11, 16)));
        assert!(active(&w, at(31, 10, 30)), "every day, Sunday too");
    }

    #[test]
    fn daily_window_crosses_midnight() {
        let w = daily(23, 30, 2, 0);
        assert!(!active(&w, at(28, 23, 29)));
        assert!(active(&w, at(28, 23, 30)));
        assert!(active(&w, at(29, 0, 0)));
        assert!(active(&w, at(29, 2, 0)));
        assert!(!active(&w, at(29, 2, 1)));
        assert!(!active(&w, at(29, 12, 0)));
        // Saturday night into Sunday morning wraps the week.
        assert!(active(&w, at(31, 1, 0)));
    }

    #[test]
    fn same_day_window_only_on_that_day() {
        let w = days(Weekday::Thursday, 12, 0, Weekday::Thursday, 12, 15);
        assert!(active(&w, at(28, 12, 0)));
        assert!(active(&w, at(28, 12, 15)));
        assert!(!active(&w, at(27, 12, 5)));
        assert!(!active(&w, at(29, 12, 5)));
    }

    #[test]
    fn multi_day_window_spans_the_days_between() {
        let w = days(Weekday::Wednesday, 0, 0, Weekday::Friday, 23, 59);
        assert!(!active(&w, at(26, 23, 59)));
        assert!(active(&w, at(27, 0, 0)));
        assert!(active(&w, at(28, 6, 30)));
        assert!(active(&w, at(29, 23, 59)));
        assert!(!active(&w, at(30, 0, 0)));
    }

    #[test]
    fn multi_day_window_wraps_the_week() {
        // Saturday 22:00 to Monday 06:00.
        let w = days(Weekday::Saturday, 22, 0, Weekday::Monday, 6, 0);
        assert!(!active(&w, at(30, 21, 59)));
        assert!(active(&w, at(30, 22, 0)));
        assert!(active(&w, at(31, 12, 0)), "all of Sunday");
        assert!(active(
            &w,
            Utc.with_ymd_and_hms(2025, 9, 1, 6, 0, 0).unwrap()
        ));
        assert!(!active(
            &w,
            Utc.with_ymd_and_hms(2025, 9, 1, 6, 1, 0).unwrap()
        ));
        assert!(!active(&w, at(28, 12, 0)));
    }

    #[test]
    fn windows_are_in_local_time() {
        let w = daily(10, 0, 11, 0);
        let plus2 = FixedOffset::east_opt(2 * 3600).unwrap();
        assert!(window_active(&w, at(28, 8, 30), plus2), "10:30 local");
        assert!(!window_active(&w, at(28, 10, 30), plus2), "12:30 local");
        // The local weekday counts: 23:30 UTC Saturday is Sunday 01:30 at +02:00.
        let sunday = days(Weekday::Sunday, 1, 0, Weekday::Sunday, 2, 0);
        assert!(window_active(&sunday, at(30, 23, 30), plus2));
        assert!(!window_active(&sunday, at(30, 23, 30), utc()));
        let minus5 = FixedOffset::west_opt(5 * 3600).unwrap();
        assert_eq!(
            next_window_start(
                &[w],
                &FixedClock {
                    now: at(28, 12, 0),
                    offset: minus5
                }
            ),
            Some(at(28, 15, 0)),
            "10:00 local is 15:00 UTC"
        );
    }

    #[test]
    fn next_window_start_is_the_nearest_closed_one() {
        let ws = [daily(10, 0, 11, 0), daily(22, 0, 23, 0)];
        assert_eq!(
            next_window_start(&ws, &clock(at(28, 9, 59) + TimeDelta::seconds(30))),
            Some(at(28, 10, 0))
        );
        assert_eq!(
            next_window_start(&ws, &clock(at(28, 12, 0))),
            Some(at(28, 22, 0))
        );
        assert_eq!(
            next_window_start(&ws, &clock(at(28, 23, 30))),
            Some(at(29, 10, 0))
        );
        // Inside a window: the next start of another stretch, here tomorrow's.
        assert_eq!(
            next_window_start(&ws[..1], &clock(at(28, 10, 30))),
            Some(at(29, 10, 0))
        );
        let weekly = [days(Weekday::Saturday, 22, 0, Weekday::Monday, 6, 0)];
        // From Monday 07:00 to Saturday 22:00.
        assert_eq!(
            next_window_start(
                &weekly,
                &clock(Utc.with_ymd_and_hms(2025, 9, 1, 7, 0, 0).unwrap())
            ),
            Some(Utc.with_ymd_and_hms(2025, 9, 6, 22, 0, 0).unwrap())
        );
        assert_eq!(next_window_start(&[], &clock(at(28, 12, 0))), None);
    }

    // --- startup and user-requested runs ------------------------------------------------

    #[test]
    fn startup_checks_once_even_outside_windows() {
        let c = cfg("6h", vec![daily(2, 0, 3, 0)]);
        let mut s = Scheduler::new();
        let now = at(28, 12, 0);
        let i = inputs(&c, Some(now - TimeDelta::minutes(5)), true);
        assert_eq!(
            s.handle(Event::Startup, &i, &clock(now)),
            Action::Check {
                kind: CheckKind::Startup,
                clear_cache: false
            }
        );
        assert_eq!(s.phase(), Phase::Checking(CheckKind::Startup));
        // Afterwards the periodic rules apply.
        let i = inputs(&c, Some(now), true);
        assert_eq!(
            s.handle(
                Event::CheckFinished,
                &i,
                &clock(now + TimeDelta::minutes(2))
            ),
            sleep(at(28, 18, 1))
        );
        // A second Startup event is only a tick.
        assert_eq!(
            s.handle(Event::Startup, &i, &clock(now + TimeDelta::minutes(3))),
            sleep(at(28, 18, 1))
        );
    }

    #[test]
    fn startup_with_never_and_a_primary_does_not_check() {
        let c = cfg("never", vec![]);
        let mut s = Scheduler::new();
        let now = at(28, 12, 0);
        assert_eq!(
            s.handle(Event::Startup, &inputs(&c, None, true), &clock(now)),
            sleep(now + TimeDelta::hours(1))
        );
        assert_eq!(s.phase(), Phase::Idle);
    }

    #[test]
    fn startup_with_never_and_no_primary_checks() {
        let c = cfg("never", vec![]);
        let mut s = Scheduler::new();
        assert!(matches!(
            s.handle(
                Event::Startup,
                &inputs(&c, None, false),
                &clock(at(28, 12, 0))
            ),
            Action::Check {
                kind: CheckKind::Startup,
                ..
            }
        ));
    }

    #[test]
    fn user_request_checks_at_once_and_clears_the_cache() {
        let c = cfg("6h", vec![daily(2, 0, 3, 0)]);
        let now = at(28, 12, 0);
        let mut s = idle();
        assert_eq!(
            s.handle(
                Event::UserRequested,
                &inputs(&c, Some(now), true),
                &clock(now)
            ),
            Action::Check {
                kind: CheckKind::UserRequested,
                clear_cache: true
            }
        );
    }

    #[test]
    fn user_request_ignores_never() {
        let c = cfg("never", vec![]);
        let now = at(28, 12, 0);
        let mut s = idle();
        assert_eq!(
            s.handle(
                Event::UserRequested,
                &inputs(&c, Some(now), true),
                &clock(now)
            ),
            Action::Check {
                kind: CheckKind::UserRequested,
                clear_cache: true
            }
        );
    }

    #[test]
    fn user_request_during_a_check_runs_after_it() {
        let c = cfg("6h", vec![]);
        let now = at(28, 12, 0);
        let i = inputs(&c, None, true);
        let mut s = idle();
        assert_eq!(s.handle(Event::Tick, &i, &clock(now)), periodic_check());
        assert_eq!(
            s.handle(Event::UserRequested, &i, &clock(now)),
            Action::Wait
        );
        assert_eq!(
            s.handle(Event::UserRequested, &i, &clock(now)),
            Action::Wait
        );
        assert!(s.user_request_pending());
        let i = inputs(&c, Some(now), true);
        assert_eq!(
            s.handle(Event::CheckFinished, &i, &clock(now)),
            Action::Check {
                kind: CheckKind::UserRequested,
                clear_cache: true
            },
            "two requests during a check make one run"
        );
        assert!(!s.user_request_pending());
        assert_eq!(
            s.handle(Event::CheckFinished, &i, &clock(now)),
            sleep(now + TimeDelta::hours(6) + TimeDelta::minutes(1))
        );
    }

    #[test]
    fn events_during_a_check_wait() {
        let c = cfg("6h", vec![]);
        let now = at(28, 12, 0);
        let i = inputs(&c, None, true);
        let mut s = Scheduler::new();
        s.handle(Event::Startup, &i, &clock(now));
        for e in [
            Event::Tick,
            Event::ConfigChanged,
            Event::ProviderNotification,
            Event::Startup,
        ] {
            assert_eq!(s.handle(e, &i, &clock(now)), Action::Wait, "{e:?}");
        }
        assert_eq!(s.phase(), Phase::Checking(CheckKind::Startup));
    }

    // --- periodic: frequency -------------------------------------------------------------

    #[test]
    fn periodic_sleeps_until_last_check_plus_frequency_plus_a_minute() {
        let c = cfg("6h", vec![]);
        let last = at(28, 12, 0);
        let mut s = idle();
        assert_eq!(
            s.handle(
                Event::Tick,
                &inputs(&c, Some(last), true),
                &clock(at(28, 13, 0))
            ),
            sleep(at(28, 18, 1))
        );
    }

    #[test]
    fn periodic_checks_once_the_frequency_has_passed() {
        let c = cfg("6h", vec![]);
        let last = at(28, 12, 0);
        let mut s = idle();
        assert_eq!(
            s.handle(
                Event::Tick,
                &inputs(&c, Some(last), true),
                &clock(at(28, 18, 1))
            ),
            periodic_check()
        );
        assert_eq!(s.phase(), Phase::Checking(CheckKind::Periodic));
    }

    #[test]
    fn periodic_checks_at_once_without_a_last_check() {
        let c = cfg("6h", vec![]);
        let mut s = idle();
        assert_eq!(
            s.handle(Event::Tick, &inputs(&c, None, true), &clock(at(28, 12, 0))),
            periodic_check()
        );
    }

    #[test]
    fn early_tick_sleeps_again() {
        let c = cfg("1h", vec![]);
        let last = at(28, 12, 0);
        let mut s = idle();
        assert_eq!(
            s.handle(
                Event::Tick,
                &inputs(&c, Some(last), true),
                &clock(at(28, 12, 30))
            ),
            sleep(at(28, 13, 1))
        );
        assert_eq!(s.phase(), Phase::Idle);
    }

    #[test]
    fn zero_frequency_means_once_a_minute() {
        let c = cfg("0", vec![]);
        let last = at(28, 12, 0);
        let mut s = idle();
        assert_eq!(
            s.handle(Event::Tick, &inputs(&c, Some(last), true), &clock(last)),
            sleep(at(28, 12, 2))
        );
    }

    #[test]
    fn config_change_recomputes_the_wake_up() {
        let last = at(28, 12, 0);
        let mut s = idle();
        let c = cfg("6h", vec![]);
        assert_eq!(
            s.handle(
                Event::Tick,
                &inputs(&c, Some(last), true),
                &clock(at(28, 12, 5))
            ),
            sleep(at(28, 18, 1))
        );
        let c = cfg("30m", vec![]);
        assert_eq!(
            s.handle(
                Event::ConfigChanged,
                &inputs(&c, Some(last), true),
                &clock(at(28, 12, 10))
            ),
            sleep(at(28, 12, 31))
        );
        let c = cfg("5m", vec![]);
        assert_eq!(
            s.handle(
                Event::ConfigChanged,
                &inputs(&c, Some(last), true),
                &clock(at(28, 12, 10))
            ),
            periodic_check(),
            "already overdue"
        );
    }

    // --- periodic: never -----------------------------------------------------------------

    #[test]
    fn never_with_a_primary_sleeps_an_hour_and_never_checks() {
        let c = cfg("never", vec![]);
        let mut s = idle();
        let mut now = at(28, 12, 0);
        for _ in 0..48 {
            let a = s.handle(Event::Tick, &inputs(&c, None, true), &clock(now));
            assert_eq!(a, sleep(now + TimeDelta::hours(1)));
            now += TimeDelta::hours(1);
        }
    }

    #[test]
    fn never_without_a_primary_is_six_hours() {
        let c = cfg("never", vec![]);
        let last = at(28, 12, 0);
        let mut s = idle();
        assert_eq!(
            s.handle(
                Event::Tick,
                &inputs(&c, Some(last), false),
                &clock(at(28, 13, 0))
            ),
            sleep(at(28, 18, 1))
        );
        assert_eq!(
            s.handle(
                Event::Tick,
                &inputs(&c, Some(last), false),
                &clock(at(28, 18, 1))
            ),
            periodic_check()
        );
    }

    #[test]
    fn never_applies_again_once_a_primary_is_installed() {
        let c = cfg("never", vec![]);
        let now = at(28, 18, 1);
        let mut s = idle();
        let last = Some(at(28, 12, 0));
        assert_eq!(
            s.handle(Event::Tick, &inputs(&c, last, false), &clock(now)),
            periodic_check()
        );
        s.handle(
            Event::CheckFinished,
            &inputs(&c, Some(now), true),
            &clock(now),
        );
        assert_eq!(
            s.handle(Event::Tick, &inputs(&c, Some(now), true), &clock(now)),
            sleep(now + TimeDelta::hours(1))
        );
    }

    // --- periodic: maintenance windows -----------------------------------------------------

    #[test]
    fn periodic_wakes_at_next_window_start_when_sooner() {
        let c = cfg("6h", vec![daily(14, 0, 15, 0)]);
        let last = at(28, 12, 0);
        let mut s = idle();
        assert_eq!(
            s.handle(
                Event::Tick,
                &inputs(&c, Some(last), true),
                &clock(at(28, 12, 30))
            ),
            sleep(at(28, 14, 1))
        );
        // At the wake-up the window is open and started after the last check: check.
        assert_eq!(
            s.handle(
                Event::Tick,
                &inputs(&c, Some(last), true),
                &clock(at(28, 14, 1))
            ),
            periodic_check()
        );
    }

    #[test]
    fn periodic_keeps_the_frequency_when_sooner_than_the_window() {
        let c = cfg("1h", vec![daily(14, 0, 15, 0)]);
        let last = at(28, 12, 0);
        let mut s = idle();
        assert_eq!(
            s.handle(
                Event::Tick,
                &inputs(&c, Some(last), true),
                &clock(at(28, 12, 30))
            ),
            sleep(at(28, 13, 1))
        );
    }

    #[test]
    fn periodic_check_outside_windows_is_skipped() {
        let c = cfg("1h", vec![daily(14, 0, 15, 0)]);
        let last = at(28, 12, 0);
        let mut s = idle();
        assert_eq!(
            s.handle(
                Event::Tick,
                &inputs(&c, Some(last), true),
                &clock(at(28, 13, 1))
            ),
            Action::Skip {
                status: STATUS_SKIPPED,
                until: at(28, 14, 1)
            }
        );
        assert_eq!(s.phase(), Phase::Idle);
        assert_eq!(
            STATUS_SKIPPED,
            "Skipping update check outside of maintenance window(s)"
        );
    }

    #[test]
    fn skip_counts_as_a_check() {
        let c = cfg("1h", vec![daily(14, 0, 15, 0)]);
        let mut s = idle();
        // The runner recorded the skip at 13:01: nothing is due before the window opens.
        let last = Some(at(28, 13, 1));
        assert_eq!(
            s.handle(Event::Tick, &inputs(&c, last, true), &clock(at(28, 13, 30))),
            sleep(at(28, 14, 1))
        );
    }

    #[test]
    fn periodic_inside_a_window_checks_on_frequency() {
        let c = cfg("30m", vec![daily(14, 0, 16, 0)]);
        let mut s = idle();
        let last = Some(at(28, 14, 1));
        assert_eq!(
            s.handle(Event::Tick, &inputs(&c, last, true), &clock(at(28, 14, 10))),
            sleep(at(28, 14, 32)),
            "the open window's start is behind us, tomorrow's is further than 30m"
        );
        assert_eq!(
            s.handle(Event::Tick, &inputs(&c, last, true), &clock(at(28, 14, 32))),
            periodic_check()
        );
    }

    #[test]
    fn outside_windows_skips_repeat_on_frequency_until_a_window() {
        let c = cfg("6h", vec![daily(2, 0, 3, 0)]);
        let mut s = idle();
        let last = Some(at(28, 2, 1));
        // 08:02 is due by frequency but outside: skip.
        assert_eq!(
            s.handle(Event::Tick, &inputs(&c, last, true), &clock(at(28, 8, 2))),
            Action::Skip {
                status: STATUS_SKIPPED,
                until: at(28, 14, 3)
            },
            "the frequency is sooner than tomorrow's window"
        );
        let last = Some(at(28, 8, 2));
        assert_eq!(
            s.handle(Event::Tick, &inputs(&c, last, true), &clock(at(28, 8, 3))),
            sleep(at(28, 14, 3))
        );
        // Once the frequency is longer than the wait for the window, the window wins.
        let c = cfg("24h", vec![daily(2, 0, 3, 0)]);
        assert_eq!(
            s.handle(Event::Tick, &inputs(&c, last, true), &clock(at(28, 8, 3))),
            sleep(at(29, 2, 1))
        );
    }

    #[test]
    fn any_of_several_windows_lets_the_check_run() {
        let c = cfg("1h", vec![daily(2, 0, 3, 0), daily(13, 0, 14, 0)]);
        let mut s = idle();
        assert_eq!(
            s.handle(
                Event::Tick,
                &inputs(&c, Some(at(28, 12, 0)), true),
                &clock(at(28, 13, 1))
            ),
            periodic_check()
        );
    }

    #[test]
    fn window_past_midnight_lets_the_check_run_after_midnight() {
        let c = cfg("6h", vec![daily(23, 0, 1, 0)]);
        let mut s = idle();
        let last = Some(at(28, 20, 0));
        assert_eq!(
            s.handle(Event::Tick, &inputs(&c, last, true), &clock(at(28, 20, 5))),
            sleep(at(28, 23, 1))
        );
        // Woken late, after midnight: still inside the window that started at 23:00.
        assert_eq!(
            s.handle(Event::Tick, &inputs(&c, last, true), &clock(at(29, 0, 30))),
            periodic_check()
        );
    }

    #[test]
    fn week_wrapping_window_reached_from_midweek() {
        let c = cfg(
            "168h",
            vec![days(Weekday::Saturday, 22, 0, Weekday::Monday, 6, 0)],
        );
        let mut s = idle();
        let last = Some(at(28, 12, 0)); // Thursday
        assert_eq!(
            s.handle(Event::Tick, &inputs(&c, last, true), &clock(at(28, 12, 5))),
            sleep(at(30, 22, 1))
        );
        // Sunday noon, inside the window: a check.
        assert_eq!(
            s.handle(Event::Tick, &inputs(&c, last, true), &clock(at(31, 12, 0))),
            periodic_check()
        );
    }

    #[test]
    fn windows_follow_the_local_offset() {
        let c = cfg("24h", vec![daily(3, 0, 4, 0)]);
        let mut s = idle();
        let plus2 = FixedOffset::east_opt(2 * 3600).unwrap();
        let last = Some(at(28, 12, 0));
        let clk = FixedClock {
            now: at(28, 12, 5),
            offset: plus2,
        };
        // 03:00 at +02:00 is 01:00 UTC.
        assert_eq!(
            s.handle(Event::Tick, &inputs(&c, last, true), &clk),
            sleep(at(29, 1, 1))
        );
    }

    /// Central European time: +01:00, +02:00 from 2025-03-30 01:00 UTC to 2025-10-26
    /// 01:00 UTC.
    struct Cet(DateTime<Utc>);

    impl Clock for Cet {
        fn now(&self) -> DateTime<Utc> {
            self.0
        }

        fn local_offset(&self, at: DateTime<Utc>) -> FixedOffset {
            let summer = Utc.with_ymd_and_hms(2025, 3, 30, 1, 0, 0).unwrap()
                ..Utc.with_ymd_and_hms(2025, 10, 26, 1, 0, 0).unwrap();
            FixedOffset::east_opt(if summer.contains(&at) { 7200 } else { 3600 }).unwrap()
        }
    }

    #[test]
    fn window_after_spring_forward_opens_at_local_time() {
        // Saturday noon (+01:00); the window opens at 03:00 local on Sunday, which is
        // already summer time (+02:00): 01:00 UTC, not 02:00.
        let c = cfg("24h", vec![daily(3, 0, 4, 0)]);
        let clk = Cet(Utc.with_ymd_and_hms(2025, 3, 29, 12, 0, 0).unwrap());
        assert_eq!(
            next_window_start(&c.maintenance_windows, &clk),
            Some(Utc.with_ymd_and_hms(2025, 3, 30, 1, 0, 0).unwrap())
        );
        let mut s = idle();
        let last = Some(clk.0 - TimeDelta::minutes(5));
        assert_eq!(
            s.handle(Event::Tick, &inputs(&c, last, true), &clk),
            sleep(Utc.with_ymd_and_hms(2025, 3, 30, 1, 1, 0).unwrap())
        );
        let woken = Cet(Utc.with_ymd_and_hms(2025, 3, 30, 1, 1, 0).unwrap());
        assert_eq!(
            s.handle(Event::Tick, &inputs(&c, last, true), &woken),
            periodic_check()
        );
    }

    #[test]
    fn window_after_fall_back_opens_at_local_time() {
        // Saturday noon (+02:00); 03:00 local on Sunday is winter time: 02:00 UTC.
        let c = cfg("24h", vec![daily(3, 0, 4, 0)]);
        let clk = Cet(Utc.with_ymd_and_hms(2025, 10, 25, 12, 0, 0).unwrap());
        assert_eq!(
            next_window_start(&c.maintenance_windows, &clk),
            Some(Utc.with_ymd_and_hms(2025, 10, 26, 2, 0, 0).unwrap())
        );
    }

    // --- provider notifications -------------------------------------------------------

    #[test]
    fn provider_notification_checks_now_when_allowed() {
        let c = cfg("6h", vec![]);
        let mut s = idle();
        let now = at(28, 12, 5);
        assert_eq!(
            s.handle(
                Event::ProviderNotification,
                &inputs(&c, Some(at(28, 12, 0)), true),
                &clock(now)
            ),
            periodic_check()
        );
    }

    #[test]
    fn provider_notification_respects_windows_and_never() {
        let c = cfg("6h", vec![daily(2, 0, 3, 0)]);
        let mut s = idle();
        let now = at(28, 12, 5);
        let last = Some(at(28, 12, 0));
        assert_eq!(
            s.handle(
                Event::ProviderNotification,
                &inputs(&c, last, true),
                &clock(now)
            ),
            Action::Skip {
                status: STATUS_SKIPPED,
                until: at(28, 18, 6)
            }
        );
        let c = cfg("never", vec![]);
        assert_eq!(
            s.handle(
                Event::ProviderNotification,
                &inputs(&c, last, true),
                &clock(now)
            ),
            sleep(now + TimeDelta::hours(1))
        );
    }

    #[test]
    fn stored_frequency_that_does_not_parse_falls_back_to_six_hours() {
        let c = cfg("bogus", vec![]);
        let mut s = idle();
        assert_eq!(
            s.handle(
                Event::Tick,
                &inputs(&c, Some(at(28, 12, 0)), true),
                &clock(at(28, 12, 5))
            ),
            sleep(at(28, 18, 1))
        );
    }

    #[test]
    fn status_texts_are_upstreams() {
        assert_eq!(STATUS_RUNNING, "Running update check");
        assert_eq!(STATUS_COMPLETED, "Update check completed");
        assert_eq!(
            status_os_updated("IncusOS", "202511041800"),
            "IncusOS has been updated to version 202511041800"
        );
    }
}
