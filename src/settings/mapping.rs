//! `agents:` the user → agent mapping: its cache and what a DELETE does.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, units};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MappingSettings {
    /// `DELETE /eai-gateway/agent/{n}` also deletes the agent upstream.
    pub delete_upstream_on_delete: bool,
    /// How long a replica may serve a mapping from memory; also the longest
    /// another replica may keep using a mapping deleted elsewhere. 0 = off.
    #[serde(rename = "cache_ttl_seconds", with = "units::seconds")]
    pub cache_ttl: Duration,
    pub cache_capacity: usize,
}

impl Default for MappingSettings {
    fn default() -> Self {
        Self {
            delete_upstream_on_delete: false,
            cache_ttl: Duration::from_secs(30),
            cache_capacity: 100_000,
        }
    }
}

impl MappingSettings {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.cache_ttl > Duration::from_secs(86_400) {
            return Err(ConfigError::new(
                "agents.cache_ttl_seconds",
                "must be at most 86400",
            ));
        }
        Ok(())
    }
}
