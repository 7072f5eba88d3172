//! The user → agent mapping. Every operation is one atomic SQL statement, so a
//! crash or a disconnect in the middle of a chat leaves the old mapping or the
//! new one, never a mix.

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

    /// Takes the user's cluster-wide chat lease for `holder` when it is free
    /// or expired; true when `holder` now has it.
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

    /// Cheap round trip for `/readyz`.
    async fn ping(&self) -> GatewayResult<()>;
}

pub(crate) fn parse_stored(raw: String) -> GatewayResult<AgentId> {
    AgentId::parse(&raw).map_err(|e| {
        tracing::error!(error = %e, "Stored agent id is invalid.");
        crate::error::GatewayError::new(
            crate::error::ErrorKind::Internal,
            "stored mapping is invalid",
        )
    })
}

pub(crate) fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}
