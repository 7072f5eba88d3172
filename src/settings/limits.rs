//! `limits:` admission control. Every limit is off at 0.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Chats per user per minute.
    pub user_rate_per_min: u32,
    /// Chats of one user running or queued in one process.
    pub user_queue_max: usize,
    /// Chats in flight in one process.
    pub max_inflight_chats: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            user_rate_per_min: 20,
            user_queue_max: 10,
            max_inflight_chats: 512,
        }
    }
}

/// A configured limit: `None` for 0 (no limit).
pub(crate) fn limit<T: PartialEq + Default>(value: T) -> Option<T> {
    (value != T::default()).then_some(value)
}
