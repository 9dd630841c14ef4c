//! The export macro expands and produces the module the host reads (one plugin per test
//! binary: the macro defines the library's exported symbols).

use plugin_api::sdk::{Host, Result, RouteSpec};
use plugin_api::{Hook, Kind, Manifest};

struct Svc;

impl plugin_api::Service for Svc {
    const NAME: &'static str = "svc";
    const START_WEIGHT: i32 = 7;
    const HAS_RESET: bool = true;
    const PATHS: &'static [&'static str] = &["/etc/svc"];
    const ROUTES: &'static [RouteSpec] = &[RouteSpec {
        method: plugin_api::Method::Post,
        suffix: ":rejoin",
        op: "rejoin",
    }];
    type Config = ();
    type State = ();
    fn new(_: Host) -> Result<Self> {
        Ok(Svc)
    }
    fn state(&self, _: &()) -> Result<()> {
        Ok(())
    }
    fn update(&self, _: &(), _: &()) -> Result<()> {
        Ok(())
    }
}

plugin_api::export_service!(Svc);

#[test]
fn the_exported_module_describes_the_service() {
    let module = __incus_osd_plugin_root_module();
    let m = Manifest::parse((module.manifest())().as_str()).unwrap();
    assert_eq!(m.name, "svc");
    assert_eq!(m.kind, Kind::Service);
    assert_eq!(m.api_version, plugin_api::API_VERSION);
    assert_eq!(m.start_weight, 7);
    assert_eq!(m.paths, ["/etc/svc"]);
    assert!(m.has(Hook::Reset) && m.has(Hook::Get) && m.has(Hook::Put));
    assert_eq!(m.routes[0].path, "/1.0/services/svc/:rejoin");
    // SAFETY: reads the static C string the macro exports.
    #[allow(unsafe_code)] // audited: a NUL-terminated static the export macro owns
    let v = unsafe { std::ffi::CStr::from_ptr(incus_osd_plugin_api_version()) };
    assert_eq!(v.to_str().unwrap(), plugin_api::API_VERSION);
}
