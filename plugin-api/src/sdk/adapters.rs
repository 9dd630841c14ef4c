//! What sits between the ABI and a plugin's trait implementation: the config handling
//! every kind shares ([`Configured`]), the dispatch of `invoke` operations per kind, and the
//! ABI-facing [`Instance`], whose every entry point runs under `catch_unwind`.

use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RSlice, RSliceMut, RStr, RVec};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{
    Application, Error, Host, Provider, Result, RouteSpec, Service, Undo, NOT_SUPPORTED,
    PANIC_PREFIX, RESET_NOT_SUPPORTED,
};
use crate::abi::{
    ByteSinkRef, ByteSourceRef, HostHandle, PluginBox, PluginError, PluginOps, PluginOps_TO,
};
use crate::application::{AppContext, PluginState, Replace, Running};
use crate::manifest::{Hook, RouteRequest};
use crate::provider::{FetchOrder, FetchResult, Lookup, LookupResult, Registration};

/// Decodes a JSON request body with a clear error (the field path, what was wrong).
pub fn decode<T: DeserializeOwned>(input: &[u8]) -> Result<T> {
    if input.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::bad_request("request body is empty"));
    }
    let de = &mut serde_json::Deserializer::from_slice(input);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            Error::bad_request(format!("invalid request body: {inner}"))
        } else {
            Error::bad_request(format!("invalid request body: {path}: {inner}"))
        }
    })
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::internal(format!("cannot encode response: {e}")))
}

/// `{"state": .., "config": ..}`: the shape of every service and application.
#[derive(Serialize)]
struct Shape<'a, S, C> {
    state: &'a S,
    config: &'a C,
}

/// The same shape, `config` first (see [`Service::CONFIG_FIRST`]).
#[derive(Serialize)]
struct ConfigFirst<'a, S, C> {
    config: &'a C,
    state: &'a S,
}

#[derive(Deserialize)]
struct PutBody<C> {
    config: Option<C>,
}

/// The document the SDK persists for a plugin of any kind.
#[derive(Serialize, Deserialize, Default)]
#[serde(bound = "C: Serialize + DeserializeOwned + Default")]
pub(super) struct Stored<C> {
    #[serde(default)]
    pub(super) config: C,
}

/// The config-handling every kind shares: load, GET, PUT with validate/update/save.
struct Configured<C> {
    host: Host,
    _c: std::marker::PhantomData<fn() -> C>,
}

impl<C: Serialize + DeserializeOwned + Default + Clone> Configured<C> {
    fn new(host: Host) -> Self {
        Configured {
            host,
            _c: std::marker::PhantomData,
        }
    }

    fn config(&self) -> Result<C> {
        Ok(self.host.load_state::<Stored<C>>()?.config)
    }

    fn get<S: Serialize>(
        &self,
        config_first: bool,
        state: impl FnOnce(&C) -> Result<S>,
    ) -> Result<Vec<u8>> {
        let config = self.config()?;
        let state = state(&config)?;
        if config_first {
            encode(&ConfigFirst {
                config: &config,
                state: &state,
            })
        } else {
            encode(&Shape {
                state: &state,
                config: &config,
            })
        }
    }

    /// PUT: decode, validate, then `update` with a fresh journal and save. A failed
    /// update or save rolls the journal back (the saved config is still the old one); the
    /// journal is committed only once the new config is saved.
    fn put(
        &self,
        input: &[u8],
        multi_line: &[&str],
        validate: impl FnOnce(&C) -> Result<()>,
        validate_change: impl FnOnce(&C, &C) -> Result<()>,
        update: impl FnOnce(&mut Undo, &C, &C) -> Result<()>,
    ) -> Result<Vec<u8>> {
        let body: PutBody<C> = decode(input)?;
        let new = body
            .config
            .ok_or_else(|| Error::bad_request("invalid request body: missing field `config`"))?;
        crate::validate::config_strings(&new, multi_line).map_err(Error::bad_request)?;
        validate(&new)?;
        // Serializes read-modify-write of the stored config with `Host::update_config`.
        let _guard = self.host.config_lock();
        let old = self.config()?;
        validate_change(&old, &new)?;
        let mut undo = Undo::new(&self.host);
        let applied = update(&mut undo, &old, &new)
            .and_then(|()| self.host.save_state(&Stored { config: new }));
        match applied {
            Ok(()) => {
                undo.commit();
                empty()
            }
            Err(e) => {
                undo.rollback();
                Err(e)
            }
        }
    }

    fn with_config<T>(&self, f: impl FnOnce(&C) -> Result<T>) -> Result<T> {
        let config = self.config()?;
        f(&config)
    }

    /// Start, stop, reset: `f` with the saved config and a journal whose changes are kept
    /// whatever `f` returns.
    fn kept(&self, f: impl FnOnce(&mut Undo, &C) -> Result<()>) -> Result<Vec<u8>> {
        let config = self.config()?;
        Undo::kept(&self.host, |undo| f(undo, &config))?;
        empty()
    }
}

/// Dispatch of `invoke` operations, implemented once per kind.
trait Dispatch: Send + Sync {
    fn invoke(&self, op: &str, input: &[u8]) -> Result<Vec<u8>>;
    fn backup(&self, _options: &[u8], _out: &mut dyn Write) -> Result<()> {
        Err(Error::internal(NOT_SUPPORTED))
    }
    fn restore(&self, _input: &mut dyn Read) -> Result<()> {
        Err(Error::internal(NOT_SUPPORTED))
    }
}

/// The hooks a service's adapter dispatches; its manifest advertises no other.
pub(super) const SERVICE_HOOKS: &[Hook] =
    &[Hook::Get, Hook::Put, Hook::Start, Hook::Stop, Hook::Reset];

/// The hooks an application's adapter answers whatever the plugin declares; its
/// manifest lists these, and [`APPLICATION_OPTIONAL_HOOKS`] as far as they are declared.
pub(super) const APPLICATION_HOOKS: &[Hook] = &[
    Hook::Get,
    Hook::Put,
    Hook::Restart,
    Hook::Start,
    Hook::Stop,
    Hook::Initialize,
    Hook::Reload,
    Hook::Running,
    Hook::Restored,
];

/// The hooks an application has when it declares them (backup and restore through their
/// own entry points).
pub(super) const APPLICATION_OPTIONAL_HOOKS: &[Hook] = &[
    Hook::Action,
    Hook::Backup,
    Hook::Restore,
    Hook::Wipe,
    Hook::CanReplace,
];

/// The hooks a provider's adapter dispatches; its manifest advertises no other.
pub(super) const PROVIDER_HOOKS: &[Hook] = &[
    Hook::Get,
    Hook::Put,
    Hook::Register,
    Hook::Deregister,
    Hook::Refresh,
    Hook::ClearCache,
    Hook::Lookup,
    Hook::Fetch,
];

fn unknown_op(op: &str) -> Error {
    Error::new(
        501,
        format!("operation '{op}' is not implemented by this plugin"),
    )
}

fn empty() -> Result<Vec<u8>> {
    Ok(b"{}".to_vec())
}

/// An operation that is not one of the kind's hooks: one of the `declared` routes (matched
/// by its op name), else 501.
fn route<C>(
    cfg: &Configured<C>,
    declared: &[RouteSpec],
    op: &str,
    input: &[u8],
    f: impl FnOnce(RouteRequest, &C) -> Result<serde_json::Value>,
) -> Result<Vec<u8>>
where
    C: Serialize + DeserializeOwned + Default + Clone,
{
    if !declared.iter().any(|r| r.op == op) {
        return Err(unknown_op(op));
    }
    let req: RouteRequest = decode(input)?;
    encode(&cfg.with_config(|c| f(req, c))?)
}

struct ServiceAdapter<T: Service> {
    svc: T,
    cfg: Configured<T::Config>,
}

impl<T: Service> Dispatch for ServiceAdapter<T> {
    fn invoke(&self, op: &str, input: &[u8]) -> Result<Vec<u8>> {
        let s = &self.svc;
        let Some(hook) = Hook::from_op(op) else {
            return route(&self.cfg, T::ROUTES, op, input, |req, c| {
                s.route(op, req, c)
            });
        };
        match hook {
            Hook::Get => self.cfg.get(T::CONFIG_FIRST, |c| s.state(c)),
            Hook::Put => self.cfg.put(
                input,
                T::MULTI_LINE_FIELDS,
                |c| s.validate(c),
                |old, new| s.validate_change(old, new),
                |undo, old, new| s.update(undo, old, new),
            ),
            Hook::Start => self.cfg.kept(|undo, c| s.start(undo, c)),
            Hook::Stop => self.cfg.kept(|undo, c| s.stop(undo, c)),
            Hook::Reset => match T::RESET {
                Some(reset) => self.cfg.kept(|undo, c| reset(s, undo, c)),
                None => Err(Error::internal(RESET_NOT_SUPPORTED)),
            },
            // Not a service's hooks (named in full, so that a new hook is decided here).
            Hook::Action
            | Hook::Backup
            | Hook::Restore
            | Hook::FactoryReset
            | Hook::Restart
            | Hook::Register
            | Hook::Deregister
            | Hook::CheckUpdate
            | Hook::Refresh
            | Hook::ClearCache
            | Hook::Lookup
            | Hook::Fetch
            | Hook::Initialize
            | Hook::Reload
            | Hook::Wipe
            | Hook::CanReplace
            | Hook::Running
            | Hook::Restored => route(&self.cfg, T::ROUTES, op, input, |req, c| {
                s.route(op, req, c)
            }),
        }
    }
}

#[derive(Deserialize, Default)]
struct ActionBody {
    #[serde(default)]
    action: String,
    #[serde(default)]
    config: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct BackupOptions {
    #[serde(default)]
    complete: bool,
}

struct ApplicationAdapter<T: Application> {
    app: T,
    cfg: Configured<T::Config>,
}

fn not_supported<T>() -> Result<T> {
    Err(Error::internal(NOT_SUPPORTED))
}

impl<T: Application> Dispatch for ApplicationAdapter<T> {
    fn invoke(&self, op: &str, input: &[u8]) -> Result<Vec<u8>> {
        let a = &self.app;
        let Some(hook) = Hook::from_op(op) else {
            return route(&self.cfg, T::ROUTES, op, input, |req, c| {
                a.route(op, req, c)
            });
        };
        // Every hook but PUT, the action and can-replace takes the install's context.
        let ctx = || decode_or_default::<AppContext>(input);
        let done = |r: Result<()>| r.and_then(|()| empty());
        match hook {
            Hook::Get => {
                let ctx = ctx()?;
                self.cfg.get(false, |c| {
                    Ok(PluginState {
                        friendly_version: a.friendly_version(&ctx, c)?,
                    })
                })
            }
            Hook::Put => self.cfg.put(
                input,
                T::MULTI_LINE_FIELDS,
                |c| a.validate(c),
                |old, new| a.validate_change(old, new),
                |undo, old, new| a.update(undo, old, new),
            ),
            Hook::Start => {
                let ctx = ctx()?;
                self.cfg.kept(|undo, c| a.start(undo, &ctx, c))
            }
            Hook::Stop => {
                let ctx = ctx()?;
                self.cfg.kept(|undo, c| a.stop(undo, &ctx, c))
            }
            Hook::Restart => {
                let ctx = ctx()?;
                done(self.cfg.with_config(|c| a.restart(&ctx, c)))
            }
            Hook::Initialize => {
                let ctx = ctx()?;
                done(self.cfg.with_config(|c| a.initialize(&ctx, c)))
            }
            Hook::Reload => {
                let ctx = ctx()?;
                done(self.cfg.with_config(|c| a.reload(&ctx, c)))
            }
            Hook::Restored => {
                let ctx = ctx()?;
                done(self.cfg.with_config(|c| a.restored(&ctx, c)))
            }
            Hook::Running => {
                let ctx = ctx()?;
                let running = self.cfg.with_config(|c| a.running(&ctx, c))?;
                encode(&Running { running })
            }
            Hook::Wipe => {
                let Some(wipe) = T::WIPE else {
                    return not_supported();
                };
                let ctx = ctx()?;
                done(self.cfg.with_config(|c| wipe(a, &ctx, c)))
            }
            Hook::Action => {
                let Some(action) = T::ACTION else {
                    return not_supported();
                };
                let body: ActionBody = decode(input)?;
                encode(
                    &self
                        .cfg
                        .with_config(|c| action(a, c, &body.action, &body.config))?,
                )
            }
            Hook::CanReplace => {
                let Some(can_replace) = T::CAN_REPLACE else {
                    return not_supported();
                };
                let replace: Replace = decode_or_default(input)?;
                done(can_replace(a, &replace))
            }
            // Backup and restore stream through their own entry points, not `invoke`; the
            // rest are not an application's hooks.
            Hook::Backup
            | Hook::Restore
            | Hook::FactoryReset
            | Hook::Reset
            | Hook::Register
            | Hook::Deregister
            | Hook::CheckUpdate
            | Hook::Refresh
            | Hook::ClearCache
            | Hook::Lookup
            | Hook::Fetch => route(&self.cfg, T::ROUTES, op, input, |req, c| {
                a.route(op, req, c)
            }),
        }
    }
    fn backup(&self, options: &[u8], out: &mut dyn Write) -> Result<()> {
        let Some(streaming) = &T::STREAMING_BACKUP else {
            return not_supported();
        };
        let opts: BackupOptions = decode_or_default(options)?;
        (streaming.backup)(&self.app, opts.complete, out)
    }
    fn restore(&self, input: &mut dyn Read) -> Result<()> {
        let Some(streaming) = &T::STREAMING_BACKUP else {
            return not_supported();
        };
        (streaming.restore)(&self.app, input)
    }
}

struct ProviderAdapter<T: Provider> {
    prov: T,
    cfg: Configured<T::Config>,
}

impl<T: Provider> Dispatch for ProviderAdapter<T> {
    fn invoke(&self, op: &str, input: &[u8]) -> Result<Vec<u8>> {
        let p = &self.prov;
        let Some(hook) = Hook::from_op(op) else {
            return route(&self.cfg, T::ROUTES, op, input, |req, c| {
                p.route(op, req, c)
            });
        };
        match hook {
            Hook::Get => self.cfg.get(false, |c| p.state(c)),
            Hook::Put => self.cfg.put(
                input,
                T::MULTI_LINE_FIELDS,
                |c| p.validate(c),
                |old, new| p.validate_change(old, new),
                |undo, old, new| p.update(undo, old, new),
            ),
            Hook::Register => {
                let reg: Registration = decode_or_default(input)?;
                self.cfg.with_config(|c| p.register(c, &reg))?;
                empty()
            }
            Hook::Refresh => {
                let reg: Registration = decode_or_default(input)?;
                self.cfg.with_config(|c| p.refresh(c, &reg))?;
                empty()
            }
            Hook::Deregister => {
                let reg: Registration = decode_or_default(input)?;
                self.cfg.with_config(|c| p.deregister(c, &reg))?;
                empty()
            }
            Hook::ClearCache => {
                p.clear_cache();
                empty()
            }
            Hook::Lookup => {
                let q: Lookup = decode(input)?;
                let release = self
                    .cfg
                    .with_config(|c| p.lookup(c, &q.context, &q.target))?;
                encode(&LookupResult { release })
            }
            Hook::Fetch => {
                let order: FetchOrder = decode(input)?;
                let written = self.cfg.with_config(|c| p.fetch(c, &order))?;
                encode(&FetchResult { written })
            }
            // Not a provider's hooks.
            Hook::Reset
            | Hook::Action
            | Hook::Backup
            | Hook::Restore
            | Hook::FactoryReset
            | Hook::Restart
            | Hook::Start
            | Hook::Stop
            | Hook::CheckUpdate
            | Hook::Initialize
            | Hook::Reload
            | Hook::Wipe
            | Hook::CanReplace
            | Hook::Running
            | Hook::Restored => route(&self.cfg, T::ROUTES, op, input, |req, c| {
                p.route(op, req, c)
            }),
        }
    }
}

/// [`decode`] for a body that may be empty: an empty (or blank) input is `T::default()`.
pub fn decode_or_default<T: DeserializeOwned + Default>(input: &[u8]) -> Result<T> {
    if input.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        decode(input)
    }
}

/// The ABI-facing instance: every entry point runs under `catch_unwind`.
struct Instance(Box<dyn Dispatch>);

pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Runs `f`, turning a panic into a 500 [`PluginError`].
#[doc(hidden)]
pub fn __guard<T>(what: &str, f: impl FnOnce() -> Result<T>) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => RResult::ROk(v),
        Ok(Err(e)) => RResult::RErr(e.into()),
        Err(p) => RResult::RErr(PluginError::new(
            500,
            format!("{PANIC_PREFIX} in {what}: {}", panic_message(&*p)),
        )),
    }
}

struct SinkWriter<'a, 'b>(&'a mut ByteSinkRef<'b>);

impl Write for SinkWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .write(RSlice::from_slice(buf))
            .into_result()
            .map_err(|e| std::io::Error::other(e.message.into_string()))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct SourceReader<'a, 'b>(&'a mut ByteSourceRef<'b>);

impl Read for SourceReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0
            .read(RSliceMut::from_mut_slice(buf))
            .into_result()
            .map_err(|e| std::io::Error::other(e.message.into_string()))
    }
}

impl PluginOps for Instance {
    fn invoke(&self, op: RStr<'_>, input: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        __guard(op.as_str(), || {
            self.0.invoke(op.as_str(), input.as_slice()).map(RVec::from)
        })
    }

    fn backup(
        &self,
        options: RSlice<'_, u8>,
        mut sink: ByteSinkRef<'_>,
    ) -> RResult<(), PluginError> {
        __guard("backup", || {
            let mut w = std::io::BufWriter::with_capacity(64 * 1024, SinkWriter(&mut sink));
            self.0.backup(options.as_slice(), &mut w)?;
            w.flush()?;
            Ok(())
        })
    }

    fn restore(&self, mut source: ByteSourceRef<'_>) -> RResult<(), PluginError> {
        __guard("restore", || self.0.restore(&mut SourceReader(&mut source)))
    }
}

fn boxed(d: impl Dispatch + 'static) -> PluginBox {
    PluginOps_TO::from_value(Instance(Box::new(d)), TD_Opaque)
}

#[doc(hidden)]
pub fn __service_instance<T: Service>(host: HostHandle) -> Result<PluginBox> {
    let host = Host::from_handle(host);
    let svc = T::new(host.clone())?;
    Ok(boxed(ServiceAdapter {
        svc,
        cfg: Configured::new(host),
    }))
}

#[doc(hidden)]
pub fn __application_instance<T: Application>(host: HostHandle) -> Result<PluginBox> {
    let host = Host::from_handle(host);
    let app = T::new(host.clone())?;
    Ok(boxed(ApplicationAdapter {
        app,
        cfg: Configured::new(host),
    }))
}

#[doc(hidden)]
pub fn __provider_instance<T: Provider>(host: HostHandle) -> Result<PluginBox> {
    let host = Host::from_handle(host);
    let prov = T::new(host.clone())?;
    Ok(boxed(ProviderAdapter {
        prov,
        cfg: Configured::new(host),
    }))
}
