//! What travels with one request: its id and its clocks. Passed by value to
//! the chat flow and by reference to the agent-service client, so nothing
//! about a request is read from task-locals.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::spans::{Kind, Parent, Span};

/// A request id: the client's `X-Request-Id` when it is short and plain,
/// else a new UUID. Safe in headers and logs as it is. It carries the
/// request's trace context too: one pointer for both, which every future
/// of a waiting chat holds.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestId(Arc<Ids>);

#[derive(PartialEq, Eq)]
struct Ids {
    id: Box<str>,
    trace: TraceContext,
}

impl RequestId {
    /// From the `X-Request-Id` header, in a new trace.
    #[cfg(any(test, feature = "internals"))]
    pub fn from_header(value: Option<&[u8]>) -> Self {
        Self::from_headers(value, None)
    }

    /// From the `X-Request-Id` and `traceparent` headers.
    pub fn from_headers(id: Option<&[u8]>, traceparent: Option<&[u8]>) -> Self {
        let id = match id {
            Some(v) if Self::acceptable(v) => String::from_utf8_lossy(v).into(),
            // Encoded straight, not through `fmt`: one per proxied request.
            _ => Box::from(
                &*uuid::Uuid::new_v4()
                    .hyphenated()
                    .encode_lower(&mut uuid::Uuid::encode_buffer()),
            ),
        };
        Self(Arc::new(Ids {
            id,
            trace: TraceContext::from_header(traceparent),
        }))
    }

    /// A new id and trace, for work no request started (operator commands,
    /// background sweeps, shutdown).
    pub fn generate() -> Self {
        Self::from_headers(None, None)
    }

    fn acceptable(v: &[u8]) -> bool {
        (1..=128).contains(&v.len())
            && v.iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    }

    pub fn as_str(&self) -> &str {
        &self.0.id
    }

    pub fn trace(&self) -> &TraceContext {
        &self.0.trace
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// W3C trace context (`traceparent`): the client's trace when it sent a
/// valid one, else a new trace. Every outgoing call carries the same trace
/// id with a span id of its own, so the agent service's and the backends'
/// logs line up with the gateway's access line. Plain bytes, no heap: every
/// waiting chat holds one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    /// The caller's span (the incoming `traceparent`'s parent id); zero
    /// when the trace starts here.
    parent: [u8; 8],
    flags: u8,
}

impl TraceContext {
    pub fn from_header(value: Option<&[u8]>) -> Self {
        value.and_then(Self::parse).unwrap_or_else(Self::start)
    }

    /// A new trace, sampled. All 128 bits random (not a v4 UUID, whose
    /// fixed variant bits would skew the `traceidratio` samplers, which
    /// read the id's last 8 bytes as a random number).
    pub fn start() -> Self {
        Self {
            trace_id: fastrand::u128(1..).to_be_bytes(),
            parent: [0; 8],
            flags: 1,
        }
    }

    /// `version-traceid-parentid-flags`; version ff and all-zero ids are
    /// invalid. Later versions may append fields after the flags.
    fn parse(v: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(v).ok()?.trim();
        let mut parts = s.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let parent = parts.next()?;
        let flags = parts.next()?;
        let hex = |p: &str, len: usize| {
            p.len() == len && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(parent, 16) {
            return None;
        }
        if !hex(flags, 2) || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        hex::decode_to_slice(trace, &mut trace_id).ok()?;
        let mut parent_id = [0u8; 8];
        hex::decode_to_slice(parent, &mut parent_id).ok()?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent: parent_id,
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }

    pub fn trace_id(&self) -> String {
        let mut buf = [0u8; 32];
        ascii(hex_into(&self.trace_id, &mut buf))
    }

    /// The `traceparent` of one outgoing call: this trace, a new span.
    /// Written into a fixed buffer: it goes on every proxied request, and
    /// `format!` with `hex::encode` cost about 2,000 instructions there.
    pub fn child_header(&self) -> String {
        ascii(&self.child_bytes())
    }

    /// `child_header` as a header value, without going through a `String`.
    pub fn child_header_value(&self) -> http::HeaderValue {
        // Hex digits and dashes: always a valid value.
        http::HeaderValue::from_bytes(&self.child_bytes())
            .unwrap_or_else(|_| http::HeaderValue::from_static(""))
    }

    fn child_bytes(&self) -> [u8; 55] {
        traceparent(
            &self.trace_id,
            &fastrand::u64(1..).to_be_bytes(),
            self.flags,
        )
    }

    pub fn trace_id_bytes(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The caller's span, when the trace came with the request.
    pub fn remote_parent(&self) -> Option<[u8; 8]> {
        (self.parent != [0; 8]).then_some(self.parent)
    }

    /// The `sampled` flag of the trace.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// A `traceparent` value: version 00, these ids and flags.
pub(crate) fn traceparent(trace_id: &[u8; 16], span: &[u8; 8], flags: u8) -> [u8; 55] {
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(trace_id, &mut buf[3..35]);
    hex_into(span, &mut buf[36..52]);
    hex_into(&[flags], &mut buf[53..55]);
    buf
}

/// Lower-case hex of `bytes` into `out` (twice as long); returns `out`.
fn hex_into<'a>(bytes: &[u8], out: &'a mut [u8]) -> &'a [u8] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
    out
}

/// A `String` of bytes known to be ASCII.
pub(crate) fn ascii(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap_or_default()
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.trace_id())
    }
}

/// One request's id (with its trace) and timing. Cheap to clone: the chat
/// runs in a task of its own and the route must still read the clock after
/// it.
#[derive(Clone)]
pub struct RequestContext {
    pub id: RequestId,
    started: Instant,
    /// Time spent waiting on the agent service: its calls and the sleeps
    /// between polls.
    agent_wait: Arc<AtomicU64>,
    /// When the caller stops waiting, once a chat knows it: the bound on
    /// trying a refused call again.
    deadline: Arc<std::sync::OnceLock<Instant>>,
    /// The exported span that work of this request is a child of; `None`
    /// when span export is off or the trace is not sampled.
    span: Option<Parent>,
}

impl RequestContext {
    pub fn new(id: RequestId) -> Self {
        Self {
            id,
            started: Instant::now(),
            agent_wait: Arc::default(),
            deadline: Arc::default(),
            span: None,
        }
    }

    /// This context with its work recorded under `span` (the request's
    /// server span).
    pub fn within(mut self, span: Option<Parent>) -> Self {
        self.span = span;
        self
    }

    /// A span of this request's work, child of its current span; records
    /// nothing when the request has none.
    pub fn span(&self, name: &'static str, kind: Kind) -> Span {
        self.span
            .as_ref()
            .map_or_else(Span::none, |p| p.child(name, kind))
    }

    /// The span this context records under, for work that outlives it.
    pub fn span_parent(&self) -> Option<&Parent> {
        self.span.as_ref()
    }

    /// A clone of this context whose calls are children of `span`: what
    /// the agent-service client is given so that the `traceparent` it
    /// sends names that span.
    /// Borrowed as it is when `span` records nothing: no clone then.
    pub fn under(&self, span: &Span) -> std::borrow::Cow<'_, Self> {
        match span.parent() {
            Some(parent) => {
                let mut ctx = self.clone();
                ctx.span = Some(parent);
                std::borrow::Cow::Owned(ctx)
            }
            None => std::borrow::Cow::Borrowed(self),
        }
    }

    /// The `traceparent` of one outgoing call: the current span's id when
    /// spans are exported (so the callee's spans join the exported tree),
    /// else a new span id of the trace.
    pub fn traceparent(&self) -> String {
        match &self.span {
            Some(parent) => ascii(&parent.traceparent()),
            None => self.trace().child_header(),
        }
    }

    /// Records the caller's deadline (the first one set stays).
    pub fn set_deadline(&self, at: Instant) {
        let _ = self.deadline.set(at);
    }

    /// Time left until the caller's deadline, if one was set.
    pub fn time_left(&self) -> Option<Duration> {
        self.deadline
            .get()
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    pub fn trace(&self) -> &TraceContext {
        self.id.trace()
    }

    pub fn add_agent_wait(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.agent_wait.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn agent_wait(&self) -> Duration {
        Duration::from_nanos(self.agent_wait.load(Ordering::Relaxed))
    }

    /// Time since the request started (its body in).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Time since the request started that was not spent waiting on the
    /// agent service: the gateway's own cost.
    pub fn own_time(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.agent_wait())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_kept_when_valid_and_started_otherwise() {
        let incoming = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::from_header(Some(incoming));
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = t.child_header();
        assert!(
            child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{child}"
        );
        assert!(child.ends_with("-01"));
        assert_ne!(&child.as_bytes()[36..52], b"00f067aa0ba902b7");
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"garbage",
        ] {
            let t = TraceContext::from_header(Some(bad));
            assert_ne!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(t.trace_id().len(), 32);
        }
    }

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
