//! The IoT Hub identity-registry quota by tier (azure-specs README §6): what pacing and estimates use.

use std::str::FromStr;

/// IoT Hub pricing tier, which sets the identity-registry quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HubTier {
    /// Free.
    F1,
    /// Basic 1.
    B1,
    /// Basic 2.
    B2,
    /// Basic 3.
    B3,
    /// Standard 1.
    S1,
    /// Standard 2.
    S2,
    /// Standard 3.
    S3,
}

impl HubTier {
    /// Identity-registry operations per minute per unit (azure-specs README §6).
    pub fn registry_ops_per_minute_per_unit(self) -> u32 {
        match self {
            Self::B3 | Self::S3 => 5_000,
            Self::F1 | Self::B1 | Self::B2 | Self::S1 | Self::S2 => 100,
        }
    }
}

/// A tier name that is not one of Azure's.
#[derive(Debug, thiserror::Error)]
#[error("unknown IoT Hub tier {0:?} (expected F1, B1, B2, B3, S1, S2 or S3)")]
pub struct UnknownTier(pub String);

impl FromStr for HubTier {
    type Err = UnknownTier;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_uppercase().as_str() {
            "F1" => Self::F1,
            "B1" => Self::B1,
            "B2" => Self::B2,
            "B3" => Self::B3,
            "S1" => Self::S1,
            "S2" => Self::S2,
            "S3" => Self::S3,
            other => return Err(UnknownTier(other.to_string())),
        })
    }
}
