//! In-memory user → agent cache in front of the store, so a known user's chat
//! needs no mapping query. A replica drops an entry the moment it changes the
//! mapping itself; other replicas keep theirs until `agents.cache_ttl_seconds`
//! runs out (or until the agent turns out to be gone, which heals).

use std::time::Duration;

use pingora_memory_cache::MemoryCache;

use crate::ids::{AgentId, UserNumber};
use crate::metrics;

pub struct MappingCache {
    /// None when the TTL is 0 (cache off).
    cache: Option<MemoryCache<UserNumber, (UserNumber, AgentId)>>,
    ttl: Duration,
}

impl MappingCache {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            cache: (!ttl.is_zero() && capacity > 0).then(|| MemoryCache::new(capacity)),
            ttl,
        }
    }

    pub fn get(&self, user: &UserNumber) -> Option<AgentId> {
        let cache = self.cache.as_ref()?;
        // The cache keys by a 64-bit hash; the stored user rules out a collision.
        let hit = match cache.get(user) {
            (Some((owner, agent)), _) if &owner == user => Some(agent),
            _ => None,
        };
        let label = if hit.is_some() { "hit" } else { "miss" };
        metrics::MAPPING_CACHE.with_label_values(&[label]).inc();
        hit
    }

    pub fn put(&self, user: &UserNumber, agent: &AgentId) {
        if let Some(cache) = &self.cache {
            cache.put(user, (user.clone(), agent.clone()), Some(self.ttl));
        }
    }

    pub fn remove(&self, user: &UserNumber) {
        if let Some(cache) = &self.cache {
            cache.remove(user);
        }
    }
}
