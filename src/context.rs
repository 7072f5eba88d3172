//! What travels with one request: its id and its clocks. Passed by value to
//! the chat flow and by reference to the agent-service client, so nothing
//! about a request is read from task-locals.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A request id: the client's `X-Request-Id` when it is short and plain,
/// else a new UUID. Safe in headers and logs as it is.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    pub fn from_header(value: Option<&[u8]>) -> Self {
        match value {
            Some(v) if Self::acceptable(v) => Self(Arc::from(String::from_utf8_lossy(v))),
            _ => Self::generate(),
        }
    }

    pub fn generate() -> Self {
        Self(Arc::from(uuid::Uuid::new_v4().to_string()))
    }

    fn acceptable(v: &[u8]) -> bool {
        (1..=128).contains(&v.len())
            && v.iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One request's id and timing. Cheap to clone: the chat runs in a task of
/// its own and the route must still read the clock after it.
#[derive(Clone)]
pub struct RequestContext {
    pub id: RequestId,
    started: Instant,
    /// Time spent waiting on the agent service: its calls and the sleeps
    /// between polls.
    upstream_wait: Arc<AtomicU64>,
}

impl RequestContext {
    pub fn new(id: RequestId) -> Self {
        Self {
            id,
            started: Instant::now(),
            upstream_wait: Arc::default(),
        }
    }

    pub fn add_upstream_wait(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.upstream_wait.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn upstream_wait(&self) -> Duration {
        Duration::from_nanos(self.upstream_wait.load(Ordering::Relaxed))
    }

    /// Time since the request started that was not spent waiting on the
    /// agent service: the gateway's own cost.
    pub fn own_time(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.upstream_wait())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_kept_others_replaced() {
        assert_eq!(
            RequestId::from_header(Some(b"abc-1.2:3_")).as_str(),
            "abc-1.2:3_"
        );
        for bad in [&b""[..], b"a b", b"x\r\ny", &[b'a'; 129]] {
            let id = RequestId::from_header(Some(bad));
            assert_eq!(id.as_str().len(), 36, "{bad:?}");
        }
    }
}
