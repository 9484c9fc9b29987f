//! The read side of the API: job lists with filters, item counts, devices and timelines, page by page.

use std::collections::{BTreeMap, HashMap};

use sqlx::{AssertSqlSafe, Row};

use super::page::{Page, decode_cursor, encode_cursor};
use super::rows::{
    EVENT_COLUMNS, ITEM_COLUMNS, JOB_COLUMNS, event_from_row, item_from_row, job_from_row,
};
use super::{Backend, EventRecord, ItemRecord, JobFilter, JobRecord, Result, Store, StoreError};
use crate::domain::clock::Millis;
use crate::domain::lane::LaneState;
use crate::domain::settle::ItemCounts;

impl Store {
    /// Jobs, newest first, filtered, one page at a time.
    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<JobRecord>> {
        let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1=1");
        let mut texts: Vec<(usize, String)> = Vec::new();
        let mut ints: Vec<(usize, i64)> = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        if let Some(s) = filter.status {
            let i = next();
            sql += &format!(" AND status = ${i}");
            texts.push((i, s.as_str().into()));
        }
        if let Some(k) = &filter.target_kind {
            let i = next();
            sql += &format!(" AND target_kind = ${i}");
            texts.push((i, k.clone()));
        }
        if let Some(t) = &filter.target_id {
            let i = next();
            sql += &format!(" AND target_id = ${i}");
            texts.push((i, t.to_ascii_lowercase()));
        }
        if let Some(t) = &filter.ticket_key {
            let i = next();
            sql += &format!(" AND ticket_key = ${i}");
            texts.push((i, t.clone()));
        }
        if let Some(f) = filter.created_from {
            let i = next();
            sql += &format!(" AND created_at >= ${i}");
            ints.push((i, f));
        }
        if let Some(t) = filter.created_to {
            let i = next();
            sql += &format!(" AND created_at < ${i}");
            ints.push((i, t));
        }
        if let Some(c) = cursor {
            let (at, id) =
                decode_job_cursor(c).ok_or_else(|| StoreError::Corrupt("cursor".into()))?;
            let (a, b, d) = (next(), next(), next());
            sql += &format!(" AND (created_at < ${a} OR (created_at = ${b} AND id < ${d}))");
            ints.push((a, at));
            ints.push((b, at));
            texts.push((d, id));
        }
        let l = next();
        sql += &format!(" ORDER BY created_at DESC, id DESC LIMIT ${l}");
        ints.push((l, i64::from(limit) + 1));
        // Bind in placeholder order.
        let mut binds: Vec<(usize, Bind)> =
            texts.into_iter().map(|(i, v)| (i, Bind::Text(v))).collect();
        binds.extend(ints.into_iter().map(|(i, v)| (i, Bind::Int(v))));
        binds.sort_by_key(|(i, _)| *i);
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (_, b) in binds {
            q = match b {
                Bind::Text(v) => q.bind(v),
                Bind::Int(v) => q.bind(v),
            };
        }
        let rows = q.fetch_all(&self.pool).await?;
        let jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(jobs, limit, |j| {
            encode_cursor(&[&j.created_at.to_string(), &j.id])
        }))
    }

    /// Folds a job's appended count changes into one row per hub and state (PostgreSQL appends a row per
    /// statement that changes items; SQLite keeps one row per key already). Safe beside concurrent changes:
    /// rows appended after this statement's snapshot are left for the next fold.
    pub async fn fold_item_counts(&self, job_id: &str) -> Result<()> {
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        sqlx::query(
            "WITH gone AS (DELETE FROM job_item_counts WHERE job_id = $1 RETURNING hub, state, n) \
             INSERT INTO job_item_counts (job_id, hub, state, n) \
             SELECT $1, hub, state, SUM(n) FROM gone GROUP BY hub, state HAVING SUM(n) <> 0",
        )
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether a job cursor is well-formed (so the API can answer 400 instead of 500).
    pub fn is_valid_job_cursor(cursor: &str) -> bool {
        decode_job_cursor(cursor).is_some()
    }

    /// Counts of a job's items by state.
    pub async fn item_counts(&self, job_id: &str) -> Result<ItemCounts> {
        let mut all = self.item_counts_of(&[job_id.to_string()]).await?;
        Ok(all.remove(job_id).unwrap_or_default())
    }

    /// Item counts of several jobs in one query (a page of the job list), from the counts the database
    /// keeps beside the items (migration 0014), not by counting the items.
    pub async fn item_counts_of(&self, job_ids: &[String]) -> Result<HashMap<String, ItemCounts>> {
        let mut out: HashMap<String, ItemCounts> = HashMap::new();
        if job_ids.is_empty() {
            return Ok(out);
        }
        let placeholders: Vec<String> = (1..=job_ids.len()).map(|i| format!("${i}")).collect();
        let mut q = sqlx::query(sql!(
            "SELECT job_id, state, CAST(SUM(n) AS BIGINT) AS n FROM job_item_counts WHERE job_id IN ({}) \
             GROUP BY job_id, state",
            placeholders.join(", ")
        ));
        for id in job_ids {
            q = q.bind(id.clone());
        }
        for r in q.fetch_all(&self.pool).await? {
            let job: String = r.try_get("job_id")?;
            let state: String = r.try_get("state")?;
            let n = r.try_get::<i64, _>("n")? as u64;
            let c = out.entry(job).or_default();
            if !LaneState::parse(&state).is_some_and(|st| c.add(st, n)) {
                return Err(StoreError::Corrupt(format!("item state {state}")));
            }
        }
        Ok(out)
    }

    /// A job's item counts by the hub their record names (progress per hub), from the kept counts.
    pub async fn hub_counts(&self, job_id: &str) -> Result<Vec<(Option<String>, ItemCounts)>> {
        let rows = sqlx::query(
            "SELECT hub, state, CAST(SUM(n) AS BIGINT) AS n FROM job_item_counts WHERE job_id = $1 \
             GROUP BY hub, state HAVING SUM(n) <> 0",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await?;
        let mut out: BTreeMap<Option<String>, ItemCounts> = BTreeMap::new();
        for r in rows {
            // The counts table keeps "no hub" as '' so that it can be part of a key.
            let hub = Some(r.try_get::<String, _>("hub")?).filter(|h| !h.is_empty());
            let state: String = r.try_get("state")?;
            let n = r.try_get::<i64, _>("n")? as u64;
            let c = out.entry(hub).or_default();
            if !LaneState::parse(&state).is_some_and(|st| c.add(st, n)) {
                return Err(StoreError::Corrupt(format!("item state {state}")));
            }
        }
        Ok(out.into_iter().collect())
    }

    /// A job's items in discovery order, one page at a time (cursor = last seq).
    pub async fn list_items(
        &self,
        job_id: &str,
        after_seq: Option<i64>,
        limit: u32,
    ) -> Result<Page<ItemRecord>> {
        let rows = sqlx::query(sql!(
            "SELECT {ITEM_COLUMNS} FROM job_items WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        ))
        .bind(job_id)
        .bind(after_seq.unwrap_or(-1))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(item_from_row).collect::<Result<Vec<_>>>()?;
        // Devices and events page by their sequence number, a documented integer cursor.
        Ok(Page::from_overfetch(items, limit, |i| i.seq.to_string()))
    }

    /// One item.
    pub async fn get_item(&self, item_id: &str) -> Result<Option<ItemRecord>> {
        let row = sqlx::query(sql!("SELECT {ITEM_COLUMNS} FROM job_items WHERE id = $1"))
            .bind(item_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| item_from_row(&r)).transpose()
    }

    /// A job's timeline, oldest first (cursor = the last event's number in the job).
    pub async fn list_events(
        &self,
        job_id: &str,
        after_id: Option<i64>,
        limit: u32,
    ) -> Result<Page<EventRecord>> {
        let rows = sqlx::query(sql!(
            "SELECT {EVENT_COLUMNS} FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        ))
        .bind(job_id)
        .bind(after_id.unwrap_or(0))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let events = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(events, limit, |e| e.id.to_string()))
    }
}

pub(super) enum Bind {
    Text(String),
    Int(i64),
}

/// A job list position: the last job's creation time and id (the list's sort key).
fn decode_job_cursor(c: &str) -> Option<(Millis, String)> {
    let [at, id] = decode_cursor::<2>(c)?;
    Some((at.parse().ok()?, id))
}
