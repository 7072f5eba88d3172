//! Whose turn it is and which agent is theirs: the user → agent mapping
//! (SQL store and its cache), the per-user lanes and the cluster-wide chat
//! leases.

pub mod cache;
pub(crate) mod invalidation;
pub(crate) mod lanes;
pub(crate) mod lease;
mod sql;
mod store;

use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::ids::{AgentId, UserNumber};
use crate::settings::DatabaseSettings;
use sql::SqlStore;
pub use store::{LeaseStore, MappingStore};

/// Applies the migrations of the configured database.
pub async fn migrate(cfg: &DatabaseSettings) -> Result<(), Box<dyn std::error::Error>> {
    SqlStore::migrate(cfg).await
}

/// The configured store, built on first use. sqlx pools spawn maintenance
/// tasks on the runtime that creates them, and Pingora gives each service its
/// own runtime, so the pool must be born inside the proxy's runtime.
///
/// Statements wait for one of `max_connections` slots here before they reach
/// sqlx: a statement queued inside sqlx's pool holds about 4 KB of boxed
/// state, one queued here a few bytes, and a burst of thousands of new chats
/// queues thousands of statements.
pub struct LazyStore {
    cfg: DatabaseSettings,
    cell: OnceLock<Result<SqlStore, String>>,
    slots: Semaphore,
    wait: Duration,
}

impl LazyStore {
    pub fn new(cfg: &DatabaseSettings) -> Self {
        Self {
            slots: Semaphore::new(cfg.max_connections as usize),
            wait: cfg.acquire_timeout,
            cfg: cfg.clone(),
            cell: OnceLock::new(),
        }
    }

    /// The store and a slot to use it, within the acquire timeout (else 503).
    async fn slot(&self) -> GatewayResult<(SemaphorePermit<'_>, &SqlStore)> {
        let store = self.store()?;
        match tokio::time::timeout(self.wait, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok((permit, store)),
            _ => {
                tracing::warn!("No database connection became free in time.");
                Err(GatewayError::new(
                    ErrorKind::DatabaseUnavailable,
                    "database unavailable",
                ))
            }
        }
    }

    fn store(&self) -> GatewayResult<&SqlStore> {
        let built = self
            .cell
            .get_or_init(|| SqlStore::connect_lazy(&self.cfg).map_err(|e| e.to_string()));
        match built {
            Ok(store) => Ok(store),
            Err(e) => {
                tracing::error!(error = %e, "Database pool could not be built.");
                Err(GatewayError::new(
                    ErrorKind::DatabaseUnavailable,
                    "database unavailable",
                ))
            }
        }
    }
}

#[async_trait]
impl MappingStore for LazyStore {
    async fn get(&self, user: &UserNumber) -> GatewayResult<Option<AgentId>> {
        let (_slot, store) = self.slot().await?;
        store.get(user).await
    }
    async fn claim(&self, user: &UserNumber, agent: &AgentId) -> GatewayResult<AgentId> {
        let (_slot, store) = self.slot().await?;
        store.claim(user, agent).await
    }
    async fn replace(
        &self,
        user: &UserNumber,
        old: &AgentId,
        new: &AgentId,
    ) -> GatewayResult<Option<AgentId>> {
        let (_slot, store) = self.slot().await?;
        store.replace(user, old, new).await
    }
    async fn delete(&self, user: &UserNumber) -> GatewayResult<Option<AgentId>> {
        let (_slot, store) = self.slot().await?;
        store.delete(user).await
    }
    async fn ping(&self) -> GatewayResult<()> {
        let (_slot, store) = self.slot().await?;
        store.ping().await
    }
}

#[async_trait]
impl LeaseStore for LazyStore {
    async fn try_lease(
        &self,
        user: &UserNumber,
        holder: &str,
        ttl: Duration,
    ) -> GatewayResult<bool> {
        let (_slot, store) = self.slot().await?;
        store.try_lease(user, holder, ttl).await
    }
    async fn renew_leases(&self, holder_prefix: &str, ttl: Duration) -> GatewayResult<u64> {
        let (_slot, store) = self.slot().await?;
        store.renew_leases(holder_prefix, ttl).await
    }
    async fn release_lease(&self, user: &UserNumber, holder: &str) -> GatewayResult<()> {
        let (_slot, store) = self.slot().await?;
        store.release_lease(user, holder).await
    }
}
