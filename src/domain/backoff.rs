//! Retry delays: exponential backoff with full jitter, and Retry-After hints.

use std::time::Duration;

use rand::Rng;

/// Backoff settings (base, cap, max attempts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay ceiling of the first retry.
    pub base: Duration,
    /// Largest delay ceiling.
    pub cap: Duration,
    /// Attempts allowed for one step (the first run counts), after which the step fails.
    pub max_attempts: u32,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(300),
            max_attempts: 8,
        }
    }
}

impl BackoffPolicy {
    /// The ceiling of the delay after `attempt` failed attempts (1-based): `min(cap, base * 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(31);
        self.base.saturating_mul(1u32 << exp).min(self.cap)
    }

    /// The delay before the next try: a uniformly random value in `[0, ceiling]` ("full jitter"),
    /// unless the service asked for a specific wait, which is honoured.
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        if let Some(hint) = retry_after {
            // A hint beyond an hour is treated as an hour, so a bad header cannot park work for days.
            return hint.min(Duration::from_secs(3600));
        }
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(rng.random_range(0..=ceiling))
    }

    /// Whether another attempt is allowed after `attempt` attempts.
    pub fn allows_another(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn policy() -> BackoffPolicy {
        BackoffPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
            max_attempts: 5,
        }
    }

    #[test]
    fn ceilings_double_then_cap() {
        let p = policy();
        let c: Vec<u128> = (1..=7).map(|a| p.ceiling(a).as_millis()).collect();
        assert_eq!(c, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(p.ceiling(1000), Duration::from_secs(2));
    }

    #[test]
    fn full_jitter_stays_within_ceiling_and_is_reproducible() {
        let p = policy();
        let mut a = StdRng::seed_from_u64(7);
        let mut b = StdRng::seed_from_u64(7);
        for attempt in 1..10 {
            let d = p.delay(attempt, None, &mut a);
            assert!(d <= p.ceiling(attempt));
            assert_eq!(d, p.delay(attempt, None, &mut b));
        }
        // Full jitter spreads over the whole range, not just the top.
        let mut r = StdRng::seed_from_u64(1);
        let samples: Vec<_> = (0..200)
            .map(|_| p.delay(6, None, &mut r).as_millis())
            .collect();
        assert!(samples.iter().any(|&d| d < 500) && samples.iter().any(|&d| d > 1500));
    }

    #[test]
    fn retry_after_is_honoured() {
        let p = policy();
        let mut r = StdRng::seed_from_u64(1);
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(7)), &mut r),
            Duration::from_secs(7)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_millis(10)), &mut r),
            Duration::from_millis(10)
        );
    }

    #[test]
    fn attempts_are_limited() {
        let p = policy();
        assert!(p.allows_another(4));
        assert!(!p.allows_another(5));
    }
}
