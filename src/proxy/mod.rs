//! The gateway's request handling. `front` decides per request whether the
//! gateway answers it itself (native routes, on a lean path), forwards it
//! itself (a plain GET or HEAD, `forward`), or hands it to pingora-proxy,
//! whose `ProxyHttp` hooks (`GatewayProxy`) only route: native requests that
//! reach them go to `routes`, everything else to the upstream chosen by the
//! route table. What a passed-through request gets (`admit`, `edit_request`,
//! `edit_response`, `fail`, `log`) is written once here for both forwarding
//! paths; `record` emits the access line and the request metrics for all.

mod access_log;
mod coalesce;
mod failure;
mod forward;
pub mod front;
mod h2;
mod header_edits;
mod idle;
mod native;
mod passthrough;

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderName;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::proxy::FailToProxy;

use crate::context::RequestId;
use crate::middleware::EaiGateway;
use crate::path;
use crate::reload::Live;
use passthrough::{
    Ctx, admit, choose_peer, connect_failed, edit_request, edit_response, fail, log,
};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

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

fn request_id(session: &ServerSession) -> RequestId {
    RequestId::from_headers(
        session.get_header(&X_REQUEST_ID).map(|v| v.as_bytes()),
        session.get_header(&TRACEPARENT).map(|v| v.as_bytes()),
    )
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
