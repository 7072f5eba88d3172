//! Calls the agent service provably never took, tried again within the
//! caller's budget. Provably: the connection was never made, or the service
//! answered 503 or 429 (it says it did not take the call), or Letta's 409
//! conversation lock (another run of that conversation is in progress; the
//! maintainers' advice is to wait and retry). A timeout, a reset, or a 500
//! after the request went out may have reached the agent, and is never
//! retried: one message must reach the agent exactly once.

use std::time::Duration;

use reqwest::StatusCode;
use tokio::time::Instant;

use super::http::Reply;
use crate::settings::RetrySettings;

/// Why a call was refused before the agent service took it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The connection could not be made.
    Connect,
    /// 503: overloaded or restarting.
    Unavailable,
    /// 429: too many calls.
    TooMany,
    /// Letta's 409: the conversation is busy with another run.
    Busy,
}

impl Refused {
    /// The `reason` label of `eai_gateway_agent_service_retries_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect_refused",
            Self::Unavailable => "unavailable_503",
            Self::TooMany => "too_many_429",
            Self::Busy => "busy_409",
        }
    }

    /// Whether `reply` refuses the call before taking it; `busy` tells the
    /// dialect's "conversation busy" 409 from any other conflict.
    pub(crate) fn of(reply: &Reply, busy: fn(&Reply) -> bool) -> Option<Self> {
        match reply.status {
            StatusCode::SERVICE_UNAVAILABLE => Some(Self::Unavailable),
            StatusCode::TOO_MANY_REQUESTS => Some(Self::TooMany),
            StatusCode::CONFLICT if busy(reply) => Some(Self::Busy),
            _ => None,
        }
    }
}

/// No dialect-specific "busy" answer (the EAI agent API has none).
pub(crate) fn never_busy(_: &Reply) -> bool {
    false
}

/// The waits between tries of one call.
pub(crate) struct Backoff {
    settings: RetrySettings,
    deadline: Instant,
    retries: u32,
}

impl Backoff {
    pub(crate) fn new(settings: RetrySettings, budget: Duration) -> Self {
        Self {
            settings,
            deadline: Instant::now() + budget,
            retries: 0,
        }
    }

    /// The wait before the next try, or `None` when the tries or the budget
    /// are spent. `retry_after` is the service's own word, which is honoured
    /// (with up to a tenth more, so that refused callers do not return in
    /// step); otherwise the exponential step, drawn between half and all of it.
    pub(crate) fn next(&mut self, retry_after: Option<Duration>) -> Option<Duration> {
        if self.retries >= self.settings.max_retries {
            return None;
        }
        let step = self
            .settings
            .first_backoff
            .saturating_mul(1 << self.retries.min(16))
            .min(self.settings.max_backoff);
        let wait = match retry_after {
            Some(after) => after + after.mul_f64(fastrand::f64() / 10.0),
            None => step.mul_f64(0.5 + fastrand::f64() / 2.0),
        };
        // A try that could not finish inside the budget is not worth making.
        if Instant::now() + wait >= self.deadline {
            return None;
        }
        self.retries += 1;
        Some(wait)
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare from APIs and is
/// left to the backoff).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_retries: u32) -> RetrySettings {
        RetrySettings {
            max_retries,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
        }
    }

    #[test]
    fn waits_grow_with_jitter_and_stop_at_the_bound_or_the_budget() {
        let mut b = Backoff::new(settings(4), Duration::from_secs(60));
        let waits: Vec<_> = std::iter::from_fn(|| b.next(None)).collect();
        assert_eq!(waits.len(), 4);
        for (wait, step) in waits.iter().zip([100, 200, 400, 400]) {
            let ms = wait.as_millis();
            assert!(ms >= step / 2 && ms <= step, "{ms} for a step of {step}");
        }
        // Retry-After is honoured, up to a tenth more.
        let mut b = Backoff::new(settings(4), Duration::from_secs(60));
        let wait = b.next(Some(Duration::from_secs(1))).unwrap();
        assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_millis(1100));
        // Not when it outlasts the budget.
        let mut b = Backoff::new(settings(4), Duration::from_millis(500));
        assert_eq!(b.next(Some(Duration::from_secs(1))), None);
        assert_eq!(
            Backoff::new(settings(0), Duration::from_secs(9)).next(None),
            None
        );
    }

    #[test]
    fn only_refusals_are_retried() {
        let reply = |status: u16| Reply {
            status: StatusCode::from_u16(status).unwrap(),
            body: serde_json::Value::Null,
            retry_after: None,
        };
        assert_eq!(
            Refused::of(&reply(503), never_busy),
            Some(Refused::Unavailable)
        );
        assert_eq!(Refused::of(&reply(429), never_busy), Some(Refused::TooMany));
        assert_eq!(Refused::of(&reply(409), never_busy), None);
        assert_eq!(Refused::of(&reply(409), |_| true), Some(Refused::Busy));
        for status in [500, 502, 504, 404, 400] {
            assert_eq!(Refused::of(&reply(status), |_| true), None, "{status}");
        }
    }
}
