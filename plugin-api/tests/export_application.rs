//! The application export macro expands and describes the application.

use plugin_api::sdk::{Host, Result};
use plugin_api::{Hook, Kind, Manifest};

struct App;

impl plugin_api::Application for App {
    const NAME: &'static str = "app";
    const PRIMARY: bool = true;
    const DEPENDENCIES: &'static [&'static str] = &["other"];
    const HOOKS: &'static [Hook] = &[Hook::Backup, Hook::Restore];
    type Config = ();
    type State = ();
    fn new(_: Host) -> Result<Self> {
        Ok(App)
    }
    fn state(&self, _: &()) -> Result<()> {
        Ok(())
    }
}

plugin_api::export_application!(App);

#[test]
fn the_exported_module_describes_the_application() {
    let module = __incus_osd_plugin_root_module();
    let m = Manifest::parse((module.manifest())().as_str()).unwrap();
    assert_eq!(
        (m.name.as_str(), m.kind, m.primary),
        ("app", Kind::Application, true)
    );
    assert_eq!(m.dependencies, ["other"]);
    assert!(m.has(Hook::Backup) && m.has(Hook::Restore) && !m.has(Hook::FactoryReset));
}
