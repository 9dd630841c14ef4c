//! `guestbook`: a small incus-osd application plugin written as a third party would, outside
//! the incus-osd workspace, against the SDK alone.
//!
//! - Config: `{"greeting": "..."}`, written to `/var/lib/guestbook/greeting` by a PUT.
//! - Action `sign` with `{"name": "..."}`: adds a line to `/var/lib/guestbook/book`.
//! - `GET /1.0/applications/guestbook/signatures`: the names that signed, in order.
//! - GET shows what every application shows: the state the host keeps (version,
//!   `initialized`, ...) with this plugin's `friendly_version`, and the config.
//! - Backups: the data directory is declared ([`Application::BACKUP`]), so the host writes
//!   `:backup` (a gzip tar of it) and restores `:restore` itself, every entry checked, a bad
//!   archive changing nothing. [`Application::WIPE`] empties the directory: it gives
//!   `:factory-reset` and the data removal of `:remove`.
//!
//! Every file access goes through the host ([`Host`]), confined to the paths declared in
//! [`Application::PATHS`].

use std::collections::BTreeMap;

use plugin_api::application::AppContext;
use plugin_api::sdk::{ActionFn, Backup, RouteSpec, WipeFn};
use plugin_api::{Application, Error, Host, Method, Result, RouteRequest, Undo};
use serde::{Deserialize, Serialize};

/// The application's data directory, the only path it writes.
pub const DATA: &str = "/var/lib/guestbook";
/// The longest greeting and the longest name, in characters.
const MAX_TEXT: usize = 200;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub greeting: String,
}

pub struct Guestbook {
    host: Host,
}

fn data(name: &str) -> String {
    format!("{DATA}/{name}")
}

/// A greeting or a name: at most [`MAX_TEXT`] characters, no control characters (a name is
/// a line of the book).
fn check_text(what: &str, text: &str) -> Result<()> {
    if text.chars().count() > MAX_TEXT {
        return Err(Error::bad_request(format!(
            "{what} is longer than {MAX_TEXT} characters"
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(Error::bad_request(format!(
            "{what} has a control character"
        )));
    }
    Ok(())
}

impl Guestbook {
    fn book(&self) -> Result<String> {
        Ok(self.host.read_to_string(&data("book"))?.unwrap_or_default())
    }

    /// `:action`: `sign` adds a name to the book; any other action is upstream's 500
    /// `unsupported action '<x>'`.
    fn action(
        &self,
        _config: &Config,
        action: &str,
        args: &BTreeMap<String, String>,
    ) -> Result<serde_json::Value> {
        if action != "sign" {
            return Err(Error::unsupported_action(action));
        }
        let name = args.get("name").map(String::as_str).unwrap_or_default();
        if name.trim().is_empty() {
            return Err(Error::bad_request("sign needs a non-empty name"));
        }
        check_text("name", name)?;
        let mut book = self.book()?;
        book.push_str(name);
        book.push('\n');
        let mut undo = Undo::new(&self.host);
        undo.create_dir(DATA, 0o700)?;
        undo.write_file(&data("book"), book.as_bytes(), 0o600)?;
        undo.commit();
        Ok(serde_json::json!({ "signatures": book.lines().count() }))
    }

    /// Deletes the book and the greeting (the host stopped the application first).
    fn wipe(&self, _ctx: &AppContext, _config: &Config) -> Result<()> {
        self.host.remove(DATA)
    }
}

impl Application for Guestbook {
    const NAME: &'static str = "guestbook";
    const PATHS: &'static [&'static str] = &[DATA];
    const ROUTES: &'static [RouteSpec] = &[RouteSpec {
        method: Method::Get,
        suffix: "signatures",
        op: "signatures",
    }];
    const BACKUP: Option<Backup> = Some(Backup::new(DATA));
    const WIPE: Option<WipeFn<Self>> = Some(Self::wipe);
    const ACTION: Option<ActionFn<Self>> = Some(Self::action);

    type Config = Config;

    fn new(host: Host) -> Result<Self> {
        Ok(Guestbook { host })
    }

    /// The plugin's version with the image's, as upstream shows Incus's:
    /// `0.1.0 [202511041800]`.
    fn friendly_version(&self, ctx: &AppContext, _config: &Config) -> Result<String> {
        let own = env!("CARGO_PKG_VERSION");
        Ok(if ctx.version.is_empty() {
            own.to_string()
        } else {
            format!("{own} [{}]", ctx.version)
        })
    }

    fn validate(&self, config: &Config) -> Result<()> {
        check_text("greeting", &config.greeting)
    }

    fn update(&self, undo: &mut Undo, _old: &Config, new: &Config) -> Result<()> {
        undo.create_dir(DATA, 0o700)?;
        undo.write_file(&data("greeting"), new.greeting.as_bytes(), 0o644)
    }

    fn route(
        &self,
        op: &str,
        _request: RouteRequest,
        _config: &Config,
    ) -> Result<serde_json::Value> {
        match op {
            "signatures" => Ok(serde_json::json!(self.book()?.lines().collect::<Vec<_>>())),
            _ => Err(Error::new(
                501,
                format!("operation '{op}' is not implemented"),
            )),
        }
    }
}

plugin_api::export_application!(Guestbook);
