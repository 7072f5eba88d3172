//! What went wrong with a backend, in words an operator can act on, for the
//! 502's `detail` and the access line: "connection refused by
//! 127.0.0.1:8000", not Pingora's error type name.

use std::net::SocketAddr;

use pingora::{Error, ErrorType};

use super::passthrough::Ctx;

/// What a failed pass-through ran into, for the 502's detail. When no
/// backend was left for the retry, the cause is the failed attempt's, not
/// the empty choice's.
pub(super) fn for_client(e: &Error, ctx: &Ctx) -> String {
    match (e.etype(), ctx.backend_failure) {
        (ErrorType::HTTPStatus(_), Some(failed)) => failed.sentence(),
        (ErrorType::HTTPStatus(_), None) => describe(e.etype()).to_owned(),
        _ => BackendFailure::new(ctx.backend.map(|(addr, _)| addr), e).sentence(),
    }
}

/// The same for the access line's `error` field (the backend is a field
/// of its own there).
pub(super) fn for_log(e: &Error, ctx: &Ctx) -> &'static str {
    match (e.etype(), ctx.backend_failure) {
        (ErrorType::HTTPStatus(502), Some(failed)) => failed.what,
        _ => describe(e.etype()),
    }
}

/// The failure of one backend attempt: its address and what happened.
#[derive(Clone, Copy, Debug)]
pub struct BackendFailure {
    pub backend: Option<SocketAddr>,
    pub what: &'static str,
}

impl BackendFailure {
    pub fn new(backend: Option<SocketAddr>, e: &Error) -> Self {
        Self {
            backend,
            what: describe(e.etype()),
        }
    }

    /// "connection refused by 127.0.0.1:8000".
    pub fn sentence(&self) -> String {
        match self.backend {
            Some(addr) => format!("{} ({addr})", self.what),
            None => self.what.to_owned(),
        }
    }
}

/// The error type as a short phrase; Pingora's own name for the rest.
pub fn describe(etype: &ErrorType) -> &'static str {
    match etype {
        ErrorType::ConnectRefused => "connection refused",
        ErrorType::ConnectTimedout => "connect timed out",
        ErrorType::ConnectNoRoute => "no route to the backend",
        ErrorType::ConnectError | ErrorType::SocketError | ErrorType::BindError => {
            "could not connect"
        }
        ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError
        | ErrorType::TLSWantX509Lookup => "TLS handshake failed",
        ErrorType::ConnectionClosed => "connection closed by the backend",
        ErrorType::ReadError => "connection reset while reading the answer",
        ErrorType::WriteError => "connection reset while sending the request",
        ErrorType::ReadTimedout => "timed out waiting for the answer",
        ErrorType::WriteTimedout => "timed out sending the request",
        ErrorType::InvalidHTTPHeader => "invalid answer header",
        ErrorType::H1Error | ErrorType::H2Error => "HTTP protocol error",
        ErrorType::HTTPStatus(502) => "no backend of this upstream is available",
        ErrorType::HTTPStatus(413) => "request body too large for this route",
        ErrorType::HTTPStatus(_) => "refused by the gateway",
        other => other.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_cause_and_the_backend() {
        let e = Error::new(ErrorType::ConnectRefused);
        let addr = "127.0.0.1:8000".parse().ok();
        assert_eq!(
            BackendFailure::new(addr, &e).sentence(),
            "connection refused (127.0.0.1:8000)"
        );
        assert_eq!(
            describe(&ErrorType::TLSHandshakeFailure),
            "TLS handshake failed"
        );
    }
}
