//! Application images built at test time, laid out as the real ones: a GPT disk image with
//! one `usr` partition (the architecture's GPT type, as `systemd-dissect` expects) holding an
//! ext4 file system made from a directory with `mkfs.ext4 -d` (no root, no loop device),
//! with `lib/extension-release.d/extension-release.<app>` in it. What they hold are
//! stand-ins, named as such: a shell script for the daemon and a unit named after the real
//! one. The real images also carry dm-verity and a signature partition; these do not (the
//! host does not check them either, see `docs/applications.md`).
//!
//! Also: [`write_local_mirror`], a `local` provider's update directory serving such images.
//!
//! Host tools: `mkfs.ext4` (e2fsprogs) and `sfdisk` (fdisk).

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

/// The `usr` partition's GPT type for this architecture (the Discoverable Partitions
/// Specification).
pub fn usr_partition_type() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "8484680C-9521-48C6-9C11-B0720656F69E",
        "aarch64" => "B0E01050-EE5F-4390-949A-9101B17104E9",
        other => panic!("no usr partition type known for {other}"),
    }
}

/// Where the partition starts in the image (1 MiB, as partitioning tools align).
pub const PARTITION_OFFSET: u64 = 1 << 20;

/// One file of an extension: its path inside `/usr` (`bin/x`, `lib/systemd/system/y`),
/// its contents and mode.
#[derive(Debug, Clone)]
pub struct ExtFile {
    pub path: String,
    pub contents: Vec<u8>,
    pub mode: u32,
}

impl ExtFile {
    pub fn new(path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> ExtFile {
        ExtFile {
            path: path.to_string(),
            contents: contents.into(),
            mode,
        }
    }
}

/// The extension release file of `app`, matching any OS (`ID=_any`).
pub fn extension_release(app: &str) -> ExtFile {
    ExtFile::new(
        &format!("lib/extension-release.d/extension-release.{app}"),
        "ID=_any\n",
        0o644,
    )
}

/// Builds `<dir>/<app>.raw` from `files` (placed under `/usr`, plus the extension release
/// file of `app` when `files` has none), through a tree at `<dir>/<app>.tree`. Panics
/// with the tool's output on failure. Returns the image's path.
pub fn build_sysext_image(dir: &Path, app: &str, files: &[ExtFile]) -> PathBuf {
    let tree = dir.join(format!("{app}.tree"));
    let _ = std::fs::remove_dir_all(&tree);
    let mut all = files.to_vec();
    let release = extension_release(app);
    if !all.iter().any(|f| f.path == release.path) {
        all.push(release);
    }
    let mut content = 0u64;
    for f in &all {
        assert!(
            !f.path.starts_with('/') && !f.path.split('/').any(|c| c == ".." || c.is_empty()),
            "not a plain relative path: {:?}",
            f.path
        );
        let p = tree.join(&f.path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &f.contents).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(f.mode)).unwrap();
        content += f.contents.len() as u64 + 4096;
    }
    let image = dir.join(format!("{app}.raw"));
    build_image_from_tree(&tree, &image, app, content);
    image
}

/// The GPT image `image` with one `usr` partition named `label` holding an ext4 file
/// system of the contents of `tree` (the partition's root is `/usr`).
fn build_image_from_tree(tree: &Path, image: &Path, label: &str, content: u64) {
    const MIB: u64 = 1 << 20;
    let fs_size = (content * 2 / MIB + 4) * MIB;
    let fs = image.with_extension("ext4");
    let _ = std::fs::remove_file(&fs);
    run(Command::new(tool("mkfs.ext4"))
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-E",
            "root_owner=0:0",
            "-L",
            "usr",
            "-d",
        ])
        .arg(tree)
        .arg(&fs)
        .arg(format!("{}k", fs_size / 1024)));

    // The partition table: 1 MiB before the partition, 1 MiB after for the backup GPT.
    let total = PARTITION_OFFSET + fs_size + MIB;
    let f = std::fs::File::create(image).unwrap();
    f.set_len(total).unwrap();
    drop(f);
    let script = format!(
        "label: gpt\nstart={}, size={}, type={}, name=\"{label}\"\n",
        PARTITION_OFFSET / 512,
        fs_size / 512,
        usr_partition_type()
    );
    run_with_input(
        Command::new(tool("sfdisk"))
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(image),
        script.as_bytes(),
    );
    let mut out = std::fs::OpenOptions::new().write(true).open(image).unwrap();
    out.seek(SeekFrom::Start(PARTITION_OFFSET)).unwrap();
    std::io::copy(&mut std::fs::File::open(&fs).unwrap(), &mut out).unwrap();
    out.sync_all().unwrap();
    std::fs::remove_file(&fs).unwrap();
}

/// Overwrites the start of the image's partition with zeros: the GPT header is intact
/// (the host's own check passes) but there is no file system for systemd to mount.
pub fn wipe_partition(image: &Path) {
    let mut f = std::fs::OpenOptions::new().write(true).open(image).unwrap();
    f.seek(SeekFrom::Start(PARTITION_OFFSET)).unwrap();
    f.write_all(&vec![0u8; 1 << 20]).unwrap();
    f.sync_all().unwrap();
}

/// A stand-in for an application's image: a daemon (a shell script) and units named after
/// the real ones, each saying it is a stand-in. The daemon logs its application and
/// version, writes the version to `/run/<app>-stand-in/version` and sleeps.
#[derive(Debug, Clone)]
pub struct StandIn {
    pub app: String,
    pub version: String,
    pub units: Vec<String>,
}

impl StandIn {
    /// A stand-in of `app` at `version` with the units `units` (e.g. `incus.service`).
    pub fn new(app: &str, version: &str, units: &[&str]) -> StandIn {
        StandIn {
            app: app.to_string(),
            version: version.to_string(),
            units: units.iter().map(|u| u.to_string()).collect(),
        }
    }

    /// The stand-in daemon's path once merged.
    pub fn daemon_path(&self) -> String {
        format!("/usr/bin/{}-stand-in", self.app)
    }

    /// Where the running daemon writes its version.
    pub fn version_file(&self) -> String {
        format!("/run/{}-stand-in/version", self.app)
    }

    /// The image's files (inside `/usr`).
    pub fn files(&self) -> Vec<ExtFile> {
        let (app, version) = (&self.app, &self.version);
        let daemon = format!(
            "#!/bin/sh\n\
             # Stand-in for the {app} daemon (tier-3 test image, not the real application).\n\
             echo \"stand-in for {app}, version {version}: started\"\n\
             mkdir -p /run/{app}-stand-in\n\
             echo {version} > /run/{app}-stand-in/version\n\
             exec sleep infinity\n"
        );
        let mut files = vec![
            ExtFile::new(&format!("bin/{app}-stand-in"), daemon, 0o755),
            ExtFile::new(
                &format!("share/{app}-stand-in/version"),
                format!("{version}\n"),
                0o644,
            ),
        ];
        for unit in &self.units {
            files.push(ExtFile::new(
                &format!("lib/systemd/system/{unit}"),
                format!(
                    "[Unit]\nDescription=stand-in for {unit} of {app} {version} (tier-3 test image)\n\n\
                     [Service]\nExecStart={}\n",
                    self.daemon_path()
                ),
                0o644,
            ));
        }
        files
    }

    /// Builds the image in `dir` (see [`build_sysext_image`]).
    pub fn build(&self, dir: &Path) -> PathBuf {
        build_sysext_image(dir, &self.app, &self.files())
    }
}

/// One application image of a release in a [`write_local_mirror`] directory.
pub struct MirrorImage<'a> {
    pub app: &'a str,
    pub image: &'a Path,
}

/// Writes a `local` provider's update directory at `dir`: each release's images gzipped at
/// `<dir>/<version>/<arch>/<app>.raw.gz`, and `index.sjson`, the index (newest release
/// first, on channel `stable`) signed by `sign` (e.g. the providers' test PKI, whose
/// update CA the provider must then be given as `update_ca`). Returns the index.
pub fn write_local_mirror(
    dir: &Path,
    releases: &[(&str, Vec<MirrorImage<'_>>)],
    sign: impl Fn(&[u8]) -> Vec<u8>,
) -> Value {
    use flate2::write::GzEncoder;
    use sha2::Digest;
    let arch = std::env::consts::ARCH;
    let mut updates = vec![];
    for (version, images) in releases {
        let mut files = vec![];
        for img in images {
            let name = format!("{arch}/{}.raw.gz", img.app);
            let target = dir.join(version).join(&name);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&std::fs::read(img.image).unwrap()).unwrap();
            let gz = gz.finish().unwrap();
            std::fs::write(&target, &gz).unwrap();
            let sha: String = sha2::Sha256::digest(&gz)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            files.push(
                json!({"architecture": arch, "component": img.app, "filename": name,
                              "sha256": sha, "size": gz.len(), "type": "application"}),
            );
        }
        updates.push(
            json!({"format": "1.0", "channels": ["stable"], "version": version,
                            "severity": "none", "published_at": "2026-01-01T00:00:00Z",
                            "files": files}),
        );
    }
    updates.sort_by(|a, b| b["version"].as_str().cmp(&a["version"].as_str()));
    let index = json!({"format": "1.0", "updates": updates});
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("index.sjson"),
        sign(serde_json::to_vec(&index).unwrap().as_slice()),
    )
    .unwrap();
    index
}

fn tool(name: &str) -> PathBuf {
    incus_osd_test_machine::find_tool(name)
        .unwrap_or_else(|| panic!("{name} not found (tests/scripts/setup-tier3 installs it)"))
}

fn run(cmd: &mut Command) {
    run_with_input(cmd, b"");
}

fn run_with_input(cmd: &mut Command, input: &[u8]) {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
