//! Polling until a message is answered: short first delay, exponential
//! backoff with jitter up to a cap, a hard deadline.

use std::time::Duration;

use tokio::time::Instant;

use super::{AgentService, Poll};
use crate::config::PollConfig;
use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::ids::AgentId;

/// Consecutive failed polls tolerated before giving up early: polls are
/// idempotent, so a blip is retried, but a broken service should not hold a
/// client for the whole budget.
const MAX_CONSECUTIVE_POLL_ERRORS: u32 = 5;

pub struct PollSchedule {
    next: Duration,
    max: Duration,
    multiplier: f64,
    jitter: f64,
}

impl PollSchedule {
    pub fn new(cfg: &PollConfig) -> Self {
        Self {
            next: cfg.initial_delay(),
            max: cfg.max_delay(),
            multiplier: cfg.multiplier,
            jitter: cfg.jitter,
        }
    }

    /// The delay before the next poll.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = base.mul_f64(self.multiplier).min(self.max);
        // Jitter spreads the polls of chats that started together.
        let factor = 1.0 + self.jitter * (fastrand::f64() * 2.0 - 1.0);
        base.mul_f64(factor.max(0.0)).min(self.max)
    }
}

pub struct Finished {
    pub outcome: Poll,
    pub polls: u32,
}

/// Polls until a terminal state or the deadline (then 504).
pub async fn until_done(
    service: &dyn AgentService,
    agent: &AgentId,
    id: &str,
    cfg: &PollConfig,
    deadline: Instant,
) -> GatewayResult<Finished> {
    let mut schedule = PollSchedule::new(cfg);
    let mut polls = 0;
    let mut errors = 0;
    loop {
        let wake = Instant::now() + schedule.next_delay();
        if wake >= deadline {
            tokio::time::sleep_until(deadline).await;
            return Err(GatewayError::new(
                ErrorKind::PollTimeout,
                "the agent did not answer within the polling budget",
            ));
        }
        let slept = Instant::now();
        tokio::time::sleep_until(wake).await;
        // Waiting between polls is waiting on the agent, not gateway overhead.
        let _ = super::http::UPSTREAM_WAIT.try_with(|w| w.set(w.get() + slept.elapsed()));
        polls += 1;
        match service.poll(agent, id).await {
            Ok(Poll::Pending) => errors = 0,
            Ok(outcome) => return Ok(Finished { outcome, polls }),
            Err(e) => {
                errors += 1;
                tracing::debug!(error = %e, errors, "Poll failed; retrying.");
                if errors >= MAX_CONSECUTIVE_POLL_ERRORS {
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap() {
        let cfg = PollConfig {
            initial_delay_ms: 50,
            max_delay_ms: 2000,
            multiplier: 2.0,
            jitter: 0.0,
        };
        let mut s = PollSchedule::new(&cfg);
        let delays: Vec<u128> = (0..8).map(|_| s.next_delay().as_millis()).collect();
        assert_eq!(delays, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let cfg = PollConfig {
            initial_delay_ms: 100,
            max_delay_ms: 100,
            multiplier: 2.0,
            jitter: 0.5,
        };
        let mut s = PollSchedule::new(&cfg);
        for _ in 0..1000 {
            let d = s.next_delay().as_millis();
            assert!((50..=100).contains(&d), "{d}");
        }
    }
}
