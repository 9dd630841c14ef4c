//! Every first-party plugin in one library: std, serde, abi_stable and the SDK are paid for
//! once, and the daemon opens and checks one file instead of one per plugin (see
//! docs/performance.md). Each plugin crate keeps its own library as well (the per-plugin
//! harness and tests load those); a plugin directory holding this bundle skips them.
//!
//! Adding a first-party plugin: add its crate to `Cargo.toml` and to the list below (a test
//! of the daemon checks that every plugin crate of the workspace is here).

plugin_api::export_bundle!(
    incus_osd_plugin_ceph,
    incus_osd_plugin_iscsi,
    incus_osd_plugin_linstor,
    incus_osd_plugin_lvm,
    incus_osd_plugin_multipath,
    incus_osd_plugin_netbird,
    incus_osd_plugin_nvme,
    incus_osd_plugin_ovn,
    incus_osd_plugin_tailscale,
    incus_osd_plugin_usbip,
    incus_osd_plugin_provider_debug,
    incus_osd_plugin_provider_images,
    incus_osd_plugin_provider_local,
    incus_osd_plugin_provider_operations_center,
    incus_osd_plugin_application_debug,
    incus_osd_plugin_application_gpu_support,
    incus_osd_plugin_application_incus_ceph,
    incus_osd_plugin_application_incus_linstor,
    incus_osd_plugin_application_incus,
    incus_osd_plugin_application_migration_manager,
    incus_osd_plugin_application_openfga,
    incus_osd_plugin_application_operations_center,
);
