//! Settings: the YAML file and the environment overrides, parsed once into
//! one immutable value of real types. Every component is built from it;
//! nothing re-reads a file or re-parses a string after start-up. Each
//! section lives in a module of its own, with its defaults (one `Default`
//! per struct) and its validation; every error names the key or variable.

mod agent_service;
mod auth;
mod chat;
mod database;
mod humanize;
mod limits;
mod mapping;
mod otel;
mod paths;
mod renamed;
mod restart;
mod secret;
mod tls;
mod units;
mod upstreams;
mod users;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use agent_service::{
    AgentServiceSettings, Dialect, EaiSettings, LettaDelivery, LettaSettings, RetrySettings,
};
pub use auth::AuthSettings;
pub use chat::{ChatSettings, PollSettings};
pub use database::{DatabaseSettings, DatabaseUrl};
pub(crate) use limits::limit;
pub use limits::{LimitSettings, RedisClusterUrls, RedisFallback, RedisUrl};
pub use mapping::{DuplicatePolicy, MappingSettings};
pub use otel::{SamplerKind, TracingSettings};
pub use paths::{EncodedSeparators, PathSettings};
pub use restart::{RESTART_ONLY, RestartOnly};
pub use tls::TlsListenerSettings;
pub use upstreams::{
    HeaderRules, HealthCheckKind, HealthCheckSettings, RouteSettings, UpstreamSettings,
};
pub use users::{DEFAULT_PSEUDONYM_KEY, DEFAULT_USER_PATTERN, UserPattern, UserSettings};

use crate::auth::TokenSet;

/// An invalid setting: where it came from, its key and what is wrong with it.
#[derive(Debug)]
pub struct ConfigError {
    /// The file the value came from; `None` for an environment variable
    /// and for a text given in code.
    pub file: Option<PathBuf>,
    /// Dotted config key, or the environment variable when `from_env`;
    /// empty when the error is about the file as a whole.
    pub key: String,
    /// The value came from the environment variable `key`, not a file.
    pub from_env: bool,
    /// What is wrong, and what is expected instead.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: None,
            key: key.into(),
            from_env: false,
            message: message.into(),
        }
    }

    /// About the value of the environment variable `var`.
    pub(crate) fn env(var: &str, message: impl Into<String>) -> Self {
        Self {
            from_env: true,
            ..Self::new(var, message)
        }
    }

    /// `KEY: VALUE is out of range: EXPECTED`; `value` in the unit of the key.
    pub(crate) fn out_of_range(
        key: impl Into<String>,
        value: impl fmt::Display,
        expected: &str,
    ) -> Self {
        Self::new(key, format!("{value} is out of range: {expected}"))
    }

    /// Names `path` as where the value came from, unless it came from the
    /// environment.
    pub fn in_file(mut self, path: &Path) -> Self {
        if !self.from_env {
            self.file = Some(path.to_owned());
        }
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.from_env {
            return write!(f, "environment variable {}: {}", self.key, self.message);
        }
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Everything the gateway is configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Public listener.
    #[serde(default = "default_listen", with = "units::addr")]
    pub listen: SocketAddr,
    /// The HTTPS listener (`tls:`), beside the plaintext one.
    #[serde(default)]
    pub tls: TlsListenerSettings,
    /// Prometheus listener; no metrics listener when absent.
    #[serde(default, with = "units::optional_addr")]
    pub metrics_listen: Option<SocketAddr>,
    /// Worker threads of the proxy service.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Read buffer per client connection; 0 = none (the parser's own
    /// buffer takes the first read, so another one only costs memory).
    #[serde(default)]
    pub read_buffer_bytes: usize,
    /// Plain HTTP/1.1 GET/HEAD pass-through requests are forwarded on the
    /// gateway's own lean path, without pingora-proxy's per-request
    /// machinery, which costs more than the forwarding. False sends every
    /// pass-through request through pingora-proxy: an escape hatch, should
    /// the lean path serve some backend wrongly, that needs no new binary
    /// and, being reloadable, no restart.
    #[serde(default = "default_lean_passthrough")]
    pub lean_passthrough: bool,
    /// The `shutdown:` section.
    #[serde(default)]
    pub shutdown: ShutdownSettings,
    /// Unix socket through which `run --upgrade` takes over the listening
    /// sockets of the running process; see `upgrade_sock()` for the default.
    #[serde(default)]
    pub upgrade_sock: Option<PathBuf>,
    /// The `database:` section.
    #[serde(default)]
    pub database: DatabaseSettings,
    /// The `agent_service:` section (required).
    pub agent_service: AgentServiceSettings,
    /// The `chat:` section.
    #[serde(default)]
    pub chat: ChatSettings,
    /// The `agents:` section: the user → agent mapping.
    #[serde(default, rename = "agents")]
    pub mapping: MappingSettings,
    /// The `users:` section: which user numbers are valid, and the pseudonym key.
    #[serde(default)]
    pub users: UserSettings,
    /// The `auth:` section.
    #[serde(default)]
    pub auth: AuthSettings,
    /// The `limits:` section.
    #[serde(default)]
    pub limits: LimitSettings,
    /// How request paths are read before routing.
    #[serde(default)]
    pub paths: PathSettings,
    /// Named pass-through upstreams.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSettings>,
    /// Path-prefix routes to upstreams; the longest matching prefix wins.
    #[serde(default)]
    pub routes: Vec<RouteSettings>,
    /// Upstream receiving every request that no route claims; 404 when unset.
    #[serde(default)]
    pub default_upstream: Option<String>,
    /// The `tracing:` section: span export over OTLP.
    #[serde(default)]
    pub tracing: TracingSettings,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_threads() -> usize {
    2
}

fn default_lean_passthrough() -> bool {
    true
}

/// The `shutdown:` section: how a stopping process drains.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// After SIGTERM: how long in-flight requests may take to finish.
    #[serde(rename = "drain_seconds", with = "units::seconds")]
    pub drain: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain: Duration::from_secs(10),
        }
    }
}

/// The environment variables that override the file.
pub mod env {
    /// Overrides `listen`.
    pub const LISTEN: &str = "EAI_GATEWAY_LISTEN";
    /// Overrides `metrics_listen`.
    pub const METRICS_LISTEN: &str = "EAI_GATEWAY_METRICS_LISTEN";
    /// Overrides `database.url`.
    pub const DATABASE_URL: &str = "DATABASE_URL";
    /// Overrides `database.direct_url`.
    pub const DATABASE_DIRECT_URL: &str = "DATABASE_DIRECT_URL";
    /// Overrides `agent_service.dialect`.
    pub const DIALECT: &str = "AGENT_SERVICE_DIALECT";
    /// Overrides `agent_service.url`.
    pub const AGENT_URL: &str = "AGENT_SERVICE_URL";
    /// Overrides `agent_service.token`.
    pub const AGENT_TOKEN: &str = "AGENT_SERVICE_TOKEN";
    /// The backend of the default upstream (created when the file names none).
    pub const DEFAULT_UPSTREAM: &str = "EAI_GATEWAY_DEFAULT_UPSTREAM";
    /// Bearer tokens of the native routes, comma-separated; added to `auth.tokens_file`.
    pub const TOKENS: &str = "EAI_GATEWAY_TOKENS";
    /// Bearer tokens of the metrics listener; added to `auth.metrics_tokens_file`.
    pub const METRICS_TOKENS: &str = "EAI_GATEWAY_METRICS_TOKENS";
    /// Overrides `limits.user_rate_per_min`.
    pub const USER_RATE_PER_MIN: &str = "EAI_GATEWAY_USER_RATE_PER_MIN";
    /// Overrides `limits.user_queue_max`.
    pub const USER_QUEUE_MAX: &str = "EAI_GATEWAY_USER_QUEUE_MAX";
    /// Overrides `limits.max_inflight_chats`.
    pub const MAX_INFLIGHT_CHATS: &str = "EAI_GATEWAY_MAX_INFLIGHT_CHATS";
    /// Overrides `limits.redis_url`.
    pub const REDIS_URL: &str = "EAI_GATEWAY_REDIS_URL";
    /// Overrides `limits.redis_cluster_urls` (comma-separated seed nodes).
    pub const REDIS_CLUSTER_URLS: &str = "EAI_GATEWAY_REDIS_CLUSTER_URLS";
    /// Overrides `upgrade_sock`.
    pub const UPGRADE_SOCK: &str = "EAI_GATEWAY_UPGRADE_SOCK";
    /// Overrides `users.pseudonym_key`.
    pub const PSEUDONYM_KEY: &str = "EAI_GATEWAY_PSEUDONYM_KEY";
    /// Overrides `tls.listen`.
    pub const TLS_LISTEN: &str = "EAI_GATEWAY_TLS_LISTEN";
    /// Overrides `tls.cert_file`.
    pub const TLS_CERT: &str = "EAI_GATEWAY_TLS_CERT";
    /// Overrides `tls.key_file`.
    pub const TLS_KEY: &str = "EAI_GATEWAY_TLS_KEY";
}

/// Upstream created by `EAI_GATEWAY_DEFAULT_UPSTREAM` when the file names none.
pub const ENV_DEFAULT_UPSTREAM_NAME: &str = "default";

impl Settings {
    /// The defaults, with this agent service: what tests and the demo
    /// start from instead of writing YAML.
    pub fn new(agent_service: AgentServiceSettings) -> Self {
        Self {
            listen: default_listen(),
            tls: TlsListenerSettings::default(),
            metrics_listen: None,
            threads: default_threads(),
            read_buffer_bytes: 0,
            lean_passthrough: default_lean_passthrough(),
            shutdown: ShutdownSettings::default(),
            upgrade_sock: None,
            database: DatabaseSettings::default(),
            agent_service,
            chat: ChatSettings::default(),
            mapping: MappingSettings::default(),
            users: UserSettings::default(),
            auth: AuthSettings::default(),
            limits: LimitSettings::default(),
            paths: PathSettings::default(),
            upstreams: BTreeMap::new(),
            routes: Vec::new(),
            default_upstream: None,
            tracing: TracingSettings::default(),
        }
    }

    /// Reads the file, applies the process environment, reads the token
    /// files and validates, then insists on a secret pseudonym key: what
    /// `run`, `check-config`, `migrate` and a reload all do. Every error
    /// not about an environment variable names the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("", format!("cannot read the file: {e}")).in_file(path)
        })?;
        Self::parse_deployed(&text, |k| std::env::var(k).ok()).map_err(|e| e.in_file(path))
    }

    /// `load` for a text and an environment given by the caller.
    pub fn parse_deployed(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let key_from_env = env(env::PSEUDONYM_KEY).is_some_and(|v| !v.is_empty());
        let settings = Self::parse(text, &env)?;
        // Last, so that a file with several mistakes reports the others
        // first: this one is the same for every file written from a sample.
        users::check_deployed_key(&settings.users.pseudonym_key, key_from_env, || {
            key_in_yaml(text)
        })?;
        Ok(settings)
    }

    /// The file and the environment, validated; unlike `load`, accepts the
    /// built-in pseudonym key (for tests).
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut settings = Self::from_yaml(text)?;
        settings.apply_env(env)?;
        settings.validate()?;
        Ok(settings)
    }

    /// The file alone, parsed but neither overridden nor validated; warns
    /// of each renamed key it uses by its old name.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let old_names = renamed::old_names_in(text)?;
        let settings = Self::typed(text)?;
        for (old, new) in old_names {
            renamed::warn(old, new);
        }
        Ok(settings)
    }

    fn typed(text: &str) -> Result<Self, ConfigError> {
        // The path is tracked outside the YAML parser so that errors raised
        // while converting a value (a duration, a URL, a pattern) name
        // their key too, not just the section around it.
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            // `?` marks where a syntax error cut the path short.
            let path = e.path().to_string();
            let path = path.trim_end_matches(".?").trim_end_matches('?');
            let message = e.into_inner().to_string();
            let message = humanize::serde_message(strip_yaml_path(&message, path));
            match path {
                "" | "." => ConfigError::new("", message),
                _ => ConfigError::new(path, message),
            }
        })
    }

    /// Applies the environment overrides and reads the token files.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let set = |k: &str| var(k).filter(|v| !v.is_empty());
        let addr = |k: &str, v: String| units::addr::parse(&v).map_err(|e| ConfigError::env(k, e));
        if let Some(v) = set(env::LISTEN) {
            self.listen = addr(env::LISTEN, v)?;
        }
        if let Some(v) = set(env::METRICS_LISTEN) {
            self.metrics_listen = Some(addr(env::METRICS_LISTEN, v)?);
        }
        if let Some(v) = set(env::TLS_LISTEN) {
            self.tls.listen = Some(addr(env::TLS_LISTEN, v)?);
        }
        if let Some(v) = set(env::TLS_CERT) {
            self.tls.cert_file = Some(PathBuf::from(v));
        }
        if let Some(v) = set(env::TLS_KEY) {
            self.tls.key_file = Some(PathBuf::from(v));
        }
        if let Some(v) = set(env::UPGRADE_SOCK) {
            self.upgrade_sock = Some(PathBuf::from(v));
        }
        if let Some(v) = set(env::DATABASE_URL) {
            self.database.url =
                DatabaseUrl::parse(&v).map_err(|e| ConfigError::env(env::DATABASE_URL, e))?;
        }
        if let Some(v) = set(env::DATABASE_DIRECT_URL) {
            self.database.direct_url = Some(
                DatabaseUrl::parse(&v)
                    .map_err(|e| ConfigError::env(env::DATABASE_DIRECT_URL, e))?,
            );
        }
        if let Some(v) = set(env::DIALECT) {
            self.agent_service.dialect = Dialect::parse(&v).ok_or_else(|| {
                ConfigError::env(env::DIALECT, format!("{v:?} is not one of letta, eai"))
            })?;
        }
        if let Some(v) = set(env::AGENT_URL) {
            self.agent_service.url =
                units::http_url::parse(&v).map_err(|e| ConfigError::env(env::AGENT_URL, e))?;
        }
        if let Some(v) = set(env::AGENT_TOKEN) {
            self.agent_service.token = Some(v);
        }
        if let Some(v) = set(env::USER_RATE_PER_MIN) {
            self.limits.user_rate_per_min = number(env::USER_RATE_PER_MIN, &v)?;
        }
        if let Some(v) = set(env::USER_QUEUE_MAX) {
            self.limits.user_queue_max = number(env::USER_QUEUE_MAX, &v)?;
        }
        if let Some(v) = set(env::MAX_INFLIGHT_CHATS) {
            self.limits.max_inflight_chats = number(env::MAX_INFLIGHT_CHATS, &v)?;
        }
        if let Some(v) = set(env::REDIS_URL) {
            self.limits.redis_url =
                Some(RedisUrl::parse(&v).map_err(|e| ConfigError::env(env::REDIS_URL, e))?);
        }
        if let Some(v) = set(env::REDIS_CLUSTER_URLS) {
            self.limits.redis_cluster_urls = Some(
                RedisClusterUrls::parse(&v)
                    .map_err(|e| ConfigError::env(env::REDIS_CLUSTER_URLS, e))?,
            );
        }
        if let Some(v) = set(env::PSEUDONYM_KEY) {
            users::check_key_length(&v).map_err(|e| ConfigError::env(env::PSEUDONYM_KEY, e))?;
            self.users.pseudonym_key = v;
        }
        if let Some(v) = set(env::DEFAULT_UPSTREAM) {
            let name = self
                .default_upstream
                .clone()
                .unwrap_or_else(|| ENV_DEFAULT_UPSTREAM_NAME.to_owned());
            self.upstreams
                .entry(name.clone())
                .and_modify(|u| u.backends = vec![v.clone()])
                .or_insert_with(|| UpstreamSettings::with_backends([v]));
            self.default_upstream = Some(name);
        }
        self.tracing.apply_env(&set)?;
        // The variable is checked alone first so that a bad token is
        // blamed on where it came from.
        let env_tokens = set(env::TOKENS);
        let env_metrics_tokens = set(env::METRICS_TOKENS);
        for (var, list) in [
            (env::TOKENS, &env_tokens),
            (env::METRICS_TOKENS, &env_metrics_tokens),
        ] {
            TokenSet::load(list.as_deref(), None).map_err(|e| ConfigError::env(var, e))?;
        }
        let auth = &mut self.auth;
        auth.tokens = TokenSet::load(env_tokens.as_deref(), auth.tokens_file.as_deref())
            .map_err(|e| ConfigError::new("auth.tokens_file", e))?;
        auth.metrics_tokens = TokenSet::load(
            env_metrics_tokens.as_deref(),
            auth.metrics_tokens_file.as_deref(),
        )
        .map_err(|e| ConfigError::new("auth.metrics_tokens_file", e))?;
        Ok(())
    }

    /// The upgrade socket: the configured one, or one per public listen
    /// address in the temporary directory, so two gateways on one machine
    /// never hand their sockets to each other.
    pub fn upgrade_sock(&self) -> PathBuf {
        self.upgrade_sock.clone().unwrap_or_else(|| {
            let addr = self.listen.to_string().replace([':', '[', ']'], "_");
            std::env::temp_dir().join(format!("eai-gateway-{addr}.upgrade.sock"))
        })
    }

    /// Checks what a type alone cannot: ranges and cross-references.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.metrics_listen == Some(self.listen) {
            return Err(ConfigError::new(
                "metrics_listen",
                format!("{} is also listen: must differ from it", self.listen),
            ));
        }
        if let Some(tls) = self.tls.listen
            && (tls == self.listen || Some(tls) == self.metrics_listen)
        {
            return Err(ConfigError::new(
                "tls.listen",
                format!("{tls} is also listen or metrics_listen: must differ from them"),
            ));
        }
        self.tls.validate()?;
        if self.read_buffer_bytes != 0 && !(1024..=1024 * 1024).contains(&self.read_buffer_bytes) {
            return Err(ConfigError::out_of_range(
                "read_buffer_bytes",
                self.read_buffer_bytes,
                "must be 0 (no buffer) or between 1024 and 1048576",
            ));
        }
        if !(1..=256).contains(&self.threads) {
            return Err(ConfigError::out_of_range(
                "threads",
                self.threads,
                "must be between 1 and 256",
            ));
        }
        if self.shutdown.drain > Duration::from_secs(3600) {
            return Err(ConfigError::out_of_range(
                "shutdown.drain_seconds",
                self.shutdown.drain.as_secs(),
                "must be at most 3600",
            ));
        }
        self.database.validate()?;
        self.agent_service.validate()?;
        self.chat.validate()?;
        self.users.validate()?;
        self.mapping.validate()?;
        self.limits.validate()?;
        self.tracing.validate()?;
        if self.auth.protect_passthrough && !self.auth.tokens.is_enabled() {
            return Err(ConfigError::new(
                "auth.protect_passthrough",
                "true needs bearer tokens: set EAI_GATEWAY_TOKENS or auth.tokens_file",
            ));
        }
        upstreams::validate(
            &self.upstreams,
            &self.routes,
            self.default_upstream.as_deref(),
        )
    }
}

fn number<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, ConfigError> {
    v.trim().parse().map_err(|_| {
        ConfigError::env(
            key,
            format!("got {v:?}, expected a whole number (0 or more; 0 = no limit)"),
        )
    })
}

/// serde_yaml_ng starts a message with its own idea of the path, which
/// may stop at the enclosing section; the key is shown once, in full.
fn strip_yaml_path<'a>(message: &'a str, path: &str) -> &'a str {
    if let Some((head, rest)) = message.split_once(": ")
        && let Some(tail) = path.strip_prefix(head)
        && (tail.is_empty() || tail.starts_with(['.', '[']))
    {
        return rest;
    }
    message
}

/// Whether the file sets `users.pseudonym_key` at all.
fn key_in_yaml(text: &str) -> bool {
    serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text)
        .ok()
        .and_then(|doc| doc.get("users")?.get("pseudonym_key").cloned())
        .is_some()
}

#[cfg(test)]
mod tests;
