//! Whose turn it is and which agent is theirs: the user → agent mapping
//! (SQL store and its cache), the per-user lanes and the cluster-wide chat
//! leases.

pub mod cache;
pub(crate) mod duplicates;
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
use crate::metrics;
use crate::settings::DatabaseSettings;
pub(crate) use sql::SqlStore;
pub(crate) use sql::admin as sql_admin;
pub use store::{
    LeaseStore, MappedRow, MappingStore, NewRecord, PoolStats, RecordState, RecordStore,
    SentMessage, StoredRecord,
};

/// Applies the migrations of the configured database (adopting a mapping
/// table the gateway did not create), and warns of numbers stored under
/// more than one spelling.
pub async fn migrate(cfg: &DatabaseSettings) -> Result<(), Box<dyn std::error::Error>> {
    SqlStore::migrate(cfg).await?;
    let store = SqlStore::connect_lazy(cfg)?;
    // Advisory: a pool that cannot answer yet (the database behind a
    // pooler is down) must not stop a start that readiness will report.
    let doubles = match store.count_doubles().await {
        Ok(doubles) => doubles,
        Err(e) => {
            tracing::warn!(error = %e, "Could not count users with more than one mapping row.");
            0
        }
    };
    if doubles > 0 {
        tracing::warn!(
            users = doubles,
            "Users with more than one mapping row (one number under two spellings): each is \
             served by agents.duplicate_policy until resolved. List them with \
             `eai-gateway mappings check`, resolve with `eai-gateway mappings resolve`."
        );
    }
    store.close().await;
    Ok(())
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

impl LazyStore {
    /// One statement of `operation` with a slot: timed (the wait for the
    /// slot excluded) and counted when it fails.
    async fn run<T>(
        &self,
        operation: &'static str,
        statement: impl AsyncFnOnce(&SqlStore) -> GatewayResult<T>,
    ) -> GatewayResult<T> {
        let result = match self.slot().await {
            Ok((_slot, store)) => {
                let started = std::time::Instant::now();
                let result = statement(store).await;
                metrics::DB_STATEMENT_DURATION
                    .with_label_values(&[operation])
                    .observe(started.elapsed().as_secs_f64());
                result
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            metrics::DB_ERRORS.with_label_values(&[operation]).inc();
        }
        result
    }
}

#[async_trait]
impl MappingStore for LazyStore {
    async fn get(&self, user: &UserNumber) -> GatewayResult<Vec<MappedRow>> {
        self.run("get", async |s| s.get(user).await).await
    }
    async fn claim(&self, user: &UserNumber, agent: &AgentId) -> GatewayResult<AgentId> {
        self.run("claim", async |s| s.claim(user, agent).await)
            .await
    }
    async fn replace(
        &self,
        user: &UserNumber,
        old: &AgentId,
        new: &AgentId,
    ) -> GatewayResult<bool> {
        self.run("replace", async |s| s.replace(user, old, new).await)
            .await
    }
    async fn delete(&self, user: &UserNumber) -> GatewayResult<Vec<AgentId>> {
        self.run("delete", async |s| s.delete(user).await).await
    }
    async fn ping(&self) -> GatewayResult<()> {
        self.run("ping", async |s| s.ping().await).await
    }
    fn pool_stats(&self) -> Option<PoolStats> {
        match self.cell.get() {
            Some(Ok(store)) => Some(store.pool_stats(self.cfg.max_connections)),
            _ => None,
        }
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
        self.run("try_lease", async |s| s.try_lease(user, holder, ttl).await)
            .await
    }
    async fn renew_leases(&self, holder_prefix: &str, ttl: Duration) -> GatewayResult<u64> {
        self.run("renew_leases", async |s| {
            s.renew_leases(holder_prefix, ttl).await
        })
        .await
    }
    async fn release_lease(&self, user: &UserNumber, holder: &str) -> GatewayResult<()> {
        self.run("release_lease", async |s| {
            s.release_lease(user, holder).await
        })
        .await
    }
    async fn sending(
        &self,
        user: &UserNumber,
        holder: &str,
        agent: &AgentId,
    ) -> GatewayResult<bool> {
        self.run("lease_message", async |s| {
            s.sending(user, holder, agent).await
        })
        .await
    }
    async fn sent(&self, user: &UserNumber, holder: &str, message_id: &str) -> GatewayResult<()> {
        self.run("lease_message", async |s| {
            s.sent(user, holder, message_id).await
        })
        .await
    }
    async fn sent_message(&self, user: &UserNumber) -> GatewayResult<Option<SentMessage>> {
        self.run("lease_message", async |s| s.sent_message(user).await)
            .await
    }
    async fn take_over(
        &self,
        user: &UserNumber,
        seen: &SentMessage,
        holder: &str,
        ttl: Duration,
    ) -> GatewayResult<bool> {
        self.run("try_lease", async |s| {
            s.take_over(user, seen, holder, ttl).await
        })
        .await
    }
}

#[async_trait]
impl RecordStore for LazyStore {
    async fn begin_record(&self, record: &NewRecord<'_>) -> GatewayResult<Option<StoredRecord>> {
        self.run("begin_record", async |s| s.begin_record(record).await)
            .await
    }
    async fn visible_record(&self, id: &str) -> GatewayResult<Option<StoredRecord>> {
        self.run("read_record", async |s| s.visible_record(id).await)
            .await
    }
    async fn record(&self, id: &str) -> GatewayResult<Option<StoredRecord>> {
        self.run("read_record", async |s| s.record(id).await).await
    }
    async fn expose_record(&self, id: &str) -> GatewayResult<()> {
        self.run("finish_record", async |s| s.expose_record(id).await)
            .await
    }
    async fn finish_record(
        &self,
        id: &str,
        status: u16,
        body: &str,
        visible_for: Duration,
        release_key: bool,
    ) -> GatewayResult<bool> {
        self.run("finish_record", async |s| {
            s.finish_record(id, status, body, visible_for, release_key)
                .await
        })
        .await
    }
    async fn fail_orphan(
        &self,
        id: &str,
        status: u16,
        body: &str,
        visible_for: Duration,
    ) -> GatewayResult<bool> {
        self.run("finish_record", async |s| {
            s.fail_orphan(id, status, body, visible_for).await
        })
        .await
    }
    async fn renew_records(&self, owner: &str, lease: Duration) -> GatewayResult<u64> {
        self.run("renew_records", async |s| {
            s.renew_records(owner, lease).await
        })
        .await
    }
    async fn purge_records(&self) -> GatewayResult<u64> {
        self.run("purge_records", async |s| s.purge_records().await)
            .await
    }
}
