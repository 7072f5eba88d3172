//! The embedded migrations, and migrating: over a session of its own (the
//! direct URL through a transaction pooler), or only checking through the
//! pooler when there is no direct URL.

use std::str::FromStr;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::SqlitePoolOptions;

use super::{Pool, SqlStore, adopt, pg_options, sqlite_options};
use crate::settings::{DatabaseSettings, DatabaseUrl};

/// One embedded migration file: version, description, SQL.
type Embedded = (i64, &'static str, &'static str);

/// The files under `migrations/`, embedded as `sqlx::migrate!` would embed
/// them (same versions, descriptions and checksums, so databases migrated
/// before keep validating), without its proc-macro crate in the build.
const PG_MIGRATIONS: &[Embedded] = &[
    (
        20261125000001,
        "user agents",
        include_str!("../../../migrations/postgres/20261125000001_user_agents.sql"),
    ),
    (
        20261125000002,
        "chat leases",
        include_str!("../../../migrations/postgres/20261125000002_chat_leases.sql"),
    ),
    (
        20261127000001,
        "chat records",
        include_str!("../../../migrations/postgres/20261127000001_chat_records.sql"),
    ),
    (
        20261207000001,
        "lease messages",
        include_str!("../../../migrations/postgres/20261207000001_lease_messages.sql"),
    ),
];
const SQLITE_MIGRATIONS: &[Embedded] = &[
    (
        20261125000001,
        "user agents",
        include_str!("../../../migrations/sqlite/20261125000001_user_agents.sql"),
    ),
    (
        20261125000002,
        "chat leases",
        include_str!("../../../migrations/sqlite/20261125000002_chat_leases.sql"),
    ),
    (
        20261127000001,
        "chat records",
        include_str!("../../../migrations/sqlite/20261127000001_chat_records.sql"),
    ),
    (
        20261207000001,
        "lease messages",
        include_str!("../../../migrations/sqlite/20261207000001_lease_messages.sql"),
    ),
];

fn migrator(files: &[Embedded]) -> Migrator {
    Migrator::with_migrations(
        files
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    sqlx::SqlStr::from_static(sql),
                    false,
                )
            })
            .collect(),
    )
}

impl SqlStore {
    /// Creates the PostgreSQL schema when configured, applies the
    /// migrations of the configured database, and brings a `user_agents`
    /// table the gateway did not create to its schema (`adopt.rs`).
    pub async fn migrate(cfg: &DatabaseSettings) -> Result<(), Box<dyn std::error::Error>> {
        match &cfg.url {
            DatabaseUrl::Postgres(_) => {
                // Migrations hold a session advisory lock: through a
                // transaction pooler it would outlive the migration on a
                // pooled server connection (sqlx's known deadlock).
                let Some(DatabaseUrl::Postgres(url)) = cfg.session_url() else {
                    return Self::connect_lazy(cfg)?.verify_migrated().await;
                };
                if let Some(schema) = &cfg.schema {
                    create_schema(url, schema).await?;
                }
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(pg_options(cfg, url)?)
                    .await?;
                migrator(PG_MIGRATIONS).run(&pool).await?;
                let adopted = adopt::conform_postgres(&pool).await;
                pool.close().await;
                adopted?;
            }
            DatabaseUrl::Sqlite(url) => {
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(sqlite_options(cfg, url)?)
                    .await?;
                migrator(SQLITE_MIGRATIONS).run(&pool).await?;
                let adopted = adopt::conform_sqlite(&pool).await;
                pool.close().await;
                adopted?;
            }
        }
        Ok(())
    }
}

impl SqlStore {
    /// Through a transaction pooler without `direct_url`: nothing can be
    /// migrated, so start only if nothing needs to be.
    async fn verify_migrated(&self) -> Result<(), Box<dyn std::error::Error>> {
        let applied: Vec<i64> = on_pool!(self, |p| match self
            .query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(p)
            .await
        {
            Ok(applied) => applied,
            // 42P01: no migrations table, so none applied.
            Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42P01") => {
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        });
        let pending = PG_MIGRATIONS
            .iter()
            .filter(|(version, ..)| !applied.contains(version))
            .count();
        self.close().await;
        if pending == 0 {
            return Ok(());
        }
        Err(format!(
            "{pending} migration(s) not applied, and database.url goes through a transaction \
             pooler (database.statement_cache: 0), which cannot hold the lock migrations take: \
             set database.direct_url (DATABASE_DIRECT_URL) to a direct PostgreSQL URL"
        )
        .into())
    }
}

async fn create_schema(url: &str, schema: &str) -> Result<(), sqlx::Error> {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(PgConnectOptions::from_str(url)?)
        .await?;
    // Concurrent starters may race on CREATE SCHEMA; the loser's unique
    // violation means the schema exists, which is the goal.
    let create = sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {schema}"));
    if let Err(e) = sqlx::query(create).execute(&admin).await {
        let exists = e
            .as_database_error()
            .is_some_and(|d| d.is_unique_violation());
        if !exists {
            return Err(e);
        }
    }
    admin.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A migration file added under `migrations/` but not embedded would
    /// never run: the embedded lists must be exactly the directories.
    #[test]
    fn every_migration_file_is_embedded() {
        for (dir, embedded) in [("postgres", PG_MIGRATIONS), ("sqlite", SQLITE_MIGRATIONS)] {
            let mut files: Vec<_> = std::fs::read_dir(format!("migrations/{dir}"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            assert_eq!(files.len(), embedded.len(), "{dir}");
            for (path, &(version, description, sql)) in files.iter().zip(embedded) {
                let name = path.file_stem().unwrap().to_str().unwrap();
                let (v, d) = name.split_once('_').unwrap();
                assert_eq!(v.parse::<i64>().unwrap(), version, "{name}");
                assert_eq!(d.replace('_', " "), description, "{name}");
                assert_eq!(std::fs::read_to_string(path).unwrap(), sql, "{name}");
            }
        }
    }
}
