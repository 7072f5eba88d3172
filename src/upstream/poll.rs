//! Polling until a message is answered: short first delay, exponential
//! backoff with jitter up to a cap, a hard deadline.

use std::time::Duration;

use tokio::time::Instant;

use super::{AgentService, Poll};
use crate::config::PollConfig;
use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::ids::AgentId;

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
    let mut last_error: Option<GatewayError> = None;
    loop {
        let wake = Instant::now() + schedule.next_delay();
        if wake >= deadline {
            tokio::time::sleep_until(deadline).await;
            let detail = match &last_error {
                Some(e) => format!(
                    "the agent did not answer within the polling budget (last poll: {})",
                    e.detail
                ),
                None => "the agent did not answer within the polling budget".to_owned(),
            };
            return Err(GatewayError::new(ErrorKind::PollTimeout, detail));
        }
        let slept = Instant::now();
        tokio::time::sleep_until(wake).await;
        // Waiting between polls is waiting on the agent, not gateway overhead.
        super::http::WaitClock::record(slept.elapsed());
        polls += 1;
        match service.poll(agent, id).await {
            Ok(Poll::Pending) => {}
            Ok(outcome) => return Ok(Finished { outcome, polls }),
            // Polls are idempotent: a transient failure is retried on the
            // schedule until the deadline; anything else ends the chat.
            Err(e) if e.transient => {
                tracing::debug!(error = %e, "Poll failed; retrying.");
                last_error = Some(e);
            }
            Err(e) => return Err(e),
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
