//! IoT Hub import/export jobs (`JobProperties` of `iothub-service-2021-04-12.json`, azure-specs README §6).

use serde::{Deserialize, Serialize};

use super::Extra;
use crate::azure::blob::redact_sas;

/// `type` of a job. The swagger lists scheduled-job kinds too; this client starts only the first two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JobType {
    /// Writes every identity to `devices.txt` (or `outputBlobName`) in the output container.
    Export,
    /// Applies each line of the input blob by its `importMode`; refusals go to `importErrors.log`.
    Import,
    /// Any other kind the hub reports.
    #[serde(other)]
    Unknown,
}

/// `status` of a job, as the hub reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JobStatus {
    /// Accepted, waiting to run.
    Enqueued,
    /// Reading or writing devices.
    Running,
    /// Done; per-device import refusals are in the error log, not here.
    Completed,
    /// Stopped; see `failureReason`.
    Failed,
    /// Stopped by a cancel.
    Cancelled,
    /// Scheduled (scheduled jobs only).
    Scheduled,
    /// Queued (scheduled jobs only).
    Queued,
    /// A status this client does not know (the swagger's own `unknown` included).
    #[serde(other)]
    Unknown,
}

impl JobStatus {
    /// Whether the job may still change (and, for import/export, still holds the hub's one job slot).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Self::Enqueued | Self::Running | Self::Scheduled | Self::Queued
        )
    }
}

/// A job as sent to `POST /jobs/create` and read back from `GET /jobs[/{id}]`. The container URIs carry
/// SAS signatures: `Debug` redacts them, and [`JobProperties::redacted`] gives a copy safe to record.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobProperties {
    /// Job id (system generated; absent in a create request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// `export` or `import`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<JobType>,
    /// Status (system generated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<JobStatus>,
    /// Percentage done (system generated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<i32>,
    /// Import: SAS URI of the container holding the input blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_blob_container_uri: Option<String>,
    /// Import: the input blob (default `devices.txt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_blob_name: Option<String>,
    /// SAS URI of the container the job writes to (export output, import error log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_blob_container_uri: Option<String>,
    /// The blob written (export default `devices.txt`, import default `importErrors.log`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_blob_name: Option<String>,
    /// Export: write keys as null (false: keys are exported, which an import needs to keep them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_keys_in_export: Option<bool>,
    /// `keyBased` (SAS URIs) or `identityBased`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_authentication_type: Option<String>,
    /// Why the job failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// When the job started (system generated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time_utc: Option<String>,
    /// When the job ended (system generated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time_utc: Option<String>,
    /// Fields not modelled here (`identity`, `includeConfigurations`, …).
    #[serde(flatten)]
    pub extra: Extra,
}

impl JobProperties {
    /// An export request: every identity, keys included unless `exclude_keys`, to `output_blob_name`
    /// (None: `devices.txt`) in the container `output_container_uri` (a SAS URI with write permission).
    pub fn export(
        output_container_uri: impl Into<String>,
        output_blob_name: Option<&str>,
        exclude_keys: bool,
    ) -> Self {
        Self {
            kind: Some(JobType::Export),
            output_blob_container_uri: Some(output_container_uri.into()),
            output_blob_name: output_blob_name.map(str::to_string),
            exclude_keys_in_export: Some(exclude_keys),
            storage_authentication_type: Some("keyBased".into()),
            ..Self::default()
        }
    }

    /// An import request: `input_blob_name` (None: `devices.txt`) from `input_container_uri` (read), the
    /// error log to `output_blob_name` (None: `importErrors.log`) in `output_container_uri` (write).
    pub fn import(
        input_container_uri: impl Into<String>,
        input_blob_name: Option<&str>,
        output_container_uri: impl Into<String>,
        output_blob_name: Option<&str>,
    ) -> Self {
        Self {
            kind: Some(JobType::Import),
            input_blob_container_uri: Some(input_container_uri.into()),
            input_blob_name: input_blob_name.map(str::to_string),
            output_blob_container_uri: Some(output_container_uri.into()),
            output_blob_name: output_blob_name.map(str::to_string),
            storage_authentication_type: Some("keyBased".into()),
            ..Self::default()
        }
    }

    /// The status, `Unknown` when the hub sent none.
    pub fn status(&self) -> JobStatus {
        self.status.unwrap_or(JobStatus::Unknown)
    }

    /// A copy whose container URIs show `sig=***`: safe for logs, events and API answers.
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        for uri in [
            &mut copy.input_blob_container_uri,
            &mut copy.output_blob_container_uri,
        ]
        .into_iter()
        .flatten()
        {
            *uri = redact_sas(uri);
        }
        copy
    }
}

impl std::fmt::Debug for JobProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self.redacted();
        f.debug_struct("JobProperties")
            .field("job_id", &shown.job_id)
            .field("kind", &shown.kind)
            .field("status", &shown.status)
            .field("progress", &shown.progress)
            .field("input_blob_container_uri", &shown.input_blob_container_uri)
            .field("input_blob_name", &shown.input_blob_name)
            .field(
                "output_blob_container_uri",
                &shown.output_blob_container_uri,
            )
            .field("output_blob_name", &shown.output_blob_name)
            .field("exclude_keys_in_export", &shown.exclude_keys_in_export)
            .field("failure_reason", &shown.failure_reason)
            .field("start_time_utc", &shown.start_time_utc)
            .field("end_time_utc", &shown.end_time_utc)
            .finish_non_exhaustive()
    }
}

/// One line of an import job's `importErrors.log`: a device the hub refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportErrorLine {
    /// The device (absent for a line of the input that was not JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The hub's numeric code (`412001` ETag mismatch, `404001` missing, `409001` exists, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<serde_json::Value>,
    /// The hub's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_status: Option<String>,
    /// Fields not modelled here.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ImportErrorLine {
    /// The error code as a number (the hub writes a number; some tools write its digits as a string).
    pub fn code(&self) -> Option<i64> {
        match self.error_code.as_ref()? {
            serde_json::Value::Number(n) => n.as_i64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// Whether the device was refused because its ETag changed since the export (412001).
    pub fn is_etag_mismatch(&self) -> bool {
        self.code() == Some(412_001)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn job_wire_names_follow_the_swagger_and_keep_unknown_fields() {
        let wire = json!({
            "jobId": "6f7c1d2e-0000-4000-8000-000000000001", "type": "import", "status": "running",
            "progress": 40, "inputBlobContainerUri": "https://a.blob.core.windows.net/in?sv=1&sig=SECRET1",
            "inputBlobName": "devices.txt", "outputBlobContainerUri": "https://a.blob.core.windows.net/out?sv=1&sig=SECRET2",
            "outputBlobName": "importErrors.log", "excludeKeysInExport": false, "storageAuthenticationType": "keyBased",
            "startTimeUtc": "2026-11-28T05:00:00Z", "includeConfigurations": false
        });
        let job: JobProperties = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(job.kind, Some(JobType::Import));
        assert_eq!(job.status(), JobStatus::Running);
        assert!(job.status().is_active());
        assert_eq!(job.progress, Some(40));
        assert_eq!(job.extra["includeConfigurations"], json!(false));
        assert_eq!(serde_json::to_value(&job).unwrap(), wire);
        let debug = format!("{job:?}");
        assert!(
            !debug.contains("SECRET1") && !debug.contains("SECRET2"),
            "{debug}"
        );
        let shown = job.redacted();
        assert_eq!(
            shown.input_blob_container_uri.as_deref(),
            Some("https://a.blob.core.windows.net/in?sv=1&sig=***")
        );
    }

    #[test]
    fn unknown_kinds_and_statuses_do_not_fail_the_read() {
        let job: JobProperties = serde_json::from_value(
            json!({"jobId": "j", "type": "failoverDataCopy", "status": "somethingNew"}),
        )
        .unwrap();
        assert_eq!(job.kind, Some(JobType::Unknown));
        assert_eq!(job.status(), JobStatus::Unknown);
        assert!(!job.status().is_active());
        for (s, active) in [
            ("enqueued", true),
            ("completed", false),
            ("failed", false),
            ("cancelled", false),
        ] {
            let j: JobProperties = serde_json::from_value(json!({"status": s})).unwrap();
            assert_eq!(j.status().is_active(), active, "{s}");
        }
    }

    #[test]
    fn create_requests() {
        let export = JobProperties::export("https://a/c?sig=s", None, false);
        assert_eq!(
            serde_json::to_value(&export).unwrap(),
            json!({"type": "export", "outputBlobContainerUri": "https://a/c?sig=s",
                "excludeKeysInExport": false, "storageAuthenticationType": "keyBased"})
        );
        let import = JobProperties::import(
            "https://a/in?sig=s",
            Some("disable.txt"),
            "https://a/out?sig=t",
            None,
        );
        assert_eq!(
            serde_json::to_value(&import).unwrap(),
            json!({"type": "import", "inputBlobContainerUri": "https://a/in?sig=s", "inputBlobName": "disable.txt",
                "outputBlobContainerUri": "https://a/out?sig=t", "storageAuthenticationType": "keyBased"})
        );
    }

    #[test]
    fn import_error_lines() {
        let l: ImportErrorLine = serde_json::from_str(
            r#"{"deviceId":"d1","errorCode":412001,"errorStatus":"ETag mismatch"}"#,
        )
        .unwrap();
        assert!(l.is_etag_mismatch());
        let l: ImportErrorLine =
            serde_json::from_str(r#"{"errorCode":"400012","errorStatus":"not JSON"}"#).unwrap();
        assert_eq!((l.device_id.as_deref(), l.code()), (None, Some(400_012)));
    }
}
