//! Polling until a message is answered: short first delay, exponential
//! backoff with jitter up to a cap, a hard deadline.

use std::time::Duration;

use tokio::time::Instant;

use super::{AgentService, Poll};
use crate::context::RequestContext;
use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::ids::AgentId;
use crate::settings::PollSettings;
use crate::spans::Kind;

/// When to poll: first after `initial_delay` (short: a quick answer is seen
/// quickly), then every `dense_interval` while the answer is likely to come
/// (`dense_until` after the send; most agent answers take well under a
/// second), then exponential backoff up to `max_delay`, with jitter. The
/// backoff starts at `dense_until × (multiplier − 1)`, so its first poll
/// comes when the time already waited has grown by `multiplier`.
///
/// Why the dense phase: with pure doubling (50, 100, 200, 400 ms…) an answer
/// ready at 260 ms is seen at 350 ms and one at 360 ms only at 750 ms, so the
/// added latency of a 300 ms answer would swing by hundreds of ms. A fixed
/// gap bounds it by the gap, for a handful of extra polls.
pub struct PollSchedule {
    initial: Duration,
    dense_interval: Duration,
    dense_until: Duration,
    /// Next backoff delay once past the dense phase.
    next: Duration,
    elapsed: Duration,
    max: Duration,
    multiplier: f64,
    jitter: f64,
}

impl PollSchedule {
    pub fn new(cfg: &PollSettings) -> Self {
        let initial = cfg.initial_delay;
        Self {
            initial,
            dense_interval: cfg.dense_interval,
            dense_until: cfg.dense_until,
            next: cfg
                .dense_until
                .mul_f64(cfg.multiplier - 1.0)
                .max(initial)
                .min(cfg.max_delay),
            elapsed: Duration::ZERO,
            max: cfg.max_delay,
            multiplier: cfg.multiplier,
            jitter: cfg.jitter,
        }
    }

    /// The delay before the next poll.
    pub fn next_delay(&mut self) -> Duration {
        let base = if self.elapsed.is_zero() {
            self.initial
        } else if self.elapsed < self.dense_until {
            self.dense_interval
        } else {
            let base = self.next;
            self.next = base.mul_f64(self.multiplier).min(self.max);
            base
        };
        // Jitter spreads the polls of chats that started together.
        let factor = 1.0 + self.jitter * (fastrand::f64() * 2.0 - 1.0);
        let delay = base.mul_f64(factor.max(0.0)).min(self.max);
        self.elapsed += delay;
        delay
    }
}

pub struct Finished {
    pub outcome: Poll,
    pub polls: u32,
}

/// Polls until a terminal state or the deadline (then 504).
pub async fn until_done(
    ctx: &RequestContext,
    service: &dyn AgentService,
    agent: &AgentId,
    id: &str,
    cfg: &PollSettings,
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
        ctx.add_agent_wait(slept.elapsed());
        polls += 1;
        let mut span = ctx.span("chat.poll", Kind::Client);
        if span.is_recording() {
            span.set("eai.agent_id", agent.to_string());
        }
        let polled = service.poll(&ctx.under(&span), agent, id).await;
        if polled.is_err() {
            span.fail();
        }
        drop(span);
        match polled {
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

    fn cfg(jitter: f64) -> PollSettings {
        PollSettings {
            jitter,
            ..PollSettings::default()
        }
    }

    /// Poll times (ms after the send) up to `until`.
    fn poll_times(cfg: &PollSettings, until: u128) -> Vec<u128> {
        let mut s = PollSchedule::new(cfg);
        let mut t = Duration::ZERO;
        let mut times = Vec::new();
        while t.as_millis() < until {
            t += s.next_delay();
            times.push(t.as_millis());
        }
        times
    }

    #[test]
    fn dense_then_exponential_to_the_cap() {
        let times = poll_times(&cfg(0.0), 10_000);
        assert_eq!(
            &times[..10],
            [25, 100, 175, 250, 325, 400, 800, 1600, 3200, 5200]
        );
        assert!(times.windows(2).skip(9).all(|w| w[1] - w[0] == 2000));
    }

    #[test]
    fn default_schedule_meets_the_poll_budgets() {
        // Polls needed to see an answer ready at 3 s and at 30 s. With
        // jitter the bound is the worst case, every delay drawn 20 % short
        // (29 at 30 s); a bound between typical and worst fails at random.
        for (ready, jitter, budget) in [
            (3_000, 0.0, 9),
            (3_000, 0.2, 12),
            (30_000, 0.0, 23),
            (30_000, 0.2, 29),
        ] {
            for _ in 0..50 {
                let n = poll_times(&cfg(jitter), ready).len();
                assert!(n <= budget, "{n} polls for {ready} ms (jitter {jitter})");
            }
        }
        // Around a 300 ± 100 ms answer no gap exceeds dense_interval (+jitter).
        for _ in 0..50 {
            let times = poll_times(&cfg(0.2), 500);
            assert!(
                times.windows(2).all(|w| w[1] - w[0] <= 90 || w[0] >= 400),
                "{times:?}"
            );
        }
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let ms = Duration::from_millis;
        let cfg = PollSettings {
            initial_delay: ms(100),
            dense_interval: ms(100),
            dense_until: Duration::ZERO,
            max_delay: ms(100),
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
