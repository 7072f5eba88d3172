//! The gateway's request handling. `front` decides per request whether the
//! gateway answers it itself (native routes, on a lean path), forwards it
//! itself (a plain GET or HEAD, `forward`), or hands it to pingora-proxy,
//! whose `ProxyHttp` hooks (`GatewayProxy`) only route: native requests that
//! reach them go to `routes`, everything else to the upstream chosen by the
//! route table. What a passed-through request gets (`admit`, `edit_request`,
//! `edit_response`, `fail`, `log`) is written once here for both forwarding
//! paths; `record` emits the access line and the request metrics for all.

mod coalesce;
mod failure;
mod forward;
pub mod front;
mod header_edits;
mod idle;
pub mod path;
pub mod upstreams;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::proxy::FailToProxy;
use serde_json::json;

use crate::auth::TokenSet;
use crate::chat::ChatService;
use crate::context::{RequestContext, RequestId};
use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::ids::UserRules;
use crate::inflight::InflightGuard;
use crate::limits::ChatLimits;
use crate::metrics;
use crate::middleware::EaiGateway;
use crate::reload::Live;
use crate::routes::chat::ChatRules;
use crate::routes::{self, Native, Reply};
use crate::settings::{PathSettings, Settings};
use path::Target;
use upstreams::{HeaderEdits, Route, RouteId, RouteTable};

/// Silence tolerated between two reads of a native request body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a request is served with that comes from the settings: one
/// value, swapped whole on reload (`reload::Live`).
pub struct Gateway {
    pub chat: ChatService,
    pub routes: RouteTable,
    pub limits: ChatLimits,
    pub tokens: TokenSet,
    pub protect_passthrough: bool,
    pub max_body_bytes: usize,
    pub chat_rules: ChatRules,
    pub body_timeout: Duration,
    pub paths: PathSettings,
}

impl Gateway {
    /// The first gateway of a process.
    pub fn new(cfg: &Settings, chat: ChatService, users: Arc<UserRules>) -> Result<Self, String> {
        let routes = RouteTable::new(cfg, None)?;
        Ok(Self::assemble(
            cfg,
            chat,
            routes,
            ChatLimits::new(&cfg.limits),
            users,
        ))
    }

    /// The gateway of `cfg` over the state of `previous`: what a reload
    /// swaps in. `cfg` must not differ from the running settings in a
    /// restart-only key.
    pub fn reconfigured(cfg: &Settings, previous: &Gateway) -> Result<Self, String> {
        let agents = crate::agent_service::build(&cfg.agent_service)
            .map_err(|e| format!("agent_service: {e}"))?;
        let routes = RouteTable::new(cfg, Some(&previous.routes))?;
        Ok(Self::assemble(
            cfg,
            previous.chat.reconfigured(cfg, agents),
            routes,
            previous.limits.reconfigured(&cfg.limits),
            previous.chat_rules.users.clone(),
        ))
    }

    fn assemble(
        cfg: &Settings,
        chat: ChatService,
        routes: RouteTable,
        limits: ChatLimits,
        users: Arc<UserRules>,
    ) -> Self {
        Self {
            chat,
            routes,
            limits,
            tokens: cfg.auth.tokens.clone(),
            protect_passthrough: cfg.auth.protect_passthrough,
            max_body_bytes: cfg.chat.max_body_bytes,
            chat_rules: ChatRules {
                users,
                max_message_chars: cfg.chat.max_message_chars,
            },
            body_timeout: cfg.chat.body_timeout,
            paths: cfg.paths.clone(),
        }
    }
}

/// The `ProxyHttp` face of the standalone gateway: the middleware's native
/// routes, then pass-through by the route table. The lean native path in
/// `front` reads the same `Live`.
pub struct GatewayProxy {
    eai: EaiGateway,
}

impl GatewayProxy {
    pub fn new(eai: EaiGateway) -> Self {
        Self { eai }
    }

    fn live(&self) -> &Live {
        self.eai.live()
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Per-request state of a proxied request. Pingora creates it before the
/// request header is read, so the id is known only from `request_filter` on.
pub struct Ctx {
    /// Counts the request as in flight for as long as it lives.
    _inflight: InflightGuard,
    /// The configuration this request started with, to its end.
    gateway: Arc<Gateway>,
    /// Backend whose connection failed; the one retry avoids it.
    failed_backend: Option<std::net::SocketAddr>,
    /// What the last failed backend attempt ran into, for the 502 and the log.
    backend_failure: Option<failure::BackendFailure>,
    started: Instant,
    request_id: Option<RequestId>,
    /// The route (in `gateway`'s table) and the normalised target, once
    /// routed to a backend.
    upstream: Option<(RouteId, Target)>,
    /// Request body bytes received so far, against the route's bound.
    body_bytes: u64,
    /// The backend chosen last, and when.
    backend: Option<(std::net::SocketAddr, Instant)>,
    /// The backend's response status, once its header arrived.
    upstream_status: Option<StatusCode>,
    /// What the gateway itself answered, when it answered.
    status: Option<StatusCode>,
    /// Answered by the middleware, which recorded the request itself.
    native: bool,
}

impl Ctx {
    fn new(live: &Live) -> Self {
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
            native: false,
        }
    }

    /// The route of this request, once it was routed.
    fn route(&self) -> Option<&Route> {
        route_of(&self.gateway, &self.upstream)
    }

    /// The route label in logs and metrics: `upstream:<name>`, never the
    /// raw path.
    fn label(&self) -> &str {
        self.route().map_or("unmatched", |r| &r.upstream.label)
    }
}

/// `Ctx::route` for when another field of the context is being changed.
fn route_of<'a>(gateway: &'a Gateway, upstream: &Option<(RouteId, Target)>) -> Option<&'a Route> {
    upstream.as_ref().map(|(id, _)| gateway.routes.route(*id))
}

fn request_id(session: &ServerSession) -> RequestId {
    RequestId::from_headers(
        session.get_header(&X_REQUEST_ID).map(|v| v.as_bytes()),
        session.get_header(&TRACEPARENT).map(|v| v.as_bytes()),
    )
}

/// The host a request names: its `Host` header, or the HTTP/2 authority;
/// lower-cased, without port.
fn request_host(req: &RequestHeader) -> Option<std::borrow::Cow<'_, str>> {
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
fn body_over_bound(session: &ServerSession, bound: Option<u64>) -> Option<GatewayError> {
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

/// What the access line adds for a proxied request.
struct Proxied<'a> {
    upstream: &'a str,
    /// The request duration histogram of its route label.
    duration: &'a prometheus::Histogram,
    backend: Option<std::net::SocketAddr>,
    /// From choosing the backend to the end of its response.
    upstream_time: Option<Duration>,
}

/// The access line and request metrics of one finished request. `route` is
/// a template or `upstream:<name>`, never the raw path; no status means the
/// client went away before any response.
fn record(
    route: &str,
    method: &http::Method,
    status: Option<StatusCode>,
    started: Instant,
    request_id: Option<&RequestId>,
    proxied: Option<Proxied<'_>>,
    error: Option<&'static str>,
) {
    let method = metrics::method_label(method);
    let elapsed = started.elapsed();
    let status_label = status.as_ref().map_or("0", StatusCode::as_str);
    let status = status.map_or(0, |s| s.as_u16());
    let request_id_str = request_id.map(RequestId::as_str);
    metrics::REQUESTS
        .with_label_values(&[route, method, status_label])
        .inc();
    match proxied.as_ref() {
        Some(p) => p.duration.observe(elapsed.as_secs_f64()),
        None => metrics::REQUEST_DURATION
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64()),
    }
    // Field expressions run only when the line is logged: the trace id's
    // hex and the backend's address cost nothing at a quieter level.
    tracing::info!(
        request_id = request_id_str,
        trace_id = request_id.map(|id| id.trace().trace_id()),
        route,
        method,
        status,
        ms = millis(elapsed),
        upstream = proxied.as_ref().map(|p| p.upstream),
        backend = proxied
            .as_ref()
            .and_then(|p| p.backend)
            .map(|b| b.to_string()),
        upstream_ms = proxied.as_ref().and_then(|p| p.upstream_time).map(millis),
        error,
        "Request."
    );
}

/// Milliseconds to the microsecond: float noise (0.39179200000000003)
/// helps no one.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// The gateway's checks of a request to pass through, and its route:
/// `true` when the request was answered here (refused).
async fn admit(
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
fn choose_peer(ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
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
    Ok(Box::new(peer))
}

/// Nothing has reached the backend when its connection fails, so any
/// request may go to another backend: once, to a different one.
fn connect_failed(peer: &HttpPeer, ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
    let upstream = route_of(&ctx.gateway, &ctx.upstream).map(|r| &r.upstream.metrics);
    if let Some(m) = upstream {
        m.connect_failures.inc();
    }
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
fn edit_request(
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
            headers.insert(TRACEPARENT, id.trace().child_header_value());
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
fn edit_response(
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

/// Answers a request that could not be passed through, if nothing of the
/// response has gone out yet; the status is recorded (none when the client
/// went away) and returned as Pingora's error code.
async fn fail(session: &mut ServerSession, e: &Error, ctx: &mut Ctx) -> u16 {
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
fn log(session: &ServerSession, e: Option<&Error>, ctx: &Ctx) {
    if ctx.native {
        return;
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
        ctx.label(),
        &session.req_header().method,
        status,
        ctx.started,
        ctx.request_id.as_ref(),
        proxied,
        e.map(|e| failure::for_log(e, ctx)),
    );
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(self.live())
    }

    /// No downstream modules: Pingora's default adds response compression at
    /// level 0 (off), which still inspects every response; pass-through
    /// bodies go out exactly as the backend sent them.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let gw = &ctx.gateway;
        // One reading of the target serves both the middleware, mounted as
        // any host proxy would (`EaiGateway::handle`), and the routing here.
        let target = path::normalize(session.req_header().raw_path(), &gw.paths);
        if self.eai.serve_if_own(session, gw, &target).await? {
            ctx.native = true;
            return Ok(true);
        }
        admit(session, ctx, target).await
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        choose_peer(ctx)
    }

    /// Nothing has reached the backend when its connection fails, so any
    /// request may go to another backend: once, to a different one.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        connect_failed(peer, ctx, e)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        edit_request(session, upstream_request, ctx)
    }

    /// Holds a chunked (or understated) request body to the route's bound;
    /// a declared `Content-Length` over it was refused before any byte.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(bound), Some(chunk)) =
            (ctx.route().and_then(|r| r.max_body_bytes), body.as_ref())
        {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > bound {
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    format!("request body over {bound} bytes"),
                );
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        edit_response(self.live(), session, upstream_response, ctx)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        FailToProxy {
            error_code: fail(session, e, ctx).await,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        log(session, e, ctx);
    }
}

impl Gateway {
    /// One native request on the lean path, from its parsed header to the
    /// access line; the response is written when this returns `Ok`.
    pub async fn serve_native_request(
        &self,
        session: &mut ServerSession,
        live: &Live,
    ) -> Result<()> {
        let _inflight = live.inflight.enter_scoped();
        let started = Instant::now();
        let request_id = request_id(session);
        let method = session.req_header().method.clone();
        let (route, result) = match path::normalize(session.req_header().raw_path(), &self.paths) {
            Ok(target) => {
                let native =
                    routes::match_native(&method, target.path()).unwrap_or(routes::Native::Unknown);
                let route = native.template();
                (
                    route,
                    self.serve_native(session, native, &request_id, live).await,
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
        record(
            route,
            &method,
            status,
            started,
            Some(&request_id),
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
                let ctx = RequestContext::new(request_id.clone());
                routes::agent::delete(&self.chat, users, &ctx, &raw).await
            }
            (Ok(()), Native::Chat) => self.serve_chat(session, request_id).await,
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
        let ctx = RequestContext::new(request_id.clone());
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
