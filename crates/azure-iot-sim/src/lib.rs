//! azure-iot-sim: a stateful simulator of the Azure IoT Hub Device Provisioning Service (service API and
//! device registration API) and the IoT Hub identity registry, on the services' real wire format.
//!
//! One listener per DPS instance and per hub (plain HTTP on 127.0.0.1), each serving the Azure wire
//! format of its instance plus the `/_sim/` admin API. Start with [`Simulator::start`].
//!
//! Every call goes through one pipeline ([`server::run_call`]): injected latency and faults, then
//! `api-version` (required, `YYYY-MM-DD[-preview]`, else 400), SAS (401), quota (429), the operation.
//!
//! Choices where azure-specs/README.md leaves Azure's behaviour open (each is configurable or
//! easy to change, and tested):
//! - DPS PUT without If-Match on an existing record replaces it (the spec: If-Match optional);
//!   [`ExistingPutPolicy::Conflict`] answers 409 / 409201 instead. If-Match `*` on a missing record
//!   creates it; a specific etag on a missing record is 412.
//! - DPS error codes beyond the verified 404201 and 401002: 400004 (bad request), 409201 (conflict),
//!   412001 (etag mismatch), 429001, 500001, 503001; `x-ms-error-code` carries the same number.
//! - DPS GET and queries hide symmetric keys (`"symmetricKey": {}`); PUT responses and
//!   `POST …/attestationmechanism` show them. Keys absent from a PUT are regenerated (64 bytes).
//!   Certificates are accepted as PEM or base64 DER and never returned: only `info`. A PUT that
//!   echoes `info` without `certificate` keeps the stored certificate when the thumbprint matches.
//! - Deleting an individual enrollment removes its registration record; deleting a group does not.
//! - DPS paging: 100 items when `x-ms-max-item-count` is absent, at most 1000; hub twin query: 100
//!   by default and at most 100. Continuation tokens are opaque and key-based, so deleting items
//!   while paging neither skips nor repeats the rest.
//! - Hub errors: `iothub-errorcode` header; `Message` is legacy `ErrorCode:<Name>;<text>` for
//!   registry errors and a JSON string with the numeric code for 401s (both shapes exist).
//!   PUT with If-Match on a missing device is 404 DeviceNotFound; DELETE without If-Match is
//!   400 ArgumentNull; bulk with more than 100 items is 413 TooManyDevices (413002); a device twice
//!   in one bulk is 400 DeviceDefinedMultipleTimes. Bulk `update`/`updateIfMatchETag` create missing
//!   devices (import-job semantics); `delete` of a missing device is a per-item DeviceNotFound.
//! - Hub twin query supports `SELECT * FROM devices [WHERE cond [AND cond ...]]` where cond is
//!   `path = v`, `path != v` or `path IN [v, ...]` (strings, numbers, booleans); else 400 ArgumentInvalid.
//! - `/devices/query` needs ServiceConnect (README §3); DPS registration reads need
//!   RegistrationStatusRead, deletes RegistrationStatusWrite. Rights do not imply each other.
//! - `GET /statistics/devices` counts device identities only (`totalDeviceCount`,
//!   `enabledDeviceCount`, `disabledDeviceCount`), needs RegistryRead and is not counted against any
//!   quota: Azure does not document whether it spends registry operations.
//! - Import/export jobs ([`jobs`]): a second job while one is active is 403 JobQuotaExceeded; an
//!   unknown job 404 JobNotFound; cancel answers 204; import `update` of a missing device is an
//!   error (unlike bulk); the error log is always written; throughput is a setting.
//! - Quotas: token buckets holding a minute of quota (`burst_fraction`), refilled continuously;
//!   bulk calls cost one op per item unless `bulk_cost = per_call`. `Retry-After` (whole seconds,
//!   at least 1) is on by default though Azure documents none for IoT Hub.

pub mod admin;
pub mod auth;
pub mod blob;
pub mod calllog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod device_api;
pub mod dps_service;
pub mod errors;
pub mod faults;
pub mod hub;
pub mod jobs;
pub mod sas;
pub mod secret;
pub mod seed;
pub mod server;
pub mod state;
pub mod throttle;
pub mod tls;
pub mod x509;

pub use calllog::{CallLog, CallRecord};
pub use clock::{Clock, FakeClock, SystemClock};
pub use config::{
    BulkCost, ChaosConfig, DpsBehavior, DpsConfig, ExistingPutPolicy, HubConfig, HubTier,
    JobsConfig, LinkedHubConfig, PolicyConfig, SimConfig, ThrottleConfig,
};
pub use faults::{FaultAction, FaultRule};
pub use server::{ConnInfo, DropConnection, Endpoint, RunningSimulator, SimHandle, Simulator};
pub use state::{
    DpsInstance, EnrollmentKind, HubInstance, LinkedHub, Precondition, Right, SimState,
};
pub use throttle::{ThrottlePatch, ThrottleSettings};

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
