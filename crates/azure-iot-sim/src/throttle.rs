//! Quotas: one token bucket per (instance, quota kind), refilled at the per-minute rate, with a
//! time-scale factor so a minute of quota can pass in less wall time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::clock::Clock;
use super::config::{BulkCost, ThrottleConfig};

/// Live throttling settings (changeable through the admin API).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThrottleSettings {
    /// Whether quotas are enforced.
    pub enabled: bool,
    /// DPS operations per minute.
    pub dps_ops_per_minute: f64,
    /// DPS device registrations per minute.
    pub dps_registrations_per_minute: f64,
    /// How bulk calls are charged.
    pub bulk_cost: BulkCost,
    /// Whether 429 answers carry `Retry-After`.
    pub retry_after: bool,
    /// Quota time per wall time.
    pub time_scale: f64,
    /// Bucket size as a fraction of a minute's quota.
    pub burst_fraction: f64,
    /// Calls that would pass within this many wall milliseconds are queued, not refused (0: off).
    pub shaping_ms: u64,
}

/// A partial update of [`ThrottleSettings`] (`PATCH /_sim/throttle`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ThrottlePatch {
    /// New `enabled`.
    pub enabled: Option<bool>,
    /// New `dps_ops_per_minute`.
    pub dps_ops_per_minute: Option<f64>,
    /// New `dps_registrations_per_minute`.
    pub dps_registrations_per_minute: Option<f64>,
    /// New `bulk_cost`.
    pub bulk_cost: Option<BulkCost>,
    /// New `retry_after`.
    pub retry_after: Option<bool>,
    /// New `time_scale`.
    pub time_scale: Option<f64>,
    /// New `burst_fraction`.
    pub burst_fraction: Option<f64>,
    /// New `shaping_ms`.
    pub shaping_ms: Option<u64>,
}

/// Outcome of charging a call against a quota.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Within quota.
    Allowed,
    /// Within quota after a wait (traffic shaping): serve the call after `wait`.
    Delayed {
        /// Wall time to hold the call.
        wait: Duration,
    },
    /// Over quota; enough tokens will be back after this much wall time.
    Throttled {
        /// Wall time until the call would pass.
        retry_after: Duration,
    },
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Duration,
}

/// All quota buckets of a simulator.
#[derive(Debug)]
pub struct Throttle {
    settings: Mutex<ThrottleSettings>,
    buckets: Mutex<HashMap<String, Bucket>>,
    clock: Arc<dyn Clock>,
}

impl Throttle {
    /// Buckets with the given settings and clock.
    pub fn new(cfg: &ThrottleConfig, time_scale: f64, clock: Arc<dyn Clock>) -> Self {
        let settings = ThrottleSettings {
            enabled: cfg.enabled,
            dps_ops_per_minute: cfg.dps_ops_per_minute,
            dps_registrations_per_minute: cfg.dps_registrations_per_minute,
            bulk_cost: cfg.bulk_cost,
            retry_after: cfg.retry_after,
            time_scale: if time_scale > 0.0 { time_scale } else { 1.0 },
            burst_fraction: cfg.burst_fraction,
            shaping_ms: cfg.shaping_ms,
        };
        Self {
            settings: Mutex::new(settings),
            buckets: Mutex::new(HashMap::new()),
            clock,
        }
    }

    /// Current settings.
    pub fn settings(&self) -> ThrottleSettings {
        self.settings.lock().clone()
    }

    /// Applies a partial update; buckets refill completely so the new settings start clean.
    pub fn patch(&self, p: &ThrottlePatch) -> ThrottleSettings {
        let mut s = self.settings.lock();
        if let Some(v) = p.enabled {
            s.enabled = v;
        }
        if let Some(v) = p.dps_ops_per_minute {
            s.dps_ops_per_minute = v;
        }
        if let Some(v) = p.dps_registrations_per_minute {
            s.dps_registrations_per_minute = v;
        }
        if let Some(v) = p.bulk_cost {
            s.bulk_cost = v;
        }
        if let Some(v) = p.retry_after {
            s.retry_after = v;
        }
        if let Some(v) = p.time_scale.filter(|v| *v > 0.0) {
            s.time_scale = v;
        }
        if let Some(v) = p.burst_fraction.filter(|v| *v > 0.0) {
            s.burst_fraction = v;
        }
        if let Some(v) = p.shaping_ms {
            s.shaping_ms = v;
        }
        self.buckets.lock().clear();
        s.clone()
    }

    /// Charges `cost` operations against the bucket `key` whose quota is `per_minute`.
    pub fn acquire(&self, key: &str, per_minute: f64, cost: f64) -> Decision {
        let s = self.settings.lock().clone();
        if !s.enabled || per_minute <= 0.0 {
            return Decision::Allowed;
        }
        let now = self.clock.monotonic();
        let capacity = (per_minute * s.burst_fraction).max(1.0);
        let rate = per_minute / 60.0; // tokens per second of quota time
        let cost = cost.min(capacity);
        let mut buckets = self.buckets.lock();
        let b = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        let elapsed_quota = now.saturating_sub(b.last).as_secs_f64() * s.time_scale;
        b.tokens = (b.tokens + elapsed_quota * rate).min(capacity);
        b.last = now;
        if b.tokens + 1e-9 >= cost {
            b.tokens -= cost;
            return Decision::Allowed;
        }
        let wall = (cost - b.tokens) / rate / s.time_scale;
        let wait = Duration::from_secs_f64(wall.max(0.0));
        if wait <= Duration::from_millis(s.shaping_ms) {
            // Traffic shaping: the call is queued until its tokens exist; they are spent now
            // (the bucket goes into debt) so later calls queue behind it.
            b.tokens -= cost;
            Decision::Delayed { wait }
        } else {
            Decision::Throttled { retry_after: wait }
        }
    }

    /// Empties every bucket's history (all full again).
    pub fn reset(&self) {
        self.buckets.lock().clear();
    }
}

/// The `Retry-After` value (whole seconds, at least 1) for a wait.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    fn throttle(scale: f64) -> (Throttle, FakeClock) {
        let clock = FakeClock::new(chrono::Utc::now());
        (
            Throttle::new(&ThrottleConfig::default(), scale, Arc::new(clock.clone())),
            clock,
        )
    }

    #[test]
    fn s1_unit_allows_a_minute_of_burst_then_one_point_six_seven_per_second() {
        let (t, clock) = throttle(1.0);
        for _ in 0..100 {
            assert_eq!(t.acquire("hub", 100.0, 1.0), Decision::Allowed);
        }
        let Decision::Throttled { retry_after } = t.acquire("hub", 100.0, 1.0) else {
            panic!("101st op must be throttled")
        };
        assert!(
            (retry_after.as_secs_f64() - 0.6).abs() < 0.01,
            "{retry_after:?}"
        );
        clock.advance(Duration::from_millis(600));
        assert_eq!(t.acquire("hub", 100.0, 1.0), Decision::Allowed);
        assert!(matches!(
            t.acquire("hub", 100.0, 1.0),
            Decision::Throttled { .. }
        ));
        // Another key has its own bucket.
        assert_eq!(t.acquire("other", 100.0, 1.0), Decision::Allowed);
    }

    #[test]
    fn shaping_queues_short_waits_and_refuses_long_ones() {
        let (t, _clock) = throttle(1.0);
        t.patch(&ThrottlePatch {
            shaping_ms: Some(1_000),
            ..Default::default()
        });
        assert_eq!(t.acquire("h", 60.0, 60.0), Decision::Allowed);
        // 1 op/s: the next call waits 1 s (queued), the one after would wait 2 s (refused).
        let Decision::Delayed { wait } = t.acquire("h", 60.0, 1.0) else {
            panic!("must be queued")
        };
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6);
        let Decision::Throttled { retry_after } = t.acquire("h", 60.0, 1.0) else {
            panic!("must be refused")
        };
        assert!((retry_after.as_secs_f64() - 2.0).abs() < 1e-6);
    }

    #[test]
    fn time_scale_shortens_the_wait() {
        let (t, clock) = throttle(60.0);
        assert_eq!(t.acquire("q", 20.0, 20.0), Decision::Allowed);
        let Decision::Throttled { retry_after } = t.acquire("q", 20.0, 1.0) else {
            panic!("must throttle")
        };
        // 1 token at 20/min = 3 s of quota time = 50 ms of wall time at 60x.
        assert!(
            (retry_after.as_secs_f64() - 0.05).abs() < 0.001,
            "{retry_after:?}"
        );
        clock.advance(Duration::from_secs(1)); // a full minute of quota
        for _ in 0..20 {
            assert_eq!(t.acquire("q", 20.0, 1.0), Decision::Allowed);
        }
        assert_eq!(retry_after_seconds(retry_after), 1);
    }

    #[test]
    fn bulk_cost_larger_than_bucket_waits_for_a_full_bucket_and_disable_turns_off() {
        let (t, clock) = throttle(1.0);
        assert_eq!(t.acquire("h", 100.0, 150.0), Decision::Allowed);
        assert!(matches!(
            t.acquire("h", 100.0, 1.0),
            Decision::Throttled { .. }
        ));
        clock.advance(Duration::from_secs(60));
        assert_eq!(t.acquire("h", 100.0, 100.0), Decision::Allowed);
        t.patch(&ThrottlePatch {
            enabled: Some(false),
            ..Default::default()
        });
        assert_eq!(t.acquire("h", 100.0, 1000.0), Decision::Allowed);
    }
}
