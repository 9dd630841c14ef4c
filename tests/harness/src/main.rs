//! `incus-osd-plugin-check [--json] PATH...`: runs the generic conformance checks on plugin
//! libraries. Exit status 1 if any check failed or a library could not be loaded. A check
//! that does not apply to a plugin is reported as skipped, never as passed.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use incus_osd_harness::{run_generic_checks, CheckStatus};
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
            match o.status {
                CheckStatus::Passed => passed += 1,
                CheckStatus::Failed => failed += 1,
                CheckStatus::Skipped => skipped += 1,
            }
            if !args.json {
                match o.status {
                    CheckStatus::Passed => println!("PASS {}", o.name),
                    CheckStatus::Failed => println!("FAIL {}: {}", o.name, o.detail),
                    CheckStatus::Skipped => println!("SKIP {}: {}", o.name, o.detail),
                }
            }
        }
        libraries.push(json!({
            "path": path.display().to_string(),
            "checks": outcomes.iter().map(|o| json!({
                "name": o.name,
                "status": o.status.as_str(),
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
