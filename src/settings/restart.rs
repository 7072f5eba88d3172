//! Which keys a running gateway can take on SIGHUP and which need a new
//! process: everything that shapes the listeners and runtimes, and
//! everything that identifies stored state (the database, the agent service
//! the stored agent ids belong to, the pseudonym key that names agents).

use super::Settings;

/// A key that applies only at start-up, with how its values are compared:
/// one entry holds both, so that a key cannot be listed without being
/// compared, or compared under another key's name.
pub struct RestartOnly {
    /// Dotted key; a section's name stands for every key in it, so that a
    /// key added to the section is compared without being listed here.
    pub key: &'static str,
    unchanged: fn(&Settings, &Settings) -> bool,
}

const fn key(key: &'static str, unchanged: fn(&Settings, &Settings) -> bool) -> RestartOnly {
    RestartOnly { key, unchanged }
}

/// Keys that apply only at start-up; a reload that changes one is refused.
/// docs/configuration.md marks the same keys. Sections are
/// compared with `PartialEq`, which compares their secrets (the database
/// URL, the pseudonym key) by digest and never formats them.
pub const RESTART_ONLY: &[RestartOnly] = &[
    key("listen", |a, b| a.listen == b.listen),
    key("metrics_listen", |a, b| {
        a.metrics_listen == b.metrics_listen
    }),
    key("tls.listen", |a, b| a.tls.listen == b.tls.listen),
    key("threads", |a, b| a.threads == b.threads),
    key("read_buffer_bytes", |a, b| {
        a.read_buffer_bytes == b.read_buffer_bytes
    }),
    key("upgrade_sock", |a, b| a.upgrade_sock == b.upgrade_sock),
    key("shutdown.drain_seconds", |a, b| {
        a.shutdown.drain == b.shutdown.drain
    }),
    key("database", |a, b| a.database == b.database),
    key("agent_service.dialect", |a, b| {
        a.agent_service.dialect == b.agent_service.dialect
    }),
    key("agent_service.url", |a, b| {
        a.agent_service.url == b.agent_service.url
    }),
    key("agents.cache_capacity", |a, b| {
        a.mapping.cache_capacity == b.mapping.cache_capacity
    }),
    key("agents.cache_ttl_seconds", |a, b| {
        a.mapping.cache_ttl == b.mapping.cache_ttl
    }),
    key("agents.reconcile_interval_seconds", |a, b| {
        a.mapping.reconcile_interval == b.mapping.reconcile_interval
    }),
    key("agents.reconcile_delete", |a, b| {
        a.mapping.reconcile_delete == b.mapping.reconcile_delete
    }),
    key("agents.orphan_min_age_seconds", |a, b| {
        a.mapping.orphan_min_age == b.mapping.orphan_min_age
    }),
    key("users", |a, b| a.users == b.users),
    // The exporter, its queue and the sampler are built once with the
    // process (and the `OTEL_*` variables are the process's own): a swap
    // would strand the spans already queued for the old collector.
    key("tracing", |a, b| a.tracing == b.tracing),
];

impl Settings {
    /// The restart-only keys whose value differs in `new`, by name, in
    /// the order of `RESTART_ONLY`.
    pub fn restart_only_changes(&self, new: &Settings) -> Vec<&'static str> {
        RESTART_ONLY
            .iter()
            .filter(|k| !(k.unchanged)(self, new))
            .map(|k| k.key)
            .collect()
    }
}
