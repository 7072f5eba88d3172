//! The export: a Pingora background service that drains the span queue in
//! batches, encodes each as an OTLP `ExportTraceServiceRequest` (the
//! official protobuf definitions, `opentelemetry-proto`) and posts it to
//! `<endpoint>/v1/traces`. A collector that is down or slow costs only its
//! batches (dropped and counted); requests never wait on it.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status, span, status};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prost::Message;
use tokio::sync::mpsc;

use super::{Finished, Kind, Value};
use crate::metrics::TRACE_SPANS_DROPPED;
use crate::settings::TracingSettings;

/// Spans per request to the collector.
const BATCH: usize = 512;
/// How often a partial batch goes out.
const INTERVAL: Duration = Duration::from_millis(500);
/// The bound on one post: a slow collector delays only the next batch.
const POST_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Asks the exporter to post everything queued now, and waits for it.
type FlushRequest = std::sync::mpsc::Sender<()>;

/// Drains the span queue to the collector.
pub struct Exporter {
    /// Taken by the service's one `start`.
    received: Mutex<
        Option<(
            mpsc::Receiver<Finished>,
            mpsc::UnboundedReceiver<FlushRequest>,
        )>,
    >,
    flush: mpsc::UnboundedSender<FlushRequest>,
    url: reqwest::Url,
    resource: Resource,
}

/// What a draining process calls once its requests are done, to post the
/// spans still queued before it exits.
#[derive(Clone)]
pub struct SpanFlush(mpsc::UnboundedSender<FlushRequest>);

impl SpanFlush {
    /// Posts what is queued; waits at most `within`. Blocking: for the
    /// drain watcher's thread.
    pub fn flush_blocking(&self, within: Duration) -> bool {
        let (done, wait) = std::sync::mpsc::channel();
        self.0.send(done).is_ok() && wait.recv_timeout(within).is_ok()
    }
}

impl Exporter {
    pub(super) fn new(
        cfg: &TracingSettings,
        endpoint: &reqwest::Url,
        received: mpsc::Receiver<Finished>,
    ) -> Self {
        let (flush, flushes) = mpsc::unbounded_channel();
        let mut attributes = vec![kv("service.name", Value::from(cfg.service_name.clone()))];
        for (key, value) in &cfg.resource_attributes {
            if key != "service.name" {
                attributes.push(kv_owned(key.clone(), Value::from(value.clone())));
            }
        }
        Self {
            received: Mutex::new(Some((received, flushes))),
            flush,
            url: traces_url(endpoint),
            resource: Resource {
                attributes,
                ..Resource::default()
            },
        }
    }

    pub fn flush_handle(&self) -> SpanFlush {
        SpanFlush(self.flush.clone())
    }

    async fn post(&self, client: &reqwest::Client, batch: &mut Vec<Finished>) {
        if batch.is_empty() {
            return;
        }
        let count = batch.len() as u64;
        let body = encode(&self.resource, batch.drain(..)).encode_to_vec();
        let sent = client
            .post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(body)
            .send()
            .await;
        let refused = match sent {
            Ok(resp) if resp.status().is_success() => return,
            Ok(resp) => resp.status().to_string(),
            Err(e) => e.to_string(),
        };
        TRACE_SPANS_DROPPED
            .with_label_values(&["export_failed"])
            .inc_by(count);
        tracing::debug!(spans = count, error = %refused, "Span export failed; spans dropped.");
    }
}

#[async_trait]
impl BackgroundService for Exporter {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // Shutdown is not watched: spans keep coming while requests drain,
        // and the drain watcher asks for the last flush (`SpanFlush`).
        let taken = self.received.lock().map(|mut r| r.take()).ok().flatten();
        let Some((mut queue, mut flushes)) = taken else {
            return;
        };
        let client = match reqwest::Client::builder()
            .timeout(POST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
        {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "Span export cannot start; spans will be dropped.");
                return;
            }
        };
        let mut batch = Vec::with_capacity(BATCH);
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                received = queue.recv() => match received {
                    Some(span) => {
                        batch.push(span);
                        if batch.len() >= BATCH {
                            self.post(&client, &mut batch).await;
                        }
                    }
                    None => return,
                },
                _ = tick.tick() => self.post(&client, &mut batch).await,
                Some(done) = flushes.recv() => {
                    while let Ok(span) = queue.try_recv() {
                        batch.push(span);
                        if batch.len() >= BATCH {
                            self.post(&client, &mut batch).await;
                        }
                    }
                    self.post(&client, &mut batch).await;
                    let _ = done.send(());
                }
            }
        }
    }
}

/// `<endpoint>/v1/traces`, as the OTLP exporter variables define it.
fn traces_url(endpoint: &reqwest::Url) -> reqwest::Url {
    let mut url = endpoint.clone();
    let path = format!("{}/v1/traces", endpoint.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

fn encode(resource: &Resource, spans: impl Iterator<Item = Finished>) -> ExportTraceServiceRequest {
    let spans = spans.map(proto_span).collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "eai-gateway".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..InstrumentationScope::default()
                }),
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

fn proto_span(s: Finished) -> opentelemetry_proto::tonic::trace::v1::Span {
    let kind = match s.kind {
        Kind::Internal => span::SpanKind::Internal,
        Kind::Server => span::SpanKind::Server,
        Kind::Client => span::SpanKind::Client,
    };
    opentelemetry_proto::tonic::trace::v1::Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        parent_span_id: if s.parent == [0; 8] {
            Vec::new()
        } else {
            s.parent.to_vec()
        },
        // The sampled flag: every exported span was sampled.
        flags: 1,
        name: s.name.into_owned(),
        kind: kind as i32,
        start_time_unix_nano: s.start_nanos,
        end_time_unix_nano: s.end_nanos,
        attributes: s.attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
        status: s.error.then(|| Status {
            code: status::StatusCode::Error as i32,
            ..Status::default()
        }),
        ..Default::default()
    }
}

fn kv(key: &'static str, value: Value) -> KeyValue {
    kv_owned(key.to_owned(), value)
}

fn kv_owned(key: String, value: Value) -> KeyValue {
    let value = match value {
        Value::Str(s) => any_value::Value::StringValue(s.into_owned()),
        Value::Int(i) => any_value::Value::IntValue(i),
    };
    KeyValue {
        key,
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_go_to_the_signal_path_under_the_endpoint() {
        let url = |s: &str| traces_url(&reqwest::Url::parse(s).unwrap()).to_string();
        assert_eq!(url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(url("http://c:4318/otlp/"), "http://c:4318/otlp/v1/traces");
    }
}
