//! Pass-through of a plain GET or HEAD on Pingora's HTTP/1 sessions and
//! connection pool, without pingora-proxy's per-request machinery.
//!
//! Why: pingora-proxy serves every request the same general way, with a
//! task pipe between two halves run side by side (a request body may stream
//! while the response does), the cache and module phases, and a per-request
//! future of about 13 KB that is moved several times. A request with no body
//! and no upgrade needs none of it: write the header, read the answer, copy
//! the body. That is what most pass-through traffic is, and doing just that
//! costs less than pingora-proxy alone (bench/results/HISTORY.md).
//!
//! What takes this path is decided from the first read of the connection
//! ([`eligible`]), conservatively: one whole HTTP/1.1 GET or HEAD header in
//! origin form with one `Host`, and no header that frames a body, asks for
//! an upgrade or a `100-continue`, or names hop-by-hop fields (a
//! `Connection` other than `keep-alive` or `close`). Everything else goes to
//! pingora-proxy as before. The gateway's own work is the same on both
//! paths: the same functions check, route, edit, answer failures and log
//! (`super::admit`, `super::edit_request` and the rest).

use pingora::connectors::ConnectorOptions;
use pingora::connectors::http::Connector;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::client::HttpSession as ClientSession;
use pingora::protocols::http::v1::client::HttpSession as H1Client;
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::Peer;

use super::passthrough::{
    Ctx, admit, choose_peer, connect_failed, edit_request, edit_response, fail, log,
};
use crate::reload::Live;

/// Headers that keep a request off this path: they frame a body, upgrade
/// the connection, expect a `100 Continue`, or are hop-by-hop fields that
/// pingora-proxy strips (RFC 9110 §7.6.1).
const REFUSED: [&[u8]; 11] = [
    b"content-length",
    b"transfer-encoding",
    b"upgrade",
    b"expect",
    b"te",
    b"trailer",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authorization",
    b"proxy-authenticate",
    b"http2-settings",
];

/// Whether the first read of a request is one whole header that this path
/// serves. A cheap screen of the raw bytes; Pingora still parses them.
pub fn eligible(first: &[u8]) -> bool {
    let Some(line_end) = memchr::memchr(b'\n', first) else {
        return false;
    };
    let line = &first[..line_end];
    if !(line.starts_with(b"GET /") || line.starts_with(b"HEAD /"))
        || !line.ends_with(b" HTTP/1.1\r")
    {
        return false;
    }
    let mut hosts = 0;
    let mut rest = &first[line_end + 1..];
    loop {
        let Some(end) = memchr::memchr(b'\n', rest) else {
            // The header must end in this read, with nothing after it.
            return false;
        };
        let field = &rest[..end];
        rest = &rest[end + 1..];
        if field == b"\r" {
            return hosts == 1 && rest.is_empty();
        }
        let Some(colon) = memchr::memchr(b':', field) else {
            return false;
        };
        let name = &field[..colon];
        if name.first().is_none_or(|b| b.is_ascii_whitespace()) {
            return false;
        }
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"connection") {
            let value = field[colon + 1..].trim_ascii();
            if !(value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"close"))
            {
                return false;
            }
        } else if REFUSED.iter().any(|r| name.eq_ignore_ascii_case(r)) {
            return false;
        }
    }
}

/// The backend side of the lean pass-through: its pool of backend
/// connections and its bound on attempts, both taken from the server
/// configuration as pingora-proxy takes its own.
pub struct Forwarder {
    connector: Connector,
    /// Attempts per request (Pingora's `max_retries`, which counts them all).
    max_attempts: usize,
}

impl Forwarder {
    pub fn new(conf: &ServerConf) -> Self {
        Self {
            connector: Connector::new(Some(ConnectorOptions::from_server_conf(conf))),
            max_attempts: conf.max_retries.max(1),
        }
    }

    /// Serves the request whose header `session` has read; whether the
    /// connection may carry another request.
    pub async fn serve(&self, live: &Live, session: &mut ServerSession) -> bool {
        let mut ctx = Ctx::new(live);
        ctx.lean = true;
        let target = crate::path::normalize(session.req_header().raw_path(), &ctx.gateway.paths);
        let error = match admit(session, &mut ctx, target).await {
            Ok(true) => None,
            Ok(false) => self.exchange(live, session, &mut ctx).await.err(),
            Err(e) => Some(e),
        };
        if let Some(e) = &error {
            fail(session, e, &mut ctx).await;
        }
        log(session, error.as_deref(), &mut ctx);
        error.is_none()
    }

    /// Sends the request to the route's upstream and its answer to the
    /// client, retrying as pingora-proxy does: a failed connect once on
    /// another backend, a pooled connection the backend had closed on a new
    /// one.
    async fn exchange(
        &self,
        live: &Live,
        session: &mut ServerSession,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let connector = &self.connector;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let peer = choose_peer(ctx)?;
            let (client, reused) = match connector.get_http_session(&*peer).await {
                Ok(got) => got,
                Err(mut e) => {
                    e.as_up();
                    let e = connect_failed(&peer, ctx, e);
                    if e.retry() && attempts < self.max_attempts {
                        continue;
                    }
                    return Err(e);
                }
            };
            let mut h1 = match client {
                ClientSession::H1(h1) => h1,
                // The upstreams' peers offer HTTP/1 only (no ALPN h2).
                other => {
                    connector
                        .release_http_session(other, &*peer, peer.idle_timeout())
                        .await;
                    return Error::e_explain(InternalError, "backend session is not HTTP/1");
                }
            };
            match attempt(live, session, ctx, &mut h1, &peer).await {
                Attempt::Done(clean) => {
                    if clean {
                        h1.respect_keepalive();
                        connector
                            .release_http_session(
                                ClientSession::H1(h1),
                                &*peer,
                                peer.idle_timeout(),
                            )
                            .await;
                    }
                    return Ok(());
                }
                Attempt::BeforeResponse(mut e) => {
                    e.retry.decide_reuse(reused);
                    if e.retry() && attempts < self.max_attempts {
                        continue;
                    }
                    return Err(e);
                }
                Attempt::Failed(e) => return Err(e),
            }
        }
    }
}

/// How one attempt on one backend connection ended.
enum Attempt {
    /// The response went out whole; whether the backend connection is
    /// clean for another request.
    Done(bool),
    /// The backend failed before its response header arrived: on a pooled
    /// connection, another attempt may succeed.
    BeforeResponse(Box<Error>),
    /// Failed once the response had started, or on the client's side.
    Failed(Box<Error>),
}

/// One request and its answer on one backend connection.
async fn attempt(
    live: &Live,
    session: &mut ServerSession,
    ctx: &mut Ctx,
    h1: &mut H1Client,
    peer: &HttpPeer,
) -> Attempt {
    h1.read_timeout = peer.options.read_timeout;
    h1.write_timeout = peer.options.write_timeout;
    let mut req = Box::new(session.req_header().clone());
    if let Some(e) = edit_request(session, &mut req, ctx).err() {
        return Attempt::Failed(e);
    }
    // A `Connection` here is `keep-alive` or `close` (see `eligible`): the
    // client's, not the backend's.
    req.remove_header(&http::header::CONNECTION);
    if let Err(mut e) = h1.write_request_header(req).await {
        e.as_up();
        return Attempt::BeforeResponse(e);
    }
    // Once an informational answer went out, the request cannot go again.
    let mut informed = false;
    let mut resp = loop {
        match unless_client_leaves(session, h1.read_response()).await {
            Ok(_) => {}
            Err(Left(e)) => return Attempt::Failed(e),
            Err(Upstream(mut e)) => {
                e.as_up();
                return if informed {
                    Attempt::Failed(e)
                } else {
                    Attempt::BeforeResponse(e)
                };
            }
        }
        let Some(header) = h1.resp_header() else {
            return Attempt::Failed(Error::explain(InternalError, "no response header"));
        };
        let header = Box::new(header.clone());
        match header.status.as_u16() {
            // Nothing asked for an upgrade.
            101 => {
                return Attempt::Failed(
                    Error::explain(InvalidHTTPHeader, "backend switched protocols unasked")
                        .into_up(),
                );
            }
            // Informational answers go on to the client, edited as
            // pingora-proxy's `response_filter` edits them; the final one
            // follows.
            100..=199 => {
                let mut header = header;
                if let Err(e) = edit_response(live, session, &mut header, ctx) {
                    return Attempt::Failed(e);
                }
                if let Err(e) = session.write_response_header(header).await {
                    return Attempt::Failed(e.into_down());
                }
                informed = true;
            }
            _ => break header,
        }
    };
    let end = h1.is_body_done();
    let bodiless = session.req_header().method == http::Method::HEAD
        || matches!(resp.status.as_u16(), 204 | 304);
    if !bodiless
        && !end
        && !resp.headers.contains_key(http::header::TRANSFER_ENCODING)
        && !resp.headers.contains_key(http::header::CONTENT_LENGTH)
    {
        // A body that ends with the backend's connection goes out chunked,
        // so that the client's connection outlives it (as pingora-proxy does).
        resp.set_version(http::Version::HTTP_11);
        if let Err(e) = resp.insert_header(http::header::TRANSFER_ENCODING, "chunked") {
            return Attempt::Failed(e);
        }
    }
    if let Err(e) = edit_response(live, session, &mut resp, ctx) {
        return Attempt::Failed(e);
    }
    if let Err(e) = session.write_response_header(resp).await {
        return Attempt::Failed(e.into_down());
    }
    if !end {
        loop {
            match unless_client_leaves(session, h1.read_body_bytes()).await {
                Ok(Some(piece)) => {
                    if let Err(e) = session.write_response_body(piece, false).await {
                        return Attempt::Failed(e.into_down());
                    }
                }
                Ok(None) => break,
                Err(Left(e)) => return Attempt::Failed(e),
                Err(Upstream(mut e)) => {
                    // The client's connection closes without a clean end:
                    // a truncated body, never one that looks whole.
                    e.as_up();
                    return Attempt::Failed(e);
                }
            }
        }
    }
    if let Err(e) = session.finish_body().await {
        return Attempt::Failed(e.into_down());
    }
    Attempt::Done(h1.is_body_done())
}

/// Why a wait on the backend ended without its answer.
enum Interrupted {
    /// The client closed its connection.
    Left(Box<Error>),
    Upstream(Box<Error>),
}
use Interrupted::{Left, Upstream};

/// `backend`, unless the client closes its connection first: then the
/// backend's connection is dropped, as pingora-proxy drops it, instead of
/// being held until an answer nobody reads. Bytes of a next request the
/// client sends meanwhile are kept for after this one (Pingora's idle read
/// with pipelining on).
async fn unless_client_leaves<T>(
    session: &mut ServerSession,
    backend: impl Future<Output = Result<T>>,
) -> std::result::Result<T, Interrupted> {
    tokio::select! {
        biased;
        answer = backend => answer.map_err(Upstream),
        idle = session.read_body_or_idle(true) => Err(Left(match idle {
            Err(e) => e.into_down(),
            Ok(_) => Error::explain(ConnectionClosed, "client sent data after its request")
                .into_down(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::eligible;

    #[test]
    fn only_a_plain_whole_get_or_head_is_eligible() {
        let yes: [&[u8]; 4] = [
            b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
            b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nconnection:  Close \r\n\r\n",
        ];
        for req in yes {
            assert!(eligible(req), "{}", String::from_utf8_lossy(req));
        }
        let no: [&[u8]; 14] = [
            // Not GET or HEAD, not 1.1, not origin form.
            b"POST / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            // No Host, or two.
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            // Not whole, or more than one request.
            b"GET / HTTP/1.1\r\nHost: x\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
            // A body, an upgrade, an expectation, hop-by-hop fields.
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, x-secret\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n",
            // A folded line.
            b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        ];
        for req in no {
            assert!(!eligible(req), "{}", String::from_utf8_lossy(req));
        }
    }
}
