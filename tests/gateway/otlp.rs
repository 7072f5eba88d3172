//! Span export over OTLP/HTTP: a real receiver on a loopback port decodes
//! what the gateway posts with the official protobuf definitions
//! (`opentelemetry-proto`) and the tests read the spans as a collector
//! would: the tree of a chat, a pass-through attempt, what the attributes
//! may not hold, and a collector that is gone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use prost::Message;

use super::support::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// Each span received, with its resource's attributes.
type Received = Vec<(Span, Vec<KeyValue>)>;

/// What the receiver has decoded.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Received>>,
}

impl Collector {
    /// Listens on a loopback port; the `OTEL_EXPORTER_OTLP_ENDPOINT` to give.
    async fn start() -> (Self, String) {
        let collector = Self::default();
        let received = collector.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let received = received.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    let mut spans = received.spans.lock().unwrap();
                    for resource in request.resource_spans {
                        let attributes =
                            resource.resource.map(|r| r.attributes).unwrap_or_default();
                        for scope in resource.scope_spans {
                            for span in scope.spans {
                                spans.push((span, attributes.clone()));
                            }
                        }
                    }
                    ""
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (collector, format!("http://{addr}"))
    }

    fn spans(&self) -> Vec<Span> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .map(|(s, _)| s.clone())
            .collect()
    }

    fn of_trace(&self, trace: &str) -> Vec<Span> {
        self.spans()
            .into_iter()
            .filter(|s| hex::encode(&s.trace_id) == trace)
            .collect()
    }

    /// Waits until a span named `name` of `trace` has arrived.
    async fn wait_for(&self, trace: &str, name: &str) -> Vec<Span> {
        let arrived = eventually(Duration::from_secs(10), || {
            self.of_trace(trace).iter().any(|s| s.name == name)
        })
        .await;
        let spans = self.of_trace(trace);
        assert!(
            arrived,
            "no {name} span of {trace}; got {:#?}",
            names_of(&spans)
        );
        spans
    }
}

fn names_of(spans: &[Span]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| text(&kv.value))
}

/// The span of the traceparent's span-id field.
fn span_id_of(traceparent: &str) -> &str {
    &traceparent[36..52]
}

fn tracing_env(endpoint: String) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_SERVICE_NAME", "gateway-under-test".into()),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test".into(),
        ),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on".into()),
    ]
}

async fn chat_with(
    gw: &GatewayProcess,
    traceparent: &str,
    user: &str,
    message: &str,
) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(gw.url("/eai-gateway/chat"))
        .header("traceparent", traceparent)
        .json(&serde_json::json!({"user_number": user, "message": message}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_is_one_server_span_with_its_phases_in_the_callers_trace() {
    let (collector, endpoint) = Collector::start().await;
    let (sim, sim_addr) = simulator(300).await;
    let db = TestDb::new(DbKind::Sqlite);
    let mut spec = GatewaySpec::new(Dialect::Eai, &db, sim_addr);
    spec.env = tracing_env(endpoint);
    let gw = GatewayProcess::start(spec).await;
    let user = "5521977776666";
    let message = "segredo-da-mensagem";

    // A caller that did not sample its trace: parent-based keeps none of it.
    let unsampled = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let (status, _) = chat_with(
        &gw,
        &format!("00-{unsampled}-{CALLER_SPAN}-00"),
        user,
        message,
    )
    .await;
    assert_eq!(status, 200);

    let incoming = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let (status, body) = chat_with(&gw, &incoming, user, message).await;
    assert_eq!(status, 200, "{body}");
    let spans = collector.wait_for(TRACE, "POST /eai-gateway/chat").await;

    let server: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    assert_eq!(server.len(), 1, "{:#?}", names_of(&spans));
    let server = server[0];
    assert_eq!(server.name, "POST /eai-gateway/chat");
    assert_eq!(hex::encode(&server.parent_span_id), CALLER_SPAN);
    assert_eq!(
        attr(server, "http.route").as_deref(),
        Some("/eai-gateway/chat")
    );
    assert_eq!(attr(server, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(
        attr(server, "http.response.status_code").as_deref(),
        Some("200")
    );

    // Every phase is a child of the server span, in the same trace.
    let phases = [
        "chat.lane_wait",
        "chat.lease",
        "chat.mapping",
        "chat.send",
        "chat.poll",
    ];
    let child_names: Vec<&str> = spans
        .iter()
        .filter(|s| s.parent_span_id == server.span_id)
        .map(|s| s.name.as_str())
        .collect();
    for phase in phases {
        assert!(
            child_names.contains(&phase),
            "{phase} missing: {child_names:?}"
        );
    }
    assert_eq!(
        child_names.len() + 1,
        spans.len(),
        "{:#?}",
        names_of(&spans)
    );
    let named = |name: &str| spans.iter().find(|s| s.name == name).unwrap();
    // The first unsampled chat created the agent: this one found it cached.
    assert_eq!(
        attr(named("chat.mapping"), "eai.mapping.source").as_deref(),
        Some("cache")
    );
    let agent = answering_agent(&body);
    for name in ["chat.send", "chat.poll", "chat.mapping"] {
        assert_eq!(
            attr(named(name), "eai.agent_id").as_deref(),
            Some(agent.as_str()),
            "{name}"
        );
    }
    let masked = attr(named("chat.send"), "eai.user").expect("eai.user");
    assert!(masked.starts_with("***6666#"), "{masked}");

    // The agent service was called with the ids of exported spans.
    let exported: Vec<String> = spans.iter().map(|s| hex::encode(&s.span_id)).collect();
    let to_agent: Vec<String> = sim
        .traceparents()
        .into_iter()
        .filter(|tp| tp.contains(TRACE))
        .collect();
    assert!(!to_agent.is_empty());
    for tp in &to_agent {
        assert!(tp.ends_with("-01"), "{tp}");
        assert!(
            exported.iter().any(|id| id == span_id_of(tp)),
            "{tp} names no exported span"
        );
    }
    assert!(
        collector.of_trace(unsampled).is_empty(),
        "an unsampled trace was exported"
    );

    // A new user's chat: the lookup misses, the agent is created and claimed.
    let fresh = "6d1a3f0c9b8e7d6c5b4a39281706f5e4";
    let (status, _) = chat_with(
        &gw,
        &format!("00-{fresh}-{CALLER_SPAN}-01"),
        "5521955554444",
        message,
    )
    .await;
    assert_eq!(status, 200);
    let spans = collector.wait_for(fresh, "POST /eai-gateway/chat").await;
    let named = |name: &str| spans.iter().find(|s| s.name == name);
    assert_eq!(
        named("chat.mapping")
            .and_then(|s| attr(s, "eai.mapping.source"))
            .as_deref(),
        Some("none")
    );
    let create = named("chat.agent_create").expect("chat.agent_create");
    assert_eq!(create.kind, SpanKind::Client as i32);
    assert!(
        named("chat.agent_claim").is_some(),
        "{:#?}",
        names_of(&spans)
    );

    // The resource names the service as the standard variables say.
    let resource = collector.spans.lock().unwrap()[0].1.clone();
    let resource: Vec<(String, String)> = resource
        .iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect();
    assert!(
        resource.contains(&("service.name".into(), "gateway-under-test".into())),
        "{resource:?}"
    );
    assert!(
        resource.contains(&("deployment.environment".into(), "test".into())),
        "{resource:?}"
    );

    // No span of any trace holds the number or the message.
    for span in collector.spans() {
        for kv in &span.attributes {
            let value = text(&kv.value);
            for secret in [user, "77776666", "5521955554444", "55554444", message] {
                assert!(
                    !value.contains(secret),
                    "{} = {value} in {}",
                    kv.key,
                    span.name
                );
            }
        }
        assert!(!span.name.contains("5521"), "{}", span.name);
    }
}

/// A backend that answers `backend ok` and keeps the `traceparent`s it got.
async fn recording_backend() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = seen.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let recorder = recorder.clone();
        async move {
            if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
                recorder.lock().unwrap().push(tp.to_owned());
            }
            "backend ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_through_request_is_one_client_span_per_backend_attempt() {
    let (collector, endpoint) = Collector::start().await;
    let (backend, seen) = recording_backend().await;
    let (_sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(DbKind::Sqlite);
    let mut spec = GatewaySpec::new(Dialect::Eai, &db, sim_addr);
    spec.env = tracing_env(endpoint);
    spec.default_upstream = Some(backend.to_string());
    let gw = GatewayProcess::start(spec).await;
    let client = reqwest::Client::new();

    // GET takes the lean path, POST pingora-proxy: both record the attempt.
    for (method, trace) in [
        (reqwest::Method::GET, "11111111111111111111111111111111"),
        (reqwest::Method::POST, "22222222222222222222222222222222"),
    ] {
        let r = client
            .request(method.clone(), gw.url("/page"))
            .header("traceparent", format!("00-{trace}-{CALLER_SPAN}-01"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "backend ok");
        let name = format!("{method} upstream:default");
        let spans = collector.wait_for(trace, &name).await;
        assert_eq!(spans.len(), 1, "{:#?}", names_of(&spans));
        let span = &spans[0];
        assert_eq!(span.kind, SpanKind::Client as i32);
        assert_eq!(hex::encode(&span.parent_span_id), CALLER_SPAN);
        assert_eq!(
            attr(span, "http.response.status_code").as_deref(),
            Some("200")
        );
        assert_eq!(
            attr(span, "http.request.method").as_deref(),
            Some(method.as_str())
        );
        assert_eq!(attr(span, "eai.upstream").as_deref(), Some("default"));
        assert_eq!(attr(span, "server.port"), Some(backend.port().to_string()));
        // The backend got this span's id as its parent.
        let got = seen.lock().unwrap().clone();
        let tp = got
            .iter()
            .find(|tp| tp.contains(trace))
            .expect("traceparent at the backend");
        assert_eq!(span_id_of(tp), hex::encode(&span.span_id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_changes_no_answer_and_the_drops_are_counted() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let backend = plain_backend().await;
    let (_sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(DbKind::Sqlite);
    let mut spec = GatewaySpec::new(Dialect::Eai, &db, sim_addr);
    spec.env = tracing_env(dead);
    spec.default_upstream = Some(backend.to_string());
    spec.extra_yaml = "tracing:\n  queue_spans: 16\n".into();
    let gw = GatewayProcess::start(spec).await;
    let dropped = |m: &Metrics| {
        ["queue_full", "export_failed"]
            .iter()
            .map(|r| {
                m.value("eai_gateway_trace_spans_dropped_total", &[("reason", r)])
                    .unwrap_or(0.0)
            })
            .sum::<f64>()
    };
    // The start-up health checks' spans may be counted already.
    let before = dropped(&gw.metrics().await);

    let (status, body) = gw.chat("5521933332222", "olá").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answer_text(&body), "echo: olá");
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    for _ in 0..100 {
        let r = client.get(gw.url("/page")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "backend ok");
    }
    // Nothing waited on the collector (each post is bounded at 2 s).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let mut counted = 0.0;
    for _ in 0..50 {
        counted = dropped(&gw.metrics().await) - before;
        if counted >= 100.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(counted >= 100.0, "spans dropped: {counted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_504_leaves_a_background_span_and_shutdown_flushes_the_queue() {
    let (collector, endpoint) = Collector::start().await;
    let (_sim, sim_addr) = simulator(1500).await;
    let db = TestDb::new(DbKind::Sqlite);
    let mut spec = GatewaySpec::new(Dialect::Eai, &db, sim_addr);
    spec.env = tracing_env(endpoint);
    let mut gw = GatewayProcess::start(spec).await;

    // The caller waits 0.5 s for a 1.5 s answer: a 504, and the message is
    // followed to its end in the background, under the same server span.
    let trace = "33333333333333333333333333333333";
    let r = reqwest::Client::new()
        .post(gw.url("/eai-gateway/chat"))
        .header("traceparent", format!("00-{trace}-{CALLER_SPAN}-01"))
        .json(&serde_json::json!({"user_number": "5521944443333", "message": "demora", "timeout": 0.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let spans = collector.wait_for(trace, "chat.background").await;
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("server span");
    assert_eq!(
        attr(server, "http.response.status_code").as_deref(),
        Some("504")
    );
    let background = spans.iter().find(|s| s.name == "chat.background").unwrap();
    assert_eq!(background.parent_span_id, server.span_id);
    assert_eq!(attr(background, "eai.outcome").as_deref(), Some("answered"));
    // It began when the caller had its answer and ended with the message.
    assert!(background.start_time_unix_nano >= server.end_time_unix_nano - 50_000_000);
    assert!(background.end_time_unix_nano > server.end_time_unix_nano + 500_000_000);

    // Spans of a request answered just before SIGTERM are posted before the
    // process exits, not left in the queue (exports otherwise go every
    // 0.5 s, so without the flush this trace is almost always lost).
    let last = "44444444444444444444444444444444";
    let r = reqwest::Client::new()
        .get(gw.url("/healthz"))
        .header("traceparent", format!("00-{last}-{CALLER_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Off this runtime's workers: the collector must answer meanwhile.
    let status = tokio::task::spawn_blocking(move || gw.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    let names: Vec<String> = collector
        .of_trace(last)
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["GET /healthz"]);
}
