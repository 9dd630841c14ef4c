//! The manifest a plugin's type stands for, and the macros that export it as the plugin of
//! a `cdylib`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::std_types::{RBox, RResult, RString};

use super::adapters::{
    APPLICATION_HOOKS, APPLICATION_OPTIONAL_HOOKS, PROVIDER_HOOKS, SERVICE_HOOKS,
};
use super::{__guard, Application, Provider, Result, RouteSpec, Service};
use crate::abi::{PluginBox, PluginError};
use crate::manifest::{Hook, Kind, Manifest, Route};

fn base_manifest(name: &str, kind: Kind, version: &str, api_version: &str) -> Manifest {
    Manifest {
        name: name.to_string(),
        kind,
        version: version.to_string(),
        api_version: api_version.to_string(),
        hooks: vec![Hook::Get, Hook::Put],
        routes: Vec::<Route>::new(),
        dependencies: vec![],
        start_weight: 0,
        primary: false,
        paths: vec![],
        requires_application: None,
        variants: vec![],
        late_update_check: false,
        backup: None,
        debug_logs: vec![],
    }
}

/// Adds the hooks a plugin declares beyond get and put, as far as its kind's adapter
/// dispatches them (sorted, each once): a manifest never advertises a hook the plugin
/// would answer with "operation ... is not implemented".
fn advertise(m: &mut Manifest, declared: &[Hook], dispatched: &[Hook]) {
    m.hooks
        .extend(declared.iter().filter(|h| dispatched.contains(h)));
    m.hooks.sort();
    m.hooks.dedup();
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[doc(hidden)]
pub fn __service_manifest<T: Service>(version: &str, api_version: &str) -> Manifest {
    let mut m = base_manifest(T::NAME, Kind::Service, version, api_version);
    let reset: &[Hook] = if T::RESET.is_some() {
        &[Hook::Reset]
    } else {
        &[]
    };
    advertise(&mut m, &[Hook::Start, Hook::Stop], SERVICE_HOOKS);
    advertise(&mut m, reset, SERVICE_HOOKS);
    m.start_weight = T::START_WEIGHT;
    m.paths = strings(T::PATHS);
    m.requires_application = T::REQUIRES_APPLICATION.map(str::to_string);
    m.routes = routes(Kind::Service, T::NAME, T::ROUTES);
    m
}

fn routes(kind: Kind, name: &str, specs: &[RouteSpec]) -> Vec<Route> {
    let base = kind.route_base(name);
    specs
        .iter()
        .map(|r| Route {
            method: r.method,
            path: format!("{base}{}", r.suffix),
            op: r.op.to_string(),
        })
        .collect()
}

/// The panic message of an application that declares both archive kinds (the loader
/// shows it: see [`__manifest_json`]).
pub(super) const BOTH_BACKUPS: &str =
    "declares both BACKUP and STREAMING_BACKUP: an application's backups are either the \
     host's (BACKUP) or its own (STREAMING_BACKUP)";

#[doc(hidden)]
pub fn __application_manifest<T: Application>(version: &str, api_version: &str) -> Manifest {
    if T::BACKUP.is_some() && T::STREAMING_BACKUP.is_some() {
        panic!("application '{}' {BOTH_BACKUPS}", T::NAME);
    }
    let mut m = base_manifest(T::NAME, Kind::Application, version, api_version);
    let optional = [
        (Hook::Wipe, T::WIPE.is_some()),
        (Hook::Action, T::ACTION.is_some()),
        (Hook::CanReplace, T::CAN_REPLACE.is_some()),
        (Hook::Backup, T::STREAMING_BACKUP.is_some()),
        (Hook::Restore, T::STREAMING_BACKUP.is_some()),
    ];
    let declared: Vec<Hook> = optional
        .into_iter()
        .filter_map(|(h, set)| set.then_some(h))
        .collect();
    advertise(&mut m, APPLICATION_HOOKS, APPLICATION_HOOKS);
    advertise(&mut m, &declared, APPLICATION_OPTIONAL_HOOKS);
    m.start_weight = T::START_WEIGHT;
    m.primary = T::PRIMARY;
    m.variants = strings(T::VARIANTS);
    m.dependencies = strings(T::DEPENDENCIES);
    m.late_update_check = T::LATE_UPDATE_CHECK;
    m.paths = strings(T::PATHS);
    m.backup = T::BACKUP.map(|b| b.spec());
    m.debug_logs = strings(T::DEBUG_LOGS);
    m.routes = routes(Kind::Application, T::NAME, T::ROUTES);
    m
}

#[doc(hidden)]
pub fn __provider_manifest<T: Provider>(version: &str, api_version: &str) -> Manifest {
    let mut m = base_manifest(T::NAME, Kind::Provider, version, api_version);
    // Every provider hook has an SDK default with upstream's answer ("registration
    // unsupported", ...), so all of them are advertised.
    advertise(&mut m, PROVIDER_HOOKS, PROVIDER_HOOKS);
    m.paths = strings(T::PATHS);
    m.routes = routes(Kind::Provider, T::NAME, T::ROUTES);
    m
}

/// Renders a manifest to JSON under `catch_unwind`. On a panic (a plugin that declares
/// what cannot be) it returns the reason as a JSON string: the host refuses that as an
/// invalid manifest, and serde's error quotes the string, so the reason reaches the log
/// (`invalid type: string "cannot build the manifest: ...", expected struct Manifest`).
#[doc(hidden)]
pub fn __manifest_json(f: impl FnOnce() -> Manifest) -> RString {
    match catch_unwind(AssertUnwindSafe(|| serde_json::to_string(&f()))) {
        Ok(Ok(s)) => RString::from(s),
        Ok(Err(e)) => refusal(&format!("cannot encode the manifest: {e}")),
        Err(p) => refusal(&format!(
            "cannot build the manifest: {}",
            super::adapters::panic_message(&*p)
        )),
    }
}

fn refusal(reason: &str) -> RString {
    RString::from(serde_json::to_string(reason).unwrap_or_default())
}

#[doc(hidden)]
pub extern "C" fn __no_plugins() -> abi_stable::std_types::RVec<crate::abi::PluginModuleRef> {
    abi_stable::std_types::RVec::new()
}

#[doc(hidden)]
pub fn __bundle_manifest(crates: &[&str]) -> RString {
    let m = crate::abi::BundleManifest {
        bundle: crates.iter().map(|c| c.to_string()).collect(),
    };
    RString::from(serde_json::to_string(&m).unwrap_or_default())
}

#[doc(hidden)]
pub fn __instantiate(f: impl FnOnce() -> Result<PluginBox>) -> RResult<PluginBox, PluginError> {
    __guard("constructor", f)
}

// Keep RBox in the public signature path used by the macros.
#[doc(hidden)]
pub type __RBox<T> = RBox<T>;

/// Exports the whole ABI of a plugin: the version symbol and the root module.
/// Use [`export_service!`], [`export_application!`] or [`export_provider!`] instead.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_plugin {
    ($manifest:ident, $instance:ident, $ty:ty, $api:expr) => {
        // The SDK turns a panic in a hook into an error with `catch_unwind`; with
        // `panic = "abort"` the same panic would abort the whole daemon.
        #[cfg(panic = "abort")]
        ::std::compile_error!(
            "incus-osd plugins must be built with panic = \"unwind\" (the default): with \"abort\", a panic in the plugin would take the daemon down"
        );

        $crate::__export_symbols!(__incus_osd_plugin_root_module, $api);

        pub fn __incus_osd_plugin_root_module() -> $crate::abi::PluginModuleRef {
            use $crate::__private::abi_stable::prefix_type::PrefixTypeTrait;
            extern "C" fn manifest() -> $crate::__private::abi_stable::std_types::RString {
                $crate::sdk::__manifest_json(|| {
                    $crate::sdk::$manifest::<$ty>(env!("CARGO_PKG_VERSION"), $api)
                })
            }
            extern "C" fn instantiate(
                host: $crate::abi::HostHandle,
            ) -> $crate::__private::abi_stable::std_types::RResult<
                $crate::abi::PluginBox,
                $crate::abi::PluginError,
            > {
                $crate::sdk::__instantiate(|| $crate::sdk::$instance::<$ty>(host))
            }
            $crate::abi::PluginModule {
                manifest,
                instantiate,
                plugins: $crate::sdk::__no_plugins,
            }
            .leak_into_prefix()
        }
    };
}

/// The two symbols every plugin library exports: the plugin-api version it was built
/// against, and abi_stable's root-module header over `$root` (a function returning the
/// library's `PluginModuleRef`).
#[doc(hidden)]
#[macro_export]
macro_rules! __export_symbols {
    ($root:ident, $api:expr) => {
        #[no_mangle]
        pub extern "C" fn incus_osd_plugin_api_version() -> *const ::std::os::raw::c_char {
            static V: ::std::sync::OnceLock<::std::ffi::CString> = ::std::sync::OnceLock::new();
            V.get_or_init(|| ::std::ffi::CString::new($api).expect("no NUL in version"))
                .as_ptr()
        }

        // What `#[abi_stable::export_root_module]` generates, written out: that attribute
        // names `::abi_stable` in its expansion, which would make every plugin author
        // depend on abi_stable directly. Here every path goes through this crate's
        // re-export. The static's name is abi_stable's mangled root-module symbol, the one
        // its loader looks up (checked against `ROOT_MODULE_LOADER_NAME` by a test of
        // this crate).
        #[no_mangle]
        #[allow(non_upper_case_globals)]
        pub static _1as_0lib_1header_0root_bmodule_bloader:
            $crate::__private::abi_stable::library::LibHeader = {
            extern "C" fn erased_module() -> $crate::__private::abi_stable::library::RootModuleResult {
                $crate::__private::abi_stable::library::__call_root_module_loader(
                    $root,
                )
            }
            // SAFETY: `erased_module` returns the module `$root` builds, a
            // `PluginModuleRef`, erased by abi_stable's own loader shim: the
            // contract of `from_constructor`.
            unsafe {
                $crate::__private::abi_stable::library::LibHeader::from_constructor::<
                    $crate::abi::PluginModuleRef,
                >(
                    erased_module,
                    $crate::__private::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

/// Exports one library carrying the plugins of several crates (each built with its own
/// `export_service!`, `export_application!` or `export_provider!`, and depended on as an
/// `rlib`): they share one copy of std, serde and the SDK, and one `dlopen`. Each crate
/// keeps its own library too; a plugin directory holding the bundle skips those (see
/// [`crate::abi::BundleManifest`]).
///
/// Every crate's library exports the same two symbols as the bundle's, so the bundle must
/// be linked with `-Wl,--allow-multiple-definition`, the bundle's own objects first (its
/// build script passes `cargo::rustc-cdylib-link-arg=-Wl,--allow-multiple-definition`):
/// the bundle's definitions then win. The host refuses a library named as a bundle
/// (`libincus_osd_bundle_*.so`) whose root module is one plugin's.
#[macro_export]
macro_rules! export_bundle {
    ($($krate:ident),+ $(,)?) => {
        $crate::__export_symbols!(__incus_osd_bundle_root_module, $crate::API_VERSION);

        pub fn __incus_osd_bundle_root_module() -> $crate::abi::PluginModuleRef {
            use $crate::__private::abi_stable::prefix_type::PrefixTypeTrait;
            extern "C" fn manifest() -> $crate::__private::abi_stable::std_types::RString {
                $crate::sdk::__bundle_manifest(&[$(stringify!($krate)),+])
            }
            extern "C" fn instantiate(
                _host: $crate::abi::HostHandle,
            ) -> $crate::__private::abi_stable::std_types::RResult<
                $crate::abi::PluginBox,
                $crate::abi::PluginError,
            > {
                $crate::sdk::__instantiate(|| {
                    ::std::result::Result::Err($crate::sdk::Error::internal(
                        "a bundle is not a plugin: instantiate the plugins it lists",
                    ))
                })
            }
            extern "C" fn plugins(
            ) -> $crate::__private::abi_stable::std_types::RVec<$crate::abi::PluginModuleRef> {
                $crate::__private::abi_stable::std_types::RVec::from(::std::vec![
                    $($krate::__incus_osd_plugin_root_module()),+
                ])
            }
            $crate::abi::PluginModule {
                manifest,
                instantiate,
                plugins,
            }
            .leak_into_prefix()
        }
    };
}

/// Exports a [`Service`] implementation as the plugin of this `cdylib`.
#[macro_export]
macro_rules! export_service {
    ($ty:ty) => {
        $crate::export_service!($ty, api_version = $crate::API_VERSION);
    };
    ($ty:ty, api_version = $api:expr) => {
        $crate::__export_plugin!(__service_manifest, __service_instance, $ty, $api);
    };
}

/// Exports an [`Application`] implementation as the plugin of this `cdylib`.
#[macro_export]
macro_rules! export_application {
    ($ty:ty) => {
        $crate::__export_plugin!(
            __application_manifest,
            __application_instance,
            $ty,
            $crate::API_VERSION
        );
    };
}

/// Exports a [`Provider`] implementation as the plugin of this `cdylib`.
#[macro_export]
macro_rules! export_provider {
    ($ty:ty) => {
        $crate::__export_plugin!(
            __provider_manifest,
            __provider_instance,
            $ty,
            $crate::API_VERSION
        );
    };
}

#[cfg(test)]
mod tests {
    /// The export macro writes out the static `#[abi_stable::export_root_module]` would
    /// generate; its name must be the symbol abi_stable's loader looks up, or no plugin
    /// loads ("cannot find the root module" after an abi_stable upgrade renames it).
    #[test]
    fn exported_static_is_the_symbol_abi_stable_loads() {
        let name = abi_stable::library::ROOT_MODULE_LOADER_NAME;
        let source = include_str!("export.rs");
        assert!(
            source.contains(&format!("pub static {name}:")),
            "the export macro's static is not named {name}"
        );
    }
}
