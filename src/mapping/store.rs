//! What the chat flow needs from the database: the user → agent mapping
//! and the per-user chat leases, two traits over one SQL store. Every
//! operation is one atomic SQL statement, so a crash or a disconnect in the
//! middle of a chat leaves the old state or the new one, never a mix.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::GatewayResult;
use crate::ids::{AgentId, UserNumber};

#[async_trait]
pub trait MappingStore: Send + Sync {
    async fn get(&self, user: &UserNumber) -> GatewayResult<Option<AgentId>>;

    /// Stores `agent` for `user` unless a mapping exists; returns the agent
    /// that is mapped afterwards (the caller's, or the one that won the race).
    async fn claim(&self, user: &UserNumber, agent: &AgentId) -> GatewayResult<AgentId>;

    /// Compare-and-swap: maps `user` to `new` only while it still maps to
    /// `old`. Returns the agent mapped afterwards.
    async fn replace(
        &self,
        user: &UserNumber,
        old: &AgentId,
        new: &AgentId,
    ) -> GatewayResult<Option<AgentId>>;

    /// Removes the mapping; returns the agent it pointed to.
    async fn delete(&self, user: &UserNumber) -> GatewayResult<Option<AgentId>>;

    /// Cheap round trip for `/readyz`.
    async fn ping(&self) -> GatewayResult<()>;

    /// The connection pool's use, for the saturation gauges.
    fn pool_stats(&self) -> Option<PoolStats> {
        None
    }
}

/// Connections of a database pool.
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolStats {
    pub in_use: u32,
    pub idle: u32,
    pub max: u32,
}

/// Cluster-wide "one chat at a time per user" (see `lease.rs`).
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes the user's chat lease for `holder` when it is free or expired;
    /// true when `holder` now has it.
    async fn try_lease(
        &self,
        user: &UserNumber,
        holder: &str,
        ttl: Duration,
    ) -> GatewayResult<bool>;

    /// Extends every lease whose holder starts with `holder_prefix` (one
    /// process's leases); returns how many it extended. A lease that expired
    /// and was taken by another holder is not among them.
    async fn renew_leases(&self, holder_prefix: &str, ttl: Duration) -> GatewayResult<u64>;

    async fn release_lease(&self, user: &UserNumber, holder: &str) -> GatewayResult<()>;
}
