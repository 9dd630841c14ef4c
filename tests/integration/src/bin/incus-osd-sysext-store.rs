//! A test tool, run inside a tier-3 machine: drives the daemon's application image store
//! ([`Store`]) on the live root `/`, with the real `systemd-sysext` and the machine's
//! systemd over D-Bus, as the daemon does once applications are installed. Prints what
//! it did as JSON on stdout; on failure, the error on stderr and exit status 1.
//!
//! ```text
//! incus-osd-sysext-store refresh [--running V] [--other V] [--prior V] APP=RECORDED...
//! incus-osd-sysext-store remove APP
//! ```

use std::io::Write;
use std::path::Path;

use incus_osd::platform::Platform;
use incus_osd::system::applications::store::{Installed, OsFacts, Store};
use serde_json::{json, Value};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(v) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{v}");
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

fn run(args: &[String]) -> Result<Value, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let platform = rt.block_on(Platform::connect(Path::new("/"), None));
    // The store's calls block on the runtime: made from this thread, outside it.
    let store = Store::new(Path::new("/"), &platform);
    let fail = |e: plugin_api::Error| format!("{} ({})", e.message, e.status);
    match args.first().map(String::as_str) {
        Some("refresh") => {
            let mut os = OsFacts::default();
            let mut apps = vec![];
            let mut rest = args[1..].iter();
            while let Some(a) = rest.next() {
                let mut value = || rest.next().cloned().ok_or(format!("{a} needs a value"));
                match a.as_str() {
                    "--running" => os.running = value()?,
                    "--other" => os.other = value()?,
                    "--prior" => os.prior = value()?,
                    _ => {
                        let (name, recorded) = a
                            .split_once('=')
                            .ok_or(format!("expected APP=RECORDED, got {a:?}"))?;
                        apps.push(Installed {
                            name: name.into(),
                            recorded: recorded.into(),
                        });
                    }
                }
            }
            let done = store.refresh_extensions(&apps, &os).map_err(fail)?;
            Ok(Value::Array(
                done.into_iter()
                    .map(|a| {
                        json!({"name": a.name, "version": a.version, "rule": format!("{:?}", a.rule),
                               "available": a.available, "removed": a.removed})
                    })
                    .collect(),
            ))
        }
        Some("remove") if args.len() == 2 => {
            store.remove_application(&args[1]).map_err(fail)?;
            Ok(json!({"removed": args[1]}))
        }
        _ => Err("usage: incus-osd-sysext-store refresh [--running V] [--other V] [--prior V] APP=RECORDED... | remove APP".into()),
    }
}
