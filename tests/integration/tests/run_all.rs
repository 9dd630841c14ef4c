//! `tests/scripts/tier-summary`, with which `tests/run-all` counts the tests of each tier in
//! the output of `cargo test --workspace` and fails under CI when a tier lost tests.
//! Fed made-up cargo output here (floors set small through the environment).

use std::path::Path;
use std::process::Command;

/// One test binary's output as cargo and libtest print it.
fn binary(target: &str, passed: u32, failed: u32) -> String {
    let ok = if failed == 0 { "ok" } else { "FAILED" };
    format!(
        "     Running tests/{target}.rs (target/debug/deps/{target}-0123456789abcdef)\n\n\
         running {} tests\ntest result: {ok}. {passed} passed; {failed} failed; 0 ignored; \
         0 measured; 0 filtered out; finished in 0.01s\n\n",
        passed + failed
    )
}

fn doc_tests(krate: &str, passed: u32) -> String {
    format!(
        "   Doc-tests {krate}\n\nrunning {passed} tests\ntest result: ok. {passed} passed; 0 \
         failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\n"
    )
}

/// Tier 1: the daemon's library and router tests, plugin-api's doc tests (17); tier 2: a
/// plugin's harness tests (25); tier 3: tier3_services and tests/machine's machine (7).
fn full_log() -> String {
    [
        "     Running unittests src/lib.rs (target/debug/deps/incus_osd-00aa11bb22cc33dd)\n\n\
         running 12 tests\ntest result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 \
         filtered out; finished in 0.01s\n\n"
            .to_string(),
        binary("api", 3, 0),
        doc_tests("plugin_api", 2),
        binary("harness", 25, 0),
        doc_tests("incus_osd_harness", 0),
        binary("tier3_services", 4, 0),
        binary("machine", 3, 0),
    ]
    .concat()
}

/// Runs the script on `log` (cargo's exit `status`, tier 3 `ran` or `skipped`) with `ci` as
/// `CI`; its exit code and output.
fn summary(log: &str, status: i32, tier3: &str, ci: Option<&str>) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cargo-test.log");
    std::fs::write(&path, log).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/tier-summary");
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .arg(&path)
        .arg(status.to_string())
        .arg(tier3)
        .env("FLOOR_TIER1", "10")
        .env("FLOOR_TIER2", "20")
        .env("FLOOR_TIER3", "5")
        .env_remove("CI");
    if let Some(ci) = ci {
        cmd.env("CI", ci);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[test]
fn each_tier_states_how_many_tests_it_ran_and_the_last_line_is_the_total() {
    let (code, out) = summary(&full_log(), 0, "ran", Some("true"));
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        "tier 1: 17 passed, 0 failed (floor 10)\n\
         tier 2: 25 passed, 0 failed (floor 20)\n\
         tier 3: 7 passed, 0 failed (floor 5)\n\
         tests: 49 passed, 0 failed, 0 skipped\n"
    );
}

/// With the tier3_* tests gone, tier 3 falls below its floor: a failure under CI (`CI=true`
/// or `CI=1`), a warning elsewhere.
#[test]
fn a_tier_below_its_floor_fails_under_ci() {
    let log = full_log().replace(&binary("tier3_services", 4, 0), "");
    for ci in ["true", "1", "TRUE"] {
        let (code, out) = summary(&log, 0, "ran", Some(ci));
        assert_eq!(code, 1, "CI={ci}: {out}");
        assert!(
            out.contains(
                "tier 3: 3 passed, 0 failed (floor 5)\n\
                 tier 3 passed 3 tests, below its floor of 5: under CI that is a failure\n"
            ),
            "CI={ci}: {out}"
        );
        assert!(
            out.ends_with("tests: 45 passed, 0 failed, 0 skipped\n"),
            "{out}"
        );
    }
    for ci in [None, Some("0"), Some("false")] {
        let (code, out) = summary(&log, 0, "ran", ci);
        assert_eq!(code, 0, "CI={ci:?}: {out}");
        assert!(
            out.contains("warning: tier 3 passed 3 tests, below its floor of 5\n"),
            "{out}"
        );
    }
}

#[test]
fn failed_tests_fail_the_run_and_are_counted() {
    let log = full_log().replace(&binary("harness", 25, 0), &binary("harness", 24, 1));
    let (code, out) = summary(&log, 101, "ran", None);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("tier 2: 24 passed, 1 failed (floor 20)\n"),
        "{out}"
    );
    assert!(
        out.contains("cargo test failed (exit status 101)\n"),
        "{out}"
    );
    assert!(
        out.ends_with("tests: 48 passed, 1 failed, 0 skipped\n"),
        "{out}"
    );
}

/// Without root every tier-3 test returns at once: counted as skipped, not as passed.
#[test]
fn a_skipped_tier_3_is_counted_as_skipped() {
    let (code, out) = summary(&full_log(), 0, "skipped", None);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("tier 3: SKIPPED (not root): its 7 tests returned without running\n"),
        "{out}"
    );
    assert!(
        out.ends_with("tests: 42 passed, 0 failed, 7 skipped\n"),
        "{out}"
    );
}
