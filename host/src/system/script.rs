//! Signed support scripts: the body of `POST /1.0/debug/:run-script` and a recovery
//! volume's `hotfix.sh.sig`.
//!
//! A script is an S/MIME signed message. The real `openssl` checks it (through the
//! platform's command runner, as the providers check `index.sjson`): the signature must
//! verify up to the shipped root CA and the message must carry the support CA
//! ([`SUPPORT_CA_PATH`], an intermediate under that root), compared byte for byte. A
//! message signed through any other intermediate (the update CA included) is refused.
//! The verified content is written to a file (0700) in a private temporary directory
//! (0700) and executed there by the daemon, as root on a real system, with stdout and
//! stderr merged, for at most [`TIMEOUT`].

use std::path::Path;
use std::time::Duration;

use incus_osd_provider_common::signature::{self, Names, Refusal};
use incus_osd_provider_common::trust::{ROOT_CA_PATH, SUPPORT_CA_PATH};

use crate::platform::exec::Commands;
use crate::platform::files::RootFs;

/// The largest signed script accepted (upstream's limit on the request body).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// How long a script may run before it is killed (with what it started).
pub const TIMEOUT: Duration = Duration::from_secs(300);

/// How long one openssl command may take.
const OPENSSL_TIMEOUT: Duration = Duration::from_secs(30);

const NAMES: Names = Names {
    message: "script",
    ca: "support CA",
};

/// Why a script did not run, or how it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptError {
    /// Not a script the support CA vouches for (403), or no S/MIME message at all (400).
    Refused { status: u16, message: String },
    /// The check or the run could not be made (500).
    Failed(String),
    /// The script ran and failed: the error and what it printed (upstream answers both,
    /// as `<error>\n\n<output>`).
    ScriptFailed { error: String, output: String },
}

impl ScriptError {
    /// The HTTP status and text of the error.
    pub fn status_and_message(&self) -> (u16, String) {
        match self {
            ScriptError::Refused { status, message } => (*status, message.clone()),
            ScriptError::Failed(m) => (500, m.clone()),
            ScriptError::ScriptFailed { error, output } => (500, format!("{error}\n\n{output}")),
        }
    }
}

fn refused(status: u16, message: impl Into<String>) -> ScriptError {
    ScriptError::Refused {
        status,
        message: message.into(),
    }
}

/// A shipped PEM file under `root`, or the error naming it.
fn trusted(root: &Path, path: &str) -> Result<String, ScriptError> {
    match RootFs::new(root).read(path) {
        Ok(Some(data)) if !data.iter().all(u8::is_ascii_whitespace) => {
            Ok(String::from_utf8_lossy(&data).into_owned())
        }
        Ok(_) => Err(ScriptError::Failed(format!(
            "cannot verify the script: {path} is missing"
        ))),
        Err(e) => Err(ScriptError::Failed(format!(
            "cannot verify the script: {path}: {e}"
        ))),
    }
}

/// Runs `argv` through `cmds`, as provider-common's runner wants it.
fn runner(
    cmds: &dyn Commands,
) -> impl Fn(&[&str], &[u8]) -> plugin_api::Result<plugin_api::sdk::Output> + '_ {
    move |argv, stdin| {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let out = cmds
            .run(&argv, stdin, OPENSSL_TIMEOUT)
            .map_err(|e| plugin_api::Error::internal(e.0))?;
        Ok(plugin_api::sdk::Output {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// Verifies `signed` with the certificates under `root` ([`ROOT_CA_PATH`] and `ca_path`,
/// the expected intermediate) and returns its content. `names` words the errors.
pub fn verify_with(
    cmds: &dyn Commands,
    root: &Path,
    signed: &[u8],
    ca_path: &str,
    names: Names,
) -> Result<Vec<u8>, ScriptError> {
    let root_ca = trusted(root, ROOT_CA_PATH)?;
    let ca = trusted(root, ca_path)?;
    let run = runner(cmds);
    signature::verify_signed(&run, signed, &root_ca, &ca, names).map_err(|e| match e {
        Refusal::Refused(m) => refused(403, m),
        Refusal::Failed(e) => ScriptError::Failed(e.message),
    })
}

/// The content of `signed` once the support CA vouches for it.
pub fn verify(cmds: &dyn Commands, root: &Path, signed: &[u8]) -> Result<Vec<u8>, ScriptError> {
    // The quick check upstream makes before anything runs: an S/MIME signed message says so
    // in its headers.
    if signed.iter().all(u8::is_ascii_whitespace) {
        return Err(refused(400, "the script is empty"));
    }
    let head = String::from_utf8_lossy(&signed[..signed.len().min(4096)]).to_ascii_lowercase();
    if !head.contains("multipart/signed") || !head.contains("pkcs7-signature") {
        return Err(refused(
            400,
            "the script is not an S/MIME signed message (multipart/signed)",
        ));
    }
    verify_with(cmds, root, signed, SUPPORT_CA_PATH, NAMES)
}

/// Verifies `signed` and runs it; answers what it printed (stdout and stderr merged).
pub fn run_signed(cmds: &dyn Commands, root: &Path, signed: &[u8]) -> Result<String, ScriptError> {
    let content = verify(cmds, root, signed)?;
    // Signing in text mode turns line ends into CRLF; a shell wants LF.
    let text = String::from_utf8_lossy(&content).replace("\r\n", "\n");
    let dir = tempfile::Builder::new()
        .prefix("incus-osd-script-")
        .tempdir()
        .map_err(|e| ScriptError::Failed(format!("cannot make the script's directory: {e}")))?;
    let path = dir.path().join("script");
    write_script(&path, text.as_bytes())
        .map_err(|e| ScriptError::Failed(format!("cannot write the script: {e}")))?;
    tracing::info!("running a signed support script");
    // The shell merges stderr into stdout, then replaces itself by the script (run as a
    // program: its `#!` line picks the interpreter).
    let argv: Vec<String> = ["/bin/sh", "-c", "exec \"$0\" 2>&1", &path.to_string_lossy()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = cmds
        .run(&argv, b"", TIMEOUT)
        .map_err(|e| ScriptError::Failed(e.0))?;
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status != 0 {
        let error = if out.status < 0 {
            "the script was killed by a signal".to_string()
        } else {
            format!("the script failed: exit status {}", out.status)
        };
        tracing::warn!(status = out.status, "the signed support script failed");
        return Err(ScriptError::ScriptFailed { error, output });
    }
    Ok(output)
}

/// Writes a new file at `path` (0700, only the owner may read or run it).
fn write_script(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}
