//! The steps themselves. Each is idempotent: it may run again after a crash or a retry.

use std::time::Duration;

use serde_json::{Value, json};

use super::chain::{GroupCert, enabled_ancestors};
use super::discovery::{NO_RECORD, item_for, item_record_status, linked_hubs};
use super::outcome::{from_azure, step_error};
use super::{AzureWorkflow, CLEANUP_BATCH, ENUMERATE_PAGE};
use crate::azure::models::{
    AttestationType, DeviceRegistrationState, EnrollmentGroup, IndividualEnrollment,
    ProvisioningStatus,
};
use crate::azure::{AzureError, DpsClient, StatusSet};
use crate::domain::context::JobContext;
use crate::domain::job::{GroupDeviceTarget, GroupTarget, IndividualTarget, RevokeAction, Target};
use crate::domain::lane::{Outcome, StepError};
use crate::domain::plan::JobStep;
use crate::store::{JobRecord, NewEvent, NewItem, StepEffects, Tombstone, TombstoneState};
use crate::worker::StepResult;

fn fail(msg: impl Into<String>) -> StepResult {
    Outcome::Fail(StepError::msg(msg)).into()
}

fn retry_now(msg: impl Into<String>) -> StepResult {
    // A write that did not stick (or a 412) is read again at once; the attempt still counts.
    Outcome::Retry {
        error: StepError::msg(msg),
        retry_after: Some(Duration::ZERO),
    }
    .into()
}

fn azure(context: &str, e: &AzureError) -> StepResult {
    from_azure(context, e).into()
}

fn done_with(effects: StepEffects) -> StepResult {
    StepResult {
        outcome: Outcome::Done,
        effects,
    }
}

fn event(kind: &str, message: String, detail: Option<Value>) -> NewEvent {
    NewEvent {
        detail,
        ..NewEvent::new(kind, message)
    }
}

pub(super) async fn run_job_step(wf: &AzureWorkflow, job: &JobRecord, step: JobStep) -> StepResult {
    let dps = match wf.clients.dps(&job.dps) {
        Ok(d) => d,
        Err(e) => return Outcome::Fail(step_error("DPS instance", &e)).into(),
    };
    match (step, &job.request.target) {
        (JobStep::ImportJobs, _) => super::import_jobs::run(wf, job).await,
        (JobStep::SelectUndo, _) => super::undo::select(wf, job).await,
        (JobStep::RestoreDps, _) => super::undo::restore_dps(dps, job).await,
        (JobStep::Resolve, Target::IndividualEnrollment(t)) => {
            resolve_individual(wf, dps, job, t).await
        }
        (JobStep::Revoke, Target::IndividualEnrollment(t)) => {
            revoke_individual(wf, dps, job, t).await
        }
        (JobStep::Resolve, Target::EnrollmentGroup(t)) => resolve_group(wf, dps, t).await,
        (JobStep::Revoke, Target::EnrollmentGroup(t)) => disable_group(wf, job, dps, t).await,
        (JobStep::Enumerate, Target::EnrollmentGroup(t)) => enumerate(wf, dps, job, t).await,
        (JobStep::DeleteRegistrations, Target::EnrollmentGroup(_)) => {
            delete_registrations(wf, dps, job).await
        }
        (JobStep::DeleteGroup, Target::EnrollmentGroup(t)) => delete_group(dps, job, t).await,
        (JobStep::Resolve, Target::GroupDevice(t)) => resolve_group_device(wf, dps, t).await,
        (JobStep::Revoke, Target::GroupDevice(t)) => block_group_device(wf, dps, job, t).await,
        (other, target) => fail(format!(
            "step `{other}` does not apply to a {} target",
            target.kind().as_str()
        )),
    }
}

/// How a device item reads in a resolve event.
fn describe_item(item: &NewItem) -> String {
    let status = item_record_status(item.data.as_ref()).unwrap_or("unknown");
    match (&item.hub, &item.device_id) {
        (Some(h), Some(d)) => format!("registration record ({status}) names hub {h}, device {d}"),
        _ if status == NO_RECORD => {
            "DPS has no registration record for it: its id is looked up in the linked hubs"
                .to_string()
        }
        _ => format!(
            "registration record ({status}) names no hub: its id is looked up in the linked hubs"
        ),
    }
}

pub(super) fn attestation_name(t: AttestationType) -> &'static str {
    match t {
        AttestationType::None => "none",
        AttestationType::Tpm => "tpm",
        AttestationType::X509 => "x509",
        AttestationType::SymmetricKey => "symmetricKey",
    }
}

pub(super) fn status_name(s: Option<ProvisioningStatus>) -> &'static str {
    match s {
        Some(ProvisioningStatus::Disabled) => "disabled",
        // DPS's default when the field is absent is enabled.
        _ => "enabled",
    }
}

/// Reads a registration record; `None` when DPS has none.
pub(super) async fn registration(
    dps: &DpsClient,
    id: &str,
) -> Result<Option<DeviceRegistrationState>, AzureError> {
    match dps.get_registration(id).await {
        Ok(r) => Ok(Some(r)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

// ----- individual enrollment -----

async fn resolve_individual(
    wf: &AzureWorkflow,
    dps: &DpsClient,
    job: &JobRecord,
    t: &IndividualTarget,
) -> StepResult {
    let id = t.registration_id.as_str();
    let enrollment = match dps.get_enrollment(id).await {
        Ok(e) => e,
        Err(e) if e.is_not_found() => {
            return fail(format!(
                "DPS `{}` has no individual enrollment `{id}`",
                job.dps
            ));
        }
        Err(e) => return azure("reading the individual enrollment", &e),
    };
    if job.request.revoke == RevokeAction::Delete {
        match wf.store.find_tombstone(&job.dps, id).await {
            Ok(Some(tomb)) => {
                // A pending tombstone refuses just the same: its block may exist already.
                return fail(format!(
                    "`{id}` is a disabled enrollment that blocks a device of group `{}` (job {}, {}); deleting it would \
                     let the device enroll again through the group",
                    tomb.group_id,
                    tomb.job_id,
                    tomb.state.as_str()
                ));
            }
            Ok(None) => {}
            Err(e) => return retry_now(format!("checking tombstones: {e}")),
        }
    }
    // Read the registration state before anything destructive: deleting the enrollment removes it.
    let reg = match enrollment.registration_state.clone() {
        Some(r) if r.status.is_some() => Some(r),
        _ => match registration(dps, id).await {
            Ok(r) => r,
            Err(e) => return azure("reading the registration state", &e),
        },
    };
    let item = item_for(id, reg.as_ref());
    let attestation = attestation_name(enrollment.attestation.kind);
    let status = status_name(enrollment.provisioning_status);
    let message = format!(
        "individual enrollment `{id}` ({attestation}, {status}); {}",
        describe_item(&item)
    );
    let linked = linked_hubs(
        enrollment.iot_hubs.as_deref(),
        enrollment.iot_hub_host_name.as_deref(),
        &wf.clients.hub_hosts(),
    );
    let context = JobContext {
        attestation: Some(attestation.to_string()),
        provisioning_status: Some(status.to_string()),
        assigned_hub: item.hub.clone(),
        device_id: item.device_id.clone(),
        linked_hubs: linked,
        ..JobContext::default()
    };
    done_with(StepEffects {
        new_items: vec![item],
        events: vec![event("resolved", message, Some(detail_of(&context)))],
        context: Some(context),
        ..StepEffects::default()
    })
}

async fn revoke_individual(
    wf: &AzureWorkflow,
    dps: &DpsClient,
    job: &JobRecord,
    t: &IndividualTarget,
) -> StepResult {
    let id = t.registration_id.as_str();
    match job.request.revoke {
        RevokeAction::Disable => disable_enrollment(wf, job, dps, id).await,
        RevokeAction::Delete => {
            // DELETE and its verifying GET: two of the four operations taken.
            wf.refund_dps(&job.dps, REVOKE_CALLS - 2.0).await;
            match dps.delete_enrollment(id, None).await {
                Ok(()) => {}
                // Already gone (maybe by our own earlier attempt): done.
                Err(e) if e.is_not_found() => {}
                Err(e) => return azure("deleting the individual enrollment", &e),
            }
            match dps.get_enrollment(id).await {
                Err(e) if e.is_not_found() => done_with(StepEffects {
                    events: vec![event(
                        "enrollment_deleted",
                        format!("individual enrollment `{id}` deleted"),
                        None,
                    )],
                    ..StepEffects::default()
                }),
                Ok(_) => retry_now(format!(
                    "DPS still shows enrollment `{id}` after deleting it"
                )),
                Err(e) => azure("verifying the delete", &e),
            }
        }
    }
}

/// GET, then a full-replace PUT with `provisioningStatus: disabled` and If-Match (keys preserved), verified
/// from the PUT's answer (DPS answers with what it stored); read again only when that answer does not show it
/// disabled. An enrollment already disabled is not written again: the GET is the verification.
async fn disable_enrollment(
    wf: &AzureWorkflow,
    job: &JobRecord,
    dps: &DpsClient,
    id: &str,
) -> StepResult {
    let set = match dps
        .set_enrollment_status(id, ProvisioningStatus::Disabled)
        .await
    {
        Ok(set) => set,
        Err(e) if e.is_not_found() => {
            return fail(format!("individual enrollment `{id}` no longer exists"));
        }
        Err(e) if e.is_precondition_failed() => return changed_meanwhile("enrollment", id),
        Err(e) => return azure("disabling the individual enrollment", &e),
    };
    if set.stored.provisioning_status == Some(ProvisioningStatus::Disabled) {
        wf.refund_dps(&job.dps, REVOKE_CALLS - f64::from(set.calls))
            .await;
        return enrollment_disabled("enrollment_disabled", id, &set);
    }
    wf.refund_dps(&job.dps, REVOKE_CALLS - f64::from(set.calls) - 1.0)
        .await;
    verify_enrollment_disabled(dps, id, "enrollment_disabled").await
}

/// Operations a revoke step takes from the DPS budget before it starts: GET, attestation mechanism, PUT and a
/// verifying GET at most. What a step did not need is given back.
pub(super) const REVOKE_CALLS: f64 = 4.0;

/// Someone else wrote the enrollment between our GET and PUT (412): read it again at once.
fn changed_meanwhile(kind: &str, id: &str) -> StepResult {
    retry_now(format!(
        "{kind} `{id}` changed in DPS while being disabled (412); reading it again"
    ))
}

/// How an enrollment or group seen disabled got there, for the event.
fn how_disabled(written: bool) -> &'static str {
    if written {
        "verified from DPS's answer"
    } else {
        "already disabled; not written again"
    }
}

/// The done step for an enrollment seen disabled, by the GET (nothing written) or in the PUT's answer.
fn enrollment_disabled(kind: &str, id: &str, set: &StatusSet<IndividualEnrollment>) -> StepResult {
    let how = how_disabled(set.written);
    done_with(StepEffects {
        events: vec![event(
            kind,
            format!("individual enrollment `{id}` is disabled ({how})"),
            Some(json!({"etag": set.stored.etag, "written": set.written})),
        )],
        ..StepEffects::default()
    })
}

async fn verify_enrollment_disabled(dps: &DpsClient, id: &str, kind: &str) -> StepResult {
    match dps.get_enrollment(id).await {
        Ok(e) if e.provisioning_status == Some(ProvisioningStatus::Disabled) => {
            done_with(StepEffects {
                events: vec![event(
                    kind,
                    format!(
                        "individual enrollment `{id}` is disabled (verified by reading it again)"
                    ),
                    Some(json!({"etag": e.etag, "written": true})),
                )],
                ..StepEffects::default()
            })
        }
        Ok(_) => retry_now(format!(
            "DPS accepted the update but enrollment `{id}` is still enabled"
        )),
        Err(e) => azure("verifying the individual enrollment", &e),
    }
}

// ----- enrollment group -----

fn group_context(g: &EnrollmentGroup) -> JobContext {
    let info = g
        .attestation
        .x509
        .as_ref()
        .and_then(|x| x.signing_certificates.as_ref())
        .and_then(|s| s.primary.as_ref())
        .and_then(|c| c.info.as_ref());
    JobContext {
        attestation: Some(attestation_name(g.attestation.kind).to_string()),
        provisioning_status: Some(status_name(g.provisioning_status).to_string()),
        signing_subject: info.map(|i| i.subject_name.clone()),
        signing_issuer: info.map(|i| i.issuer_name.clone()),
        ..JobContext::default()
    }
}

/// The context as an event's detail (the timeline shows what resolve found).
fn detail_of(context: &JobContext) -> Value {
    serde_json::to_value(context).unwrap_or(Value::Null)
}

/// Hubs a group can assign its devices to (its `iotHubs`, else every configured hub).
fn group_linked_hubs(wf: &AzureWorkflow, group: &EnrollmentGroup) -> Vec<String> {
    linked_hubs(
        group.iot_hubs.as_deref(),
        group.iot_hub_host_name.as_deref(),
        &wf.clients.hub_hosts(),
    )
}

async fn resolve_group(wf: &AzureWorkflow, dps: &DpsClient, t: &GroupTarget) -> StepResult {
    let id = t.group_id.as_str();
    let group = match dps.get_enrollment_group(id).await {
        Ok(g) => g,
        Err(e) if e.is_not_found() => return fail(format!("DPS has no enrollment group `{id}`")),
        Err(e) => return azure("reading the enrollment group", &e),
    };
    let context = JobContext {
        linked_hubs: group_linked_hubs(wf, &group),
        ..group_context(&group)
    };
    let message = format!(
        "enrollment group `{id}` ({}, {})",
        context.attestation.as_deref().unwrap_or("?"),
        context.provisioning_status.as_deref().unwrap_or("?")
    );
    done_with(StepEffects {
        events: vec![event("resolved", message, Some(detail_of(&context)))],
        context: Some(context),
        ..StepEffects::default()
    })
}

/// As [`disable_enrollment`], for the group: no write when it is already disabled, verified from the PUT's
/// answer, read again only when that answer does not show it.
async fn disable_group(
    wf: &AzureWorkflow,
    job: &JobRecord,
    dps: &DpsClient,
    t: &GroupTarget,
) -> StepResult {
    let id = t.group_id.as_str();
    let set = match dps
        .set_enrollment_group_status(id, ProvisioningStatus::Disabled)
        .await
    {
        Ok(set) => set,
        Err(e) if e.is_not_found() => {
            return fail(format!("enrollment group `{id}` no longer exists"));
        }
        Err(e) if e.is_precondition_failed() => return changed_meanwhile("enrollment group", id),
        Err(e) => return azure("disabling the enrollment group", &e),
    };
    let disabled = |g: &EnrollmentGroup, how: &str| {
        done_with(StepEffects {
            events: vec![event(
                "group_disabled",
                format!(
                    "enrollment group `{id}` is disabled ({how}): its signing certificate is blocklisted"
                ),
                Some(json!({"etag": g.etag, "written": set.written})),
            )],
            ..StepEffects::default()
        })
    };
    if set.stored.provisioning_status == Some(ProvisioningStatus::Disabled) {
        wf.refund_dps(&job.dps, REVOKE_CALLS - f64::from(set.calls))
            .await;
        return disabled(&set.stored, how_disabled(set.written));
    }
    wf.refund_dps(&job.dps, REVOKE_CALLS - f64::from(set.calls) - 1.0)
        .await;
    match dps.get_enrollment_group(id).await {
        Ok(g) if g.provisioning_status == Some(ProvisioningStatus::Disabled) => {
            disabled(&g, "verified by reading it again")
        }
        Ok(_) => retry_now(format!(
            "DPS accepted the update but group `{id}` is still enabled"
        )),
        Err(e) => azure("verifying the enrollment group", &e),
    }
}

/// One page of the group's registration states per run; the continuation token is the cursor.
/// Most registration-state pages one run of the enumerate step reads: each run is a claim, a write and a
/// settle, which at 100 records a page cost more time than the DPS calls (about 0.1 s a page, 10 s before
/// the first hub call of a 10,000-device group).
const ENUMERATE_PAGES_PER_STEP: usize = 10;

/// Up to [`ENUMERATE_PAGES_PER_STEP`] pages of the group's registration states per run; the continuation
/// token is the cursor. The first page's operation was taken before the step started; each further page
/// takes its own from the instance's budget, and the run stops early when the budget is spent.
async fn enumerate(
    wf: &AzureWorkflow,
    dps: &DpsClient,
    job: &JobRecord,
    t: &GroupTarget,
) -> StepResult {
    let id = t.group_id.as_str();
    let mut cursor = job.cursor.clone();
    let mut items: Vec<NewItem> = Vec::new();
    let mut pages = 0;
    let next = loop {
        if pages > 0 && wf.pace_dps(&job.dps, 1.0).await.is_err() {
            break cursor;
        }
        let (page, next) = match dps
            .query_registrations_page(id, Some(ENUMERATE_PAGE), cursor.as_deref())
            .await
        {
            Ok(p) => p,
            // Pages already read are not lost: their records come again from the stored cursor.
            Err(e) => return azure("listing the group's registration states", &e),
        };
        pages += 1;
        items.extend(
            page.iter()
                .map(|r| item_for(&r.registration_id.to_ascii_lowercase(), Some(r))),
        );
        cursor = next;
        if cursor.is_none() || pages == ENUMERATE_PAGES_PER_STEP {
            break cursor;
        }
    };
    let effects = StepEffects {
        events: vec![event(
            "enumerated",
            format!(
                "{} registration record(s) listed ({pages} page(s))",
                items.len()
            ),
            None,
        )],
        new_items: items,
        ..StepEffects::default()
    };
    match next {
        Some(cursor) => StepResult {
            outcome: Outcome::Continue { cursor },
            effects,
        },
        None => StepResult {
            outcome: Outcome::Done,
            effects,
        },
    }
}

/// Deletes the registration records of the job's devices, a batch per run (the cursor is the last item seq).
async fn delete_registrations(wf: &AzureWorkflow, dps: &DpsClient, job: &JobRecord) -> StepResult {
    let after = job.cursor.as_deref().and_then(|c| c.parse::<i64>().ok());
    let page = match wf.store.list_items(&job.id, after, CLEANUP_BATCH).await {
        Ok(p) => p,
        Err(e) => return retry_now(format!("reading the job's devices: {e}")),
    };
    let mut deleted = 0;
    for item in &page.rows {
        match dps.delete_registration(&item.registration_id, None).await {
            Ok(()) => deleted += 1,
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                return azure(
                    &format!(
                        "deleting the registration record of `{}`",
                        item.registration_id
                    ),
                    &e,
                );
            }
        }
    }
    let effects = StepEffects {
        events: vec![event(
            "registrations_deleted",
            format!("{deleted} registration record(s) deleted"),
            None,
        )],
        ..StepEffects::default()
    };
    match page.next_cursor {
        Some(cursor) => StepResult {
            outcome: Outcome::Continue { cursor },
            effects,
        },
        None => StepResult {
            outcome: Outcome::Done,
            effects,
        },
    }
}

/// Enabled groups higher in `group`'s certificate chain, by reading every group's certificate info.
pub(super) async fn higher_chain_groups(
    dps: &DpsClient,
    group: &EnrollmentGroup,
) -> Result<Vec<String>, AzureError> {
    let ctx = group_context(group);
    let (Some(subject), Some(issuer)) = (ctx.signing_subject, ctx.signing_issuer) else {
        return Ok(Vec::new());
    };
    let me = GroupCert {
        group_id: group.enrollment_group_id.clone(),
        subject,
        issuer,
        enabled: false,
    };
    let mut all = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let (page, next) = dps
            .query_enrollment_groups_page("SELECT *", Some(100), token.as_deref())
            .await?;
        for g in &page {
            let c = group_context(g);
            if let (Some(subject), Some(issuer)) = (c.signing_subject, c.signing_issuer) {
                all.push(GroupCert {
                    group_id: g.enrollment_group_id.clone(),
                    subject,
                    issuer,
                    enabled: g.provisioning_status != Some(ProvisioningStatus::Disabled),
                });
            }
        }
        match next {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    Ok(enabled_ancestors(&me, &all))
}

async fn delete_group(dps: &DpsClient, job: &JobRecord, t: &GroupTarget) -> StepResult {
    let id = t.group_id.as_str();
    let group = match dps.get_enrollment_group(id).await {
        Ok(g) => Some(g),
        Err(e) if e.is_not_found() => None,
        Err(e) => return azure("reading the enrollment group", &e),
    };
    if let Some(group) = &group {
        if !job.request.force {
            match higher_chain_groups(dps, group).await {
                Ok(higher) if !higher.is_empty() => {
                    return fail(format!(
                        "refusing to delete group `{id}`: enabled group(s) {} sign certificates higher in its chain, so \
                         its devices could enroll again through them; disable those groups first, or ask again with force",
                        higher
                            .iter()
                            .map(|g| format!("`{g}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                Ok(_) => {}
                Err(e) => return azure("listing enrollment groups for the chain check", &e),
            }
        }
        match dps.delete_enrollment_group(id, None).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return azure("deleting the enrollment group", &e),
        }
    }
    match dps.get_enrollment_group(id).await {
        Err(e) if e.is_not_found() => done_with(StepEffects {
            events: vec![event(
                "group_deleted",
                format!("enrollment group `{id}` deleted"),
                None,
            )],
            ..StepEffects::default()
        }),
        Ok(_) => retry_now(format!("DPS still shows group `{id}` after deleting it")),
        Err(e) => azure("verifying the group delete", &e),
    }
}

// ----- one device of a group -----

async fn resolve_group_device(
    wf: &AzureWorkflow,
    dps: &DpsClient,
    t: &GroupDeviceTarget,
) -> StepResult {
    let (gid, rid) = (t.group_id.as_str(), t.registration_id.as_str());
    let group = match dps.get_enrollment_group(gid).await {
        Ok(g) => g,
        Err(e) if e.is_not_found() => return fail(format!("DPS has no enrollment group `{gid}`")),
        Err(e) => return azure("reading the enrollment group", &e),
    };
    let existing = match dps.get_enrollment(rid).await {
        Ok(e) => Some(e),
        Err(e) if e.is_not_found() => None,
        Err(e) => return azure("looking for an individual enrollment", &e),
    };
    let mut events = Vec::new();
    let already_blocked = match &existing {
        Some(e) if e.provisioning_status == Some(ProvisioningStatus::Disabled) => {
            events.push(event(
                "already_blocked",
                format!("a disabled individual enrollment `{rid}` already blocks this device; it is kept"),
                None,
            ));
            true
        }
        Some(_) => {
            return fail(format!(
                "an enabled individual enrollment `{rid}` exists: DPS uses it before any group, so this device is not \
                 enrolled through `{gid}`; deprovision it with target kind individual_enrollment"
            ));
        }
        None => false,
    };
    let block = match (&t.certificate_pem, group.attestation.kind) {
        (Some(_), AttestationType::X509) => "x509",
        (Some(_), other) => {
            return fail(format!(
                "group `{gid}` uses {} attestation; a leaf certificate only applies to an X.509 group",
                attestation_name(other)
            ));
        }
        (None, AttestationType::X509) => {
            events.push(event(
                "fallback_block",
                format!(
                    "no leaf certificate given: `{rid}` is blocked by a disabled symmetric-key enrollment with its \
                     registration id (the documented fallback)"
                ),
                None,
            ));
            "symmetricKey"
        }
        (None, _) => "symmetricKey",
    };
    let reg = match registration(dps, rid).await {
        Ok(r) => r,
        Err(e) => return azure("reading the registration state", &e),
    };
    let item = item_for(rid, reg.as_ref());
    let context = JobContext {
        group_attestation: Some(attestation_name(group.attestation.kind).to_string()),
        block_attestation: Some(block.to_string()),
        already_blocked: Some(already_blocked),
        assigned_hub: item.hub.clone(),
        device_id: item.device_id.clone(),
        linked_hubs: group_linked_hubs(wf, &group),
        ..JobContext::default()
    };
    events.insert(
        0,
        event(
            "resolved",
            format!("device `{rid}` of group `{gid}`; {}", describe_item(&item)),
            Some(detail_of(&context)),
        ),
    );
    done_with(StepEffects {
        new_items: vec![item],
        context: Some(context),
        events,
        ..StepEffects::default()
    })
}

/// Blocks one device of a group with a disabled individual enrollment, protected by a tombstone from
/// before it exists: record the intent (pending), create the enrollment, verify it, mark the block active.
/// A crash anywhere in between leaves at worst a pending tombstone, which refuses deletes just the same.
async fn block_group_device(
    wf: &AzureWorkflow,
    dps: &DpsClient,
    job: &JobRecord,
    t: &GroupDeviceTarget,
) -> StepResult {
    let (gid, rid) = (t.group_id.as_str(), t.registration_id.as_str());
    let block = job
        .context
        .as_ref()
        .and_then(|c| c.block_attestation.clone())
        .unwrap_or_else(|| "symmetricKey".to_string());
    let enrollment = match blocking_enrollment(rid, t.certificate_pem.as_deref(), &block) {
        Ok(e) => e,
        Err(e) => return fail(format!("building the blocking enrollment: {e}")),
    };
    let intent = Tombstone {
        dps: job.dps.clone(),
        registration_id: rid.to_string(),
        group_id: gid.to_string(),
        attestation: block.clone(),
        job_id: job.id.clone(),
        state: TombstoneState::Pending,
        created_at: wf.clock.now_ms(),
        audited_at: None,
        audit_status: None,
        audit_detail: None,
    };
    if let Err(e) = wf.store.record_tombstone(&intent).await {
        return retry_now(format!("recording the tombstone intent: {e}"));
    }
    match create_blocking_enrollment(dps, &enrollment).await {
        Ok(()) => {}
        Err(NotCreated::HeldByEnabledEnrollment) => {
            // Certainly not our block: the intent must not keep refusing deletes of someone else's enrollment.
            if let Err(e) = wf
                .store
                .withdraw_tombstone_intent(&job.dps, rid, &job.id)
                .await
            {
                return retry_now(format!("withdrawing the tombstone intent: {e}"));
            }
            return fail(format!(
                "an enabled individual enrollment `{rid}` appeared; refusing to overwrite it — deprovision it as an \
                 individual_enrollment"
            ));
        }
        // DPS may or may not have created it (a timeout, a 5xx): the pending tombstone stays.
        Err(NotCreated::Failed(result)) => return *result,
    }
    let mut result = verify_enrollment_disabled(dps, rid, "device_blocked").await;
    if result.outcome != Outcome::Done {
        return result;
    }
    if let Err(e) = wf.store.activate_tombstone(&job.dps, rid).await {
        return retry_now(format!("marking the tombstone active: {e}"));
    }
    result.effects.events.push(event(
        "tombstone_recorded",
        format!(
            "disabled {block} enrollment `{rid}` blocks this device of group `{gid}`; it must never be deleted \
             (deleting it lets the device enroll again through the group)"
        ),
        None,
    ));
    result
}

/// The disabled individual enrollment that blocks `rid`: its leaf certificate for an X.509 block, else
/// symmetric key (DPS generates the keys).
fn blocking_enrollment(
    rid: &str,
    certificate_pem: Option<&str>,
    block: &str,
) -> Result<IndividualEnrollment, serde_json::Error> {
    let attestation = match (certificate_pem, block) {
        (Some(pem), "x509") => {
            json!({"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": pem}}}})
        }
        _ => json!({"type": "symmetricKey", "symmetricKey": {}}),
    };
    serde_json::from_value(json!({
        "registrationId": rid,
        "attestation": attestation,
        "provisioningStatus": "disabled",
    }))
}

/// Why the blocking enrollment is not in place.
enum NotCreated {
    /// An enabled individual enrollment holds the registration id: not ours to overwrite.
    HeldByEnabledEnrollment,
    /// DPS failed; the result says whether to retry.
    Failed(Box<StepResult>),
}

/// Creates the blocking enrollment unless a disabled one already holds the id (our own earlier attempt,
/// or a block that already existed: kept, never replaced).
async fn create_blocking_enrollment(
    dps: &DpsClient,
    enrollment: &IndividualEnrollment,
) -> Result<(), NotCreated> {
    let rid = enrollment.registration_id.as_str();
    match dps.get_enrollment(rid).await {
        Ok(existing) if existing.provisioning_status == Some(ProvisioningStatus::Disabled) => {
            Ok(())
        }
        Ok(_) => Err(NotCreated::HeldByEnabledEnrollment),
        Err(e) if e.is_not_found() => {
            match dps.create_or_replace_enrollment(enrollment, None).await {
                Ok(_) => Ok(()),
                Err(e) => Err(NotCreated::Failed(Box::new(azure(
                    "creating the disabled individual enrollment",
                    &e,
                )))),
            }
        }
        Err(e) => Err(NotCreated::Failed(Box::new(azure(
            "looking for an individual enrollment",
            &e,
        )))),
    }
}
