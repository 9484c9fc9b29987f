//! Tombstones: the disabled individual enrollments that block single devices of a group.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::page::{Page, decode_cursor, encode_cursor};
use super::{Store, StoreError};
use crate::domain::clock::Millis;

/// A recorded block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    /// DPS instance.
    pub dps: String,
    /// The blocked registration id (= the blocking enrollment's id).
    pub registration_id: String,
    /// The group the device would otherwise enroll through.
    pub group_id: String,
    /// `x509` or `symmetricKey`.
    pub attestation: String,
    /// The job that created it.
    pub job_id: String,
    /// `pending` from before the blocking enrollment is created until it is verified, then `active`.
    pub state: TombstoneState,
    /// When it was recorded.
    pub created_at: Millis,
    /// Last audit time.
    pub audited_at: Option<Millis>,
    /// Last audit result.
    pub audit_status: Option<AuditStatus>,
    /// Details of the last audit.
    pub audit_detail: Option<String>,
}

/// Where a block is in its creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TombstoneState {
    /// The intent is recorded; the disabled enrollment may or may not exist yet (a crash can stop here).
    Pending,
    /// The disabled enrollment was created and verified.
    Active,
}

impl TombstoneState {
    /// Database name.
    pub fn as_str(self) -> &'static str {
        match self {
            TombstoneState::Pending => "pending",
            TombstoneState::Active => "active",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => TombstoneState::Pending,
            "active" => TombstoneState::Active,
            _ => return None,
        })
    }
}

/// What an audit found about a tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditStatus {
    /// The enrollment exists and is disabled.
    Ok,
    /// The enrollment is gone: the device can enroll again through its group.
    Missing,
    /// The enrollment exists but is enabled again.
    Enabled,
    /// DPS could not be asked.
    Error,
}

impl AuditStatus {
    /// Database name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditStatus::Ok => "ok",
            AuditStatus::Missing => "missing",
            AuditStatus::Enabled => "enabled",
            AuditStatus::Error => "error",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ok" => AuditStatus::Ok,
            "missing" => AuditStatus::Missing,
            "enabled" => AuditStatus::Enabled,
            "error" => AuditStatus::Error,
            _ => return None,
        })
    }

    /// Whether the block no longer holds.
    pub fn is_drift(self) -> bool {
        matches!(self, AuditStatus::Missing | AuditStatus::Enabled)
    }
}

const COLUMNS: &str = "dps, registration_id, group_id, attestation, job_id, state, created_at, audited_at, \
    audit_status, audit_detail";

impl Store {
    /// Records a block in `t.state` (idempotent: a block already recorded is left as it is). The
    /// workflow records the intent (`pending`) before creating the blocking enrollment.
    pub async fn record_tombstone(&self, t: &Tombstone) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tombstones (dps, registration_id, group_id, attestation, job_id, state, created_at) \
             VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT (dps, registration_id) DO NOTHING",
        )
        .bind(&t.dps)
        .bind(&t.registration_id)
        .bind(&t.group_id)
        .bind(&t.attestation)
        .bind(&t.job_id)
        .bind(t.state.as_str())
        .bind(t.created_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Marks a block active once its disabled enrollment is verified.
    pub async fn activate_tombstone(
        &self,
        dps: &str,
        registration_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tombstones SET state = 'active' WHERE dps = $1 AND registration_id = $2",
        )
        .bind(dps)
        .bind(registration_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Removes a pending block of `job_id` that is certainly not in place (an enabled enrollment that is
    /// not ours holds the id); an active block, or another job's, is never removed.
    pub async fn withdraw_tombstone_intent(
        &self,
        dps: &str,
        registration_id: &str,
        job_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM tombstones WHERE dps = $1 AND registration_id = $2 AND job_id = $3 AND state = 'pending'",
        )
        .bind(dps)
        .bind(registration_id)
        .bind(job_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The block of a registration id, if one is recorded.
    pub async fn find_tombstone(
        &self,
        dps: &str,
        registration_id: &str,
    ) -> Result<Option<Tombstone>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM tombstones WHERE dps = $1 AND registration_id = $2"
        )))
        .bind(dps)
        .bind(registration_id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| from_row(&r)).transpose()
    }

    /// Blocks in (dps, registration id) order, one page at a time.
    pub async fn list_tombstones(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Tombstone>, StoreError> {
        let (d, r) = match cursor {
            None => (String::new(), String::new()),
            Some(c) => decode_cursor::<2>(c)
                .map(|[d, r]| (d, r))
                .ok_or_else(|| StoreError::Corrupt("tombstone cursor".into()))?,
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM tombstones WHERE dps > $1 OR (dps = $1 AND registration_id > $2) \
             ORDER BY dps, registration_id LIMIT $3"
        )))
        .bind(d)
        .bind(r)
        .bind(i64::from(limit) + 1)
        .fetch_all(self.pool())
        .await?;
        let tombstones = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_overfetch(tombstones, limit, |t| {
            encode_cursor(&[&t.dps, &t.registration_id])
        }))
    }

    /// Whether a tombstone cursor is one [`Store::list_tombstones`] handed out (so the API can answer 422).
    pub fn is_valid_tombstone_cursor(cursor: &str) -> bool {
        decode_cursor::<2>(cursor).is_some()
    }

    /// Stores the result of auditing one block.
    pub async fn record_tombstone_audit(
        &self,
        dps: &str,
        registration_id: &str,
        status: AuditStatus,
        detail: Option<&str>,
        now: Millis,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tombstones SET audited_at = $3, audit_status = $4, audit_detail = $5 \
             WHERE dps = $1 AND registration_id = $2",
        )
        .bind(dps)
        .bind(registration_id)
        .bind(now)
        .bind(status.as_str())
        .bind(detail.map(str::to_string))
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

fn from_row(row: &AnyRow) -> Result<Tombstone, StoreError> {
    let status: Option<String> = row.try_get("audit_status")?;
    let state: String = row.try_get("state")?;
    Ok(Tombstone {
        dps: row.try_get("dps")?,
        registration_id: row.try_get("registration_id")?,
        group_id: row.try_get("group_id")?,
        attestation: row.try_get("attestation")?,
        job_id: row.try_get("job_id")?,
        state: TombstoneState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("tombstone state {state}")))?,
        created_at: row.try_get("created_at")?,
        audited_at: row.try_get("audited_at")?,
        audit_status: status
            .map(|s| {
                AuditStatus::parse(&s)
                    .ok_or_else(|| StoreError::Corrupt(format!("audit_status {s}")))
            })
            .transpose()?,
        audit_detail: row.try_get("audit_detail")?,
    })
}
