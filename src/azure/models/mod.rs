//! Wire types of the DPS service API (2021-10-01) and the IoT Hub registry API (2021-04-12).
//!
//! Field names and casing follow the swagger files in `azure-specs/`. PUT is a full replace on both services,
//! so resource types keep every field they do not model in `extra` (serde `flatten`): GET → modify → PUT sends
//! back everything the service returned. Absent optional fields stay absent.

pub mod dps;
pub mod hub;
pub mod jobs;

pub use dps::*;
pub use hub::*;
pub use jobs::*;

use serde::{Deserialize, Serialize};

/// JSON fields a type does not model, kept so they round-trip.
pub type Extra = serde_json::Map<String, serde_json::Value>;

/// Body of the query operations: `{"query": "SELECT * …"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuerySpecification {
    /// The query text.
    pub query: String,
}

impl QuerySpecification {
    /// A query with the given text.
    pub fn new(query: impl Into<String>) -> Self {
        Self {
            query: query.into(),
        }
    }
}

/// `capabilities` of an enrollment (DPS) or device (hub).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCapabilities {
    /// Whether the device is an IoT Edge device.
    #[serde(default)]
    pub iot_edge: bool,
    /// Fields not modelled here.
    #[serde(flatten)]
    pub extra: Extra,
}
