//! `GET|PUT /1.0/system/kernel` through the router, over a fake sysfs/procfs under the test
//! root, scripted commands and a fake systemd: the files written, the kernel values set,
//! refusals that touch nothing, and rollback of files and kernel values when a later step
//! fails.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use http_body_util::BodyExt;
use incus_osd::api::App;
use incus_osd::testing::{fake_file, fake_link, RecordingSystemd, Script, TestApp};
use serde_json::{json, Value};
use tower::ServiceExt;

const BLACKLIST: &str = "etc/modprobe.d/99-blacklist-modules.conf";
const SYSCTL: &str = "etc/sysctl.d/99-local-sysctl.conf";
const PASSTHROUGH: &str = "etc/modprobe.d/99-local-device-passthrough.conf";
const NIC: &str = "sys/bus/pci/devices/0000:03:00.0";
const GPU: &str = "sys/bus/pci/devices/0000:01:00.0";

struct Setup {
    r: Router,
    app: Arc<App>,
    script: Script,
    systemd: Arc<RecordingSystemd>,
    dir: tempfile::TempDir,
}

impl Setup {
    fn root(&self) -> &Path {
        self.dir.path()
    }
    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.root().join(rel)).unwrap_or_else(|_| "<none>".into())
    }
}

/// Two CPUs with cpufreq, a NIC with SR-IOV (up to 8, 2 now), a GPU bound to `nouveau`,
/// vfio-pci, the available congestion controls, and every command answering.
fn setup() -> Setup {
    let script = Script::default();
    for cmd in [
        "/sbin/rmmod",
        "modprobe",
        "zramctl",
        "mkswap",
        "swapon",
        "swapoff",
    ] {
        script.on(cmd, 0, "", "");
    }
    let systemd = Arc::new(RecordingSystemd::new(true));
    let (r, app, dir) = TestApp::new()
        .commands(Arc::new(script.clone()))
        .systemd(systemd.clone())
        .router();
    let root = dir.path();
    for cpu in ["cpu0", "cpu1"] {
        let d = format!("sys/devices/system/cpu/{cpu}/cpufreq");
        fake_file(
            root,
            &format!("{d}/scaling_available_governors"),
            "performance powersave\n",
        );
        fake_file(root, &format!("{d}/scaling_governor"), "powersave\n");
    }
    fake_file(root, "sys/devices/system/cpu/online", "0-1\n");
    fake_file(root, &format!("{NIC}/sriov_totalvfs"), "8\n");
    fake_file(root, &format!("{NIC}/sriov_numvfs"), "2\n");
    fake_file(root, &format!("{GPU}/vendor"), "0x10de\n");
    fake_file(root, "sys/bus/pci/drivers/nouveau/unbind", "");
    fake_file(root, "sys/bus/pci/drivers/nouveau/bind", "");
    fake_link(root, &format!("{GPU}/driver"), "../../drivers/nouveau");
    fake_file(root, "sys/bus/pci/drivers/vfio-pci/new_id", "");
    fake_file(root, "sys/bus/pci/drivers/vfio-pci/remove_id", "");
    fake_file(
        root,
        "proc/sys/net/ipv4/tcp_available_congestion_control",
        "reno cubic bbr\n",
    );
    fake_file(root, "proc/swaps", "Filename Type Size Used Priority\n");
    Setup {
        r,
        app,
        script,
        systemd,
        dir,
    }
}

async fn call(r: &Router, method: &str, body: String) -> (u16, Value) {
    let req = Request::builder()
        .method(method)
        .uri("/1.0/system/kernel")
        .body(Body::from(body))
        .unwrap();
    let resp = r.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn full() -> Value {
    json!({
        "blacklist_modules": ["nouveau", "pcspkr"],
        "cpu": {"scaling_governor": "performance"},
        "memory": {"persistent_hugepages": 64, "zram_swap_size": "1GiB"},
        "network": {"buffer_size": 33554432, "tcp_congestion_algorithm": "bbr", "tcp_mtu_probing": true},
        "pci": {
            "passthrough": [{"vendor_id": "10de", "product_id": "1eb8", "pci_address": "0000:01:00.0"}],
            "sriov": [{"pci_address": "0000:03:00.0", "vf_count": 4}]
        }
    })
}

#[tokio::test]
async fn get_shows_an_empty_config_and_zram_statistics_from_sysfs() {
    let s = setup();
    let (status, v) = call(&s.r, "GET", String::new()).await;
    assert_eq!(status, 200);
    assert_eq!(v["metadata"], json!({"config": {}, "state": {}}));

    fake_file(s.root(), "sys/block/zram0/disksize", "1073741824\n");
    fake_file(
        s.root(),
        "sys/block/zram0/mm_stat",
        "4194304 1048576 2097152 0 2097152 0 0 0 0\n",
    );
    let (_, v) = call(&s.r, "GET", String::new()).await;
    assert_eq!(
        v["metadata"]["state"],
        json!({"memory": {"zram_swap": {
            "disk_size": 1073741824u64,
            "incompressed_size": 4194304,
            "compressed_size": 1048576,
            "compression_ratio": 2.0,
            "total_memory_use": 2097152
        }}})
    );
}

#[tokio::test]
async fn put_writes_the_files_and_kernel_values_and_stores_the_config() {
    let s = setup();
    let (status, v) = call(&s.r, "PUT", json!({ "config": full() }).to_string()).await;
    assert_eq!(status, 200, "{v}");

    assert_eq!(s.read(BLACKLIST), "blacklist nouveau\nblacklist pcspkr\n");
    assert_eq!(
        s.read(SYSCTL),
        "vm.nr_hugepages = 64\n\
         net.ipv4.tcp_rmem = 4096 65536 33554432\nnet.ipv4.tcp_wmem = 4096 65536 33554432\n\
         net.core.rmem_max = 33554432\nnet.core.wmem_max = 33554432\n\
         net.core.netdev_max_backlog = 1000\nnet.ipv4.tcp_mtu_probing = 1\n\
         net.ipv4.tcp_congestion_control = bbr\n"
    );
    assert_eq!(s.read(PASSTHROUGH), "options vfio-pci ids=10de:1eb8\n");
    assert_eq!(s.systemd.jobs(), ["restart systemd-sysctl.service"]);
    // The GPU was unbound from its driver and its IDs given to vfio-pci.
    assert_eq!(
        s.read("sys/bus/pci/drivers/nouveau/unbind"),
        "0000:01:00.0\n"
    );
    assert_eq!(s.read("sys/bus/pci/drivers/vfio-pci/new_id"), "10de 1eb8\n");
    assert_eq!(s.read(&format!("{NIC}/sriov_numvfs")), "4\n");
    for cpu in ["cpu0", "cpu1"] {
        assert_eq!(
            s.read(&format!(
                "sys/devices/system/cpu/{cpu}/cpufreq/scaling_governor"
            )),
            "performance\n"
        );
    }
    assert_eq!(
        s.script.calls(),
        [
            "/sbin/rmmod nouveau",
            "/sbin/rmmod pcspkr",
            "modprobe zram",
            "zramctl --find",
            "zramctl /dev/zram0 --algorithm zstd --size 1073741824",
            "mkswap /dev/zram0",
            "swapon --priority 100 /dev/zram0",
        ]
    );

    let (_, v) = call(&s.r, "GET", String::new()).await;
    assert_eq!(v["metadata"]["config"], full());
    let stored = s.app.with_state(|st| st.doc().system.kernel.clone());
    assert_eq!(serde_json::to_value(stored).unwrap(), full());

    // An empty config removes the files and brings back the kernel's defaults.
    let (status, _) = call(&s.r, "PUT", json!({"config": {}}).to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(s.read(BLACKLIST), "<none>");
    assert_eq!(s.read(PASSTHROUGH), "<none>");
    assert_eq!(
        s.read(SYSCTL),
        "vm.nr_hugepages = 0\nnet.core.netdev_max_backlog = 1000\nnet.ipv4.tcp_mtu_probing = 0\n"
    );
}

#[tokio::test]
async fn bad_values_are_refused_with_upstreams_texts_and_touch_nothing() {
    let s = setup();
    fake_file(
        s.root(),
        "sys/bus/pci/devices/0000:05:00.0/vendor",
        "0x8086\n",
    );
    let cases = [
        (
            json!({"pci": {"sriov": [{"pci_address": "0000:03:00.0", "vf_count": -1}]}}),
            "SR-IOV virtual function count cannot be negative",
        ),
        (
            json!({"pci": {"sriov": [{"pci_address": "0000:09:00.0", "vf_count": 1}]}}),
            "PCI device \"0000:09:00.0\" not found",
        ),
        (
            json!({"pci": {"sriov": [{"pci_address": "0000:05:00.0", "vf_count": 1}]}}),
            "PCI device \"0000:05:00.0\" doesn't support SR-IOV",
        ),
        (
            json!({"pci": {"sriov": [{"pci_address": "0000:03:00.0", "vf_count": 9}]}}),
            "PCI device \"0000:03:00.0\" supports at most 8 SR-IOV virtual functions",
        ),
        (
            json!({"cpu": {"scaling_governor": "turbo"}}),
            "unsupported scaling governor, must be one of [performance powersave]",
        ),
        (
            json!({"memory": {"persistent_hugepages": -1}}),
            "persistent hugepages count cannot be negative",
        ),
        (
            json!({"network": {"buffer_size": -5}}),
            "buffer size cannot be negative",
        ),
        (
            json!({"network": {"netdev_max_backlog": -5}}),
            "netdev max backlog cannot be negative",
        ),
        (
            json!({"network": {"tcp_congestion_algorithm": "vegas"}}),
            "unsupported tcp_congestion_control value, must be one of [reno cubic bbr]",
        ),
        (
            json!({"pci": {"passthrough": [{"vendor_id": "10dx", "product_id": "1"}]}}),
            "Vendor ID '10dx' is invalid",
        ),
        (
            json!({"pci": {"passthrough": [{"vendor_id": "10de", "product_id": ""}]}}),
            "Product ID '' is invalid",
        ),
        (
            json!({"memory": {"zram_swap_size": "lots"}}),
            "invalid zram swap size 'lots'",
        ),
    ];
    for (config, text) in cases {
        let (status, v) = call(&s.r, "PUT", json!({ "config": config }).to_string()).await;
        assert_eq!((status, v["error"].as_str().unwrap()), (400, text));
    }
    assert!(s.script.calls().is_empty());
    assert!(s.systemd.jobs().is_empty());
    assert!(!s.root().join("etc/sysctl.d").exists());
    assert!(!s.root().join("etc/modprobe.d").exists());
    assert_eq!(s.read(&format!("{NIC}/sriov_numvfs")), "2\n");

    // Without cpufreq, a governor cannot be set at all.
    std::fs::remove_dir_all(s.root().join("sys/devices/system/cpu/cpu0/cpufreq")).unwrap();
    let body = json!({"config": {"cpu": {"scaling_governor": "performance"}}});
    let (status, v) = call(&s.r, "PUT", body.to_string()).await;
    assert_eq!(
        (status, v["error"].as_str().unwrap()),
        (400, "CPU frequency scaling isn't available on this system")
    );
}

#[tokio::test]
async fn a_failing_step_puts_back_the_files_and_kernel_values() {
    let s = setup();
    fake_file(s.root(), SYSCTL, "vm.nr_hugepages = 8\n");
    // Swap cannot be formatted: after the files, the passthrough and SR-IOV.
    s.script.set("mkswap", 1, "", "mkswap: error");
    let (status, v) = call(&s.r, "PUT", json!({ "config": full() }).to_string()).await;
    assert_eq!(status, 500, "{v}");
    assert!(v["error"].as_str().unwrap().contains("mkswap"), "{v}");

    assert_eq!(s.read(SYSCTL), "vm.nr_hugepages = 8\n");
    assert_eq!(s.read(BLACKLIST), "<none>");
    assert_eq!(s.read(PASSTHROUGH), "<none>");
    // The virtual functions are back to 2 (through 0), the GPU bound back to its driver
    // and its IDs taken from vfio-pci.
    assert_eq!(s.read(&format!("{NIC}/sriov_numvfs")), "2\n");
    assert_eq!(s.read("sys/bus/pci/drivers/nouveau/bind"), "0000:01:00.0\n");
    assert_eq!(
        s.read("sys/bus/pci/drivers/vfio-pci/remove_id"),
        "10de 1eb8\n"
    );
    // systemd-sysctl ran again over the old file.
    assert_eq!(
        s.systemd.jobs(),
        [
            "restart systemd-sysctl.service",
            "restart systemd-sysctl.service"
        ]
    );
    let (_, v) = call(&s.r, "GET", String::new()).await;
    assert_eq!(v["metadata"]["config"], json!({}));
}

#[tokio::test]
async fn a_governor_that_cannot_be_written_puts_back_the_cpus_already_changed() {
    let s = setup();
    // cpu1's governor file cannot be written (a directory stands in its place).
    let f = s
        .root()
        .join("sys/devices/system/cpu/cpu1/cpufreq/scaling_governor");
    std::fs::remove_file(&f).unwrap();
    std::fs::create_dir(&f).unwrap();
    let body = json!({"config": {"cpu": {"scaling_governor": "performance"}}});
    let (status, v) = call(&s.r, "PUT", body.to_string()).await;
    assert_eq!(status, 500, "{v}");
    assert_eq!(
        s.read("sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "powersave\n"
    );
    assert_eq!(s.read(SYSCTL), "<none>");
}

#[tokio::test]
async fn offline_the_change_is_refused_before_anything_is_touched() {
    let (r, _app, dir) = TestApp::new().router();
    let (status, v) = call(&r, "PUT", json!({"config": {}}).to_string()).await;
    assert_eq!(status, 503, "{v}");
    assert!(!dir.path().join("etc/sysctl.d").exists());
}
