//! `agents:` the user → agent mapping: its cache and what a DELETE does.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, units};

/// The `agents:` section: the user → agent mapping and its cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MappingSettings {
    /// `DELETE /eai-gateway/agent/{n}` also deletes the user's agent on the
    /// agent service. Formerly `delete_upstream_on_delete`, still read (see
    /// `settings::renamed`) though "upstream" means a pass-through backend.
    #[serde(alias = "delete_upstream_on_delete")]
    pub delete_agent_on_delete: bool,
    /// How long a replica may serve a mapping from memory; also the longest
    /// another replica may keep using a mapping deleted elsewhere. 0 = off.
    #[serde(rename = "cache_ttl_seconds", with = "units::seconds")]
    pub cache_ttl: Duration,
    /// Most mappings a replica keeps in memory.
    pub cache_capacity: usize,
    /// How long a DELETE waits for the user's message in progress before
    /// answering 503 with `Retry-After`.
    #[serde(rename = "delete_wait_seconds", with = "units::seconds")]
    pub delete_wait: Duration,
    /// Which agent serves a user whose number is stored under more than one
    /// spelling (an adopted table), until an operator resolves it with
    /// `eai-gateway mappings resolve`.
    pub duplicate_policy: DuplicatePolicy,
    /// Agents younger than this are never called orphans: their mapping
    /// may still be on its way (`agents reconcile`).
    #[serde(rename = "orphan_min_age_seconds", with = "units::seconds")]
    pub orphan_min_age: Duration,
    /// How often `run` looks for orphaned agents (one replica at a time);
    /// 0 = never (the `agents reconcile` command still works).
    #[serde(rename = "reconcile_interval_seconds", with = "units::seconds")]
    pub reconcile_interval: Duration,
    /// The periodic look also deletes what it finds.
    pub reconcile_delete: bool,
}

/// `agents.duplicate_policy`: the row that serves a user with several.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicatePolicy {
    /// The row under the canonical spelling; without one, the oldest.
    #[default]
    Canonical,
    /// The row created first (adopted rows all carry the adoption time; ties
    /// go to the canonical spelling).
    Oldest,
    /// The row created last (ties go to the canonical spelling).
    Newest,
}

impl DuplicatePolicy {
    /// The name as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            Self::Canonical => "canonical",
            Self::Oldest => "oldest",
            Self::Newest => "newest",
        }
    }
}

impl Default for MappingSettings {
    fn default() -> Self {
        Self {
            delete_agent_on_delete: false,
            cache_ttl: Duration::from_secs(30),
            cache_capacity: 100_000,
            delete_wait: Duration::from_secs(10),
            duplicate_policy: DuplicatePolicy::default(),
            orphan_min_age: Duration::from_secs(600),
            reconcile_interval: Duration::ZERO,
            reconcile_delete: false,
        }
    }
}

impl MappingSettings {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.cache_ttl > Duration::from_secs(86_400) {
            return Err(ConfigError::out_of_range(
                "agents.cache_ttl_seconds",
                self.cache_ttl.as_secs(),
                "must be at most 86400",
            ));
        }
        if self.delete_wait.is_zero() || self.delete_wait > Duration::from_secs(3600) {
            return Err(ConfigError::out_of_range(
                "agents.delete_wait_seconds",
                self.delete_wait.as_secs(),
                "must be between 1 and 3600",
            ));
        }
        Ok(())
    }
}
