//! `agent_service:` the Letta or EAI service that hosts the users' agents.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{ConfigError, secret, units};

/// The `agent_service:` section: where each user's agent lives and how it is called.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentServiceSettings {
    /// Which API the agent service speaks (`letta` or `eai`).
    pub dialect: Dialect,
    /// Base URL, e.g. `http://127.0.0.1:8283`.
    #[serde(with = "units::http_url")]
    pub url: reqwest::Url,
    /// Bearer token; prefer the `AGENT_SERVICE_TOKEN` environment variable.
    pub token: Option<String>,
    /// `connect_timeout_ms`: bound on opening a connection to the agent service.
    #[serde(rename = "connect_timeout_ms", with = "units::millis")]
    pub connect_timeout: Duration,
    /// Bound on one call (create, send, one poll), not on the whole chat.
    #[serde(rename = "request_timeout_ms", with = "units::millis")]
    pub request_timeout: Duration,
    /// Largest agent-service response body the gateway will read.
    pub max_response_bytes: usize,
    /// Idle keep-alive connections kept to the agent service.
    pub max_idle_connections: usize,
    /// Calls in flight to the agent service at once (0: no limit); more
    /// wait their turn. Synchronous Letta sends are not counted.
    pub max_concurrent_calls: usize,
    /// Sends and creates the agent service refused before taking them
    /// (connection refused, 503, 429, Letta's 409 conversation lock).
    pub retry: RetrySettings,
    /// Letta dialect only: the agent template and the delivery mode.
    pub letta: LettaSettings,
    /// EAI dialect only: extra fields of the agent-creation call.
    pub eai: EaiSettings,
}

/// Written out to leave out the token and a password in the URL; naming
/// every field makes a new one a compile error here rather than a field
/// missing from the form.
impl fmt::Debug for AgentServiceSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            dialect,
            url,
            token,
            connect_timeout,
            request_timeout,
            max_response_bytes,
            max_idle_connections,
            max_concurrent_calls,
            retry,
            letta,
            eai,
        } = self;
        f.debug_struct("AgentServiceSettings")
            .field("dialect", dialect)
            .field("url", &secret::url_without_password(url))
            .field("token", &secret::presence(token.as_ref()))
            .field("connect_timeout", connect_timeout)
            .field("request_timeout", request_timeout)
            .field("max_response_bytes", max_response_bytes)
            .field("max_idle_connections", max_idle_connections)
            .field("max_concurrent_calls", max_concurrent_calls)
            .field("retry", retry)
            .field("letta", letta)
            .field("eai", eai)
            .finish()
    }
}

/// `agent_service.retry`: how a call that provably never reached the agent
/// is tried again, within the caller's budget.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    /// Tries after the first (0: none).
    pub max_retries: u32,
    /// The first wait; each next one doubles, up to `max_backoff_ms`, and
    /// each is drawn between half and all of its step (jitter). A
    /// `Retry-After` the service sends takes precedence.
    #[serde(rename = "first_backoff_ms", with = "units::millis")]
    pub first_backoff: Duration,
    /// The longest step of the backoff.
    #[serde(rename = "max_backoff_ms", with = "units::millis")]
    pub max_backoff: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_retries: 4,
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Letta's own default port on loopback: what `letta server` listens on.
const DEFAULT_URL: &str = "http://127.0.0.1:8283";

impl Default for AgentServiceSettings {
    fn default() -> Self {
        Self {
            dialect: Dialect::Letta,
            url: units::http_url::parse(DEFAULT_URL).unwrap_or_else(|_| unreachable!()),
            token: None,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            max_response_bytes: 4 * 1024 * 1024,
            max_idle_connections: 256,
            max_concurrent_calls: 256,
            retry: RetrySettings::default(),
            letta: LettaSettings::default(),
            eai: EaiSettings::default(),
        }
    }
}

impl AgentServiceSettings {
    /// The defaults, for `dialect` at `url`.
    pub fn new(dialect: Dialect, url: reqwest::Url) -> Self {
        Self {
            dialect,
            url,
            ..Self::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::out_of_range(
                "agent_service.connect_timeout_ms",
                0,
                "must be at least 1",
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(ConfigError::out_of_range(
                "agent_service.request_timeout_ms",
                0,
                "must be at least 1",
            ));
        }
        if self.max_response_bytes < 1024 {
            return Err(ConfigError::out_of_range(
                "agent_service.max_response_bytes",
                self.max_response_bytes,
                "must be at least 1024",
            ));
        }
        if self.retry.max_retries > 20 {
            return Err(ConfigError::out_of_range(
                "agent_service.retry.max_retries",
                self.retry.max_retries,
                "must be at most 20",
            ));
        }
        if self.retry.first_backoff.is_zero() || self.retry.first_backoff > self.retry.max_backoff {
            return Err(ConfigError::out_of_range(
                "agent_service.retry.first_backoff_ms",
                self.retry.first_backoff.as_millis(),
                "must be at least 1 and at most agent_service.retry.max_backoff_ms",
            ));
        }
        if !self.letta.agent_template.is_object() {
            return Err(ConfigError::new(
                "agent_service.letta.agent_template",
                format!(
                    "got {}, expected a section of `key: value` lines (the body of POST /v1/agents/)",
                    json_kind(&self.letta.agent_template)
                ),
            ));
        }
        if self.eai.agent_fields.contains_key("user_number") {
            return Err(ConfigError::new(
                "agent_service.eai.agent_fields.user_number",
                "must not be set: the gateway sets it from the request",
            ));
        }
        Ok(())
    }
}

/// A JSON value as the YAML it was written as.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "true or false",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "a section",
    }
}

/// The agent-service API the gateway speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// Letta's API (`/v1/agents/…`): agents named by user pseudonym.
    Letta,
    /// The EAI agent API (`/api/v1/…`): agents created per user number.
    Eai,
}

impl Dialect {
    /// The name used in the config file and `AGENT_SERVICE_DIALECT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Letta => "letta",
            Self::Eai => "eai",
        }
    }

    /// Reads `letta` or `eai`; `None` otherwise.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "letta" => Some(Self::Letta),
            "eai" => Some(Self::Eai),
            _ => None,
        }
    }
}

/// `agent_service.letta`: how agents are created and messages delivered on Letta.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LettaSettings {
    /// Body of `POST /v1/agents/`; the gateway adds `name` and `tags`.
    pub agent_template: Value,
    /// How a message is delivered and its answer learned.
    pub delivery: LettaDelivery,
}

impl Default for LettaSettings {
    fn default() -> Self {
        Self {
            agent_template: json!({
                "model": "openai/gpt-4o-mini",
                "embedding": "openai/text-embedding-3-small",
                "memory_blocks": [
                    {"label": "human", "value": ""},
                    {"label": "persona", "value": "I am a helpful citizen-service assistant."}
                ]
            }),
            delivery: LettaDelivery::default(),
        }
    }
}

/// `poll`: async send, then poll the run (default; survives a dropped
/// connection, works through proxies that cut long requests). `sync`: one
/// synchronous send held open until the answer exists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LettaDelivery {
    /// Asynchronous send, then poll the run until it finishes.
    #[default]
    Poll,
    /// One synchronous send, held open until the answer exists.
    Sync,
}

/// `agent_service.eai`: the EAI dialect's agent creation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EaiSettings {
    /// Extra fields of `POST /api/v1/agent/create` besides `user_number`.
    pub agent_fields: serde_json::Map<String, Value>,
}
