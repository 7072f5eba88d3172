//! Native routes: matching, JSON responses and bounded body reading. Handlers
//! return `GatewayResult`; only `respond` turns results into HTTP.

pub mod agent;
pub mod chat;
pub mod health;
pub mod sse;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use serde::Serialize;
use serde_json::Value;

use crate::context::RequestId;
use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::metrics;

pub const NATIVE_PREFIX: &str = "/eai-gateway";

/// A native route and the template used for it in logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Native {
    Chat,
    /// `GET /eai-gateway/chat/{message_id}`: an asynchronous chat's outcome.
    ChatOutcome(String),
    AgentGet(String),
    AgentDelete(String),
    Healthz,
    Readyz,
    /// Known path, wrong method.
    WrongMethod(&'static str, &'static str),
    /// Under the native prefix, but no such route.
    Unknown,
}

impl Native {
    pub fn template(&self) -> &'static str {
        match self {
            Self::Chat => "/eai-gateway/chat",
            Self::ChatOutcome(_) => CHAT_OUTCOME,
            Self::AgentGet(_) | Self::AgentDelete(_) => "/eai-gateway/agent/{user_number}",
            Self::Healthz => "/healthz",
            Self::Readyz => "/readyz",
            Self::WrongMethod(template, _) => template,
            Self::Unknown => "/eai-gateway/*",
        }
    }
}

/// Whether the gateway answers this path itself. `match_native` gives
/// `Some` exactly for these paths.
pub fn is_native_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
        || path
            .strip_prefix(NATIVE_PREFIX)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

const CHAT_OUTCOME: &str = "/eai-gateway/chat/{message_id}";

/// Which native route, if any, serves this request.
pub fn match_native(method: &Method, path: &str) -> Option<Native> {
    const AGENT: &str = "/eai-gateway/agent/{user_number}";
    let native = match path {
        "/healthz" => method_is(
            method,
            &[Method::GET, Method::HEAD],
            Native::Healthz,
            "/healthz",
            "GET",
        ),
        "/readyz" => method_is(
            method,
            &[Method::GET, Method::HEAD],
            Native::Readyz,
            "/readyz",
            "GET",
        ),
        "/eai-gateway/chat" => method_is(
            method,
            &[Method::POST],
            Native::Chat,
            "/eai-gateway/chat",
            "POST",
        ),
        _ => {
            if !is_native_path(path) {
                return None;
            }
            let rest = &path[NATIVE_PREFIX.len()..];
            if let Some(raw) = rest.strip_prefix("/chat/") {
                return Some(match *method {
                    Method::GET | Method::HEAD => Native::ChatOutcome(raw.to_owned()),
                    _ => Native::WrongMethod(CHAT_OUTCOME, "GET"),
                });
            }
            match rest.strip_prefix("/agent/") {
                Some(raw) => match *method {
                    Method::GET => Native::AgentGet(raw.to_owned()),
                    Method::DELETE => Native::AgentDelete(raw.to_owned()),
                    _ => Native::WrongMethod(AGENT, "GET, DELETE"),
                },
                None => Native::Unknown,
            }
        }
    };
    Some(native)
}

fn method_is(
    method: &Method,
    ok: &[Method],
    native: Native,
    template: &'static str,
    allow: &'static str,
) -> Native {
    if ok.contains(method) {
        native
    } else {
        Native::WrongMethod(template, allow)
    }
}

/// What a handler answers: a status and, unless it is empty, a JSON body
/// (or a stream of events), and the headers only the handler knows.
pub struct Reply {
    pub status: StatusCode,
    pub body: Option<Bytes>,
    pub headers: Vec<(&'static str, String)>,
    pub events: Option<sse::EventStream>,
}

impl Reply {
    pub fn json(status: StatusCode, body: &impl Serialize) -> GatewayResult<Self> {
        let bytes = serde_json::to_vec(body).map_err(|e| {
            tracing::error!(error = %e, "Response could not be serialised.");
            GatewayError::new(ErrorKind::Internal, "internal error")
        })?;
        Ok(Self::raw(status, Bytes::from(bytes)))
    }

    /// A JSON body already serialised.
    pub fn raw(status: StatusCode, body: Bytes) -> Self {
        Self {
            status,
            body: Some(body),
            headers: Vec::new(),
            events: None,
        }
    }

    pub fn empty(status: StatusCode) -> Self {
        Self {
            status,
            body: None,
            headers: Vec::new(),
            events: None,
        }
    }

    /// `200 text/event-stream`, its events written as they come.
    pub fn events(stream: sse::EventStream) -> Self {
        Self {
            status: StatusCode::OK,
            body: None,
            headers: Vec::new(),
            events: Some(stream),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// Writes a handler's result; returns the status written. Error details,
/// `Retry-After` and `WWW-Authenticate` come from the error, and a refusal
/// is counted here, once; `extra` carries what only the route knows
/// (`Allow`).
pub async fn respond(
    session: &mut ServerSession,
    request_id: &RequestId,
    result: GatewayResult<Reply>,
    extra: &[(&'static str, String)],
) -> pingora::Result<StatusCode> {
    let mut headers = vec![("x-request-id", request_id.to_string())];
    headers.extend_from_slice(extra);
    let reply = match result {
        Ok(reply) => reply,
        Err(e) => {
            if e.status().is_server_error() {
                tracing::warn!(request_id = %request_id, kind = e.kind.label(), detail = %e.detail, "Request failed.");
            }
            if let Some(reason) = e.kind.rejection() {
                metrics::REJECTIONS.with_label_values(&[reason]).inc();
            }
            if let Some(secs) = e.retry_after {
                headers.push(("retry-after", secs.to_string()));
            }
            if e.kind == ErrorKind::Unauthorized {
                headers.push(("www-authenticate", "Bearer".to_owned()));
            }
            Reply::raw(e.status(), Bytes::from(e.body().to_string()))
        }
    };
    headers.extend(reply.headers);
    match reply.events {
        Some(events) => events.write(session, &headers).await?,
        None => write_json(session, reply.status, reply.body, &headers).await?,
    }
    Ok(reply.status)
}

pub async fn write_json(
    session: &mut ServerSession,
    status: StatusCode,
    body: Option<Bytes>,
    headers: &[(&'static str, String)],
) -> pingora::Result<()> {
    let mut header = ResponseHeader::build(status, Some(4 + headers.len()))?;
    if body.is_some() {
        header.insert_header("content-type", "application/json")?;
    }
    let bytes = body.unwrap_or_default();
    header.insert_header("content-length", bytes.len().to_string())?;
    for (name, value) in headers {
        header.insert_header(*name, value.as_str())?;
    }
    if matches!(status.as_u16(), 400 | 408 | 413 | 415) {
        // The rest of a rejected body may still be on the wire.
        session.set_keepalive(None);
    }
    let head_only = session.req_header().method == Method::HEAD;
    session.write_response_header(Box::new(header)).await?;
    if !head_only && !bytes.is_empty() {
        session.write_response_body(bytes, true).await?;
    }
    Ok(())
}

/// Reads a JSON request body of at most `limit` bytes.
pub async fn read_json_body(session: &mut ServerSession, limit: usize) -> GatewayResult<Value> {
    let headers = &session.req_header().headers;
    if let Some(ct) = headers.get(http::header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or("").trim();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(GatewayError::new(
                ErrorKind::UnsupportedMediaType,
                "content-type must be application/json",
            ));
        }
    }
    let too_large = || {
        GatewayError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body exceeds {limit} bytes"),
        )
    };
    if let Some(len) = headers.get(http::header::CONTENT_LENGTH) {
        let len: usize = len
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| GatewayError::new(ErrorKind::MalformedJson, "invalid content-length"))?;
        if len > limit {
            return Err(too_large());
        }
    }
    let expects_continue = headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session
            .write_continue_response()
            .await
            .map_err(downstream)?;
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = session.read_request_body().await.map_err(downstream)? {
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    if buf.is_empty() {
        return Err(GatewayError::new(
            ErrorKind::MalformedJson,
            "request body is empty",
        ));
    }
    serde_json::from_slice(&buf)
        .map_err(|e| GatewayError::new(ErrorKind::MalformedJson, format!("malformed JSON: {e}")))
}

fn downstream(e: Box<pingora::Error>) -> GatewayError {
    tracing::debug!(error = %e, "Request body read failed.");
    GatewayError::new(
        ErrorKind::MalformedJson,
        "request body could not be read completely",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_contract_routes() {
        assert_eq!(
            match_native(&Method::POST, "/eai-gateway/chat"),
            Some(Native::Chat)
        );
        assert_eq!(
            match_native(&Method::GET, "/eai-gateway/agent/5521"),
            Some(Native::AgentGet("5521".into()))
        );
        assert_eq!(
            match_native(&Method::DELETE, "/eai-gateway/agent/%2B5521"),
            Some(Native::AgentDelete("%2B5521".into()))
        );
        assert!(matches!(
            match_native(&Method::GET, "/eai-gateway/chat"),
            Some(Native::WrongMethod(..))
        ));
        assert_eq!(
            match_native(&Method::GET, "/eai-gateway/nope"),
            Some(Native::Unknown)
        );
        assert_eq!(match_native(&Method::GET, "/eai-gatewayx"), None);
        assert_eq!(match_native(&Method::GET, "/api/x"), None);
    }
}
