//! Which keys a running gateway can take on SIGHUP and which need a new
//! process: everything that shapes the listeners and runtimes, and
//! everything that identifies stored state (the database, the agent service
//! the stored agent ids belong to, the pseudonym key that names agents).

use super::Settings;

/// Keys that apply only at start-up; a reload that changes one is refused.
/// The README's configuration reference marks the same keys.
pub const RESTART_ONLY: &[&str] = &[
    "listen",
    "metrics_listen",
    "tls.listen",
    "threads",
    "read_buffer_bytes",
    "upgrade_sock",
    "shutdown.drain_seconds",
    "database",
    "agent_service.dialect",
    "agent_service.url",
    "agents.cache_capacity",
    "agents.cache_ttl_seconds",
    "agents.reconcile_interval_seconds",
    "agents.reconcile_delete",
    "agents.orphan_min_age_seconds",
    "users",
];

impl Settings {
    /// The restart-only keys whose value differs in `new`, by name.
    pub fn restart_only_changes(&self, new: &Settings) -> Vec<&'static str> {
        // Debug forms compare values that have no `PartialEq` (patterns);
        // the database URL is compared whole because its Debug form hides
        // the password.
        fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
            format!("{a:?}") != format!("{b:?}")
        }
        let (a, b) = (self, new);
        let changed = [
            a.listen != b.listen,
            a.metrics_listen != b.metrics_listen,
            a.tls.listen != b.tls.listen,
            a.threads != b.threads,
            a.read_buffer_bytes != b.read_buffer_bytes,
            a.upgrade_sock != b.upgrade_sock,
            a.shutdown.drain != b.shutdown.drain,
            a.database.url != b.database.url || differs(&a.database, &b.database),
            a.agent_service.dialect != b.agent_service.dialect,
            a.agent_service.url != b.agent_service.url,
            a.mapping.cache_capacity != b.mapping.cache_capacity,
            a.mapping.cache_ttl != b.mapping.cache_ttl,
            a.mapping.reconcile_interval != b.mapping.reconcile_interval,
            a.mapping.reconcile_delete != b.mapping.reconcile_delete,
            a.mapping.orphan_min_age != b.mapping.orphan_min_age,
            differs(&a.users, &b.users),
        ];
        RESTART_ONLY
            .iter()
            .zip(changed)
            .filter_map(|(key, changed)| changed.then_some(*key))
            .collect()
    }
}
