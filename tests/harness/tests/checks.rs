//! The conformance checker's own tests: each deliberately faulty fixture plugin
//! (`tests/fixtures/nc-*`, one broken rule each) fails exactly the checks its fault breaks,
//! with a reason that says what was wrong; good plugins pass, and a check that does not
//! apply is skipped, not passed. Fixtures come from the workspace build.

use incus_osd_harness::{
    assert_conformance, built_plugin, run_generic_checks, CheckOutcome, CheckStatus, Harness,
    CHECKS,
};
use incus_osd_harness::{LogLevel, UnitCall, UnitOp};
use plugin_api::sdk::RESET_NOT_SUPPORTED;
use serde_json::json;

fn fixture(name: &str) -> std::path::PathBuf {
    built_plugin(&format!("fixture_{}", name.replace('-', "_")))
}

fn outcome<'a>(outcomes: &'a [CheckOutcome], name: &str) -> &'a CheckOutcome {
    outcomes
        .iter()
        .find(|o| o.name == name)
        .unwrap_or_else(|| panic!("no {name} check in {outcomes:#?}"))
}

/// Runs the checks on fixture `name`: exactly the checks of `failing` fail, each with a
/// detail containing its text; `skipped` are skipped; every other check passes.
fn assert_outcomes(name: &str, failing: &[(&str, &str)], skipped: &[&str]) -> Vec<CheckOutcome> {
    let outcomes = run_generic_checks(fixture(name));
    let names: Vec<&str> = outcomes.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, CHECKS, "{name}");
    for o in &outcomes {
        let expected = if let Some((_, why)) = failing.iter().find(|(n, _)| *n == o.name) {
            assert!(o.detail.contains(why), "{name}: {:?} lacks {why:?}", o);
            CheckStatus::Failed
        } else if skipped.contains(&o.name.as_str()) {
            CheckStatus::Skipped
        } else {
            CheckStatus::Passed
        };
        assert_eq!(o.status, expected, "{name}: {o:#?}");
    }
    outcomes
}

/// What every service fixture skips: services have no backup.
const SERVICE_SKIPS: &[&str] = &["backup-restore", "provider-ops"];

#[test]
fn a_put_that_accepts_bad_json_fails_bad_json() {
    assert_outcomes(
        "nc-bad-json",
        &[(
            "bad-json",
            "`{not json`: PUT succeeded ({}) instead of answering 400; an empty body: PUT \
             succeeded ({}) instead of answering 400",
        )],
        SERVICE_SKIPS,
    );
}

#[test]
fn a_plugin_that_panics_on_bad_input_fails_bad_json_and_wrong_types() {
    assert_outcomes(
        "nc-panics",
        &[
            (
                "bad-json",
                "`{not json`: answered 500 plugin panicked in put: a valid body",
            ),
            (
                "wrong-types",
                "config.port = \"x\": answered 500 plugin panicked in put: a valid body",
            ),
        ],
        SERVICE_SKIPS,
    );
}

#[test]
fn a_get_of_the_wrong_shape_fails_every_check_that_reads_it() {
    let why = "GET returned the keys [\"config\", \"status\"], expected exactly \"state\" and \
               \"config\"";
    assert_outcomes(
        "nc-get-shape",
        &[
            ("get-shape", why),
            ("put-round-trip", why),
            ("wrong-types", why),
        ],
        SERVICE_SKIPS,
    );
}

#[test]
fn a_put_that_drops_a_field_fails_the_round_trip() {
    assert_outcomes(
        "nc-drops-field",
        &[(
            "put-round-trip",
            "after PUT of the config with enabled = true, GET's config is \
             {\"enabled\":false,\"name\":\"\",\"port\":0,\"tags\":[]} instead of \
             {\"enabled\":true,\"name\":\"\",\"port\":0,\"tags\":[]}",
        )],
        SERVICE_SKIPS,
    );
}

#[test]
fn a_put_that_takes_wrong_types_fails_wrong_types() {
    assert_outcomes(
        "nc-wrong-types",
        &[(
            "wrong-types",
            "config.enabled = \"x\": PUT succeeded ({}) instead of answering 400; config.name = \
             12: PUT succeeded ({}) instead of answering 400; config.port = \"x\": PUT \
             succeeded ({}) instead of answering 400; config.tags = {}: PUT succeeded ({}) \
             instead of answering 400",
        )],
        SERVICE_SKIPS,
    );
}

#[test]
fn a_refusal_that_saved_the_config_first_fails() {
    assert_outcomes(
        "nc-dirty-refusal",
        &[
            ("bad-json", "`[]`: the state document changed"),
            (
                "wrong-types",
                "config.port = \"x\": the state document changed",
            ),
        ],
        SERVICE_SKIPS,
    );
}

#[test]
fn a_refusal_that_does_not_name_the_field_fails_wrong_types() {
    assert_outcomes(
        "nc-unnamed-field",
        &[(
            "wrong-types",
            "config.port = \"x\": the message \"invalid request\" does not name the field \
             \"port\"",
        )],
        SERVICE_SKIPS,
    );
}

#[test]
fn a_reset_that_is_not_advertised_fails_reset() {
    assert_outcomes(
        "nc-hidden-reset",
        &[(
            "reset",
            "the plugin implements reset (it succeeded ({})) but its manifest does not \
             advertise it: the daemon answers \"reset isn't supported by this service\" \
             without calling it",
        )],
        SERVICE_SKIPS,
    );
}

#[test]
fn an_advertised_reset_that_is_not_implemented_fails_reset() {
    assert_outcomes(
        "nc-missing-reset",
        &[(
            "reset",
            "the manifest advertises reset, but the plugin answered 500 reset isn't supported \
             by this service",
        )],
        SERVICE_SKIPS,
    );
}

#[test]
fn a_backup_that_loses_data_fails_the_round_trip() {
    assert_outcomes(
        "nc-backup-loses-data",
        &[(
            "backup-restore",
            "GET after restore is {\"config\":{\"enabled\":true,\"name\":\"conformance\",\
             \"port\":1,\"tags\":[]},\"state\":{\"data\":\"\",\"running\":true}}, before \
             backup it was {\"config\":{\"enabled\":true,\"name\":\"conformance\",\"port\":1,\
             \"tags\":[]},\"state\":{\"data\":\"conformance\",\"running\":true}}",
        )],
        &["reset", "provider-ops"],
    );
}

/// With a declared backup the check compares the data itself: a plugin whose `restored`
/// hook writes into the restored tree fails, naming the entry.
#[test]
fn a_restore_that_changes_the_declared_data_fails_the_round_trip() {
    assert_outcomes(
        "nc-restored-changes-data",
        &[(
            "backup-restore",
            "after restore the backup root differs: missing or changed [], new [\"restored: \
             file 600 mtime",
        )],
        &["reset", "provider-ops"],
    );
}

/// The fixture application with its own archive format keeps its data through backup,
/// factory reset (its wipe) and restore: the round trip runs (on a config the check changed
/// first) through the plugin's streams and passes.
#[test]
fn a_streaming_backup_passes_the_round_trip() {
    let outcomes = assert_outcomes("backup-app", &[], &["reset", "provider-ops"]);
    let br = outcome(&outcomes, "backup-restore");
    assert!(
        br.detail.starts_with("the plugin's own backup, ")
            && br.detail.contains(
                "factory-reset and restore gave back the same GET, with 1 field(s) changed \
                 (greeting) first"
            ),
        "{br:?}"
    );
    assert!(!br.detail.contains("proves little"), "{br:?}");
    assert_eq!(
        outcome(&outcomes, "reset").detail,
        "only services have reset"
    );
}

/// An upstream-faithful application (GET shows only its friendly version and config)
/// that declares its backup passes the round trip: the harness writes and restores the
/// archive with the daemon's code, and the data under the root is back, exclusions aside.
#[test]
fn a_declared_backup_passes_the_round_trip_on_the_data_itself() {
    let outcomes = assert_outcomes("declared-backup", &[], &["reset", "provider-ops"]);
    let br = outcome(&outcomes, "backup-restore");
    assert!(
        br.detail
            .starts_with("declared backup of /var/lib/declared-backup (1 entries kept)")
            && br.detail.contains(
                "factory-reset and restore gave back the same GET and data, with 1 field(s) \
             changed (greeting) first"
            ),
        "{br:?}"
    );
    assert!(!br.detail.contains("proves little"), "{br:?}");

    // What the daemon does around it: units stopped and started around the swap, the
    // plugin told afterwards; the excluded names are not brought back.
    let h = Harness::load(fixture("declared-backup")).unwrap();
    h.put_config(&json!({"greeting": "hello"})).unwrap();
    let archive = h.backup(&json!({})).unwrap();
    h.factory_reset().unwrap();
    assert_eq!(
        h.host().read_file("/var/lib/declared-backup/greeting"),
        None
    );
    h.host().clear_effects();
    h.restore(&archive).unwrap();
    assert_eq!(
        h.host().read_text("/var/lib/declared-backup/greeting"),
        "hello"
    );
    assert_eq!(
        h.host().read_file("/var/lib/declared-backup/unix.socket"),
        None
    );
    assert_eq!(
        h.host().read_file("/var/lib/declared-backup/cache/blob"),
        None
    );
    assert_eq!(
        h.host().units(),
        [
            UnitCall::new(UnitOp::Stop, "declared-backup.service"),
            UnitCall::new(UnitOp::Start, "declared-backup.service")
        ]
    );
    assert_eq!(
        h.host().logged(LogLevel::Info),
        ["restored declared-backup"]
    );
    // A complete backup has the cache.
    h.put_config(&json!({"greeting": "again"})).unwrap();
    let complete = h.backup(&json!({"complete": true})).unwrap();
    h.factory_reset().unwrap();
    h.restore(&complete).unwrap();
    assert_eq!(
        h.host().read_text("/var/lib/declared-backup/cache/blob"),
        "cached"
    );
    // A hostile archive changes nothing.
    let err = h.restore(&complete[..complete.len() / 2]).unwrap_err();
    assert_eq!(err.status, 400, "{err:?}");
    assert_eq!(
        h.host().read_text("/var/lib/declared-backup/greeting"),
        "again"
    );
}

/// An application without any backup is not failed for it.
#[test]
fn an_application_without_a_backup_is_reported_as_such() {
    let outcomes = run_generic_checks(fixture("sdk-only"));
    let br = outcome(&outcomes, "backup-restore");
    assert_eq!(br.status, CheckStatus::Skipped);
    assert_eq!(
        br.detail,
        "no backup: the application declares neither BACKUP nor STREAMING_BACKUP"
    );
    assert!(outcomes.iter().all(|o| !o.failed()), "{outcomes:#?}");
}

#[test]
fn providers_get_the_generic_checks_and_a_panicking_operation_fails_provider_ops() {
    let outcomes = assert_outcomes(
        "nc-provider-panics",
        &[(
            "provider-ops",
            "register answered 500 plugin panicked in register: register is broken",
        )],
        &["reset", "backup-restore"],
    );
    // The config checks ran on the provider's config document.
    assert_eq!(
        outcome(&outcomes, "get-shape").detail,
        r#"GET: {"config":{"server_url":""},"state":{}}"#
    );
    assert!(outcome(&outcomes, "put-round-trip")
        .detail
        .contains("1 field(s) changed (server_url)"));
}

#[test]
fn a_skipped_check_is_not_a_pass() {
    let outcomes = run_generic_checks(built_plugin("incus_osd_plugin_iscsi"));
    let skipped = outcome(&outcomes, "backup-restore");
    assert_eq!(skipped.status, CheckStatus::Skipped);
    assert!(skipped.skipped() && !skipped.passed() && !skipped.failed());
    assert_eq!(skipped.detail, "only applications have backups");
}

#[test]
fn assert_conformance_fails_on_a_faulty_plugin_and_returns_the_outcomes_of_a_good_one() {
    let caught = std::panic::catch_unwind(|| assert_conformance(fixture("nc-bad-json")));
    let msg = caught.unwrap_err();
    let msg = msg.downcast_ref::<String>().unwrap();
    assert!(msg.starts_with("generic checks failed"), "{msg}");
    assert!(msg.contains("PUT succeeded"), "{msg}");

    let outcomes = assert_conformance(fixture("backup-app"));
    assert_eq!(outcomes.len(), CHECKS.len());
}

/// The harness answers a reset of a plugin that does not advertise it as the daemon does,
/// without calling the plugin (whose hidden reset would write a file and save state).
#[test]
fn the_harness_answers_an_unadvertised_reset_itself() {
    let h = Harness::load(fixture("nc-hidden-reset")).unwrap();
    let err = h.reset().unwrap_err();
    assert_eq!(
        (err.status, err.message.as_str()),
        (500, RESET_NOT_SUPPORTED)
    );
    h.host().assert_untouched("an unadvertised reset");
    // Past the host's gate the plugin does answer.
    h.invoke("reset", b"").unwrap();
    assert_eq!(h.host().files_written(), ["/var/lib/nc-hidden-reset/reset"]);
}
