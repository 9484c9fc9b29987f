//! IoT Hub import/export jobs (service API 2021-04-12 `jobs` operations, azure-specs README §6):
//! `POST /jobs/create`, `GET /jobs`, `GET /jobs/{id}`, `DELETE /jobs/{id}`.
//!
//! A job reads and writes blobs in the containers its SAS URIs name, over HTTP, through
//! [`crate::blob`]: an export writes every identity of the hub to `devices.txt` (or `outputBlobName`)
//! in blocks; an import reads `devices.txt` (or `inputBlobName`) line by line, applies each
//! `ExportImportDevice` with its `importMode`, and writes one line per refused device to
//! `importErrors.log` in the output container (`{"deviceId", "errorCode": <number>, "errorStatus"}`,
//! the shape Azure writes; a line that is not JSON gets `errorCode` 400012 and no `deviceId`).
//! The log is always written, empty when nothing failed.
//!
//! A job is `enqueued` for [`JobsConfig::queue_seconds`], then `running` at
//! [`JobsConfig::devices_per_second`] (both in quota time: `time_scale` applies), then `completed`,
//! `failed` (with `failureReason` naming the blob and what the Blob service answered: an expired
//! SAS, a missing container or blob, an unwritable blob) or `cancelled` (`DELETE /jobs/{id}`).
//!
//! Choices where Azure's documentation is silent (README, "Import/export jobs"):
//! - One import/export job may be active (enqueued or running) per hub (README §6). A second create is
//!   refused with **403** and `iothub-errorcode: JobQuotaExceeded` (403003): the status is what
//!   Azure answers (the C# SDK maps a 403 from `/jobs/create` to `JobQuotaExceededException`, which
//!   users report for a second job while one runs: azure-iot-sdk-csharp #608); the error name and
//!   code are the SDK's, which Azure may not send exactly.
//! - An unknown job id is 404 `JobNotFound` (404002, the C# SDK's name). Cancel answers 204, also for
//!   a job that already ended (which keeps its status).
//! - `statusMessage` is not sent: it belongs to `JobResponse` (scheduled jobs), not to the
//!   `JobProperties` of import/export jobs in the swagger.
//! - For an import, `outputBlobName` (when given) names the error log instead of `importErrors.log`.
//! - `storageAuthenticationType: identityBased` is refused (400): the simulator has no managed identity.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::blob::{BlobClient, BlobError, BlobLines, BlockWriter, ContainerUrl};
use super::config::JobsConfig;
use super::server::SimHandle;
use super::state::{HubInstance, HubOpError, timestamp};

/// Blob an export writes and an import reads by default.
pub const DEVICES_BLOB: &str = "devices.txt";
/// Blob an import writes its per-device errors to by default.
pub const IMPORT_ERRORS_BLOB: &str = "importErrors.log";

/// Devices read from the registry per lock of the hub during an export.
const EXPORT_PAGE: usize = 100;

/// `type` of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JobKind {
    /// Writes the registry to a blob.
    Export,
    /// Applies a blob of `ExportImportDevice` lines to the registry.
    Import,
}

/// `status` of a job, as Azure reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JobStatus {
    /// Accepted, waiting to run.
    Enqueued,
    /// Reading or writing devices.
    Running,
    /// Done (per-device import failures are in the error log, not here).
    Completed,
    /// Stopped by a blob error; see `failureReason`.
    Failed,
    /// Stopped by `DELETE /jobs/{id}`.
    Cancelled,
}

impl JobStatus {
    /// Whether the job still counts against the one-active-job rule.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Enqueued | Self::Running)
    }
}

/// A job as the API shows it (`JobProperties`; absent fields are not sent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobProperties {
    /// Job id (a GUID).
    pub job_id: String,
    /// When the job was accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time_utc: Option<String>,
    /// When it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time_utc: Option<String>,
    /// `export` or `import`.
    #[serde(rename = "type")]
    pub kind: JobKind,
    /// Current status.
    pub status: JobStatus,
    /// Percentage done.
    pub progress: u32,
    /// Input container SAS URI (import).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_blob_container_uri: Option<String>,
    /// Input blob name, as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_blob_name: Option<String>,
    /// Output container SAS URI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_blob_container_uri: Option<String>,
    /// Output blob name, as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_blob_name: Option<String>,
    /// Export: keys written as null.
    pub exclude_keys_in_export: bool,
    /// `keyBased` (the only kind simulated), as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_authentication_type: Option<String>,
    /// Why the job failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
}

/// One job: what the API shows and what stops it.
#[derive(Debug)]
pub struct Job {
    props: Mutex<JobProperties>,
    cancel: CancellationToken,
}

impl Job {
    /// The job as the API shows it now.
    pub fn properties(&self) -> JobProperties {
        self.props.lock().clone()
    }

    /// Changes the job unless it has ended already (a cancel must not be overwritten by the runner).
    fn update(&self, f: impl FnOnce(&mut JobProperties)) -> bool {
        let mut p = self.props.lock();
        if !p.status.is_active() {
            return false;
        }
        f(&mut p);
        true
    }
}

/// Every hub's jobs and the live settings.
#[derive(Debug)]
pub struct JobsState {
    settings: Mutex<JobsConfig>,
    hubs: Mutex<BTreeMap<String, Vec<Arc<Job>>>>,
    blob: BlobClient,
}

impl JobsState {
    /// No jobs yet; `settings` from the configuration.
    pub fn new(settings: JobsConfig) -> Result<Self, reqwest::Error> {
        Ok(Self {
            settings: Mutex::new(settings),
            hubs: Mutex::new(BTreeMap::new()),
            blob: BlobClient::new()?,
        })
    }

    /// Current settings.
    pub fn settings(&self) -> JobsConfig {
        self.settings.lock().clone()
    }

    /// Merges a partial settings object (`PATCH /_sim/jobs`); refuses unknown fields or bad values.
    pub fn patch(&self, patch: &Value) -> Result<JobsConfig, String> {
        let mut cur = self.settings.lock();
        let mut v = serde_json::to_value(&*cur).map_err(|e| e.to_string())?;
        let (Some(obj), Some(p)) = (v.as_object_mut(), patch.as_object()) else {
            return Err("the body must be a JSON object".into());
        };
        for (k, val) in p {
            if !obj.contains_key(k) {
                return Err(format!("unknown field {k}"));
            }
            obj.insert(k.clone(), val.clone());
        }
        let next: JobsConfig = serde_json::from_value(v).map_err(|e| e.to_string())?;
        if !(next.devices_per_second >= 0.0 && next.queue_seconds >= 0.0) {
            return Err("devices_per_second and queue_seconds must be ≥ 0".into());
        }
        *cur = next.clone();
        Ok(next)
    }

    /// The jobs of `hub`, oldest first.
    pub fn list(&self, hub: &str) -> Vec<JobProperties> {
        self.hubs
            .lock()
            .get(hub)
            .map(|jobs| jobs.iter().map(|j| j.properties()).collect())
            .unwrap_or_default()
    }

    /// One job of `hub`.
    pub fn get(&self, hub: &str, id: &str) -> Option<Arc<Job>> {
        self.hubs
            .lock()
            .get(hub)
            .and_then(|jobs| jobs.iter().find(|j| j.props.lock().job_id == id).cloned())
    }

    /// Every hub's jobs (admin API).
    pub fn snapshot(&self) -> Value {
        let hubs = self.hubs.lock();
        let map: serde_json::Map<String, Value> = hubs
            .iter()
            .map(|(h, jobs)| {
                (
                    h.clone(),
                    json!(jobs.iter().map(|j| j.properties()).collect::<Vec<_>>()),
                )
            })
            .collect();
        json!({"settings": self.settings(), "jobs": map})
    }

    /// Cancels every job and forgets them all (`DELETE /_sim/state`).
    pub fn clear(&self) {
        let mut hubs = self.hubs.lock();
        for j in hubs.values().flatten() {
            j.cancel.cancel();
        }
        hubs.clear();
    }

    /// Adds `props` as a new job of `hub` unless one is active; drops the oldest finished jobs
    /// beyond the history size.
    fn insert(&self, hub: &str, props: JobProperties) -> Result<Arc<Job>, HubOpError> {
        let history = self.settings.lock().history;
        let mut hubs = self.hubs.lock();
        let jobs = hubs.entry(hub.to_string()).or_default();
        if jobs.iter().any(|j| j.props.lock().status.is_active()) {
            return Err(quota_exceeded());
        }
        let job = Arc::new(Job {
            props: Mutex::new(props),
            cancel: CancellationToken::new(),
        });
        jobs.push(job.clone());
        while jobs.len() > history.max(1) {
            match jobs.iter().position(|j| !j.props.lock().status.is_active()) {
                Some(i) => {
                    jobs.remove(i);
                }
                None => break,
            }
        }
        Ok(job)
    }
}

/// 403 JobQuotaExceeded: another import/export job is active on the hub.
fn quota_exceeded() -> HubOpError {
    HubOpError {
        status: 403,
        name: "JobQuotaExceeded",
        code: 403_003,
        message: "Job quota has been exceeded: only one import or export job can be active on a hub at a time".into(),
    }
}

/// 404 JobNotFound.
pub fn job_not_found(id: &str) -> HubOpError {
    HubOpError {
        status: 404,
        name: "JobNotFound",
        code: 404_002,
        message: format!("Job with id '{id}' not found"),
    }
}

/// What `POST /jobs/create` accepts (`JobProperties`; system fields are ignored, as the swagger says).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateRequest {
    #[serde(rename = "type")]
    kind: Option<String>,
    input_blob_container_uri: Option<String>,
    input_blob_name: Option<String>,
    output_blob_container_uri: Option<String>,
    output_blob_name: Option<String>,
    // The Node SDK sends this as whatever the caller passed: accept a boolean or nothing.
    exclude_keys_in_export: Option<Value>,
    storage_authentication_type: Option<String>,
}

/// The `type` of a create body, for the rights check before the body is validated.
pub fn requested_kind(body: &[u8]) -> Option<JobKind> {
    let v: Value = serde_json::from_slice(body).ok()?;
    match v.get("type")?.as_str()?.to_ascii_lowercase().as_str() {
        "export" => Some(JobKind::Export),
        "import" => Some(JobKind::Import),
        _ => None,
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// `POST /jobs/create`: validates, registers the job (one active per hub) and starts it.
pub fn create(
    handle: &SimHandle,
    hub: &Arc<HubInstance>,
    body: &[u8],
) -> Result<JobProperties, HubOpError> {
    let req: CreateRequest = serde_json::from_slice(body).map_err(|e| HubOpError {
        status: 400,
        name: "IotHubFormatError",
        code: 400_006,
        message: format!("The job request is not valid JobProperties JSON: {e}"),
    })?;
    let kind = match req.kind.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("export") => JobKind::Export,
        Some("import") => JobKind::Import,
        Some(other) => {
            return Err(HubOpError::invalid(format!(
                "Job type '{other}' is not an import/export job type (export, import)"
            )));
        }
        None => return Err(HubOpError::null("The job type is required")),
    };
    if req
        .storage_authentication_type
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("identityBased"))
    {
        return Err(HubOpError::invalid(
            "storageAuthenticationType identityBased is not simulated: give SAS URIs (keyBased)",
        ));
    }
    let exclude_keys = match req.exclude_keys_in_export {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(other) => {
            return Err(HubOpError::invalid(format!(
                "excludeKeysInExport must be a boolean, not {other}"
            )));
        }
    };
    let input = non_empty(req.input_blob_container_uri);
    let output = non_empty(req.output_blob_container_uri);
    let check = |name: &str, uri: &Option<String>, needed: bool| -> Result<(), HubOpError> {
        match uri {
            None if needed => Err(HubOpError::null(format!("{name} is required"))),
            None => Ok(()),
            Some(u) => ContainerUrl::parse(u)
                .map(drop)
                .map_err(|e| HubOpError::invalid(format!("{name}: {e}"))),
        }
    };
    check("inputBlobContainerUri", &input, kind == JobKind::Import)?;
    check("outputBlobContainerUri", &output, true)?;
    let props = JobProperties {
        job_id: handle.state().ids().uuid(),
        start_time_utc: Some(timestamp(handle.0.clock.now_utc())),
        end_time_utc: None,
        kind,
        status: JobStatus::Enqueued,
        progress: 0,
        input_blob_container_uri: input,
        input_blob_name: non_empty(req.input_blob_name),
        output_blob_container_uri: output,
        output_blob_name: non_empty(req.output_blob_name),
        exclude_keys_in_export: exclude_keys,
        storage_authentication_type: req.storage_authentication_type,
        failure_reason: None,
    };
    let job = handle.0.jobs.insert(&hub.host, props)?;
    let shown = job.properties();
    tokio::spawn(run(handle.clone(), hub.clone(), job));
    Ok(shown)
}

/// `DELETE /jobs/{id}`: an active job ends `cancelled` at once; its runner stops at its next step.
pub fn cancel(handle: &SimHandle, hub: &str, id: &str) -> Result<(), HubOpError> {
    let job = handle
        .0
        .jobs
        .get(hub, id)
        .ok_or_else(|| job_not_found(id))?;
    let now = timestamp(handle.0.clock.now_utc());
    job.update(|p| {
        p.status = JobStatus::Cancelled;
        p.end_time_utc = Some(now);
    });
    job.cancel.cancel();
    Ok(())
}

/// Why a job stopped early.
enum Stop {
    Cancelled,
    Failed(String),
}

fn blob_failure(what: &str, e: &BlobError) -> Stop {
    Stop::Failed(format!("{what}: {e}"))
}

/// Paces a job at the configured devices per second of quota time.
struct Pacer {
    start: Instant,
    done: u64,
}

impl Pacer {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            done: 0,
        }
    }

    /// Counts `n` more devices and waits until the throughput allows them; stops on cancel.
    async fn tick(&mut self, handle: &SimHandle, job: &Job, n: u64) -> Result<(), Stop> {
        self.done += n;
        let per_second = handle.0.jobs.settings().devices_per_second;
        let scale = handle.0.throttle.settings().time_scale;
        let wall_rate = per_second * scale;
        if wall_rate > 0.0 && wall_rate.is_finite() {
            let due = Duration::from_secs_f64(self.done as f64 / wall_rate);
            let elapsed = self.start.elapsed();
            // Waits shorter than a millisecond are left to accumulate: sleeping that little only burns CPU.
            if due > elapsed + Duration::from_millis(1) {
                wait(job, due - elapsed).await?;
            }
        }
        if job.cancel.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        Ok(())
    }
}

async fn wait(job: &Job, d: Duration) -> Result<(), Stop> {
    tokio::select! {
        () = tokio::time::sleep(d) => Ok(()),
        () = job.cancel.cancelled() => Err(Stop::Cancelled),
    }
}

async fn run(handle: SimHandle, hub: Arc<HubInstance>, job: Arc<Job>) {
    let queue = handle.0.jobs.settings().queue_seconds;
    let scale = handle.0.throttle.settings().time_scale.max(1e-9);
    let wall = Duration::from_secs_f64((queue / scale).clamp(0.0, 1e9));
    let mut outcome = wait(&job, wall).await;
    if outcome.is_ok() {
        job.update(|p| p.status = JobStatus::Running);
        let props = job.properties();
        outcome = match props.kind {
            JobKind::Export => export(&handle, &hub, &job, &props).await,
            JobKind::Import => import(&handle, &hub, &job, &props).await,
        };
    }
    let now = timestamp(handle.0.clock.now_utc());
    job.update(|p| {
        p.end_time_utc = Some(now);
        match outcome {
            Ok(()) => {
                p.status = JobStatus::Completed;
                p.progress = 100;
            }
            Err(Stop::Cancelled) => p.status = JobStatus::Cancelled,
            Err(Stop::Failed(reason)) => {
                tracing::debug!(job = %p.job_id, %reason, "simulated import/export job failed");
                p.status = JobStatus::Failed;
                p.failure_reason = Some(reason);
            }
        }
    });
}

fn set_progress(job: &Job, done: u64, total: u64) {
    // 100 is for `completed` only.
    let pct = done
        .saturating_mul(100)
        .checked_div(total)
        .map_or(0, |p| p.min(99) as u32);
    job.update(|p| p.progress = pct);
}

fn container(uri: Option<&String>, name: &str) -> Result<ContainerUrl, Stop> {
    let uri = uri.ok_or_else(|| Stop::Failed(format!("{name} is missing")))?;
    ContainerUrl::parse(uri).map_err(|e| Stop::Failed(format!("{name}: {e}")))
}

async fn export(
    handle: &SimHandle,
    hub: &HubInstance,
    job: &Job,
    props: &JobProperties,
) -> Result<(), Stop> {
    let out = container(
        props.output_blob_container_uri.as_ref(),
        "outputBlobContainerUri",
    )?;
    let name = props.output_blob_name.as_deref().unwrap_or(DEVICES_BLOB);
    let settings = handle.0.jobs.settings();
    let what = format!("Cannot write the export blob {}", out.display(name));
    let mut writer = BlockWriter::new(
        handle.0.jobs.blob.clone(),
        out,
        name,
        settings.block_size,
        "text/plain; charset=utf-8",
    );
    let total = hub.device_count() as u64;
    let mut pacer = Pacer::new();
    let mut after: Option<String> = None;
    loop {
        let (lines, last) =
            hub.export_page(after.as_deref(), EXPORT_PAGE, props.exclude_keys_in_export);
        if lines.is_empty() {
            break;
        }
        for l in &lines {
            writer
                .write_line(l)
                .await
                .map_err(|e| blob_failure(&what, &e))?;
            pacer.tick(handle, job, 1).await?;
            set_progress(job, pacer.done, total.max(pacer.done));
        }
        after = last;
    }
    writer.finish().await.map_err(|e| blob_failure(&what, &e))
}

async fn import(
    handle: &SimHandle,
    hub: &HubInstance,
    job: &Job,
    props: &JobProperties,
) -> Result<(), Stop> {
    let input = container(
        props.input_blob_container_uri.as_ref(),
        "inputBlobContainerUri",
    )?;
    let out = container(
        props.output_blob_container_uri.as_ref(),
        "outputBlobContainerUri",
    )?;
    let in_name = props.input_blob_name.as_deref().unwrap_or(DEVICES_BLOB);
    let err_name = props
        .output_blob_name
        .as_deref()
        .unwrap_or(IMPORT_ERRORS_BLOB);
    let read_what = format!("Cannot read the import blob {}", input.display(in_name));
    let write_what = format!(
        "Cannot write the import error log {}",
        out.display(err_name)
    );
    let settings = handle.0.jobs.settings();
    let client = handle.0.jobs.blob.clone();
    let mut lines = BlobLines::new(client.clone(), input, in_name);
    let mut errors = BlockWriter::new(
        client,
        out,
        err_name,
        settings.block_size,
        "text/plain; charset=utf-8",
    );
    let mut pacer = Pacer::new();
    let mut consumed = 0u64;
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| blob_failure(&read_what, &e))?
    {
        consumed += line.len() as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let refusal = match serde_json::from_str::<Value>(&line) {
            Err(e) => Some(json!({
                "errorCode": 400_012,
                "errorStatus": format!("Invalid device format in line: {line}. {e}"),
            })),
            Ok(item) => hub.import_device(&item).err().map(|e| {
                json!({
                    "deviceId": item.get("id").cloned().unwrap_or(Value::Null),
                    "errorCode": e.code,
                    "errorStatus": e.message,
                })
            }),
        };
        if let Some(r) = refusal {
            errors
                .write_line(&r.to_string())
                .await
                .map_err(|e| blob_failure(&write_what, &e))?;
        }
        pacer.tick(handle, job, 1).await?;
        let (_, total) = lines.position();
        set_progress(job, consumed, total.unwrap_or(0).max(consumed));
    }
    errors
        .finish()
        .await
        .map_err(|e| blob_failure(&write_what, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(status: JobStatus) -> JobProperties {
        JobProperties {
            job_id: "j".into(),
            start_time_utc: None,
            end_time_utc: None,
            kind: JobKind::Export,
            status,
            progress: 0,
            input_blob_container_uri: None,
            input_blob_name: None,
            output_blob_container_uri: Some("http://x/c".into()),
            output_blob_name: None,
            exclude_keys_in_export: false,
            storage_authentication_type: None,
            failure_reason: None,
        }
    }

    #[test]
    fn one_active_job_per_hub_and_bounded_history() {
        let s = JobsState::new(JobsConfig {
            history: 2,
            ..JobsConfig::default()
        })
        .unwrap();
        let a = s.insert("h", props(JobStatus::Enqueued)).unwrap();
        let e = s.insert("h", props(JobStatus::Enqueued)).unwrap_err();
        assert_eq!((e.status, e.name), (403, "JobQuotaExceeded"));
        // Another hub is not affected.
        s.insert("other", props(JobStatus::Running)).unwrap();
        a.update(|p| p.status = JobStatus::Completed);
        // An ended job is never changed again.
        assert!(!a.update(|p| p.status = JobStatus::Failed));
        s.insert("h", props(JobStatus::Completed)).unwrap();
        s.insert("h", props(JobStatus::Enqueued)).unwrap();
        assert_eq!(s.list("h").len(), 2, "history keeps the newest");
    }

    #[test]
    fn patch_merges_known_fields_only() {
        let s = JobsState::new(JobsConfig::default()).unwrap();
        let n = s.patch(&json!({"devices_per_second": 50.0})).unwrap();
        assert_eq!(n.devices_per_second, 50.0);
        assert_eq!(n.queue_seconds, JobsConfig::default().queue_seconds);
        assert!(s.patch(&json!({"nope": 1})).is_err());
        assert!(s.patch(&json!({"queue_seconds": -1.0})).is_err());
        assert!(s.patch(&json!([1])).is_err());
    }

    #[test]
    fn wire_names_follow_the_swagger() {
        let v = serde_json::to_value(props(JobStatus::Cancelled)).unwrap();
        assert_eq!(v["type"], "export");
        assert_eq!(v["status"], "cancelled");
        assert_eq!(v["outputBlobContainerUri"], "http://x/c");
        assert_eq!(v["excludeKeysInExport"], false);
        assert!(v.get("failureReason").is_none());
        assert_eq!(
            requested_kind(br#"{"type":"Import"}"#),
            Some(JobKind::Import)
        );
        assert_eq!(requested_kind(b"{}"), None);
    }
}
