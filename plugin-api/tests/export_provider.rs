//! The provider export macro expands and describes the provider.

use plugin_api::sdk::{Host, Result};
use plugin_api::{Hook, Kind, Manifest};

struct Prov;

impl plugin_api::Provider for Prov {
    const NAME: &'static str = "prov";
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
    // Every provider hook has a default with upstream's answer, so all are advertised.
    for hook in [Hook::Register, Hook::Deregister, Hook::Lookup, Hook::Fetch] {
        assert!(m.has(hook), "{hook:?}");
    }
    assert!(!m.has(Hook::CheckUpdate) && !m.has(Hook::Start));
    assert!(
        m.paths.iter().any(|p| p == "/var/lib/updates"),
        "{:?}",
        m.paths
    );
}
