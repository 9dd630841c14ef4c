//! A plugin built with `panic = "abort"` does not compile: the export macros refuse it, since
//! the SDK's guard against panics crossing into the daemon (`catch_unwind`) needs unwinding.
//!
//! `tests/fixtures/panic-abort` is an ordinary plugin the workspace builds as usual; this
//! test builds it once more with `-C panic=abort` (only that crate: its dependencies are
//! reused) and expects the macro's error.

use std::path::Path;
use std::process::Command;

#[test]
fn a_plugin_built_with_panic_abort_is_refused_at_compile_time() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("plugin-api is inside the workspace");
    let out = Command::new(cargo)
        .current_dir(workspace)
        .args(["rustc", "-p", "fixture-panic-abort", "--lib", "--"])
        .args(["-C", "panic=abort"])
        .output()
        .expect("cargo runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "built with panic=abort: {stderr}");
    assert!(
        stderr.contains(
            "incus-osd plugins must be built with panic = \"unwind\" (the default): with \"abort\", a panic in the plugin would take the daemon down"
        ),
        "failed for another reason: {stderr}"
    );
}
