//! systemd over D-Bus (`org.freedesktop.systemd1`), with zbus.
//!
//! Jobs are awaited: the `JobRemoved` stream is opened before the call, and the job's result
//! must be `done`; anything else is an error naming the unit and the result. A unit that
//! was stopped and garbage-collected is loaded with `LoadUnit` (not `GetUnit`, which fails
//! for it), so its state reads `inactive`.

use std::time::Duration;

use futures_util::StreamExt;
use zbus::zvariant::OwnedObjectPath;

use super::systemd::{PowerAction, Systemd, UnitAction, Units};
use super::PlatformError;

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reload_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn reload(&self) -> zbus::Result<()>;
    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;
    fn subscribe(&self) -> zbus::Result<()>;

    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: zbus::zvariant::ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;

    #[zbus(property)]
    fn system_state(&self) -> zbus::Result<String>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    /// Whether the unit's `Condition*=` checks passed on its last start (a unit whose
    /// condition fails is skipped: its start job ends `done`, and it stays inactive).
    #[zbus(property)]
    fn condition_result(&self) -> zbus::Result<bool>;
    /// Pins the unit for this client: systemd keeps it loaded (and its state readable)
    /// even once inactive with nothing else referring to it.
    #[zbus(name = "Ref")]
    fn pin(&self) -> zbus::Result<()>;
    #[zbus(name = "Unref")]
    fn unpin(&self) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
trait Service {
    /// `Type=` (`simple`, `forking`, `oneshot`, `notify`, ...).
    #[zbus(property, name = "Type")]
    fn service_type(&self) -> zbus::Result<String>;
}

/// How long a unit job may take: systemd's own default start timeout (90 s) and a margin,
/// well within the time a plugin's change may take (`--plugin-change-timeout`).
const JOB_TIMEOUT: Duration = Duration::from_secs(100);

/// After a start job ended `done`, how long a unit is watched for dying right away (a
/// `Type=forking` daemon whose child exits at once still ends its start job `done`).
const SETTLE: Duration = Duration::from_millis(300);

/// systemd reached over a D-Bus connection.
pub struct DbusSystemd {
    conn: zbus::Connection,
    runtime: tokio::runtime::Handle,
}

fn err(what: &str, e: impl std::fmt::Display) -> PlatformError {
    PlatformError(format!("{what}: {e}"))
}

impl DbusSystemd {
    /// Connects to `address` (a D-Bus address such as
    /// `unix:path=/run/dbus/system_bus_socket`), or to the system bus when `None`.
    pub async fn connect(address: Option<&str>) -> Result<DbusSystemd, PlatformError> {
        let builder = match address {
            Some(a) => zbus::connection::Builder::address(a)
                .map_err(|e| err(&format!("invalid D-Bus address {a}"), e))?,
            None => zbus::connection::Builder::system()
                .map_err(|e| err("cannot use the system bus", e))?,
        };
        let conn = builder
            .build()
            .await
            .map_err(|e| err("cannot connect to the system bus", e))?;
        let manager = ManagerProxy::new(&conn)
            .await
            .map_err(|e| err("systemd manager", e))?;
        manager
            .subscribe()
            .await
            .map_err(|e| err("cannot subscribe to systemd's signals", e))?;
        Ok(DbusSystemd {
            conn,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// systemd's overall state (`running`, `degraded`, `starting`, `stopping`, ...).
    pub async fn system_state(&self) -> Result<String, PlatformError> {
        let m = self.manager().await?;
        m.system_state().await.map_err(|e| err("SystemState", e))
    }

    async fn manager(&self) -> Result<ManagerProxy<'_>, PlatformError> {
        ManagerProxy::new(&self.conn)
            .await
            .map_err(|e| err("systemd manager", e))
    }

    /// Starts a job and waits for its result. While systemd itself is stopping (the machine
    /// shuts down), stopping a unit is left to systemd: queuing a stop job then can hang on
    /// socket units.
    pub async fn run_job(&self, op: UnitAction, unit: &str) -> Result<(), PlatformError> {
        let m = self.manager().await?;
        if op == UnitAction::Stop && m.system_state().await.is_ok_and(|s| s == "stopping") {
            tracing::debug!(unit, "system is stopping: leaving the unit to systemd");
            return Ok(());
        }
        let mut removed = m
            .receive_job_removed()
            .await
            .map_err(|e| err("cannot watch systemd jobs", e))?;
        // A started unit is pinned until it settled: an inactive unit nothing refers to is
        // unloaded at once, and with it what its start did (its condition result).
        let pinned = if matches!(op, UnitAction::Start | UnitAction::Restart) {
            self.pin(unit).await
        } else {
            None
        };
        let result = self.job(&m, &mut removed, op, unit).await;
        if let Some(u) = pinned {
            if let Err(e) = u.unpin().await {
                tracing::debug!(unit, error = %e, "cannot unpin the unit");
            }
        }
        result
    }

    /// Pins `unit` (see `Unit.Ref`); `None` when it cannot be (logged).
    async fn pin(&self, unit: &str) -> Option<UnitProxy<'_>> {
        let path = self.unit_path(unit).await.ok()?;
        let u = UnitProxy::builder(&self.conn)
            .path(path)
            .ok()?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .ok()?;
        match u.pin().await {
            Ok(()) => Some(u),
            Err(e) => {
                tracing::debug!(unit, error = %e, "cannot pin the unit");
                None
            }
        }
    }

    async fn job(
        &self,
        m: &ManagerProxy<'_>,
        removed: &mut JobRemovedStream,
        op: UnitAction,
        unit: &str,
    ) -> Result<(), PlatformError> {
        let call = match op {
            UnitAction::Start => m.start_unit(unit, "replace").await,
            UnitAction::Stop => m.stop_unit(unit, "replace").await,
            UnitAction::Restart => m.restart_unit(unit, "replace").await,
            UnitAction::Reload => m.reload_unit(unit, "replace").await,
            UnitAction::ActiveState | UnitAction::Kill => {
                unreachable!("not a job")
            }
        };
        let job =
            call.map_err(|e| err(&format!("cannot {} {unit}", op.as_str()), dbus_message(e)))?;
        let wait = async {
            while let Some(signal) = removed.next().await {
                let Ok(args) = signal.args() else { continue };
                if args.job.as_str() == job.as_str() {
                    return Ok(args.result.to_string());
                }
            }
            Err(PlatformError("systemd's signal stream ended".into()))
        };
        let result = tokio::time::timeout(JOB_TIMEOUT, wait)
            .await
            .map_err(|_| {
                PlatformError(format!(
                    "{} of {unit} did not finish within {}s",
                    op.as_str(),
                    JOB_TIMEOUT.as_secs()
                ))
            })??;
        if result == "done" {
            if matches!(op, UnitAction::Start | UnitAction::Restart) {
                self.settle(unit).await?;
            }
            Ok(())
        } else {
            Err(PlatformError(format!(
                "job to {} {unit} failed: result '{result}'",
                op.as_str()
            )))
        }
    }

    /// Watches a just-started unit for [`SETTLE`]: a unit that fails in that time did not
    /// start, whatever its job said; nor did a service meant to keep running (any type but
    /// `oneshot`) that is back to `inactive`. Both happen to a `Type=forking` daemon whose
    /// child exits at once: `failed` when systemd saw the child's exit status, `inactive`
    /// when the child was gone before systemd read its pid.
    async fn settle(&self, unit: &str) -> Result<(), PlatformError> {
        let deadline = tokio::time::Instant::now() + SETTLE;
        let path = self.unit_path(unit).await?;
        let u = UnitProxy::builder(&self.conn)
            .path(path.clone())
            .map_err(|e| err("unit path", e))?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| err("unit proxy", e))?;
        let keeps_running = if unit.ends_with(".service") {
            let service = ServiceProxy::builder(&self.conn)
                .path(path)
                .map_err(|e| err("unit path", e))?
                .build()
                .await
                .map_err(|e| err("service proxy", e))?;
            let kind = service
                .service_type()
                .await
                .map_err(|e| err(&format!("Type of {unit}"), e))?;
            kind != "oneshot"
        } else {
            false
        };
        loop {
            let state = u
                .active_state()
                .await
                .map_err(|e| err(&format!("ActiveState of {unit}"), e))?;
            if state == "failed" {
                return Err(PlatformError(format!(
                    "{unit} started but failed right after"
                )));
            }
            if keeps_running && state == "inactive" {
                // Skipped by a condition (a daemon that does not run in a container):
                // what systemd calls a successful start.
                let skipped = !u
                    .condition_result()
                    .await
                    .map_err(|e| err(&format!("ConditionResult of {unit}"), e))?;
                if skipped {
                    tracing::debug!(unit, "start skipped: a condition of the unit failed");
                    return Ok(());
                }
                return Err(PlatformError(format!(
                    "{unit} started but stopped right after"
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn unit_path(&self, unit: &str) -> Result<OwnedObjectPath, PlatformError> {
        let m = self.manager().await?;
        m.load_unit(unit)
            .await
            .map_err(|e| err(&format!("cannot load {unit}"), dbus_message(e)))
    }

    /// The unit's `ActiveState`; a unit systemd does not know reads `inactive`.
    pub async fn active_state(&self, unit: &str) -> Result<String, PlatformError> {
        let path = self.unit_path(unit).await?;
        let u = UnitProxy::builder(&self.conn)
            .path(path)
            .map_err(|e| err("unit path", e))?
            .build()
            .await
            .map_err(|e| err("unit proxy", e))?;
        u.active_state()
            .await
            .map_err(|e| err(&format!("ActiveState of {unit}"), e))
    }

    /// SIGKILL to every process of the unit.
    pub async fn kill(&self, unit: &str) -> Result<(), PlatformError> {
        let m = self.manager().await?;
        m.kill_unit(unit, "all", 9)
            .await
            .map_err(|e| err(&format!("cannot kill {unit}"), dbus_message(e)))
    }

    pub async fn reload_daemon(&self) -> Result<(), PlatformError> {
        let m = self.manager().await?;
        m.reload()
            .await
            .map_err(|e| err("daemon-reload", dbus_message(e)))
    }

    /// Like `systemctl reboot|poweroff|suspend`: the target is started irreversibly. For
    /// reboot and power-off nothing is awaited (we are about to be stopped).
    pub async fn power_request(&self, action: PowerAction) -> Result<(), PlatformError> {
        let m = self.manager().await?;
        let target = match action {
            PowerAction::Reboot => "reboot.target",
            PowerAction::PowerOff => "poweroff.target",
            PowerAction::Suspend => "suspend.target",
        };
        m.start_unit(target, "replace-irreversibly")
            .await
            .map(drop)
            .map_err(|e| err(&format!("cannot {}", action.as_str()), dbus_message(e)))
    }

    /// Runs a D-Bus call to completion from a blocking thread (plugin calls and other
    /// callers of [`Units`] run on `spawn_blocking` threads, never on runtime workers).
    fn block<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, PlatformError>>,
    ) -> Result<T, PlatformError> {
        self.runtime.block_on(f)
    }
}

/// The D-Bus error's own text (`org.freedesktop.systemd1.NoSuchUnit: Unit x not found.`).
fn dbus_message(e: zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, Some(msg), _) => format!("{}: {msg}", name.as_str()),
        other => other.to_string(),
    }
}

impl Units for DbusSystemd {
    fn unit(&self, op: UnitAction, unit: &str) -> Result<String, PlatformError> {
        match op {
            UnitAction::ActiveState => self.block(self.active_state(unit)),
            UnitAction::Kill => self.block(self.kill(unit)).map(|_| String::new()),
            _ => self.block(self.run_job(op, unit)).map(|_| String::new()),
        }
    }

    fn daemon_reload(&self) -> Result<(), PlatformError> {
        self.block(self.reload_daemon())
    }
}

impl Systemd for DbusSystemd {
    fn power(&self, action: PowerAction) -> Result<(), PlatformError> {
        self.block(self.power_request(action))
    }

    fn reachable(&self) -> Result<(), PlatformError> {
        Ok(())
    }
}
