//! Where the user → agent mapping lives: the SQL stores behind one trait.

pub mod cache;
pub mod lanes;
pub mod lease;
pub mod postgres;
pub mod sqlite;
pub mod store;

use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::config::DatabaseConfig;
use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::ids::{AgentId, UserNumber};
pub use store::MappingStore;

/// Applies the migrations of the configured database.
pub async fn migrate(cfg: &DatabaseConfig) -> Result<(), Box<dyn std::error::Error>> {
    if cfg.url.starts_with("sqlite:") {
        sqlite::SqliteStore::migrate(cfg).await
    } else {
        postgres::PgStore::migrate(cfg).await
    }
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
    cfg: DatabaseConfig,
    cell: OnceLock<Result<Box<dyn MappingStore>, String>>,
    slots: Semaphore,
    wait: Duration,
}

impl LazyStore {
    pub fn new(cfg: DatabaseConfig) -> Self {
        Self {
            slots: Semaphore::new(cfg.max_connections as usize),
            wait: Duration::from_millis(cfg.acquire_timeout_ms),
            cfg,
            cell: OnceLock::new(),
        }
    }

    /// The store and a slot to use it, within the acquire timeout (else 503).
    async fn slot(&self) -> GatewayResult<(SemaphorePermit<'_>, &dyn MappingStore)> {
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

    fn store(&self) -> GatewayResult<&dyn MappingStore> {
        let built = self.cell.get_or_init(|| {
            let store: Result<Box<dyn MappingStore>, sqlx::Error> =
                if self.cfg.url.starts_with("sqlite:") {
                    sqlite::SqliteStore::connect_lazy(&self.cfg).map(|s| Box::new(s) as _)
                } else {
                    postgres::PgStore::connect_lazy(&self.cfg).map(|s| Box::new(s) as _)
                };
            store.map_err(|e| e.to_string())
        });
        match built {
            Ok(store) => Ok(store.as_ref()),
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
    async fn ping(&self) -> GatewayResult<()> {
        let (_slot, store) = self.slot().await?;
        store.ping().await
    }
}
