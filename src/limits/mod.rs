//! Admission control for chats: a per-user rate (pingora-limits' sliding
//! two-window estimator in this process, or a sliding log in Redis shared by
//! every replica, `shared.rs`), and a global cap on chats in flight. The
//! per-user queue cap lives with the lanes, where the queue is.

mod shared;

use std::sync::Arc;
use std::time::Duration;

use pingora_limits::rate::Rate;

use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::ids::UserNumber;
use crate::inflight::{InFlight, InflightGuard};
use crate::settings::{LimitSettings, RedisFallback, limit};
use shared::{Decision, SharedRate, Store};

const WINDOW: Duration = Duration::from_secs(60);
// Count-min sketch size: wide enough that unrelated users rarely share all
// four counters (an estimate can only over-count).
const HASHES: usize = 4;
const SLOTS: usize = 16 * 1024;

pub struct ChatLimits {
    /// The per-user counts outlive a reload, so a reload never grants a
    /// user a fresh minute.
    rate: Arc<Rate>,
    user_rate: Option<u32>,
    /// With `limits.redis_url` or `limits.redis_cluster_urls`: the count
    /// shared by every replica, and what to do while Redis cannot answer.
    shared: Option<(SharedRate, RedisFallback)>,
    max_inflight: Option<usize>,
    inflight: InFlight,
}

impl ChatLimits {
    pub fn new(cfg: &LimitSettings) -> Self {
        let rate = Arc::new(Rate::new_with_estimator_config(WINDOW, HASHES, SLOTS));
        Self::with_counts(rate, InFlight::default(), cfg)
    }

    /// New limits over the same counts: what a reload swaps in. The Redis
    /// connection is made anew (lazily), as its URL may have changed.
    pub fn reconfigured(&self, cfg: &LimitSettings) -> Self {
        Self::with_counts(self.rate.clone(), self.inflight.clone(), cfg)
    }

    fn with_counts(rate: Arc<Rate>, inflight: InFlight, cfg: &LimitSettings) -> Self {
        Self {
            rate,
            user_rate: limit(cfg.user_rate_per_min),
            shared: shared_store(cfg).map(|store| (SharedRate::new(store), cfg.redis_fallback)),
            max_inflight: limit(cfg.max_inflight_chats),
            inflight,
        }
    }

    /// Chats admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.inflight.count()
    }

    /// `limits.max_inflight_chats`, when set.
    pub fn max_in_flight(&self) -> Option<usize> {
        self.max_inflight
    }

    /// Takes a place among the chats in flight or answers 503 with
    /// `Retry-After`.
    pub fn begin(&self) -> GatewayResult<InflightGuard> {
        let slot = self.inflight.enter();
        if self.max_inflight.is_some_and(|max| slot.position > max) {
            return Err(GatewayError::new(
                ErrorKind::AtCapacity,
                "the gateway is at capacity; retry shortly",
            )
            .retry_after(1));
        }
        Ok(slot)
    }

    /// Counts a chat against the user's rate or answers 429 with
    /// `Retry-After`: in Redis when configured and reachable, else here.
    pub async fn admit(&self, user: &UserNumber) -> GatewayResult<()> {
        let Some(limit) = &self.user_rate else {
            return Ok(());
        };
        let Some((shared, fallback)) = &self.shared else {
            return self.admit_here(user);
        };
        match shared.check(user, *limit, WINDOW).await {
            Ok(Decision::Allow) => Ok(()),
            Ok(Decision::Deny(wait)) => Err(over_limit(*limit, wait.as_secs_f64().ceil() as u64)),
            Err(()) => match fallback {
                RedisFallback::Local => self.admit_here(user),
                RedisFallback::FailOpen => Ok(()),
                RedisFallback::FailClosed => Err(GatewayError::new(
                    ErrorKind::LimiterUnavailable,
                    "the rate limiter is unavailable; retry shortly",
                )
                .retry_after(1)),
            },
        }
    }

    /// The per-user rate as this process alone counts it.
    fn admit_here(&self, user: &UserNumber) -> GatewayResult<()> {
        let Some(limit) = &self.user_rate else {
            return Ok(());
        };
        let rate = &self.rate;
        // Sliding estimate: the previous window weighted by how much of it
        // still overlaps the last minute, plus the current window.
        let (estimate, fraction) = rate.rate_with(user, |c| {
            let est =
                c.prev_samples as f64 * (1.0 - c.current_interval_fraction) + c.curr_samples as f64;
            (est, c.current_interval_fraction)
        });
        if estimate >= f64::from(*limit) {
            let wait = ((1.0 - fraction) * WINDOW.as_secs_f64()).ceil() as u64;
            return Err(over_limit(*limit, wait));
        }
        rate.observe(user, 1);
        Ok(())
    }
}

/// Where the per-user rate is shared, if anywhere (validation lets at
/// most one of the two keys be set).
fn shared_store(cfg: &LimitSettings) -> Option<Store> {
    if let Some(urls) = &cfg.redis_cluster_urls {
        return Some(Store::Cluster(urls.nodes()));
    }
    cfg.redis_url
        .as_ref()
        .map(|url| Store::Single(url.client()))
}

fn over_limit(limit: u32, wait_secs: u64) -> GatewayError {
    GatewayError::new(
        ErrorKind::UserRateLimited,
        format!("too many messages from this user; the limit is {limit} per minute"),
    )
    .retry_after(wait_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_rate_limits_one_user_not_others() {
        let limits = ChatLimits::new(&LimitSettings {
            user_rate_per_min: 3,
            ..LimitSettings::default()
        });
        let rules = crate::ids::UserRules::standard();
        let a = rules.parse("5521000000001").unwrap();
        let b = rules.parse("5521000000002").unwrap();
        for _ in 0..3 {
            limits.admit_here(&a).unwrap();
        }
        let err = limits.admit_here(&a).unwrap_err();
        assert_eq!(err.status(), 429);
        assert!(err.retry_after.is_some_and(|s| (1..=60).contains(&s)));
        limits.admit_here(&b).unwrap();
    }

    #[test]
    fn inflight_cap_frees_slots_on_drop() {
        let limits = ChatLimits::new(&LimitSettings {
            max_inflight_chats: 2,
            ..LimitSettings::default()
        });
        let s1 = limits.begin().unwrap();
        let _s2 = limits.begin().unwrap();
        assert_eq!(limits.begin().err().map(|e| e.status().as_u16()), Some(503));
        drop(s1);
        assert!(limits.begin().is_ok());
    }
}
