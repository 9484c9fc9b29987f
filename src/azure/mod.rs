//! Azure DPS and IoT Hub clients: connection strings, SAS tokens, wire models, one classified error type, and
//! the per-instance client registry built from configuration; the hub's import/export jobs, the small Blob
//! Storage client and SAS minting they need, and where each hub's job blobs go.
pub mod auth;
pub mod blob;
#[cfg(test)]
mod client_tests;
pub mod clients;
pub mod config;
pub mod connection_string;
pub mod dps;
pub mod error;
pub mod hub;
pub mod hub_jobs;
pub mod jobs_storage;
pub mod models;
pub mod quota;
pub mod sas;
pub mod secret;
pub mod storage_account;
pub mod transport;

pub use crate::domain::clock::{Clock, ManualClock, SystemClock};
pub use auth::SasTokenProvider;
pub use clients::AzureClients;
pub use config::{
    AzureConfig, ConfigError, DEFAULT_JOBS_DEVICES_PER_SECOND, DpsInstanceConfig, HubConfig,
    StorageConfig,
};
pub use quota::HubTier;

pub use blob::{BlobContainerClient, BlobError, ContainerSasUrl};
pub use connection_string::{ConnectionString, ConnectionStringError};
pub use dps::{DpsClient, StatusSet};
pub use error::{AzureError, ErrorAudit, ErrorDetails};
pub use hub::{HubClient, IfMatch};
pub use jobs_storage::JobsStorage;
pub use secret::Secret;
pub use storage_account::{SasPermissions, StorageAccount};
pub use transport::ClientOptions;
