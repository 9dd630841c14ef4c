//! The staging decisions against a fake machine.

use super::*;
use std::sync::Mutex;

const OS: &str = "IncusOS";
const RUN: &str = "202501010000";
const OLD: &str = "202412010000";
const NEW: &str = "202502010000";
const UPDATES: &str = "/var/lib/updates";
const DISK: &str = "/dev/sda";
const ESP: &str = "/boot";
const MIB: u64 = 1 << 20;

/// A change the fake machine was asked to make.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Sysupdate(String),
    Remove(String),
    Label(u32, String),
    Write(u32, String),
    ReadOnly(u32),
    Install(String),
}

impl Call {
    fn partition(&self) -> Option<u32> {
        match self {
            Call::Label(n, _) | Call::Write(n, _) | Call::ReadOnly(n) => Some(*n),
            _ => None,
        }
    }
}

#[derive(Default)]
struct State {
    parts: Vec<Partition>,
    updates: Vec<(String, u64)>,
    esp: Vec<String>,
    /// Every change asked for, the failed one included.
    calls: Vec<Call>,
    /// The change (0-based, in `calls`) that fails.
    fail_at: Option<usize>,
    sysupdate: Option<PathBuf>,
}

struct Fake(Mutex<State>);

impl Fake {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    /// Records `call`; fails it when it is the one to fail, else applies `apply`.
    fn change(&self, call: Call, apply: impl FnOnce(&mut State)) -> Result<(), String> {
        let mut s = self.state();
        let index = s.calls.len();
        s.calls.push(call.clone());
        if s.fail_at == Some(index) {
            return Err(format!("injected failure of {call:?}"));
        }
        apply(&mut s);
        Ok(())
    }

    fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    fn label(&self, number: u32) -> String {
        let s = self.state();
        s.parts
            .iter()
            .find(|p| p.number == number)
            .unwrap()
            .label
            .clone()
    }

    fn esp(&self) -> Vec<String> {
        let mut v = self.state().esp.clone();
        v.sort();
        v
    }
}

impl DiskOps for Fake {
    fn sysupdate(&self) -> Option<PathBuf> {
        self.state().sysupdate.clone()
    }

    fn run_sysupdate(&self, _tool: &Path, version: &str) -> Result<(), String> {
        self.change(Call::Sysupdate(version.into()), |_| {})
    }

    fn partitions(&self, disk: &Path) -> Result<Vec<Partition>, String> {
        assert_eq!(disk, Path::new(DISK));
        Ok(self.state().parts.clone())
    }

    fn write_partition(&self, disk: &Path, part: &Partition, image: &Path) -> Result<(), String> {
        assert_eq!(disk, Path::new(DISK));
        let name = image.file_name().unwrap().to_string_lossy().into_owned();
        self.change(Call::Write(part.number, name), |_| {})
    }

    fn set_read_only(&self, _disk: &Path, number: u32) -> Result<(), String> {
        self.change(Call::ReadOnly(number), |_| {})
    }

    fn set_label(&self, _disk: &Path, number: u32, label: &str) -> Result<(), String> {
        self.change(Call::Label(number, label.into()), |s| {
            s.parts
                .iter_mut()
                .find(|p| p.number == number)
                .unwrap()
                .label = label.into();
        })
    }

    fn list_dir(&self, dir: &Path) -> Result<Vec<String>, String> {
        let s = self.state();
        if dir == Path::new(UPDATES) {
            Ok(s.updates.iter().map(|(n, _)| n.clone()).collect())
        } else if dir == Path::new(ESP).join(UKI_DIR) {
            Ok(s.esp.clone())
        } else {
            Err(format!("{}: No such file or directory", dir.display()))
        }
    }

    fn file_size(&self, path: &Path) -> Result<u64, String> {
        let s = self.state();
        let name = path.file_name().unwrap().to_string_lossy();
        assert_eq!(path.parent().unwrap(), Path::new(UPDATES));
        s.updates
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, size)| *size)
            .ok_or_else(|| format!("{}: not found", path.display()))
    }

    fn install_file(&self, src: &Path, dir: &Path, temp: &str, name: &str) -> Result<(), String> {
        assert_eq!(src, Path::new(UPDATES).join(format!("{OS}_{NEW}.efi")));
        assert_eq!(dir, Path::new(ESP).join(UKI_DIR));
        assert!(temp.starts_with('.') && temp != name);
        self.change(Call::Install(name.into()), |s| s.esp.push(name.into()))
    }

    fn remove_file(&self, _dir: &Path, name: &str) -> Result<(), String> {
        self.change(Call::Remove(name.into()), |s| s.esp.retain(|n| n != name))
    }
}

fn part(number: u32, kind: Kind, label: &str, size: u64) -> Partition {
    Partition {
        number,
        type_guid: Arch::X86_64.type_guid(kind).into(),
        label: label.into(),
        start: u64::from(number) * 64 * MIB,
        size,
    }
}

/// The upstream layout: ESP, seed, A (2-4), B (5-7), swap, root; the running version in
/// slot A or B, the old one in the other.
fn layout(running_in_a: bool) -> Vec<Partition> {
    let (a, b) = if running_in_a { (RUN, OLD) } else { (OLD, RUN) };
    let esp = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
    let mut v = vec![Partition {
        number: 1,
        type_guid: esp.into(),
        label: "esp".into(),
        start: MIB,
        size: 2048 * MIB,
    }];
    for (first, ver) in [(2, a), (5, b)] {
        v.push(part(
            first,
            Kind::VeritySig,
            &Kind::VeritySig.label(OS, ver),
            MIB,
        ));
        v.push(part(
            first + 1,
            Kind::Verity,
            &Kind::Verity.label(OS, ver),
            16 * MIB,
        ));
        v.push(part(
            first + 2,
            Kind::Usr,
            &Kind::Usr.label(OS, ver),
            64 * MIB,
        ));
    }
    v.push(Partition {
        number: 9,
        type_guid: "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f".into(),
        label: "swap".into(),
        start: 900 * MIB,
        size: MIB,
    });
    v
}

fn update_files(ver: &str) -> Vec<(String, u64)> {
    let u = "0123456789abcdef0123456789abcdef";
    vec![
        (format!("{OS}_{ver}.efi"), 100_000),
        (format!("{OS}_{ver}.usr-x86-64.{u}.raw"), 60 * MIB),
        (format!("{OS}_{ver}.usr-x86-64-verity.{u}.raw"), 10 * MIB),
        (format!("{OS}_{ver}.usr-x86-64-verity-sig.{u}.raw"), 4096),
    ]
}

fn fake(running_in_a: bool) -> Fake {
    Fake(Mutex::new(State {
        parts: layout(running_in_a),
        updates: update_files(NEW),
        esp: vec![format!("{OS}_{RUN}.efi"), format!("{OS}_{OLD}+0-3.efi")],
        ..State::default()
    }))
}

fn req() -> Request<'static> {
    Request {
        os_name: OS,
        version: NEW,
        running: RUN,
        arch: Arch::X86_64,
        updates_dir: Path::new(UPDATES),
        disk: Path::new(DISK),
        esp: Path::new(ESP),
    }
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn labels(f: &Fake, numbers: [u32; 3]) -> [String; 3] {
    numbers.map(|n| f.label(n))
}

fn release_labels(ver: &str) -> [String; 3] {
    Kind::ALL.map(|k| k.label(OS, ver))
}

#[test]
fn the_slot_not_holding_the_running_version_is_written_and_named_after_the_release() {
    for (running_in_a, target, running) in
        [(true, [5, 6, 7], [2, 3, 4]), (false, [2, 3, 4], [5, 6, 7])]
    {
        let f = fake(running_in_a);
        let staged = stage_native(&f, &req()).unwrap();
        assert_eq!(staged.partitions, target.to_vec());
        assert_eq!(staged.uki, format!("{OS}_{NEW}+3-0.efi"));
        assert_eq!(labels(&f, target), release_labels(NEW));
        assert_eq!(
            labels(&f, running),
            release_labels(RUN),
            "running slot relabelled"
        );
        assert!(
            f.calls()
                .iter()
                .filter_map(Call::partition)
                .all(|n| target.contains(&n)),
            "a change touched a partition outside the target slot: {:?}",
            f.calls()
        );
        let [sig, verity, usr] = target;
        let u = "0123456789abcdef0123456789abcdef";
        let expected = vec![
            Call::Remove(format!("{OS}_{OLD}+0-3.efi")),
            Call::Label(sig, EMPTY_LABEL.into()),
            Call::Label(verity, EMPTY_LABEL.into()),
            Call::Label(usr, EMPTY_LABEL.into()),
            Call::Write(sig, format!("{OS}_{NEW}.usr-x86-64-verity-sig.{u}.raw")),
            Call::Write(verity, format!("{OS}_{NEW}.usr-x86-64-verity.{u}.raw")),
            Call::Write(usr, format!("{OS}_{NEW}.usr-x86-64.{u}.raw")),
            Call::ReadOnly(sig),
            Call::Label(sig, format!("{OS}_{NEW}_verity_sig")),
            Call::ReadOnly(verity),
            Call::Label(verity, format!("{OS}_{NEW}_verity")),
            Call::ReadOnly(usr),
            Call::Label(usr, format!("{OS}_{NEW}")),
            Call::Install(format!("{OS}_{NEW}+3-0.efi")),
        ];
        assert_eq!(f.calls(), expected);
        assert_eq!(
            f.esp(),
            sorted(vec![
                format!("{OS}_{NEW}+3-0.efi"),
                format!("{OS}_{RUN}.efi")
            ])
        );
    }
}

#[test]
fn an_image_larger_than_its_partition_is_refused_before_anything_is_written() {
    let f = fake(true);
    f.state().updates[1].1 = 64 * MIB + 1; // usr image one byte too large
    let err = stage_native(&f, &req()).unwrap_err();
    assert_eq!(
        err,
        StageError::TooLarge {
            file: format!("{UPDATES}/{OS}_{NEW}.usr-x86-64.0123456789abcdef0123456789abcdef.raw"),
            size: 64 * MIB + 1,
            number: 7,
            capacity: 64 * MIB,
        }
    );
    assert!(err.to_string().contains("nothing was written"), "{err}");
    assert_eq!(f.calls(), vec![], "something was changed");
    assert_eq!(labels(&f, [5, 6, 7]), release_labels(OLD));
    // Exactly the partition size fits.
    f.state().updates[1].1 = 64 * MIB;
    stage_native(&f, &req()).unwrap();
}

#[test]
fn pruning_keeps_the_running_version_and_the_new_one_and_leaves_other_files_alone() {
    let f = fake(true);
    f.state().esp = vec![
        format!("{OS}_{RUN}+1-2.efi"), // running, boot not yet blessed
        format!("{OS}_{OLD}.efi"),
        format!("{OS}_202411010000+0-3.efi"),
        format!("{OS}_{NEW}+1-2.efi"), // a failed earlier staging of the same release
        format!(".{OS}_{NEW}+3-0.efi.tmp"), // an interrupted copy
        "Other_202401010000.efi".into(),
        "README".into(),
    ];
    let staged = stage_native(&f, &req()).unwrap();
    assert_eq!(
        sorted(staged.removed.clone()),
        sorted(vec![
            format!(".{OS}_{NEW}+3-0.efi.tmp"),
            format!("{OS}_202411010000+0-3.efi"),
            format!("{OS}_{OLD}.efi"),
            format!("{OS}_{NEW}+1-2.efi"),
        ])
    );
    assert_eq!(
        f.esp(),
        sorted(vec![
            format!("{OS}_{NEW}+3-0.efi"),
            format!("{OS}_{RUN}+1-2.efi"),
            "Other_202401010000.efi".to_string(),
            "README".to_string(),
        ])
    );
}

#[test]
fn the_running_versions_uki_is_kept_even_when_it_is_the_oldest() {
    let f = fake(true);
    // Running from backup: the running release is older than what the other UKIs hold.
    f.state().esp = vec![
        format!("{OS}_{RUN}.efi"),
        format!("{OS}_202503010000+0-3.efi"),
        format!("{OS}_202504010000.efi"),
    ];
    stage_native(&f, &req()).unwrap();
    assert_eq!(
        f.esp(),
        sorted(vec![
            format!("{OS}_{NEW}+3-0.efi"),
            format!("{OS}_{RUN}.efi")
        ])
    );
    assert!(!f.calls().contains(&Call::Remove(format!("{OS}_{RUN}.efi"))));
}

#[test]
fn a_failure_at_any_step_leaves_the_running_slot_and_uki_and_no_bootable_half_slot() {
    let total = {
        let f = fake(true);
        stage_native(&f, &req()).unwrap();
        f.calls().len()
    };
    for fail_at in 0..total {
        let f = fake(true);
        f.state().fail_at = Some(fail_at);
        let err = stage_native(&f, &req()).unwrap_err();
        assert!(
            matches!(err, StageError::Step { .. }),
            "step {fail_at}: {err:?}"
        );
        assert!(err.to_string().contains("injected failure"), "{err}");
        let calls = f.calls();
        assert_eq!(
            calls.len(),
            fail_at + 1,
            "went on after the failure: {calls:?}"
        );
        // The running slot and its UKI are untouched.
        assert_eq!(labels(&f, [2, 3, 4]), release_labels(RUN));
        assert!(calls
            .iter()
            .filter_map(Call::partition)
            .all(|n| (5..=7).contains(&n)));
        assert!(f.esp().contains(&format!("{OS}_{RUN}.efi")));
        // Nothing boots the new release, and a half-written slot is never labelled whole.
        assert!(!f.esp().iter().any(|n| uki_version(n, OS) == Some(NEW)));
        let target = labels(&f, [5, 6, 7]);
        // Once a write started, some target label stays `_empty` until the slot is whole
        // (only the UKI's installation can fail after that).
        let started = calls.iter().any(|c| matches!(c, Call::Write(..)));
        if started && !matches!(calls[fail_at], Call::Install(_)) {
            assert!(
                target.iter().any(|l| l == EMPTY_LABEL),
                "step {fail_at}: target labels {target:?} after a partial write"
            );
        }
        assert_ne!(target, release_labels(RUN));
        // A retry completes.
        f.state().fail_at = None;
        stage_native(&f, &req()).unwrap();
        assert_eq!(labels(&f, [5, 6, 7]), release_labels(NEW));
        assert_eq!(labels(&f, [2, 3, 4]), release_labels(RUN));
        assert_eq!(
            f.esp(),
            sorted(vec![
                format!("{OS}_{NEW}+3-0.efi"),
                format!("{OS}_{RUN}.efi")
            ])
        );
    }
}

#[test]
fn a_disk_where_no_slot_carries_the_running_version_is_refused() {
    let f = fake(true);
    f.state().parts[3].label = "_empty".into(); // A's usr no longer says it is running
    let err = stage_native(&f, &req()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "no single usr partition on {DISK} is labelled \"{OS}_{RUN}\" (the running version): cannot tell which slot is running"
        )
    );
    assert_eq!(f.calls(), vec![]);

    // Both slots claiming the running version is as ambiguous.
    let f = fake(true);
    f.state().parts[6].label = Kind::Usr.label(OS, RUN);
    assert!(matches!(
        stage_native(&f, &req()),
        Err(StageError::NoRunningSlot { kind: "usr", .. })
    ));
    assert_eq!(f.calls(), vec![]);
}

#[test]
fn a_disk_without_two_partitions_of_each_kind_is_refused() {
    let f = fake(true);
    f.state().parts.retain(|p| p.number != 6);
    let err = stage_native(&f, &req()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{DISK} has 1 usr-verity partitions for x86-64; A/B staging needs exactly two")
    );
    assert_eq!(f.calls(), vec![]);
    // Partitions of the other architecture do not count.
    let mut arm = req();
    arm.arch = Arch::Arm64;
    let f = fake(true);
    f.state().updates = update_files(NEW)
        .into_iter()
        .map(|(n, s)| (n.replace("x86-64", "arm64"), s))
        .collect();
    assert!(matches!(
        stage_native(&f, &arm),
        Err(StageError::Layout {
            kind: "usr-verity-sig",
            arch: "arm64",
            found: 0,
            ..
        })
    ));
}

#[test]
fn missing_or_ambiguous_downloads_are_refused_before_the_disk_is_read() {
    let f = fake(true);
    f.state().updates.remove(3);
    let err = stage_native(&f, &req()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("no usr-verity-sig image for version {NEW} in {UPDATES}")
    );
    let f = fake(true);
    f.state().updates.remove(0);
    assert_eq!(
        stage_native(&f, &req()).unwrap_err().to_string(),
        format!("no UKI for version {NEW} in {UPDATES}")
    );
    let f = fake(true);
    f.state()
        .updates
        .push((format!("{OS}_{NEW}.usr-x86-64.raw"), MIB));
    assert!(matches!(
        stage_native(&f, &req()),
        Err(StageError::AmbiguousFile { .. })
    ));
    // Another release's or architecture's files are not taken for this one.
    let f = fake(true);
    f.state().updates = update_files(OLD)
        .into_iter()
        .chain(
            update_files(NEW)
                .into_iter()
                .map(|(n, s)| (n.replace("x86-64", "arm64"), s)),
        )
        .chain([(format!("{OS}_{NEW}.efi"), 10)])
        .collect();
    assert!(matches!(
        stage_native(&f, &req()),
        Err(StageError::MissingFile { .. })
    ));
    assert_eq!(f.calls(), vec![]);
}

#[test]
fn image_names_without_a_uuid_are_found_too() {
    let f = fake(true);
    f.state().updates = vec![
        (format!("{OS}_{NEW}.efi"), 10),
        (format!("{OS}_{NEW}.usr-x86-64.raw"), 10),
        (format!("{OS}_{NEW}.usr-x86-64-verity.raw"), 10),
        (
            format!("{OS}_{NEW}.usr-x86-64-verity-sig.01234567-89ab-cdef-0123-456789abcdef.raw"),
            10,
        ),
        // Not images: a partial download, a non-UUID infix.
        (format!("{OS}_{NEW}.usr-x86-64.raw.part"), 10),
        (format!("{OS}_{NEW}.usr-x86-64.old.raw"), 10),
    ];
    stage_native(&f, &req()).unwrap();
    assert!(f
        .calls()
        .contains(&Call::Write(7, format!("{OS}_{NEW}.usr-x86-64.raw"))));
}

#[test]
fn the_running_version_or_a_malformed_version_is_refused() {
    let f = fake(true);
    let mut r = req();
    r.version = RUN;
    assert_eq!(
        stage_native(&f, &r).unwrap_err().to_string(),
        format!("version {RUN} is the running version; nothing to stage")
    );
    for bad in ["2025020100", "../../../etc", "20250201000a"] {
        r.version = bad;
        assert_eq!(
            stage_native(&f, &r).unwrap_err(),
            StageError::BadVersion(bad.into())
        );
    }
    let mut r = req();
    r.os_name = "Incus/OS";
    assert!(matches!(stage_native(&f, &r), Err(StageError::BadName(_))));
    assert_eq!(f.calls(), vec![]);
}

#[test]
fn an_unreadable_esp_is_refused_before_the_slot_is_touched() {
    let f = fake(true);
    let mut r = req();
    r.esp = Path::new("/nonexistent");
    let err = stage_native(&f, &r).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("listing /nonexistent/EFI/Linux"),
        "{err}"
    );
    assert_eq!(f.calls(), vec![]);
}

#[test]
fn sysupdate_is_used_when_the_machine_has_it_and_native_staging_otherwise() {
    let f = fake(true);
    f.state().sysupdate = Some(PathBuf::from(SYSUPDATE));
    assert_eq!(
        stage(&f, &req()).unwrap(),
        Staged::Sysupdate {
            tool: PathBuf::from(SYSUPDATE)
        }
    );
    assert_eq!(f.calls(), vec![Call::Sysupdate(NEW.into())]);
    assert_eq!(labels(&f, [5, 6, 7]), release_labels(OLD));

    let f = fake(true);
    match stage(&f, &req()).unwrap() {
        Staged::Native(n) => assert_eq!(n.partitions, vec![5, 6, 7]),
        other => panic!("{other:?}"),
    }
    // Missing downloads stop both ways before anything runs.
    let f = fake(true);
    f.state().sysupdate = Some(PathBuf::from(SYSUPDATE));
    f.state().updates.clear();
    assert!(matches!(
        stage(&f, &req()),
        Err(StageError::MissingFile { .. })
    ));
    assert_eq!(f.calls(), vec![]);
}

#[test]
fn sysupdate_counts_as_present_only_with_a_transfer_definition() {
    let dir = tempfile::tempdir().unwrap();
    let tool = dir.path().join("systemd-sysupdate");
    let defs = dir.path().join("sysupdate.d");
    std::fs::create_dir(&defs).unwrap();
    assert_eq!(sysupdate_in(&tool, [defs.as_path()]), None);
    std::fs::write(&tool, "").unwrap();
    assert_eq!(sysupdate_in(&tool, [defs.as_path()]), None);
    std::fs::write(defs.join("README"), "").unwrap();
    assert_eq!(sysupdate_in(&tool, [defs.as_path()]), None);
    std::fs::write(defs.join("12-usr.transfer"), "").unwrap();
    assert_eq!(sysupdate_in(&tool, [defs.as_path()]), Some(tool.clone()));
}

#[test]
fn uki_names_are_parsed_with_and_without_boot_counters() {
    assert_eq!(
        uki_version("IncusOS_202501010000.efi", OS),
        Some("202501010000")
    );
    assert_eq!(
        uki_version("IncusOS_202501010000+3.efi", OS),
        Some("202501010000")
    );
    assert_eq!(
        uki_version("IncusOS_202501010000+1-2.efi", OS),
        Some("202501010000")
    );
    assert_eq!(uki_version("IncusOS_202501010000+x.efi", OS), None);
    assert_eq!(uki_version("IncusOSX_202501010000.efi", OS), None);
    assert_eq!(uki_version("IncusOS_.efi", OS), None);
    assert_eq!(uki_version("IncusOS_202501010000.efi.tmp", OS), None);
    assert_eq!(uki_name(OS, NEW), "IncusOS_202502010000+3-0.efi");
}

#[test]
fn sfdisk_json_is_read_into_byte_offsets_and_partition_numbers() {
    let out = br#"{
   "partitiontable": {
      "label": "gpt",
      "id": "A0B7EDBA-6250-9F4C-B9BD-8EB043E12C0F",
      "device": "/dev/nvme0n1",
      "unit": "sectors",
      "firstlba": 256,
      "lastlba": 131038,
      "sectorsize": 4096,
      "partitions": [
         {"node": "/dev/nvme0n1p1", "start": 256, "size": 4096,
          "type": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "uuid": "016E5F98-F3C5-B34B-973A-A23E152CCDF4", "name": "esp"},
         {"node": "/dev/nvme0n1p10", "start": 8192, "size": 100,
          "type": "8484680C-9521-48C6-9C11-B0720656F69E", "uuid": "CAE3899D-8F1A-314E-A236-798BD913416F",
          "name": "IncusOS_202501010000", "attrs": "GUID:60"},
         {"node": "/dev/nvme0n1p11", "start": 9000, "size": 100,
          "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4", "uuid": "CAE3899D-8F1A-314E-A236-798BD913416E"}
      ]
   }
}"#;
    let parts = parse_sfdisk_json(out).unwrap();
    assert_eq!(
        parts[1],
        Partition {
            number: 10,
            type_guid: "8484680c-9521-48c6-9c11-b0720656f69e".into(),
            label: "IncusOS_202501010000".into(),
            start: 8192 * 4096,
            size: 100 * 4096,
        }
    );
    assert_eq!(parts[0].number, 1);
    assert_eq!(parts[2].label, "");
    let dos = br#"{"partitiontable": {"label": "dos", "partitions": []}}"#;
    assert_eq!(
        parse_sfdisk_json(dos).unwrap_err(),
        "the partition table is dos, not gpt"
    );
}

#[test]
fn write_partition_puts_the_image_at_the_offset_zero_pads_and_leaves_the_rest() {
    // A regular file stands in for the disk device.
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::write(&disk, vec![0xAAu8; 64 * 1024]).unwrap();
    let image = dir.path().join("img");
    std::fs::write(&image, vec![0x55u8; 5000]).unwrap();
    let p = Partition {
        number: 2,
        type_guid: String::new(),
        label: String::new(),
        start: 8192,
        size: 16384,
    };
    let ops = SystemDisk::new(Arc::new(crate::platform::exec::Refused::new("no commands")));
    ops.write_partition(&disk, &p, &image).unwrap();
    let bytes = std::fs::read(&disk).unwrap();
    assert!(bytes[..8192].iter().all(|&b| b == 0xAA));
    assert!(bytes[8192..8192 + 5000].iter().all(|&b| b == 0x55));
    assert!(bytes[8192 + 5000..8192 + 16384].iter().all(|&b| b == 0));
    assert!(bytes[8192 + 16384..].iter().all(|&b| b == 0xAA));

    // A partition reaching past the device's end is refused without writing.
    let before = std::fs::read(&disk).unwrap();
    let past = Partition {
        start: 60 * 1024,
        ..p.clone()
    };
    let err = ops.write_partition(&disk, &past, &image).unwrap_err();
    assert!(err.contains("ends past the end"), "{err}");
    assert_eq!(std::fs::read(&disk).unwrap(), before);
}

#[test]
fn install_file_renames_into_place_and_leaves_no_temporary_copy() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.efi");
    std::fs::write(&src, b"uki").unwrap();
    let esp = dir.path().join("esp");
    std::fs::create_dir(&esp).unwrap();
    let ops = SystemDisk::new(Arc::new(crate::platform::exec::Refused::new("no commands")));
    ops.install_file(&src, &esp, ".a.tmp", "a+3-0.efi").unwrap();
    assert_eq!(ops.list_dir(&esp).unwrap(), vec!["a+3-0.efi".to_string()]);
    assert_eq!(std::fs::read(esp.join("a+3-0.efi")).unwrap(), b"uki");
    // A failed copy leaves no temporary file either.
    let err = ops
        .install_file(&dir.path().join("missing"), &esp, ".b.tmp", "b.efi")
        .unwrap_err();
    assert!(err.contains("missing"), "{err}");
    assert_eq!(ops.list_dir(&esp).unwrap(), vec!["a+3-0.efi".to_string()]);
    ops.remove_file(&esp, "a+3-0.efi").unwrap();
    ops.remove_file(&esp, "a+3-0.efi").unwrap();
    assert!(ops.list_dir(&esp).unwrap().is_empty());
}
