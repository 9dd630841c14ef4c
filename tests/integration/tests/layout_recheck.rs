//! The loader repeats abi_stable's layout check only for a library that changed since it
//! passed: [`loader::open_trusted_known`] with the identity recorded then skips it, with
//! any other identity runs it. (One test in its own binary: the count is process-wide.)

use incus_osd_integration::built_plugin;
use plugin_host::loader;

#[test]
fn an_unchanged_library_is_not_layout_checked_again_and_a_changed_one_is() {
    let good = built_plugin("incus_osd_plugin_iscsi");
    let known = loader::check_trusted(&good).expect("trusted");
    let before = loader::layout_checks_run();
    let lib = loader::open_trusted_known(&good, known).expect("opens");
    assert_eq!(lib.plugins[0].manifest.name, "iscsi");
    assert_eq!(loader::layout_checks_run(), before, "not checked again");

    let changed = loader::FileIdentity {
        mtime_ns: known.mtime_ns + 1,
        ..known
    };
    loader::open_trusted_known(&good, changed).expect("opens");
    assert_eq!(loader::layout_checks_run(), before + 1, "checked");

    // A library whose layout does not fit is refused when its identity is not the one
    // recorded (a library that never passed is never recorded).
    let bad = built_plugin("fixture_layout_mismatch");
    let id = loader::check_trusted(&bad).expect("trusted");
    let other = loader::FileIdentity {
        inode: id.inode + 1,
        ..id
    };
    let Err(e) = loader::open_trusted_known(&bad, other) else {
        panic!("a library whose layout does not fit was opened");
    };
    assert_eq!(e.check(), "layout", "{e}");
}
