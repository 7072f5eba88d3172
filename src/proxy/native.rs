//! Native requests on the lean path: from a parsed header to the access
//! line, dispatched to the route handlers in `routes`.

use std::time::{Duration, Instant};

use http::StatusCode;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;

use super::access_log::{Served, record};
use super::{failure, request_id};
use crate::context::{RequestContext, RequestId};
use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::gateway::Gateway;
use crate::path;
use crate::reload::Live;
use crate::routes::{self, Native, Reply};
use crate::spans::{Kind, Parent, Span, Tracer};

/// The server span of a native request, named by its route template
/// (OpenTelemetry's `{method} {route}`); `Span::none()` when not sampled.
fn server_span(
    tracer: &std::sync::Arc<Tracer>,
    request_id: &RequestId,
    method: &http::Method,
    route: &'static str,
) -> Span {
    let mut span = tracer.root(request_id.trace(), route, Kind::Server);
    if span.is_recording() {
        span.rename(format!("{method} {route}"));
        span.set("http.request.method", method.as_str().to_owned());
        span.set("http.route", route);
        span.set("eai.request_id", request_id.as_str().to_owned());
    }
    span
}

/// Silence tolerated between two reads of a native request body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

impl Gateway {
    /// One native request on the lean path, from its parsed header to the
    /// access line; the response is written when this returns `Ok`.
    pub async fn serve_native_request(
        &self,
        session: &mut ServerSession,
        live: &Live,
    ) -> Result<()> {
        self.serve_native_on(session, live, true).await
    }

    /// `serve_native_request` for a request inside pingora-proxy (the
    /// middleware's `request_filter`): the same, named so in the access line.
    pub async fn serve_native_request_in_proxy(
        &self,
        session: &mut ServerSession,
        live: &Live,
    ) -> Result<()> {
        self.serve_native_on(session, live, false).await
    }

    async fn serve_native_on(
        &self,
        session: &mut ServerSession,
        live: &Live,
        lean: bool,
    ) -> Result<()> {
        let _inflight = live.inflight.enter_scoped();
        let started = Instant::now();
        let request_id = request_id(session);
        let method = session.req_header().method.clone();
        let mut span = Span::none();
        let (route, result) = match path::normalize(session.req_header().raw_path(), &self.paths) {
            Ok(target) => {
                let native =
                    routes::match_native(&method, target.path()).unwrap_or(routes::Native::Unknown);
                let route = native.template();
                if let Some(tracer) = &live.spans {
                    span = server_span(tracer, &request_id, &method, route);
                }
                let parent = span.parent();
                (
                    route,
                    self.serve_native(session, native, &request_id, live, parent)
                        .await,
                )
            }
            // Front sends a target it cannot read one way to this path.
            Err(e) => (
                routes::Native::Unknown.template(),
                Box::pin(routes::respond(session, &request_id, Err(e), &[])).await,
            ),
        };
        let status = match &result {
            Ok(status) => Some(*status),
            Err(_) => session.response_written().map(|h| h.status),
        };
        if span.is_recording() {
            let code = status.map_or(0, |s| s.as_u16());
            span.set("http.response.status_code", i64::from(code));
            if code == 0 || code >= 500 {
                span.fail();
            }
        }
        drop(span);
        record(
            Served {
                route,
                method: &method,
                started,
                request_id: Some(&request_id),
                lean,
            },
            status,
            None,
            result.as_ref().err().map(|e| failure::describe(e.etype())),
        );
        result.map(|_| ())
    }

    async fn serve_native(
        &self,
        session: &mut ServerSession,
        native: Native,
        request_id: &RequestId,
        live: &Live,
        span: Option<Parent>,
    ) -> Result<StatusCode> {
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
        };
        let users = &self.chat_rules.users;
        let result = match (authorized, native) {
            (Err(e), _) => Err(e),
            (Ok(()), Native::Healthz) => routes::health::healthz(),
            (Ok(()), Native::Readyz) => routes::health::readyz(self.chat.store()).await,
            (Ok(()), Native::AgentGet(raw)) => routes::agent::get(&self.chat, users, &raw).await,
            (Ok(()), Native::AgentDelete(raw)) => {
                let ctx = RequestContext::new(request_id.clone()).within(span);
                routes::agent::delete(&self.chat, users, &ctx, &raw).await
            }
            (Ok(()), Native::Chat) => self.serve_chat(session, request_id, span).await,
            (Ok(()), Native::ChatOutcome(raw)) => routes::chat::outcome(&self.chat, &raw).await,
            (Ok(()), Native::WrongMethod(_, allow)) => Err(GatewayError::new(
                ErrorKind::MethodNotAllowed,
                format!("method not allowed; use {allow}"),
            )),
            (Ok(()), Native::Unknown) => Err(GatewayError::new(ErrorKind::NotFound, "not found")),
        };
        if live.closing() {
            // Draining: this connection carries no further request.
            session.set_keepalive(None);
        }
        // Boxed: see `front::Front::serve_native`.
        Box::pin(routes::respond(session, request_id, result, &extra)).await
    }

    async fn serve_chat(
        &self,
        session: &mut ServerSession,
        request_id: &RequestId,
        span: Option<Parent>,
    ) -> GatewayResult<Reply> {
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
        // The overhead clock starts once the body is in: a slow client is
        // not the gateway's cost.
        let ctx = RequestContext::new(request_id.clone()).within(span);
        // Read after the body, so that a refusal leaves the connection clean.
        let delivery = routes::chat::Delivery::from_headers(&session.req_header().headers);
        routes::chat::handle(
            &self.chat,
            &self.limits,
            &self.chat_rules,
            body,
            &ctx,
            delivery,
        )
        .await
    }
}
