//! Targets that share devices: a whole group and one device of that group.

use sqlx::Row;

use super::{Result, Store};
use crate::domain::job::{GroupDeviceTarget, GroupTarget, Target};

impl Store {
    /// An active job (queued or running) whose devices can overlap `target`'s on DPS instance `dps`, other
    /// than a job for the very same target (the `active_key` unique index refuses that one).
    ///
    /// The pairs: a whole group and any single device of that group. An individual enrollment and a group
    /// device with the same registration id share one target key already, so the unique index covers them.
    ///
    /// Checked before the insert, not inside it: two requests racing within that window can both pass.
    /// Closing it needs the insert and this check in one transaction under a per-group lock (see
    /// docs-notes/edge.md).
    pub async fn overlapping_active_job(
        &self,
        dps: &str,
        target: &Target,
    ) -> Result<Option<String>> {
        match target {
            Target::GroupDevice(GroupDeviceTarget { group_id, .. }) => {
                let key = format!(
                    "{dps}/{}",
                    Target::EnrollmentGroup(GroupTarget {
                        group_id: group_id.clone()
                    })
                    .key()
                );
                Ok(
                    sqlx::query_scalar("SELECT id FROM jobs WHERE active_key = $1")
                        .bind(key)
                        .fetch_optional(&self.pool)
                        .await?,
                )
            }
            Target::EnrollmentGroup(GroupTarget { group_id }) => {
                let rows = sqlx::query(
                    "SELECT id, request_json FROM jobs WHERE dps = $1 AND target_kind = $2 AND active_key IS NOT NULL",
                )
                .bind(dps)
                .bind(crate::domain::job::TargetKind::GroupDevice.as_str())
                .fetch_all(&self.pool)
                .await?;
                for row in rows {
                    let raw: String = row.try_get("request_json")?;
                    let same_group = serde_json::from_str::<serde_json::Value>(&raw)
                        .ok()
                        .is_some_and(|v| v["target"]["group_id"] == group_id.as_str());
                    if same_group {
                        return Ok(Some(row.try_get("id")?));
                    }
                }
                Ok(None)
            }
            Target::IndividualEnrollment(_) => Ok(None),
        }
    }
}
