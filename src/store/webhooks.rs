//! Webhook deliveries already handled, so a redelivery creates nothing.

use sqlx::Row;

use super::{Result, Store};
use crate::domain::clock::Millis;

/// How long a delivery id is remembered: longer than any sender retries one delivery.
pub const DELIVERY_MEMORY_MS: Millis = 7 * 24 * 3600 * 1000;

/// A delivery that was handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// What was answered: `created`, `duplicate` or `ignored`.
    pub outcome: String,
    /// The job it created or named.
    pub job_id: Option<String>,
    /// When it was first received.
    pub received_at: Millis,
}

impl Store {
    /// The earlier handling of delivery `delivery_id` from `source`, if any.
    pub async fn webhook_delivery(
        &self,
        source: &str,
        delivery_id: &str,
    ) -> Result<Option<DeliveryRecord>> {
        let row = sqlx::query(
            "SELECT outcome, job_id, received_at FROM webhook_deliveries WHERE source = $1 AND delivery_id = $2",
        )
        .bind(source)
        .bind(delivery_id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(DeliveryRecord {
                outcome: r.try_get("outcome")?,
                job_id: r.try_get("job_id")?,
                received_at: r.try_get("received_at")?,
            })
        })
        .transpose()
    }

    /// Remembers a handled delivery (the first record wins when two race) and forgets those older than
    /// [`DELIVERY_MEMORY_MS`].
    pub async fn record_webhook_delivery(
        &self,
        source: &str,
        delivery_id: &str,
        outcome: &str,
        job_id: Option<&str>,
        now: Millis,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO webhook_deliveries (source, delivery_id, received_at, outcome, job_id) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (source, delivery_id) DO NOTHING",
        )
        .bind(source)
        .bind(delivery_id)
        .bind(now)
        .bind(outcome)
        .bind(job_id.map(str::to_string))
        .execute(self.pool())
        .await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE received_at < $1")
            .bind(now - DELIVERY_MEMORY_MS)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
