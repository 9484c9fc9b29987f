//! IoT Hub import/export jobs (`jobs` operations of `iothub-service-2021-04-12.json`, azure-specs README
//! §6): create, get, list, cancel, and waiting for a job to end.
//!
//! One import/export job runs per hub at a time: a create while another is active fails with
//! [`AzureError::JobQuotaExceeded`] ([`AzureError::is_job_quota_exceeded`]), which is retryable later.

use std::time::Duration;

use http::{HeaderMap, Method};

use super::blob::ContainerSasUrl;
use super::error::AzureError;
use super::hub::HubClient;
use super::models::JobProperties;
use super::transport::Body;

/// The blob an import job writes its per-device refusals to, at the output container's root.
pub const IMPORT_ERRORS_BLOB: &str = "importErrors.log";

impl HubClient {
    /// `POST /jobs/create`: starts an import or export job; the hub answers with the job (`enqueued`).
    pub async fn create_import_export_job(
        &self,
        job: &JobProperties,
    ) -> Result<JobProperties, AzureError> {
        if job.kind.is_none() {
            return Err(AzureError::InvalidRequest(
                "an import/export job needs a type (export or import)".into(),
            ));
        }
        self.endpoint()
            .send(
                Method::POST,
                &["jobs", "create"],
                HeaderMap::new(),
                Body::json(job)?,
            )
            .await?
            .json()
    }

    /// Starts an export of every identity, keys included unless `exclude_keys`, to `blob` (None:
    /// `devices.txt`) in `output`.
    pub async fn start_export(
        &self,
        output: &ContainerSasUrl,
        blob: Option<&str>,
        exclude_keys: bool,
    ) -> Result<JobProperties, AzureError> {
        self.create_import_export_job(&JobProperties::export(output.expose(), blob, exclude_keys))
            .await
    }

    /// Starts an import of `input_blob` (None: `devices.txt`) from `input`; refusals go to
    /// `importErrors.log` in `output`.
    pub async fn start_import(
        &self,
        input: &ContainerSasUrl,
        input_blob: Option<&str>,
        output: &ContainerSasUrl,
    ) -> Result<JobProperties, AzureError> {
        self.create_import_export_job(&JobProperties::import(
            input.expose(),
            input_blob,
            output.expose(),
            None,
        ))
        .await
    }

    /// `GET /jobs/{id}`.
    pub async fn get_job(&self, job_id: &str) -> Result<JobProperties, AzureError> {
        self.endpoint()
            .send(Method::GET, &["jobs", job_id], HeaderMap::new(), Body::None)
            .await?
            .json()
    }

    /// `GET /jobs`: the hub's recent import/export jobs.
    pub async fn list_jobs(&self) -> Result<Vec<JobProperties>, AzureError> {
        self.endpoint()
            .send(Method::GET, &["jobs"], HeaderMap::new(), Body::None)
            .await?
            .json()
    }

    /// `DELETE /jobs/{id}`: cancels an enqueued or running job (200 or 204). A job that already ended
    /// keeps its status; read it with [`HubClient::get_job`].
    pub async fn cancel_job(&self, job_id: &str) -> Result<(), AzureError> {
        self.endpoint()
            .send(
                Method::DELETE,
                &["jobs", job_id],
                HeaderMap::new(),
                Body::None,
            )
            .await?;
        Ok(())
    }

    /// Polls `GET /jobs/{id}` every `poll` until the job is no longer active, then answers it (whatever
    /// it ended as: completed, failed or cancelled). A retryable read error is retried at the next poll
    /// (after the `Retry-After` of a 429 if longer); any other ends the wait. A job that never ends needs
    /// the caller's own timeout around this.
    pub async fn wait_for_job(
        &self,
        job_id: &str,
        poll: Duration,
    ) -> Result<JobProperties, AzureError> {
        loop {
            let pause = match self.get_job(job_id).await {
                Ok(job) if !job.status().is_active() => return Ok(job),
                Ok(_) => poll,
                Err(e) if e.is_retryable() => {
                    tracing::debug!(hub = %self.host_name(), job_id, error = %e, "job status read failed; retrying");
                    e.retry_after().map_or(poll, |after| after.max(poll))
                }
                Err(e) => return Err(e),
            };
            tokio::time::sleep(pause).await;
        }
    }
}
