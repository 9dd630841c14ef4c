//! Network changes with confirmation and automatic rollback.
//!
//! A `PUT /1.0/system/network` with a `confirmation_timeout` is applied on trial: the
//! configuration it replaces is kept (persisted, so that a reboot before confirmation
//! comes back to it), and unless `:confirm` arrives before the timeout the previous
//! configuration is applied again. A trial change whose own apply fails is rolled back at
//! once. A change without a timeout is applied for good.
//!
//! [`Phase`] and its transitions are pure (time is passed in, as [`Tick`]s since an
//! arbitrary start), so every transition is tested on its own; [`Changes`] drives them
//! with tokio's clock, an [`Apply`] that does the work and a [`Persist`] that stores the
//! configuration and the prior one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// Milliseconds on the clock of whoever drives the machine.
pub type Tick = u64;

/// The longest an apply may take; a shorter confirmation timeout shortens it.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Refusal texts (upstream's).
pub const PENDING: &str =
    "a pending network configuration must first be confirmed before a new configuration can be applied";
pub const IN_PROGRESS: &str = "a network configuration is already in progress";
pub const NOTHING_PENDING: &str = "no network configuration is pending a confirmation";

/// Log lines (upstream's) when a trial change is undone.
pub const ROLLBACK_INVALID: &str =
    "Invalid network configuration detected, rolling back to prior known-good state";
pub const ROLLBACK_TIMEOUT: &str =
    "Timeout expired, rolling back network configuration to prior known-good state";
pub const ROLLBACK_FAILED: &str = "Failed to roll back network configuration";

/// Where the network configuration is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing running, nothing waiting for a confirmation.
    Idle,
    /// A change is being applied; `trial` holds its confirmation timeout (ms) when it has
    /// one, and `confirmed` whether `:confirm` already arrived.
    Applying { trial: Option<u64>, confirmed: bool },
    /// A trial change is in place and is undone at `deadline` unless confirmed.
    AwaitingConfirmation { deadline: Tick },
    /// The prior configuration is being applied again.
    RollingBack { why: Rollback },
}

/// Why a trial change is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollback {
    /// Its own apply failed.
    Invalid,
    /// It was not confirmed in time.
    Timeout,
}

impl Rollback {
    pub fn log_line(self) -> &'static str {
        match self {
            Rollback::Invalid => ROLLBACK_INVALID,
            Rollback::Timeout => ROLLBACK_TIMEOUT,
        }
    }
}

/// Why a change cannot start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A trial change waits for its confirmation (400).
    Pending,
    /// Another change or a rollback is running (500).
    InProgress,
}

impl Refused {
    pub fn message(self) -> &'static str {
        match self {
            Refused::Pending => PENDING,
            Refused::InProgress => IN_PROGRESS,
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Refused::Pending => 400,
            Refused::InProgress => 500,
        }
    }
}

/// What the driver does after an apply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterApply {
    /// Done; if the change was a trial, the prior configuration is dropped.
    Settled { drop_prior: bool },
    /// A trial change is in place: wait until the deadline.
    Wait { deadline: Tick },
    /// Apply the prior configuration again.
    RollBack(Rollback),
}

impl Phase {
    /// A trial change waits for (or may still get) its confirmation: a new change is
    /// refused with [`PENDING`]. This is checked before anything else in a PUT.
    pub fn pending(self) -> bool {
        match self {
            Phase::Applying { trial, .. } => trial.is_some(),
            Phase::AwaitingConfirmation { .. } => true,
            Phase::RollingBack { .. } => true,
            Phase::Idle => false,
        }
    }

    /// A change or a rollback is running (`configuration_in_process`).
    pub fn in_process(self) -> bool {
        matches!(self, Phase::Applying { .. } | Phase::RollingBack { .. })
    }

    /// A change starts; `trial` is its confirmation timeout.
    pub fn begin(&mut self, trial: Option<Duration>) -> Result<(), Refused> {
        match *self {
            Phase::Idle => {
                *self = Phase::Applying {
                    trial: trial.map(|t| t.as_millis() as u64),
                    confirmed: false,
                };
                Ok(())
            }
            p if p.pending() => Err(Refused::Pending),
            _ => Err(Refused::InProgress),
        }
    }

    /// The apply of a change ended, `ok` or not, at `now`.
    pub fn applied(&mut self, now: Tick, ok: bool) -> AfterApply {
        let Phase::Applying { trial, confirmed } = *self else {
            debug_assert!(false, "applied() while {self:?}");
            return AfterApply::Settled { drop_prior: false };
        };
        match (trial, ok, confirmed) {
            (None, _, _) => {
                *self = Phase::Idle;
                AfterApply::Settled { drop_prior: false }
            }
            // A trial change that failed is undone, confirmed or not: what it left is
            // not a configuration anyone chose.
            (Some(_), false, _) => {
                *self = Phase::RollingBack {
                    why: Rollback::Invalid,
                };
                AfterApply::RollBack(Rollback::Invalid)
            }
            (Some(_), true, true) => {
                *self = Phase::Idle;
                AfterApply::Settled { drop_prior: true }
            }
            (Some(t), true, false) => {
                let deadline = now.saturating_add(t);
                *self = Phase::AwaitingConfirmation { deadline };
                AfterApply::Wait { deadline }
            }
        }
    }

    /// `:confirm`. `Ok(true)`: the change is kept now and the prior configuration can go;
    /// `Ok(false)`: noted, the change is still being applied.
    pub fn confirm(&mut self) -> Result<bool, &'static str> {
        match *self {
            Phase::AwaitingConfirmation { .. } => {
                *self = Phase::Idle;
                Ok(true)
            }
            Phase::Applying {
                trial: Some(t),
                confirmed: false,
            } => {
                *self = Phase::Applying {
                    trial: Some(t),
                    confirmed: true,
                };
                Ok(false)
            }
            _ => Err(NOTHING_PENDING),
        }
    }

    /// The clock reached `now`: a trial change past its deadline is undone.
    pub fn tick(&mut self, now: Tick) -> Option<Rollback> {
        match *self {
            Phase::AwaitingConfirmation { deadline } if now >= deadline => {
                *self = Phase::RollingBack {
                    why: Rollback::Timeout,
                };
                Some(Rollback::Timeout)
            }
            _ => None,
        }
    }

    /// The rollback ended (either way): back to idle, the prior configuration dropped.
    pub fn rolled_back(&mut self) {
        debug_assert!(matches!(self, Phase::RollingBack { .. }), "{self:?}");
        *self = Phase::Idle;
    }
}

/// Parses `confirmation_timeout` (a Go duration) with upstream's texts.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let ns = crate::system::update::config::parse_go_duration(text)
        .map_err(|e| format!("invalid confirmation timeout provided: {e}"))?;
    if ns <= 0 {
        return Err("confirmation timeout must be greater than zero".into());
    }
    Ok(Duration::from_nanos(ns as u64))
}

/// How long one apply may take for a change with confirmation timeout `trial`.
pub fn apply_timeout(trial: Option<Duration>) -> Duration {
    trial.map_or(APPLY_TIMEOUT, |t| t.min(APPLY_TIMEOUT))
}

/// Does the work of one change: brings the machine in line with `config` within
/// `timeout`, putting back what it changed when it fails.
pub trait Apply<C>: Send + Sync + 'static {
    fn apply(
        &self,
        config: C,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

/// Stores the configuration in place and the prior one (kept while a trial runs).
pub trait Persist<C>: Send + Sync + 'static {
    fn current(&self) -> C;
    fn save_prior(&self, prior: Option<C>) -> Result<(), String>;
}

/// Drives [`Phase`] for one machine: one change at a time, the watcher of a trial change,
/// `:confirm`.
pub struct Changes<C, A, P> {
    inner: Arc<Inner<C, A, P>>,
}

impl<C, A, P> Clone for Changes<C, A, P> {
    fn clone(&self) -> Self {
        Changes {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<C, A, P> {
    phase: Mutex<Phase>,
    /// The configuration a trial change replaced.
    prior: Mutex<Option<C>>,
    /// Wakes the watcher of a trial change (confirmed).
    wake: Notify,
    apply: A,
    persist: P,
    start: tokio::time::Instant,
}

impl<C, A, P> Changes<C, A, P>
where
    C: Clone + Send + Sync + 'static,
    A: Apply<C>,
    P: Persist<C>,
{
    pub fn new(apply: A, persist: P) -> Self {
        Changes {
            inner: Arc::new(Inner {
                phase: Mutex::new(Phase::Idle),
                prior: Mutex::new(None),
                wake: Notify::new(),
                apply,
                persist,
                start: tokio::time::Instant::now(),
            }),
        }
    }

    fn now(&self) -> Tick {
        self.inner.start.elapsed().as_millis() as Tick
    }

    fn at(&self, tick: Tick) -> tokio::time::Instant {
        self.inner.start + Duration::from_millis(tick)
    }

    pub fn phase(&self) -> Phase {
        *self.inner.phase.lock().unwrap()
    }

    /// The first check of a PUT.
    pub fn refuse_if_pending(&self) -> Result<(), Refused> {
        if self.phase().pending() {
            Err(Refused::Pending)
        } else {
            Ok(())
        }
    }

    /// Applies `config`; with `trial`, on trial (answers once the apply ended: the
    /// watcher runs on its own). A failed trial is rolled back before this returns.
    pub async fn change(&self, config: C, trial: Option<Duration>) -> Result<(), ChangeError> {
        self.inner
            .phase
            .lock()
            .unwrap()
            .begin(trial)
            .map_err(ChangeError::Refused)?;
        if trial.is_some() {
            let prior = self.inner.persist.current();
            if let Err(e) = self.inner.persist.save_prior(Some(prior.clone())) {
                *self.inner.phase.lock().unwrap() = Phase::Idle;
                return Err(ChangeError::Failed(format!(
                    "cannot keep the current network configuration for a rollback: {e}"
                )));
            }
            *self.inner.prior.lock().unwrap() = Some(prior);
        }
        let result = self.inner.apply.apply(config, apply_timeout(trial)).await;
        let next = self
            .inner
            .phase
            .lock()
            .unwrap()
            .applied(self.now(), result.is_ok());
        match next {
            AfterApply::Settled { drop_prior } => {
                if drop_prior {
                    self.drop_prior();
                }
            }
            AfterApply::Wait { deadline } => {
                let this = self.clone();
                tokio::spawn(async move { this.watch(deadline).await });
            }
            AfterApply::RollBack(why) => self.roll_back(why).await,
        }
        result.map_err(ChangeError::Failed)
    }

    /// `:confirm`.
    pub fn confirm(&self) -> Result<(), &'static str> {
        let settled = self.inner.phase.lock().unwrap().confirm()?;
        if settled {
            tracing::info!("network configuration confirmed");
            self.drop_prior();
            self.inner.wake.notify_one();
        }
        Ok(())
    }

    /// Waits for the deadline of a trial change or its confirmation.
    async fn watch(&self, deadline: Tick) {
        tokio::select! {
            _ = tokio::time::sleep_until(self.at(deadline)) => {}
            _ = self.inner.wake.notified() => {}
        }
        let due = self.inner.phase.lock().unwrap().tick(self.now());
        if let Some(why) = due {
            self.roll_back(why).await;
        }
    }

    async fn roll_back(&self, why: Rollback) {
        tracing::warn!("{}", why.log_line());
        let prior = self.inner.prior.lock().unwrap().clone();
        match prior {
            Some(prior) => {
                if let Err(e) = self.inner.apply.apply(prior, APPLY_TIMEOUT).await {
                    tracing::error!(error = %e, "{ROLLBACK_FAILED}");
                }
            }
            None => tracing::error!(error = "no prior configuration", "{ROLLBACK_FAILED}"),
        }
        self.inner.phase.lock().unwrap().rolled_back();
        self.drop_prior();
    }

    fn drop_prior(&self) {
        *self.inner.prior.lock().unwrap() = None;
        if let Err(e) = self.inner.persist.save_prior(None) {
            tracing::error!(error = %e, "cannot clear the prior network configuration");
        }
    }
}

/// Why a change did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeError {
    Refused(Refused),
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    const T45: Duration = Duration::from_secs(45);

    fn applying(trial: Option<u64>, confirmed: bool) -> Phase {
        Phase::Applying { trial, confirmed }
    }

    // --- the pure transitions, one test each ---------------------------------------

    #[test]
    fn idle_begins_a_change_for_good_or_on_trial() {
        let mut p = Phase::Idle;
        p.begin(None).unwrap();
        assert_eq!(p, applying(None, false));
        assert!(!p.pending());
        assert!(p.in_process());
        let mut p = Phase::Idle;
        p.begin(Some(T45)).unwrap();
        assert_eq!(p, applying(Some(45_000), false));
        assert!(p.pending());
    }

    #[test]
    fn a_change_while_another_applies_is_in_progress_or_pending() {
        let mut p = applying(None, false);
        assert_eq!(p.begin(None), Err(Refused::InProgress));
        assert_eq!(p, applying(None, false));
        let mut p = applying(Some(1), false);
        assert_eq!(p.begin(None), Err(Refused::Pending));
        let mut p = Phase::AwaitingConfirmation { deadline: 9 };
        assert_eq!(p.begin(Some(T45)), Err(Refused::Pending));
        assert_eq!(p, Phase::AwaitingConfirmation { deadline: 9 });
        let mut p = Phase::RollingBack {
            why: Rollback::Timeout,
        };
        assert_eq!(p.begin(None), Err(Refused::Pending));
        assert_eq!(Refused::Pending.status(), 400);
        assert_eq!(Refused::InProgress.status(), 500);
    }

    #[test]
    fn a_change_for_good_settles_whether_it_applied_or_not() {
        for ok in [true, false] {
            let mut p = applying(None, false);
            assert_eq!(
                p.applied(100, ok),
                AfterApply::Settled { drop_prior: false }
            );
            assert_eq!(p, Phase::Idle);
        }
    }

    #[test]
    fn an_applied_trial_waits_until_its_deadline() {
        let mut p = applying(Some(45_000), false);
        assert_eq!(
            p.applied(1_000, true),
            AfterApply::Wait { deadline: 46_000 }
        );
        assert_eq!(p, Phase::AwaitingConfirmation { deadline: 46_000 });
        assert!(p.pending());
        assert!(!p.in_process());
    }

    #[test]
    fn a_failed_trial_rolls_back_at_once_even_if_confirmed() {
        for confirmed in [false, true] {
            let mut p = applying(Some(45_000), confirmed);
            assert_eq!(p.applied(1, false), AfterApply::RollBack(Rollback::Invalid));
            assert_eq!(
                p,
                Phase::RollingBack {
                    why: Rollback::Invalid
                }
            );
            assert!(p.in_process());
        }
    }

    #[test]
    fn a_trial_confirmed_while_applying_settles_when_applied() {
        let mut p = applying(Some(45_000), false);
        assert_eq!(p.confirm(), Ok(false));
        assert_eq!(p, applying(Some(45_000), true));
        assert_eq!(p.applied(5, true), AfterApply::Settled { drop_prior: true });
        assert_eq!(p, Phase::Idle);
    }

    #[test]
    fn confirming_an_awaited_trial_keeps_it() {
        let mut p = Phase::AwaitingConfirmation { deadline: 50 };
        assert_eq!(p.confirm(), Ok(true));
        assert_eq!(p, Phase::Idle);
        assert_eq!(p.tick(1_000_000), None);
    }

    #[test]
    fn confirming_with_nothing_pending_is_refused() {
        for mut p in [
            Phase::Idle,
            applying(None, false),
            applying(Some(1), true),
            Phase::RollingBack {
                why: Rollback::Timeout,
            },
        ] {
            let before = p;
            assert_eq!(p.confirm(), Err(NOTHING_PENDING));
            assert_eq!(p, before);
        }
    }

    #[test]
    fn the_deadline_rolls_back_a_trial_and_nothing_before_it() {
        let mut p = Phase::AwaitingConfirmation { deadline: 50 };
        assert_eq!(p.tick(49), None);
        assert_eq!(p, Phase::AwaitingConfirmation { deadline: 50 });
        assert_eq!(p.tick(50), Some(Rollback::Timeout));
        assert_eq!(
            p,
            Phase::RollingBack {
                why: Rollback::Timeout
            }
        );
        for mut p in [Phase::Idle, applying(Some(1), false)] {
            let before = p;
            assert_eq!(p.tick(u64::MAX), None);
            assert_eq!(p, before);
        }
    }

    #[test]
    fn a_rollback_ends_idle() {
        let mut p = Phase::RollingBack {
            why: Rollback::Invalid,
        };
        p.rolled_back();
        assert_eq!(p, Phase::Idle);
        assert!(!p.pending());
    }

    #[test]
    fn confirmation_timeouts_parse_as_go_durations_with_upstreams_texts() {
        assert_eq!(parse_timeout("45s"), Ok(T45));
        assert_eq!(parse_timeout("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_timeout("bizbaz"),
            Err(r#"invalid confirmation timeout provided: time: invalid duration "bizbaz""#.into())
        );
        assert_eq!(
            parse_timeout("-1m"),
            Err("confirmation timeout must be greater than zero".into())
        );
        assert_eq!(
            parse_timeout("0"),
            Err("confirmation timeout must be greater than zero".into())
        );
        assert_eq!(apply_timeout(None), APPLY_TIMEOUT);
        assert_eq!(apply_timeout(Some(T45)), APPLY_TIMEOUT);
        assert_eq!(
            apply_timeout(Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
    }

    // --- the driver, on tokio's paused clock ---------------------------------------

    /// A machine whose "network" is a string; configs containing "bad" fail to apply
    /// (and, as a real apply does, leave what was there).
    #[derive(Clone, Default)]
    struct Fake {
        live: Arc<Mutex<String>>,
        prior: Arc<Mutex<Option<String>>>,
        applies: Arc<Mutex<Vec<(String, Duration)>>>,
    }

    impl Apply<String> for Fake {
        async fn apply(&self, config: String, timeout: Duration) -> Result<(), String> {
            self.applies.lock().unwrap().push((config.clone(), timeout));
            tokio::time::sleep(Duration::from_secs(1)).await;
            if config.contains("bad") {
                return Err(format!("cannot apply {config}"));
            }
            *self.live.lock().unwrap() = config;
            Ok(())
        }
    }

    impl Persist<String> for Fake {
        fn current(&self) -> String {
            self.live.lock().unwrap().clone()
        }
        fn save_prior(&self, prior: Option<String>) -> Result<(), String> {
            *self.prior.lock().unwrap() = prior;
            Ok(())
        }
    }

    fn changes() -> (Changes<String, Fake, Fake>, Fake) {
        let fake = Fake::default();
        *fake.live.lock().unwrap() = "old".into();
        (Changes::new(fake.clone(), fake.clone()), fake)
    }

    fn live(f: &Fake) -> String {
        f.live.lock().unwrap().clone()
    }

    fn prior(f: &Fake) -> Option<String> {
        f.prior.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn an_unconfirmed_trial_is_undone_at_its_deadline_and_not_before() {
        let (c, f) = changes();
        c.change("new".into(), Some(T45)).await.unwrap();
        assert_eq!(live(&f), "new");
        assert_eq!(prior(&f).as_deref(), Some("old"), "kept for a reboot");
        assert_eq!(
            c.change("other".into(), None).await,
            Err(ChangeError::Refused(Refused::Pending))
        );
        // Applied at 1 s (an apply takes 1 s here): the deadline is 46 s.
        tokio::time::sleep(Duration::from_millis(44_900)).await;
        assert_eq!(live(&f), "new");
        assert!(c.phase().pending());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(live(&f), "old", "rolled back");
        assert_eq!(prior(&f), None);
        assert_eq!(c.phase(), Phase::Idle);
        let applies = f.applies.lock().unwrap().clone();
        assert_eq!(
            applies,
            vec![("new".into(), APPLY_TIMEOUT), ("old".into(), APPLY_TIMEOUT)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_confirmed_trial_stays_past_its_deadline() {
        let (c, f) = changes();
        c.change("new".into(), Some(Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(f.applies.lock().unwrap()[0].1, Duration::from_secs(10));
        c.confirm().unwrap();
        assert_eq!(prior(&f), None);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(live(&f), "new");
        assert_eq!(c.phase(), Phase::Idle);
        assert_eq!(c.confirm(), Err(NOTHING_PENDING));
        c.change("newer".into(), None).await.unwrap();
        assert_eq!(live(&f), "newer");
    }

    #[tokio::test(start_paused = true)]
    async fn a_trial_that_fails_to_apply_is_rolled_back_before_the_answer() {
        let (c, f) = changes();
        let e = c.change("bad".into(), Some(T45)).await.unwrap_err();
        assert_eq!(e, ChangeError::Failed("cannot apply bad".into()));
        assert_eq!(live(&f), "old");
        assert_eq!(prior(&f), None);
        assert_eq!(c.phase(), Phase::Idle);
        assert_eq!(
            f.applies.lock().unwrap().len(),
            2,
            "the prior one re-applied"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_for_good_keeps_no_prior_and_a_second_one_meanwhile_is_in_progress() {
        let (c, f) = changes();
        let c2 = c.clone();
        let first = tokio::spawn(async move { c2.change("new".into(), None).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(c.phase().in_process());
        assert_eq!(
            c.change("other".into(), None).await,
            Err(ChangeError::Refused(Refused::InProgress))
        );
        assert_eq!(c.confirm(), Err(NOTHING_PENDING));
        first.await.unwrap().unwrap();
        assert_eq!(live(&f), "new");
        assert_eq!(prior(&f), None);
        let e = c.change("bad".into(), None).await.unwrap_err();
        assert_eq!(e, ChangeError::Failed("cannot apply bad".into()));
        assert_eq!(f.applies.lock().unwrap().len(), 2, "no rollback for good");
    }
}
