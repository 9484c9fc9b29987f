//! Pacing arithmetic: a token bucket with a burst, an adaptive rate (multiplicative decrease on 429,
//! additive recovery as calls succeed), Retry-After with jitter, and the ETA of the work left.
//!
//! Pure: time comes in as milliseconds (the store's clock, or the database's on PostgreSQL), randomness
//! as an argument. The store keeps one [`Bucket`] per hub and per DPS instance (in memory on SQLite, a
//! row on PostgreSQL) and the workflow spends from it before each Azure call.

use std::time::Duration;

use rand::Rng;

use super::clock::Millis;

/// What a budget is: the quota's rate and how much of it may be spent at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Operations per minute the service allows (the ceiling of the adaptive rate).
    pub per_minute: f64,
    /// Most tokens the bucket holds: the burst spent at once after an idle spell.
    pub burst: f64,
}

impl Budget {
    /// A budget of `per_minute` whose burst is `burst_secs` seconds' worth (at least one operation).
    pub fn new(per_minute: f64, burst_secs: f64) -> Self {
        Self {
            per_minute,
            burst: (per_minute / 60.0 * burst_secs).max(1.0),
        }
    }
}

/// The lowest rate a run of 429s can push a bucket to, as a fraction of its ceiling.
pub const FLOOR_FRACTION: f64 = 0.05;
/// Multiplicative decrease on a 429.
pub const DECREASE: f64 = 0.5;
/// Additive recovery: operations per minute regained per operation granted. Scale-free: from half
/// the ceiling back to the ceiling takes half a minute's budget of calls at any tier.
pub const RECOVERY_PER_OP: f64 = 1.0;

/// One hub's or DPS instance's bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Tokens held now (may be fractional).
    pub tokens: f64,
    /// Current rate in operations per minute (the ceiling until a 429 lowers it).
    pub rate: f64,
    /// When `tokens` was last brought up to date.
    pub updated_at: Millis,
    /// No tokens are handed out before this time (a Retry-After).
    pub blocked_until: Millis,
}

/// What a take got.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Take {
    /// These many tokens (at least the minimum asked, at most the maximum).
    Granted(f64),
    /// Not enough tokens: ask again after this many milliseconds.
    Wait(Millis),
}

impl Bucket {
    /// A full bucket at the budget's rate.
    pub fn full(budget: &Budget, now: Millis) -> Self {
        Self {
            tokens: budget.burst,
            rate: budget.per_minute,
            updated_at: now,
            blocked_until: now,
        }
    }

    /// Adds what the rate refilled since the last update (never beyond the burst, never back in time).
    pub fn refill(&mut self, budget: &Budget, now: Millis) {
        let elapsed = (now - self.updated_at).max(0) as f64;
        self.rate = self.rate.clamp(floor(budget), budget.per_minute);
        self.tokens = (self.tokens + elapsed * self.rate / 60_000.0).min(budget.burst);
        self.updated_at = self.updated_at.max(now);
    }

    /// Takes at least `min` and at most `max` whole tokens, or says how long until `min` exist.
    /// Granted tokens recover the rate additively.
    pub fn take(&mut self, budget: &Budget, now: Millis, min: f64, max: f64) -> Take {
        self.refill(budget, now);
        if now < self.blocked_until {
            return Take::Wait(self.blocked_until - now);
        }
        // A cost above the burst could never be met: it waits for a full bucket and goes into debt.
        let gate = min.min(budget.burst);
        if self.tokens + 1e-9 < gate {
            let missing = gate - self.tokens;
            // Less a hair, so float error does not add a millisecond.
            let wait = (missing * 60_000.0 / self.rate.max(1e-9) - 1e-6).ceil() as Millis;
            return Take::Wait(wait.max(1));
        }
        let granted = if min > budget.burst {
            min
        } else {
            self.tokens.floor().clamp(min, max.max(min))
        };
        self.tokens -= granted;
        self.rate = (self.rate + granted * RECOVERY_PER_OP).min(budget.per_minute);
        Take::Granted(granted)
    }

    /// A 429: the rate drops multiplicatively, the tokens held are dropped, and nothing is handed out
    /// until the service's Retry-After (or one operation's spacing at the new rate) has passed.
    pub fn throttled(&mut self, budget: &Budget, now: Millis, retry_after: Option<Duration>) {
        self.refill(budget, now);
        self.rate = (self.rate * DECREASE).max(floor(budget));
        self.tokens = 0.0;
        let spacing = (60_000.0 / self.rate.max(1e-9)).ceil() as Millis;
        let wait = retry_after.map_or(spacing, |d| d.as_millis() as Millis);
        self.blocked_until = self.blocked_until.max(now + wait);
    }
}

fn floor(budget: &Budget) -> f64 {
    (budget.per_minute * FLOOR_FRACTION).max(1e-3)
}

/// When a throttled lane runs again: after the service's Retry-After or the bucket's own wait
/// (whichever is longer), plus up to half of that again at random so the retries of many devices
/// do not come back together.
pub fn throttle_delay(
    retry_after: Option<Duration>,
    bucket_wait: Duration,
    rng: &mut impl Rng,
) -> Duration {
    let base = retry_after
        .unwrap_or(Duration::ZERO)
        .max(bucket_wait)
        .max(Duration::from_millis(1))
        // A hint beyond an hour is treated as an hour, so a bad header cannot park work for days.
        .min(Duration::from_secs(3600));
    let spread = base.as_millis() as u64 / 2;
    base + Duration::from_millis(rng.random_range(0..=spread))
}

/// Time to spend `ops_left` operations at `per_minute`, given `tokens` already held (the burst).
pub fn eta(ops_left: f64, per_minute: f64, tokens: f64) -> Duration {
    if per_minute <= 0.0 || !per_minute.is_finite() {
        return Duration::ZERO;
    }
    let paced = (ops_left - tokens).max(0.0);
    Duration::from_secs_f64(paced * 60.0 / per_minute)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn s1() -> Budget {
        // S1 x 1: 100 operations per minute, a 6 s burst (10 operations).
        Budget::new(100.0, 6.0)
    }

    #[test]
    fn burst_then_the_rate() {
        let b = s1();
        let mut k = Bucket::full(&b, 0);
        assert_eq!(b.burst, 10.0);
        for _ in 0..10 {
            assert_eq!(k.take(&b, 0, 1.0, 1.0), Take::Granted(1.0));
        }
        // 100/min: one token every 600 ms.
        assert_eq!(k.take(&b, 0, 1.0, 1.0), Take::Wait(600));
        assert_eq!(k.take(&b, 599, 1.0, 1.0), Take::Wait(1));
        assert_eq!(k.take(&b, 600, 1.0, 1.0), Take::Granted(1.0));
        // Idle for an hour: only the burst comes back.
        assert_eq!(k.take(&b, 3_600_000, 1.0, 50.0), Take::Granted(10.0));
    }

    #[test]
    fn batches_take_what_is_there_within_bounds() {
        let b = s1();
        let mut k = Bucket::full(&b, 0);
        assert_eq!(k.take(&b, 0, 2.0, 4.0), Take::Granted(4.0));
        assert_eq!(k.take(&b, 0, 2.0, 100.0), Take::Granted(6.0));
        assert_eq!(k.take(&b, 0, 2.0, 4.0), Take::Wait(1200));
    }

    #[test]
    fn a_cost_above_the_burst_waits_for_a_full_bucket() {
        let b = Budget::new(60.0, 5.0);
        let mut k = Bucket::full(&b, 0);
        assert_eq!(k.take(&b, 0, 100.0, 100.0), Take::Granted(100.0));
        assert!(k.tokens < 0.0, "the bucket is in debt: {k:?}");
        let Take::Wait(w) = k.take(&b, 0, 1.0, 1.0) else {
            panic!("must wait")
        };
        assert_eq!(w, 96_000);
    }

    #[test]
    fn throttled_halves_the_rate_honours_retry_after_and_recovers_additively() {
        let b = s1();
        let mut k = Bucket::full(&b, 0);
        k.throttled(&b, 0, Some(Duration::from_secs(5)));
        assert_eq!(k.rate, 50.0);
        assert_eq!(k.tokens, 0.0);
        assert_eq!(k.take(&b, 1000, 1.0, 1.0), Take::Wait(4000));
        // At 5 s: 5 s of refill at 50/min = 4.17 tokens.
        assert_eq!(k.take(&b, 5000, 1.0, 10.0), Take::Granted(4.0));
        assert_eq!(k.rate, 54.0, "each granted operation regains one op/min");
        // Without Retry-After: one operation's spacing at the new rate.
        let mut k = Bucket::full(&b, 0);
        k.throttled(&b, 0, None);
        assert_eq!(k.blocked_until, 1200);
        // Repeated 429s stop at the floor.
        for _ in 0..20 {
            k.throttled(&b, 0, None);
        }
        assert_eq!(k.rate, 5.0);
        // Recovery never passes the ceiling.
        let mut k = Bucket::full(&b, 0);
        k.take(&b, 0, 10.0, 10.0);
        assert_eq!(k.rate, 100.0);
    }

    #[test]
    fn clock_going_back_adds_nothing() {
        let b = s1();
        let mut k = Bucket::full(&b, 10_000);
        k.take(&b, 10_000, 10.0, 10.0);
        assert!(matches!(k.take(&b, 5_000, 1.0, 1.0), Take::Wait(_)));
        assert_eq!(k.updated_at, 10_000);
    }

    #[test]
    fn throttle_delay_spreads_retries_over_half_again() {
        let mut rng = StdRng::seed_from_u64(3);
        let d: Vec<u128> = (0..200)
            .map(|_| {
                throttle_delay(Some(Duration::from_secs(2)), Duration::ZERO, &mut rng).as_millis()
            })
            .collect();
        assert!(d.iter().all(|&x| (2000..=3000).contains(&x)));
        assert!(d.iter().any(|&x| x < 2200) && d.iter().any(|&x| x > 2800));
        // The bucket's own wait wins when it is longer than the hint.
        let x = throttle_delay(None, Duration::from_millis(600), &mut rng);
        assert!((600..=900).contains(&x.as_millis()));
        // Capped at an hour (plus jitter).
        let x = throttle_delay(Some(Duration::from_secs(86_400)), Duration::ZERO, &mut rng);
        assert!(x <= Duration::from_secs(5400));
    }

    #[test]
    fn eta_is_ops_beyond_the_burst_over_the_rate() {
        // 2,000 devices x 2 ops on S1 x 1 with a 10-op burst: (4000 - 10) / 100 per minute.
        assert_eq!(
            eta(4000.0, 100.0, 10.0),
            Duration::from_secs_f64(3990.0 * 0.6)
        );
        assert_eq!(eta(5.0, 100.0, 10.0), Duration::ZERO);
        assert_eq!(eta(100.0, 0.0, 0.0), Duration::ZERO);
    }
}
