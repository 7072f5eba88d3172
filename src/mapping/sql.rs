//! The one SQL store, for PostgreSQL and SQLite: the same statements and
//! logic, with the database's clock written in each dialect.
//!
//! With SQLite the guarantees hold for the gateway processes sharing the
//! file on one host: each statement is atomic and writers are serialised by
//! SQLite's lock.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::database::HasStatementCache;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Database, FromRow, Row, SqlSafeStr};

use super::store::{MappedRow, MappingStore};
use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::ids::{AgentId, UserNumber};
use crate::settings::{DatabaseSettings, DatabaseUrl};

enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Runs the same sqlx expression on whichever pool a store has: the
/// statements are written once, and sqlx's types differ per database.
///
/// Through a transaction pooler (`statement_cache: 0`) the expression runs
/// in a transaction of its own. sqlx parses a statement and executes it in
/// two exchanges, each ending in a Sync; between them, outside a
/// transaction, PgBouncer may hand the next exchange to another server
/// connection, where the unnamed statement does not exist (or is another
/// client's). Inside a transaction it keeps the server connection.
macro_rules! on_pool {
    ($store:expr, |$p:ident| $body:expr) => {
        match (&$store.pool, &$store.pooler_begin) {
            (Pool::Postgres(pool), Some(begin)) => {
                let mut tx = pool.begin_with(sqlx::AssertSqlSafe(begin.as_str())).await?;
                let $p = &mut *tx;
                let out = $body;
                tx.commit().await?;
                out
            }
            (Pool::Postgres($p), None) => $body,
            (Pool::Sqlite($p), _) => $body,
        }
    };
}

pub(crate) mod admin;
mod adopt;
mod leases;
mod migrate;
mod records;

/// What differs between the dialects: the clock, and a row's creation time.
struct Dialect {
    /// The database's current time in Unix milliseconds.
    now_ms: &'static str,
    /// `user_agents.created_at` in Unix milliseconds (NULL when unknown).
    created_ms: &'static str,
    /// `user_agents.created_at` and `updated_at` as RFC 3339 UTC text.
    created_text: &'static str,
    updated_text: &'static str,
    /// A timestamp parameter `$N` as the column stores it (NULL stays NULL).
    stored_time: fn(usize) -> String,
}

const POSTGRES: Dialect = Dialect {
    now_ms: "(extract(epoch from clock_timestamp()) * 1000)::bigint",
    created_ms: "(extract(epoch from created_at) * 1000)::bigint",
    created_text: "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
    updated_text: "to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
    stored_time: |n| format!("CAST(${n} AS TIMESTAMPTZ)"),
};

const SQLITE: Dialect = Dialect {
    now_ms: "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
    created_ms: "CAST((julianday(created_at) - 2440587.5) * 86400000 AS INTEGER)",
    created_text: "strftime('%Y-%m-%dT%H:%M:%SZ', created_at)",
    updated_text: "strftime('%Y-%m-%dT%H:%M:%SZ', updated_at)",
    // CURRENT_TIMESTAMP's own form, so stored times compare as text.
    stored_time: |n| format!("strftime('%Y-%m-%d %H:%M:%S', ${n})"),
};

/// The statements, in the dialect. Both dialects accept `$n` parameters,
/// `EXCLUDED` and `RETURNING`.
struct Statements {
    get: String,
    try_lease: String,
    renew_leases: String,
    sending: String,
    sent_message: String,
    take_over: String,
    records: records::Sql,
    admin: admin::Sql,
}

impl Statements {
    fn new(d: &Dialect) -> Self {
        let now_ms = d.now_ms;
        Self {
            // Both spellings of the number ($1 canonical, $2 with '+'):
            // an adopted table keeps them as its frontend sent them.
            get: format!(
                "SELECT user_number, agent_id, {} FROM user_agents WHERE user_number IN ($1, $2)",
                d.created_ms
            ),
            // The database's clock decides expiry, so replicas need not agree on time.
            // An expired lease whose message has an id is not free: its
            // holder may be alive and stalled while the agent works on that
            // message; a waiter polls it instead (`sent_message`,
            // `take_over`). One still being sent ('') expires as before: a
            // synchronous or streamed send has no id to poll until it ends;
            // so does one recorded by an earlier holder (left behind by a
            // replica that does not know these columns).
            try_lease: format!(
                "INSERT INTO chat_leases (user_number, holder, expires_at_ms) \
                 VALUES ($1, $2, {now_ms} + $3) \
                 ON CONFLICT (user_number) DO UPDATE \
                 SET holder = EXCLUDED.holder, expires_at_ms = EXCLUDED.expires_at_ms, \
                 agent_id = NULL, message_id = NULL, sent_at_ms = NULL, message_holder = NULL \
                 WHERE chat_leases.expires_at_ms < {now_ms} \
                 AND (chat_leases.message_id IS NULL OR chat_leases.message_id = '' \
                 OR COALESCE(chat_leases.message_holder, '') <> chat_leases.holder) \
                 RETURNING holder"
            ),
            sending: format!(
                "UPDATE chat_leases SET agent_id = $3, message_id = '', sent_at_ms = {now_ms}, \
                 message_holder = $2 WHERE user_number = $1 AND holder = $2"
            ),
            sent_message: format!(
                "SELECT holder, agent_id, message_id, {now_ms} - sent_at_ms FROM chat_leases \
                 WHERE user_number = $1 AND message_id <> '' AND message_holder = holder"
            ),
            take_over: format!(
                "UPDATE chat_leases SET holder = $3, expires_at_ms = {now_ms} + $4, \
                 agent_id = NULL, message_id = NULL, sent_at_ms = NULL, message_holder = NULL \
                 WHERE user_number = $1 AND holder = $2 AND message_holder = $2 AND message_id = $5"
            ),
            renew_leases: format!(
                "UPDATE chat_leases SET expires_at_ms = {now_ms} + $2 WHERE holder LIKE $1"
            ),
            records: records::Sql::new(now_ms),
            admin: admin::Sql::new(d),
        }
    }
}

// The timestamps are written by each statement rather than left to column
// defaults: an adopted SQLite table gets its columns without one.
//
// The no-op update makes RETURNING yield the existing row on conflict, so
// the winner is known in the same statement.
const CLAIM: &str = "INSERT INTO user_agents (user_number, agent_id, created_at, updated_at) \
     VALUES ($1, $2, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP) \
     ON CONFLICT (user_number) DO UPDATE SET user_number = EXCLUDED.user_number \
     RETURNING agent_id";
const REPLACE: &str = "UPDATE user_agents SET agent_id = $3, updated_at = CURRENT_TIMESTAMP \
     WHERE user_number IN ($1, $4) AND agent_id = $2 RETURNING agent_id";
const PING: &str = "SELECT 1 FROM user_agents WHERE user_number = $1";
const DELETE: &str = "DELETE FROM user_agents WHERE user_number IN ($1, $2) RETURNING agent_id";

pub struct SqlStore {
    pool: Pool,
    sql: Statements,
    /// PostgreSQL: the channel told of every deleted or replaced mapping
    /// (see `invalidation.rs`).
    channel: Option<String>,
    /// Through a transaction pooler: what begins each call's transaction
    /// (`BEGIN`, and the schema as `SET LOCAL search_path`, which a pooler
    /// cannot carry as a connection option). See `on_pool!`.
    pooler_begin: Option<String>,
    /// Whether statements are named and cached per connection: not through
    /// a transaction pooler, where a name prepared on one server connection
    /// is found (or missed) by another client on the next.
    persistent: bool,
}

// PostgreSQL: the change and its notification in one statement, so other
// replicas hear of exactly the changes that were committed.
const PG_DELETE_NOTIFY: &str = "WITH gone AS (DELETE FROM user_agents WHERE user_number IN ($1, $2) RETURNING agent_id) \
     SELECT agent_id, pg_notify($3, $1)::text AS notified FROM gone";
const PG_REPLACE_NOTIFY: &str = "WITH swapped AS (UPDATE user_agents SET agent_id = $3, updated_at = CURRENT_TIMESTAMP \
     WHERE user_number IN ($1, $4) AND agent_id = $2 RETURNING agent_id) \
     SELECT agent_id, pg_notify($5, $1)::text AS notified FROM swapped";

/// A session's options: the schema as the connection's `search_path`.
fn pg_options(cfg: &DatabaseSettings, url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let mut opts = PgConnectOptions::from_str(url)?;
    if let Some(schema) = &cfg.schema {
        // Validated at start-up to [a-z0-9_], so it needs no quoting.
        opts = opts.options([("search_path", schema.as_str())]);
    }
    Ok(opts)
}

/// The pool's options. Through a transaction pooler the connection carries
/// no startup parameter PgBouncer refuses by default (`options`,
/// `extra_float_digits`: "unsupported startup parameter"); the schema is
/// set per transaction instead (`pooler_begin`).
fn pg_pool_options(cfg: &DatabaseSettings, url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    if !cfg.through_transaction_pooler() {
        return Ok(pg_options(cfg, url)?.statement_cache_capacity(cfg.statement_cache));
    }
    Ok(PgConnectOptions::from_str(url)?
        .statement_cache_capacity(0)
        .extra_float_digits(None))
}

/// The statement that begins each call's transaction through a pooler.
fn pooler_begin(cfg: &DatabaseSettings) -> Option<String> {
    cfg.through_transaction_pooler().then(|| match &cfg.schema {
        // Validated at start-up to [a-z0-9_], so it needs no quoting.
        Some(schema) => format!("BEGIN; SET LOCAL search_path TO {schema}"),
        None => "BEGIN".to_owned(),
    })
}

fn sqlite_options(cfg: &DatabaseSettings, url: &str) -> Result<SqliteConnectOptions, sqlx::Error> {
    Ok(SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(cfg.acquire_timeout))
}

/// Statements as this store runs them: named and cached per connection, or
/// unnamed through a transaction pooler (`persistent`).
impl SqlStore {
    fn query<'q, DB>(&self, sql: impl SqlSafeStr) -> Query<'q, DB, DB::Arguments>
    where
        DB: Database + HasStatementCache,
    {
        sqlx::query(sql).persistent(self.persistent)
    }

    fn query_as<'q, DB, O>(&self, sql: impl SqlSafeStr) -> QueryAs<'q, DB, O, DB::Arguments>
    where
        DB: Database + HasStatementCache,
        O: for<'r> FromRow<'r, DB::Row>,
    {
        sqlx::query_as(sql).persistent(self.persistent)
    }

    fn query_scalar<'q, DB, O>(&self, sql: impl SqlSafeStr) -> QueryScalar<'q, DB, O, DB::Arguments>
    where
        DB: Database + HasStatementCache,
        (O,): for<'r> FromRow<'r, DB::Row>,
    {
        sqlx::query_scalar(sql).persistent(self.persistent)
    }
}

impl SqlStore {
    /// The pool's connections now.
    pub fn pool_stats(&self, max: u32) -> super::PoolStats {
        let (size, idle) = match &self.pool {
            Pool::Postgres(p) => (p.size(), p.num_idle()),
            Pool::Sqlite(p) => (p.size(), p.num_idle()),
        };
        let idle = u32::try_from(idle).unwrap_or(u32::MAX);
        super::PoolStats {
            in_use: size.saturating_sub(idle),
            idle,
            max,
        }
    }

    /// Builds the pool without connecting: the gateway starts (and recovers)
    /// while the database is down; routes answer 503 meanwhile.
    pub fn connect_lazy(cfg: &DatabaseSettings) -> Result<Self, sqlx::Error> {
        Ok(match &cfg.url {
            DatabaseUrl::Postgres(url) => Self {
                pool: Pool::Postgres(
                    PgPoolOptions::new()
                        .max_connections(cfg.max_connections)
                        .acquire_timeout(cfg.acquire_timeout)
                        .connect_lazy_with(pg_pool_options(cfg, url)?),
                ),
                sql: Statements::new(&POSTGRES),
                channel: super::invalidation::channel(cfg),
                pooler_begin: pooler_begin(cfg),
                persistent: !cfg.through_transaction_pooler(),
            },
            DatabaseUrl::Sqlite(url) => Self {
                pool: Pool::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(cfg.max_connections)
                        .acquire_timeout(cfg.acquire_timeout)
                        .connect_lazy_with(sqlite_options(cfg, url)?),
                ),
                sql: Statements::new(&SQLITE),
                channel: None,
                pooler_begin: None,
                persistent: true,
            },
        })
    }
}

fn parse_stored(raw: String) -> GatewayResult<AgentId> {
    AgentId::parse(&raw).map_err(|e| {
        tracing::error!(error = %e, "Stored agent id is invalid.");
        GatewayError::new(ErrorKind::Internal, "stored mapping is invalid")
    })
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

fn db_error(e: sqlx::Error) -> GatewayError {
    GatewayError::database(&e)
}

/// The user's numbers as bound to `$1` and `$2`: the canonical spelling, and
/// the `+` one where the pattern takes it (else the canonical again).
fn spellings(user: &UserNumber) -> (&str, String) {
    let plus = user.plus_spelling();
    (
        user.as_str(),
        plus.unwrap_or_else(|| user.as_str().to_owned()),
    )
}

#[async_trait]
impl MappingStore for SqlStore {
    async fn get(&self, user: &UserNumber) -> GatewayResult<Vec<MappedRow>> {
        let (canonical, plus) = spellings(user);
        let sql = sqlx::AssertSqlSafe(self.sql.get.as_str());
        let rows: Vec<(String, String, Option<i64>)> = on_pool!(self, |p| self
            .query(sql)
            .bind(canonical)
            .bind(&plus)
            .fetch_all(p)
            .await
            .map_err(db_error)?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect());
        rows.into_iter()
            .map(|(spelling, agent, created_ms)| {
                Ok(MappedRow {
                    spelling,
                    agent: parse_stored(agent)?,
                    created_ms,
                })
            })
            .collect()
    }

    async fn claim(&self, user: &UserNumber, agent: &AgentId) -> GatewayResult<AgentId> {
        let row: String = on_pool!(self, |p| self
            .query(CLAIM)
            .bind(user.as_str())
            .bind(agent.as_str())
            .fetch_one(p)
            .await
            .map_err(db_error)?
            .get(0));
        parse_stored(row)
    }

    async fn replace(
        &self,
        user: &UserNumber,
        old: &AgentId,
        new: &AgentId,
    ) -> GatewayResult<bool> {
        let (canonical, plus) = spellings(user);
        let (sql, channel) = match &self.channel {
            Some(channel) => (PG_REPLACE_NOTIFY, Some(channel.as_str())),
            None => (REPLACE, None),
        };
        Ok(on_pool!(self, |p| {
            let mut q = self
                .query(sql)
                .bind(canonical)
                .bind(old.as_str())
                .bind(new.as_str())
                .bind(&plus);
            if let Some(channel) = channel {
                q = q.bind(channel);
            }
            q.fetch_optional(p).await.map_err(db_error)?.is_some()
        }))
    }

    async fn delete(&self, user: &UserNumber) -> GatewayResult<Vec<AgentId>> {
        let (canonical, plus) = spellings(user);
        let (sql, channel) = match &self.channel {
            Some(channel) => (PG_DELETE_NOTIFY, Some(channel.as_str())),
            None => (DELETE, None),
        };
        let rows: Vec<String> = on_pool!(self, |p| {
            let mut q = self.query(sql).bind(canonical).bind(&plus);
            if let Some(channel) = channel {
                q = q.bind(channel);
            }
            q.fetch_all(p)
                .await
                .map_err(db_error)?
                .iter()
                .map(|r| r.get(0))
                .collect()
        });
        rows.into_iter().map(parse_stored).collect()
    }

    /// Readiness: a statement on the gateway's own table, run as every
    /// other statement is (so a missing table, a wrong schema or a pooler
    /// that refuses the statements makes the gateway unready).
    async fn ping(&self) -> GatewayResult<()> {
        on_pool!(self, |p| self
            .query(PING)
            .bind("")
            .fetch_optional(p)
            .await
            .map(|_| ())
            .map_err(db_error))
    }
}
