//! HTTP/2 connections (TLS with ALPN `h2`), accepted by Pingora's own loop.
//!
//! Pingora's loop is what bounds an abusive client: it keeps one
//! malformed-stream budget for the whole connection (32 streams, then the
//! connection is torn down), closes a connection idle for
//! `h2_idle_timeout`, and drains with GOAWAY on shutdown. An accept loop of
//! our own could only call `HttpSession::from_h2_conn`, which starts a fresh
//! budget on every call. So the front only decides what each stream gets
//! (`Front::serve_h2_stream`: native ones on the lean path, the rest in
//! pingora-proxy), through the `HttpServerApp` Pingora's loop calls.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::v2::server::{H2Options, default_h2_options};
use pingora::server::ShutdownWatch;

use super::front::{Front, KEEPALIVE};

/// Streams the h2 crate lets a client reset before the server accepts them,
/// and streams the server may reset for a client's protocol errors, before
/// the connection ends with GOAWAY (ENHANCE_YOUR_CALM). These are h2's own
/// defaults (the "rapid reset" bounds), set here so that a change of them
/// upstream is a change of ours to make.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// An idle HTTP/2 connection is closed after the same period as an idle
/// HTTP/1.1 one; Pingora alone keeps it without limit.
static SERVER_OPTIONS: LazyLock<HttpServerOptions> = LazyLock::new(|| {
    let mut options = HttpServerOptions::default();
    options.h2_idle_timeout = Some(KEEPALIVE);
    options
});

/// Serves one HTTP/2 connection until it closes.
pub(super) async fn serve(
    front: Arc<Front>,
    stream: Stream,
    shutdown: &ShutdownWatch,
) -> Option<Stream> {
    let app = Arc::new(Streams { front });
    ServerApp::process_new(&app, stream, shutdown).await
}

/// What Pingora's HTTP/2 loop calls for each stream it accepts.
struct Streams {
    front: Arc<Front>,
}

#[async_trait]
impl HttpServerApp for Streams {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // Boxed apart: a waiting chat then holds the session once, not in
        // every state of this future.
        let session = Box::new(session);
        self.front
            .clone()
            .serve_h2_stream(session, shutdown.clone())
            .await;
        // HTTP/2 streams are never reused; the connection is Pingora's.
        None
    }

    /// Pingora's bounded defaults (header list size, 100 streams per
    /// connection) with the reset bounds stated.
    fn h2_options(&self) -> Option<H2Options> {
        let mut options = default_h2_options();
        options
            .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS));
        Some(options)
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&SERVER_OPTIONS)
    }
}
