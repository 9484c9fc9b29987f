//! Previews (`dry_run`): what a request would do, read from Azure without changing anything.
//! Also the admission checks the API runs before accepting a job, and the tombstone audit.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use super::AzureWorkflow;
use super::discovery::{
    NO_RECORD, item_for, linked_hubs, record_status_name, registry_ops_per_hub,
};
use super::steps::{attestation_name, higher_chain_groups, registration, status_name};
use crate::azure::AzureError;
use crate::azure::models::{AttestationType, DeviceRegistrationState, ProvisioningStatus};
use crate::domain::job::{DeprovisionRequest, RegistryAction, RevokeAction, Sweep, Target};
use crate::domain::plan::{JobStep, Plan};
use crate::domain::registry_path::{HubRoute, RouteChoice};
use crate::store::{AuditStatus, StoreError, Tombstone, TombstoneState};

/// Registration records a preview reads at most for a whole group (the count is then a lower bound).
pub const PREVIEW_MAX_DEVICES: usize = 100_000;
/// Devices without a hub a preview looks up at most (each lookup costs one registry operation per hub).
pub const PREVIEW_MAX_LOOKUPS: usize = 20;

/// What a request would do.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Preview {
    /// DPS instance.
    pub dps: String,
    /// The target.
    pub target: Target,
    /// What DPS holds for the target.
    pub found: Found,
    /// Devices the registry step would touch or skip.
    pub devices: DeviceSummary,
    /// Devices per hub, with credentials and quota.
    pub hubs: Vec<HubPlan>,
    /// What each sweep mode costs in identity-registry operations.
    pub registry_operations: RegistryCosts,
    /// Steps in order, each with what it would do.
    pub steps: Vec<StepPlan>,
    /// Things to know before running it.
    pub warnings: Vec<Warning>,
    /// Lower-bound duration from the hubs' identity-registry quotas (seconds), when every hub's tier is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_seconds: Option<f64>,
}

/// What DPS holds for the target.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Found {
    /// `individual_enrollment` or `enrollment_group`.
    pub kind: String,
    /// Its id.
    pub id: String,
    /// Whether it exists.
    pub exists: bool,
    /// `tpm`, `x509`, `symmetricKey`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attestation: Option<String>,
    /// `enabled` or `disabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provisioning_status: Option<String>,
}

/// Device counts.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct DeviceSummary {
    /// Devices found (registration records, plus the target device when it has none).
    pub total: u64,
    /// Devices by the status of their registration record.
    pub by_record_status: RecordStatusCounts,
    /// Devices whose record names a hub (whatever its status): the registry step acts there.
    pub with_hub: u64,
    /// Devices whose record names no hub, or with no record: the registry step looks their id up in the
    /// hubs the enrollment or group links.
    pub without_hub: u64,
    /// Of those, devices the preview found an identity for by looking them up.
    pub found_by_lookup: u64,
    /// Of those, devices with no identity in any linked hub: their registry step would be skipped.
    pub not_found: u64,
    /// Of those, devices the preview did not look up (over its lookup limit, or a hub could not be asked).
    pub lookup_unchecked: u64,
    /// The count stopped at the preview limit.
    pub truncated: bool,
}

/// Devices per registration record status.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct RecordStatusCounts {
    /// `assigned`.
    pub assigned: u64,
    /// `disabled`: the device retried after its enrollment or group was disabled.
    pub disabled: u64,
    /// `failed`: the last registration failed (e.g. no usable linked hub).
    pub failed: u64,
    /// `assigning`: a registration was in flight.
    pub assigning: u64,
    /// `unassigned`.
    pub unassigned: u64,
    /// A status this service does not know.
    pub unknown: u64,
    /// No registration record (never provisioned, or deleted by hand).
    pub no_record: u64,
}

impl RecordStatusCounts {
    fn add(&mut self, status: &str) {
        let n = match status {
            "assigned" => &mut self.assigned,
            "disabled" => &mut self.disabled,
            "failed" => &mut self.failed,
            "assigning" => &mut self.assigning,
            "unassigned" => &mut self.unassigned,
            NO_RECORD => &mut self.no_record,
            _ => &mut self.unknown,
        };
        *n += 1;
    }
}

/// Identity-registry operations the registry steps would cost at least, per sweep mode.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct RegistryCosts {
    /// With `sweep: assigned`: the full cut-off in the hub each record names, one lookup per linked hub for
    /// a device whose record names none (more if a named hub turns out to have no identity).
    pub assigned: u64,
    /// With `sweep: all_hubs`: the same, plus one lookup in every other configured hub for every device.
    pub all_hubs: u64,
}

/// Devices of one hub.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HubPlan {
    /// Hub host name.
    pub hub: String,
    /// Devices whose record names it, or found in it by the preview's lookups.
    pub devices: u64,
    /// Identity-registry operations the request's sweep would cost in it at least.
    pub registry_operations: u64,
    /// Whether credentials are configured for it.
    pub credentials: bool,
    /// Its pacing budget in identity-registry operations per minute (the configured override, else tier ×
    /// units), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_ops_per_minute: Option<u32>,
    /// Time the registry operations take at the hub's pace (seconds): its live rate after the tokens it
    /// holds, as job progress estimates, else its budget after a full burst.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_seconds: Option<f64>,
    /// Enrollment groups: both paths' estimates for this hub and the one the job would take (device by device,
    /// or import/export jobs through blob storage); `estimated_seconds` is the chosen path's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_path: Option<RouteChoice>,
}

/// One step of the plan.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StepPlan {
    /// Step name.
    pub name: String,
    /// What it would do.
    pub action: String,
}

/// Something to know before running the job.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct Warning {
    /// Stable code, e.g. `never_provisioned`, `no_credentials`, `higher_chain_enabled_group`, `tombstone_present`.
    pub code: String,
    /// Explanation.
    pub message: String,
}

fn warn(code: &str, message: impl Into<String>) -> Warning {
    Warning {
        code: code.into(),
        message: message.into(),
    }
}

/// Why a request is refused before it becomes a job.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// It would delete a tombstone.
    #[error("{0}")]
    Tombstone(String),
    /// It would delete a group whose devices can re-enroll through a higher group.
    #[error("{0}")]
    HigherChain(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AzureWorkflow {
    /// Refuses requests that break the service's rules: deleting a tombstone; deleting a group while an enabled
    /// group higher in its chain would re-admit its devices (unless forced). When DPS cannot be asked, the job is
    /// accepted and its steps check again.
    pub async fn admit(&self, dps_name: &str, request: &DeprovisionRequest) -> Result<(), Refusal> {
        if let (Target::IndividualEnrollment(t), RevokeAction::Delete) =
            (&request.target, request.revoke)
        {
            if let Some(tomb) = self
                .store
                .find_tombstone(dps_name, t.registration_id.as_str())
                .await?
            {
                return Err(Refusal::Tombstone(tombstone_refusal(&tomb)));
            }
        }
        if let (Target::EnrollmentGroup(t), true, false) =
            (&request.target, request.delete_group, request.force)
        {
            let Ok(dps) = self.clients.dps(dps_name) else {
                return Ok(());
            };
            match dps.get_enrollment_group(t.group_id.as_str()).await {
                Ok(group) => match higher_chain_groups(dps, &group).await {
                    Ok(higher) if !higher.is_empty() => {
                        return Err(Refusal::HigherChain(higher_refusal(
                            t.group_id.as_str(),
                            &higher,
                        )));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "chain check skipped at admission; the delete step checks again")
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "group not readable at admission; the job's steps will report it")
                }
            }
        }
        Ok(())
    }

    /// Reads what the request would touch and returns the plan; changes nothing.
    pub async fn preview(
        &self,
        dps_name: &str,
        request: &DeprovisionRequest,
    ) -> Result<Preview, AzureError> {
        let dps = self.clients.dps(dps_name)?;
        let mut warnings = Vec::new();
        let configured = self.clients.hub_hosts();
        // Every device with its record (None: DPS has none), and the hubs its enrollment or group links.
        let mut devices_found: Vec<(String, Option<DeviceRegistrationState>)> = Vec::new();
        let mut linked = linked_hubs(None, None, &configured);
        let mut truncated = false;
        let found = match &request.target {
            Target::IndividualEnrollment(t) => {
                let id = t.registration_id.as_str();
                let found = match dps.get_enrollment(id).await {
                    Ok(e) => {
                        devices_found.push((id.to_string(), registration(dps, id).await?));
                        linked = linked_hubs(
                            e.iot_hubs.as_deref(),
                            e.iot_hub_host_name.as_deref(),
                            &configured,
                        );
                        found(
                            "individual_enrollment",
                            id,
                            Some(e.attestation.kind),
                            e.provisioning_status,
                        )
                    }
                    Err(e) if e.is_not_found() => {
                        warnings.push(warn(
                            "enrollment_not_found",
                            format!("DPS has no individual enrollment `{id}`: the job would fail"),
                        ));
                        missing("individual_enrollment", id)
                    }
                    Err(e) => return Err(e),
                };
                if let Ok(Some(tomb)) = self.store.find_tombstone(dps_name, id).await {
                    let msg = if request.revoke == RevokeAction::Delete {
                        format!("refused: {}", tombstone_refusal(&tomb))
                    } else {
                        format!(
                            "`{id}` is a tombstone blocking a device of group `{}`; disabling it again is harmless",
                            tomb.group_id
                        )
                    };
                    warnings.push(warn("tombstone_present", msg));
                }
                if request.revoke == RevokeAction::Delete
                    && found.attestation.as_deref() == Some("x509")
                {
                    warnings.push(warn(
                        "delete_x509_individual",
                        "deleting (rather than disabling) an X.509 individual enrollment lets the device enroll again if an \
                         enabled group covers its certificate chain",
                    ));
                }
                found
            }
            Target::EnrollmentGroup(t) => {
                let id = t.group_id.as_str();
                match dps.get_enrollment_group(id).await {
                    Ok(g) => {
                        linked = linked_hubs(
                            g.iot_hubs.as_deref(),
                            g.iot_hub_host_name.as_deref(),
                            &configured,
                        );
                        let mut token: Option<String> = None;
                        loop {
                            let (page, next) = dps
                                .query_registrations_page(id, Some(1000), token.as_deref())
                                .await?;
                            devices_found.extend(
                                page.into_iter()
                                    .map(|r| (r.registration_id.to_ascii_lowercase(), Some(r))),
                            );
                            if devices_found.len() >= PREVIEW_MAX_DEVICES {
                                truncated = next.is_some();
                                break;
                            }
                            match next {
                                Some(n) => token = Some(n),
                                None => break,
                            }
                        }
                        if request.delete_group {
                            let higher = higher_chain_groups(dps, &g).await?;
                            if !higher.is_empty() {
                                let msg = higher_refusal(id, &higher);
                                warnings.push(warn(
                                    "higher_chain_enabled_group",
                                    if request.force {
                                        format!("forced: {msg}")
                                    } else {
                                        format!("refused: {msg}")
                                    },
                                ));
                            }
                        } else {
                            warnings.push(warn(
                                "group_kept",
                                "the group is disabled, not deleted; its registration records keep counting against the \
                                 DPS quota unless delete_registrations is set",
                            ));
                        }
                        found(
                            "enrollment_group",
                            id,
                            Some(g.attestation.kind),
                            g.provisioning_status,
                        )
                    }
                    Err(e) if e.is_not_found() => {
                        warnings.push(warn(
                            "group_not_found",
                            format!("DPS has no enrollment group `{id}`: the job would fail"),
                        ));
                        missing("enrollment_group", id)
                    }
                    Err(e) => return Err(e),
                }
            }
            Target::GroupDevice(t) => {
                let (gid, rid) = (t.group_id.as_str(), t.registration_id.as_str());
                let found = match dps.get_enrollment_group(gid).await {
                    Ok(g) => {
                        linked = linked_hubs(
                            g.iot_hubs.as_deref(),
                            g.iot_hub_host_name.as_deref(),
                            &configured,
                        );
                        if g.attestation.kind == AttestationType::X509
                            && t.certificate_pem.is_none()
                        {
                            warnings.push(warn(
                                "fallback_symmetric_block",
                                "no leaf certificate given: a disabled symmetric-key enrollment with the registration id \
                                 blocks the device (the documented fallback)",
                            ));
                        }
                        found(
                            "enrollment_group",
                            gid,
                            Some(g.attestation.kind),
                            g.provisioning_status,
                        )
                    }
                    Err(e) if e.is_not_found() => {
                        warnings.push(warn(
                            "group_not_found",
                            format!("DPS has no enrollment group `{gid}`: the job would fail"),
                        ));
                        missing("enrollment_group", gid)
                    }
                    Err(e) => return Err(e),
                };
                match dps.get_enrollment(rid).await {
                    Ok(e) if e.provisioning_status == Some(ProvisioningStatus::Disabled) => warnings.push(warn(
                        "tombstone_present",
                        format!("a disabled individual enrollment `{rid}` already blocks this device; it would be kept"),
                    )),
                    Ok(_) => warnings.push(warn(
                        "individual_enrollment_exists",
                        format!("an enabled individual enrollment `{rid}` exists; the job would fail: use target individual_enrollment"),
                    )),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
                if found.exists {
                    devices_found.push((rid.to_string(), registration(dps, rid).await?));
                }
                found
            }
        };
        let devices_found: Vec<(String, Option<DeviceRegistrationState>)> = devices_found;
        let (devices, located) = self.count_devices(&devices_found, &linked, truncated).await;
        warnings.extend(device_warnings(&devices, &devices_found, &located, &linked));
        let per_device = request.registry.ops_per_device();
        let cost = |sweep: Sweep| {
            registry_ops_per_hub(
                located.iter().map(|(n, f)| (n.as_deref(), f.as_deref())),
                &linked,
                &configured,
                sweep,
                per_device,
            )
        };
        let registry_operations = RegistryCosts {
            assigned: cost(Sweep::Assigned).values().sum(),
            all_hubs: cost(Sweep::AllHubs).values().sum(),
        };
        let mut per_hub: BTreeMap<String, u64> = BTreeMap::new();
        for (named, found) in &located {
            if let Some(h) = named.as_ref().or(found.as_ref()) {
                *per_hub.entry(h.clone()).or_default() += 1;
            }
        }
        let mut hubs = Vec::new();
        let mut all_known = true;
        let mut slowest: f64 = 0.0;
        for (hub, ops) in cost(request.sweep) {
            let n = per_hub.get(&hub).copied().unwrap_or(0);
            let credentials = self.clients.hub(&hub).is_ok();
            if !credentials {
                warnings.push(warn(
                    "no_credentials",
                    format!(
                        "no credentials configured for hub {hub}: its {n} device(s), and every device that would be \
                         looked up there, would fail"
                    ),
                ));
            }
            let pace = self.hub_eta(&hub, ops as f64);
            let opm = pace.map(|p| p.budget.round() as u32);
            let path = match request.target {
                Target::EnrollmentGroup(_) => {
                    super::import_jobs::preview_route(self, request, &hub, n).await
                }
                _ => None,
            };
            let est = match &path {
                Some(c) if c.route == HubRoute::ImportJob => c.import_job_secs,
                _ => pace.map(|p| p.eta.as_secs_f64()),
            };
            match est {
                Some(s) => slowest = slowest.max(s),
                None => all_known = false,
            }
            hubs.push(HubPlan {
                hub,
                devices: n,
                registry_operations: ops,
                credentials,
                registry_ops_per_minute: opm,
                estimated_seconds: est,
                registry_path: path,
            });
        }
        let steps = Plan::for_request(request)
            .job_steps()
            .iter()
            .map(|&s| StepPlan {
                name: s.public_name().into(),
                action: describe_step(s, request),
            })
            .collect();
        Ok(Preview {
            dps: dps_name.to_string(),
            target: request.target.clone(),
            found,
            devices,
            hubs,
            registry_operations,
            steps,
            warnings,
            estimated_seconds: all_known.then_some(slowest),
        })
    }

    /// Counts the devices by record status and looks up (a bounded number of) those whose record names
    /// no hub. Returns the summary and, per device, the hub its record names and the hub it was found in.
    async fn count_devices(
        &self,
        devices_found: &[(String, Option<DeviceRegistrationState>)],
        linked: &[String],
        truncated: bool,
    ) -> (DeviceSummary, Vec<(Option<String>, Option<String>)>) {
        let mut summary = DeviceSummary {
            truncated,
            ..DeviceSummary::default()
        };
        let mut located = Vec::with_capacity(devices_found.len());
        let mut lookups = 0;
        for (rid, reg) in devices_found {
            summary.total += 1;
            summary
                .by_record_status
                .add(record_status_name(reg.as_ref()));
            let item = item_for(rid, reg.as_ref());
            if item.hub.is_some() {
                summary.with_hub += 1;
                located.push((item.hub, None));
                continue;
            }
            summary.without_hub += 1;
            if lookups >= PREVIEW_MAX_LOOKUPS {
                summary.lookup_unchecked += 1;
                located.push((None, None));
                continue;
            }
            lookups += 1;
            let device_id = item.device_id.as_deref().unwrap_or(rid);
            match self.look_up(device_id, linked).await {
                Lookup::Found(hub) => {
                    summary.found_by_lookup += 1;
                    located.push((None, Some(hub)));
                }
                Lookup::Absent => {
                    summary.not_found += 1;
                    located.push((None, None));
                }
                Lookup::Unknown => {
                    summary.lookup_unchecked += 1;
                    located.push((None, None));
                }
            }
        }
        (summary, located)
    }

    /// Reads a device's identity in each hub until one has it.
    async fn look_up(&self, device_id: &str, hubs: &[String]) -> Lookup {
        let mut unknown = false;
        for host in hubs {
            let Ok(hub) = self.clients.hub(host) else {
                unknown = true;
                continue;
            };
            match hub.get_device(device_id).await {
                Ok(_) => return Lookup::Found(host.clone()),
                Err(e) if e.is_not_found() => {}
                Err(_) => unknown = true,
            }
        }
        if unknown {
            Lookup::Unknown
        } else {
            Lookup::Absent
        }
    }

    /// Checks every tombstone: still there, still disabled. Records the result and logs drift.
    pub async fn audit_tombstones(&self, now: i64) -> Result<AuditReport, StoreError> {
        let mut report = AuditReport::default();
        let mut cursor: Option<String> = None;
        loop {
            let page = self.store.list_tombstones(cursor.as_deref(), 200).await?;
            for t in &page.rows {
                let (status, detail) = match self.clients.dps(&t.dps) {
                    Err(e) => (AuditStatus::Error, Some(e.message())),
                    Ok(dps) => match dps.get_enrollment(&t.registration_id).await {
                        Ok(e) if e.provisioning_status == Some(ProvisioningStatus::Disabled) => {
                            (AuditStatus::Ok, None)
                        }
                        Ok(_) => (
                            AuditStatus::Enabled,
                            Some("the blocking enrollment was enabled again".to_string()),
                        ),
                        Err(e) if e.is_not_found() => (
                            AuditStatus::Missing,
                            Some("the blocking enrollment was deleted".to_string()),
                        ),
                        Err(e) => (AuditStatus::Error, Some(e.message())),
                    },
                };
                self.store
                    .record_tombstone_audit(
                        &t.dps,
                        &t.registration_id,
                        status,
                        detail.as_deref(),
                        now,
                    )
                    .await?;
                report.checked += 1;
                if t.state == TombstoneState::Pending {
                    tracing::warn!(dps = %t.dps, registration_id = %t.registration_id, job = %t.job_id,
                        status = status.as_str(), "pending tombstone: a block was started and never confirmed");
                    report.pending.push(DriftEntry {
                        dps: t.dps.clone(),
                        registration_id: t.registration_id.clone(),
                        group_id: t.group_id.clone(),
                        status,
                        detail: format!(
                            "block started by job {} and never confirmed; {}; retry that job to finish it",
                            t.job_id,
                            match status {
                                AuditStatus::Ok => "the disabled enrollment exists",
                                AuditStatus::Missing => "the blocking enrollment does not exist: the device is not blocked",
                                AuditStatus::Enabled => "the enrollment is enabled: the device is not blocked",
                                AuditStatus::Error => "DPS could not be asked",
                            }
                        ),
                    });
                }
                match status {
                    AuditStatus::Ok => report.ok += 1,
                    AuditStatus::Error => report.errors += 1,
                    _ => {
                        tracing::warn!(dps = %t.dps, registration_id = %t.registration_id, group = %t.group_id,
                            status = status.as_str(), "tombstone drift: the device can enroll again through its group");
                        report.drift.push(DriftEntry {
                            dps: t.dps.clone(),
                            registration_id: t.registration_id.clone(),
                            group_id: t.group_id.clone(),
                            status,
                            detail: detail.unwrap_or_default(),
                        });
                    }
                }
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        Ok(report)
    }
}

/// Result of a tombstone audit.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct AuditReport {
    /// Tombstones checked.
    pub checked: u64,
    /// Still there and disabled.
    pub ok: u64,
    /// DPS could not be asked.
    pub errors: u64,
    /// Blocks that no longer hold.
    pub drift: Vec<DriftEntry>,
    /// Blocks whose creation was started and never confirmed (pending tombstones): they still refuse
    /// deletes; retrying their job finishes them.
    pub pending: Vec<DriftEntry>,
}

/// One block that no longer holds, or was never confirmed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DriftEntry {
    /// DPS instance.
    pub dps: String,
    /// Registration id.
    pub registration_id: String,
    /// Group the device can enroll through again.
    pub group_id: String,
    /// What the audit found: `missing` or `enabled` for drift; any status for a pending block.
    pub status: AuditStatus,
    /// What was found.
    pub detail: String,
}

/// What a preview's lookup of one device found.
enum Lookup {
    /// An identity exists in this hub.
    Found(String),
    /// Every linked hub answered 404.
    Absent,
    /// Some hub could not be asked.
    Unknown,
}

/// Warnings about how devices would be found.
fn device_warnings(
    summary: &DeviceSummary,
    devices_found: &[(String, Option<DeviceRegistrationState>)],
    located: &[(Option<String>, Option<String>)],
    linked: &[String],
) -> Vec<Warning> {
    let mut warnings = Vec::new();
    let hubs = if linked.is_empty() {
        "no hub (none configured)".to_string()
    } else {
        linked.join(", ")
    };
    let stale = summary.with_hub - summary.by_record_status.assigned.min(summary.with_hub);
    if stale > 0 {
        warnings.push(warn(
            "record_not_assigned",
            format!(
                "{stale} device(s) have a registration record that is not `assigned` (disabled, failed, assigning…) but \
                 still names a hub: they may still be connected there, so the registry step cuts them off there"
            ),
        ));
    }
    if summary.found_by_lookup > 0 {
        let mut found_in: Vec<&str> = located.iter().filter_map(|(_, f)| f.as_deref()).collect();
        found_in.sort_unstable();
        found_in.dedup();
        warnings.push(warn(
            "found_only_by_lookup",
            format!(
                "{} device(s) have no registration record naming a hub, yet an identity in {}: DPS alone would miss \
                 them; the registry step finds them by looking their id up",
                summary.found_by_lookup,
                found_in.join(", ")
            ),
        ));
    }
    if summary.lookup_unchecked > 0 {
        warnings.push(warn(
            "lookup_needed",
            format!(
                "{} device(s) have no registration record naming a hub and were not looked up by this preview: the \
                 registry step looks their id up in {hubs} (one registry operation per hub)",
                summary.lookup_unchecked
            ),
        ));
    }
    if summary.not_found > 0 {
        let single = devices_found.len() == 1;
        warnings.push(warn(
            "never_provisioned",
            if single {
                format!("the device has no identity in any of {hubs}: the registry step would be skipped")
            } else {
                format!(
                    "{} device(s) have no record naming a hub and no identity in any of {hubs}: their registry step \
                     would be skipped",
                    summary.not_found
                )
            },
        ));
    }
    warnings
}

fn tombstone_refusal(t: &Tombstone) -> String {
    let created = match t.state {
        TombstoneState::Active => "created by job",
        TombstoneState::Pending => "being created by job",
    };
    format!(
        "`{}` is a disabled individual enrollment that blocks a device of group `{}` ({created} {}); deleting it \
         would let the device enroll again through the group, so the service never deletes it",
        t.registration_id, t.group_id, t.job_id
    )
}

fn higher_refusal(group: &str, higher: &[String]) -> String {
    format!(
        "deleting group `{group}` would let its devices enroll again through enabled group(s) {} higher in the same \
         certificate chain; disable them first, or set force",
        higher
            .iter()
            .map(|g| format!("`{g}`"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn found(
    kind: &str,
    id: &str,
    att: Option<AttestationType>,
    status: Option<ProvisioningStatus>,
) -> Found {
    Found {
        kind: kind.into(),
        id: id.into(),
        exists: true,
        attestation: att.map(|a| attestation_name(a).to_string()),
        provisioning_status: Some(status_name(status).to_string()),
    }
}

fn missing(kind: &str, id: &str) -> Found {
    Found {
        kind: kind.into(),
        id: id.into(),
        exists: false,
        attestation: None,
        provisioning_status: None,
    }
}

fn describe_sweep(sweep: Sweep) -> &'static str {
    match sweep {
        Sweep::Assigned => {
            "in the hub each registration record names (whatever its status); a device whose record names no hub, \
             or whose named hub has no identity for it, is looked up in the hubs its enrollment or group links"
        }
        Sweep::AllHubs => "in every configured hub for every device (sweep all_hubs)",
    }
}

fn describe_step(step: JobStep, r: &DeprovisionRequest) -> String {
    let registry = match r.registry {
        RegistryAction::Disable => {
            "disable each device's identity in its hub (status reason names the job; reversible)"
        }
        RegistryAction::Delete => "delete each device's identity from its hub (permanent)",
    };
    match (step, &r.target) {
        (JobStep::Resolve, Target::EnrollmentGroup(_)) => "read the group and its signing certificate".into(),
        (JobStep::Resolve, Target::GroupDevice(_)) => "read the group, any individual enrollment and the device's registration state".into(),
        (JobStep::Resolve, _) => "read the enrollment and its registration state (before anything destructive)".into(),
        (JobStep::Revoke, Target::IndividualEnrollment(_)) => match r.revoke {
            RevokeAction::Disable => "disable the enrollment (full-replace PUT with If-Match, keys preserved; reversible)".into(),
            RevokeAction::Delete => "delete the enrollment (permanent)".into(),
        },
        (JobStep::Revoke, Target::EnrollmentGroup(_)) => "disable the group: its signing certificate is blocklisted".into(),
        (JobStep::Revoke, Target::GroupDevice(t)) => format!(
            "create a disabled {} individual enrollment `{}` that blocks the device; recorded as a tombstone, never deleted",
            if t.certificate_pem.is_some() { "X.509" } else { "symmetric-key" },
            t.registration_id
        ),
        (JobStep::Enumerate, _) => "list the group's registration states page by page into devices".into(),
        (JobStep::Items, _) => format!("{registry}; {}", describe_sweep(r.sweep)),
        (JobStep::DeleteRegistrations, _) => "delete the devices' registration records (they count against the DPS quota)".into(),
        (JobStep::DeleteGroup, _) => "delete the group, last, unless an enabled group higher in its chain would re-admit its devices".into(),
        (JobStep::ImportJobs, _) => "per hub, the faster path by the quota arithmetic (see each hub's registry_path): for hubs that take import jobs, a snapshot export, one import job and a verification export; their devices are then done".into(),
        (JobStep::SelectUndo, _) => "select the undone job's devices that it changed".into(),
        (JobStep::RestoreDps, _) => "enable the enrollment or group at DPS again".into(),
    }
}
