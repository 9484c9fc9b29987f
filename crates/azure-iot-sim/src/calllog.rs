//! The call log: one entry per (non-admin) request, queryable in-process and at `GET /_sim/calls`.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// One request seen by the simulator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// Monotonic sequence number (starts at 1, never reused, survives log resets).
    pub seq: u64,
    /// When the request arrived.
    pub time: DateTime<Utc>,
    /// DPS name or hub host.
    pub instance: String,
    /// HTTP method.
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Operation name, e.g. `PutDevice`, `QueryRegistrations`.
    pub operation: String,
    /// Device / registration / group id, when the call names one.
    pub entity_id: Option<String>,
    /// The device ids a bulk registry call names, so a log reader can attribute it to each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entity_ids: Vec<String>,
    /// HTTP status answered; none when the connection was dropped.
    pub status: Option<u16>,
    /// Injected fault, if any (`rule 3`, `random 503`, `throttled`).
    pub fault: Option<String>,
    /// Wall time spent, milliseconds.
    pub duration_ms: u64,
    /// Quota operations the call was charged (a bulk call one per device, by default); 0 for a call
    /// outside any quota bucket, throttled (429) or never answered.
    #[serde(default)]
    pub cost: f64,
    /// The quota bucket `cost` was charged to (`hub:<host>:registry`, `hub:<host>:query`,
    /// `hub:<host>:jobs`, `dps:<name>`…), so a reader can tell registry operations from the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<String>,
}

/// Bounded in-memory call log.
#[derive(Debug)]
pub struct CallLog {
    inner: Mutex<(VecDeque<CallRecord>, u64)>,
    capacity: usize,
}

impl CallLog {
    /// A log keeping at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new((VecDeque::new(), 0)),
            capacity: capacity.max(1),
        }
    }

    /// Appends a record, assigning its sequence number; returns it.
    pub fn push(&self, mut rec: CallRecord) -> u64 {
        let mut g = self.inner.lock();
        g.1 += 1;
        rec.seq = g.1;
        if g.0.len() == self.capacity {
            g.0.pop_front();
        }
        g.0.push_back(rec);
        g.1
    }

    /// Records with `seq > since`, oldest first.
    pub fn since(&self, since: u64) -> Vec<CallRecord> {
        self.inner
            .lock()
            .0
            .iter()
            .filter(|r| r.seq > since)
            .cloned()
            .collect()
    }

    /// Every record kept.
    pub fn all(&self) -> Vec<CallRecord> {
        self.since(0)
    }

    /// The last sequence number handed out.
    pub fn last_seq(&self) -> u64 {
        self.inner.lock().1
    }

    /// Forgets every record (sequence numbers keep increasing).
    pub fn clear(&self) {
        self.inner.lock().0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &str) -> CallRecord {
        CallRecord {
            seq: 0,
            time: Utc::now(),
            instance: "h".into(),
            method: "GET".into(),
            path: path.into(),
            operation: "GetDevice".into(),
            entity_id: None,
            entity_ids: Vec::new(),
            status: Some(200),
            fault: None,
            duration_ms: 0,
            cost: 1.0,
            quota: None,
        }
    }

    #[test]
    fn keeps_order_capacity_and_seq_across_clear() {
        let log = CallLog::new(2);
        log.push(rec("/a"));
        log.push(rec("/b"));
        log.push(rec("/c"));
        let all = log.all();
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(log.since(2).len(), 1);
        log.clear();
        assert!(log.all().is_empty());
        assert_eq!(log.push(rec("/d")), 4);
    }
}
