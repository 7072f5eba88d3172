//! End-to-end tests: the real binary over HTTP on loopback, against real
//! PostgreSQL and SQLite, with the bundled simulator in both dialects.
//! One test binary keeps link time down on small machines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod gateway {
    pub mod adoption;
    pub mod agent_failures;
    pub mod bad_input;
    pub mod chat_modes;
    pub mod cli;
    pub mod concurrency;
    pub mod deploy;
    pub mod differential;
    pub mod docs;
    pub mod embed;
    pub mod faults;
    pub mod fidelity;
    pub mod h2_abuse;
    pub mod live_ops;
    pub mod monitoring;
    pub mod native_routes;
    pub mod observability;
    pub mod orphans;
    pub mod otlp;
    pub mod passthrough;
    pub mod paths;
    pub mod pg_server;
    pub mod pgbouncer;
    pub mod redis_cluster;
    pub mod replica_death;
    pub mod scale_out;
    pub mod security;
    pub mod shared_limits;
    pub mod support;
    pub mod tls;
    pub mod turns;
}
