//! What the update providers share: the signed update index (`index.sjson`) with its
//! signature check ([`signature`]) and release selection ([`index`]), where the trusted
//! certificates come from ([`trust`]), config checks ([`config`]) and fetching a release's
//! files through the host's download capability ([`fetch`]).
//!
//! `images` reads the index over HTTPS, `local` from a directory; both verify and select
//! exactly the same way, through this crate.

pub mod address;
pub mod config;
pub mod fetch;
pub mod index;
pub mod pem;
pub mod signature;
pub mod trust;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use index::{offer, parse_index, select, Index, Selection, Update};
pub use signature::{verify_signed_index, Runner};
pub use trust::Trust;

use plugin_api::provider::{Release, Target, UpdateContext};
use plugin_api::{Host, Result};

/// A random (version 4) UUID, from the kernel's random source of the daemon's own process
/// (the host has no randomness capability).
pub fn random_uuid() -> Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| plugin_api::Error::internal(format!("cannot read random bytes: {e}")))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// Verifies `signed` (an `index.sjson`) against `trust` with the host's openssl and reads
/// the index it carries.
pub fn verified_index(host: &Host, signed: &[u8], trust: &Trust) -> Result<Index> {
    let run = signature::host_runner(host);
    let content = verify_signed_index(&run, signed, &trust.root_ca, &trust.update_ca)?;
    parse_index(&content)
}

/// The release `index` offers for `target` in `context` (see [`select`] and [`offer`]),
/// warning through the host's log when no update lists the channel, as upstream does.
pub fn lookup_in(
    host: &Host,
    index: &Index,
    context: &UpdateContext,
    target: &Target,
) -> Option<Release> {
    let selection = select(index, context);
    if !selection.channel_seen {
        host.warn(&format!(
            "The configured update channel doesn't currently hold any image (channel {:?})",
            context.channel
        ));
    }
    offer(&selection.update?, target)
}
