use super::*;

#[test]
fn the_sysctl_file_has_upstreams_defaults_and_optional_lines() {
    assert_eq!(
        render_sysctl(&KernelConfig::default()),
        "vm.nr_hugepages = 0\nnet.core.netdev_max_backlog = 1000\nnet.ipv4.tcp_mtu_probing = 0\n"
    );
    let c = KernelConfig {
        memory: Some(Memory {
            persistent_hugepages: 16,
            zram_swap_size: String::new(),
        }),
        network: Some(Network {
            buffer_size: 1048576,
            netdev_max_backlog: 5000,
            queuing_discipline: "fq".into(),
            tcp_congestion_algorithm: "bbr".into(),
            tcp_mtu_probing: true,
        }),
        ..Default::default()
    };
    assert_eq!(
        render_sysctl(&c),
        "vm.nr_hugepages = 16\n\
         net.ipv4.tcp_rmem = 4096 65536 1048576\nnet.ipv4.tcp_wmem = 4096 65536 1048576\n\
         net.core.rmem_max = 1048576\nnet.core.wmem_max = 1048576\n\
         net.core.netdev_max_backlog = 5000\nnet.ipv4.tcp_mtu_probing = 1\n\
         net.core.default_qdisc = fq\nnet.ipv4.tcp_congestion_control = bbr\n"
    );
}

#[test]
fn sizes_parse_in_decimal_and_binary_units() {
    assert_eq!(parse_size("0").unwrap(), 0);
    assert_eq!(parse_size("512").unwrap(), 512);
    assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
    assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
    assert_eq!(parse_size("1.5MiB").unwrap(), 1572864);
    assert!(parse_size("lots")
        .unwrap_err()
        .contains("invalid zram swap size"));
    assert!(parse_size("4XB").is_err());
}

#[test]
fn empty_parts_are_left_out_of_the_json() {
    let c = KernelConfig::default();
    assert_eq!(serde_json::to_value(&c).unwrap(), serde_json::json!({}));
    let c: KernelConfig = serde_json::from_value(serde_json::json!({
        "memory": {"persistent_hugepages": 2},
        "pci": {"passthrough": [{"vendor_id": "10de", "product_id": "1eb8"}]}
    }))
    .unwrap();
    assert_eq!(
        serde_json::to_value(&c).unwrap(),
        serde_json::json!({
            "memory": {"persistent_hugepages": 2, "zram_swap_size": ""},
            "pci": {"passthrough": [{"vendor_id": "10de", "product_id": "1eb8"}]}
        })
    );
    assert_eq!(
        render_passthrough(&c).unwrap(),
        "options vfio-pci ids=10de:1eb8\n"
    );
}

#[test]
fn consoles_with_a_baud_rate_get_it_and_a_failure_does_not_stop_the_others() {
    let script = crate::testing::Script::default();
    script
        .on(
            "/usr/bin/stty -F /dev/ttyS0",
            1,
            "",
            "stty: /dev/ttyS0: No such device",
        )
        .on("/usr/bin/stty", 0, "", "");
    let consoles = [
        Console {
            device: "/dev/ttyS0".into(),
            baud_rate: 115200,
        },
        Console {
            device: "/dev/tty1".into(),
            baud_rate: 0,
        },
        Console {
            device: "/dev/ttyS1".into(),
            baud_rate: 9600,
        },
    ];
    let failed = set_console_speeds(&script, &consoles);
    assert_eq!(
        script.calls(),
        [
            "/usr/bin/stty -F /dev/ttyS0 115200",
            "/usr/bin/stty -F /dev/ttyS1 9600"
        ]
    );
    assert_eq!(failed, ["/dev/ttyS0: stty: /dev/ttyS0: No such device"]);
}
