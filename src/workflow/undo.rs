//! Undo jobs (`POST /v1/deprovisions/{id}/undo`): revert what a finished deprovision job changed in the
//! hubs, as a job of its own linked to it.
//!
//! | step | what it does |
//! |---|---|
//! | `select_undo` | the undone job's devices that it changed (disabled an enabled identity, deleted one) become this job's items, a page per run |
//! | `import_jobs` | groups: hubs where that pays (or, for a delete, where the undone job left a snapshot) re-enable by import, or re-create from the snapshot with the keys |
//! | `restore` (device) | enable the identity again if the undone job's status reason is still on it; a deleted identity without a snapshot cannot come back with its keys and fails, saying so |
//! | `restore_dps` | only when asked: enable the enrollment or group at DPS again |
//!
//! Nothing the undone job found already disabled is enabled, and an identity disabled again by someone
//! else since (another status reason) is left as it is.

use serde_json::json;

use super::AzureWorkflow;
use super::import_jobs::{Change, disabled_by, snapshot_blob, source_job};
use super::outcome::from_azure;
use super::registry::{CHANGED_IN, CUT_OFF_IN, hubs_in};
use crate::azure::hub::{IfMatch, set_status};
use crate::azure::models::{DeviceStatus, ProvisioningStatus};
use crate::azure::{AzureError, DpsClient};
use crate::domain::job::Target;
use crate::domain::lane::{Outcome, StepError};
use crate::store::{ItemRecord, JobRecord, NewEvent, NewItem, StepEffects};
use crate::worker::StepResult;

/// The undone job's items read per `select_undo` run.
const SELECT_PAGE: u32 = 500;

fn fail(msg: impl Into<String>) -> StepResult {
    Outcome::Fail(StepError::msg(msg)).into()
}

fn retry(msg: impl Into<String>) -> StepResult {
    Outcome::Retry {
        error: StepError::msg(msg),
        retry_after: None,
    }
    .into()
}

/// The hub where the undone job changed this device, if it changed it anywhere.
fn changed_hub(item: &ItemRecord) -> Option<String> {
    if item.hub_job.is_some() {
        return (item.changed == Some(true))
            .then(|| item.hub.clone())
            .flatten();
    }
    let data = item.data.as_ref();
    let changed = hubs_in(data, CHANGED_IN);
    if data.is_some_and(|d| d.get(CHANGED_IN).is_some()) {
        return changed.into_iter().next();
    }
    // Devices handled before the service recorded what it changed: where it cut them off.
    hubs_in(data, CUT_OFF_IN).into_iter().next()
}

/// `select_undo`: a page of the undone job's devices; those it changed become items (cursor = last seq).
pub(super) async fn select(wf: &AzureWorkflow, job: &JobRecord) -> StepResult {
    let source = source_job(job);
    let after = job.cursor.as_deref().and_then(|c| c.parse::<i64>().ok());
    let page = match wf.store.changed_items(source, after, SELECT_PAGE).await {
        Ok(p) => p,
        Err(e) => return retry(format!("reading job {source}'s devices: {e}")),
    };
    let last = page.last().map(|it| it.seq);
    let items: Vec<NewItem> = page
        .iter()
        .filter_map(|it| {
            let hub = changed_hub(it)?;
            Some(NewItem {
                registration_id: it.registration_id.clone(),
                device_id: Some(
                    it.device_id
                        .clone()
                        .unwrap_or_else(|| it.registration_id.clone()),
                ),
                hub: Some(hub),
                // Whether the undone job's import handled it: only those come back from its snapshot.
                data: Some(json!({"undo_of_item": it.id, "via_import": it.hub_job.is_some()})),
            })
        })
        .collect();
    let effects = StepEffects {
        events: vec![NewEvent {
            detail: Some(json!({"undo_of": source, "read": page.len(), "selected": items.len()})),
            ..NewEvent::new(
                "undo_selected",
                format!(
                    "{} of {} device(s) of job {source} read were changed by it and are undone",
                    items.len(),
                    page.len()
                ),
            )
        }],
        new_items: items,
        ..StepEffects::default()
    };
    match (last, page.len() as u32 == SELECT_PAGE) {
        (Some(seq), true) => StepResult {
            outcome: Outcome::Continue {
                cursor: seq.to_string(),
            },
            effects,
        },
        _ => StepResult {
            outcome: Outcome::Done,
            effects,
        },
    }
}

/// The `restore` step of one device: enable it again, or find it re-created.
pub(super) async fn restore(wf: &AzureWorkflow, job: &JobRecord, item: &ItemRecord) -> StepResult {
    let Some(host) = item.hub.clone() else {
        return fail("the undone job recorded no hub for this device");
    };
    let device_id = item
        .device_id
        .clone()
        .unwrap_or_else(|| item.registration_id.clone());
    let hub = match wf.clients.hub(&host) {
        Ok(h) => h,
        Err(e) => return fail(e.to_string()),
    };
    let change = Change::of(job);
    let cost = if change == Change::Enable { 2.0 } else { 1.0 };
    if let Err(delay) = wf.pace_hub(&host, cost).await {
        return Outcome::Paced {
            hub: Some(host),
            delay,
        }
        .into();
    }
    let current = match hub.get_device(&device_id).await {
        Ok(d) => Some(d),
        Err(e) if e.is_not_found() => None,
        Err(e) => return azure(wf, &host, "reading the device identity", &e).await,
    };
    let event = |kind: &str, message: String| StepResult {
        outcome: Outcome::Done,
        effects: StepEffects {
            events: vec![NewEvent {
                item_id: Some(item.id.clone()),
                detail: Some(json!({"hub": host})),
                ..NewEvent::new(kind, format!("{}: {message}", item.registration_id))
            }],
            ..StepEffects::default()
        },
    };
    match (change, current) {
        (Change::Recreate, Some(_)) => {
            wf.refund_hub(&host, cost - 1.0).await;
            event(
                "device_restored",
                format!("device `{device_id}` exists in hub {host} (not re-created)"),
            )
        }
        (Change::Recreate, None) => fail(format!(
            "device `{device_id}` was deleted from hub {host} on its own step, so no import of its snapshot line \
             can be trusted to hold its current keys; re-create it by hand: {}",
            match wf.clients.jobs_storage(&host) {
                Some(s) => format!(
                    "look for its line in {} blob {}",
                    s.describe(source_job(job), &host),
                    snapshot_blob(source_job(job), &host)
                ),
                None =>
                    "the undone job ran without blob storage for this hub, so it took no snapshot"
                        .into(),
            }
        )),
        (_, None) => Outcome::Skipped(format!(
            "device `{device_id}` no longer exists in hub {host}: nothing to enable"
        ))
        .into(),
        (_, Some(d)) if d.status != Some(DeviceStatus::Disabled) => {
            wf.refund_hub(&host, 1.0).await;
            event(
                "device_restored",
                format!("device `{device_id}` is enabled in hub {host} already"),
            )
        }
        (_, Some(d)) => {
            let line = json!({"statusReason": d.status_reason});
            if !disabled_by(&line, source_job(job)) {
                wf.refund_hub(&host, 1.0).await;
                return Outcome::Skipped(format!(
                    "device `{device_id}` was disabled again since job {} (status reason {:?}): left as it is",
                    source_job(job),
                    d.status_reason.as_deref().unwrap_or("")
                ))
                .into();
            }
            let enabled = match set_status(&d, DeviceStatus::Enabled, None) {
                Ok(e) => e,
                Err(e) => return fail(format!("building the update: {}", e.message())),
            };
            match hub
                .replace_device(&enabled, IfMatch::from_etag(d.etag.as_deref()))
                .await
            {
                Ok(stored) if stored.status == Some(DeviceStatus::Enabled) => event(
                    "device_restored",
                    format!("device `{device_id}` enabled again in hub {host} (verified from the hub's answer)"),
                ),
                Ok(_) => retry(format!(
                    "hub {host} accepted the update but `{device_id}` is still disabled"
                )),
                Err(e) if e.is_precondition_failed() => Outcome::Retry {
                    error: StepError::msg(format!(
                        "device `{device_id}` changed in {host} while being enabled (412); reading it again"
                    )),
                    retry_after: Some(std::time::Duration::ZERO),
                }
                .into(),
                Err(e) => azure(wf, &host, "enabling the device identity", &e).await,
            }
        }
    }
}

async fn azure(wf: &AzureWorkflow, host: &str, doing: &str, e: &AzureError) -> StepResult {
    if e.status() == Some(429) {
        let wait = wf.hub_throttled(host, e.retry_after()).await;
        return Outcome::Throttled {
            error: super::outcome::step_error(doing, e),
            delay: crate::domain::pacing::throttle_delay(e.retry_after(), wait, &mut rand::rng()),
        }
        .into();
    }
    from_azure(&format!("{doing} in {host}"), e).into()
}

/// `restore_dps`: the undone job's enrollment or group enabled again at DPS, verified from DPS's answer.
pub(super) async fn restore_dps(dps: &DpsClient, job: &JobRecord) -> StepResult {
    let (kind, id, result) = match &job.request.target {
        Target::IndividualEnrollment(t) => (
            "individual enrollment",
            t.registration_id.as_str(),
            dps.set_enrollment_status(t.registration_id.as_str(), ProvisioningStatus::Enabled)
                .await
                .map(|s| s.stored.provisioning_status),
        ),
        Target::EnrollmentGroup(t) => (
            "enrollment group",
            t.group_id.as_str(),
            dps.set_enrollment_group_status(t.group_id.as_str(), ProvisioningStatus::Enabled)
                .await
                .map(|s| s.stored.provisioning_status),
        ),
        Target::GroupDevice(_) => {
            return fail(
                "a group device's block is a disabled enrollment that must never be removed; DPS is not restored",
            );
        }
    };
    match result {
        Ok(Some(ProvisioningStatus::Disabled)) => retry(format!(
            "DPS accepted the update but {kind} `{id}` is still disabled"
        )),
        Ok(_) => StepResult {
            outcome: Outcome::Done,
            effects: StepEffects {
                events: vec![NewEvent::new(
                    "dps_restored",
                    format!("{kind} `{id}` enabled again at DPS"),
                )],
                ..StepEffects::default()
            },
        },
        Err(e) if e.is_not_found() => fail(format!("{kind} `{id}` no longer exists at DPS")),
        Err(e) => from_azure(&format!("enabling the {kind}"), &e).into(),
    }
}
