//! The test-time application images (`incus_osd_integration::sysext`), without root: each
//! is a GPT disk image with one `usr` partition of this architecture's type holding the
//! stand-in files, which the host's store accepts; and a `local` provider mirror written
//! around them serves them (index signed, verified and looked up by the built plugin,
//! fetched and unpacked byte for byte). `tier3_sysext.rs` merges them for real.

use std::path::Path;
use std::process::Command;

use incus_osd::platform::Platform;
use incus_osd::system::applications::store::Store;
use incus_osd_harness::Harness;
use incus_osd_integration::sysext::{
    usr_partition_type, wipe_partition, write_local_mirror, MirrorImage, StandIn, PARTITION_OFFSET,
};
use incus_osd_provider_common::testing::Pki;
use incus_osd_provider_common::trust::{ROOT_CA_PATH, UPDATE_CA_PATH};
use serde_json::{json, Value};

const V1: &str = "202601010000";
const V2: &str = "202601150000";

fn sfdisk_json(image: &Path) -> Value {
    let sfdisk = incus_osd_test_machine::find_tool("sfdisk").expect("sfdisk");
    let out = Command::new(sfdisk)
        .arg("--json")
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_stand_in_image_is_a_gpt_usr_partition_image_the_store_accepts() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("var/lib/incus-os-extensions").join(V1);
    std::fs::create_dir_all(&dir).unwrap();
    let stand_in = StandIn::new("incus", V1, &["incus.service"]);
    let image = stand_in.build(&dir);
    assert_eq!(image, dir.join("incus.raw"));

    let table = &sfdisk_json(&image)["partitiontable"];
    assert_eq!(table["label"], "gpt");
    let parts = table["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 1, "{table}");
    assert_eq!(parts[0]["type"], usr_partition_type());
    assert_eq!(parts[0]["start"], PARTITION_OFFSET / 512);
    assert_eq!(parts[0]["name"], "incus");
    // The partition holds an ext4 file system (its magic at 1080 bytes in).
    let data = std::fs::read(&image).unwrap();
    let magic = PARTITION_OFFSET as usize + 1080;
    assert_eq!(&data[magic..magic + 2], &[0x53, 0xef]);

    // The stand-in says what it is.
    let files = stand_in.files();
    let unit = files
        .iter()
        .find(|f| f.path == "lib/systemd/system/incus.service")
        .unwrap();
    assert!(String::from_utf8_lossy(&unit.contents).contains("stand-in for incus.service"));

    let store = Store::new(root.path(), &Platform::for_root(root.path()));
    store.verify("incus", V1).unwrap();
    // The store's check is the GPT header only: a wiped partition still passes (systemd
    // refuses it when merging, see tier3_sysext.rs).
    wipe_partition(&image);
    store.verify("incus", V1).unwrap();
    // Without its partition table it is refused.
    std::fs::write(&image, &data[PARTITION_OFFSET as usize..]).unwrap();
    let err = store.verify("incus", V1).unwrap_err();
    assert!(err.message.contains("no GPT header"), "{}", err.message);
}

#[test]
fn a_local_mirror_of_stand_in_images_is_served_by_the_local_provider() {
    let build = tempfile::tempdir().unwrap();
    let images: Vec<_> = [V1, V2]
        .iter()
        .map(|v| {
            let dir = build.path().join(v);
            std::fs::create_dir(&dir).unwrap();
            StandIn::new("incus", v, &["incus.service"]).build(&dir)
        })
        .collect();
    let pki = Pki::new();

    let h = Harness::load_built("incus_osd_plugin_provider_local");
    let host = h.host();
    host.put_file(ROOT_CA_PATH, pki.root_pem().as_bytes(), 0o644);
    host.put_file(UPDATE_CA_PATH, pki.update_ca_pem().as_bytes(), 0o644);
    host.on_command_real(&["bash"]);
    host.on_command_real(&["openssl"]);
    let index = write_local_mirror(
        &host.real_path("/media/usb"),
        &[
            (
                V1,
                vec![MirrorImage {
                    app: "incus",
                    image: &images[0],
                }],
            ),
            (
                V2,
                vec![MirrorImage {
                    app: "incus",
                    image: &images[1],
                }],
            ),
        ],
        |content| pki.sign(content),
    );
    assert_eq!(index["updates"][0]["version"], V2, "newest first: {index}");
    h.apply_config(&json!({"path": "/media/usb"}));

    let context = json!({"channel": "stable", "architecture": std::env::consts::ARCH,
                         "os_name": "IncusOS", "running_version": "202512010000"});
    let target = json!({"kind": "application", "name": "incus"});
    let lookup = json!({"context": context, "target": target});
    let release = h.invoke("lookup", lookup.to_string().as_bytes()).unwrap()["release"].clone();
    assert_eq!(release["version"], V2, "{release}");

    let dir = format!("/var/lib/incus-os-extensions/{V2}");
    let order = json!({"context": context, "target": target, "release": release,
                       "target_dir": dir});
    let out = h.invoke("fetch", order.to_string().as_bytes()).unwrap();
    assert_eq!(out["written"], json!([format!("{dir}/incus.raw")]));
    assert!(
        host.read_file(&format!("{dir}/incus.raw")).unwrap() == std::fs::read(&images[1]).unwrap(),
        "the fetched image is the V2 image"
    );
}
