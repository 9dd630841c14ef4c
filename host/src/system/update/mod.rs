//! The update engine: checking, downloading and staging OS and application updates.

pub mod stage;
