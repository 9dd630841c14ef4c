//! Applications on the host side: their images on disk and which one systemd-sysext
//! merges over `/usr` ([`store`]), and the version rules that choose it ([`versions`]).

pub mod manage;
pub mod store;
pub mod versions;
