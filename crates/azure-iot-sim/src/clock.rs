//! Injectable clocks: wall time for timestamps and SAS expiry, a monotonic reading for quotas.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

/// Source of time for the simulator.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Current wall-clock time.
    fn now_utc(&self) -> DateTime<Utc>;
    /// Monotonic time since an arbitrary fixed origin.
    fn monotonic(&self) -> Duration;
}

/// The real clock.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A system clock whose monotonic origin is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_utc(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A manually advanced clock for tests.
#[derive(Debug, Clone)]
pub struct FakeClock {
    inner: Arc<Mutex<(DateTime<Utc>, Duration)>>,
}

impl FakeClock {
    /// A fake clock starting at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            inner: Arc::new(Mutex::new((start, Duration::ZERO))),
        }
    }

    /// Moves both readings forward.
    pub fn advance(&self, by: Duration) {
        let mut g = self.inner.lock();
        g.1 += by;
        // chrono cannot represent every Duration; saturate rather than fail a test helper.
        g.0 += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
    }
}

impl Clock for FakeClock {
    fn now_utc(&self) -> DateTime<Utc> {
        self.inner.lock().0
    }

    fn monotonic(&self) -> Duration {
        self.inner.lock().1
    }
}
