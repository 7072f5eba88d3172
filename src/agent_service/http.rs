//! The one HTTP path to the agent service: auth header, per-call timeout,
//! capped response size, metrics per operation and outcome.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::retry::{Backoff, Refused};
use super::{Deleted, Sent};
use crate::context::RequestContext;
use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::ids::AgentId;
use crate::metrics;
use crate::settings::{AgentServiceSettings, RetrySettings};

pub(crate) struct AgentHttp {
    client: reqwest::Client,
    base: Url,
    token: Option<String>,
    max_response_bytes: usize,
    /// Bounds the connections a burst of chats opens at once: each costs
    /// about 25 KB of buffers, and thousands of chats polling at the same
    /// moment would otherwise open thousands.
    slots: Option<Semaphore>,
    slot_wait: Duration,
    retry: RetrySettings,
}

/// Counts itself in a gauge while it lives.
struct GaugeGuard(&'static prometheus::IntGauge);

impl GaugeGuard {
    fn enter(gauge: &'static std::sync::LazyLock<prometheus::IntGauge>) -> Self {
        let gauge: &'static prometheus::IntGauge = gauge;
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A response the agent service gave, whatever its status.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
    /// The `Retry-After` of a refusal, in seconds.
    pub(crate) retry_after: Option<Duration>,
}

/// A call that failed without a reply; `refused` when the connection was
/// never made (so nothing reached the service).
struct Failed {
    error: GatewayError,
    refused: bool,
}

impl From<GatewayError> for Failed {
    fn from(error: GatewayError) -> Self {
        Self {
            error,
            refused: false,
        }
    }
}

impl Reply {
    /// Short, safe description of an error body for the client's detail.
    pub(crate) fn reason(&self) -> String {
        let text = match &self.body {
            Value::Object(m) => m
                .get("detail")
                .or_else(|| m.get("error"))
                .or_else(|| m.get("message"))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .unwrap_or_default(),
            Value::String(s) => s.clone(),
            _ => String::new(),
        };
        let mut text: String = text.chars().take(300).collect();
        if text.is_empty() {
            text = "no detail".into();
        }
        format!("HTTP {}: {text}", self.status.as_u16())
    }
}

impl AgentHttp {
    pub(crate) fn new(cfg: &AgentServiceSettings) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.request_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            // Idle keep-alive connections cost buffers each; thousands of
            // chats polling at once would otherwise leave thousands behind.
            .pool_max_idle_per_host(cfg.max_idle_connections)
            .build()
            .map_err(|e| e.to_string())?;
        let mut base = cfg.url.clone();
        // Url::join drops the last segment of a base without a trailing slash.
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Self {
            client,
            base,
            token: cfg.token.clone(),
            max_response_bytes: cfg.max_response_bytes,
            slots: (cfg.max_concurrent_calls > 0).then(|| Semaphore::new(cfg.max_concurrent_calls)),
            slot_wait: cfg.request_timeout,
            retry: cfg.retry,
        })
    }

    /// Sends one request. Transport failures become errors; any HTTP status
    /// comes back as a `Reply` for the dialect to interpret.
    pub(crate) async fn call(
        &self,
        ctx: &RequestContext,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> GatewayResult<Reply> {
        self.call_with_timeout(ctx, operation, method, path, body, None)
            .await
    }

    /// `call` with a timeout other than `agent_service.request_timeout_ms`
    /// (a synchronous send waits for the whole answer). Such calls skip the
    /// `max_concurrent_calls` queue: each holds its connection for as long
    /// as an answer takes, and queueing them would cap the chats in flight.
    pub(crate) async fn call_with_timeout(
        &self,
        ctx: &RequestContext,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> GatewayResult<Reply> {
        self.attempt(ctx, operation, &method, path, body, timeout)
            .await
            .map_err(|f| f.error)
    }

    /// `call_with_timeout` for a call the service may refuse before taking
    /// it (`retry.rs`): tried again on a refusal while `budget` allows.
    /// `busy` tells the dialect's "conversation busy" 409.
    #[expect(
        clippy::too_many_arguments,
        reason = "call_with_timeout's, plus the retry's two"
    )]
    pub(crate) async fn call_refusable(
        &self,
        ctx: &RequestContext,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Option<Duration>,
        budget: Duration,
        busy: fn(&Reply) -> bool,
    ) -> GatewayResult<Reply> {
        let method = &method;
        let once = || self.attempt(ctx, operation, method, path, body, timeout);
        self.refusable(ctx, operation, budget, busy, once, |reply| Some(reply))
            .await
    }

    /// Runs `once` again while the service refuses it before taking it
    /// (`retry.rs`) and the budget (or the caller's deadline) allows;
    /// `reply_of` finds the reply that may be a refusal.
    async fn refusable<T, Once: Future<Output = Result<T, Failed>>>(
        &self,
        ctx: &RequestContext,
        operation: &'static str,
        budget: Duration,
        busy: fn(&Reply) -> bool,
        mut once: impl FnMut() -> Once,
        reply_of: fn(&T) -> Option<&Reply>,
    ) -> GatewayResult<T> {
        let budget = ctx.time_left().map_or(budget, |left| left.min(budget));
        let mut backoff = Backoff::new(self.retry, budget);
        loop {
            let result = once().await;
            let refused = match &result {
                Ok(done) => reply_of(done)
                    .and_then(|reply| Refused::of(reply, busy).map(|why| (why, reply.retry_after))),
                Err(f) if f.refused => Some((Refused::Connect, None)),
                Err(_) => None,
            };
            let wait = refused.and_then(|(why, after)| Some((why, backoff.next(after)?)));
            let Some((why, wait)) = wait else {
                return result.map_err(|f| f.error);
            };
            note_retry(operation, why, wait);
            tokio::time::sleep(wait).await;
        }
    }

    /// One call: a turn among `max_concurrent_calls` (unless it has a
    /// timeout of its own), timed and counted.
    async fn attempt(
        &self,
        ctx: &RequestContext,
        operation: &'static str,
        method: &Method,
        path: &str,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<Reply, Failed> {
        // Waiting here is the gateway's own queueing, not the agent
        // service's time: it stays out of the wait clock.
        let _slot = match timeout {
            None => self.slot(operation).await?,
            Some(_) => None,
        };
        let _in_flight = GaugeGuard::enter(&metrics::AGENT_CALLS_IN_FLIGHT);
        let started = Instant::now();
        let result = self
            .call_inner(ctx, method.clone(), path, body, timeout)
            .await;
        let status = result.as_ref().map(|r| r.status).map_err(|f| &f.error);
        record_call(ctx, operation, started, status);
        result
    }

    /// `POST path` with `body`, answered with a stream of events: the events
    /// to read, or the reply when the service refused with a status. The
    /// stream may last up to `timeout`; like a synchronous send it skips the
    /// `max_concurrent_calls` queue.
    pub(crate) async fn open_stream(
        &self,
        ctx: &RequestContext,
        operation: &'static str,
        path: &str,
        body: &Value,
        timeout: Duration,
        busy: fn(&Reply) -> bool,
    ) -> GatewayResult<Result<super::sse::EventReader, Reply>> {
        let once = || async {
            let _in_flight = GaugeGuard::enter(&metrics::AGENT_CALLS_IN_FLIGHT);
            let started = Instant::now();
            let result = self.open_stream_inner(ctx, path, body, timeout).await;
            let status = result
                .as_ref()
                .map(|opened| match opened {
                    Ok(_) => StatusCode::OK,
                    Err(reply) => reply.status,
                })
                .map_err(|f| &f.error);
            record_call(ctx, operation, started, status);
            result
        };
        self.refusable(ctx, operation, timeout, busy, once, |opened| {
            opened.as_ref().err()
        })
        .await
    }

    async fn open_stream_inner(
        &self,
        ctx: &RequestContext,
        path: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Result<super::sse::EventReader, Reply>, Failed> {
        let resp = self
            .request(ctx, Method::POST, path)?
            .timeout(timeout)
            .header("accept", "text/event-stream")
            .json(body)
            .send()
            .await
            .map_err(send_error)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(Ok(super::sse::EventReader::new(
                resp,
                self.max_response_bytes,
            )));
        }
        let retry_after = super::retry::retry_after(resp.headers());
        let bytes = resp.bytes().await.map_err(transport_error)?;
        let bytes = &bytes[..bytes.len().min(self.max_response_bytes)];
        let body = serde_json::from_slice(bytes).unwrap_or_else(|_| {
            Value::String(String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned())
        });
        Ok(Err(Reply {
            status,
            body,
            retry_after,
        }))
    }

    /// A request to the agent service with what every call carries: the
    /// token, the request id and a new span of the trace.
    fn request(
        &self,
        ctx: &RequestContext,
        method: Method,
        path: &str,
    ) -> GatewayResult<reqwest::RequestBuilder> {
        let url = self.base.join(path).map_err(|e| {
            GatewayError::new(ErrorKind::Internal, format!("bad agent-service path: {e}"))
        })?;
        let mut req = self
            .client
            .request(method, url)
            .header("x-request-id", ctx.id.as_str())
            .header("traceparent", ctx.traceparent());
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        Ok(req)
    }

    /// `POST path` with `body`; the new agent's id is `id_field` of the answer.
    pub(crate) async fn create_agent(
        &self,
        ctx: &RequestContext,
        path: &str,
        body: Value,
        id_field: &str,
    ) -> GatewayResult<AgentId> {
        let reply = self
            .call(ctx, "create_agent", Method::POST, path, Some(&body))
            .await?;
        if !reply.status.is_success() {
            return Err(GatewayError::agent_service(format!(
                "agent service could not create the agent ({})",
                reply.reason()
            )));
        }
        let id = super::safe_id(reply.body.get(id_field), "agent id")?;
        AgentId::parse(&id).map_err(GatewayError::agent_service)
    }

    /// What a send's reply means, the same in both dialects: accepted with
    /// the id under `id_field`, or the agent is gone, or refused.
    pub(crate) fn sent(reply: &Reply, id_field: &str, what: &str) -> GatewayResult<Sent> {
        match reply.status {
            s if s.is_success() => Ok(Sent::Accepted(super::safe_id(
                reply.body.get(id_field),
                what,
            )?)),
            StatusCode::NOT_FOUND => Ok(Sent::AgentGone),
            _ => Err(GatewayError::agent_service(format!(
                "agent service refused the message ({})",
                reply.reason()
            ))),
        }
    }

    /// `DELETE path`; `missing` tells a failed reply that means "no such
    /// agent" from a real failure.
    pub(crate) async fn delete_agent(
        &self,
        ctx: &RequestContext,
        path: &str,
        missing: impl Fn(&Reply) -> bool,
    ) -> GatewayResult<Deleted> {
        let reply = self
            .call(ctx, "delete_agent", Method::DELETE, path, None)
            .await?;
        if reply.status.is_success() {
            Ok(Deleted::Deleted)
        } else if reply.status == StatusCode::NOT_FOUND || missing(&reply) {
            Ok(Deleted::NotFound)
        } else {
            Err(GatewayError::agent_service(format!(
                "agent service could not delete the agent ({})",
                reply.reason()
            )))
        }
    }

    /// A turn among `max_concurrent_calls`; none needed without a limit.
    async fn slot(&self, operation: &'static str) -> GatewayResult<Option<SemaphorePermit<'_>>> {
        let Some(slots) = &self.slots else {
            return Ok(None);
        };
        let _waiting = GaugeGuard::enter(&metrics::AGENT_CALLS_WAITING);
        match tokio::time::timeout(self.slot_wait, slots.acquire()).await {
            Ok(Ok(permit)) => Ok(Some(permit)),
            _ => {
                metrics::AGENT_SERVICE_CALLS
                    .with_label_values(&[operation, "queue_timeout"])
                    .inc();
                Err(GatewayError::new(
                    ErrorKind::AgentServiceUnreachable,
                    "too many agent-service calls in flight",
                ))
            }
        }
    }

    async fn call_inner(
        &self,
        ctx: &RequestContext,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<Reply, Failed> {
        let mut req = self.request(ctx, method, path)?;
        if let Some(timeout) = timeout {
            req = req.timeout(timeout);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(send_error)?;
        let status = resp.status();
        let retry_after = super::retry::retry_after(resp.headers());
        if resp
            .content_length()
            .is_some_and(|n| n > self.max_response_bytes as u64)
        {
            return Err(too_large().into());
        }
        let mut resp = resp;
        let mut buf = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
            if buf.len() + chunk.len() > self.max_response_bytes {
                return Err(too_large().into());
            }
            buf.extend_from_slice(&chunk);
        }
        let body = if buf.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&buf) {
                Ok(v) => v,
                // An error page from a proxy in between: keep a snippet for the reason.
                Err(_) if !status.is_success() => {
                    Value::String(String::from_utf8_lossy(&buf[..buf.len().min(300)]).into_owned())
                }
                Err(_) => {
                    return Err(GatewayError::agent_service(format!(
                        "agent service answered HTTP {} with a body that is not JSON",
                        status.as_u16()
                    ))
                    .into());
                }
            }
        };
        Ok(Reply {
            status,
            body,
            retry_after,
        })
    }
}

/// Times a finished call (also on the request's wait clock) and counts it
/// by outcome: the answer's status class, or how the call failed.
fn record_call(
    ctx: &RequestContext,
    operation: &'static str,
    started: Instant,
    status: Result<StatusCode, &GatewayError>,
) {
    let elapsed = started.elapsed();
    ctx.add_agent_wait(elapsed);
    metrics::AGENT_SERVICE_DURATION
        .with_label_values(&[operation])
        .observe(elapsed.as_secs_f64());
    let outcome = match status {
        Ok(s) if s.is_success() => "ok",
        Ok(s) if s.is_client_error() => "http_4xx",
        Ok(_) => "http_5xx",
        Err(e) if e.kind == ErrorKind::AgentServiceUnreachable => "unreachable",
        Err(_) => "invalid_response",
    };
    metrics::AGENT_SERVICE_CALLS
        .with_label_values(&[operation, outcome])
        .inc();
}

/// Counts and logs a retry of a refused call.
fn note_retry(operation: &'static str, why: Refused, wait: Duration) {
    metrics::AGENT_SERVICE_RETRIES
        .with_label_values(&[operation, why.label()])
        .inc();
    tracing::info!(
        operation,
        reason = why.label(),
        wait_ms = wait.as_millis() as u64,
        "Agent service refused the call before taking it; trying again."
    );
}

/// A failed send: refused when the connection was never made.
fn send_error(e: reqwest::Error) -> Failed {
    Failed {
        refused: e.is_connect(),
        error: transport_error(e),
    }
}

fn too_large() -> GatewayError {
    GatewayError::agent_service("agent service response exceeds agent_service.max_response_bytes")
}

fn transport_error(e: reqwest::Error) -> GatewayError {
    let what = if e.is_timeout() {
        "agent service timed out"
    } else if e.is_connect() {
        "agent service unreachable"
    } else {
        "agent service connection failed"
    };
    tracing::warn!(error = %e, "Agent-service call failed.");
    GatewayError::new(ErrorKind::AgentServiceUnreachable, what).transient()
}
