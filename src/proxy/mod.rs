//! The Pingora `ProxyHttp` implementation. It only routes: native requests go
//! to `routes`, everything else to the upstream chosen by the route table.
//! `logging` emits the access line and the request metrics in one place.

pub mod upstreams;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use serde_json::json;

use crate::chat::ChatService;
use crate::error::ErrorKind;
use crate::metrics;
use crate::routes::{self, Native};
use crate::upstream::http::UPSTREAM_WAIT;
use upstreams::{RouteTable, Upstream};

/// A native request body that stalls this long is abandoned.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Gateway {
    pub chat: ChatService,
    pub routes: RouteTable,
    pub max_body_bytes: usize,
    /// Requests being served; shutdown waits for it to reach zero.
    pub inflight: Arc<AtomicUsize>,
}

/// Counts a request as in flight for as long as its context lives.
pub struct InflightGuard(Arc<AtomicUsize>);

impl InflightGuard {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
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
    upstream: Option<Arc<Upstream>>,
    status: u16,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            _inflight: InflightGuard::new(&self.inflight),
            started: Instant::now(),
            route: Arc::from("unmatched"),
            upstream: None,
            status: 0,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        if let Some(native) = routes::match_native(&method, &path) {
            ctx.route = Arc::from(native.template());
            session.set_read_timeout(Some(BODY_READ_TIMEOUT));
            ctx.status = self.serve_native(session, native).await?;
            return Ok(true);
        }
        match self.routes.lookup(&path) {
            Some(upstream) => {
                ctx.route = upstream.label.clone();
                ctx.upstream = Some(upstream.clone());
                Ok(false)
            }
            None => {
                let err = json!({"detail": "no route for this path"});
                routes::write_json(session, 404, Some(&err)).await?;
                ctx.status = 404;
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
        _ctx: &mut Ctx,
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
            if let Err(err) =
                routes::write_json(session, code, Some(&json!({"detail": detail}))).await
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
        let method = metrics::method_label(&session.req_header().method);
        let elapsed = ctx.started.elapsed();
        let status_label = status.to_string();
        metrics::REQUESTS
            .with_label_values(&[&*ctx.route, method, &status_label])
            .inc();
        metrics::REQUEST_DURATION
            .with_label_values(&[&*ctx.route])
            .observe(elapsed.as_secs_f64());
        tracing::info!(
            route = &*ctx.route,
            method,
            status,
            ms = elapsed.as_secs_f64() * 1000.0,
            error = e.map(|e| e.etype().as_str()),
            "Request."
        );
    }
}

impl Gateway {
    async fn serve_native(&self, session: &mut Session, native: Native) -> Result<u16> {
        let result = match native {
            Native::Healthz => routes::health::healthz(),
            Native::Readyz => routes::health::readyz(self.chat.store()).await,
            Native::AgentGet(raw) => routes::agent::get(&self.chat, &raw).await,
            Native::AgentDelete(raw) => routes::agent::delete(&self.chat, &raw).await,
            Native::Chat => {
                let body = routes::read_json_body(session, self.max_body_bytes).await;
                let started = Instant::now();
                let result = UPSTREAM_WAIT
                    .scope(Default::default(), async {
                        let result = routes::chat::handle(&self.chat, body).await;
                        let waited = UPSTREAM_WAIT.with(|w| w.get());
                        (result, waited)
                    })
                    .await;
                let (result, waited) = result;
                if result.is_ok() {
                    metrics::CHAT_OVERHEAD
                        .observe(started.elapsed().saturating_sub(waited).as_secs_f64());
                }
                result
            }
            Native::WrongMethod(_, allow) => Err(crate::error::GatewayError::new(
                ErrorKind::MethodNotAllowed,
                format!("method not allowed; use {allow}"),
            )),
            Native::Unknown => Err(crate::error::GatewayError::new(
                ErrorKind::NotFound,
                "not found",
            )),
        };
        routes::respond(session, result).await
    }
}
