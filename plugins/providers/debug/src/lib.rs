//! The `debug` update provider: development builds dropped into `/root/updates/`, as
//! upstream's. A `RELEASE` file holds the version; the OS update is the files named
//! `<OS name>_<version>.*` (the full disk image `<OS name>_<version>.raw` excepted), an
//! application is `<name>.raw` (uncompressed), the Secure Boot key update is
//! `SecureBootKeys_<version>.tar`. No index, no signature, no checksums: fetching copies
//! the files through the host's download capability (`file://` URLs). A missing directory
//! means no update. There is no registration; deregistering does nothing.

use plugin_api::provider::{
    errors, FetchOrder, Registration, Release, ReleaseFile, Target, UpdateContext,
};
use plugin_api::{Error, Host, Provider, Result};
use serde::{Deserialize, Serialize};

/// Where the debug provider looks (upstream's `DebugPath`).
pub const DEBUG_PATH: &str = "/root/updates";

/// The debug provider takes no config keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

#[derive(Serialize)]
pub struct State {}

pub struct Debug {
    host: Host,
}

/// The file type a debug OS file stands for, from its name (what the index would say).
fn os_file_type(name: &str) -> &'static str {
    if name.ends_with(".efi") {
        "update-efi"
    } else if name.contains("-verity-sig.") {
        "update-usr-verity-signature"
    } else if name.contains("-verity.") {
        "update-usr-verity"
    } else if name.contains(".usr-") {
        "update-usr"
    } else {
        ""
    }
}

impl Debug {
    /// The release version and the directory's entries; `None` when the directory is
    /// missing.
    fn release(&self) -> Result<Option<(String, Vec<String>)>> {
        let Some(entries) = self.host.list_dir(DEBUG_PATH)? else {
            return Ok(None);
        };
        let path = format!("{DEBUG_PATH}/RELEASE");
        let Some(text) = self.host.read_to_string(&path)? else {
            return Err(Error::internal(format!(
                "cannot read {path}: it is missing"
            )));
        };
        let version = text.trim().to_string();
        if version.is_empty()
            || version.contains(['/', '\\'])
            || version.chars().any(char::is_control)
        {
            return Err(Error::internal(format!("{path} holds no valid version")));
        }
        Ok(Some((version, entries)))
    }
}

fn file(name: &str, component: &str, file_type: &str, architecture: &str) -> ReleaseFile {
    ReleaseFile {
        architecture: architecture.to_string(),
        component: component.to_string(),
        filename: name.to_string(),
        sha256: String::new(),
        size: 0,
        file_type: file_type.to_string(),
    }
}

impl Provider for Debug {
    const NAME: &'static str = "debug";
    type Config = Config;
    type State = State;

    fn new(host: Host) -> Result<Self> {
        Ok(Debug { host })
    }

    fn state(&self, _config: &Config) -> Result<State> {
        Ok(State {})
    }

    fn refresh(&self, _config: &Config, _reg: &Registration) -> Result<()> {
        Err(Error::internal(errors::REGISTRATION_UNSUPPORTED))
    }

    /// Nothing to undo: the debug provider never registers.
    fn deregister(&self, _config: &Config, _reg: &Registration) -> Result<()> {
        Ok(())
    }

    fn lookup(
        &self,
        _config: &Config,
        context: &UpdateContext,
        target: &Target,
    ) -> Result<Option<Release>> {
        let Some((version, entries)) = self.release()? else {
            return Ok(None);
        };
        let arch = context.architecture.as_str();
        let files: Vec<ReleaseFile> = match target {
            Target::Os => {
                let prefix = format!("{}_{version}", context.os_name);
                entries
                    .iter()
                    .filter(|n| n.starts_with(&prefix))
                    .filter(|n| n.split_once('.').is_some_and(|(_, ext)| ext != "raw"))
                    .map(|n| file(n, "os", os_file_type(n), arch))
                    .collect()
            }
            Target::Application(name) => {
                let wanted = format!("{name}.raw");
                entries
                    .iter()
                    .filter(|n| **n == wanted)
                    .map(|n| file(n, name, "application", arch))
                    .collect()
            }
            Target::SecureBoot => {
                let wanted = format!("SecureBootKeys_{version}.tar");
                entries
                    .iter()
                    .filter(|n| **n == wanted)
                    .map(|n| file(n, "os", "update-secureboot", ""))
                    .collect()
            }
        };
        if files.is_empty() {
            return Ok(None);
        }
        Ok(Some(Release {
            version,
            severity: "none".to_string(),
            published_at: String::new(),
            files,
        }))
    }

    fn fetch(&self, _config: &Config, order: &FetchOrder) -> Result<Vec<String>> {
        // Plain names only: the files sit directly in the directory.
        if let Some(f) = order
            .release
            .files
            .iter()
            .find(|f| f.filename.contains('/'))
        {
            return Err(Error::internal(format!(
                "refusing the release file name {:?}",
                f.filename
            )));
        }
        let mut written = vec![];
        for f in &order.release.files {
            if f.filename.is_empty() || f.filename == "." || f.filename == ".." {
                return Err(Error::internal(format!(
                    "refusing the release file name {:?}",
                    f.filename
                )));
            }
            let url = format!("file://{DEBUG_PATH}/{}", f.filename);
            let target = format!("{}/{}", order.target_dir.trim_end_matches('/'), f.filename);
            let mut request = plugin_api::net::Request::get(&url);
            request.use_proxy = false;
            self.host
                .download(&plugin_api::net::Download {
                    request,
                    target: target.clone(),
                    mode: 0o644,
                    sha256: String::new(),
                    gunzip: false,
                    max_bytes: 0,
                })
                .map_err(|e| Error::new(e.status, format!("cannot copy {url}: {}", e.message)))?;
            written.push(target);
        }
        Ok(written)
    }
}

plugin_api::export_provider!(Debug);
