//! The one error type of the gateway. Nothing else in the code chooses an HTTP
//! status: every failure becomes a `GatewayError`, and `status()` maps it.

use std::fmt;

use http::StatusCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The body is not JSON at all.
    MalformedJson,
    /// The request target cannot be read one way only (see `proxy/path.rs`).
    MalformedRequest,
    /// JSON, but a field is missing or invalid.
    InvalidInput,
    Unauthorized,
    NotFound,
    /// The request body did not arrive in time.
    RequestTimeout,
    MethodNotAllowed,
    PayloadTooLarge,
    UnsupportedMediaType,
    /// The user sent more chats this minute than `limits.user_rate_per_min`.
    UserRateLimited,
    /// The user has `limits.user_queue_max` chats running or queued.
    UserQueueFull,
    /// The agent service answered with an error, a failed run, or garbage.
    AgentService,
    /// The agent service could not be reached at all.
    AgentServiceUnreachable,
    DatabaseUnavailable,
    /// `limits.max_inflight_chats` chats are in flight.
    AtCapacity,
    /// Redis holds the per-user rate, cannot answer, and
    /// `limits.redis_fallback` is `fail_closed`.
    LimiterUnavailable,
    /// The user's message in progress did not finish within the wait of a
    /// request that must come after it (a DELETE).
    UserBusy,
    PollTimeout,
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            Self::MalformedJson | Self::MalformedRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::InvalidInput => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UserRateLimited | Self::UserQueueFull => StatusCode::TOO_MANY_REQUESTS,
            Self::AgentService | Self::AgentServiceUnreachable => StatusCode::BAD_GATEWAY,
            Self::DatabaseUnavailable
            | Self::AtCapacity
            | Self::UserBusy
            | Self::LimiterUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::PollTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Every kind that `rejection` names, so the counter starts at 0.
    pub const REJECTING: [Self; 9] = [
        Self::Unauthorized,
        Self::MalformedRequest,
        Self::UserRateLimited,
        Self::UserQueueFull,
        Self::AtCapacity,
        Self::LimiterUnavailable,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::RequestTimeout,
    ];

    /// The `reason` label of `eai_gateway_rejections_total` when this error
    /// refuses a request before any work was done.
    pub fn rejection(self) -> Option<&'static str> {
        match self {
            Self::Unauthorized => Some("unauthorized"),
            Self::MalformedRequest => Some("bad_path"),
            Self::UserRateLimited => Some("user_rate"),
            Self::UserQueueFull => Some("user_queue"),
            Self::AtCapacity => Some("max_inflight"),
            Self::LimiterUnavailable => Some("limiter_unavailable"),
            Self::PayloadTooLarge => Some("payload_too_large"),
            Self::UnsupportedMediaType => Some("unsupported_media_type"),
            Self::RequestTimeout => Some("request_timeout"),
            _ => None,
        }
    }

    /// Low-cardinality label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::MalformedJson => "malformed_json",
            Self::MalformedRequest => "malformed_request",
            Self::InvalidInput => "invalid_input",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::RequestTimeout => "request_timeout",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::UserRateLimited => "user_rate_limited",
            Self::UserQueueFull => "user_queue_full",
            Self::AgentService => "agent_service",
            Self::AgentServiceUnreachable => "agent_service_unreachable",
            Self::DatabaseUnavailable => "database_unavailable",
            Self::AtCapacity => "at_capacity",
            Self::UserBusy => "user_busy",
            Self::LimiterUnavailable => "limiter_unavailable",
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
    /// The message still being processed when the caller's wait ran out
    /// (504): added to the body so the client can tell it was sent.
    pub message_id: Option<String>,
}

impl GatewayError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            transient: false,
            retry_after: None,
            message_id: None,
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

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    pub fn with_message_id(mut self, id: String) -> Self {
        self.message_id = Some(id);
        self
    }

    pub fn body(&self) -> serde_json::Value {
        match &self.message_id {
            Some(id) => serde_json::json!({ "detail": self.detail, "message_id": id }),
            None => serde_json::json!({ "detail": self.detail }),
        }
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, detail)
    }

    pub fn agent_service(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::AgentService, detail)
    }

    pub fn database(err: &sqlx::Error) -> Self {
        if let Some(hint) = database_hint(err) {
            tracing::error!(error = %err, hint, "Database call failed.");
        } else {
            tracing::warn!(error = %err, "Database call failed.");
        }
        Self::new(ErrorKind::DatabaseUnavailable, "database unavailable")
    }
}

/// What to change when an error says the gateway's statements meet a
/// transaction pooler it was not told of: named prepared statements
/// (42P05 "already exists", 26000 "does not exist") or a startup parameter
/// the pooler refuses.
fn database_hint(err: &sqlx::Error) -> Option<&'static str> {
    let db = err.as_database_error()?;
    let pooler = match db.code().as_deref() {
        Some("42P05" | "26000") => db.message().contains("prepared statement"),
        _ => db.message().contains("unsupported startup parameter"),
    };
    pooler.then_some(
        "a transaction pooler (PgBouncer pool_mode = transaction) is in front of the database: \
         set database.statement_cache: 0, and database.direct_url to a direct connection",
    )
}

/// Lets store code use `?` on sqlx's errors: every one is the database
/// being unavailable to the route.
impl From<sqlx::Error> for GatewayError {
    fn from(err: sqlx::Error) -> Self {
        Self::database(&err)
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.kind.label(),
            self.status().as_u16(),
            self.detail
        )
    }
}

impl std::error::Error for GatewayError {}

pub type GatewayResult<T> = Result<T, GatewayError>;
