//! `GET /1.0/system/resources` (tier 1): each reader against a sysfs/procfs tree built here,
//! the real machine's `/proc` and `/sys` against facts checked independently, and the
//! endpoint through the router.

use std::path::Path;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use incus_osd::platform::kernel::KernelFiles;
use incus_osd::system::resources::{self, IdDatabase};
use incus_osd::testing::TestApp;
use serde_json::{json, Value};
use tower::ServiceExt;

fn w(root: &Path, rel: &str, data: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn link(root: &Path, rel: &str, target: &Path) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, p).unwrap();
}

fn v<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap()
}

/// Two sockets of two cores of two threads: cpu0-3 on socket 0 (NUMA node 0), cpu4-7 on
/// socket 1 (node 1); cpu5 isolated, cpu7 offline.
fn cpu_tree(root: &Path) {
    let mut cpuinfo = String::new();
    for id in 0..8u32 {
        let dir = format!("sys/devices/system/cpu/cpu{id}");
        let socket = id / 4;
        w(
            root,
            &format!("{dir}/topology/physical_package_id"),
            &format!("{socket}\n"),
        );
        w(
            root,
            &format!("{dir}/topology/core_id"),
            &format!("{}\n", (id % 4) / 2),
        );
        w(root, &format!("{dir}/topology/die_id"), "0\n");
        w(root, &format!("{dir}/node{socket}/.keep"), "");
        if id > 0 {
            w(
                root,
                &format!("{dir}/online"),
                if id == 7 { "0\n" } else { "1\n" },
            );
        }
        w(
            root,
            &format!("{dir}/cpufreq/scaling_cur_freq"),
            &format!("{}\n", 2_000_000 + socket * 1_000_000),
        );
        w(root, &format!("{dir}/cpufreq/cpuinfo_min_freq"), "800000\n");
        for (i, level, kind, size) in [
            (0, 1, "Data", "48K"),
            (1, 1, "Instruction", "32K"),
            (2, 2, "Unified", "1280K"),
            (3, 3, "Unified", "12288K"),
        ] {
            let c = format!("{dir}/cache/index{i}");
            w(root, &format!("{c}/level"), &format!("{level}\n"));
            w(root, &format!("{c}/type"), &format!("{kind}\n"));
            w(root, &format!("{c}/size"), &format!("{size}\n"));
        }
        w(
            root,
            &format!("{dir}/cpufreq/cpuinfo_max_freq"),
            "3500000\n",
        );
        cpuinfo.push_str(&format!(
            "processor\t: {id}\nvendor_id\t: GenuineIntel\nmodel name\t: Test CPU {socket}\ncpu MHz\t\t: 1234.5\naddress sizes\t: 39 bits physical, 48 bits virtual\nflags\t\t: fpu sse2 hypervisor\n\n"
        ));
    }
    w(root, "sys/devices/system/cpu/isolated", "5\n");
    w(root, "sys/devices/system/cpu/online", "0-6\n");
    w(root, "sys/devices/system/cpu/cpufreq/.keep", "");
    w(root, "proc/cpuinfo", &cpuinfo);
}

#[test]
fn cpu_reads_sockets_cores_threads_frequencies_and_numa() {
    let d = tempfile::tempdir().unwrap();
    cpu_tree(d.path());
    let cpu = v(&resources::cpu(&KernelFiles::under(d.path())));
    assert_eq!(cpu["architecture"], std::env::consts::ARCH);
    assert_eq!(cpu["total"], 8);
    let sockets = cpu["sockets"].as_array().unwrap();
    assert_eq!(sockets.len(), 2);
    let s1 = &sockets[1];
    assert_eq!(s1["socket"], 1);
    assert_eq!(s1["name"], "Test CPU 1");
    assert_eq!(s1["vendor"], "GenuineIntel");
    assert_eq!(s1["frequency"], 3000);
    assert_eq!(s1["frequency_minimum"], 800);
    assert_eq!(s1["frequency_turbo"], 3500);
    assert_eq!(sockets[0]["frequency"], 2000);
    assert_eq!(
        s1["address_sizes"],
        json!({"physical_bits": 39, "virtual_bits": 48})
    );
    assert_eq!(
        s1["cache"],
        json!([
            {"level": 1, "type": "Data", "size": 48 * 1024},
            {"level": 1, "type": "Instruction", "size": 32 * 1024},
            {"level": 2, "type": "Unified", "size": 1280 * 1024},
            {"level": 3, "type": "Unified", "size": 12288 * 1024}
        ])
    );
    assert_eq!(
        s1["cores"][0],
        json!({
            "core": 0, "cluster": 0, "die": 0, "frequency": 3000,
            "flags": ["fpu", "sse2", "hypervisor"],
            "threads": [
                {"id": 4, "numa_node": 1, "thread": 0, "online": true, "isolated": false},
                {"id": 5, "numa_node": 1, "thread": 1, "online": true, "isolated": true}
            ]
        })
    );
    assert_eq!(s1["cores"][1]["threads"][1]["id"], 7);
    assert_eq!(s1["cores"][1]["threads"][1]["online"], false);
    assert_eq!(sockets[0]["cores"][0]["threads"][0]["numa_node"], 0);
}

#[test]
fn memory_reads_meminfo_hugepages_and_numa_nodes() {
    let d = tempfile::tempdir().unwrap();
    w(
        d.path(),
        "proc/meminfo",
        "MemTotal:       16384000 kB\nMemFree:         8000000 kB\nMemAvailable:   12000000 kB\n\
         Buffers:          100000 kB\nCached:          2000000 kB\nSwapCached:            0 kB\n\
         HugePages_Total:       4\nHugePages_Free:        1\nHugepagesize:       2048 kB\n",
    );
    w(
        d.path(),
        "sys/devices/system/node/node0/meminfo",
        "Node 0 MemTotal:       8192000 kB\nNode 0 MemFree:        4192000 kB\n\
         Node 0 MemUsed:        4000000 kB\nNode 0 HugePages_Total:     2\nNode 0 HugePages_Free:      1\n",
    );
    w(d.path(), "sys/devices/system/node/possible", "0\n");
    let m = v(&resources::memory(&KernelFiles::under(d.path())));
    let page = 2048 * 1024u64;
    assert_eq!(
        m,
        json!({
            "nodes": [{
                "numa_node": 0, "hugepages_used": page, "hugepages_total": 2 * page,
                "used": 4_000_000u64 * 1024, "total": 8_192_000u64 * 1024
            }],
            "hugepages_total": 4 * page,
            "hugepages_used": 3 * page,
            "hugepages_size": page,
            "used": (16_384_000u64 - 8_000_000 - 100_000 - 2_000_000) * 1024,
            "total": 16_384_000u64 * 1024
        })
    );
    // No meminfo at all: zeros, and no nodes key (Incus omits it when empty).
    let e = tempfile::tempdir().unwrap();
    let m = v(&resources::memory(&KernelFiles::under(e.path())));
    assert_eq!(m["total"], 0);
    assert!(m.get("nodes").is_none(), "{m}");
}

const PCI_IDS: &str = "# comment\n8086  Intel Corporation\n\t100e  82540EM Gigabit Ethernet Controller\n\t\t8086 001e  PRO/1000 MT\n\
                       1af4  Red Hat, Inc.\nC 02  Network controller\n\t00  Ethernet controller\n";

/// A PCI NIC (eth0, 0000:00:03.0) and a display controller (0000:00:02.0), plus `lo`.
fn pci_tree(root: &Path) {
    let nic = "sys/devices/pci0000:00/0000:00:03.0";
    w(root, &format!("{nic}/vendor"), "0x8086\n");
    w(root, &format!("{nic}/device"), "0x100e\n");
    w(root, &format!("{nic}/class"), "0x020000\n");
    w(root, &format!("{nic}/numa_node"), "-1\n");
    w(
        root,
        "sys/bus/pci/drivers/e1000/module/version",
        "7.3.21-k8-NAPI\n",
    );
    link(
        root,
        &format!("{nic}/driver"),
        &root.join("sys/bus/pci/drivers/e1000"),
    );
    link(
        root,
        &format!("{nic}/subsystem"),
        Path::new("../../../bus/pci"),
    );
    link(
        root,
        &format!("{nic}/iommu_group"),
        Path::new("../../../kernel/iommu_groups/7"),
    );
    let gpu = "sys/devices/pci0000:00/0000:00:02.0";
    w(root, &format!("{gpu}/vendor"), "0x1234\n");
    w(root, &format!("{gpu}/device"), "0x1111\n");
    w(root, &format!("{gpu}/class"), "0x030000\n");
    w(root, &format!("{gpu}/numa_node"), "1\n");
    for (addr, dev) in [("0000:00:02.0", gpu), ("0000:00:03.0", nic)] {
        link(
            root,
            &format!("sys/bus/pci/devices/{addr}"),
            &root.join(dev),
        );
    }
    let net = "sys/devices/pci0000:00/0000:00:03.0/net/eth0";
    w(root, &format!("{net}/address"), "52:54:00:12:34:56\n");
    w(root, &format!("{net}/carrier"), "1\n");
    w(root, &format!("{net}/speed"), "1000\n");
    w(root, &format!("{net}/duplex"), "full\n");
    w(root, &format!("{net}/type"), "1\n");
    w(root, &format!("{net}/dev_port"), "0\n");
    link(root, &format!("{net}/device"), &root.join(nic));
    link(root, "sys/class/net/eth0", &root.join(net));
    w(
        root,
        "sys/devices/virtual/net/lo/address",
        "00:00:00:00:00:00\n",
    );
    link(
        root,
        "sys/class/net/lo",
        &root.join("sys/devices/virtual/net/lo"),
    );
    // A virtio NIC (eth1): its device is virtio1 on the virtio bus, under 0000:00:04.0.
    let vpci = "sys/devices/pci0000:00/0000:00:04.0";
    w(root, &format!("{vpci}/vendor"), "0x1af4\n");
    w(root, &format!("{vpci}/device"), "0x1000\n");
    w(root, &format!("{vpci}/class"), "0x020000\n");
    link(
        root,
        &format!("{vpci}/subsystem"),
        &root.join("sys/bus/pci"),
    );
    w(root, &format!("{vpci}/virtio1/vendor"), "0x1af4\n");
    w(root, &format!("{vpci}/virtio1/device"), "0x0001\n");
    link(
        root,
        &format!("{vpci}/virtio1/subsystem"),
        &root.join("sys/bus/virtio"),
    );
    link(
        root,
        &format!("{vpci}/virtio1/driver"),
        &root.join("sys/bus/virtio/drivers/virtio_net"),
    );
    let net1 = format!("{vpci}/virtio1/net/eth1");
    w(root, &format!("{net1}/address"), "52:54:00:00:00:02\n");
    w(root, &format!("{net1}/carrier"), "0\n");
    link(
        root,
        &format!("{net1}/device"),
        &root.join(format!("{vpci}/virtio1")),
    );
    link(root, "sys/class/net/eth1", &root.join(&net1));
    w(root, "usr/share/hwdata/pci.ids", PCI_IDS);
}

#[test]
fn network_cards_are_devices_with_their_pci_ids_named_and_interfaces_as_ports() {
    let d = tempfile::tempdir().unwrap();
    pci_tree(d.path());
    let ids = IdDatabase::load(d.path(), "pci.ids");
    let n = v(&resources::network(&KernelFiles::under(d.path()), &ids));
    assert_eq!(
        n,
        json!({
            "cards": [{
                "driver": "e1000",
                "driver_version": "7.3.21-k8-NAPI",
                "numa_node": 0,
                "pci_address": "0000:00:03.0",
                "vendor": "Intel Corporation",
                "vendor_id": "8086",
                "product": "82540EM Gigabit Ethernet Controller",
                "product_id": "100e",
                "ports": [{
                    "id": "eth0", "address": "52:54:00:12:34:56", "port": 0,
                    "protocol": "ethernet", "auto_negotiation": false,
                    "link_detected": true, "link_speed": 1000, "link_duplex": "full"
                }]
            }, {
                "driver": "virtio_net",
                "numa_node": 0,
                "pci_address": "0000:00:04.0",
                "vendor": "Red Hat, Inc.",
                "vendor_id": "1af4",
                "product_id": "1000",
                "ports": [{
                    "id": "eth1", "address": "52:54:00:00:00:02", "port": 0,
                    "protocol": "ethernet", "auto_negotiation": false, "link_detected": false
                }]
            }],
            "total": 2
        })
    );
    // Without the database the ids stay and the names are left out.
    let n = v(&resources::network(
        &KernelFiles::under(d.path()),
        &IdDatabase::default(),
    ));
    assert_eq!(n["cards"][0]["vendor_id"], "8086");
    assert!(n["cards"][0].get("vendor").is_none(), "{n}");
}

#[test]
fn pci_devices_and_gpus_come_from_the_pci_bus() {
    let d = tempfile::tempdir().unwrap();
    pci_tree(d.path());
    let k = KernelFiles::under(d.path());
    let ids = IdDatabase::parse(PCI_IDS);
    let p = v(&resources::pci(&k, &ids));
    assert_eq!(p["total"], 2);
    assert_eq!(
        p["devices"][1],
        json!({
            "driver": "e1000", "driver_version": "7.3.21-k8-NAPI", "numa_node": 0,
            "pci_address": "0000:00:03.0", "vendor": "Intel Corporation", "vendor_id": "8086",
            "product": "82540EM Gigabit Ethernet Controller", "product_id": "100e",
            "iommu_group": 7, "vpd": {}
        })
    );
    let g = v(&resources::gpu(&k, &ids));
    assert_eq!(
        g,
        json!({
            "cards": [{"numa_node": 1, "pci_address": "0000:00:02.0", "vendor_id": "1234", "product_id": "1111"}],
            "total": 1
        })
    );
}

#[test]
fn usb_devices_with_their_interfaces_and_usb_ids_names() {
    let d = tempfile::tempdir().unwrap();
    let base = "sys/bus/usb/devices";
    for (f, val) in [
        ("idVendor", "046d"),
        ("idProduct", "c52b"),
        ("busnum", "1"),
        ("devnum", "3"),
        ("speed", "12"),
        ("serial", "ABC123"),
    ] {
        w(d.path(), &format!("{base}/1-1/{f}"), &format!("{val}\n"));
    }
    w(d.path(), &format!("{base}/1-1:1.0/bInterfaceClass"), "03\n");
    w(
        d.path(),
        &format!("{base}/1-1:1.0/bInterfaceSubClass"),
        "01\n",
    );
    w(
        d.path(),
        &format!("{base}/1-1:1.0/bInterfaceNumber"),
        "00\n",
    );
    link(
        d.path(),
        &format!("{base}/1-1:1.0/driver"),
        Path::new("../../bus/usb/drivers/usbhid"),
    );
    w(
        d.path(),
        "usr/share/misc/usb.ids",
        "046d  Logitech, Inc.\n\tc52b  Unifying Receiver\n\nAT 0401  Something else\n\
         C 03  Human Interface Device\n\t01  Boot Interface Subclass\n\t\t02  Mouse\nHID 00  Undefined\n\t01  Not a subclass\n",
    );
    let ids = IdDatabase::load(d.path(), "usb.ids");
    let u = v(&resources::usb(&KernelFiles::under(d.path()), &ids));
    assert_eq!(
        u,
        json!({
            "devices": [{
                "bus_address": 1, "device_address": 3, "serial": "ABC123",
                "interfaces": [{
                    "class": "Human Interface Device", "class_id": 3, "driver": "usbhid",
                    "driver_version": "", "number": 0, "subclass": "Boot Interface Subclass",
                    "subclass_id": 1
                }],
                "vendor": "Logitech, Inc.", "vendor_id": "046d",
                "product": "Unifying Receiver", "product_id": "c52b", "speed": 12.0
            }],
            "total": 1
        })
    );
}

#[test]
fn storage_lists_hardware_disks_with_their_partitions_and_skips_virtual_ones() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    for (f, val) in [
        ("dev", "8:0"),
        ("size", "2097152"),
        ("ro", "0"),
        ("removable", "0"),
        ("wwid", "naa.5000c500a1b2c3d4"),
        ("queue/rotational", "1"),
        ("queue/logical_block_size", "512"),
        ("device/model", "TESTDISK"),
        ("device/rev", "1.0"),
        ("device/type", "0"),
        ("sda1/partition", "1"),
        ("sda1/dev", "8:1"),
        ("sda1/size", "2048"),
        ("sda1/ro", "0"),
        ("sda2/partition", "2"),
        ("sda2/dev", "8:2"),
        ("sda2/size", "4096"),
        ("sda2/ro", "1"),
    ] {
        w(r, &format!("sys/block/sda/{f}"), &format!("{val}\n"));
    }
    link(
        r,
        "sys/block/sda/device/subsystem",
        Path::new("../../../bus/scsi"),
    );
    w(r, "sys/block/sda/queue/scheduler", "none\n");
    // A loop device has no `device`: not a disk.
    w(r, "sys/block/loop0/size", "100\n");
    w(r, "sys/block/loop0/dev", "7:0\n");
    link(r, "dev/disk/by-id/ata-TESTDISK_SN1", Path::new("../../sda"));
    link(
        r,
        "dev/disk/by-id/wwn-0x5000c500a1b2c3d4",
        Path::new("../../sda"),
    );
    link(
        r,
        "dev/disk/by-id/ata-TESTDISK_SN1-part1",
        Path::new("../../sda1"),
    );
    link(
        r,
        "dev/disk/by-path/pci-0000:00:1f.2-ata-1",
        Path::new("../../sda"),
    );
    let s = v(&resources::storage(&KernelFiles::under(r), r));
    assert_eq!(
        s,
        json!({
            "disks": [{
                "id": "sda", "device": "8:0", "model": "TESTDISK", "type": "scsi",
                "read_only": false, "size": 2097152u64 * 512, "removable": false,
                "wwn": "naa.5000c500a1b2c3d4", "numa_node": 0, "block_size": 512,
                "firmware_version": "1.0", "rpm": 1,
                "device_id": "wwn-0x5000c500a1b2c3d4", "device_path": "pci-0000:00:1f.2-ata-1",
                "partitions": [
                    {"id": "sda1", "device": "8:1", "read_only": false, "size": 2048 * 512, "partition": 1},
                    {"id": "sda2", "device": "8:2", "read_only": true, "size": 4096 * 512, "partition": 2}
                ]
            }],
            "total": 1
        })
    );
}

#[test]
fn system_reads_dmi_and_load_reads_loadavg() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    for (f, val) in [
        ("sys_vendor", "ACME"),
        ("product_name", "Server 9000"),
        ("product_uuid", "4c4c4544-0042-3510-8052-b4c04f4e3232"),
        ("product_serial", "SN42"),
        ("product_version", "1.2"),
        ("bios_vendor", "ACME BIOS"),
        ("bios_date", "01/02/2024"),
        ("bios_version", "2.3.4"),
        ("chassis_type", "17"),
        ("chassis_vendor", "ACME"),
        ("board_vendor", "ACME Boards"),
        ("board_name", "MB-1"),
    ] {
        w(r, &format!("sys/class/dmi/id/{f}"), &format!("{val}\n"));
    }
    let k = KernelFiles::under(r);
    assert_eq!(
        v(&resources::system(&k, "flags\t: fpu hypervisor\n")),
        json!({
            "uuid": "4c4c4544-0042-3510-8052-b4c04f4e3232", "vendor": "ACME",
            "product": "Server 9000", "family": "", "version": "1.2", "sku": "",
            "serial": "SN42", "type": "virtual-machine",
            "firmware": {"vendor": "ACME BIOS", "date": "01/02/2024", "version": "2.3.4"},
            "chassis": {"vendor": "ACME", "type": "Main Server Chassis", "serial": "", "version": ""},
            "motherboard": {"vendor": "ACME Boards", "product": "MB-1", "serial": "", "version": ""}
        })
    );
    assert_eq!(
        v(&resources::system(&k, "flags\t: fpu\n"))["type"],
        "physical"
    );
    w(r, "proc/loadavg", "0.50 1.25 2.00 3/412 9999\n");
    for pid in ["1", "42", "9999"] {
        w(r, &format!("proc/{pid}/stat"), "");
    }
    w(r, "proc/self/stat", "");
    assert_eq!(
        v(&resources::load(&k)),
        json!({"Average1Min": 0.5, "Average5Min": 1.25, "Average10Min": 2.0, "Processes": 3})
    );
}

/// `0-3,6` → 5.
fn count_list(text: &str) -> u64 {
    text.trim()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('-') {
            Some((a, b)) => b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

#[test]
fn this_machines_resources_agree_with_its_proc_and_sys() {
    let r = resources::get(&KernelFiles::host(), Path::new("/")).unwrap();
    // Threads: one per cpuN directory; the online ones are the kernel's online list.
    let cpu_dirs = std::fs::read_dir("/sys/devices/system/cpu")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix("cpu")
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        })
        .count() as u64;
    assert_eq!(r.cpu.total, cpu_dirs);
    let online = r
        .cpu
        .sockets
        .iter()
        .flat_map(|s| &s.cores)
        .flat_map(|c| &c.threads)
        .filter(|t| t.online)
        .count() as u64;
    let kernel_online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    assert_eq!(online, count_list(&kernel_online));
    // Memory total is MemTotal in bytes.
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(r.memory.total, kb * 1024);
    assert!(r.memory.used <= r.memory.total);
    // Every block device that is not virtual is listed, and nothing else.
    let mut hw: Vec<String> = std::fs::read_dir("/sys/block")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let target = std::fs::read_link(e.path()).unwrap();
            !target.to_string_lossy().contains("/virtual/")
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    hw.sort();
    let mut listed: Vec<String> = r.storage.disks.iter().map(|d| d.id.clone()).collect();
    listed.sort();
    assert_eq!(listed, hw);
    assert_eq!(r.storage.total, hw.len() as u64);
}

async fn get(r: &axum::Router, uri: &str) -> (StatusCode, Value) {
    let resp = r
        .clone()
        .oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn the_endpoint_serves_every_section_from_the_roots_kernel_files() {
    let t = TestApp::new();
    cpu_tree(t.root());
    pci_tree(t.root());
    w(
        t.root(),
        "proc/meminfo",
        "MemTotal: 1000 kB\nMemFree: 400 kB\n",
    );
    let (r, _, _d) = t.router();
    let (s, body) = get(&r, "/1.0/system/resources").await;
    assert_eq!(s, 200, "{body}");
    let m = &body["metadata"];
    for key in [
        "cpu", "memory", "gpu", "network", "storage", "usb", "pci", "system", "load", "serial",
    ] {
        assert!(m.get(key).is_some(), "{key} missing: {m}");
    }
    assert_eq!(m["cpu"]["total"], 8);
    assert_eq!(m["memory"]["total"], 1000 * 1024);
    assert_eq!(m["memory"]["used"], 600 * 1024);
    assert_eq!(
        m["network"]["cards"][0]["product"],
        "82540EM Gigabit Ethernet Controller"
    );
    assert_eq!(m["storage"], json!({"disks": [], "total": 0}));
    // Only GET.
    let resp = r
        .clone()
        .oneshot(
            Request::builder()
                .method("POST")
                .uri("/1.0/system/resources")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_ne!(resp.status(), 200);
}

#[tokio::test]
async fn without_kernel_files_the_endpoint_fails_clearly() {
    let t = TestApp::new();
    let _ = std::fs::remove_dir_all(t.root().join("proc"));
    let (r, _, _d) = t.router();
    let (s, body) = get(&r, "/1.0/system/resources").await;
    assert_eq!(s, 500, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(msg.starts_with("cannot read the hardware: "), "{msg}");
    assert!(msg.contains("proc"), "{msg}");
}
