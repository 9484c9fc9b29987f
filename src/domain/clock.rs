//! Time as an injectable dependency, so time-dependent logic is testable.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Milliseconds since the Unix epoch, the unit every stored time uses.
pub type Millis = i64;

/// A source of the current time (the engine, the store and SAS token expiry all read it).
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> Millis;

    /// Now, in whole seconds since the Unix epoch (SAS expiry); 0 for a clock before 1970.
    fn now_unix(&self) -> u64 {
        u64::try_from(self.now_ms() / 1000).unwrap_or(0)
    }
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        chrono::Utc::now().timestamp_millis()
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock showing `start_ms`.
    pub fn new(start_ms: Millis) -> Self {
        Self(Arc::new(AtomicI64::new(start_ms)))
    }

    /// A clock showing `secs` seconds after the Unix epoch.
    pub fn at_unix(secs: u64) -> Self {
        Self::new(secs as Millis * 1000)
    }

    /// Moves the clock forward.
    pub fn advance_ms(&self, ms: Millis) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Moves the clock forward by whole seconds.
    pub fn advance_secs(&self, secs: u64) {
        self.advance_ms(secs as Millis * 1000);
    }

    /// Sets the time, in seconds since the Unix epoch.
    pub fn set_unix(&self, secs: u64) {
        self.0.store(secs as Millis * 1000, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// Formats stored milliseconds as RFC 3339 UTC text for the API.
pub fn to_rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::at_unix(100);
        assert_eq!((c.now_unix(), c.now_ms()), (100, 100_000));
        c.advance_secs(5);
        assert_eq!(c.now_unix(), 105);
        c.advance_ms(999);
        assert_eq!(c.now_unix(), 105);
        c.set_unix(7);
        assert_eq!(c.now_unix(), 7);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_unix() > 1_577_836_800);
        assert_eq!(to_rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}
