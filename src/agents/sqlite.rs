//! SQLite mapping store: the embedded default, one file, no server.
//!
//! Guarantees hold for the gateway processes sharing that file on one host:
//! each statement is atomic and writers are serialised by SQLite's lock.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use super::store::{MappingStore, parse_stored, ttl_ms};
use crate::config::DatabaseConfig;
use crate::error::{GatewayError, GatewayResult};
use crate::ids::{AgentId, UserNumber};

pub struct SqliteStore {
    pool: SqlitePool,
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

fn options(cfg: &DatabaseConfig) -> Result<SqliteConnectOptions, sqlx::Error> {
    Ok(SqliteConnectOptions::from_str(&cfg.url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_millis(cfg.acquire_timeout_ms)))
}

fn pool_options(cfg: &DatabaseConfig) -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(Duration::from_millis(cfg.acquire_timeout_ms))
}

impl SqliteStore {
    pub fn connect_lazy(cfg: &DatabaseConfig) -> Result<Self, sqlx::Error> {
        Ok(Self {
            pool: pool_options(cfg).connect_lazy_with(options(cfg)?),
        })
    }

    pub async fn migrate(cfg: &DatabaseConfig) -> Result<(), Box<dyn std::error::Error>> {
        let pool = pool_options(cfg)
            .max_connections(1)
            .connect_with(options(cfg)?)
            .await?;
        MIGRATOR.run(&pool).await?;
        pool.close().await;
        Ok(())
    }
}

#[async_trait]
impl MappingStore for SqliteStore {
    async fn get(&self, user: &UserNumber) -> GatewayResult<Option<AgentId>> {
        let row = sqlx::query("SELECT agent_id FROM user_agents WHERE user_number = ?1")
            .bind(user.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| GatewayError::database(&e))?;
        row.map(|r| parse_stored(r.get(0))).transpose()
    }

    async fn claim(&self, user: &UserNumber, agent: &AgentId) -> GatewayResult<AgentId> {
        let row = sqlx::query(
            "INSERT INTO user_agents (user_number, agent_id) VALUES (?1, ?2) \
             ON CONFLICT (user_number) DO UPDATE SET user_number = excluded.user_number \
             RETURNING agent_id",
        )
        .bind(user.as_str())
        .bind(agent.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| GatewayError::database(&e))?;
        parse_stored(row.get(0))
    }

    async fn replace(
        &self,
        user: &UserNumber,
        old: &AgentId,
        new: &AgentId,
    ) -> GatewayResult<Option<AgentId>> {
        let updated = sqlx::query(
            "UPDATE user_agents SET agent_id = ?3, updated_at = CURRENT_TIMESTAMP \
             WHERE user_number = ?1 AND agent_id = ?2",
        )
        .bind(user.as_str())
        .bind(old.as_str())
        .bind(new.as_str())
        .execute(&self.pool)
        .await
        .map_err(|e| GatewayError::database(&e))?;
        if updated.rows_affected() == 1 {
            return Ok(Some(new.clone()));
        }
        self.get(user).await
    }

    async fn delete(&self, user: &UserNumber) -> GatewayResult<Option<AgentId>> {
        let row = sqlx::query("DELETE FROM user_agents WHERE user_number = ?1 RETURNING agent_id")
            .bind(user.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| GatewayError::database(&e))?;
        row.map(|r| parse_stored(r.get(0))).transpose()
    }

    async fn try_lease(
        &self,
        user: &UserNumber,
        holder: &str,
        ttl: Duration,
    ) -> GatewayResult<bool> {
        // SQLite is shared only by processes on one host: its clock is common.
        let now = now_ms();
        let row = sqlx::query(
            "INSERT INTO chat_leases (user_number, holder, expires_at_ms) VALUES (?1, ?2, ?3) \
             ON CONFLICT (user_number) DO UPDATE \
             SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms \
             WHERE chat_leases.expires_at_ms < ?4 \
             RETURNING holder",
        )
        .bind(user.as_str())
        .bind(holder)
        .bind(now.saturating_add(ttl_ms(ttl)))
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| GatewayError::database(&e))?;
        Ok(row.is_some_and(|r| r.get::<String, _>(0) == holder))
    }

    async fn renew_leases(&self, holder_prefix: &str, ttl: Duration) -> GatewayResult<u64> {
        let done = sqlx::query("UPDATE chat_leases SET expires_at_ms = ?2 WHERE holder LIKE ?1")
            .bind(format!("{holder_prefix}%"))
            .bind(now_ms().saturating_add(ttl_ms(ttl)))
            .execute(&self.pool)
            .await
            .map_err(|e| GatewayError::database(&e))?;
        Ok(done.rows_affected())
    }

    async fn release_lease(&self, user: &UserNumber, holder: &str) -> GatewayResult<()> {
        sqlx::query("DELETE FROM chat_leases WHERE user_number = ?1 AND holder = ?2")
            .bind(user.as_str())
            .bind(holder)
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| GatewayError::database(&e))
    }

    async fn ping(&self) -> GatewayResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| GatewayError::database(&e))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
