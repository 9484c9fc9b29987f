//! Simulator of the DPS service API and the IoT Hub registry API.
//!
//! One listener per DPS instance and per hub (plain HTTP on 127.0.0.1), each serving the Azure wire
//! format of its instance plus the `/_sim/` admin API. Start with [`Simulator::start`].

pub mod admin;
pub mod auth;
pub mod calllog;
pub mod certs;
pub mod clock;
pub mod config;
pub mod dps_service;
pub mod errors;
pub mod faults;
pub mod hub;
pub mod server;
pub mod state;
pub mod throttle;

pub use calllog::{CallLog, CallRecord};
pub use clock::{Clock, FakeClock, SystemClock};
pub use config::{
    ChaosConfig, DpsBehavior, DpsConfig, ExistingPutPolicy, HubConfig, HubTier, LinkedHubConfig,
    PolicyConfig, SimConfig, ThrottleConfig,
};
pub use faults::{FaultAction, FaultRule};
pub use server::{ConnInfo, DropConnection, Endpoint, RunningSimulator, SimHandle, Simulator};
pub use state::SimState;

/// Errors starting or configuring the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configuration is inconsistent (duplicate names, unknown linked hub, bad key...).
    #[error("invalid simulator configuration: {0}")]
    Config(String),
    /// A listener could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: String,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// No instance with that name or host.
    #[error("unknown simulator instance {0}")]
    UnknownInstance(String),
}
