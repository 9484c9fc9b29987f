//! Pure domain types and state machines: no I/O here.
pub mod backoff;
pub mod cert;
pub mod clock;
pub mod context;
pub mod ids;
pub mod job;
pub mod lane;
pub mod pacing;
pub mod plan;
pub mod registry_path;
pub mod settle;
