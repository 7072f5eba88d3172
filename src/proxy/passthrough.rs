//! What a passed-through request gets, written once for both forwarding
//! paths (pingora-proxy's hooks in `super::GatewayProxy` and the lean path
//! of `super::forward`): the checks and the route (`admit`), the backend
//! (`choose_peer`, `connect_failed`), the edited request and response
//! headers, the answer when it fails, and its access line (`log`).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use super::access_log::{Proxied, Served, record};
use super::{TRACEPARENT, X_REQUEST_ID, failure, header_edits, request_id};
use crate::context::RequestId;
use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::gateway::Gateway;
use crate::inflight::InflightGuard;
use crate::path::Target;
use crate::reload::Live;
use crate::routes;
use crate::spans::{Kind, Span, Tracer};
use crate::upstreams::{HeaderEdits, Route, RouteId};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Per-request state of a proxied request. Pingora creates it before the
/// request header is read, so the id is known only from `request_filter` on.
pub struct Ctx {
    /// Counts the request as in flight for as long as it lives.
    pub(super) _inflight: InflightGuard,
    /// The configuration this request started with, to its end.
    pub(super) gateway: Arc<Gateway>,
    /// Backend whose connection failed; the one retry avoids it.
    pub(super) failed_backend: Option<std::net::SocketAddr>,
    /// What the last failed backend attempt ran into, for the 502 and the log.
    pub(super) backend_failure: Option<failure::BackendFailure>,
    pub(super) started: Instant,
    pub(super) request_id: Option<RequestId>,
    /// The route (in `gateway`'s table) and the normalised target, once
    /// routed to a backend.
    pub(super) upstream: Option<(RouteId, Target)>,
    /// Request body bytes received so far, against the route's bound.
    pub(super) body_bytes: u64,
    /// The backend chosen last, and when.
    pub(super) backend: Option<(std::net::SocketAddr, Instant)>,
    /// The backend's response status, once its header arrived.
    pub(super) upstream_status: Option<StatusCode>,
    /// What the gateway itself answered, when it answered.
    pub(super) status: Option<StatusCode>,
    /// Served on the lean path (`forward`), not by pingora-proxy.
    pub(super) lean: bool,
    /// Answered by the middleware, which recorded the request itself.
    pub(super) native: bool,
    /// Span export, when on.
    pub(super) tracer: Option<Arc<Tracer>>,
    /// The client span of the current backend attempt.
    pub(super) attempt: Span,
}

impl Ctx {
    pub(super) fn new(live: &Live) -> Self {
        Self {
            _inflight: live.inflight.enter(),
            gateway: live.gateway(),
            failed_backend: None,
            backend_failure: None,
            started: Instant::now(),
            request_id: None,
            upstream: None,
            body_bytes: 0,
            backend: None,
            upstream_status: None,
            status: None,
            lean: false,
            native: false,
            tracer: live.spans.clone(),
            attempt: Span::none(),
        }
    }

    /// The route of this request, once it was routed.
    pub(super) fn route(&self) -> Option<&Route> {
        route_of(&self.gateway, &self.upstream)
    }

    /// The route label in logs and metrics: `upstream:<name>`, never the
    /// raw path.
    pub(super) fn label(&self) -> &str {
        self.route().map_or("unmatched", |r| &r.upstream.label)
    }
}

/// `Ctx::route` for when another field of the context is being changed.
pub(super) fn route_of<'a>(
    gateway: &'a Gateway,
    upstream: &Option<(RouteId, Target)>,
) -> Option<&'a Route> {
    upstream.as_ref().map(|(id, _)| gateway.routes.route(*id))
}

/// The host a request names: its `Host` header, or the HTTP/2 authority;
/// lower-cased, without port.
pub(super) fn request_host(req: &RequestHeader) -> Option<std::borrow::Cow<'_, str>> {
    let raw = match req.headers.get(http::header::HOST) {
        Some(v) => v.to_str().ok()?,
        None => req.uri.authority()?.as_str(),
    };
    let host = match raw.rsplit_once(':') {
        // `[::1]:8080` or `name:8080`; a bare IPv6 literal keeps its colons.
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.is_empty() => h,
        _ => raw,
    };
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    })
}

/// 413 when the request declares a body over the route's bound, before
/// any of it is read.
pub(super) fn body_over_bound(session: &ServerSession, bound: Option<u64>) -> Option<GatewayError> {
    let bound = bound?;
    let declared: u64 = session
        .get_header(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (declared > bound).then(|| {
        GatewayError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body of {declared} bytes is over this route's {bound}"),
        )
    })
}

/// The gateway's checks of a request to pass through, and its route:
/// `true` when the request was answered here (refused).
pub(super) async fn admit(
    session: &mut ServerSession,
    ctx: &mut Ctx,
    target: GatewayResult<Target>,
) -> Result<bool> {
    let gw = &ctx.gateway;
    let id = request_id(session);
    let target = match target {
        Ok(target) => target,
        Err(e) => {
            ctx.status = Some(routes::respond(session, &id, Err(e), &[]).await?);
            ctx.request_id = Some(id);
            return Ok(true);
        }
    };
    let refusal = if gw.protect_passthrough
        && let Err(e) = gw
            .tokens
            .check(session.get_header("authorization").map(|v| v.as_bytes()))
    {
        Some(e)
    } else {
        let host = request_host(session.req_header());
        match gw.routes.lookup(host.as_deref(), target.path()) {
            Some(id) => {
                let refusal = body_over_bound(session, gw.routes.route(id).max_body_bytes);
                ctx.upstream = Some((id, target));
                refusal
            }
            None => Some(GatewayError::new(
                ErrorKind::NotFound,
                "no route for this path",
            )),
        }
    };
    let answered = match refusal {
        Some(e) => {
            if e.kind == ErrorKind::PayloadTooLarge {
                // The body is not read: the connection cannot carry
                // another request after it.
                session.set_keepalive(None);
            }
            ctx.status = Some(routes::respond(session, &id, Err(e), &[]).await?);
            true
        }
        None => false,
    };
    ctx.request_id = Some(id);
    Ok(answered)
}

/// The backend for the request's next attempt, with the route's timeout.
pub(super) fn choose_peer(ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
    let route = ctx.route();
    let peer = route
        .and_then(|route| route.upstream.peer(ctx.failed_backend.as_ref()))
        .ok_or_else(|| {
            Error::explain(
                ErrorType::HTTPStatus(502),
                "no backend of this upstream is available",
            )
        })?;
    let mut peer = peer;
    if let Some(timeout) = route.and_then(|r| r.timeout) {
        peer.options.read_timeout = Some(timeout);
    }
    ctx.backend = peer._address.as_inet().map(|addr| (*addr, Instant::now()));
    // One client span per attempt; a failed attempt's ends here.
    ctx.attempt = match (&ctx.tracer, &ctx.request_id) {
        (Some(tracer), Some(id)) => attempt_span(
            tracer,
            id,
            route_of(&ctx.gateway, &ctx.upstream),
            ctx.backend,
        ),
        _ => Span::none(),
    };
    Ok(Box::new(peer))
}

/// Nothing has reached the backend when its connection fails, so any
/// request may go to another backend: once, to a different one.
pub(super) fn connect_failed(peer: &HttpPeer, ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
    let upstream = route_of(&ctx.gateway, &ctx.upstream).map(|r| &r.upstream.metrics);
    if let Some(m) = upstream {
        m.connect_failures.inc();
    }
    ctx.attempt.fail();
    ctx.attempt.set("error.type", "connect");
    ctx.backend_failure = Some(failure::BackendFailure::new(
        peer._address.as_inet().copied(),
        &e,
    ));
    if ctx.failed_backend.is_none() {
        ctx.failed_backend = peer._address.as_inet().copied();
        e.set_retry(true);
        if let Some(m) = upstream {
            m.retries.inc();
        }
    }
    e
}

/// The forwarded request's header: `X-Forwarded-*`, the request id and
/// trace, the route's edits, and the path the backend reads.
pub(super) fn edit_request(
    session: &ServerSession,
    upstream_request: &mut RequestHeader,
    ctx: &Ctx,
) -> Result<()> {
    let ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let scheme = match session.digest().and_then(|d| d.ssl_digest.as_ref()) {
        Some(_) => "https",
        None => "http",
    };
    let edits = ctx.route().map(|route| &route.request_headers);
    let adding = 4 + HeaderEdits::added(edits);
    header_edits::edit_request(upstream_request, adding, |headers| {
        if let Some(ip) = ip {
            // One lookup for reading the prior list and writing the new.
            match headers.entry(X_FORWARDED_FOR) {
                http::header::Entry::Occupied(mut prior) => {
                    if let Some(value) = header_edits::forwarded_for(Some(prior.get()), ip) {
                        prior.insert(value);
                    }
                }
                http::header::Entry::Vacant(slot) => {
                    if let Some(value) = header_edits::client_address(ip) {
                        slot.insert(value);
                    }
                }
            }
        }
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
        if let Some(id) = &ctx.request_id {
            if let Ok(value) = HeaderValue::from_str(id.as_str()) {
                headers.insert(X_REQUEST_ID, value);
            }
            // The attempt's own id when it is exported, so the backend's
            // spans hang under it.
            let traceparent = ctx
                .attempt
                .traceparent()
                .and_then(|v| HeaderValue::from_bytes(&v).ok())
                .unwrap_or_else(|| id.trace().child_header_value());
            headers.insert(TRACEPARENT, traceparent);
        }
        if let Some(edits) = edits {
            edits.apply(headers);
        }
    })?;
    if let (Some(route), Some((_, target))) = (ctx.route(), &ctx.upstream) {
        // The backend reads the path the gateway routed by, less the
        // route's prefix when it strips it.
        if let Some(stripped) = route.strip(target.path()) {
            let origin = match target.query() {
                Some(q) => format!("{stripped}?{q}"),
                None => stripped.to_owned(),
            };
            upstream_request.set_raw_path(origin.as_bytes())?;
        } else if target.changed && !route.forward_raw_path {
            upstream_request.set_raw_path(target.origin_form().as_bytes())?;
        }
    }
    Ok(())
}

/// The backend's response header as the client gets it.
pub(super) fn edit_response(
    live: &Live,
    session: &mut ServerSession,
    upstream_response: &mut ResponseHeader,
    ctx: &mut Ctx,
) -> Result<()> {
    if live.closing() {
        // A process that is draining takes no further request on this
        // connection; the client learns it from this response.
        session.set_keepalive(None);
    }
    if session.req_header().version == http::Version::HTTP_10
        && upstream_response
            .headers
            .contains_key(http::header::TRANSFER_ENCODING)
    {
        // An HTTP/1.0 client cannot read chunked framing (RFC 9112
        // §6.1): the body goes unframed and the connection's close ends
        // it, which is what Pingora writes without the header.
        upstream_response.remove_header(&http::header::TRANSFER_ENCODING);
        session.set_keepalive(None);
    }
    if ctx.attempt.is_recording() {
        let code = upstream_response.status.as_u16();
        ctx.attempt
            .set("http.response.status_code", i64::from(code));
        if code >= 500 {
            ctx.attempt.fail();
        }
    }
    let edits = ctx.route().map(|route| &route.response_headers);
    let adding = 1 + HeaderEdits::added(edits);
    header_edits::edit_response(upstream_response, adding, |headers| {
        if let Some(value) = ctx
            .request_id
            .as_ref()
            .and_then(|id| HeaderValue::from_str(id.as_str()).ok())
        {
            headers.insert(X_REQUEST_ID, value);
        }
        if let Some(edits) = edits {
            edits.apply(headers);
        }
    })?;
    if let (Some(route), Some((_, chosen))) = (route_of(&ctx.gateway, &ctx.upstream), &ctx.backend)
    {
        ctx.upstream_status = Some(upstream_response.status);
        route
            .upstream
            .metrics
            .ttfb
            .observe(chosen.elapsed().as_secs_f64());
    }
    Ok(())
}

/// The client span of one backend attempt (OpenTelemetry HTTP client
/// conventions, plus the upstream's name); `Span::none()` when the trace
/// is not sampled.
fn attempt_span(
    tracer: &Arc<Tracer>,
    id: &RequestId,
    route: Option<&Route>,
    backend: Option<(std::net::SocketAddr, Instant)>,
) -> Span {
    let mut span = tracer.root(id.trace(), "upstream", Kind::Client);
    if span.is_recording() {
        if let Some(route) = route {
            span.set("eai.upstream", route.upstream.name().to_owned());
        }
        if let Some((addr, _)) = backend {
            span.set("server.address", addr.ip().to_string());
            span.set("server.port", i64::from(addr.port()));
        }
        span.set("eai.request_id", id.as_str().to_owned());
    }
    span
}

/// Answers a request that could not be passed through, if nothing of the
/// response has gone out yet; the status is recorded (none when the client
/// went away) and returned as Pingora's error code.
pub(super) async fn fail(session: &mut ServerSession, e: &Error, ctx: &mut Ctx) -> u16 {
    let code: u16 = match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        // The backend took longer than its route or upstream allows.
        ErrorType::ReadTimedout if matches!(e.esource(), ErrorSource::Upstream) => 504,
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
    let status = StatusCode::from_u16(code).ok();
    if let Some(status) = status
        && session.response_written().is_none()
    {
        let detail = match code {
            502 => format!(
                "upstream {} failed: {}",
                ctx.label().trim_start_matches("upstream:"),
                failure::for_client(e, ctx)
            ),
            504 => format!(
                "upstream {} did not answer in time",
                ctx.label().trim_start_matches("upstream:")
            ),
            413 => "request body too large for this route".to_owned(),
            400 => "malformed request".to_owned(),
            _ => "proxy error".to_owned(),
        };
        let headers: Vec<_> = ctx
            .request_id
            .iter()
            .map(|id| ("x-request-id", id.to_string()))
            .collect();
        let body = Bytes::from(json!({ "detail": detail }).to_string());
        if let Err(err) = routes::write_json(session, status, Some(body), &headers).await {
            tracing::debug!(error = %err, "Could not send the error response.");
        }
    }
    ctx.status = status;
    code
}

/// The access line and metrics of a request that went the pass-through way.
pub(super) fn log(session: &ServerSession, e: Option<&Error>, ctx: &mut Ctx) {
    if ctx.native {
        return;
    }
    if ctx.attempt.is_recording() {
        let method = session.req_header().method.as_str();
        ctx.attempt.rename(format!("{method} {}", ctx.label()));
        ctx.attempt.set("http.request.method", method.to_owned());
        if e.is_some() {
            ctx.attempt.fail();
        }
        // Ends the last attempt's span.
        ctx.attempt = Span::none();
    }
    let status = session.response_written().map(|h| h.status).or(ctx.status);
    let proxied = ctx.route().map(|route| {
        let upstream = &route.upstream;
        let upstream_time = ctx.backend.map(|(_, chosen)| chosen.elapsed());
        upstream.metrics.request(ctx.upstream_status);
        if let Some(t) = upstream_time {
            upstream.metrics.response.observe(t.as_secs_f64());
        }
        Proxied {
            upstream: upstream.name(),
            duration: &upstream.metrics.request_duration,
            backend: ctx.backend.map(|(addr, _)| addr),
            upstream_time,
        }
    });
    record(
        Served {
            route: ctx.label(),
            method: &session.req_header().method,
            started: ctx.started,
            request_id: ctx.request_id.as_ref(),
            lean: ctx.lean,
        },
        status,
        proxied,
        e.map(|e| failure::for_log(e, ctx)),
    );
}
