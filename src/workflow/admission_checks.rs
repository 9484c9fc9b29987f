//! Admission: a target DPS does not have is refused before it becomes a job.

use super::AzureWorkflow;
use crate::domain::job::{DeprovisionRequest, FieldError, Target};

impl AzureWorkflow {
    /// The field error naming what is missing when DPS answers 404 for the request's target (the
    /// enrollment, or the group). `None` when it exists, and also when DPS could not be asked: the job is
    /// then accepted, and its steps retry and report.
    pub async fn missing_target(
        &self,
        dps_name: &str,
        request: &DeprovisionRequest,
    ) -> Option<FieldError> {
        let dps = self.clients.dps(dps_name).ok()?;
        let (field, what, result) = match &request.target {
            Target::IndividualEnrollment(t) => (
                "target.registration_id",
                format!("individual enrollment `{}`", t.registration_id),
                dps.get_enrollment(t.registration_id.as_str())
                    .await
                    .map(drop),
            ),
            Target::EnrollmentGroup(t) => (
                "target.group_id",
                format!("enrollment group `{}`", t.group_id),
                dps.get_enrollment_group(t.group_id.as_str())
                    .await
                    .map(drop),
            ),
            // The device itself may never have registered; the group it would enroll through must exist.
            Target::GroupDevice(t) => (
                "target.group_id",
                format!("enrollment group `{}`", t.group_id),
                dps.get_enrollment_group(t.group_id.as_str())
                    .await
                    .map(drop),
            ),
        };
        match result {
            Ok(()) => None,
            Err(e) if e.is_not_found() => Some(FieldError::new(
                field,
                format!(
                    "DPS instance `{dps_name}` has no {what}; check the id and the `dps` field"
                ),
            )),
            Err(e) => {
                tracing::warn!(error = %e, "target not checked at admission; the job's steps will retry");
                None
            }
        }
    }
}
