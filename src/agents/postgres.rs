//! PostgreSQL mapping store, optionally confined to one schema.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::store::{MappingStore, parse_stored, ttl_ms};
use crate::config::DatabaseConfig;
use crate::error::{GatewayError, GatewayResult};
use crate::ids::{AgentId, UserNumber};

pub struct PgStore {
    pool: PgPool,
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

fn options(cfg: &DatabaseConfig) -> Result<PgConnectOptions, sqlx::Error> {
    let mut opts = PgConnectOptions::from_str(&cfg.url)?;
    if let Some(schema) = &cfg.schema {
        // Validated at start-up to [a-z0-9_], so it needs no quoting.
        opts = opts.options([("search_path", schema.as_str())]);
    }
    Ok(opts)
}

fn pool_options(cfg: &DatabaseConfig) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(Duration::from_millis(cfg.acquire_timeout_ms))
}

impl PgStore {
    /// Builds the pool without connecting: the gateway starts (and recovers)
    /// while the database is down; routes answer 503 meanwhile.
    pub fn connect_lazy(cfg: &DatabaseConfig) -> Result<Self, sqlx::Error> {
        Ok(Self {
            pool: pool_options(cfg).connect_lazy_with(options(cfg)?),
        })
    }

    /// Creates the schema when configured and applies the migrations.
    pub async fn migrate(cfg: &DatabaseConfig) -> Result<(), Box<dyn std::error::Error>> {
        if let Some(schema) = &cfg.schema {
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(PgConnectOptions::from_str(&cfg.url)?)
                .await?;
            // Concurrent starters may race on CREATE SCHEMA; the loser's
            // unique violation means the schema exists, which is the goal.
            let create = sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {schema}"));
            if let Err(e) = sqlx::query(create).execute(&admin).await {
                let exists = e
                    .as_database_error()
                    .is_some_and(|d| d.is_unique_violation());
                if !exists {
                    return Err(e.into());
                }
            }
            admin.close().await;
        }
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
impl MappingStore for PgStore {
    async fn get(&self, user: &UserNumber) -> GatewayResult<Option<AgentId>> {
        let row = sqlx::query("SELECT agent_id FROM user_agents WHERE user_number = $1")
            .bind(user.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| GatewayError::database(&e))?;
        row.map(|r| parse_stored(r.get(0))).transpose()
    }

    async fn claim(&self, user: &UserNumber, agent: &AgentId) -> GatewayResult<AgentId> {
        // The no-op update makes RETURNING yield the existing row on conflict,
        // so the winner is known in the same statement.
        let row = sqlx::query(
            "INSERT INTO user_agents (user_number, agent_id) VALUES ($1, $2) \
             ON CONFLICT (user_number) DO UPDATE SET user_number = EXCLUDED.user_number \
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
            "UPDATE user_agents SET agent_id = $3, updated_at = now() \
             WHERE user_number = $1 AND agent_id = $2",
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
        let row = sqlx::query("DELETE FROM user_agents WHERE user_number = $1 RETURNING agent_id")
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
        // The database's clock decides expiry, so replicas need not agree on time.
        let row = sqlx::query(
            "INSERT INTO chat_leases (user_number, holder, expires_at_ms) \
             VALUES ($1, $2, (extract(epoch from clock_timestamp()) * 1000)::bigint + $3) \
             ON CONFLICT (user_number) DO UPDATE \
             SET holder = EXCLUDED.holder, expires_at_ms = EXCLUDED.expires_at_ms \
             WHERE chat_leases.expires_at_ms < (extract(epoch from clock_timestamp()) * 1000)::bigint \
             RETURNING holder",
        )
        .bind(user.as_str())
        .bind(holder)
        .bind(ttl_ms(ttl))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| GatewayError::database(&e))?;
        Ok(row.is_some_and(|r| r.get::<String, _>(0) == holder))
    }

    async fn renew_leases(&self, holder_prefix: &str, ttl: Duration) -> GatewayResult<u64> {
        let done = sqlx::query(
            "UPDATE chat_leases SET expires_at_ms = (extract(epoch from clock_timestamp()) * 1000)::bigint + $2 \
             WHERE holder LIKE $1",
        )
        .bind(format!("{holder_prefix}%"))
        .bind(ttl_ms(ttl))
        .execute(&self.pool)
        .await
        .map_err(|e| GatewayError::database(&e))?;
        Ok(done.rows_affected())
    }

    async fn release_lease(&self, user: &UserNumber, holder: &str) -> GatewayResult<()> {
        sqlx::query("DELETE FROM chat_leases WHERE user_number = $1 AND holder = $2")
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
