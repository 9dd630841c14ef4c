//! The storage subsystem inside the daemon: the options it reads drives with, the lock
//! that runs changes one at a time, the scrub scheduler and the boot-time unlock and
//! import. The scheduler takes its time from a [`Clock`], so tests drive it without
//! waiting.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::cron;
use super::drives::Options;
use super::service::Machine;
use crate::api::App;
use crate::system::host::{self, Subsystem};

const SUBSYSTEM: Subsystem = Subsystem {
    name: "storage",
    writable: &[],
};

/// How often a running scrub is looked at.
pub const SCRUB_POLL: Duration = Duration::from_secs(60);

/// Wall-clock time and waiting.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The system clock and tokio's timer.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// The storage subsystem's share of the daemon.
pub struct Runtime {
    /// How drives are listed (the test switch admitting loop devices).
    pub opts: Options,
    pub clock: Arc<dyn Clock>,
    /// Held by every change (PUT, the actions, starting a scheduled scrub).
    pub changes: tokio::sync::Mutex<()>,
    schedule_changed: tokio::sync::Notify,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            opts: Options::default(),
            clock: Arc::new(SystemClock),
            changes: tokio::sync::Mutex::new(()),
            schedule_changed: tokio::sync::Notify::new(),
        }
    }
}

impl Runtime {
    /// Tells the scheduler the saved schedule changed.
    pub fn schedule_changed(&self) {
        self.schedule_changed.notify_one();
    }
}

/// Runs `f` on the machine, on a blocking thread (commands and disk I/O).
pub async fn with_machine<T: Send + 'static>(
    app: &App,
    f: impl FnOnce(&Machine) -> T + Send + 'static,
) -> T {
    let root = app.root.clone();
    let platform = app.platform.clone();
    let opts = app.storage.opts;
    tokio::task::spawn_blocking(move || {
        let host = host::handle(&root, &platform, &SUBSYSTEM);
        let m = Machine {
            root: &root,
            host: &host,
            opts,
        };
        f(&m)
    })
    .await
    .expect("storage task panicked")
}

/// At start, before applications: opens encrypted drives, imports keyed pools, grows
/// `local` (failures are logged; the daemon starts anyway).
pub async fn load_at_boot(app: &App) {
    let _changing = app.storage.changes.lock().await;
    if let Err(e) = with_machine(app, |m| m.load_at_boot()).await {
        tracing::warn!(error = %e, "cannot set up local storage");
    }
}

/// Scrubs every pool, one after the other, waiting for each scrub to end (looked at every
/// [`SCRUB_POLL`]); a pool already scrubbing is skipped.
pub async fn scrub_all(app: &App) -> Result<(), String> {
    let pools = with_machine(app, |m| m.pools()).await?;
    for pool in pools {
        if super::actions::scrubbing(&pool) {
            continue;
        }
        let name = pool.name.clone();
        tracing::info!(pool = %name, "Scrubbing pool");
        {
            let _changing = app.storage.changes.lock().await;
            let n = name.clone();
            with_machine(app, move |m| {
                m.run_ok(&["zpool", "scrub", &n], super::service::ZFS_TIMEOUT)
            })
            .await?;
        }
        loop {
            let n = name.clone();
            let p = with_machine(app, move |m| m.pool(&n)).await?;
            if !super::actions::scrubbing(&p) {
                break;
            }
            app.storage.clock.sleep(SCRUB_POLL).await;
        }
    }
    Ok(())
}

/// The scrub scheduler: waits for the saved schedule's next firing, then scrubs every
/// pool. A schedule saved meanwhile takes effect at once; a schedule that does not parse
/// (a hand-edited state) is logged and waits for a new one.
pub async fn scrub_scheduler(app: Arc<App>) {
    loop {
        let text = app.with_state(|s| s.doc().system.storage.scrub_schedule.clone());
        let next = match cron::Schedule::parse(&text) {
            Ok(s) => s.next_after(app.storage.clock.now()),
            Err(e) => {
                tracing::warn!(schedule = %text, error = %e, "the scrub schedule is not used");
                None
            }
        };
        let changed = app.storage.schedule_changed.notified();
        let Some(at) = next else {
            changed.await;
            continue;
        };
        let wait = (at - app.storage.clock.now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = app.storage.clock.sleep(wait) => {}
            _ = changed => continue,
        }
        if app.lifecycle.is_stopping() {
            return;
        }
        if let Err(e) = scrub_all(&app).await {
            tracing::warn!(error = %e, "scheduled pool scrub failed");
        }
    }
}
