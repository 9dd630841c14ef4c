//! The application export macro expands and describes the application: the manifest's
//! hooks are derived from what the application declares.

use plugin_api::sdk::{Backup, Host, Result, StreamingBackup, WipeFn};
use plugin_api::{Application, Hook, Kind, Manifest};

struct App;

impl App {
    fn wipe(&self, _: &plugin_api::application::AppContext, _: &()) -> Result<()> {
        Ok(())
    }
}

impl Application for App {
    const NAME: &'static str = "app";
    const VARIANTS: &'static [&'static str] = &["app-lts"];
    const PRIMARY: bool = true;
    const DEPENDENCIES: &'static [&'static str] = &["other"];
    const LATE_UPDATE_CHECK: bool = true;
    const PATHS: &'static [&'static str] = &["/var/lib/app"];
    const BACKUP: Option<Backup> = Some(
        Backup::new("/var/lib/app")
            .excluded(&["unix.socket"])
            .units(&["app.socket", "app.service"]),
    );
    const WIPE: Option<WipeFn<Self>> = Some(Self::wipe);
    type Config = ();
    fn new(_: Host) -> Result<Self> {
        Ok(App)
    }
}

plugin_api::export_application!(App);

#[test]
fn the_exported_module_describes_the_application() {
    let module = __incus_osd_plugin_root_module();
    let m = Manifest::parse((module.manifest())().as_str()).unwrap();
    assert_eq!(
        (m.name.as_str(), m.kind, m.primary, m.late_update_check),
        ("app", Kind::Application, true, true)
    );
    assert_eq!(m.variants, ["app-lts"]);
    assert_eq!(m.dependencies, ["other"]);
    let backup = m.backup.unwrap();
    assert_eq!(backup.root, "/var/lib/app");
    assert_eq!(backup.excluded, ["unix.socket"]);
    assert!(backup.excluded_unless_complete.is_empty());
    assert_eq!(backup.units, ["app.socket", "app.service"]);
    use Hook::*;
    // The host backs a declared BACKUP up: no backup or restore hook; the wipe is declared.
    assert_eq!(
        m.hooks,
        [Get, Put, Restart, Start, Stop, Initialize, Reload, Wipe, Running, Restored]
    );
}

/// An application with both archive kinds cannot be loaded, and the reason says why.
#[test]
fn backup_and_streaming_backup_together_are_refused_with_the_reason() {
    struct Both;
    impl Both {
        fn backup(&self, _: bool, _: &mut dyn std::io::Write) -> Result<()> {
            Ok(())
        }
        fn restore(&self, _: &mut dyn std::io::Read) -> Result<()> {
            Ok(())
        }
    }
    impl Application for Both {
        const NAME: &'static str = "both";
        const PATHS: &'static [&'static str] = &["/var/lib/both"];
        const BACKUP: Option<Backup> = Some(Backup::new("/var/lib/both"));
        const STREAMING_BACKUP: Option<StreamingBackup<Self>> = Some(StreamingBackup {
            backup: Self::backup,
            restore: Self::restore,
        });
        type Config = ();
        fn new(_: Host) -> Result<Self> {
            Ok(Both)
        }
    }
    let json = plugin_api::sdk::__manifest_json(|| {
        plugin_api::sdk::__application_manifest::<Both>("1.0.0", plugin_api::API_VERSION)
    });
    let err = Manifest::parse(json.as_str()).unwrap_err().to_string();
    assert!(
        err.contains(
            "cannot build the manifest: application 'both' declares both BACKUP and \
             STREAMING_BACKUP"
        ),
        "{err}"
    );
}
