//! The one error type of the gateway. Nothing else in the code chooses an HTTP
//! status: every failure becomes a `GatewayError`, and `status()` maps it.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The body is not JSON at all.
    MalformedJson,
    /// JSON, but a field is missing or invalid.
    InvalidInput,
    Unauthorized,
    NotFound,
    /// The request body did not arrive in time.
    RequestTimeout,
    MethodNotAllowed,
    PayloadTooLarge,
    UnsupportedMediaType,
    RateLimited,
    /// The agent service answered with an error, a failed run, or garbage.
    AgentService,
    /// The agent service could not be reached at all.
    AgentServiceUnreachable,
    /// A pass-through backend could not be reached or failed mid-response.
    BadGateway,
    DatabaseUnavailable,
    AtCapacity,
    PollTimeout,
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            Self::MalformedJson => 400,
            Self::Unauthorized => 401,
            Self::NotFound => 404,
            Self::RequestTimeout => 408,
            Self::MethodNotAllowed => 405,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::InvalidInput => 422,
            Self::RateLimited => 429,
            Self::AgentService | Self::AgentServiceUnreachable | Self::BadGateway => 502,
            Self::DatabaseUnavailable | Self::AtCapacity => 503,
            Self::PollTimeout => 504,
            Self::Internal => 500,
        }
    }

    /// Low-cardinality label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::MalformedJson => "malformed_json",
            Self::InvalidInput => "invalid_input",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::RequestTimeout => "request_timeout",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RateLimited => "rate_limited",
            Self::AgentService => "agent_service",
            Self::AgentServiceUnreachable => "agent_service_unreachable",
            Self::BadGateway => "bad_gateway",
            Self::DatabaseUnavailable => "database_unavailable",
            Self::AtCapacity => "at_capacity",
            Self::PollTimeout => "poll_timeout",
            Self::Internal => "internal",
        }
    }
}

/// An error with the human-readable detail the client will see. The detail
/// must never carry SQL text, tokens or stack traces: internal causes are
/// logged where they happen and summarised here.
#[derive(Debug, Clone)]
pub struct GatewayError {
    pub kind: ErrorKind,
    pub detail: String,
    /// The same idempotent call may succeed if repeated (a network blip, a
    /// 5xx). Only idempotent calls act on it.
    pub transient: bool,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl GatewayError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            transient: false,
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    pub fn transient(mut self) -> Self {
        self.transient = true;
        self
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "detail": self.detail })
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, detail)
    }

    pub fn agent_service(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::AgentService, detail)
    }

    pub fn database(err: &sqlx::Error) -> Self {
        tracing::warn!(error = %err, "Database call failed.");
        Self::new(ErrorKind::DatabaseUnavailable, "database unavailable")
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.kind.label(),
            self.status(),
            self.detail
        )
    }
}

impl std::error::Error for GatewayError {}

pub type GatewayResult<T> = Result<T, GatewayError>;
