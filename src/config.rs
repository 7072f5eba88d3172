//! Typed configuration: one YAML file, a few environment overrides, and a
//! validation pass whose every error names the offending key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug)]
pub struct ConfigError {
    /// Dotted config key or environment variable the error is about.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Public listener, `host:port`.
    #[serde(default = "defaults::listen")]
    pub listen: String,
    /// Prometheus listener, `host:port`; no metrics listener when absent.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Worker threads of the proxy service.
    #[serde(default = "defaults::threads")]
    pub threads: usize,
    /// Read buffer per client connection (Pingora's default is 64 KiB).
    #[serde(default = "defaults::read_buffer_bytes")]
    pub read_buffer_bytes: usize,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    pub agent_service: AgentServiceConfig,
    #[serde(default)]
    pub chat: ChatConfig,
    #[serde(default)]
    pub agents: AgentsConfig,
    #[serde(default)]
    pub users: UsersConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Named pass-through upstreams.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Path-prefix routes to upstreams; the longest matching prefix wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Upstream receiving every request that no route claims; 404 when unset.
    #[serde(default)]
    pub default_upstream: Option<String>,
    /// Tokens from `EAI_GATEWAY_TOKENS` (never from the file itself).
    #[serde(skip)]
    pub env_tokens: Option<String>,
    /// Tokens from `EAI_GATEWAY_METRICS_TOKENS`.
    #[serde(skip)]
    pub env_metrics_tokens: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersConfig {
    /// Regular expression a `user_number` must match (anchor it).
    #[serde(default = "defaults::user_pattern")]
    pub pattern: String,
    /// Key of the pseudonyms: Letta agent names/tags and masked log values.
    #[serde(default = "defaults::pseudonym_key")]
    pub pseudonym_key: String,
}

impl Default for UsersConfig {
    fn default() -> Self {
        Self {
            pattern: defaults::user_pattern(),
            pseudonym_key: defaults::pseudonym_key(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// File with one bearer token per line for the `/eai-gateway` routes;
    /// added to `EAI_GATEWAY_TOKENS`. No token at all = auth off.
    #[serde(default)]
    pub tokens_file: Option<std::path::PathBuf>,
    /// Require the same tokens on pass-through routes too.
    #[serde(default)]
    pub protect_passthrough: bool,
    /// Tokens for the metrics listener; added to `EAI_GATEWAY_METRICS_TOKENS`.
    #[serde(default)]
    pub metrics_tokens_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Chats per user per minute; 0 = no limit.
    #[serde(default = "defaults::user_rate_per_min")]
    pub user_rate_per_min: u32,
    /// Chats of one user running or queued in one process; 0 = no limit.
    #[serde(default = "defaults::user_queue_max")]
    pub user_queue_max: usize,
    /// Chats in flight in one process; 0 = no limit.
    #[serde(default = "defaults::max_inflight_chats")]
    pub max_inflight_chats: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            user_rate_per_min: defaults::user_rate_per_min(),
            user_queue_max: defaults::user_queue_max(),
            max_inflight_chats: defaults::max_inflight_chats(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After SIGTERM: how long in-flight requests may take to finish.
    #[serde(default = "defaults::drain_seconds")]
    pub drain_seconds: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_seconds: defaults::drain_seconds(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://…` or `sqlite://PATH` (the file is created when missing).
    #[serde(default = "defaults::database_url")]
    pub url: String,
    /// PostgreSQL only: schema holding the gateway's tables (created when missing).
    #[serde(default)]
    pub schema: Option<String>,
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u32,
    /// How long a query may wait for a connection before the route answers 503.
    #[serde(default = "defaults::acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: defaults::database_url(),
            schema: None,
            max_connections: defaults::max_connections(),
            acquire_timeout_ms: defaults::acquire_timeout_ms(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    Letta,
    Eai,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Letta => "letta",
            Self::Eai => "eai",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "letta" => Some(Self::Letta),
            "eai" => Some(Self::Eai),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentServiceConfig {
    pub dialect: Dialect,
    /// Base URL, e.g. `http://127.0.0.1:8283`.
    pub url: String,
    /// Bearer token; prefer the `AGENT_SERVICE_TOKEN` environment variable.
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Bound on one call (create, send, one poll), not on the whole chat.
    #[serde(default = "defaults::request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Largest agent-service response body the gateway will read.
    #[serde(default = "defaults::max_response_bytes")]
    pub max_response_bytes: usize,
    /// Idle keep-alive connections kept to the agent service.
    #[serde(default = "defaults::max_idle_connections")]
    pub max_idle_connections: usize,
    /// Calls in flight to the agent service at once (0: no limit); more
    /// wait their turn. Synchronous Letta sends are not counted.
    #[serde(default = "defaults::max_concurrent_calls")]
    pub max_concurrent_calls: usize,
    #[serde(default)]
    pub letta: LettaConfig,
    #[serde(default)]
    pub eai: EaiConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LettaConfig {
    /// Body of `POST /v1/agents/`; the gateway adds `name` and `tags`.
    #[serde(default = "defaults::letta_template")]
    pub agent_template: Value,
    /// How a message is delivered and its answer learned.
    #[serde(default)]
    pub delivery: LettaDelivery,
}

/// `poll`: async send, then poll the run (default; survives a dropped
/// connection, works through proxies that cut long requests). `sync`: one
/// synchronous send held open until the answer exists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LettaDelivery {
    #[default]
    Poll,
    Sync,
}

impl Default for LettaConfig {
    fn default() -> Self {
        Self {
            agent_template: defaults::letta_template(),
            delivery: LettaDelivery::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EaiConfig {
    /// Extra fields of `POST /api/v1/agent/create` besides `user_number`.
    #[serde(default)]
    pub agent_fields: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatConfig {
    /// Largest accepted JSON body of the native routes.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    /// Longest accepted `message`, in characters.
    #[serde(default = "defaults::max_message_chars")]
    pub max_message_chars: usize,
    /// A native request body must arrive completely within this time.
    #[serde(default = "defaults::body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// Polling budget of one chat; a request may ask for less with `timeout`.
    #[serde(default = "defaults::chat_timeout_seconds")]
    pub timeout_seconds: f64,
    #[serde(default)]
    pub poll: PollConfig,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: defaults::max_body_bytes(),
            max_message_chars: defaults::max_message_chars(),
            body_timeout_ms: defaults::body_timeout_ms(),
            timeout_seconds: defaults::chat_timeout_seconds(),
            poll: PollConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    /// Delay of the first poll after the send.
    #[serde(default = "defaults::poll_initial_delay_ms")]
    pub initial_delay_ms: u64,
    /// Gap between polls during the dense phase.
    #[serde(default = "defaults::poll_dense_interval_ms")]
    pub dense_interval_ms: u64,
    /// Poll every `dense_interval_ms` until this long after the send, then
    /// back off; 0 = back off from the first poll.
    #[serde(default = "defaults::poll_dense_until_ms")]
    pub dense_until_ms: u64,
    #[serde(default = "defaults::poll_max_delay_ms")]
    pub max_delay_ms: u64,
    #[serde(default = "defaults::poll_multiplier")]
    pub multiplier: f64,
    /// Fraction of each delay that is randomised (0 = none, 0.5 = ±50 %).
    #[serde(default = "defaults::poll_jitter")]
    pub jitter: f64,
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            initial_delay_ms: defaults::poll_initial_delay_ms(),
            dense_interval_ms: defaults::poll_dense_interval_ms(),
            dense_until_ms: defaults::poll_dense_until_ms(),
            max_delay_ms: defaults::poll_max_delay_ms(),
            multiplier: defaults::poll_multiplier(),
            jitter: defaults::poll_jitter(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsConfig {
    /// `DELETE /eai-gateway/agent/{n}` also deletes the agent upstream.
    #[serde(default)]
    pub delete_upstream_on_delete: bool,
    /// How long a replica may serve a mapping from memory; also the longest
    /// another replica may keep using a mapping deleted elsewhere. 0 = off.
    #[serde(default = "defaults::cache_ttl_seconds")]
    pub cache_ttl_seconds: u64,
    #[serde(default = "defaults::cache_capacity")]
    pub cache_capacity: usize,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            delete_upstream_on_delete: false,
            cache_ttl_seconds: defaults::cache_ttl_seconds(),
            cache_capacity: defaults::cache_capacity(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// One or more `host:port`, used round robin.
    pub backends: Vec<String>,
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest silence between two reads from the backend.
    #[serde(default = "defaults::upstream_read_timeout_ms")]
    pub read_timeout_ms: u64,
    #[serde(default)]
    pub tls: bool,
    /// SNI and certificate name when `tls` is on; defaults to the host.
    #[serde(default)]
    pub sni: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub prefix: String,
    pub upstream: String,
}

mod defaults {
    use serde_json::{Value, json};

    pub fn listen() -> String {
        "127.0.0.1:8080".into()
    }
    pub fn threads() -> usize {
        2
    }
    /// No socket-level read buffer: the first read of a request goes into
    /// the parser's own buffer, so another one in front of it only costs
    /// memory per connection.
    pub fn read_buffer_bytes() -> usize {
        0
    }
    pub fn drain_seconds() -> u64 {
        10
    }
    pub fn database_url() -> String {
        "sqlite://eai-gateway.db".into()
    }
    pub fn max_connections() -> u32 {
        16
    }
    pub fn acquire_timeout_ms() -> u64 {
        3000
    }
    pub fn connect_timeout_ms() -> u64 {
        2000
    }
    pub fn request_timeout_ms() -> u64 {
        30_000
    }
    pub fn max_response_bytes() -> usize {
        4 * 1024 * 1024
    }
    pub fn max_idle_connections() -> usize {
        256
    }
    pub fn max_concurrent_calls() -> usize {
        256
    }
    pub fn pseudonym_key() -> String {
        "eai-gateway".into()
    }
    pub fn letta_template() -> Value {
        json!({
            "model": "openai/gpt-4o-mini",
            "embedding": "openai/text-embedding-3-small",
            "memory_blocks": [
                {"label": "human", "value": ""},
                {"label": "persona", "value": "I am a helpful citizen-service assistant."}
            ]
        })
    }
    pub fn max_message_chars() -> usize {
        4096
    }
    pub fn body_timeout_ms() -> u64 {
        10_000
    }
    pub fn user_pattern() -> String {
        crate::ids::DEFAULT_USER_PATTERN.into()
    }
    pub fn user_rate_per_min() -> u32 {
        20
    }
    pub fn user_queue_max() -> usize {
        10
    }
    pub fn max_inflight_chats() -> usize {
        512
    }
    pub fn max_body_bytes() -> usize {
        64 * 1024
    }
    pub fn chat_timeout_seconds() -> f64 {
        180.0
    }
    pub fn poll_initial_delay_ms() -> u64 {
        25
    }
    pub fn poll_dense_interval_ms() -> u64 {
        75
    }
    pub fn poll_dense_until_ms() -> u64 {
        400
    }
    pub fn poll_max_delay_ms() -> u64 {
        2000
    }
    pub fn poll_multiplier() -> f64 {
        2.0
    }
    pub fn poll_jitter() -> f64 {
        0.2
    }
    pub fn cache_ttl_seconds() -> u64 {
        30
    }
    pub fn cache_capacity() -> usize {
        100_000
    }
    pub fn upstream_read_timeout_ms() -> u64 {
        60_000
    }
}

/// The environment variables that override the file.
pub mod env {
    pub const LISTEN: &str = "EAI_GATEWAY_LISTEN";
    pub const METRICS_LISTEN: &str = "EAI_GATEWAY_METRICS_LISTEN";
    pub const DATABASE_URL: &str = "DATABASE_URL";
    pub const DIALECT: &str = "AGENT_SERVICE_DIALECT";
    pub const AGENT_URL: &str = "AGENT_SERVICE_URL";
    pub const AGENT_TOKEN: &str = "AGENT_SERVICE_TOKEN";
    pub const DEFAULT_UPSTREAM: &str = "EAI_GATEWAY_DEFAULT_UPSTREAM";
    pub const TOKENS: &str = "EAI_GATEWAY_TOKENS";
    pub const METRICS_TOKENS: &str = "EAI_GATEWAY_METRICS_TOKENS";
    pub const USER_RATE_PER_MIN: &str = "EAI_GATEWAY_USER_RATE_PER_MIN";
    pub const USER_QUEUE_MAX: &str = "EAI_GATEWAY_USER_QUEUE_MAX";
    pub const MAX_INFLIGHT_CHATS: &str = "EAI_GATEWAY_MAX_INFLIGHT_CHATS";
}

/// Upstream created by `EAI_GATEWAY_DEFAULT_UPSTREAM` when the file names none.
pub const ENV_DEFAULT_UPSTREAM_NAME: &str = "default";

impl Config {
    /// Reads, applies the environment and validates: what `run` and
    /// `check-config` both do.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path.display().to_string(), e.to_string()))?;
        let mut config = Self::from_yaml(&text)?;
        config.apply_env(|k| std::env::var(k).ok())?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        serde_yaml::from_str(text).map_err(|e| {
            // serde_yaml prefixes the dotted path when it knows it.
            let msg = e.to_string();
            match msg.split_once(": ").filter(|(k, _)| !k.contains(' ')) {
                Some((key, rest)) => ConfigError::new(key, rest),
                None => ConfigError::new("<file>", msg),
            }
        })
    }

    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let set = |k: &str| var(k).filter(|v| !v.is_empty());
        if let Some(v) = set(env::LISTEN) {
            self.listen = v;
        }
        if let Some(v) = set(env::METRICS_LISTEN) {
            self.metrics_listen = Some(v);
        }
        if let Some(v) = set(env::DATABASE_URL) {
            self.database.url = v;
        }
        if let Some(v) = set(env::DIALECT) {
            self.agent_service.dialect = Dialect::parse(&v).ok_or_else(|| {
                ConfigError::new(env::DIALECT, format!("{v:?} is not one of letta, eai"))
            })?;
        }
        if let Some(v) = set(env::AGENT_URL) {
            self.agent_service.url = v;
        }
        if let Some(v) = set(env::AGENT_TOKEN) {
            self.agent_service.token = Some(v);
        }
        self.env_tokens = set(env::TOKENS);
        self.env_metrics_tokens = set(env::METRICS_TOKENS);
        if let Some(v) = set(env::USER_RATE_PER_MIN) {
            self.limits.user_rate_per_min = number(env::USER_RATE_PER_MIN, &v)?;
        }
        if let Some(v) = set(env::USER_QUEUE_MAX) {
            self.limits.user_queue_max = number(env::USER_QUEUE_MAX, &v)?;
        }
        if let Some(v) = set(env::MAX_INFLIGHT_CHATS) {
            self.limits.max_inflight_chats = number(env::MAX_INFLIGHT_CHATS, &v)?;
        }
        if let Some(v) = set(env::DEFAULT_UPSTREAM) {
            let name = self
                .default_upstream
                .clone()
                .unwrap_or_else(|| ENV_DEFAULT_UPSTREAM_NAME.to_owned());
            self.upstreams
                .entry(name.clone())
                .and_modify(|u| u.backends = vec![v.clone()])
                .or_insert_with(|| UpstreamConfig {
                    backends: vec![v],
                    connect_timeout_ms: defaults::connect_timeout_ms(),
                    read_timeout_ms: defaults::upstream_read_timeout_ms(),
                    tls: false,
                    sni: None,
                });
            self.default_upstream = Some(name);
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        socket_addr("listen", &self.listen)?;
        if let Some(m) = &self.metrics_listen {
            socket_addr("metrics_listen", m)?;
            if m == &self.listen {
                return Err(ConfigError::new(
                    "metrics_listen",
                    "must differ from listen",
                ));
            }
        }
        if self.read_buffer_bytes != 0 && !(1024..=1024 * 1024).contains(&self.read_buffer_bytes) {
            return Err(ConfigError::new(
                "read_buffer_bytes",
                "must be 0 (no buffer) or between 1024 and 1048576",
            ));
        }
        if !(1..=256).contains(&self.threads) {
            return Err(ConfigError::new("threads", "must be between 1 and 256"));
        }
        if self.shutdown.drain_seconds > 3600 {
            return Err(ConfigError::new(
                "shutdown.drain_seconds",
                "must be at most 3600",
            ));
        }
        self.validate_database()?;
        self.validate_agent_service()?;
        self.validate_chat()?;
        self.validate_users_and_auth()?;
        if self.agents.cache_ttl_seconds > 86_400 {
            return Err(ConfigError::new(
                "agents.cache_ttl_seconds",
                "must be at most 86400",
            ));
        }
        self.validate_upstreams()
    }

    fn validate_database(&self) -> Result<(), ConfigError> {
        let db = &self.database;
        if !(db.url.starts_with("postgres://")
            || db.url.starts_with("postgresql://")
            || db.url.starts_with("sqlite:"))
        {
            return Err(ConfigError::new(
                "database.url",
                "must start with postgres://, postgresql:// or sqlite:",
            ));
        }
        if let Some(schema) = &db.schema {
            let ok = !schema.is_empty()
                && schema.len() <= 63
                && schema
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && !schema.as_bytes()[0].is_ascii_digit();
            if !ok {
                return Err(ConfigError::new(
                    "database.schema",
                    "must be 1-63 lowercase letters, digits or '_', not starting with a digit",
                ));
            }
        }
        if db.max_connections == 0 {
            return Err(ConfigError::new(
                "database.max_connections",
                "must be at least 1",
            ));
        }
        if db.acquire_timeout_ms == 0 {
            return Err(ConfigError::new(
                "database.acquire_timeout_ms",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    fn validate_agent_service(&self) -> Result<(), ConfigError> {
        let a = &self.agent_service;
        let url = reqwest::Url::parse(&a.url)
            .map_err(|e| ConfigError::new("agent_service.url", format!("{:?}: {e}", a.url)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(ConfigError::new(
                "agent_service.url",
                "must be an http(s) URL with a host",
            ));
        }
        if a.connect_timeout_ms == 0 {
            return Err(ConfigError::new(
                "agent_service.connect_timeout_ms",
                "must be at least 1",
            ));
        }
        if a.request_timeout_ms == 0 {
            return Err(ConfigError::new(
                "agent_service.request_timeout_ms",
                "must be at least 1",
            ));
        }
        if a.max_response_bytes < 1024 {
            return Err(ConfigError::new(
                "agent_service.max_response_bytes",
                "must be at least 1024",
            ));
        }
        if !a.letta.agent_template.is_object() {
            return Err(ConfigError::new(
                "agent_service.letta.agent_template",
                "must be a mapping (the body of POST /v1/agents/)",
            ));
        }
        if a.eai.agent_fields.contains_key("user_number") {
            return Err(ConfigError::new(
                "agent_service.eai.agent_fields.user_number",
                "is set by the gateway from the request",
            ));
        }
        Ok(())
    }

    fn validate_chat(&self) -> Result<(), ConfigError> {
        let c = &self.chat;
        if !(1..=100_000).contains(&c.max_message_chars) {
            return Err(ConfigError::new(
                "chat.max_message_chars",
                "must be between 1 and 100000",
            ));
        }
        if !(100..=600_000).contains(&c.body_timeout_ms) {
            return Err(ConfigError::new(
                "chat.body_timeout_ms",
                "must be between 100 and 600000",
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&c.max_body_bytes) {
            return Err(ConfigError::new(
                "chat.max_body_bytes",
                "must be between 1024 and 16777216",
            ));
        }
        if !(c.timeout_seconds > 0.0 && c.timeout_seconds <= 3600.0) {
            return Err(ConfigError::new(
                "chat.timeout_seconds",
                "must be in (0, 3600]",
            ));
        }
        let p = &c.poll;
        if p.initial_delay_ms == 0 || p.initial_delay_ms > 60_000 {
            return Err(ConfigError::new(
                "chat.poll.initial_delay_ms",
                "must be between 1 and 60000",
            ));
        }
        if p.max_delay_ms < p.initial_delay_ms || p.max_delay_ms > 60_000 {
            return Err(ConfigError::new(
                "chat.poll.max_delay_ms",
                "must be between chat.poll.initial_delay_ms and 60000",
            ));
        }
        if p.dense_interval_ms == 0 || p.dense_interval_ms > 60_000 {
            return Err(ConfigError::new(
                "chat.poll.dense_interval_ms",
                "must be between 1 and 60000",
            ));
        }
        if p.dense_until_ms > 60_000 {
            return Err(ConfigError::new(
                "chat.poll.dense_until_ms",
                "must be at most 60000",
            ));
        }
        if !(1.0..=10.0).contains(&p.multiplier) {
            return Err(ConfigError::new(
                "chat.poll.multiplier",
                "must be between 1 and 10",
            ));
        }
        if !(0.0..=1.0).contains(&p.jitter) {
            return Err(ConfigError::new(
                "chat.poll.jitter",
                "must be between 0 and 1",
            ));
        }
        Ok(())
    }

    fn validate_users_and_auth(&self) -> Result<(), ConfigError> {
        let pattern = &self.users.pattern;
        if !pattern.starts_with('^') || !pattern.ends_with('$') {
            return Err(ConfigError::new(
                "users.pattern",
                "must be anchored with ^ and $",
            ));
        }
        crate::ids::UserRules::new(pattern, &self.users.pseudonym_key)
            .map_err(|e| ConfigError::new("users.pattern", e))?;
        if self.users.pseudonym_key.len() < 8 {
            return Err(ConfigError::new(
                "users.pseudonym_key",
                "must be at least 8 characters",
            ));
        }
        self.tokens()
            .map_err(|e| ConfigError::new(self.tokens_key(env::TOKENS, "auth.tokens_file"), e))?;
        self.metrics_tokens().map_err(|e| {
            ConfigError::new(
                self.tokens_key(env::METRICS_TOKENS, "auth.metrics_tokens_file"),
                e,
            )
        })?;
        if self.auth.protect_passthrough && !self.tokens().is_ok_and(|t| t.is_enabled()) {
            return Err(ConfigError::new(
                "auth.protect_passthrough",
                "needs tokens (EAI_GATEWAY_TOKENS or auth.tokens_file)",
            ));
        }
        Ok(())
    }

    fn tokens_key(&self, var: &str, key: &str) -> String {
        format!("{var} / {key}")
    }

    pub fn tokens(&self) -> Result<crate::auth::TokenSet, String> {
        crate::auth::TokenSet::load(self.env_tokens.as_deref(), self.auth.tokens_file.as_deref())
    }

    pub fn metrics_tokens(&self) -> Result<crate::auth::TokenSet, String> {
        crate::auth::TokenSet::load(
            self.env_metrics_tokens.as_deref(),
            self.auth.metrics_tokens_file.as_deref(),
        )
    }

    fn validate_upstreams(&self) -> Result<(), ConfigError> {
        for (name, u) in &self.upstreams {
            let key = format!("upstreams.{name}");
            if u.backends.is_empty() {
                return Err(ConfigError::new(
                    format!("{key}.backends"),
                    "needs at least one host:port",
                ));
            }
            for (i, b) in u.backends.iter().enumerate() {
                host_port(&format!("{key}.backends[{i}]"), b)?;
            }
            if u.connect_timeout_ms == 0 {
                return Err(ConfigError::new(
                    format!("{key}.connect_timeout_ms"),
                    "must be at least 1",
                ));
            }
            if u.read_timeout_ms == 0 {
                return Err(ConfigError::new(
                    format!("{key}.read_timeout_ms"),
                    "must be at least 1",
                ));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            if !r.prefix.starts_with('/') {
                return Err(ConfigError::new(
                    format!("{key}.prefix"),
                    "must start with '/'",
                ));
            }
            if r.prefix.starts_with(crate::routes::NATIVE_PREFIX) {
                return Err(ConfigError::new(
                    format!("{key}.prefix"),
                    format!(
                        "{} is served by the gateway itself",
                        crate::routes::NATIVE_PREFIX
                    ),
                ));
            }
            if !self.upstreams.contains_key(&r.upstream) {
                return Err(ConfigError::new(
                    format!("{key}.upstream"),
                    format!("no upstream named {:?} under upstreams", r.upstream),
                ));
            }
        }
        if let Some(d) = &self.default_upstream
            && !self.upstreams.contains_key(d)
        {
            return Err(ConfigError::new(
                "default_upstream",
                format!("no upstream named {d:?} under upstreams"),
            ));
        }
        Ok(())
    }

    pub fn is_postgres(&self) -> bool {
        !self.database.url.starts_with("sqlite:")
    }
}

impl PollConfig {
    pub fn initial_delay(&self) -> Duration {
        Duration::from_millis(self.initial_delay_ms)
    }
    pub fn max_delay(&self) -> Duration {
        Duration::from_millis(self.max_delay_ms)
    }
}

fn number<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, ConfigError> {
    v.trim().parse().map_err(|_| {
        ConfigError::new(
            key,
            format!("{v:?} is not a non-negative integer (0 = no limit)"),
        )
    })
}

fn socket_addr(key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse()
        .map_err(|_| ConfigError::new(key, format!("{v:?} is not an ip:port address")))
}

fn host_port(key: &str, v: &str) -> Result<(), ConfigError> {
    let ok = v
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(key, format!("{v:?} is not host:port")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "agent_service:\n  dialect: eai\n  url: http://127.0.0.1:9\n";

    #[test]
    fn minimal_file_gets_defaults() {
        let c = Config::from_yaml(MINIMAL).unwrap();
        c.validate().unwrap();
        assert_eq!(c.chat.max_body_bytes, 65536);
        assert_eq!(c.chat.timeout_seconds, 180.0);
        assert!(c.chat.poll.initial_delay_ms <= 100);
        assert_eq!(c.chat.poll.max_delay_ms, 2000);
    }

    #[test]
    fn unknown_nested_key_is_named() {
        let err = Config::from_yaml(&format!("{MINIMAL}database:\n  urll: x\n")).unwrap_err();
        assert!(err.to_string().contains("urll"), "{err}");
        assert_eq!(err.key, "database");
    }

    #[test]
    fn route_to_missing_upstream_is_named() {
        let mut c = Config::from_yaml(MINIMAL).unwrap();
        c.routes.push(RouteConfig {
            prefix: "/api".into(),
            upstream: "nope".into(),
        });
        assert_eq!(c.validate().unwrap_err().key, "routes[0].upstream");
    }

    #[test]
    fn env_overrides_and_names_bad_variable() {
        let mut c = Config::from_yaml(MINIMAL).unwrap();
        c.apply_env(|k| match k {
            env::DIALECT => Some("letta".into()),
            env::DEFAULT_UPSTREAM => Some("127.0.0.1:7000".into()),
            env::DATABASE_URL => Some("sqlite:///tmp/x.db".into()),
            _ => None,
        })
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.agent_service.dialect, Dialect::Letta);
        assert_eq!(
            c.default_upstream.as_deref(),
            Some(ENV_DEFAULT_UPSTREAM_NAME)
        );
        assert_eq!(
            c.upstreams[ENV_DEFAULT_UPSTREAM_NAME].backends,
            ["127.0.0.1:7000"]
        );
        let err = c
            .apply_env(|k| (k == env::DIALECT).then(|| "grpc".into()))
            .unwrap_err();
        assert_eq!(err.key, env::DIALECT);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("listen: nowhere\n", "listen"),
            (
                "chat:\n  poll:\n    max_delay_ms: 1\n",
                "chat.poll.max_delay_ms",
            ),
            ("database:\n  url: mysql://x\n", "database.url"),
            ("database:\n  schema: \"x;drop\"\n", "database.schema"),
            (
                "upstreams:\n  b:\n    backends: [\"nohost\"]\n",
                "upstreams.b.backends[0]",
            ),
        ];
        for (extra, key) in cases {
            let c = Config::from_yaml(&format!("{MINIMAL}{extra}")).unwrap();
            assert_eq!(c.validate().unwrap_err().key, key, "{extra}");
        }
    }
}
