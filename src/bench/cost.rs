//! The quota lower bound: no client can finish a registry phase faster than the hub's quota lets its
//! operations through, `(operations needed − burst) / rate`.

use crate::azure::quota::HubTier;
use crate::domain::job::RegistryAction;

/// Registry operations one device needs at the least (the engine's own figure).
pub fn ops_per_device(action: RegistryAction) -> f64 {
    action.ops_per_device() as f64
}

/// A hub's identity-registry quota as the simulator enforces it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// Operations per minute of quota time, all units together.
    pub per_minute: f64,
    /// Operations that may be spent at once from a full bucket.
    pub burst: f64,
    /// Quota time per wall time (the simulator's `time_scale`).
    pub time_scale: f64,
}

impl Quota {
    /// The quota of `units` units of `tier` (src/azure/quota.rs), with a bucket of `burst_fraction` of a
    /// minute's quota, as the simulator models it.
    pub fn of(tier: HubTier, units: u32, burst_fraction: f64, time_scale: f64) -> Self {
        let per_minute = f64::from(tier.registry_ops_per_minute_per_unit()) * f64::from(units);
        Self {
            per_minute,
            burst: (per_minute * burst_fraction).max(1.0),
            time_scale: if time_scale > 0.0 { time_scale } else { 1.0 },
        }
    }

    /// Operations per second of wall time once the burst is spent.
    pub fn wall_rate(&self) -> f64 {
        self.per_minute / 60.0 * self.time_scale
    }

    /// Wall seconds `ops` operations take at the least.
    pub fn lower_bound_secs(&self, ops: f64) -> f64 {
        (ops - self.burst).max(0.0) / self.wall_rate()
    }
}

/// The lower bound of one registry phase: `None` when the hub is not throttled (no quota bounds it).
pub fn lower_bound_secs(
    quota: Option<Quota>,
    action: RegistryAction,
    devices: usize,
) -> Option<f64> {
    quota.map(|q| q.lower_bound_secs(ops_per_device(action) * devices as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s1_one_unit_at_sixty_times_spends_a_minute_of_quota_per_second() {
        let q = Quota::of(HubTier::S1, 1, 1.0, 60.0);
        assert_eq!(q.per_minute, 100.0);
        assert_eq!(q.burst, 100.0);
        assert_eq!(q.wall_rate(), 100.0);
        // 10,000 devices disabled: 20,000 operations, the first 100 from the burst.
        let bound = lower_bound_secs(Some(q), RegistryAction::Disable, 10_000).unwrap();
        assert!((bound - 199.0).abs() < 1e-9, "{bound}");
        let bound = lower_bound_secs(Some(q), RegistryAction::Delete, 10_000).unwrap();
        assert!((bound - 99.0).abs() < 1e-9, "{bound}");
    }

    #[test]
    fn s3_units_multiply_and_a_small_job_fits_in_the_burst() {
        let q = Quota::of(HubTier::S3, 10, 1.0, 1.0);
        assert_eq!(q.per_minute, 50_000.0);
        assert_eq!(q.lower_bound_secs(10_000.0), 0.0);
        assert_eq!(lower_bound_secs(None, RegistryAction::Disable, 10), None);
    }
}
