#![allow(non_local_definitions)] // expanded from abi_stable's sabi_trait macros
//! The ABI: what crosses the shared-library boundary. Keep it narrow and data-oriented.
//!
//! Compatibility rules (see `docs/plugins.md`):
//! - new root-module entry points and new trait methods are only ever appended after the
//!   `last_prefix_field` marker, so plugins built against an older minor version keep loading
//!   (the host checks layouts with [`check_root_module`], which lets the host's side of
//!   every type be longer than the plugin's, never shorter);
//! - an appended root-module field or [`PluginOps`] method is one an older plugin lacks: the
//!   field gets `#[sabi(missing_field(option))]`, the method a default body, and the host
//!   copes with its absence;
//! - no axum, tokio or tracing type crosses; payloads are JSON bytes;
//! - a panic never crosses: the SDK's export macros catch it and return a [`PluginError`].
#![allow(unsafe_code)] // audited: abi_stable's derives and sabi_trait expand to unsafe impls; the one hand-written block (a prefix view in the tests) says why it holds

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RResult, RSlice, RSliceMut, RStr, RString, RVec},
    type_layout::TypeLayout,
    StableAbi,
};

/// An error a plugin or the host returns: an HTTP-like status (400 bad input, 404, 409,
/// 500 failure, 501 not supported, ...) and a message meant for the API's user.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// The HTTP status the API answers with.
    pub status: u16,
    /// The error text the API's user sees.
    pub message: RString,
}

impl PluginError {
    /// An error with `status` and `message`.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        PluginError {
            status,
            message: RString::from(message.into()),
        }
    }
}

/// Log levels a plugin logs at; the host tags each line with the plugin's name.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Something failed.
    Error,
    /// Something is wrong but the operation went on (a rollback step that failed).
    Warn,
    /// What the plugin did, as an operator wants to read it.
    Info,
    /// Detail for debugging.
    Debug,
    /// Very fine detail.
    Trace,
}

/// systemd unit operations offered to plugins.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitOp {
    /// `systemctl start`: waits for the start job.
    Start,
    /// `systemctl stop`: waits for the stop job.
    Stop,
    /// `systemctl restart`: waits for the job.
    Restart,
    /// `systemctl reload`: the unit re-reads its configuration without a restart.
    Reload,
    /// Returns the unit's `ActiveState` (`active`, `inactive`, `failed`, ...).
    ActiveState,
    /// Sends SIGKILL to every process of the unit (`systemctl kill --signal=SIGKILL`).
    Kill,
    /// Makes systemd re-read unit files (`systemctl daemon-reload`); the unit name is
    /// ignored.
    DaemonReload,
}

impl UnitOp {
    /// The operation's name in log lines and error texts (`start`, `active-state`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            UnitOp::Start => "start",
            UnitOp::Stop => "stop",
            UnitOp::Restart => "restart",
            UnitOp::Reload => "reload",
            UnitOp::ActiveState => "active-state",
            UnitOp::Kill => "kill",
            UnitOp::DaemonReload => "daemon-reload",
        }
    }
}

/// The outcome of a command the host ran for a plugin.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit status; -1 when the process was killed by a signal.
    pub status: i32,
    /// Everything the command wrote to standard output.
    pub stdout: RVec<u8>,
    /// Everything the command wrote to standard error.
    pub stderr: RVec<u8>,
}

/// What kind of file a path names.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed by a stat).
    Symlink,
    /// Anything else: a device, a socket, a FIFO.
    Other,
}

/// Facts about a path (not following a final symlink).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct FileStat {
    /// What the path names.
    pub kind: FileKind,
    /// Permission bits (`0o7777` part of the mode).
    pub mode: u32,
    /// For a symlink, its target as written; empty otherwise.
    pub link_target: RString,
}

/// A command to run: program and arguments, bytes for its standard input, a timeout.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    /// The program (a bare name is looked up in `PATH`) and its arguments; no shell.
    pub argv: RVec<RString>,
    /// Bytes written to the command's standard input (empty: none).
    pub stdin: RVec<u8>,
    /// How long the command may run before it is killed, in milliseconds.
    pub timeout_ms: u64,
}

/// The capabilities the host gives a plugin at construction.
///
/// Methods are appended after the `last_prefix_field` marker in later minor versions (each
/// says since which); the host implements all of them, and a plugin built for an older minor
/// version simply never calls the newer ones.
#[sabi_trait]
pub trait HostOps: Send + Sync {
    /// Writes a log line; the host adds the plugin's name.
    fn log(&self, level: LogLevel, message: RStr<'_>);

    /// The plugin's persisted state document (JSON), `null` when nothing was saved yet.
    fn state_load(&self) -> RResult<RString, PluginError>;

    /// Replaces the plugin's persisted state document (JSON) and saves it durably.
    fn state_save(&self, json: RStr<'_>) -> RResult<(), PluginError>;

    /// Reads a file at an absolute OS path (under the root prefix). `Ok(None)` if absent.
    fn file_read(
        &self,
        path: RStr<'_>,
    ) -> RResult<abi_stable::std_types::ROption<RVec<u8>>, PluginError>;

    /// Atomically replaces a file with `data` and permission bits `mode`; parents are
    /// created (0755). Only paths the manifest declares are writable.
    fn file_write(
        &self,
        path: RStr<'_>,
        data: RSlice<'_, u8>,
        mode: u32,
    ) -> RResult<(), PluginError>;

    /// Creates a directory (and parents) with `mode`. Declared paths only.
    fn dir_create(&self, path: RStr<'_>, mode: u32) -> RResult<(), PluginError>;

    /// Removes a file or a whole tree; absent is not an error. Declared paths only.
    fn remove(&self, path: RStr<'_>) -> RResult<(), PluginError>;

    /// Operates on a systemd unit; returns the `ActiveState` for [`UnitOp::ActiveState`]
    /// and an empty string otherwise.
    fn unit(&self, op: UnitOp, unit: RStr<'_>) -> RResult<RString, PluginError>;

    /// Runs a command to completion (or until its timeout, when it is killed).
    #[sabi(last_prefix_field)]
    fn run(&self, spec: CommandSpec) -> RResult<CommandOutput, PluginError>;

    // Appended capabilities: new methods go below, never above.

    /// Names of the entries of a directory (absolute OS path under the root prefix),
    /// sorted; `Ok(None)` when the directory does not exist.
    fn dir_list(
        &self,
        path: RStr<'_>,
    ) -> RResult<abi_stable::std_types::ROption<RVec<RString>>, PluginError>;

    /// Facts about a path; `Ok(None)` when it does not exist.
    fn file_stat(
        &self,
        path: RStr<'_>,
    ) -> RResult<abi_stable::std_types::ROption<FileStat>, PluginError>;

    /// Since 1.1. Runs a command as [`HostOps::run`] does, where the arguments at the
    /// indices `secret_args` of `spec.argv` are secrets (auth keys, setup keys): the host
    /// never shows them. Every error text and log line about the command shows `***` in
    /// their place, and each occurrence of a secret in the captured output is replaced by
    /// `***` before the output is returned.
    fn run_masked(
        &self,
        spec: CommandSpec,
        secret_args: RSlice<'_, u32>,
    ) -> RResult<CommandOutput, PluginError>;

    /// Since 1.2. Makes one HTTP request with a body held in memory (each way at most
    /// [`crate::net::MAX_HTTP_BODY`]). `request` is a [`crate::net::Request`] as JSON;
    /// `body` is sent as the request body (empty: none). Any status is returned; an error
    /// means the request could not be made (DNS, connection, TLS, a stall, a body too big).
    fn http(&self, request: RStr<'_>, body: RSlice<'_, u8>) -> RResult<HttpReply, PluginError>;

    /// Since 1.2. Streams a file to disk: `request` is a [`crate::net::Download`] as JSON,
    /// the answer a [`crate::net::DownloadResult`] as JSON. The body goes through SHA-256
    /// and (when asked) gzip to a temporary file next to the target, which replaces the
    /// target only once the body is complete and its hash matches; on any failure (a
    /// status other than 200, a wrong hash, a cut-off or corrupt body, a full disk, a
    /// stall) the target is left as it was. The host reports progress to whoever
    /// started the operation.
    fn download(&self, request: RStr<'_>) -> RResult<RString, PluginError>;

    /// Since 1.3. Opens a regular file under the root prefix (symlinks and `..` resolve
    /// inside the root) and hands the plugin the descriptor: it owns it from then on and
    /// closes it (it is opened close-on-exec, blocking). `flags` is a set of [`OpenFlags`]
    /// (unknown bits are refused with a 400). A read-only open may name any file under the
    /// root and follows a final symlink inside the root; any writing open (`WRITE`, with
    /// `CREATE`, `TRUNCATE`, `APPEND` or `EXCLUSIVE`) is limited to the manifest's `paths`,
    /// checked on the path as given and where its directory resolves, and does not follow
    /// a final symlink or open a file with several names (a planted hard link would lead the
    /// write elsewhere). `CREATE` makes a missing file with permission bits `mode` (exactly,
    /// whatever the umask) and missing parents (0755). A FIFO, a device, a socket or a
    /// directory is refused without blocking. `Ok(None)` when the file (without `CREATE`)
    /// or its directory does not exist.
    fn file_open(
        &self,
        path: RStr<'_>,
        flags: OpenFlags,
        mode: u32,
    ) -> RResult<abi_stable::std_types::ROption<i32>, PluginError>;

    /// Since 1.3. Opens a directory under the manifest's `paths` (checked on the path as
    /// given and where it resolves inside the root) and hands the plugin an `O_DIRECTORY`
    /// descriptor it owns (close-on-exec), for `*at` calls relative to it (the SDK's
    /// archive functions take one). What the plugin does through the descriptor is not
    /// checked by the host: resolve beneath it (`RESOLVE_BENEATH`, `O_NOFOLLOW`) to stay
    /// inside. `Ok(None)` when it does not exist.
    fn dir_open(&self, path: RStr<'_>)
        -> RResult<abi_stable::std_types::ROption<i32>, PluginError>;

    /// Since 1.3. Everything about a path a backup keeps (kind, mode, size, mtime, owner,
    /// link target), not following a final symlink; `Ok(None)` when it does not exist.
    /// Any path under the root.
    fn file_facts(
        &self,
        path: RStr<'_>,
    ) -> RResult<abi_stable::std_types::ROption<FileFacts>, PluginError>;

    /// Since 1.3. Changes the owner and group of a path (`lchown`: a final symlink is
    /// changed itself, never followed; a file with several names is refused). [`KEEP_ID`]
    /// leaves the owner or the group as it is. Declared paths only; the path must exist.
    fn chown(&self, path: RStr<'_>, uid: u32, gid: u32) -> RResult<(), PluginError>;

    /// Since 1.3. Creates a symbolic link at `path` whose text is `target`, as written (it
    /// is not checked or resolved; the host's own operations resolve it inside the root).
    /// An existing entry at `path` is an error, never replaced: to replace a link, create
    /// it under another name and [`HostOps::rename`] it over. Declared paths only; the
    /// parent directory must exist.
    fn symlink(&self, target: RStr<'_>, path: RStr<'_>) -> RResult<(), PluginError>;

    /// Since 1.3. Renames `from` to `to` in one atomic step (`renameat2`), both under the
    /// manifest's `paths` and on the same filesystem, then syncs the directories involved.
    /// By default an existing `to` is replaced (a file by a file, an empty directory by a
    /// directory); `flags` is a set of [`RENAME_NOREPLACE`] (an existing `to` is an error)
    /// or [`RENAME_EXCHANGE`] (both must exist and trade places); unknown bits are refused
    /// with a 400. Neither end's final symlink is followed: a link is renamed itself.
    fn rename(&self, from: RStr<'_>, to: RStr<'_>, flags: u32) -> RResult<(), PluginError>;
}

/// How [`HostOps::file_open`] opens a file (since 1.3): a set of the constants below,
/// combined with `|`. At least one of `READ` and `WRITE`; the others need `WRITE`.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenFlags {
    /// The bits.
    pub bits: u32,
}

impl OpenFlags {
    /// Reading (alone: a read-only open, allowed anywhere under the root).
    pub const READ: OpenFlags = OpenFlags { bits: 1 };
    /// Writing (with `READ`: both). Only under the manifest's `paths`.
    pub const WRITE: OpenFlags = OpenFlags { bits: 2 };
    /// Create the file when missing (with the open's `mode`), and its missing parents.
    pub const CREATE: OpenFlags = OpenFlags { bits: 4 };
    /// Empty an existing file.
    pub const TRUNCATE: OpenFlags = OpenFlags { bits: 8 };
    /// Every write goes to the end of the file.
    pub const APPEND: OpenFlags = OpenFlags { bits: 16 };
    /// With `CREATE`: fail when the file exists (`O_EXCL`).
    pub const EXCLUSIVE: OpenFlags = OpenFlags { bits: 32 };
    /// Every bit this contract knows.
    pub const ALL: OpenFlags = OpenFlags { bits: 63 };

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: OpenFlags) -> bool {
        self.bits & other.bits == other.bits
    }
}

impl std::ops::BitOr for OpenFlags {
    type Output = OpenFlags;
    fn bitor(self, other: OpenFlags) -> OpenFlags {
        OpenFlags {
            bits: self.bits | other.bits,
        }
    }
}

/// [`HostOps::rename`]: fail when the target exists (since 1.3).
pub const RENAME_NOREPLACE: u32 = 1;
/// [`HostOps::rename`]: swap the two entries, both of which must exist (since 1.3).
pub const RENAME_EXCHANGE: u32 = 2;

/// [`HostOps::chown`]: leave this id as it is (since 1.3).
pub const KEEP_ID: u32 = u32::MAX;

/// Everything about a path a backup keeps ([`HostOps::file_facts`], since 1.3); a final
/// symlink is described, not followed.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct FileFacts {
    /// What the path names.
    pub kind: FileKind,
    /// Permission bits (`0o7777` part of the mode).
    pub mode: u32,
    /// Size in bytes (for a symlink, the length of its target).
    pub size: u64,
    /// Modification time: seconds since the epoch.
    pub mtime_secs: i64,
    /// Modification time: nanoseconds within the second.
    pub mtime_nanos: u32,
    /// Owner (user id).
    pub uid: u32,
    /// Group (group id).
    pub gid: u32,
    /// For a symlink, its target as written; empty otherwise.
    pub link_target: RString,
}

/// An HTTP response as [`HostOps::http`] returns it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    /// A [`crate::net::ResponseHead`] as JSON.
    pub head: RString,
    /// The response body.
    pub body: RVec<u8>,
}

/// What stands for a secret wherever the host shows a command line or output of
/// [`HostOps::run_masked`].
pub const SECRET_MASK: &str = "***";

/// The masking rule of [`HostOps::run_masked`], for hosts: the secret arguments of `argv`
/// (indices in `secret_args`; indices past the end are ignored).
pub fn secret_values<'a>(argv: &'a [RString], secret_args: &[u32]) -> Vec<&'a str> {
    secret_args
        .iter()
        .filter_map(|&i| argv.get(i as usize))
        .map(RString::as_str)
        .filter(|s| !s.is_empty())
        .collect()
}

/// The masking rule of [`HostOps::run_masked`], for hosts: `text` with every occurrence of
/// each of `secrets` replaced by [`SECRET_MASK`]. Longer secrets are replaced first, so a
/// secret containing another one is masked whole.
pub fn mask_secrets(text: &[u8], secrets: &[&str]) -> Vec<u8> {
    let mut secrets: Vec<&[u8]> = secrets
        .iter()
        .map(|s| s.as_bytes())
        .filter(|s| !s.is_empty())
        .collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    'scan: while !rest.is_empty() {
        for s in &secrets {
            if rest.starts_with(s) {
                out.extend_from_slice(SECRET_MASK.as_bytes());
                rest = &rest[s.len()..];
                continue 'scan;
            }
        }
        out.push(rest[0]);
        rest = &rest[1..];
    }
    out
}

/// [`mask_secrets`] for text.
pub fn mask_secrets_str(text: &str, secrets: &[&str]) -> String {
    String::from_utf8_lossy(&mask_secrets(text.as_bytes(), secrets)).into_owned()
}

/// The host handle as a plugin holds it.
pub type HostHandle = HostOps_TO<'static, RBox<()>>;

/// Where a plugin writes its backup archive, chunk by chunk.
#[sabi_trait]
pub trait ByteSink {
    /// Takes the next chunk of the archive; an error stops the backup.
    #[sabi(last_prefix_field)]
    fn write(&mut self, chunk: RSlice<'_, u8>) -> RResult<(), PluginError>;
}

/// Where a plugin reads a restore archive from. `Ok(0)` means the end.
#[sabi_trait]
pub trait ByteSource {
    /// Fills the start of `buf` with the next bytes of the archive and returns how many.
    #[sabi(last_prefix_field)]
    fn read(&mut self, buf: RSliceMut<'_, u8>) -> RResult<usize, PluginError>;
}

/// A [`ByteSink`] as a plugin receives it: borrowed from the host for one backup.
pub type ByteSinkRef<'a> = ByteSink_TO<'a, abi_stable::sabi_types::RMut<'a, ()>>;
/// A [`ByteSource`] as a plugin receives it: borrowed from the host for one restore.
pub type ByteSourceRef<'a> = ByteSource_TO<'a, abi_stable::sabi_types::RMut<'a, ()>>;

/// A loaded plugin instance.
#[sabi_trait]
pub trait PluginOps: Send + Sync {
    /// Runs operation `op` (a hook's op name or a route's op) on JSON `input`, returning
    /// JSON output bytes.
    fn invoke(&self, op: RStr<'_>, input: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError>;

    /// Streams a backup archive into `sink`: a gzip-compressed tar (served as
    /// `application/gzip`, the format of `crate::sdk::archive`). `options` is JSON
    /// (`{"complete": bool}`).
    fn backup(&self, options: RSlice<'_, u8>, sink: ByteSinkRef<'_>) -> RResult<(), PluginError>;

    /// Restores from a backup archive (a gzip-compressed tar, as [`PluginOps::backup`]
    /// writes) read from `source`.
    #[sabi(last_prefix_field)]
    fn restore(&self, source: ByteSourceRef<'_>) -> RResult<(), PluginError>;
}

/// A plugin instance as the host holds it.
pub type PluginBox = PluginOps_TO<'static, RBox<()>>;

/// The root module every plugin library exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// The manifest as JSON.
    pub manifest: extern "C" fn() -> RString,
    /// Builds the plugin instance, handing it its host capabilities.
    #[sabi(last_prefix_field)]
    pub instantiate: extern "C" fn(host: HostHandle) -> RResult<PluginBox, PluginError>,
    /// Since 1.4: the plugins of a bundle (one library carrying several plugins, see
    /// [`crate::export_bundle!`]), each a root module of its own; empty for a library of
    /// one plugin. A bundle's own `manifest` is a [`BundleManifest`], its `instantiate`
    /// refuses. Absent from libraries built against 1.3 and earlier.
    #[sabi(missing_field(option))]
    pub plugins: extern "C" fn() -> RVec<PluginModuleRef>,
}

/// What a bundle's root module says of itself through `manifest` (JSON): the library
/// crates whose plugins it carries. A plugin directory that holds a bundle skips these
/// crates' own libraries (`lib<crate>.so`) unopened.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BundleManifest {
    /// The crates' names, in the order of the bundle's `plugins`.
    pub bundle: Vec<String>,
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "incus_osd_plugin";
    const NAME: &'static str = "incus_osd_plugin";
    // abi_stable's own version gate; the contract's version rule is applied by the host
    // through `version::VERSION_SYMBOL` (see `version::check_compatible`).
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// Checks the layout of a plugin's root module (from its library's abi_stable header)
/// against this contract's; see [`check_layout`]. On refusal, returns abi_stable's report.
pub fn check_root_module(plugin: &'static TypeLayout) -> Result<(), String> {
    check_layout(plugin, <PluginModuleRef as StableAbi>::LAYOUT)
}

/// abi_stable's layout check, oriented the way this contract grows: the plugin may have been
/// built against an older minor version than the host, never a newer one.
///
/// abi_stable's own check (`init_root_module`) takes the loading side (the host) as the
/// interface and lets only the library's side of a prefix type (root module, vtable) have
/// more fields: a newer library for an older host. Here the host is the newer side, for the
/// types a plugin implements (root module, [`PluginOps`]) as for the one the host implements
/// ([`HostOps`]). So the plugin's layout is checked as the interface and the host's as the
/// implementation: every prefix type of the plugin must be a prefix of the host's, and all
/// other types must be equal. A plugin using a host capability appended later than its
/// contract cannot exist (it would have been built for a newer minor version); a root-module
/// field or `PluginOps` method the plugin lacks is handled by the host (see the module
/// docs).
///
/// Each call starts from a fresh checking state. abi_stable's public check
/// (`check_layout_compatibility`) also merges every prefix type it saw into process-wide
/// state, so that all libraries of a process agree with one another, and compares later
/// libraries with that merged view: after a plugin of an older minor version, a current
/// plugin's vtable was compared with the older plugin's rather than the host's, and refused.
/// Plugins never exchange ABI objects with one another, only with the host, so each one is
/// checked against the host alone (with the same checker, from abi_stable 0.11's
/// `abi_checking` module, public but hidden from its docs).
///
/// In the returned report, `Expected:` is the plugin's side and `Found:` the host's.
pub fn check_layout(plugin: &'static TypeLayout, host: &'static TypeLayout) -> Result<(), String> {
    use abi_stable::abi_stability::abi_checking::{
        check_layout_compatibility_with_globals, CheckingGlobals,
    };
    check_layout_compatibility_with_globals(plugin, host, &CheckingGlobals::new())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi_stable::prefix_type::{PrefixRefTrait, PrefixTypeTrait};

    /// A root module as released in some 1.0, and the same module in a 1.1 that appended a
    /// field. Same type name, same package: only the field count differs.
    #[allow(dead_code)] // only the newer view's accessors are called
    mod v1_0 {
        use super::*;

        #[repr(C)]
        #[derive(StableAbi)]
        #[sabi(kind(Prefix(prefix_ref = ModRef)))]
        #[sabi(missing_field(panic))]
        pub struct Mod {
            pub a: extern "C" fn() -> u32,
            #[sabi(last_prefix_field)]
            pub b: extern "C" fn() -> u32,
        }
    }

    mod v1_1 {
        use super::*;

        #[repr(C)]
        #[derive(StableAbi)]
        #[sabi(kind(Prefix(prefix_ref = ModRef)))]
        #[sabi(missing_field(panic))]
        pub struct Mod {
            pub a: extern "C" fn() -> u32,
            #[sabi(last_prefix_field)]
            pub b: extern "C" fn() -> u32,
            #[sabi(missing_field(option))]
            pub c: extern "C" fn() -> u32,
        }
    }

    extern "C" fn one() -> u32 {
        1
    }

    #[test]
    fn an_older_root_module_fits_a_newer_host_and_its_new_field_reads_as_absent() {
        let old = <v1_0::ModRef as StableAbi>::LAYOUT;
        let new = <v1_1::ModRef as StableAbi>::LAYOUT;
        check_layout(old, new).expect("a 1.0 plugin on a 1.1 host");
        check_layout(new, new).expect("same version");
        // abi_stable's own orientation (host as interface) refuses exactly this case.
        assert!(
            abi_stable::abi_stability::check_layout_compatibility(new, old)
                .into_result()
                .is_err()
        );

        // What the host then sees through its newer view of the older module.
        let module = v1_0::Mod { a: one, b: one }.leak_into_prefix();
        // SAFETY: the layouts were found compatible above; this is what the loader does
        // after its check (abi_stable's `unchecked_layout`).
        let view = unsafe { v1_1::ModRef::from_prefix_ref(module.0.cast()) };
        assert_eq!((view.a())() + (view.b())(), 2);
        assert!(view.c().is_none(), "an appended field reads as absent");
    }

    /// A root module that stayed the same while a vtable it hands over grew, as `HostOps`
    /// in 1.1.
    #[allow(dead_code)]
    mod h1_0 {
        use super::*;

        #[repr(C)]
        #[derive(StableAbi)]
        #[sabi(kind(Prefix(prefix_ref = HostRef)))]
        pub struct Host {
            #[sabi(last_prefix_field)]
            pub a: extern "C" fn() -> u32,
        }

        #[repr(C)]
        #[derive(StableAbi)]
        #[sabi(kind(Prefix(prefix_ref = ModRef)))]
        pub struct Mod {
            #[sabi(last_prefix_field)]
            pub instantiate: extern "C" fn(HostRef) -> u32,
        }
    }

    #[allow(dead_code)]
    mod h1_1 {
        use super::*;

        #[repr(C)]
        #[derive(StableAbi)]
        #[sabi(kind(Prefix(prefix_ref = HostRef)))]
        pub struct Host {
            #[sabi(last_prefix_field)]
            pub a: extern "C" fn() -> u32,
            pub b: extern "C" fn() -> u32,
        }

        #[repr(C)]
        #[derive(StableAbi)]
        #[sabi(kind(Prefix(prefix_ref = ModRef)))]
        pub struct Mod {
            #[sabi(last_prefix_field)]
            pub instantiate: extern "C" fn(HostRef) -> u32,
        }
    }

    /// abi_stable's public check merges the layouts it saw into process-wide state; with
    /// it, a current plugin checked after an older one was compared with the older one's
    /// vtable, not the host's, and refused (`too many fields`). Each check starts afresh.
    #[test]
    fn older_and_current_plugins_fit_in_any_order() {
        let old = <h1_0::ModRef as StableAbi>::LAYOUT;
        let new = <h1_1::ModRef as StableAbi>::LAYOUT;
        check_layout(old, new).expect("an older plugin");
        check_layout(new, new).expect("a current plugin, after an older one");
        check_layout(old, new).expect("an older plugin again");
        assert!(check_layout(new, old).is_err(), "a newer plugin never fits");
    }

    #[test]
    fn a_newer_root_module_does_not_fit_an_older_host() {
        let old = <v1_0::ModRef as StableAbi>::LAYOUT;
        let new = <v1_1::ModRef as StableAbi>::LAYOUT;
        let report = check_layout(new, old).expect_err("a 1.1 plugin on a 1.0 host");
        assert!(report.contains("too many fields"), "{report}");
    }

    #[test]
    fn secrets_are_masked_wherever_they_occur() {
        let argv: Vec<RString> = ["vpn", "up", "--key", "tskey-1", "--key2", ""]
            .map(RString::from)
            .into();
        // Index 5 is an empty secret (nothing to mask), 9 is past the end.
        let secrets = secret_values(&argv, &[3, 5, 9]);
        assert_eq!(secrets, ["tskey-1"]);
        assert_eq!(
            mask_secrets_str("bad key tskey-1, again tskey-1tskey-1.", &secrets),
            "bad key ***, again ******."
        );
        // A secret containing another is masked whole, not in pieces.
        assert_eq!(mask_secrets_str("k=abc-123", &["abc", "abc-123"]), "k=***");
        assert_eq!(mask_secrets(b"\xffabc\xfe", &["abc"]), b"\xff***\xfe");
    }

    #[test]
    fn this_contracts_root_module_fits_itself() {
        check_root_module(<PluginModuleRef as StableAbi>::LAYOUT).unwrap();
    }
}
