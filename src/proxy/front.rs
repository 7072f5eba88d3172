//! The listener's application: one HTTP/1.1 request per call. The first read
//! of a request decides its path. When it holds a request line for a native
//! route, the request is answered here on Pingora's HTTP/1 session alone;
//! when it is a whole plain GET or HEAD header, the request is passed through
//! on the lean path of `forward`; everything else goes to pingora-proxy,
//! which also answers native routes whose request line arrived in a later
//! read.
//!
//! Why not let pingora-proxy take every request: a request it serves holds
//! its per-request state (a boxed future of about 13 KB) for as long as the
//! request lasts, inside Pingora's per-connection task (about 6.6 KB, sized
//! for a TLS handshake). A chat waits seconds to minutes for its answer, so
//! 10,000 waiting chats cost over 200 MB there; here a connection with a
//! native request moves to a task of its own, and a waiting chat holds its
//! session, its stream and a few small futures. Parsing stays Pingora's: the
//! decision only looks at the request line, and the bytes read for it are
//! handed to the session as already-read input, so neither path reads or
//! parses anything twice.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::v1::server::HttpSession as H1Session;
use pingora::protocols::{ALPN, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use pingora::server::configuration::ServerConf;
use tokio::io::AsyncReadExt;

use super::idle::IdleBound;
use super::{GatewayProxy, coalesce, forward, h2};
use crate::path;
use crate::reload::Live;

/// How long an idle HTTP/1.1 connection is kept. Pingora alone keeps one
/// without limit (and so without a timer); a bound keeps idle clients from
/// holding connections and memory for good.
pub(super) const KEEPALIVE: Duration = Duration::from_secs(60);
/// Pingora's initial request-header buffer; most requests fit in one read.
const FIRST_READ_BYTES: usize = 4096;

pub struct Front {
    live: Arc<Live>,
    proxy: Arc<HttpProxy<GatewayProxy>>,
    /// The lean pass-through's backend side (`forward`).
    forwarder: forward::Forwarder,
}

impl Front {
    pub fn new(live: Arc<Live>, proxy: HttpProxy<GatewayProxy>, conf: &ServerConf) -> Self {
        Self {
            live,
            proxy: Arc::new(proxy),
            forwarder: forward::Forwarder::new(conf),
        }
    }

    /// Serves the request whose first bytes are `first`; the stream comes
    /// back if the connection may carry another request, with the bytes of
    /// that request when the client pipelined it.
    ///
    /// Memory is the point of this shape. A future is as large as its
    /// largest state, and a chat's future stays allocated, at that size, for
    /// as long as the answer takes. So each request gets exactly one box,
    /// holding the session and a pointer to the step in progress; every step
    /// (reading the header, answering, finishing) has a box of its own that
    /// lives only as long as the step.
    /// `native` is `is_native(&first)`, which the caller has read already.
    fn serve_one<'a>(
        &'a self,
        stream: Stream,
        first: BytesMut,
        native: bool,
        shutdown: &'a ShutdownWatch,
    ) -> Served<'a> {
        if !native {
            return Box::pin(self.serve_proxied(stream, first, shutdown));
        }
        let first = if header_end(&first).is_some() {
            // The parsed header keeps the buffer it was read into for the
            // whole request, which for a chat is as long as its answer takes:
            // an exact-size copy holds a few hundred bytes instead of 4 KiB.
            BytesMut::from(&first[..])
        } else {
            first
        };
        // Boxed apart: held by value, the session would take space in more
        // than one state of the future (1,392 bytes against 48).
        let session = Box::new(h1_session(stream, first, shutdown));
        Box::pin(self.serve_native(session))
    }

    /// Serves a request in pingora-proxy, and the requests the client
    /// pipelined behind it that Pingora read along with it.
    ///
    /// Pingora keeps the bytes it read past a request for the next session
    /// it builds, and offers no way to ask whether it holds any (an
    /// `HttpPersistentSettings` getter would be the upstream change). So a
    /// connection comes back to the front only when it cannot hold such
    /// bytes: its first read was its header and nothing more, and the
    /// request read nothing else from the socket. Otherwise it stays in
    /// Pingora's loop, as in Pingora's own accept loop, until it closes:
    /// served the same, at pingora-proxy's cost per request.
    async fn serve_proxied(
        &self,
        stream: Stream,
        first: BytesMut,
        shutdown: &ShutdownWatch,
    ) -> Option<Reused> {
        let quiet = QuietMark::new(&stream, &first);
        let session = h1_session(stream, first, shutdown);
        let (stream, settings) = self
            .proxy
            .process_new_http(session, shutdown)
            .await?
            .consume();
        if quiet.is_some_and(|mark| mark.still(&stream)) {
            return Some((stream, None));
        }
        let mut reused = (stream, settings);
        loop {
            let (stream, settings) = reused;
            // Without settings Pingora has nowhere to keep a next request.
            let Some(settings) = settings else {
                return Some((stream, None));
            };
            let mut session = ServerSession::new_http1(stream);
            settings.apply_to_session(&mut session);
            reused = self
                .proxy
                .process_new_http(session, shutdown)
                .await?
                .consume();
        }
    }

    /// Answers one native request.
    async fn serve_native(&self, mut session: Box<ServerSession>) -> Option<Reused> {
        if !Box::pin(read_header(&mut session)).await {
            return None;
        }
        let gateway = self.live.gateway();
        Box::pin(gateway.serve_native_request(&mut session, &self.live))
            .await
            .ok()?;
        let reusable = Box::pin((*session).finish()).await.ok()??;
        Some(reusable.into_parts())
    }

    /// The rest of a connection whose request is native, in a task of its
    /// own: every request on it, native or not, until it closes.
    async fn serve_connection(
        self: Arc<Self>,
        stream: Stream,
        first: BytesMut,
        shutdown: ShutdownWatch,
    ) {
        let mut next = Some((stream, first));
        while let Some((stream, first)) = next {
            let native = self.is_native(&first);
            let Some((stream, pipelined)) = self.serve_one(stream, first, native, &shutdown).await
            else {
                return;
            };
            next = match pipelined {
                // The next request's first bytes, already read: routed
                // like any first read.
                Some(first) => Some((stream, first)),
                // A bound of its own for each wait: a timer kept armed
                // would stay allocated through the next chat's wait.
                None => Box::pin(self.next_request(stream, &mut IdleBound::new(KEEPALIVE))).await,
            };
        }
    }
}

/// An HTTP/1 session whose request starts with `first`, the bytes read
/// already.
fn h1_session(stream: Stream, first: BytesMut, shutdown: &ShutdownWatch) -> ServerSession {
    let mut h1 = H1Session::new(stream);
    h1.set_pipelined_prefix(first);
    // A client may send its next request before this one is answered (RFC
    // 9112 §9.3.2): the bytes of that request come back from `finish`
    // instead of costing the connection. (Without it, Pingora drops the
    // connection after the answer, or answers 400 when the bytes arrive
    // while the backend is still answering.)
    h1.set_pipelining_enabled(true);
    let mut session = ServerSession::H1(h1);
    let keepalive = (!*shutdown.borrow()).then_some(KEEPALIVE.as_secs());
    session.set_keepalive(keepalive);
    session
}

/// Where the request header in `buf` ends (after its blank line), if it
/// is whole. Line by line: a `memmem` searcher costs more to build than
/// this scan of a header's few lines.
fn header_end(buf: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', buf)
        .find(|&i| buf[i + 1..].starts_with(b"\r\n"))
        .map(|i| i + 3)
}

/// Before a proxied request: whether its first read was its header and
/// nothing more, and how many reads of the socket there had been.
struct QuietMark {
    reads: u64,
}

impl QuietMark {
    /// `None` when the first read holds more than one header (a body, or a
    /// pipelined request) or the stream does not count its reads.
    fn new(stream: &Stream, first: &[u8]) -> Option<Self> {
        if header_end(first)? != first.len() {
            return None;
        }
        Some(Self {
            reads: coalesce::reads(stream)?,
        })
    }

    /// Whether the request read nothing from the socket: then Pingora holds
    /// no byte beyond it.
    fn still(&self, stream: &Stream) -> bool {
        coalesce::reads(stream) == Some(self.reads)
    }
}

/// A connection that may carry another request, with the bytes of that
/// request a pipelining client already sent.
type Reused = (Stream, Option<BytesMut>);

type Served<'a> = Pin<Box<dyn Future<Output = Option<Reused>> + Send + 'a>>;

/// Reads and parses the request header; false when there is no request to
/// answer (the client left, or sent something unparseable, which gets what
/// pingora-proxy answers: a bare 400, then the connection closes).
async fn read_header(session: &mut ServerSession) -> bool {
    match session.read_request().await {
        Ok(read) => read,
        Err(e) => {
            if matches!(e.etype(), ErrorType::InvalidHTTPHeader) {
                let _ = session.respond_error(400).await;
            }
            session.shutdown().await;
            false
        }
    }
}

#[async_trait]
impl ServerApp for Front {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return h2::serve(self.clone(), stream, shutdown).await;
        }
        let (stream, flusher) = coalesce::wrap(stream);
        let serve = self.serve_plain(stream, flusher.clone(), shutdown);
        coalesce::drain_each_poll(serve, flusher).await;
        None
    }

    async fn cleanup(&self) {
        self.live.start_closing();
        self.proxy.http_cleanup().await;
    }
}

impl Front {
    /// An HTTP/1 connection, request after request, in Pingora's task until
    /// a native request moves it to a task of its own. Looping here rather
    /// than in Pingora's accept loop saves a boxed future per request.
    async fn serve_plain(
        self: &Arc<Self>,
        mut stream: Stream,
        flusher: Option<coalesce::Flusher>,
        shutdown: &ShutdownWatch,
    ) {
        let mut idle = IdleBound::new(KEEPALIVE);
        // The bytes of a next request that a client pipelined.
        let mut pending = None;
        loop {
            let first = match pending.take() {
                Some(first) => first,
                None => match self.first_read(&mut stream, &mut idle).await {
                    Some(first) => first,
                    None => return,
                },
            };
            if self.is_native(&first) {
                // Pingora's task for this connection is sized for a TLS
                // handshake (about 6.6 KB) and would stay allocated while a
                // chat waits for minutes; a task of our own holds only what
                // serving needs. Pingora's task ends here.
                let serve = self
                    .clone()
                    .serve_connection(stream, first, shutdown.clone());
                tokio::spawn(coalesce::drain_each_poll(serve, flusher));
                return;
            }
            let served = if forward::eligible(&first) && self.live.peek().lean_passthrough {
                self.serve_forwarded(stream, first, shutdown).await
            } else {
                // Served by pingora-proxy; a pipelined request behind it is
                // served there too (see `serve_proxied`).
                self.serve_proxied(stream, first, shutdown).await
            };
            match served {
                Some((next, more)) => (stream, pending) = (next, more),
                None => return,
            }
        }
    }

    /// A plain GET or HEAD passed through on the lean path (`forward`).
    async fn serve_forwarded(
        &self,
        stream: Stream,
        first: BytesMut,
        shutdown: &ShutdownWatch,
    ) -> Option<Reused> {
        let mut session = h1_session(stream, first, shutdown);
        if !read_header(&mut session).await {
            return None;
        }
        if !self.forwarder.serve(&self.live, &mut session).await {
            return None;
        }
        let reusable = session.finish().await.ok()??;
        Some(reusable.into_parts())
    }

    /// One HTTP/2 stream, its request header already read. As on the
    /// HTTP/1 path, every step is boxed apart, so that a waiting chat holds
    /// only the step it is in.
    pub(super) async fn serve_h2_stream(
        self: Arc<Self>,
        mut session: Box<ServerSession>,
        shutdown: ShutdownWatch,
    ) {
        if !self.is_native_target(session.req_header().raw_path()) {
            Box::pin(self.proxy.process_new_http(*session, &shutdown)).await;
            return;
        }
        let gateway = self.live.gateway();
        if Box::pin(gateway.serve_native_request(&mut session, &self.live))
            .await
            .is_ok()
        {
            let _ = Box::pin((*session).finish()).await;
        }
    }

    /// The stream back with the first bytes of its next request.
    async fn next_request(
        &self,
        mut stream: Stream,
        idle: &mut IdleBound,
    ) -> Option<(Stream, BytesMut)> {
        let first = self.first_read(&mut stream, idle).await?;
        Some((stream, first))
    }

    /// The first bytes of the next request, or `None` when the client goes
    /// away or stays silent for the keep-alive period.
    ///
    /// The wait counts as in flight, so a draining process waits for an
    /// idle keep-alive connection as for a request, up to the drain period.
    /// Why: closing an idle keep-alive connection resets a request the
    /// client may be sending right then, which it cannot safely retry (a
    /// busy client may not yet have seen the close when it reuses the
    /// connection). So an idle connection stays open through the drain; the
    /// client's next request on it is answered with `Connection: close`, and
    /// the client moves to a new connection (to the successor, in an
    /// upgrade) on its own. Only a connection that stays silent for the
    /// whole drain period is closed under the client, when the process
    /// ends. Counting every wait (an atomic add and subtract) costs less
    /// than watching for shutdown in each one, which registered and removed
    /// a waiter on every request.
    async fn first_read(&self, stream: &mut Stream, idle: &mut IdleBound) -> Option<BytesMut> {
        let mut buf = BytesMut::with_capacity(FIRST_READ_BYTES);
        let _waiting = self.live.inflight.enter_scoped();
        match idle.within(stream.read_buf(&mut buf)).await {
            Some(Ok(n)) if n > 0 => Some(buf),
            _ => None,
        }
    }

    /// Whether the first read holds a whole request line that the gateway
    /// answers itself: a native route, or a target it refuses (400).
    fn is_native(&self, first: &[u8]) -> bool {
        request_target(first).is_some_and(|target| self.is_native_target(target))
    }

    /// Whether the gateway answers this request target itself: a native
    /// route, or a target it refuses (400).
    fn is_native_target(&self, target: &[u8]) -> bool {
        path::is_native_target(target, || self.live.peek().paths.clone())
    }
}

/// The target of the request line, if the first read holds a whole one.
/// Only a routing hint: Pingora parses and validates the request either way.
fn request_target(buf: &[u8]) -> Option<&[u8]> {
    let line = &buf[..memchr::memchr(b'\n', buf)?];
    let start = memchr::memchr(b' ', line)? + 1;
    let rest = &line[start..];
    Some(&rest[..memchr::memchr(b' ', rest).unwrap_or(rest.len())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes;

    #[test]
    fn request_target_needs_a_whole_request_line() {
        let t = |line: &'static [u8]| request_target(line);
        assert_eq!(
            t(b"POST /eai-gateway/chat HTTP/1.1\r\nHost: x\r\n"),
            Some(&b"/eai-gateway/chat"[..])
        );
        assert_eq!(
            t(b"GET /eai-gateway/agent/5521?x=1 HTTP/1.1\r\n"),
            Some(&b"/eai-gateway/agent/5521?x=1"[..])
        );
        assert_eq!(t(b"POST /eai-gateway/chat HTTP/1."), None);
        assert_eq!(
            t(b"GET http://h/eai-gateway/chat HTTP/1.1\r\n"),
            Some(&b"http://h/eai-gateway/chat"[..])
        );
    }

    #[test]
    fn header_end_is_after_the_first_blank_line() {
        assert_eq!(header_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Some(27));
        assert_eq!(
            header_end(b"GET / HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"),
            Some(18)
        );
        assert_eq!(
            header_end(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"),
            Some(38)
        );
        assert_eq!(header_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(header_end(b""), None);
    }

    #[test]
    fn only_native_paths_take_the_lean_path() {
        for (path, native) in [
            ("/eai-gateway/chat", true),
            ("/eai-gateway", true),
            ("/eai-gateway/agent/1", true),
            ("/healthz", true),
            ("/readyz", true),
            ("/eai-gatewayx", false),
            ("/api/x", false),
            ("http://h/eai-gateway/chat", false),
        ] {
            assert_eq!(routes::is_native_path(path), native, "{path}");
            assert_eq!(
                routes::match_native(&http::Method::GET, path).is_some(),
                native,
                "{path}"
            );
        }
    }
}
