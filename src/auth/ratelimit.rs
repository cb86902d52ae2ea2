//! Request rates with the `governor` crate (GCRA, keyed, in memory per node):
//! FHIR requests per client (`ratelimit.per_client_per_sec`, `ratelimit.burst`)
//! and token and login requests per client address
//! (`ratelimit.auth_per_addr_per_min`). A refusal carries how long to wait,
//! which becomes `Retry-After`.
//!
//! Per node: with N nodes a client may get N times the rate; the limits protect
//! each node, they are not a quota.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::RateLimitSettings;

pub struct RateLimits {
    per_client: Option<DefaultKeyedRateLimiter<String>>,
    per_addr: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateLimits")
    }
}

/// A refused request: seconds until it may be sent again (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after_secs: u64,
}

impl RateLimits {
    pub fn new(s: &RateLimitSettings) -> RateLimits {
        let per_client = NonZeroU32::new(s.per_client_per_sec).map(|rate| {
            let burst = NonZeroU32::new(s.burst).unwrap_or(rate).max(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        let per_addr = NonZeroU32::new(s.auth_per_addr_per_min)
            .map(|rate| RateLimiter::keyed(Quota::per_minute(rate)));
        RateLimits {
            per_client,
            per_addr,
            clock: DefaultClock::default(),
        }
    }

    fn check(
        &self,
        limiter: Option<&DefaultKeyedRateLimiter<String>>,
        key: &str,
    ) -> Result<(), Limited> {
        let Some(l) = limiter else { return Ok(()) };
        l.check_key(&key.to_string()).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            Limited {
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }
            .at_least_one()
        })
    }

    /// One FHIR request of `client`.
    pub fn client(&self, client: &str) -> Result<(), Limited> {
        self.check(self.per_client.as_ref(), client)
    }

    /// One token or login request from `addr`.
    pub fn address(&self, addr: &str) -> Result<(), Limited> {
        self.check(self.per_addr.as_ref(), addr)
    }

    /// Forgets keys that are back to a full bucket (bounds memory).
    pub fn forget_idle(&self) {
        for l in [&self.per_client, &self.per_addr].into_iter().flatten() {
            l.retain_recent();
        }
    }
}

impl Limited {
    fn at_least_one(self) -> Limited {
        Limited {
            retry_after_secs: self.retry_after_secs.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_over_its_rate_is_told_when_to_come_back() {
        let limits = RateLimits::new(&RateLimitSettings {
            per_client_per_sec: 0,
            burst: 0,
            auth_per_addr_per_min: 2,
        });
        assert!(limits.address("10.0.0.1").is_ok());
        assert!(limits.address("10.0.0.1").is_ok());
        let refused = limits.address("10.0.0.1").unwrap_err();
        assert!((1..=60).contains(&refused.retry_after_secs));
        assert!(limits.address("10.0.0.2").is_ok(), "per address");
        assert!(limits.client("anyone").is_ok(), "0 is unlimited");
    }
}
