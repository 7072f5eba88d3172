//! `chat:` what a chat request may carry and how its answer is polled for.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, units};

/// The `chat:` section: request bounds and how long a chat may take.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatSettings {
    /// Largest accepted JSON body of the native routes.
    pub max_body_bytes: usize,
    /// Longest accepted `message`, in characters.
    pub max_message_chars: usize,
    /// A native request body must arrive completely within this time.
    #[serde(rename = "body_timeout_ms", with = "units::millis")]
    pub body_timeout: Duration,
    /// How long a caller waits for the answer; a request may ask for less
    /// with `timeout`. The message itself may take longer (below).
    #[serde(rename = "timeout_seconds", with = "units::fractional_seconds")]
    pub timeout: Duration,
    /// Hard bound on one message after its send: until then the gateway
    /// keeps polling it (holding the user's turn) even after the caller
    /// stopped waiting; then it gives up and releases the user.
    #[serde(rename = "max_processing_seconds", with = "units::seconds")]
    pub max_processing: Duration,
    /// How long the outcome of an asynchronous chat (`Prefer:
    /// respond-async`) can be fetched after it ends; then 404.
    #[serde(
        rename = "async_result_ttl_seconds",
        alias = "async_result_ttl",
        with = "units::seconds"
    )]
    pub async_result_ttl: Duration,
    /// How long an `Idempotency-Key` stands for the chat it first came
    /// with: a repeat within it is answered from that chat, never sent.
    #[serde(
        rename = "idempotency_ttl_seconds",
        alias = "idempotency_ttl",
        with = "units::seconds"
    )]
    pub idempotency_ttl: Duration,
    /// `chat.poll`: the schedule of polls for an answer.
    pub poll: PollSettings,
}

impl Default for ChatSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_message_chars: 4096,
            body_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(180),
            max_processing: Duration::from_secs(15 * 60),
            async_result_ttl: Duration::from_secs(60 * 60),
            idempotency_ttl: Duration::from_secs(24 * 60 * 60),
            poll: PollSettings::default(),
        }
    }
}

/// When to poll for an answer: see `agent_service::poll::PollSchedule`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PollSettings {
    /// Delay of the first poll after the send.
    #[serde(rename = "initial_delay_ms", with = "units::millis")]
    pub initial_delay: Duration,
    /// Gap between polls during the dense phase.
    #[serde(rename = "dense_interval_ms", with = "units::millis")]
    pub dense_interval: Duration,
    /// Poll every `dense_interval` until this long after the send, then
    /// back off; 0 = back off from the first poll.
    #[serde(rename = "dense_until_ms", with = "units::millis")]
    pub dense_until: Duration,
    /// `max_delay_ms`: the longest gap between two polls once backing off.
    #[serde(rename = "max_delay_ms", with = "units::millis")]
    pub max_delay: Duration,
    /// Factor by which the gap grows after the dense phase.
    pub multiplier: f64,
    /// Fraction of each delay that is randomised (0 = none, 0.5 = ±50 %).
    pub jitter: f64,
}

impl Default for PollSettings {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(25),
            dense_interval: Duration::from_millis(75),
            dense_until: Duration::from_millis(400),
            max_delay: Duration::from_secs(2),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

const MINUTE: Duration = Duration::from_secs(60);

impl ChatSettings {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=100_000).contains(&self.max_message_chars) {
            return Err(ConfigError::out_of_range(
                "chat.max_message_chars",
                self.max_message_chars,
                "must be between 1 and 100000",
            ));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&self.body_timeout) {
            return Err(ConfigError::out_of_range(
                "chat.body_timeout_ms",
                self.body_timeout.as_millis(),
                "must be between 100 and 600000",
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err(ConfigError::out_of_range(
                "chat.max_body_bytes",
                self.max_body_bytes,
                "must be between 1024 and 16777216",
            ));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(3600) {
            return Err(ConfigError::out_of_range(
                "chat.timeout_seconds",
                self.timeout.as_secs_f64(),
                "must be more than 0 and at most 3600",
            ));
        }
        if self.max_processing < self.timeout || self.max_processing > Duration::from_secs(86_400) {
            return Err(ConfigError::out_of_range(
                "chat.max_processing_seconds",
                self.max_processing.as_secs(),
                &format!(
                    "must be between chat.timeout_seconds ({}) and 86400",
                    self.timeout.as_secs_f64()
                ),
            ));
        }
        for (key, ttl) in [
            ("chat.async_result_ttl_seconds", self.async_result_ttl),
            ("chat.idempotency_ttl_seconds", self.idempotency_ttl),
        ] {
            if ttl.is_zero() || ttl > Duration::from_secs(7 * 86_400) {
                return Err(ConfigError::out_of_range(
                    key,
                    ttl.as_secs(),
                    "must be between 1 and 604800 (7 days)",
                ));
            }
        }
        self.poll.validate()
    }
}

impl PollSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.initial_delay.is_zero() || self.initial_delay > MINUTE {
            return Err(ConfigError::out_of_range(
                "chat.poll.initial_delay_ms",
                self.initial_delay.as_millis(),
                "must be between 1 and 60000",
            ));
        }
        if self.max_delay < self.initial_delay || self.max_delay > MINUTE {
            return Err(ConfigError::out_of_range(
                "chat.poll.max_delay_ms",
                self.max_delay.as_millis(),
                &format!(
                    "must be between chat.poll.initial_delay_ms ({}) and 60000",
                    self.initial_delay.as_millis()
                ),
            ));
        }
        if self.dense_interval.is_zero() || self.dense_interval > MINUTE {
            return Err(ConfigError::out_of_range(
                "chat.poll.dense_interval_ms",
                self.dense_interval.as_millis(),
                "must be between 1 and 60000",
            ));
        }
        if self.dense_until > MINUTE {
            return Err(ConfigError::out_of_range(
                "chat.poll.dense_until_ms",
                self.dense_until.as_millis(),
                "must be at most 60000",
            ));
        }
        if !(1.0..=10.0).contains(&self.multiplier) {
            return Err(ConfigError::out_of_range(
                "chat.poll.multiplier",
                self.multiplier,
                "must be between 1 and 10",
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(ConfigError::out_of_range(
                "chat.poll.jitter",
                self.jitter,
                "must be between 0 and 1",
            ));
        }
        Ok(())
    }
}
