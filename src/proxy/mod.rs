//! The gateway's request handling. `front` decides per request whether the
//! gateway answers it itself (native routes, on a lean path) or hands it to
//! pingora-proxy, whose `ProxyHttp` hooks (`GatewayProxy`) only route:
//! native requests that reach them go to `routes`, everything else to the
//! upstream chosen by the route table. `record` emits the access line and the
//! request metrics for both paths.

pub mod front;
pub mod upstreams;

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::proxy::FailToProxy;
use serde_json::json;

use crate::auth::TokenSet;
use crate::chat::ChatService;
use crate::error::{ErrorKind, GatewayError};
use crate::limits::{ChatLimits, reject};
use crate::metrics;
use crate::routes::{self, Native};
use crate::upstream::http::UPSTREAM_WAIT;
use upstreams::{RouteTable, Upstream};

/// Silence tolerated between two reads of a native request body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Gateway {
    pub chat: ChatService,
    pub routes: RouteTable,
    pub limits: ChatLimits,
    pub tokens: TokenSet,
    pub protect_passthrough: bool,
    pub max_body_bytes: usize,
    pub max_message_chars: usize,
    pub body_timeout: Duration,
    /// Requests being served; shutdown waits for it to reach zero.
    pub inflight: Arc<AtomicUsize>,
}

/// The `ProxyHttp` face of the gateway; the lean native path in `front`
/// shares the same `Gateway`.
pub struct GatewayProxy(pub Arc<Gateway>);

impl Deref for GatewayProxy {
    type Target = Gateway;

    fn deref(&self) -> &Gateway {
        &self.0
    }
}

/// The route label of a request no route claimed (yet); shared, so a
/// request does not allocate it.
static UNMATCHED: std::sync::LazyLock<Arc<str>> =
    std::sync::LazyLock::new(|| Arc::from("unmatched"));

/// Counts a request as in flight for as long as its context lives.
pub struct InflightGuard(Arc<AtomicUsize>);

impl InflightGuard {
    pub fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter.clone())
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Ctx {
    _inflight: InflightGuard,
    started: Instant,
    /// Route template or `upstream:<name>`; never the raw path.
    route: Arc<str>,
    request_id: String,
    upstream: Option<Arc<Upstream>>,
    status: u16,
}

/// An incoming `X-Request-Id` is kept only if it is short and plain.
fn valid_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The client's request id if it is acceptable, else a new one.
fn request_id(session: &ServerSession) -> String {
    match session.get_header("x-request-id").map(|v| v.as_bytes()) {
        Some(v) if valid_request_id(v) => String::from_utf8_lossy(v).into_owned(),
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

/// The access line and request metrics of one finished request. `route` is
/// a template or `upstream:<name>`, never the raw path.
fn record(
    route: &str,
    method: &http::Method,
    status: u16,
    started: Instant,
    request_id: &str,
    error: Option<&Error>,
) {
    let method = metrics::method_label(method);
    let elapsed = started.elapsed();
    let status_label = status.to_string();
    metrics::REQUESTS
        .with_label_values(&[route, method, &status_label])
        .inc();
    metrics::REQUEST_DURATION
        .with_label_values(&[route])
        .observe(elapsed.as_secs_f64());
    tracing::info!(
        request_id,
        route,
        method,
        status,
        ms = elapsed.as_secs_f64() * 1000.0,
        error = error.map(|e| e.etype().as_str()),
        "Request."
    );
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            _inflight: InflightGuard::new(&self.inflight),
            started: Instant::now(),
            route: UNMATCHED.clone(),
            request_id: String::new(),
            upstream: None,
            status: 0,
        }
    }

    /// No downstream modules: Pingora's default adds response compression at
    /// level 0 (off), which still inspects every response; pass-through
    /// bodies go out exactly as the backend sent them.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.request_id = request_id(session);
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        if let Some(native) = routes::match_native(&method, &path) {
            ctx.route = Arc::from(native.template());
            ctx.status = self.serve_native(session, native, &ctx.request_id).await?;
            return Ok(true);
        }
        if self.protect_passthrough
            && let Err(e) = self
                .tokens
                .check(session.get_header("authorization").map(|v| v.as_bytes()))
        {
            reject("unauthorized");
            ctx.status = routes::respond(session, &ctx.request_id, Err(e), &[]).await?;
            return Ok(true);
        }
        match self.routes.lookup(&path) {
            Some(upstream) => {
                ctx.route = upstream.label.clone();
                ctx.upstream = Some(upstream.clone());
                Ok(false)
            }
            None => {
                let err = GatewayError::new(ErrorKind::NotFound, "no route for this path");
                ctx.status = routes::respond(session, &ctx.request_id, Err(err), &[]).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        ctx.upstream
            .as_ref()
            .and_then(|u| u.peer())
            .map(Box::new)
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(502), "no backend available"))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
        {
            let forwarded = match upstream_request
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prior) => format!("{prior}, {ip}"),
                None => ip,
            };
            upstream_request.insert_header("x-forwarded-for", forwarded)?;
        }
        upstream_request.insert_header("x-forwarded-proto", "http")?;
        upstream_request.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        upstream_response.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        // Once the response has started, the only honest signal is a closed connection.
        if code > 0 && session.response_written().is_none() {
            let detail = match code {
                502 => format!(
                    "upstream {} failed: {}",
                    ctx.route.trim_start_matches("upstream:"),
                    e.etype().as_str()
                ),
                400 => "malformed request".to_owned(),
                _ => "proxy error".to_owned(),
            };
            let headers = [("x-request-id", ctx.request_id.clone())];
            if let Err(err) =
                routes::write_json(session, code, Some(&json!({"detail": detail})), &headers).await
            {
                tracing::debug!(error = %err, "Could not send the error response.");
            }
        }
        ctx.status = code;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map(|h| h.status.as_u16())
            .unwrap_or(ctx.status);
        record(
            &ctx.route,
            &session.req_header().method,
            status,
            ctx.started,
            &ctx.request_id,
            e,
        );
    }
}

impl Gateway {
    /// One native request on the lean path, from its parsed header to the
    /// access line; the response is written when this returns `Ok`.
    pub async fn serve_native_request(&self, session: &mut ServerSession) -> Result<()> {
        let _inflight = InflightGuard::new(&self.inflight);
        let started = Instant::now();
        let request_id = request_id(session);
        let method = session.req_header().method.clone();
        let native = routes::match_native(&method, session.req_header().uri.path())
            .unwrap_or(routes::Native::Unknown);
        let route = native.template();
        let result = self.serve_native(session, native, &request_id).await;
        let status = match &result {
            Ok(status) => *status,
            Err(_) => session.response_written().map_or(0, |h| h.status.as_u16()),
        };
        record(
            route,
            &method,
            status,
            started,
            &request_id,
            result.as_ref().err().map(|e| &**e),
        );
        result.map(|_| ())
    }

    async fn serve_native(
        &self,
        session: &mut ServerSession,
        native: Native,
        request_id: &str,
    ) -> Result<u16> {
        session.set_read_timeout(Some(BODY_READ_TIMEOUT));
        let open = matches!(native, Native::Healthz | Native::Readyz);
        let extra = match &native {
            Native::WrongMethod(_, allow) => vec![("allow", (*allow).to_owned())],
            _ => Vec::new(),
        };
        let authorized = if open {
            Ok(())
        } else {
            self.tokens
                .check(session.get_header("authorization").map(|v| v.as_bytes()))
                .inspect_err(|_| reject("unauthorized"))
        };
        let result = match (authorized, native) {
            (Err(e), _) => Err(e),
            (Ok(()), Native::Healthz) => routes::health::healthz(),
            (Ok(()), Native::Readyz) => routes::health::readyz(self.chat.store()).await,
            (Ok(()), Native::AgentGet(raw)) => routes::agent::get(&self.chat, &raw).await,
            (Ok(()), Native::AgentDelete(raw)) => routes::agent::delete(&self.chat, &raw).await,
            (Ok(()), Native::Chat) => self.serve_chat(session, request_id).await,
            (Ok(()), Native::WrongMethod(_, allow)) => Err(GatewayError::new(
                ErrorKind::MethodNotAllowed,
                format!("method not allowed; use {allow}"),
            )),
            (Ok(()), Native::Unknown) => Err(GatewayError::new(ErrorKind::NotFound, "not found")),
        };
        if let Err(e) = &result
            && matches!(
                e.kind,
                ErrorKind::PayloadTooLarge
                    | ErrorKind::UnsupportedMediaType
                    | ErrorKind::RequestTimeout
            )
        {
            reject(e.kind.label());
        }
        // Boxed: see `front::Front::serve_native`.
        Box::pin(routes::respond(session, request_id, result, &extra)).await
    }

    async fn serve_chat(
        &self,
        session: &mut ServerSession,
        request_id: &str,
    ) -> crate::error::GatewayResult<(u16, Option<serde_json::Value>)> {
        let body = tokio::time::timeout(
            self.body_timeout,
            Box::pin(routes::read_json_body(session, self.max_body_bytes)),
        )
        .await
        .unwrap_or_else(|_| {
            Err(GatewayError::new(
                ErrorKind::RequestTimeout,
                "the request body did not arrive in time",
            ))
        });
        let started = Instant::now();
        let (result, waited) = UPSTREAM_WAIT
            .scope(Default::default(), async {
                let result = routes::chat::handle(
                    &self.chat,
                    &self.limits,
                    self.max_message_chars,
                    body,
                    request_id,
                )
                .await;
                (result, UPSTREAM_WAIT.with(|w| w.get()))
            })
            .await;
        if result.is_ok() {
            metrics::CHAT_OVERHEAD.observe(started.elapsed().saturating_sub(waited).as_secs_f64());
        }
        result
    }
}
