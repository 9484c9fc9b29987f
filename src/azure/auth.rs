//! SAS token provider: mints `SharedAccessSignature …` header values for one service instance, caches the
//! current token and renews it before it expires.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::connection_string::ConnectionString;
use super::sas;
use crate::domain::clock::Clock;

/// Default token lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// A cached token is replaced once less than this remains (capped at half the TTL).
pub const DEFAULT_RENEW_MARGIN: Duration = Duration::from_secs(300);

/// Mints and caches SAS tokens signed for one host name and policy.
pub struct SasTokenProvider {
    /// Lower-case host name: the `sr` of every token (README §3).
    resource: String,
    policy: String,
    key: Vec<u8>,
    ttl: u64,
    renew_margin: u64,
    clock: Arc<dyn Clock>,
    cached: Mutex<Option<CachedToken>>,
}

#[derive(Clone)]
struct CachedToken {
    header: String,
    expiry: u64,
}

impl SasTokenProvider {
    /// A provider for the connection string's host and policy, with the default TTL (1 h).
    pub fn new(cs: &ConnectionString, clock: Arc<dyn Clock>) -> Self {
        Self {
            resource: cs.host_name().to_ascii_lowercase(),
            policy: cs.key_name().to_string(),
            key: cs.key_bytes(),
            ttl: DEFAULT_TOKEN_TTL.as_secs(),
            renew_margin: DEFAULT_RENEW_MARGIN.as_secs(),
            clock,
            cached: Mutex::new(None),
        }
    }

    /// Sets the token lifetime (at least one second).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.as_secs().max(1);
        self
    }

    /// Sets how long before expiry a cached token is replaced.
    pub fn with_renew_margin(mut self, margin: Duration) -> Self {
        self.renew_margin = margin.as_secs();
        self
    }

    /// The `sr` the tokens sign (the lower-case host name).
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The current `Authorization` header value, minting a new token when none is cached or the cached one is
    /// within the renewal margin of its expiry.
    pub fn header(&self) -> String {
        let now = self.clock.now_unix();
        // Renew with at most half the lifetime left, so a short TTL still gets reused.
        let margin = self.renew_margin.min(self.ttl / 2);
        // A poisoned lock only means another thread panicked while holding a plain cache; the value is still
        // a complete token or None.
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(token) = cached.as_ref()
            && now.saturating_add(margin) < token.expiry
        {
            return token.header.clone();
        }
        let expiry = now.saturating_add(self.ttl);
        let header = sas::token(&self.resource, &self.key, Some(&self.policy), expiry);
        *cached = Some(CachedToken {
            header: header.clone(),
            expiry,
        });
        header
    }

    /// The expiry (unix seconds) of the cached token, if any.
    pub fn cached_expiry(&self) -> Option<u64> {
        self.cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|t| t.expiry)
    }

    /// Drops the cached token so the next request mints a fresh one (after a 401, for instance).
    pub fn invalidate(&self) {
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl fmt::Debug for SasTokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SasTokenProvider")
            .field("resource", &self.resource)
            .field("policy", &self.policy)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::clock::ManualClock;

    fn provider(clock: Arc<ManualClock>) -> SasTokenProvider {
        // Upper-case letters in the host: the token must still sign the lower-case host name.
        let cs = ConnectionString::parse(
            "HostName=MyDps.Azure-Devices-Provisioning.net;SharedAccessKeyName=provisioningserviceowner;\
             SharedAccessKey=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        .unwrap();
        SasTokenProvider::new(&cs, clock)
    }

    #[test]
    fn header_matches_the_independent_vector() {
        // Same vector as sas.rs (computed with Python): expiry 1_700_000_000 = now + 3600.
        let clock = Arc::new(ManualClock::at_unix(1_700_000_000 - 3600));
        let p = provider(clock);
        assert_eq!(
            p.header(),
            "SharedAccessSignature sr=mydps.azure-devices-provisioning.net\
             &sig=xXBqEKztXMACe9dg1gMBreO%2F8CMn3ovt%2B%2BxDvPb6Xl0%3D&se=1700000000&skn=provisioningserviceowner"
        );
    }

    #[test]
    fn reuses_the_token_until_the_margin_then_renews() {
        let clock = Arc::new(ManualClock::at_unix(1_000_000));
        let p = provider(clock.clone());
        let first = p.header();
        assert_eq!(p.cached_expiry(), Some(1_003_600));
        clock.advance_secs(3600 - 301);
        assert_eq!(
            p.header(),
            first,
            "more than 5 min left: cached token reused"
        );
        clock.advance_secs(1);
        let second = p.header();
        assert_ne!(second, first, "5 min left: renewed");
        assert_eq!(p.cached_expiry(), Some(1_000_000 + 3600 - 300 + 3600));
        assert!(second.contains("&se=1006900&"), "{second}");
    }

    #[test]
    fn an_expired_token_is_never_returned() {
        let clock = Arc::new(ManualClock::at_unix(2_000_000));
        let p = provider(clock.clone()).with_ttl(Duration::from_secs(60));
        let first = p.header();
        clock.advance_secs(10_000);
        let next = p.header();
        assert_ne!(first, next);
        assert!(next.contains("&se=2010060&"), "{next}");
    }

    #[test]
    fn short_ttl_is_reused_for_half_its_life() {
        let clock = Arc::new(ManualClock::at_unix(5_000));
        let p = provider(clock.clone()).with_ttl(Duration::from_secs(100));
        let first = p.header();
        clock.advance_secs(49);
        assert_eq!(p.header(), first);
        clock.advance_secs(1);
        assert_ne!(p.header(), first);
    }

    #[test]
    fn invalidate_forces_a_new_token() {
        let clock = Arc::new(ManualClock::at_unix(5_000));
        let p = provider(clock.clone());
        p.header();
        p.invalidate();
        assert_eq!(p.cached_expiry(), None);
        clock.advance_secs(1);
        assert!(p.header().contains("&se=8601&"));
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let p = provider(Arc::new(ManualClock::at_unix(0)));
        let shown = format!("{p:?}");
        assert!(!shown.contains("MDEy"), "{shown}");
        assert!(!shown.contains("key"), "{shown}");
    }
}
