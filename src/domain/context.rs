//! What a job's resolve step found out about its target, kept with the job for the steps after it.

use serde::{Deserialize, Serialize};

/// The job's context: written by the resolve step, read by revoke (which enrollment blocks a group
/// device) and by every device's registry step (which hubs to look in).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobContext {
    /// The enrollment's or group's attestation (`x509`, `symmetricKey`, `tpm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<String>,
    /// The enrollment's or group's provisioning status when the job read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_status: Option<String>,
    /// Subject of a group's primary signing certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_subject: Option<String>,
    /// Issuer of a group's primary signing certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_issuer: Option<String>,
    /// The hub the device's registration record names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<String>,
    /// The device id the registration record names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Group device: the group's attestation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_attestation: Option<String>,
    /// Group device: the attestation of the disabled enrollment that blocks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_attestation: Option<String>,
    /// Group device: a disabled enrollment already blocked it before the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub already_blocked: Option<bool>,
    /// Hubs the enrollment or group can assign to (its `iotHubs`, else every configured hub): where a
    /// device without a recorded hub is looked for.
    #[serde(default)]
    pub linked_hubs: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_stored_before_the_type_existed_still_reads() {
        // Written by the resolve step's JSON before the context had a type: nulls and all.
        let stored = r#"{"attestation":"x509","provisioning_status":"enabled","assigned_hub":null,
                         "device_id":null,"linked_hubs":["a.azure-devices.net"]}"#;
        let c: JobContext = serde_json::from_str(stored).unwrap();
        assert_eq!(c.attestation.as_deref(), Some("x509"));
        assert_eq!(c.assigned_hub, None);
        assert_eq!(c.linked_hubs, vec!["a.azure-devices.net".to_string()]);
        let round: JobContext = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(round, c);
    }
}
