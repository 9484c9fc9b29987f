//! The device's `registry` step: cut the device's identity off in every hub it can be in.
//!
//! Runs only after the job's revoke step succeeded (the engine's items barrier), so every write and
//! every lookup here happens once DPS no longer admits the device. The hubs come from
//! [`discovery::hub_search`]: the hub the record names, the enrollment's linked hubs when it names none
//! (or has no identity there), every configured hub for an `all_hubs` sweep. The device counts done only
//! when each of those hubs answered: identity disabled (verified), deleted (verified), or 404.

use serde_json::{Value, json};

use super::AzureWorkflow;
use super::discovery::{self, HubSearch, NO_RECORD};
use super::outcome::{from_azure, step_error};
use crate::azure::hub::{IfMatch, set_status};
use crate::azure::models::DeviceStatus;
use crate::azure::{AzureError, HubClient};
use crate::domain::job::RegistryAction;
use crate::domain::lane::{Outcome, StepError};
use crate::domain::pacing::throttle_delay;
use crate::store::{ItemRecord, JobRecord, NewEvent, StepEffects};
use crate::worker::StepResult;
use std::time::Duration;

/// Longest `statusReason` an IoT hub stores.
const STATUS_REASON_MAX: usize = 128;
/// Item-data key of the hubs where an earlier run of the step already cut the identity off.
pub(super) const CUT_OFF_IN: &str = "cut_off_in";
/// Item-data key of the hubs where this job itself made the change (not found already disabled).
pub(super) const CHANGED_IN: &str = "changed_in";

/// What one hub said about the device.
enum HubAnswer {
    /// The identity is disabled or deleted there (verified); the event says which, and whether this job
    /// made the change (an undo reverts only those).
    CutOff(NewEvent, bool),
    /// No identity with that device id there.
    Absent,
}

/// What the step learned so far, hub by hub.
#[derive(Default)]
struct SearchReport {
    checked: Vec<String>,
    cut_off: Vec<String>,
    changed: Vec<String>,
    no_credentials: Vec<String>,
    events: Vec<NewEvent>,
}

/// Runs the `registry` step of one device.
pub(super) async fn run_registry_step(
    wf: &AzureWorkflow,
    job: &JobRecord,
    item: &ItemRecord,
) -> StepResult {
    let device_id = item
        .device_id
        .clone()
        .unwrap_or_else(|| item.registration_id.clone());
    let search = search_for(wf, job, item);
    let earlier = earlier_cut_offs(item.data.as_ref());
    // Hubs an earlier run already changed stay changed (a retry finds them disabled or gone).
    let mut report = SearchReport {
        changed: hubs_in(item.data.as_ref(), CHANGED_IN),
        ..SearchReport::default()
    };
    if let Err(stop) = check_hubs(
        wf,
        job,
        item,
        &device_id,
        &search.first,
        &earlier,
        &mut report,
    )
    .await
    {
        return with_progress(stop, item, report);
    }
    if report.cut_off.is_empty() && report.no_credentials.is_empty() {
        if let Err(stop) = check_hubs(
            wf,
            job,
            item,
            &device_id,
            &search.if_absent,
            &earlier,
            &mut report,
        )
        .await
        {
            return with_progress(stop, item, report);
        }
    }
    conclude(item, &device_id, report)
}

/// The hubs to check for this item, from its record's hub, the job's linked hubs and the sweep.
fn search_for(wf: &AzureWorkflow, job: &JobRecord, item: &ItemRecord) -> HubSearch {
    let configured = wf.clients.hub_hosts();
    let linked: Vec<String> = match job.context.as_ref().map(|c| &c.linked_hubs) {
        Some(hubs) if !hubs.is_empty() => hubs.clone(),
        // A job resolved before linked hubs were recorded: every configured hub could hold the device.
        _ => discovery::linked_hubs(None, None, &configured),
    };
    discovery::hub_search(item.hub.as_deref(), &linked, &configured, job.request.sweep)
}

fn earlier_cut_offs(data: Option<&Value>) -> Vec<String> {
    hubs_in(data, CUT_OFF_IN)
}

/// The hubs an item-data list names.
pub(super) fn hubs_in(data: Option<&Value>, key: &str) -> Vec<String> {
    data.and_then(|d| d[key].as_array())
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Asks each hub in turn; stops at the first answer that needs a retry or fails the device.
async fn check_hubs(
    wf: &AzureWorkflow,
    job: &JobRecord,
    item: &ItemRecord,
    device_id: &str,
    hubs: &[String],
    earlier: &[String],
    report: &mut SearchReport,
) -> Result<(), StepResult> {
    for host in hubs {
        let Ok(hub) = wf.clients.hub(host) else {
            // Not "absent": nobody asked. The device fails once the other hubs are done.
            report.no_credentials.push(host.clone());
            continue;
        };
        let was_cut_off = earlier.contains(host);
        let answer = match job.request.registry {
            RegistryAction::Disable => {
                disable_identity(wf, hub, host, job, item, device_id).await?
            }
            RegistryAction::Delete => {
                delete_identity(wf, hub, host, item, device_id, was_cut_off).await?
            }
        };
        report.checked.push(host.clone());
        if let HubAnswer::CutOff(event, changed) = answer {
            report.cut_off.push(host.clone());
            if changed && !report.changed.contains(host) {
                report.changed.push(host.clone());
            }
            report.events.push(event);
        }
    }
    Ok(())
}

/// GET, then a full-replace PUT with `status: disabled` and If-Match, verified from the PUT's answer
/// (the hub returns the stored identity); read again only when that answer does not show it disabled.
/// An identity already disabled is not written again. 404: absent. Two registry operations at most,
/// taken from the hub's budget before the GET (the unneeded PUT's is given back).
async fn disable_identity(
    wf: &AzureWorkflow,
    hub: &HubClient,
    host: &str,
    job: &JobRecord,
    item: &ItemRecord,
    device_id: &str,
) -> Result<HubAnswer, StepResult> {
    wf.pace_hub(host, 2.0)
        .await
        .map_err(|delay| paced(host, delay))?;
    let current = match hub.get_device(device_id).await {
        Ok(d) => d,
        Err(e) if e.is_not_found() => {
            wf.refund_hub(host, 1.0).await;
            return Ok(HubAnswer::Absent);
        }
        Err(e) => {
            wf.refund_hub(host, 1.0).await;
            return Err(azure_failure(
                wf,
                host,
                &format!("reading the device identity in {host}"),
                &e,
            )
            .await);
        }
    };
    let disabled = |d: &crate::azure::models::Device, how: &str, changed: bool| {
        HubAnswer::CutOff(
            item_event(
                item,
                "device_disabled",
                format!(
                    "{}: device `{device_id}` disabled in hub {host} ({how})",
                    item.registration_id
                ),
                Some(json!({"hub": host, "etag": d.etag, "status_reason": d.status_reason})),
            ),
            changed,
        )
    };
    if current.status == Some(DeviceStatus::Disabled) {
        // Nothing to change: no write, and the read just made is the verification.
        wf.refund_hub(host, 1.0).await;
        // Disabled with this job's own reason: an earlier attempt (or an import of this job) wrote it.
        let ours = current
            .status_reason
            .as_deref()
            .is_some_and(|r| r.starts_with(&format!("deprovisiond job {}", job.id)));
        return Ok(disabled(
            &current,
            "already disabled; not written again",
            ours,
        ));
    }
    let reason = status_reason(job);
    let updated = set_status(&current, DeviceStatus::Disabled, Some(&reason))
        .map_err(|e| fail(format!("building the update: {}", e.message())))?;
    match hub
        .replace_device(&updated, IfMatch::from_etag(current.etag.as_deref()))
        .await
    {
        Ok(stored) if stored.status == Some(DeviceStatus::Disabled) => {
            Ok(disabled(&stored, "verified from the hub's answer", true))
        }
        Ok(_) => verify_disabled(wf, hub, host, device_id, &disabled).await,
        Err(e) if e.is_precondition_failed() => Err(retry_now(format!(
            "device `{device_id}` changed in {host} while being disabled (412); reading it again"
        ))),
        // Deleted between the GET and the PUT: nothing left to cut off there.
        Err(e) if e.is_not_found() => Ok(HubAnswer::Absent),
        Err(e) => Err(azure_failure(
            wf,
            host,
            &format!("disabling the device identity in {host}"),
            &e,
        )
        .await),
    }
}

/// The read-back after a PUT whose answer did not show the identity disabled (a third operation).
async fn verify_disabled(
    wf: &AzureWorkflow,
    hub: &HubClient,
    host: &str,
    device_id: &str,
    disabled: &(dyn Fn(&crate::azure::models::Device, &str, bool) -> HubAnswer + Sync),
) -> Result<HubAnswer, StepResult> {
    wf.pace_hub(host, 1.0)
        .await
        .map_err(|delay| paced(host, delay))?;
    match hub.get_device(device_id).await {
        Ok(d) if d.status == Some(DeviceStatus::Disabled) => {
            Ok(disabled(&d, "verified by reading it again", true))
        }
        Ok(_) => Err(retry_now(format!(
            "hub {host} accepted the update but `{device_id}` is still enabled"
        ))),
        Err(e) if e.is_not_found() => Ok(HubAnswer::Absent),
        Err(e) => Err(azure_failure(
            wf,
            host,
            &format!("verifying the device identity in {host}"),
            &e,
        )
        .await),
    }
}

/// One DELETE with `If-Match: "*"`, which doubles as the lookup: 2xx means it existed and is gone
/// now (the hub deletes or fails, it does not half-delete), 404 means absent, or deleted by an
/// earlier run of this step. One registry operation.
async fn delete_identity(
    wf: &AzureWorkflow,
    hub: &HubClient,
    host: &str,
    item: &ItemRecord,
    device_id: &str,
    deleted_earlier: bool,
) -> Result<HubAnswer, StepResult> {
    wf.pace_hub(host, 1.0)
        .await
        .map_err(|delay| paced(host, delay))?;
    let how = match wf.bulk_deletes.delete(host, hub, device_id).await {
        Ok(()) => "the hub answered the DELETE with success",
        Err(e) if e.is_not_found() && deleted_earlier => "deleted by an earlier attempt; 404 now",
        Err(e) if e.is_not_found() => return Ok(HubAnswer::Absent),
        Err(e) => {
            return Err(azure_failure(
                wf,
                host,
                &format!("deleting the device identity in {host}"),
                &e,
            )
            .await);
        }
    };
    Ok(HubAnswer::CutOff(
        item_event(
            item,
            "device_deleted",
            format!(
                "{}: device `{device_id}` deleted from hub {host} ({how})",
                item.registration_id
            ),
            Some(json!({"hub": host})),
        ),
        true,
    ))
}

/// The step's outcome for an Azure failure in hub `host`: a 429 slows the hub's bucket down and
/// waits (Retry-After or the bucket's wait, jittered) without using up an attempt.
async fn azure_failure(
    wf: &AzureWorkflow,
    host: &str,
    context: &str,
    e: &AzureError,
) -> StepResult {
    if e.status() == Some(429) {
        let wait = wf.hub_throttled(host, e.retry_after()).await;
        let delay = throttle_delay(e.retry_after(), wait, &mut rand::rng());
        return Outcome::Throttled {
            error: step_error(context, e),
            delay,
        }
        .into();
    }
    from_azure(context, e).into()
}

/// The hub's budget is spent: the device waits for it, its attempt kept.
fn paced(host: &str, delay: Duration) -> StepResult {
    Outcome::Paced {
        hub: Some(host.to_string()),
        delay,
    }
    .into()
}

/// The device's outcome once every hub it could be in has answered.
fn conclude(item: &ItemRecord, device_id: &str, report: SearchReport) -> StepResult {
    let named = item.hub.as_deref();
    let record = describe_record(item);
    let checked = list(&report.checked);
    let mut events = report.events;
    if !report.no_credentials.is_empty() {
        let message = format!(
            "no credentials configured for hub(s) {} where device `{device_id}` may have an identity ({record}); \
             add them (see README, Azure configuration) and retry the job",
            list(&report.no_credentials)
        );
        return StepResult {
            outcome: Outcome::Fail(StepError::msg(message)),
            effects: StepEffects {
                item_data: Some(item_data(
                    item,
                    &report.checked,
                    &report.cut_off,
                    &report.changed,
                )),
                events,
                ..StepEffects::default()
            },
        };
    }
    let data = Some(item_data(
        item,
        &report.checked,
        &report.cut_off,
        &report.changed,
    ));
    if report.cut_off.is_empty() {
        return StepResult {
            outcome: Outcome::Skipped(format!(
                "{record}; no identity `{device_id}` in any hub checked ({checked})"
            )),
            effects: StepEffects {
                item_data: data,
                events,
                ..StepEffects::default()
            },
        };
    }
    let found_elsewhere: Vec<String> = report
        .cut_off
        .iter()
        .filter(|h| Some(h.as_str()) != named)
        .cloned()
        .collect();
    if !found_elsewhere.is_empty() {
        events.push(item_event(
            item,
            "found_by_lookup",
            format!(
                "{}: {record}, yet device `{device_id}` had an identity in {} (hubs checked: {checked})",
                item.registration_id,
                list(&found_elsewhere)
            ),
            Some(json!({"found_in": found_elsewhere, "hubs_checked": report.checked})),
        ));
    }
    StepResult {
        outcome: Outcome::Done,
        effects: StepEffects {
            item_data: data,
            events,
            ..StepEffects::default()
        },
    }
}

/// A retry or failure partway keeps what was already cut off, so a later run can tell a 404 it caused
/// itself (a delete) from an identity that never existed.
fn with_progress(mut stop: StepResult, item: &ItemRecord, report: SearchReport) -> StepResult {
    let mut cut_off = earlier_cut_offs(item.data.as_ref());
    for h in report.cut_off {
        if !cut_off.contains(&h) {
            cut_off.push(h);
        }
    }
    stop.effects.item_data = Some(item_data(item, &report.checked, &cut_off, &report.changed));
    stop.effects.events.extend(report.events);
    stop
}

fn item_data(
    item: &ItemRecord,
    checked: &[String],
    cut_off: &[String],
    changed: &[String],
) -> Value {
    let mut data = match item.data.clone() {
        Some(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    data.insert("hubs_checked".into(), json!(checked));
    data.insert(CUT_OFF_IN.into(), json!(cut_off));
    data.insert(CHANGED_IN.into(), json!(changed));
    Value::Object(data)
}

/// What DPS's record said, in words, for skip reasons and events.
fn describe_record(item: &ItemRecord) -> String {
    let status = discovery::item_record_status(item.data.as_ref());
    match (&item.hub, status) {
        (_, Some(NO_RECORD)) => {
            "never provisioned, or its record was deleted: DPS has no registration record for it"
                .into()
        }
        (Some(h), Some(s)) => format!("its registration record ({s}) names hub {h}"),
        (Some(h), None) => format!("its registration record names hub {h}"),
        (None, Some(s)) => format!("its registration record ({s}) names no hub"),
        (None, None) => "its registration record names no hub".into(),
    }
}

fn list(hubs: &[String]) -> String {
    if hubs.is_empty() {
        "none".into()
    } else {
        hubs.join(", ")
    }
}

fn item_event(item: &ItemRecord, kind: &str, message: String, detail: Option<Value>) -> NewEvent {
    NewEvent {
        item_id: Some(item.id.clone()),
        detail,
        ..NewEvent::new(kind, message)
    }
}

fn fail(msg: impl Into<String>) -> StepResult {
    Outcome::Fail(StepError::msg(msg)).into()
}

fn retry_now(msg: impl Into<String>) -> StepResult {
    // A write that did not stick (or a 412) is read again at once; the attempt still counts.
    Outcome::Retry {
        error: StepError::msg(msg),
        retry_after: Some(std::time::Duration::ZERO),
    }
    .into()
}

/// `deprovisiond <job id>: <reason code>`, at most 128 characters.
pub(super) fn status_reason(job: &JobRecord) -> String {
    let mut s = format!(
        "deprovisiond job {}: {}",
        job.id,
        job.request.reason.code.as_str()
    );
    if let Some(t) = &job.request.ticket {
        s.push_str(&format!(" ({})", t.key));
    }
    s.chars().take(STATUS_REASON_MAX).collect()
}
