//! Seeds through the daemon as built (tier 2): the seed archive on partition 2 of the
//! install disk (a file under the root prefix) is read at start; on the first start the
//! `update` seed is stored, a bad seed is logged naming its file and field and skipped, and
//! the daemon serves as usual. A second start (no longer the first) does not apply them
//! again.

use incus_osd::system::seed;
use incus_osd_integration::{get_ok, request, Daemon, Root};

fn write_seeds(root: &Root, files: &[(&str, &str)]) {
    let files: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(n, c)| (n.to_string(), c.as_bytes().to_vec()))
        .collect();
    let path = root.path().join("dev/sda2");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut data = seed::build_archive(&files).unwrap();
    data.resize(1 << 20, 0);
    std::fs::write(path, data).unwrap();
}

#[tokio::test]
async fn the_first_start_applies_good_seeds_and_logs_bad_ones() {
    let root = Root::new();
    write_seeds(
        &root,
        &[
            ("update.yaml", "version: \"1\"\ncheck_frequency: 12h\n"),
            ("services.json", r#"{"ceph": {"enabled": true}}"#),
        ],
    );
    let mut d = Daemon::start(&root, &["--install-disk", "/dev/sda"]);
    let update = get_ok(&d.socket, "/1.0/system/update").await;
    assert_eq!(update["config"]["check_frequency"], "12h", "{update}");
    let log = d.log();
    assert!(log.contains("seeds found"), "{log}");
    assert!(
        log.contains("seed 'services' (services.json): unknown field 'ceph'"),
        "{log}"
    );
    // The daemon serves as usual.
    let (status, _) = request(&d.socket, "GET", "/1.0/system", "").await;
    assert_eq!(status, 200);
    d.terminate();

    // Not the first start any more (it booted successfully): a changed seed is not taken.
    write_seeds(&root, &[("update.yaml", "check_frequency: 6h\n")]);
    let mut d = Daemon::start(&root, &["--install-disk", "/dev/sda"]);
    let update = get_ok(&d.socket, "/1.0/system/update").await;
    assert_eq!(update["config"]["check_frequency"], "12h", "{update}");
    d.terminate();
}
