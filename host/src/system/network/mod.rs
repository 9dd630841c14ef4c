//! The machine's network (`/1.0/system/network`).

pub mod confirm;
