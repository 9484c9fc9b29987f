//! The `import_jobs` step: per hub, the quota arithmetic ([`crate::domain::registry_path`]) picks device by
//! device or import jobs; the hubs that take import jobs then run, one hub job at a time per step run:
//!
//! 1. **Export**: the hub's identities with their keys (`{job}/{hub}/export.txt`). For an undo of a delete,
//!    the undone job's snapshot is the source instead.
//! 2. **Import**: the job's devices are selected from it a batch of lines at a time (never the fleet in
//!    memory) and written to `{job}/{hub}/import.txt`: `updateIfMatchETag` with `status: disabled`, the
//!    status reason and the exported authentication (so no keys change), or `deleteIfMatchETag`; an undo
//!    writes `updateIfMatchETag` with `status: enabled`, or `create` from the snapshot. While the import job
//!    runs, off the hub path, the devices that blob names are marked as the run's, and the job's devices'
//!    lines of the export are kept as the snapshot for an undo (`snapshot.txt`) before the export, which
//!    holds every identity's keys, is deleted.
//! 3. **Errors**: each device in `importErrors.log` goes back to its own registry step (an ETag that changed
//!    since the export among them), with an event saying why.
//! 4. **Verification**: a second export; a device counts done only when it shows the change (disabled, gone,
//!    enabled, present). The rest fall back to their own step, which verifies device by device.
//!
//! A hub job refused because another import/export job runs on the hub waits for it (polling), with an
//! event. A hub job that fails, an expired SAS or a blob that cannot be written ends the path for that hub:
//! its devices fall back to their own steps, so the job still finishes, only slower.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::AzureWorkflow;
use super::outcome::from_azure;
use crate::azure::HubClient;
use crate::azure::blob::{BlobContainerClient, BlobError};
use crate::azure::models::{ImportErrorLine, JobProperties, JobStatus, JobType};
use crate::domain::job::RegistryAction;
use crate::domain::lane::{Outcome, StepError};
use crate::domain::registry_path::{HubFacts, HubRoute, RegistryPath, choose};
use crate::store::{DEVICE_BATCH, HubItem, JobRecord, NewEvent, StepEffects};
use crate::worker::StepResult;

/// What an import writes, by job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// Deprovision: `status: disabled`.
    Disable,
    /// Deprovision: the identity deleted.
    Delete,
    /// Undo of a disable: `status: enabled`.
    Enable,
    /// Undo of a delete: the identity created again from the snapshot, keys included.
    Recreate,
}

impl Change {
    /// The change a job makes.
    pub(super) fn of(job: &JobRecord) -> Self {
        Self::of_request(&job.request)
    }

    /// The change a request asks for.
    pub(super) fn of_request(request: &crate::domain::job::DeprovisionRequest) -> Self {
        match (request.undo.is_some(), request.registry) {
            (false, RegistryAction::Disable) => Change::Disable,
            (false, RegistryAction::Delete) => Change::Delete,
            (true, RegistryAction::Disable) => Change::Enable,
            (true, RegistryAction::Delete) => Change::Recreate,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Change::Disable => "disabled",
            Change::Delete => "deleted",
            Change::Enable => "enabled again",
            Change::Recreate => "re-created",
        }
    }

    /// Whether an exported line (`None`: the device is not in the export) shows the change made.
    fn shows(self, line: Option<&Value>) -> bool {
        let status = line.and_then(|l| l["status"].as_str());
        match self {
            // Gone counts: nothing left to cut off.
            Change::Disable => line.is_none() || status == Some("disabled"),
            Change::Delete => line.is_none(),
            Change::Enable => status == Some("enabled"),
            Change::Recreate => line.is_some(),
        }
    }
}

/// Blob names within the hub's container: the job's and the hub's own prefix, so jobs and hubs sharing a
/// container never meet.
pub(super) fn snapshot_blob(job_id: &str, host: &str) -> String {
    blob(job_id, host, "snapshot.txt")
}
fn blob(job_id: &str, host: &str, name: &str) -> String {
    format!("{job_id}/{host}/{name}")
}

/// How long a hub busy with someone else's import/export job is waited for before its devices go device by
/// device: a stuck job elsewhere must not hold this one for ever.
const BUSY_PATIENCE_MS: i64 = 3_600_000;

/// The step's progress, kept as the job's cursor between runs.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    hubs: Vec<HubRun>,
}

/// One hub on the job path.
#[derive(Debug, Serialize, Deserialize)]
struct HubRun {
    hub: String,
    /// Marks the devices this run selected until they are verified (an earlier version relabelled them
    /// `{run}:verified` first).
    run: String,
    phase: Phase,
    /// Since when the hub has refused this run's hub job because another one runs (one event, not one
    /// per poll; the patience counts from here).
    #[serde(default)]
    busy_since: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
enum Phase {
    /// Start the export that is read for the devices' lines.
    Source,
    /// That export runs (`hub_job`).
    Exporting {
        hub_job: String,
    },
    /// The devices are selected and the import blob written (`written` lines): start the import.
    Selected {
        written: u64,
        /// The snapshot is still to be taken from the export (an earlier version took it in the selection).
        #[serde(default)]
        snapshot_due: bool,
    },
    /// The import runs. While it does, the devices it writes are marked as this run's from the import blob
    /// (`marked` once all are: the error log and the verification pick devices by that mark), and the
    /// snapshot is taken from the export (`snapshot_due` until it is).
    Importing {
        hub_job: String,
        written: u64,
        #[serde(default)]
        marked: bool,
        #[serde(default)]
        snapshot_due: bool,
    },
    /// The import ended and its error log was read: start the verification export.
    Imported {
        import: String,
    },
    /// The verification export runs.
    Verifying {
        import: String,
        hub_job: String,
    },
    Done,
}

/// What advancing one hub gave.
enum Advance {
    /// The phase moved: keep the new cursor and run again at once.
    Moved(Vec<NewEvent>),
    /// A hub job is running (or another job holds the hub): look again after this long.
    Wait(Duration, Vec<NewEvent>),
    /// A transient failure: the step retries.
    Retry(Box<StepResult>),
}

fn event(kind: &str, message: String, detail: Value) -> NewEvent {
    NewEvent {
        detail: Some(detail),
        ..NewEvent::new(kind, message)
    }
}

fn retry(msg: String) -> Advance {
    Advance::Retry(Box::new(retry_result(msg)))
}

/// Runs the `import_jobs` step once: the first run plans (one event with both estimates per hub), each
/// later run moves one hub along.
pub(super) async fn run(wf: &AzureWorkflow, job: &JobRecord) -> StepResult {
    let Some(text) = job.cursor.as_deref() else {
        return match plan(wf, job).await {
            Ok((progress, planned)) if progress.hubs.is_empty() => done(vec![planned]),
            Ok((progress, planned)) => keep(&progress, vec![planned]),
            Err(stop) => stop,
        };
    };
    let mut progress = match serde_json::from_str::<Progress>(text) {
        Ok(p) => p,
        Err(e) => {
            return Outcome::Fail(StepError::msg(format!(
                "the import_jobs step's stored progress is unreadable: {e}"
            )))
            .into();
        }
    };
    // Each hub's jobs run in the hub at once; a run looks at the hubs in turn and stops at the first that
    // moves (so a retry never throws away another hub's progress). Waits change nothing but the first
    // busy note, which comes with an event and is kept like a move.
    let mut wait: Option<Duration> = None;
    for i in 0..progress.hubs.len() {
        if matches!(progress.hubs[i].phase, Phase::Done) {
            continue;
        }
        match advance(wf, job, &mut progress.hubs[i]).await {
            Advance::Moved(events)
                if progress.hubs.iter().all(|h| matches!(h.phase, Phase::Done)) =>
            {
                return done(events);
            }
            Advance::Moved(events) => return keep(&progress, events),
            Advance::Wait(_, events) if !events.is_empty() => return keep(&progress, events),
            Advance::Wait(delay, _) => wait = Some(wait.map_or(delay, |w| w.min(delay))),
            Advance::Retry(r) => return *r,
        }
    }
    match wait {
        Some(delay) => Outcome::Paced { hub: None, delay }.into(),
        None => done(Vec::new()),
    }
}

fn done(events: Vec<NewEvent>) -> StepResult {
    StepResult {
        outcome: Outcome::Done,
        effects: StepEffects {
            events,
            ..StepEffects::default()
        },
    }
}

fn keep(progress: &Progress, events: Vec<NewEvent>) -> StepResult {
    // Invariant: the progress is plain strings and numbers, which always serialise.
    let cursor = serde_json::to_string(progress).expect("the progress serialises");
    StepResult {
        outcome: Outcome::Continue { cursor },
        effects: StepEffects {
            events,
            ..StepEffects::default()
        },
    }
}

fn retry_result(msg: String) -> StepResult {
    Outcome::Retry {
        error: StepError::msg(msg),
        retry_after: None,
    }
    .into()
}

/// Facts and choice per hub holding waiting devices; the hubs that take import jobs become the progress.
async fn plan(wf: &AzureWorkflow, job: &JobRecord) -> Result<(Progress, NewEvent), StepResult> {
    let by_hub = wf
        .store
        .waiting_by_hub(&job.id)
        .await
        .map_err(|e| retry_result(format!("reading the job's devices by hub: {e}")))?;
    let change = Change::of(job);
    let mut hubs = Vec::new();
    let mut choices = Vec::new();
    let mut lines = Vec::new();
    for (host, devices) in by_hub {
        let facts = hub_facts(wf, job.request.registry_path, &host, devices, change).await?;
        let mut choice = sweep_rule(&job.request, choose(&facts, job.request.registry_path));
        if change == Change::Recreate {
            // Only the undone job's snapshot holds the deleted identities' keys.
            choice = recreate_choice(wf, job, &host, choice).await?;
        }
        lines.push(format!(
            "{host}: {} ({})",
            route_name(choice.route),
            choice.why
        ));
        choices.push(
            json!({"hub": host, "devices": devices, "hub_devices": facts.hub_devices,
            "route": choice.route, "per_device_secs": choice.per_device_secs,
            "import_job_secs": choice.import_job_secs, "why": choice.why}),
        );
        if choice.route == HubRoute::ImportJob {
            hubs.push(HubRun {
                hub: host,
                run: uuid::Uuid::now_v7().to_string(),
                phase: Phase::Source,
                busy_since: None,
            });
        }
    }
    if !hubs.is_empty()
        && let Err(e) = wf.store.refresh_item_statistics().await
    {
        // Slower batches, not wrong ones.
        tracing::warn!(job = %job.id, error = %e, "could not refresh the planner's statistics of job_items");
    }
    let message = if lines.is_empty() {
        "no devices with a known hub: each device's own step looks for it".to_string()
    } else {
        format!("registry path per hub: {}", lines.join("; "))
    };
    Ok((
        Progress { hubs },
        event("registry_path_planned", message, json!({"hubs": choices})),
    ))
}

fn route_name(r: HubRoute) -> &'static str {
    match r {
        HubRoute::PerDevice => "device by device",
        HubRoute::ImportJob => "import jobs",
    }
}

/// An undo of a delete takes import jobs exactly where the undone job left a snapshot.
async fn recreate_choice(
    wf: &AzureWorkflow,
    job: &JobRecord,
    host: &str,
    mut choice: crate::domain::registry_path::RouteChoice,
) -> Result<crate::domain::registry_path::RouteChoice, StepResult> {
    let source = source_job(job);
    let container = match container(wf, source, host).await {
        Ok(c) => c,
        Err(e) if e.is_retryable() => {
            return Err(retry_result(format!(
                "opening hub {host}'s blob container: {e}"
            )));
        }
        Err(_) => return Ok(choice),
    };
    match container.exists(&snapshot_blob(source, host)).await {
        Ok(true) => {
            choice.route = HubRoute::ImportJob;
            choice.why = format!("re-created from job {source}'s snapshot, with their keys");
        }
        Ok(false) => {
            choice.route = HubRoute::PerDevice;
            choice.why = format!(
                "job {source} left no snapshot in this hub's storage: deleted identities cannot be re-created with their keys"
            );
        }
        Err(e) if e.is_retryable() => {
            return Err(retry_result(format!(
                "looking for job {source}'s snapshot: {e}"
            )));
        }
        Err(e) => {
            choice.route = HubRoute::PerDevice;
            choice.why = format!("job {source}'s snapshot cannot be read: {e}");
        }
    }
    Ok(choice)
}

/// What the planner needs for one hub. The identity count costs one statistics read, made only when the
/// hub has storage (without it the choice is made already).
async fn hub_facts(
    wf: &AzureWorkflow,
    registry_path: RegistryPath,
    host: &str,
    devices: u64,
    change: Change,
) -> Result<HubFacts, StepResult> {
    let hub = wf.clients.hub(host).ok();
    let storage = hub.is_some() && wf.clients.jobs_storage(host).is_some();
    let mut hub_devices = devices;
    if let Some(hub) = hub.filter(|_| storage && registry_path != RegistryPath::PerDevice) {
        match hub.device_statistics().await {
            Ok(s) => hub_devices = hub_devices.max(s.total_device_count.max(0) as u64),
            Err(e) if e.is_retryable() => {
                return Err(from_azure(&format!("reading hub {host}'s identity count"), &e).into());
            }
            // Without the count the exports are estimated at the job's own devices.
            Err(_) => {}
        }
    }
    Ok(HubFacts {
        devices,
        hub_devices,
        ops_per_device: match change {
            Change::Disable | Change::Enable => 2.0,
            Change::Delete | Change::Recreate => 1.0,
        },
        budget_per_minute: wf.clients.hub_budget(host),
        jobs_devices_per_second: storage.then(|| wf.clients.jobs_devices_per_second(host)),
        job_overhead: wf.clients.jobs_poll_interval(),
        deletes: change == Change::Delete,
    })
}

/// The preview's choice for a hub: the same arithmetic as the job's plan, with the identity count read
/// when the hub has storage (`None` when even that read fails transiently: the preview shows no choice).
pub(super) async fn preview_route(
    wf: &AzureWorkflow,
    request: &crate::domain::job::DeprovisionRequest,
    host: &str,
    devices: u64,
) -> Option<crate::domain::registry_path::RouteChoice> {
    let facts = hub_facts(
        wf,
        request.registry_path,
        host,
        devices,
        Change::of_request(request),
    )
    .await
    .ok()?;
    Some(sweep_rule(request, choose(&facts, request.registry_path)))
}

/// A sweep of every hub checks each device in hubs the import does not cover: such a job goes device by
/// device, so no device counts done before every hub it could be in answered.
fn sweep_rule(
    request: &crate::domain::job::DeprovisionRequest,
    mut choice: crate::domain::registry_path::RouteChoice,
) -> crate::domain::registry_path::RouteChoice {
    if request.sweep == crate::domain::job::Sweep::AllHubs && choice.route == HubRoute::ImportJob {
        choice.route = HubRoute::PerDevice;
        choice.why = "sweep all_hubs checks every hub for each device: device by device".into();
    }
    choice
}

/// The job whose container and snapshot an undo works in: the undone job's (an undo's blobs sit beside
/// the snapshot they read).
pub(super) fn source_job(job: &JobRecord) -> &str {
    job.request
        .undo
        .as_ref()
        .map_or(job.id.as_str(), |u| u.job_id.as_str())
}

/// The hub's blob container for `job_id`'s blobs.
pub(super) async fn container(
    wf: &AzureWorkflow,
    job_id: &str,
    host: &str,
) -> Result<BlobContainerClient, BlobError> {
    let storage = wf
        .clients
        .jobs_storage(host)
        .ok_or_else(|| BlobError::Setup(format!("no blob storage is configured for hub {host}")))?;
    storage
        .container(job_id, host, wf.clock.now_ms() / 1000, wf.clients.http())
        .await
}

/// Moves one hub along by one phase.
async fn advance(wf: &AzureWorkflow, job: &JobRecord, run: &mut HubRun) -> Advance {
    let host = run.hub.clone();
    let Ok(hub) = wf.clients.hub(&host) else {
        return fall_back(
            wf,
            job,
            run,
            "no credentials are configured for the hub any more",
        )
        .await;
    };
    // A hub job still running needs no blob: its status is read before the container is opened (which, for a
    // minted container, mints a SAS and asks the Blob service to create it), so polls cost one GET each.
    let mut polled = match &run.phase {
        Phase::Exporting { hub_job }
        | Phase::Importing { hub_job, .. }
        | Phase::Verifying { hub_job, .. } => Some(poll(hub, hub_job).await),
        _ => None,
    };
    let passes_due = matches!(
        run.phase,
        Phase::Importing { marked: false, .. }
            | Phase::Importing {
                snapshot_due: true,
                ..
            }
    );
    if matches!(polled, Some(Polled::Running)) && !passes_due {
        return Advance::Wait(wf.clients.jobs_poll_interval(), Vec::new());
    }
    let source = source_job(job).to_string();
    let container = match container(wf, &source, &host).await {
        Ok(c) => c,
        Err(e) if e.is_retryable() => {
            return retry(format!("opening hub {host}'s blob container: {e}"));
        }
        Err(e) => {
            return fall_back(
                wf,
                job,
                run,
                &format!("its blob container cannot be used: {e}"),
            )
            .await;
        }
    };
    let change = Change::of(job);
    match run.phase.clone() {
        Phase::Source if change == Change::Recreate => {
            // The undone job's snapshot is the source: no export to wait for.
            let snapshot = snapshot_blob(&source, &host);
            select(wf, job, run, &container, &snapshot, None).await
        }
        Phase::Source => {
            // The full export (every identity of the hub, keys included) lives only until the snapshot
            // has been taken from it: the snapshot kept holds the job's devices' lines alone.
            let name = blob(&job.id, &host, "export.txt");
            let props = JobProperties::export(container.container().expose(), Some(&name), false);
            let detail = json!({"blob": name, "container": describe(wf, &source, &host)});
            start(
                wf,
                job,
                run,
                hub,
                props,
                |hub_job| Phase::Exporting { hub_job },
                detail,
            )
            .await
        }
        Phase::Exporting { hub_job } => match polled.take().unwrap_or(Polled::Running) {
            Polled::Running => Advance::Wait(wf.clients.jobs_poll_interval(), Vec::new()),
            Polled::Failed(why) => {
                fall_back(wf, job, run, &format!("its export job {hub_job} {why}")).await
            }
            Polled::Error(r) => Advance::Retry(r),
            Polled::Completed => {
                let name = blob(&job.id, &host, "export.txt");
                select(wf, job, run, &container, &name, Some(hub_job)).await
            }
        },
        Phase::Selected {
            written,
            snapshot_due,
        } => {
            let name = blob(&job.id, &host, "import.txt");
            let c = container.container().expose();
            let errors = errors_blob(&job.id, &host);
            let props = JobProperties::import(c.clone(), Some(&name), c, Some(&errors));
            let detail = json!({"blob": name, "devices": written});
            let next = |hub_job| Phase::Importing {
                hub_job,
                written,
                marked: false,
                snapshot_due,
            };
            start(wf, job, run, hub, props, next, detail).await
        }
        Phase::Imported { import } => {
            let name = blob(&job.id, &host, "verify.txt");
            let props = JobProperties::export(container.container().expose(), Some(&name), true);
            let detail = json!({"blob": name, "purpose": "verification"});
            let next = |hub_job| Phase::Verifying { import, hub_job };
            start(wf, job, run, hub, props, next, detail).await
        }
        Phase::Importing {
            hub_job, written, ..
        } => match polled.take().unwrap_or(Polled::Running) {
            Polled::Failed(why) => {
                fall_back(wf, job, run, &format!("its import job {hub_job} {why}")).await
            }
            Polled::Error(r) => Advance::Retry(r),
            _ if passes_due => while_importing(wf, job, run, &container).await,
            Polled::Running => Advance::Wait(wf.clients.jobs_poll_interval(), Vec::new()),
            Polled::Completed => imported(wf, job, run, &container, hub_job, written).await,
        },
        Phase::Verifying { import, hub_job } => match polled.take().unwrap_or(Polled::Running) {
            Polled::Running => Advance::Wait(wf.clients.jobs_poll_interval(), Vec::new()),
            Polled::Failed(why) => fall_back(
                wf,
                job,
                run,
                &format!(
                    "its verification export {hub_job} {why}; each device is verified on its own"
                ),
            )
            .await,
            Polled::Error(r) => Advance::Retry(r),
            Polled::Completed => verified(wf, job, run, &container, &import, &hub_job).await,
        },
        Phase::Done => Advance::Moved(Vec::new()),
    }
}

fn describe(wf: &AzureWorkflow, job_id: &str, host: &str) -> String {
    wf.clients
        .jobs_storage(host)
        .map(|s| s.describe(job_id, host))
        .unwrap_or_default()
}

/// What a hub job's status read said.
enum Polled {
    Running,
    Completed,
    /// Failed or cancelled, in words (the failure reason, which never carries a SAS).
    Failed(String),
    Error(Box<StepResult>),
}

async fn poll(hub: &HubClient, hub_job: &str) -> Polled {
    match hub.get_job(hub_job).await {
        Ok(j) if j.status().is_active() => Polled::Running,
        Ok(j) if j.status() == JobStatus::Completed => Polled::Completed,
        Ok(j) => Polled::Failed(format!(
            "ended {}{}",
            serde_json::to_value(j.status())
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            j.failure_reason
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        )),
        Err(e) if e.is_not_found() => Polled::Failed("is no longer known to the hub".into()),
        Err(e) => Polled::Error(Box::new(
            from_azure(&format!("reading hub job {hub_job}"), &e).into(),
        )),
    }
}

/// The blob an import writes its refusals to (the simulator honours `outputBlobName`; where a hub writes
/// `importErrors.log` at the container's root instead, that one is read).
fn errors_blob(job_id: &str, host: &str) -> String {
    blob(job_id, host, "importErrors.log")
}

/// The blob a hub job reads (import) or writes (export): what tells this run's jobs apart.
fn job_blob(j: &JobProperties) -> Option<&str> {
    match j.kind {
        Some(JobType::Import) => j.input_blob_name.as_deref(),
        _ => j.output_blob_name.as_deref(),
    }
}

/// Starts a hub job, or adopts the one an earlier attempt started (a crash between the create and the
/// cursor's write must not start a second). A hub busy with another import/export job is waited for, up
/// to [`BUSY_PATIENCE_MS`].
async fn start(
    wf: &AzureWorkflow,
    job: &JobRecord,
    run: &mut HubRun,
    hub: &HubClient,
    props: JobProperties,
    next: impl FnOnce(String) -> Phase,
    detail: Value,
) -> Advance {
    let host = run.hub.clone();
    let kind = match props.kind {
        Some(JobType::Import) => "import",
        _ => "export",
    };
    // Blob names carry the job and the hub, so a job of this hub naming this blob is this run's.
    let adopted = match hub.list_jobs().await {
        Ok(jobs) => jobs.into_iter().rfind(|j| {
            j.kind == props.kind && job_blob(j).is_some() && job_blob(j) == job_blob(&props)
        }),
        Err(e) if e.is_retryable() => {
            return Advance::Retry(Box::new(
                from_azure(&format!("listing the jobs of {host}"), &e).into(),
            ));
        }
        Err(_) => None,
    };
    let created = match adopted {
        Some(j) => Ok(j),
        None => hub.create_import_export_job(&props).await,
    };
    match created {
        Ok(j) => {
            let Some(id) = j.job_id.clone() else {
                return fall_back(
                    wf,
                    job,
                    run,
                    &format!("the hub answered its {kind} job without a jobId"),
                )
                .await;
            };
            run.phase = next(id.clone());
            run.busy_since = None;
            let mut d = detail;
            d["hub"] = json!(host);
            d["hub_job"] = json!(id);
            d["type"] = json!(kind);
            Advance::Moved(vec![event(
                "hub_job_started",
                format!("hub {host}: {kind} job {id} started"),
                d,
            )])
        }
        Err(e) if e.is_job_quota_exceeded() => {
            let wait = wf.clients.jobs_poll_interval();
            let now = wf.clock.now_ms();
            match run.busy_since {
                Some(since) if now - since > BUSY_PATIENCE_MS => {
                    let why = format!(
                        "the hub has been running another import/export job for over {} min",
                        BUSY_PATIENCE_MS / 60_000
                    );
                    fall_back(wf, job, run, &why).await
                }
                Some(_) => Advance::Wait(wait, Vec::new()),
                None => {
                    run.busy_since = Some(now);
                    let message = format!(
                        "hub {host} is running another import/export job (one at a time per hub): this job's {kind} \
                         waits for it, looking every {} s, for up to {} min",
                        wait.as_secs_f64(),
                        BUSY_PATIENCE_MS / 60_000
                    );
                    let busy = event("hub_busy", message, json!({"hub": host, "type": kind}));
                    Advance::Wait(wait, vec![busy])
                }
            }
        }
        Err(e) if e.is_retryable() => Advance::Retry(Box::new(
            from_azure(&format!("starting the {kind} job in {host}"), &e).into(),
        )),
        Err(e) => {
            fall_back(
                wf,
                job,
                run,
                &format!("the hub refused its {kind} job: {e}"),
            )
            .await
        }
    }
}

/// Lines of an export or error log, read and parsed a batch at a time by a task of its own that stays up
/// to two batches ahead, so the Blob service's answers and the parsing overlap the caller's database work.
/// Lines that are not JSON objects are counted in [`LineBatch::dropped`]: they name no device that could
/// be matched, so a verification that met any does not count unlisted devices as gone.
type LineBatches = Ahead<Result<LineBatch, BlobError>>;

/// What a task of its own produces ahead of its caller, `depth` values at most waiting in a channel.
/// Dropping it aborts the task, which loses nothing: each pass that uses one runs again whole.
struct Ahead<T> {
    out: mpsc::Receiver<T>,
    task: tokio::task::JoinHandle<()>,
}

impl<T: Send + 'static> Ahead<T> {
    fn spawn<F>(depth: usize, produce: impl FnOnce(mpsc::Sender<T>) -> F) -> Self
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (tx, out) = mpsc::channel(depth);
        Self {
            out,
            task: tokio::spawn(produce(tx)),
        }
    }

    /// The next value; `None` after the last.
    async fn next(&mut self) -> Option<T> {
        self.out.recv().await
    }
}

impl<T> Drop for Ahead<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a pass over a blob spent its wall time, for its event: waiting for lines (the Blob service and the
/// parsing), in the database, and handing lines to the blob writers (their uploads, when two are under way).
#[derive(Default)]
struct Spent {
    reading: Duration,
    database: Duration,
    writing: Duration,
    /// The whole pass, its own work (parsing, building lines) included.
    total: Duration,
}

impl Spent {
    /// Runs `f`, adding its time to `bucket`.
    async fn add<T>(bucket: &mut Duration, f: impl std::future::Future<Output = T>) -> T {
        let start = std::time::Instant::now();
        let out = f.await;
        *bucket += start.elapsed();
        out
    }

    fn json(&self) -> Value {
        json!({"reading_ms": self.reading.as_millis() as u64, "database_ms": self.database.as_millis() as u64,
            "writing_ms": self.writing.as_millis() as u64, "total_ms": self.total.as_millis() as u64})
    }
}

/// A line of a blob as read, and the few fields the passes decide by ([`LineHead`]).
type Line = (String, Value);

/// What a pass reads of each line to decide (the device, its status): parsed alone, so a batch holds its
/// lines' text and these few fields, not every identity's keys and twin as JSON values. A line that is
/// needed whole (an import line is built from it) is parsed again on its own.
#[derive(Deserialize)]
struct LineHead {
    id: Option<Value>,
    #[serde(rename = "deviceId")]
    device_id: Option<Value>,
    status: Option<Value>,
    #[serde(rename = "statusReason")]
    status_reason: Option<Value>,
}

impl LineHead {
    fn parse(line: &str) -> Option<Value> {
        let head: Self = serde_json::from_str(line).ok()?;
        let mut out = serde_json::Map::new();
        for (k, v) in [
            ("id", head.id),
            ("deviceId", head.device_id),
            ("status", head.status),
            ("statusReason", head.status_reason),
        ] {
            if let Some(v) = v {
                out.insert(k.to_string(), v);
            }
        }
        Some(Value::Object(out))
    }
}

/// One batch of [`LineBatches`].
#[derive(Default)]
struct LineBatch {
    /// Each line as read (a snapshot keeps it so) and parsed.
    lines: Vec<Line>,
    /// Lines that are not JSON objects.
    dropped: u64,
}

impl LineBatches {
    fn new(mut reader: crate::azure::blob::BlobLines) -> Self {
        Self::spawn(2, |tx| async move {
            loop {
                let mut batch = LineBatch::default();
                let more = loop {
                    match reader.next_line().await {
                        Ok(None) => break false,
                        Ok(Some(line)) if line.trim().is_empty() => {}
                        Ok(Some(line)) => match LineHead::parse(&line) {
                            Some(v) => batch.lines.push((line, v)),
                            None => batch.dropped += 1,
                        },
                        Err(e) => {
                            // The reader is gone with the caller when the send fails: nothing to tell.
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                    if batch.lines.len() >= DEVICE_BATCH {
                        break true;
                    }
                };
                if (!batch.lines.is_empty() || batch.dropped > 0)
                    && tx.send(Ok(batch)).await.is_err()
                {
                    return;
                }
                if !more {
                    return;
                }
            }
        })
    }
}

/// Why a pass over a blob stopped: the blob (which may end the path for the hub) or the database (a retry).
enum PassError {
    Blob(BlobError),
    Store(String),
}

/// A batch of export lines and the job's waiting devices on the hub among them (by `id`).
struct Looked {
    batch: LineBatch,
    /// Each waiting device the batch names, with its item when the lookup asked for items.
    waiting: std::collections::HashMap<String, Option<HubItem>>,
    /// The lookup's time, spent while the caller worked on the batch before.
    database: Duration,
}

/// The batches of [`LineBatches`] looked up among the job's waiting devices on a hub by a task of its own,
/// a batch ahead of the caller: the database answers one while the caller writes the lines of the one
/// before. A pass over an export is then bounded by its slowest stage, not by the sum of them.
/// Dropping it drops its `LineBatches` with the task, which stops the reader too.
type Lookups = Ahead<Result<Looked, PassError>>;

impl Lookups {
    /// Looks up the lines of `reader`. `with_items`: answer each device's item (a re-creation reads its
    /// data), not only its id.
    fn new(
        wf: &AzureWorkflow,
        job: &JobRecord,
        hub: &str,
        with_items: bool,
        reader: crate::azure::blob::BlobLines,
    ) -> Self {
        let mut batches = LineBatches::new(reader);
        let (store, job_id, hub) = (wf.store.clone(), job.id.clone(), hub.to_string());
        Self::spawn(1, |tx| async move {
            while let Some(batch) = batches.next().await {
                let out = match batch {
                    Err(e) => Err(PassError::Blob(e)),
                    Ok(batch) => {
                        let began = std::time::Instant::now();
                        let ids = device_ids(&batch.lines, "id");
                        let waiting = if with_items {
                            store
                                .waiting_on_hub(&job_id, &hub, &ids)
                                .await
                                .map(|items| {
                                    items
                                        .into_iter()
                                        .map(|it| (it.device_id.clone(), Some(it)))
                                        .collect()
                                })
                        } else {
                            store
                                .waiting_devices(&job_id, &hub, &ids)
                                .await
                                .map(|ids| ids.into_iter().map(|id| (id, None)).collect())
                        };
                        match waiting {
                            Ok(waiting) => Ok(Looked {
                                batch,
                                waiting,
                                database: began.elapsed(),
                            }),
                            Err(e) => Err(PassError::Store(format!("looking the devices up: {e}"))),
                        }
                    }
                };
                let stop = out.is_err();
                // The caller is gone when the send fails: nothing to tell.
                if tx.send(out).await.is_err() || stop {
                    return;
                }
            }
        })
    }

    /// The next batch and the waiting devices it names, the wait for it and its lookup's time added to
    /// `spent`; `None` after the last.
    async fn next_looked(
        &mut self,
        spent: &mut Spent,
    ) -> Option<
        Result<
            (
                LineBatch,
                std::collections::HashMap<String, Option<HubItem>>,
            ),
            PassError,
        >,
    > {
        let looked = Spent::add(&mut spent.reading, self.next()).await?;
        Some(looked.map(|l| {
            spent.database += l.database;
            (l.batch, l.waiting)
        }))
    }
}

/// Deletes a blob that has served its purpose (an export holding every identity's keys, an import blob);
/// a failure only leaves it behind.
async fn delete_blob(container: &BlobContainerClient, name: &str) {
    if let Err(e) = container.delete(name).await {
        tracing::warn!(blob = %name, error = %e, "could not delete a hub job blob; it stays in the container");
    }
}

/// The device ids a batch of lines names under `key`.
fn device_ids<'a>(batch: &'a [Line], key: &str) -> Vec<&'a str> {
    batch.iter().filter_map(|(_, v)| v[key].as_str()).collect()
}

/// [`device_ids`], owned: for a write that outlives the batch ([`BatchWrites`]).
fn owned_ids(batch: &[Line], key: &str) -> Vec<String> {
    device_ids(batch, key)
        .into_iter()
        .map(str::to_string)
        .collect()
}

/// The job's waiting devices among a batch of lines (keyed by `key`), as (line, item).
async fn match_items<'a>(
    wf: &AzureWorkflow,
    job: &JobRecord,
    hub: &str,
    batch: &'a [Line],
    key: &str,
) -> Result<Vec<(&'a Line, HubItem)>, String> {
    let items = wf
        .store
        .waiting_on_hub(&job.id, hub, &device_ids(batch, key))
        .await
        .map_err(|e| format!("looking the devices up: {e}"))?;
    let mut by_id: std::collections::HashMap<String, HubItem> = items
        .into_iter()
        .map(|it| (it.device_id.clone(), it))
        .collect();
    Ok(batch
        .iter()
        .filter_map(|l| Some((l, by_id.remove(l.1[key].as_str()?)?)))
        .collect())
}

/// The identity fields an import line carries over from an export (no twin: the import changes the
/// identity only).
const IDENTITY_FIELDS: [&str; 5] = [
    "id",
    "eTag",
    "authentication",
    "capabilities",
    "deviceScope",
];

/// An export line's top-level fields, each as its JSON text: an import line copies an identity's fields
/// verbatim instead of building them as values and writing them out again (the selection's largest cost
/// per device).
type RawLine<'a> = std::collections::HashMap<std::borrow::Cow<'a, str>, &'a RawValue>;

/// A JSON object of `fields` (names, and values as JSON text).
fn object<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::from("{");
    for (i, (name, value)) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Invariant: a string always serialises.
        out.push_str(&serde_json::to_string(name).expect("a string serialises"));
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
    out
}

/// The import line for an exported identity (`head`: its id, status and status reason; `raw`: every field
/// as text), or `None` when it needs no write.
fn import_line(
    change: Change,
    head: &Value,
    raw: &RawLine<'_>,
    reason: &str,
    source: &str,
) -> Option<String> {
    let field = |name: &'static str| {
        raw.get(name)
            .map(|v| v.get())
            .filter(|v| *v != "null")
            .map(|v| (name, v))
    };
    let identity = || {
        IDENTITY_FIELDS
            .iter()
            .chain(&["parentScopes"])
            .filter_map(|f| field(f))
    };
    let text = |v: Value| v.to_string();
    let status = head["status"].as_str();
    match change {
        Change::Disable if status == Some("disabled") => None,
        Change::Disable => {
            let reason = text(json!(reason));
            let extra = [
                ("importMode", "\"updateIfMatchETag\""),
                ("status", "\"disabled\""),
                ("statusReason", reason.as_str()),
            ];
            Some(object(identity().chain(extra)))
        }
        Change::Delete => Some(object(
            ["id", "eTag"]
                .into_iter()
                .map(|f| (f, raw.get(f).map_or("null", |v| v.get())))
                .chain([("importMode", "\"deleteIfMatchETag\"")]),
        )),
        Change::Enable if status == Some("disabled") && disabled_by(head, source) => {
            let extra = [
                ("importMode", "\"updateIfMatchETag\""),
                ("status", "\"enabled\""),
                ("statusReason", "null"),
            ];
            Some(object(identity().chain(extra)))
        }
        Change::Enable => None,
        // The whole snapshot line, twin included, without the ETags a create must not carry.
        Change::Recreate => Some(object(
            raw.iter()
                .filter(|(k, _)| !matches!(k.as_ref(), "eTag" | "twinETag" | "importMode"))
                .map(|(k, v)| (k.as_ref(), v.get()))
                .chain([("importMode", "\"create\"")]),
        )),
    }
}

/// Whether an identity's status reason says job `source` disabled it (an undo re-enables only those).
pub(super) fn disabled_by(line: &Value, source: &str) -> bool {
    line["statusReason"]
        .as_str()
        .is_some_and(|r| r.starts_with(&format!("deprovisiond job {source}")))
}

/// Reads the source export, marks the job's devices in it that are already as asked and writes the import
/// blob. A deprovision's snapshot is taken from the same export later, while the import runs
/// ([`take_snapshot`]): the selection writes only what the import needs.
async fn select(
    wf: &AzureWorkflow,
    job: &JobRecord,
    run: &mut HubRun,
    container: &BlobContainerClient,
    source_blob: &str,
    export_job: Option<String>,
) -> Advance {
    let host = run.hub.clone();
    let change = Change::of(job);
    let reason = super::registry::status_reason(job);
    let undone = source_job(job).to_string();
    let import_name = blob(&job.id, &host, "import.txt");
    let began = std::time::Instant::now();
    // A re-creation reads each item's data; everything else needs only to know which lines are the job's.
    let reader = container.reader(source_blob);
    let mut lookups = Lookups::new(wf, job, &host, change == Change::Recreate, reader);
    let mut writer = container.writer(&import_name);
    // A deprovision keeps the lines of its own devices as the snapshot an undo re-creates them from.
    let snapshot_due = export_job.is_some() && job.request.undo.is_none();
    let mut dropped = 0u64;
    let (mut written, mut unchanged, mut left) = (0u64, 0u64, 0u64);
    let mut spent = Spent::default();
    while let Some(looked) = lookups.next_looked(&mut spent).await {
        let (batch, mut waiting) = match looked {
            Ok(l) => l,
            Err(PassError::Blob(e)) => {
                return blob_failure(wf, job, run, &format!("reading {source_blob}"), e).await;
            }
            Err(PassError::Store(e)) => return retry(e),
        };
        dropped += batch.dropped;
        let mut same_ids = Vec::new();
        for (raw, line) in &batch.lines {
            let Some(device_id) = line["id"].as_str() else {
                continue;
            };
            let Some(item) = waiting.remove(device_id) else {
                continue;
            };
            // Only identities the undone job's import deleted come back from its snapshot: a device
            // deleted on its own step may have changed after the snapshot was taken.
            if change == Change::Recreate
                && item
                    .as_ref()
                    .and_then(|it| it.data.as_ref())
                    .is_none_or(|d| d["via_import"] != true)
            {
                left += 1;
                continue;
            }
            // The line's fields as text (batches keep only its head): an import line copies its identity.
            let Ok(fields) = serde_json::from_str::<RawLine>(raw) else {
                continue;
            };
            match import_line(change, line, &fields, &reason, &undone) {
                Some(out) => {
                    if let Err(e) = Spent::add(&mut spent.writing, writer.write_line(&out)).await {
                        return blob_failure(wf, job, run, &format!("writing {import_name}"), e)
                            .await;
                    }
                    written += 1;
                }
                // Disabled by someone else since: its own step says so, device by device.
                None if change == Change::Enable && line["status"].as_str() == Some("disabled") => {
                    left += 1
                }
                None => same_ids.push(device_id),
            }
        }
        // The devices written are marked while the import runs (`mark_written`), off the hub path; those
        // already so are marked here, there being no other record of them.
        let now = wf.clock.now_ms();
        let marked = Spent::add(
            &mut spent.database,
            wf.store
                .mark_hub_devices(&job.id, &host, &run.run, false, &same_ids, now),
        )
        .await;
        if let Err(e) = marked {
            return retry(format!("marking the devices: {e}"));
        }
        unchanged += same_ids.len() as u64;
    }
    if let Err(e) = Spent::add(&mut spent.writing, writer.finish()).await {
        return blob_failure(wf, job, run, &format!("writing {import_name}"), e).await;
    }
    if export_job.is_some() && !snapshot_due {
        Spent::add(&mut spent.writing, delete_blob(container, source_blob)).await;
    }
    spent.total = began.elapsed();
    let snapshot_name = snapshot_blob(&job.id, &host);
    let detail = json!({"hub": host, "source": source_blob, "export_job": export_job, "import_blob": import_name,
        "snapshot": snapshot_due.then_some(&snapshot_name),
        "written": written, "unchanged": unchanged, "left_to_own_step": left, "unreadable_lines": dropped,
        "spent": spent.json()});
    let mut events = vec![event(
        "import_blob_written",
        format!(
            "hub {host}: {written} device(s) to be {} written to {import_name}; {unchanged} already so; read from {source_blob}",
            change.verb()
        ),
        detail,
    )];
    if written == 0 {
        // Nothing to import: the snapshot is taken now, and the export just read is the verification of
        // the devices already so.
        if snapshot_due {
            match take_snapshot(wf, job, &host, container).await {
                Ok(e) => events.push(e),
                Err(PassError::Blob(e)) => {
                    return blob_failure(wf, job, run, &format!("taking {snapshot_name}"), e).await;
                }
                Err(PassError::Store(e)) => return retry(e),
            }
        }
        let mark = export_job.unwrap_or_else(|| run.run.clone());
        match finish(wf, job, run, &run.run.clone(), &mark, 0).await {
            Ok((_, e)) => events.push(e),
            Err(e) => return retry(e),
        }
        run.phase = Phase::Done;
        return Advance::Moved(events);
    }
    run.phase = Phase::Selected {
        written,
        snapshot_due,
    };
    Advance::Moved(events)
}

/// Copies the lines of the job's devices from the snapshot export (`export.txt`, every identity of the hub
/// with its keys) to `snapshot.txt`, kept for an undo, then deletes the export. It runs while the import
/// does, off the hub path; a pass interrupted before the end is run again whole. An export already gone
/// was deleted by a pass that had finished.
async fn take_snapshot(
    wf: &AzureWorkflow,
    job: &JobRecord,
    host: &str,
    container: &BlobContainerClient,
) -> Result<NewEvent, PassError> {
    let export = blob(&job.id, host, "export.txt");
    let name = snapshot_blob(&job.id, host);
    let began = std::time::Instant::now();
    let mut lookups = Lookups::new(wf, job, host, false, container.reader(&export));
    let mut writer = container.writer(&name);
    let mut spent = Spent::default();
    let mut devices = 0u64;
    while let Some(looked) = lookups.next_looked(&mut spent).await {
        let (batch, mut waiting) = match looked {
            Ok(l) => l,
            Err(PassError::Blob(e)) if e.is_not_found() && devices == 0 => {
                let kept = container.exists(&name).await.map_err(PassError::Blob)?;
                let message = if kept {
                    format!("hub {host}: snapshot {name} was already taken")
                } else {
                    format!(
                        "hub {host}: no snapshot taken: {export} is gone; an undo cannot re-create these devices"
                    )
                };
                return Ok(event(
                    "snapshot_written",
                    message,
                    json!({"hub": host, "snapshot": kept.then_some(&name), "source": export}),
                ));
            }
            Err(e) => return Err(e),
        };
        for (raw, line) in &batch.lines {
            if line["id"]
                .as_str()
                .is_some_and(|id| waiting.remove(id).is_some())
            {
                Spent::add(&mut spent.writing, writer.write_line(raw))
                    .await
                    .map_err(PassError::Blob)?;
                devices += 1;
            }
        }
    }
    Spent::add(&mut spent.writing, writer.finish())
        .await
        .map_err(PassError::Blob)?;
    delete_blob(container, &export).await;
    spent.total = began.elapsed();
    Ok(event(
        "snapshot_written",
        format!(
            "hub {host}: {devices} device(s)' identities kept in {name} for an undo; {export} deleted"
        ),
        json!({"hub": host, "snapshot": name, "source": export, "devices": devices, "spent": spent.json()}),
    ))
}

/// Marks the devices the import blob names as this run's while the import job runs: the import changes
/// them (`changed`). A pass interrupted before the end is run again whole (marking is idempotent).
async fn mark_written(
    wf: &AzureWorkflow,
    job: &JobRecord,
    run: &HubRun,
    container: &BlobContainerClient,
) -> Result<(), PassError> {
    let name = blob(&job.id, &run.hub, "import.txt");
    let mut batches = LineBatches::new(container.reader(&name));
    let mut writes = BatchWrites::new(&wf.store);
    let marking =
        |e: String| PassError::Store(format!("marking the devices the import writes: {e}"));
    while let Some(batch) = batches.next().await {
        let batch = match batch {
            Ok(b) => b,
            // Gone while the import waited or ran: the import's own end says what became of it (it
            // fails for want of its input, and the run falls back); devices left unmarked are not
            // verified by the export, so they go device by device.
            Err(e) if e.is_not_found() => {
                tracing::warn!(job = %job.id, hub = %run.hub, blob = %name, "the import blob is gone; its devices stay unmarked");
                break;
            }
            Err(e) => return Err(PassError::Blob(e)),
        };
        let ids = owned_ids(&batch.lines, "id");
        let at = RunWrite::of(wf, job, run);
        let write = async move {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            at.store
                .mark_hub_devices(&at.job_id, &at.hub, &at.mark, true, &ids, at.now)
                .await
        };
        writes.push(write).await.map_err(marking)?;
    }
    writes.finish().await.map_err(marking)?;
    Ok(())
}

/// What a hub run does while its import job runs: mark the devices the import writes, then take the
/// snapshot. One pass after the other, not both at once: each holds its blob's read-ahead (and the
/// snapshot its uploads), and the peak memory of a million-device run is the sum of what runs at once.
/// Each pass that ends is recorded in the phase, so a retry runs only what is left.
async fn while_importing(
    wf: &AzureWorkflow,
    job: &JobRecord,
    run: &mut HubRun,
    container: &BlobContainerClient,
) -> Advance {
    let Phase::Importing {
        hub_job,
        written,
        marked,
        snapshot_due,
    } = run.phase.clone()
    else {
        return Advance::Moved(Vec::new());
    };
    let marks = match marked {
        true => Ok(()),
        false => mark_written(wf, job, run, container).await,
    };
    let snapshot = match (snapshot_due, &marks) {
        (true, Ok(())) => take_snapshot(wf, job, &run.hub, container).await.map(Some),
        _ => Ok(None),
    };
    let snapshot_taken = matches!(snapshot, Ok(Some(_)));
    let events: Vec<NewEvent> = snapshot
        .as_ref()
        .ok()
        .cloned()
        .flatten()
        .into_iter()
        .collect();
    run.phase = Phase::Importing {
        hub_job,
        written,
        marked: marked || marks.is_ok(),
        snapshot_due: snapshot_due && !snapshot_taken,
    };
    let name = |what: &str| blob(&job.id, &run.hub, what);
    let failed = match (marks, snapshot) {
        (Err(e), _) => Some((e, format!("reading {}", name("import.txt")))),
        (_, Err(e)) => Some((e, format!("taking {}", snapshot_blob(&job.id, &run.hub)))),
        _ => None,
    };
    match failed {
        None => Advance::Moved(events),
        Some((PassError::Blob(e), doing)) => match blob_failure(wf, job, run, &doing, e).await {
            Advance::Moved(more) => Advance::Moved(events.into_iter().chain(more).collect()),
            other => other,
        },
        Some((PassError::Store(e), _)) => retry(e),
    }
}

/// A hub run's batch write, owned so that it can outlive the batch it was made from ([`BatchWrites`]).
struct RunWrite {
    store: crate::store::Store,
    job_id: String,
    hub: String,
    /// The run's mark on its devices.
    mark: String,
    now: crate::domain::clock::Millis,
}

impl RunWrite {
    fn of(wf: &AzureWorkflow, job: &JobRecord, run: &HubRun) -> Self {
        Self {
            store: wf.store.clone(),
            job_id: job.id.clone(),
            hub: run.hub.clone(),
            mark: run.run.clone(),
            now: wf.clock.now_ms(),
        }
    }
}

/// Batch updates of one pass under way at once, up to [`crate::store::Store::batch_writers`]: the next
/// batch is read while earlier ones are written. Dropping it aborts what is still under way, which loses
/// nothing: each statement is idempotent and an interrupted pass runs again from its start.
struct BatchWrites<T> {
    under_way: tokio::task::JoinSet<Result<T, crate::store::StoreError>>,
    most: usize,
    done: Vec<T>,
}

impl<T: Send + 'static> BatchWrites<T> {
    fn new(store: &crate::store::Store) -> Self {
        Self {
            under_way: tokio::task::JoinSet::new(),
            most: store.batch_writers().max(1),
            done: Vec::new(),
        }
    }

    /// Starts `write`, first waiting for an earlier one when as many as allowed are under way.
    async fn push(
        &mut self,
        write: impl std::future::Future<Output = Result<T, crate::store::StoreError>> + Send + 'static,
    ) -> Result<(), String> {
        while self.under_way.len() >= self.most {
            self.next_done().await?;
        }
        self.under_way.spawn(write);
        Ok(())
    }

    async fn next_done(&mut self) -> Result<(), String> {
        match self.under_way.join_next().await {
            Some(Ok(Ok(v))) => {
                self.done.push(v);
                Ok(())
            }
            Some(Ok(Err(e))) => Err(e.to_string()),
            Some(Err(e)) => Err(format!("a batch update stopped: {e}")),
            None => Ok(()),
        }
    }

    /// Waits for every write under way; their results, in the order they ended.
    async fn finish(mut self) -> Result<Vec<T>, String> {
        while !self.under_way.is_empty() {
            self.next_done().await?;
        }
        Ok(self.done)
    }
}

/// Reads the import's error log: each refused device goes back to its own step, with an event saying why.
async fn imported(
    wf: &AzureWorkflow,
    job: &JobRecord,
    run: &mut HubRun,
    container: &BlobContainerClient,
    import: String,
    written: u64,
) -> Advance {
    let host = run.hub.clone();
    let named = errors_blob(&job.id, &host);
    let log = match container.exists(&named).await {
        Ok(true) => named,
        Ok(false) => crate::azure::hub_jobs::IMPORT_ERRORS_BLOB.to_string(),
        Err(e) => return blob_failure(wf, job, run, &format!("looking for {named}"), e).await,
    };
    let mut batches = LineBatches::new(container.reader(&log));
    let (mut refused, mut etag_changed) = (0u64, 0u64);
    let mut events = Vec::new();
    while let Some(batch) = batches.next().await {
        let batch = match batch {
            Ok(b) => b,
            // No log: nothing was refused.
            Err(e) if e.is_not_found() => break,
            Err(e) => return blob_failure(wf, job, run, &format!("reading {log}"), e).await,
        };
        let matched = match match_items(wf, job, &host, &batch.lines, "deviceId").await {
            Ok(m) => m,
            Err(e) => return retry(e),
        };
        let mut ids = Vec::new();
        for ((raw, _), item) in matched
            .iter()
            .filter(|(_, it)| it.hub_job.as_deref() == Some(run.run.as_str()))
        {
            let err: ImportErrorLine = serde_json::from_str(raw).unwrap_or_default();
            let why = if err.is_etag_mismatch() {
                etag_changed += 1;
                "its identity changed since the export (ETag)".to_string()
            } else {
                format!(
                    "the import refused it ({} {})",
                    err.code().map(|c| c.to_string()).unwrap_or_default(),
                    err.error_status.clone().unwrap_or_default()
                )
            };
            ids.push(item.device_id.as_str());
            if events.len() < MAX_DEVICE_EVENTS {
                events.push(NewEvent {
                    item_id: Some(item.id.clone()),
                    ..event(
                        "import_refused",
                        format!("{}: {why}; it is written on its own instead", item.registration_id),
                        json!({"hub": host, "hub_job": import, "error_code": err.error_code, "error_status": err.error_status}),
                    )
                });
            }
        }
        refused += ids.len() as u64;
        let unmarked = wf
            .store
            .move_hub_devices(&job.id, &host, &run.run, None, &ids, wf.clock.now_ms())
            .await;
        if let Err(e) = unmarked {
            return retry(format!("returning refused devices to their own step: {e}"));
        }
    }
    events.insert(
        0,
        event(
            "hub_job_imported",
            format!(
                "hub {host}: import job {import} ended; {} of {written} device(s) refused ({etag_changed} changed since the export), the rest to verify",
                refused
            ),
            json!({"hub": host, "hub_job": import, "written": written, "refused": refused, "etag_changed": etag_changed, "error_log": log}),
        ),
    );
    // The import blob carries the devices' keys: it goes once the import is over.
    delete_blob(container, &blob(&job.id, &host, "import.txt")).await;
    run.phase = Phase::Imported { import };
    Advance::Moved(events)
}

/// Per-device events one hub run records at most (a million refusals are counted, not listed).
const MAX_DEVICE_EVENTS: usize = 1_000;

/// Reads the verification export: the devices that show the change are done; the others fall back.
async fn verified(
    wf: &AzureWorkflow,
    job: &JobRecord,
    run: &mut HubRun,
    container: &BlobContainerClient,
    import: &str,
    export: &str,
) -> Advance {
    let host = run.hub.clone();
    let change = Change::of(job);
    let name = blob(&job.id, &host, "verify.txt");
    let mut batches = LineBatches::new(container.reader(&name));
    let mut dropped = 0u64;
    let (mut not_shown, mut shown) = (0u64, 0u64);
    let steps = job.plan.item_steps().len();
    let began = std::time::Instant::now();
    let mut spent = Spent::default();
    let mut writes = BatchWrites::new(&wf.store);
    while let Some(batch) = Spent::add(&mut spent.reading, batches.next()).await {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => return blob_failure(wf, job, run, &format!("reading {name}"), e).await,
        };
        dropped += batch.dropped;
        // No lookup: the statements themselves pick the job's devices this run marked, by device id. A device
        // the export shows changed is done at once.
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for (_, line) in &batch.lines {
            let Some(id) = line["id"].as_str() else {
                continue;
            };
            if change.shows(Some(line)) {
                good.push(id.to_string());
            } else {
                bad.push(id.to_string());
            }
        }
        let (at, import) = (RunWrite::of(wf, job, run), import.to_string());
        let write = async move {
            let good: Vec<&str> = good.iter().map(String::as_str).collect();
            let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
            let (job_id, hub, mark, now) = (&at.job_id, &at.hub, &at.mark, at.now);
            let shown = at
                .store
                .finish_hub_devices(job_id, hub, mark, &import, steps, &good, now)
                .await?;
            let not_shown = at
                .store
                .move_hub_devices(job_id, hub, mark, None, &bad, now)
                .await?;
            Ok((shown, not_shown))
        };
        if let Err(e) = Spent::add(&mut spent.database, writes.push(write)).await {
            return retry(format!("settling the devices the export lists: {e}"));
        }
    }
    match Spent::add(&mut spent.database, writes.finish()).await {
        Ok(done) => {
            for (s, n) in done {
                shown += s;
                not_shown += n;
            }
        }
        Err(e) => return retry(format!("settling the devices the export lists: {e}")),
    }
    // Devices the export did not list: gone, which is the change for a disable or delete, not for an undo.
    // An unreadable line could have been any device: then nobody unlisted counts as gone.
    // What is still marked is what the export did not list: done straight from the mark when gone counts,
    // else back to its own step first (and the finish below finds nothing).
    let gone_done = change.shows(None) && dropped == 0;
    let unlisted_back = if gone_done {
        0
    } else {
        match wf
            .store
            .move_hub_job(&job.id, &host, &run.run, None, wf.clock.now_ms())
            .await
        {
            Ok(n) => n,
            Err(e) => {
                return retry(format!("settling the devices the export did not list: {e}"));
            }
        }
    };
    // Devices an earlier version relabelled `{run}:verified` before finishing them all at the end.
    let relabelled = match finish(wf, job, run, &format!("{}:verified", run.run), import, 0).await {
        Ok((n, _)) => n,
        Err(e) => return retry(e),
    };
    let (verified, verified_event) =
        match finish(wf, job, run, &run.run, import, shown + relabelled).await {
            Ok(done) => done,
            Err(e) => return retry(e),
        };
    let verified = verified - relabelled;
    spent.total = began.elapsed();
    let missing = unlisted_back + (verified - shown);
    let events = vec![
        event(
            "hub_job_verification_read",
            format!(
                "hub {host}: verification export {export} read; {not_shown} device(s) not yet {} and {} not listed{}",
                change.verb(),
                missing,
                if gone_done {
                    " (gone: done); the rest go device by device"
                } else {
                    "; they go device by device"
                },
            ),
            json!({"hub": host, "hub_job": export, "not_shown": not_shown, "not_listed": missing, "unreadable_lines": dropped,
                "spent": spent.json()}),
        ),
        verified_event,
    ];
    // Only once every device is settled: a retry before this reads the export again.
    delete_blob(container, &name).await;
    run.phase = Phase::Done;
    Advance::Moved(events)
}

/// Finishes the devices marked `mark` as done by hub job `hub_job`; the event counts `finished_before` too
/// (those a pass over the verification export finished batch by batch).
async fn finish(
    wf: &AzureWorkflow,
    job: &JobRecord,
    run: &HubRun,
    mark: &str,
    hub_job: &str,
    finished_before: u64,
) -> Result<(u64, NewEvent), String> {
    let steps = job.plan.item_steps().len();
    let n = finished_before
        + wf.store
            .finish_hub_job(&job.id, &run.hub, mark, hub_job, steps, wf.clock.now_ms())
            .await
            .map_err(|e| format!("finishing the verified devices: {e}"))?;
    let e = event(
        "hub_job_verified",
        format!(
            "hub {}: {n} device(s) {} and verified through hub job {hub_job}",
            run.hub,
            Change::of(job).verb()
        ),
        json!({"hub": run.hub, "hub_job": hub_job, "devices": n}),
    );
    Ok((n, e))
}

/// A blob that cannot be read or written: a transient error retries; anything else (an expired SAS, a
/// missing container, a blob that refuses writes) ends the path for this hub.
async fn blob_failure(
    wf: &AzureWorkflow,
    job: &JobRecord,
    run: &mut HubRun,
    doing: &str,
    e: BlobError,
) -> Advance {
    if e.is_retryable() {
        return retry(format!("{doing}: {e}"));
    }
    let hint = if e.is_auth_failure() {
        " (is the SAS expired, or missing a permission?)"
    } else {
        ""
    };
    fall_back(wf, job, run, &format!("{doing} failed: {e}{hint}")).await
}

/// Ends the job path for this hub: every device it marked goes back to its own step.
async fn fall_back(wf: &AzureWorkflow, job: &JobRecord, run: &mut HubRun, why: &str) -> Advance {
    // The reason may quote the hub's own words (a job's failure reason), which could hold a SAS URL.
    let why = &crate::azure::blob::redact_sas_in_text(why);
    let host = run.hub.clone();
    let mut events: Vec<NewEvent> = snapshot_before_falling_back(wf, job, run)
        .await
        .into_iter()
        .collect();
    let now = wf.clock.now_ms();
    let mut n = 0;
    for mark in [run.run.clone(), format!("{}:verified", run.run)] {
        match wf
            .store
            .move_hub_job(&job.id, &host, &mark, None, now)
            .await
        {
            Ok(m) => n += m,
            Err(e) => return retry(format!("returning the devices to their own step: {e}")),
        }
    }
    run.phase = Phase::Done;
    events.push(event(
        "hub_job_fallback",
        format!("hub {host}: {why}; its devices are handled device by device instead"),
        json!({"hub": host, "run": run.run, "devices_marked": n, "why": why}),
    ));
    Advance::Moved(events)
}

/// A run that falls back after its selection still keeps the snapshot (an undo names it for the devices
/// deleted on their own steps) and never leaves the export, with every identity's keys, behind. Both are
/// tried once: the blob storage may be what failed.
async fn snapshot_before_falling_back(
    wf: &AzureWorkflow,
    job: &JobRecord,
    run: &HubRun,
) -> Option<NewEvent> {
    let (Phase::Selected {
        snapshot_due: true, ..
    }
    | Phase::Importing {
        snapshot_due: true, ..
    }) = run.phase
    else {
        return None;
    };
    let host = &run.hub;
    let container = match container(wf, source_job(job), host).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(job = %job.id, hub = %host, error = %e, "no snapshot taken: the blob container cannot be opened");
            return None;
        }
    };
    match take_snapshot(wf, job, host, &container).await {
        Ok(e) => Some(e),
        Err(e) => {
            let why = match e {
                PassError::Blob(e) => e.to_string(),
                PassError::Store(e) => e,
            };
            tracing::warn!(job = %job.id, hub = %host, error = %why, "no snapshot taken before falling back");
            delete_blob(&container, &blob(&job.id, host, "export.txt")).await;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(export: &Value) -> (Value, String) {
        let text = export.to_string();
        (LineHead::parse(&text).unwrap(), text)
    }

    fn import(change: Change, export: &Value) -> Option<Value> {
        let (head, text) = lines(export);
        let raw: RawLine = serde_json::from_str(&text).unwrap();
        import_line(change, &head, &raw, "stolen", "job-1")
            .map(|l| serde_json::from_str(&l).unwrap())
    }

    #[test]
    fn import_lines_copy_the_identity_as_exported() {
        let export = json!({"id": "d\"1", "eTag": "e1", "status": "enabled", "statusReason": null,
            "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "p+/=", "secondaryKey": "s"}},
            "capabilities": {"iotEdge": false}, "deviceScope": null, "twinETag": "t1", "tags": {"a": 1}});
        assert_eq!(
            import(Change::Disable, &export),
            Some(
                json!({"id": "d\"1", "eTag": "e1", "authentication": export["authentication"],
                "capabilities": {"iotEdge": false}, "importMode": "updateIfMatchETag",
                "status": "disabled", "statusReason": "stolen"})
            )
        );
        assert_eq!(
            import(Change::Delete, &export),
            Some(json!({"id": "d\"1", "eTag": "e1", "importMode": "deleteIfMatchETag"}))
        );
        let mut disabled = export.clone();
        disabled["status"] = json!("disabled");
        assert_eq!(import(Change::Disable, &disabled), None, "already so");
        // An undo re-enables only what the undone job disabled.
        assert_eq!(import(Change::Enable, &disabled), None);
        disabled["statusReason"] = json!("deprovisiond job job-1: stolen");
        assert_eq!(
            import(Change::Enable, &disabled).unwrap()["status"],
            "enabled"
        );
        let mut recreated = export.clone();
        let o = recreated.as_object_mut().unwrap();
        o.remove("eTag");
        o.remove("twinETag");
        o.insert("importMode".into(), json!("create"));
        assert_eq!(import(Change::Recreate, &export), Some(recreated));
    }

    #[test]
    fn an_import_an_earlier_version_started_marks_its_devices_again() {
        // That version marked them during the selection; marking again is idempotent.
        let phase: Phase =
            serde_json::from_value(json!({"phase": "importing", "hub_job": "j", "written": 3}))
                .unwrap();
        assert!(matches!(
            phase,
            Phase::Importing {
                marked: false,
                written: 3,
                snapshot_due: false,
                ..
            }
        ));
        // That version also took the snapshot in its selection: no pass takes it again.
        let phase: Phase =
            serde_json::from_value(json!({"phase": "selected", "written": 3})).unwrap();
        assert!(matches!(
            phase,
            Phase::Selected {
                snapshot_due: false,
                ..
            }
        ));
    }
}
