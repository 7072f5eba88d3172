//! OpenTelemetry spans of the gateway's own work, exported over OTLP/HTTP.
//!
//! Off by default: then no `Tracer` exists, every `Span` is `Span::none()`
//! and a request pays one `Option` check per phase. On, a request whose
//! trace the sampler keeps opens a server span (`proxy::native`) or one
//! client span per backend attempt (`proxy::passthrough`); the chat flow
//! opens its phases under the server span through `RequestContext::span`.
//! A finished span goes into a bounded queue with `try_send` — never a
//! wait — and `otlp::Exporter`, a Pingora background service, posts the
//! queue in batches (`otlp.rs`); what does not fit is dropped and counted.
//!
//! The `traceparent` the gateway sends downstream names the span that made
//! the call (`Parent::traceparent`), so the agent service's and the
//! backends' spans join the exported tree.

mod otlp;
mod sampler;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

pub use otlp::{Exporter, SpanFlush};
use sampler::Sampler;

use crate::context::TraceContext;
use crate::settings::TracingSettings;

/// What a span stands for, in OpenTelemetry's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Internal,
    Server,
    Client,
}

/// An attribute's value; never message text or a token.
#[derive(Debug, Clone)]
pub enum Value {
    Str(Cow<'static, str>),
    Int(i64),
}

impl From<&'static str> for Value {
    fn from(v: &'static str) -> Self {
        Self::Str(Cow::Borrowed(v))
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Self::Str(Cow::Owned(v))
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

/// A span that has ended, waiting in the queue for export.
#[derive(Debug)]
struct Finished {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// Zero for a span whose trace starts here.
    parent: [u8; 8],
    name: Cow<'static, str>,
    kind: Kind,
    start_nanos: u64,
    end_nanos: u64,
    attributes: Vec<(&'static str, Value)>,
    error: bool,
}

/// The front of the export: the sampler and the queue's sending side.
/// One per process, built with the exporter that drains its queue.
pub struct Tracer {
    queue: mpsc::Sender<Finished>,
    sampler: Sampler,
}

impl Tracer {
    /// The tracer and its exporter, or `None` when export is off.
    pub fn new(cfg: &TracingSettings) -> Option<(Arc<Self>, Exporter)> {
        let endpoint = cfg.otlp_endpoint.as_ref()?;
        let (queue, received) = mpsc::channel(cfg.queue_spans);
        let tracer = Arc::new(Self {
            queue,
            sampler: Sampler::new(cfg.sampler, cfg.sampler_arg),
        });
        Some((tracer, Exporter::new(cfg, endpoint, received)))
    }

    /// The first span of this process in `trace`: its parent is the
    /// caller's span. `Span::none()` when the sampler drops the trace.
    pub fn root(self: &Arc<Self>, trace: &TraceContext, name: &'static str, kind: Kind) -> Span {
        if !self.sampler.sampled(trace) {
            return Span::none();
        }
        Span::open(
            self.clone(),
            trace.trace_id_bytes(),
            trace.remote_parent().unwrap_or_default(),
            name,
            kind,
        )
    }

    /// Queues a finished span, or drops and counts it when the queue is
    /// full (the collector is slow or gone): a request never waits here.
    fn finish(&self, span: Finished) {
        if self.queue.try_send(span).is_err() {
            crate::metrics::TRACE_SPANS_DROPPED
                .with_label_values(&["queue_full"])
                .inc();
        }
    }
}

/// Where children of a recorded span hang, held by a request's context and
/// copied into the futures of a chat: one pointer, so that a waiting chat
/// with export off pays 8 bytes per copy, not the 32 of the ids.
#[derive(Clone)]
pub struct Parent(Arc<ParentIds>);

struct ParentIds {
    tracer: Arc<Tracer>,
    trace_id: [u8; 16],
    span_id: [u8; 8],
}

impl Parent {
    pub fn child(&self, name: &'static str, kind: Kind) -> Span {
        let p = &self.0;
        Span::open(p.tracer.clone(), p.trace_id, p.span_id, name, kind)
    }

    /// The `traceparent` of a call made by this span (sampled).
    pub fn traceparent(&self) -> [u8; 55] {
        crate::context::traceparent(&self.0.trace_id, &self.0.span_id, 1)
    }
}

/// A span being recorded, or nothing (`Span::none()`): every method is a
/// no-op then. It ends when ended or dropped, so an early return or `?`
/// still exports it.
pub struct Span(Option<Box<Open>>);

struct Open {
    tracer: Arc<Tracer>,
    span: Finished,
}

impl Span {
    pub const fn none() -> Self {
        Self(None)
    }

    fn open(
        tracer: Arc<Tracer>,
        trace_id: [u8; 16],
        parent: [u8; 8],
        name: &'static str,
        kind: Kind,
    ) -> Self {
        Self(Some(Box::new(Open {
            tracer,
            span: Finished {
                trace_id,
                span_id: fastrand::u64(1..).to_be_bytes(),
                parent,
                name: Cow::Borrowed(name),
                kind,
                start_nanos: now_nanos(),
                end_nanos: 0,
                attributes: Vec::new(),
                error: false,
            },
        })))
    }

    /// Whether anything is recorded: callers check it before computing an
    /// attribute that costs (a masked user, an address).
    pub fn is_recording(&self) -> bool {
        self.0.is_some()
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(open) = &mut self.0 {
            open.span.attributes.push((key, value.into()));
        }
    }

    /// Marks the span failed (OpenTelemetry status `ERROR`).
    pub fn fail(&mut self) {
        if let Some(open) = &mut self.0 {
            open.span.error = true;
        }
    }

    /// Renames the span, for a name known only once it ends.
    pub fn rename(&mut self, name: impl Into<Cow<'static, str>>) {
        if let Some(open) = &mut self.0 {
            open.span.name = name.into();
        }
    }

    /// Where this span's children hang; `None` when nothing is recorded.
    pub fn parent(&self) -> Option<Parent> {
        self.0.as_ref().map(|open| {
            Parent(Arc::new(ParentIds {
                tracer: open.tracer.clone(),
                trace_id: open.span.trace_id,
                span_id: open.span.span_id,
            }))
        })
    }

    /// The `traceparent` of a call this span makes, when recorded.
    pub fn traceparent(&self) -> Option<[u8; 55]> {
        self.0
            .as_ref()
            .map(|open| crate::context::traceparent(&open.span.trace_id, &open.span.span_id, 1))
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(open) = self.0.take() {
            let Open { tracer, mut span } = *open;
            span.end_nanos = now_nanos();
            tracer.finish(span);
        }
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
