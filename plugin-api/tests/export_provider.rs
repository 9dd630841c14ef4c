//! The provider export macro expands and describes the provider.

use plugin_api::sdk::{Host, Result};
use plugin_api::{Hook, Kind, Manifest};

struct Prov;

impl plugin_api::Provider for Prov {
    const NAME: &'static str = "prov";
    const HOOKS: &'static [Hook] = &[Hook::Register];
    type Config = ();
    type State = ();
    fn new(_: Host) -> Result<Self> {
        Ok(Prov)
    }
    fn state(&self, _: &()) -> Result<()> {
        Ok(())
    }
}

plugin_api::export_provider!(Prov);

#[test]
fn the_exported_module_describes_the_provider() {
    let module = __incus_osd_plugin_root_module();
    let m = Manifest::parse((module.manifest())().as_str()).unwrap();
    assert_eq!((m.name.as_str(), m.kind), ("prov", Kind::Provider));
    assert!(m.has(Hook::Register) && !m.has(Hook::Deregister));
}
