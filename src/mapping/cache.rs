//! In-memory user → agent cache in front of the store, so a known user's chat
//! needs no mapping query. A replica drops an entry the moment it changes the
//! mapping itself; other replicas keep theirs until `agents.cache_ttl_seconds`
//! runs out (or until the agent turns out to be gone, which heals).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use pingora_memory_cache::MemoryCache;

use crate::ids::{AgentId, UserNumber};
use crate::metrics;

pub struct MappingCache {
    /// None when the TTL is 0 (cache off). Each entry carries the epoch it
    /// was stored in.
    cache: Option<MemoryCache<UserNumber, (UserNumber, AgentId, u64)>>,
    ttl: Duration,
    /// Entries of an older epoch are dead: `clear` in O(1), which the
    /// memory cache has no operation for.
    epoch: AtomicU64,
    /// Stored minus removed, for the saturation gauge: evictions and
    /// expiries are not seen, so it is an upper bound, capped at capacity.
    entries: AtomicUsize,
    capacity: usize,
}

impl MappingCache {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            cache: (!ttl.is_zero() && capacity > 0).then(|| MemoryCache::new(capacity)),
            ttl,
            epoch: AtomicU64::new(0),
            entries: AtomicUsize::new(0),
            capacity,
        }
    }

    pub fn get(&self, user: &UserNumber) -> Option<AgentId> {
        let cache = self.cache.as_ref()?;
        // The cache keys by a 64-bit hash; the stored user rules out a collision.
        let epoch = self.epoch.load(Ordering::Acquire);
        let hit = match cache.get(user) {
            (Some((owner, agent, stored)), _) if &owner == user && stored == epoch => Some(agent),
            _ => None,
        };
        let label = if hit.is_some() { "hit" } else { "miss" };
        metrics::MAPPING_CACHE.with_label_values(&[label]).inc();
        hit
    }

    pub fn put(&self, user: &UserNumber, agent: &AgentId) {
        if let Some(cache) = &self.cache {
            let epoch = self.epoch.load(Ordering::Acquire);
            // A put follows a miss, so this extra lookup is off the hot path.
            if cache.get(user).0.is_none() {
                self.entries.fetch_add(1, Ordering::Relaxed);
            }
            cache.put(user, (user.clone(), agent.clone(), epoch), Some(self.ttl));
        }
    }

    pub fn remove(&self, user: &UserNumber) {
        if let Some(cache) = &self.cache {
            if cache.get(user).0.is_some() {
                let _ = self
                    .entries
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            }
            cache.remove(user);
        }
    }

    /// Forgets every entry.
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.entries.store(0, Ordering::Relaxed);
    }

    /// Entries for the saturation gauge (an upper bound, see `entries`).
    pub fn len_estimate(&self) -> usize {
        if self.cache.is_none() {
            return 0;
        }
        self.entries.load(Ordering::Relaxed).min(self.capacity)
    }
}
