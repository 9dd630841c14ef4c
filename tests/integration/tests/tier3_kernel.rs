//! Tier 3: `PUT /1.0/system/kernel` in a container running the daemon on a real systemd.
//! The sysctl file the daemon writes is loaded by the real `systemd-sysctl` and the values
//! are read back from the container's `/proc/sys` (its own network namespace, so the `net.`
//! values are the container's), and `modprobe --showconfig` lists the blacklist. In a container `/proc/sys` is read-only outside `net.`, so
//! `systemd-sysctl.service` is skipped by its condition when the daemon restarts it; the
//! binary is run by hand on the file to load it, as it would at boot on the OS.

use incus_osd_integration::request;
use incus_osd_integration::tier3::{install_and_start, socket, Site};
use incus_osd_test_machine::tier3_or_return;
use serde_json::json;

/// The TPM libraries the daemon links against (not in the base tree yet), and kmod for
/// `modprobe --showconfig`.
const TSS: &[&str] = &[
    "kmod",
    "libtss2-esys-3.0.2-0",
    "libtss2-tctildr0",
    "libtss2-mu0",
    "libtss2-sys1",
];

#[tokio::test(flavor = "multi_thread")]
async fn the_sysctl_file_is_loaded_by_the_real_systemd_sysctl() {
    tier3_or_return!();
    let site = Site::new();
    let (site, m) = tokio::task::spawn_blocking(move || {
        let m = site.builder().packages(TSS).boot().expect("boot");
        (site, m)
    })
    .await
    .unwrap();
    install_and_start(&m).await;
    let sock = socket(&m);
    let read = |key: &str| {
        m.sh(&format!("cat /proc/sys/{key}"))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(read("net/ipv4/tcp_mtu_probing"), "0");

    let config = json!({"config": {
        "blacklist_modules": ["pcspkr"],
        "network": {"netdev_max_backlog": 4321, "tcp_mtu_probing": true, "buffer_size": 8388608}
    }});
    let (status, v) = request(&sock, "PUT", "/1.0/system/kernel", &config.to_string()).await;
    assert_eq!(status, 200, "{v}");
    let (_, v) = request(&sock, "GET", "/1.0/system/kernel", "").await;
    assert_eq!(v["metadata"]["config"], config["config"]);

    assert_eq!(
        m.sh("cat /etc/modprobe.d/99-blacklist-modules.conf")
            .unwrap(),
        "blacklist pcspkr\n"
    );
    // modprobe reads the blacklist file as configuration.
    let showconfig = m.run_ok(&["modprobe", "--showconfig"]).unwrap();
    assert!(
        showconfig.lines().any(|l| l == "blacklist pcspkr"),
        "{showconfig}"
    );
    // vm.nr_hugepages cannot be written in a container: systemd-sysctl says so and goes on.
    let _ = m.run(&[
        "/usr/lib/systemd/systemd-sysctl",
        "/etc/sysctl.d/99-local-sysctl.conf",
    ]);
    assert_eq!(read("net/ipv4/tcp_mtu_probing"), "1");
    assert_eq!(read("net/ipv4/tcp_rmem"), "4096\t65536\t8388608");
    drop(site);
}
