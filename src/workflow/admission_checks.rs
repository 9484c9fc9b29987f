//! Admission: a target DPS does not have, or a leaf not issued under its group, is refused before it
//! becomes a job. The target is read once; the leaf check works on the group that read returned.

use super::AzureWorkflow;
use super::cert_check::leaf_not_under_group;
use crate::azure::AzureError;
use crate::domain::job::{DeprovisionRequest, FieldError, Target};

impl AzureWorkflow {
    /// The field errors that make the request's target unusable: DPS answered 404 for the enrollment or
    /// the group, or a group device's leaf was not issued under its group's signing certificate. Empty
    /// when the target is fine, and also when DPS could not be asked: the job is then accepted, and its
    /// steps retry and report.
    pub async fn target_errors(
        &self,
        dps_name: &str,
        request: &DeprovisionRequest,
    ) -> Vec<FieldError> {
        let Ok(dps) = self.clients.dps(dps_name) else {
            return Vec::new();
        };
        let missing = |e: AzureError, field: &str, what: String| -> Vec<FieldError> {
            if e.is_not_found() {
                vec![FieldError::new(
                    field,
                    format!(
                        "DPS instance `{dps_name}` has no {what}; check the id and the `dps` field"
                    ),
                )]
            } else {
                tracing::warn!(error = %e, "target not checked at admission; the job's steps will retry");
                Vec::new()
            }
        };
        match &request.target {
            Target::IndividualEnrollment(t) => {
                match dps.get_enrollment(t.registration_id.as_str()).await {
                    Ok(_) => Vec::new(),
                    Err(e) => missing(
                        e,
                        "target.registration_id",
                        format!("individual enrollment `{}`", t.registration_id),
                    ),
                }
            }
            Target::EnrollmentGroup(t) => match dps.get_enrollment_group(t.group_id.as_str()).await
            {
                Ok(_) => Vec::new(),
                Err(e) => missing(
                    e,
                    "target.group_id",
                    format!("enrollment group `{}`", t.group_id),
                ),
            },
            // The device itself may never have registered; the group it would enroll through must exist,
            // and a leaf given for it must come from that group.
            Target::GroupDevice(t) => match dps.get_enrollment_group(t.group_id.as_str()).await {
                Ok(group) => leaf_not_under_group(request, &group).into_iter().collect(),
                Err(e) => missing(
                    e,
                    "target.group_id",
                    format!("enrollment group `{}`", t.group_id),
                ),
            },
        }
    }
}
