//! Admission control for chats: a per-user rate (pingora-limits' sliding
//! two-window estimator), and a global cap on chats in flight. The per-user
//! queue cap lives with the lanes, where the queue is.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pingora_limits::rate::Rate;

use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::ids::UserNumber;
use crate::metrics;

const WINDOW: Duration = Duration::from_secs(60);
// Count-min sketch size: wide enough that unrelated users rarely share all
// four counters (an estimate can only over-count).
const HASHES: usize = 4;
const SLOTS: usize = 16 * 1024;

pub struct ChatLimits {
    user_rate: Option<(Rate, u32)>,
    max_inflight: Option<usize>,
    inflight: Arc<AtomicUsize>,
}

/// Holds one slot of the global in-flight cap.
pub struct InflightSlot(Arc<AtomicUsize>);

impl Drop for InflightSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ChatLimits {
    /// `0` turns a limit off.
    pub fn new(user_rate_per_min: u32, max_inflight: usize) -> Self {
        Self {
            user_rate: (user_rate_per_min > 0).then(|| {
                (
                    Rate::new_with_estimator_config(WINDOW, HASHES, SLOTS),
                    user_rate_per_min,
                )
            }),
            max_inflight: (max_inflight > 0).then_some(max_inflight),
            inflight: Arc::default(),
        }
    }

    /// Takes a global slot or answers 503 with `Retry-After`.
    pub fn begin(&self) -> GatewayResult<InflightSlot> {
        let now = self.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        let slot = InflightSlot(self.inflight.clone());
        if self.max_inflight.is_some_and(|max| now > max) {
            reject("max_inflight");
            return Err(GatewayError::new(
                ErrorKind::AtCapacity,
                "the gateway is at capacity; retry shortly",
            )
            .retry_after(1));
        }
        Ok(slot)
    }

    /// Counts a chat against the user's rate or answers 429 with `Retry-After`.
    pub fn admit(&self, user: &UserNumber) -> GatewayResult<()> {
        let Some((rate, limit)) = &self.user_rate else {
            return Ok(());
        };
        // Sliding estimate: the previous window weighted by how much of it
        // still overlaps the last minute, plus the current window.
        let (estimate, fraction) = rate.rate_with(user, |c| {
            let est =
                c.prev_samples as f64 * (1.0 - c.current_interval_fraction) + c.curr_samples as f64;
            (est, c.current_interval_fraction)
        });
        if estimate >= f64::from(*limit) {
            reject("user_rate");
            let wait = ((1.0 - fraction) * WINDOW.as_secs_f64()).ceil() as u64;
            return Err(GatewayError::new(
                ErrorKind::RateLimited,
                format!("too many messages from this user; the limit is {limit} per minute"),
            )
            .retry_after(wait));
        }
        rate.observe(user, 1);
        Ok(())
    }
}

pub fn reject(reason: &'static str) {
    metrics::REJECTIONS.with_label_values(&[reason]).inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_rate_limits_one_user_not_others() {
        let limits = ChatLimits::new(3, 0);
        let a = UserNumber::parse("5521000000001").unwrap();
        let b = UserNumber::parse("5521000000002").unwrap();
        for _ in 0..3 {
            limits.admit(&a).unwrap();
        }
        let err = limits.admit(&a).unwrap_err();
        assert_eq!(err.status(), 429);
        assert!(err.retry_after.is_some_and(|s| (1..=60).contains(&s)));
        limits.admit(&b).unwrap();
    }

    #[test]
    fn inflight_cap_frees_slots_on_drop() {
        let limits = ChatLimits::new(0, 2);
        let s1 = limits.begin().unwrap();
        let _s2 = limits.begin().unwrap();
        assert_eq!(limits.begin().err().map(|e| e.status()), Some(503));
        drop(s1);
        assert!(limits.begin().is_ok());
    }
}
