//! `guestbook`: a small incus-osd application plugin written as a third party would, outside
//! the incus-osd workspace, against the SDK alone.
//!
//! - Config: `{"greeting": "..."}`, written to `/var/lib/guestbook/greeting` by a PUT.
//! - Action `sign` with `{"name": "..."}`: adds a line to `/var/lib/guestbook/book`.
//! - State (GET): the greeting on disk and the names that signed, in order.
//! - `:backup`: a gzip tar of the data directory (its files, by name); `:restore` reads and
//!   checks the whole archive before it replaces the directory (a bad archive changes
//!   nothing); `:factory-reset` empties the directory.
//!
//! Every file access goes through the host ([`Host`]), confined to the paths declared in
//! [`Application::PATHS`]. The host's file capabilities move whole files, so an archive is
//! held in memory: the data of a guestbook is small, and a restore refuses an archive of
//! more than [`MAX_RESTORE`] bytes of content.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use plugin_api::abi::FileKind;
use plugin_api::{Application, Error, Hook, Host, Result, Undo};
use serde::{Deserialize, Serialize};

/// The application's data directory, the only path it writes.
pub const DATA: &str = "/var/lib/guestbook";
/// The largest archive content a restore accepts, in bytes.
pub const MAX_RESTORE: u64 = 16 << 20;
/// The longest greeting and the longest name, in characters.
const MAX_TEXT: usize = 200;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub greeting: String,
}

#[derive(Debug, Serialize)]
pub struct State {
    /// The greeting as written on disk (empty before the first PUT or after a reset).
    pub greeting: String,
    /// Who signed, oldest first.
    pub signatures: Vec<String>,
}

pub struct Guestbook {
    host: Host,
}

fn data(name: &str) -> String {
    format!("{DATA}/{name}")
}

fn archive_error(e: std::io::Error) -> Error {
    Error::internal(format!("cannot write the archive: {e}"))
}

fn bad_archive(e: impl std::fmt::Display) -> Error {
    Error::bad_request(format!("cannot read the archive: {e}"))
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
    fn read_text(&self, name: &str) -> Result<String> {
        Ok(self.host.read_to_string(&data(name))?.unwrap_or_default())
    }

    /// The data directory's files, by name (the application writes no other kind).
    fn files(&self) -> Result<Vec<(String, u32)>> {
        let mut out = vec![];
        for name in self.host.list_dir(DATA)?.unwrap_or_default() {
            let Some(stat) = self.host.stat(&data(&name))? else {
                continue;
            };
            if stat.kind != FileKind::File {
                return Err(Error::internal(format!(
                    "{} is not a regular file",
                    data(&name)
                )));
            }
            out.push((name, stat.mode));
        }
        out.sort();
        Ok(out)
    }
}

/// Reads and checks every entry of a gzip tar archive: plain file names only (no
/// directories, links or paths), at most [`MAX_RESTORE`] bytes in all.
fn read_archive(input: &mut dyn Read) -> Result<Vec<(String, u32, Vec<u8>)>> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(input));
    let mut out = vec![];
    let mut total = 0u64;
    for entry in archive.entries().map_err(bad_archive)? {
        let mut entry = entry.map_err(bad_archive)?;
        let name = entry
            .path()
            .map_err(bad_archive)?
            .to_string_lossy()
            .into_owned();
        let plain = !name.is_empty() && name != "." && name != ".." && !name.contains('/');
        if !plain {
            return Err(Error::bad_request(format!(
                "the archive has an entry that is not a plain file name: {name:?}"
            )));
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(Error::bad_request(format!(
                "the archive's entry {name:?} is not a regular file"
            )));
        }
        total += entry.size();
        if total > MAX_RESTORE {
            return Err(Error::bad_request(format!(
                "the archive holds more than {MAX_RESTORE} bytes"
            )));
        }
        let mode = entry.header().mode().map_err(bad_archive)? & 0o777;
        let mut content = vec![];
        entry.read_to_end(&mut content).map_err(bad_archive)?;
        out.push((name, mode, content));
    }
    Ok(out)
}

impl Application for Guestbook {
    const NAME: &'static str = "guestbook";
    const PATHS: &'static [&'static str] = &[DATA];
    const HOOKS: &'static [Hook] = &[
        Hook::Action,
        Hook::Backup,
        Hook::Restore,
        Hook::FactoryReset,
    ];

    type Config = Config;
    type State = State;

    fn new(host: Host) -> Result<Self> {
        Ok(Guestbook { host })
    }

    fn state(&self, _config: &Config) -> Result<State> {
        Ok(State {
            greeting: self.read_text("greeting")?,
            signatures: self
                .read_text("book")?
                .lines()
                .map(str::to_string)
                .collect(),
        })
    }

    fn validate(&self, config: &Config) -> Result<()> {
        check_text("greeting", &config.greeting)
    }

    fn update(&self, undo: &mut Undo, _old: &Config, new: &Config) -> Result<()> {
        undo.create_dir(DATA, 0o700)?;
        undo.write_file(&data("greeting"), new.greeting.as_bytes(), 0o644)
    }

    fn action(&self, action: &str, args: &BTreeMap<String, String>) -> Result<serde_json::Value> {
        if action != "sign" {
            return Err(Error::bad_request(format!("unknown action: {action:?}")));
        }
        let name = args.get("name").map(String::as_str).unwrap_or_default();
        if name.trim().is_empty() {
            return Err(Error::bad_request("sign needs a non-empty name"));
        }
        check_text("name", name)?;
        let mut book = self.read_text("book")?;
        book.push_str(name);
        book.push('\n');
        let mut undo = Undo::new(&self.host);
        undo.create_dir(DATA, 0o700)?;
        undo.write_file(&data("book"), book.as_bytes(), 0o600)?;
        undo.commit();
        Ok(serde_json::json!({ "signatures": book.lines().count() }))
    }

    fn factory_reset(&self, _config: &Config) -> Result<()> {
        self.host.remove(DATA)?;
        self.host.create_dir(DATA, 0o700)
    }

    fn backup(&self, _complete: bool, out: &mut dyn Write) -> Result<()> {
        // Everything is read before the first byte is written: an unreadable file fails
        // the backup before the client has a partial archive.
        let mut files = vec![];
        for (name, mode) in self.files()? {
            let content = self.host.read_file(&data(&name))?.unwrap_or_default();
            files.push((name, mode, content));
        }
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            out,
            flate2::Compression::default(),
        ));
        for (name, mode, content) in files {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(mode);
            header.set_size(content.len() as u64);
            tar.append_data(&mut header, &name, content.as_slice())
                .map_err(archive_error)?;
        }
        tar.into_inner()
            .map_err(archive_error)?
            .finish()
            .map_err(archive_error)?;
        Ok(())
    }

    fn restore(&self, input: &mut dyn Read) -> Result<()> {
        // The whole archive is read and checked first, and the swap is undone if a write
        // fails: a bad archive changes nothing.
        let files = read_archive(input)?;
        let mut undo = Undo::new(&self.host);
        undo.remove(DATA)?;
        undo.create_dir(DATA, 0o700)?;
        for (name, mode, content) in &files {
            undo.write_file(&data(name), content, *mode)?;
        }
        undo.commit();
        Ok(())
    }
}

plugin_api::export_application!(Guestbook);
