//! `incus-osd-plugin-check [--json] PATH...`: runs the generic conformance checks on plugin
//! libraries. Exit status 1 if any check failed or a library could not be loaded.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use incus_osd_harness::{run_generic_checks, CheckOutcome};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Runs the generic incus-osd plugin conformance checks on plugin libraries")]
struct Args {
    /// Print one JSON document instead of text lines.
    #[arg(long)]
    json: bool,
    /// Plugin libraries (`libincus_osd_plugin_*.so`).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

fn status(o: &CheckOutcome) -> &'static str {
    match (o.passed, o.skipped) {
        (_, true) => "skip",
        (true, false) => "pass",
        (false, false) => "fail",
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (mut passed, mut failed, mut skipped) = (0usize, 0usize, 0usize);
    let mut libraries = vec![];
    for path in &args.paths {
        let outcomes = run_generic_checks(path);
        if !args.json {
            println!("== {}", path.display());
        }
        for o in &outcomes {
            match status(o) {
                "skip" => skipped += 1,
                "pass" => passed += 1,
                _ => failed += 1,
            }
            if !args.json {
                match status(o) {
                    "skip" => println!("SKIP {}: {}", o.name, o.detail),
                    "pass" => println!("PASS {}", o.name),
                    _ => println!("FAIL {}: {}", o.name, o.detail),
                }
            }
        }
        libraries.push(json!({
            "path": path.display().to_string(),
            "checks": outcomes.iter().map(|o| json!({
                "name": o.name,
                "status": status(o),
                "detail": o.detail,
            })).collect::<Vec<_>>(),
        }));
    }
    if args.json {
        let doc = json!({
            "libraries": libraries,
            "passed": passed,
            "failed": failed,
            "skipped": skipped,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        println!("{passed} passed, {failed} failed, {skipped} skipped");
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
