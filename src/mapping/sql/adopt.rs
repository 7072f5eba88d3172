//! Adopting a `user_agents` table the gateway did not create: the service it
//! replaces may have kept one for months. The migrations skip an existing
//! table (`CREATE TABLE IF NOT EXISTS`), so this step brings it to the
//! gateway's schema in place, after every migration run:
//!
//! - the `created_at` and `updated_at` columns are added when missing, with
//!   defaults, so the old service's own inserts keep working (rollback);
//! - a unique index on `user_number` is added when none exists (the
//!   gateway's claim relies on it);
//! - nothing is dropped, renamed or rewritten: rows, other columns and
//!   indexes stay, and stored spellings stay as they are (the lookups find
//!   every spelling, `duplicates.rs`).
//!
//! Each change is logged; a table the gateway made needs none and logs
//! nothing. The changes run in one transaction: all or none.

use sqlx::{PgPool, Row, SqlitePool};

/// Columns the lookups need, with a reason an operator can act on.
const NEEDED: [&str; 2] = ["user_number", "agent_id"];

const TIMESTAMPS: [&str; 2] = ["created_at", "updated_at"];

fn not_adoptable(what: String) -> Box<dyn std::error::Error> {
    format!(
        "the existing table user_agents cannot be adopted: {what}; \
         move it aside or give the gateway its own database.schema"
    )
    .into()
}

/// What was changed, one line each, for the log.
type Changes = Vec<String>;

fn log(changes: &Changes, rows: i64) {
    if changes.is_empty() {
        return;
    }
    tracing::warn!(
        rows,
        "Adopted an existing user_agents table: its rows and indexes are kept, and the old \
         service can still read and write it."
    );
    for change in changes {
        tracing::warn!(change = %change, "user_agents adopted");
    }
}

pub(super) async fn conform_postgres(pool: &PgPool) -> Result<(), Box<dyn std::error::Error>> {
    let mut tx = pool.begin().await?;
    let columns: Vec<(String, String)> = sqlx::query(
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = 'user_agents'",
    )
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    for needed in NEEDED {
        match columns.iter().find(|(name, _)| name == needed) {
            None => return Err(not_adoptable(format!("it has no column {needed}"))),
            Some((_, kind))
                if !matches!(kind.as_str(), "text" | "character varying" | "character") =>
            {
                return Err(not_adoptable(format!(
                    "its column {needed} is of type {kind}, not text"
                )));
            }
            Some(_) => {}
        }
    }
    let mut changes = Changes::new();
    for column in TIMESTAMPS {
        if !columns.iter().any(|(name, _)| name == column) {
            let add = format!(
                "ALTER TABLE user_agents ADD COLUMN IF NOT EXISTS {column} \
                 TIMESTAMPTZ NOT NULL DEFAULT now()"
            );
            sqlx::query(sqlx::AssertSqlSafe(add))
                .execute(&mut *tx)
                .await?;
            changes.push(format!(
                "added column {column} TIMESTAMPTZ NOT NULL DEFAULT now() \
                 (existing rows carry the time of adoption)"
            ));
        }
    }
    let unique: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0] \
         WHERE c.relname = 'user_agents' AND n.nspname = current_schema() \
         AND i.indisunique AND i.indnatts = 1 AND i.indpred IS NULL \
         AND a.attname = 'user_number' LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    if unique.is_none() {
        add_unique_index(&mut tx).await?;
        changes.push("added unique index user_agents_user_number_unique (user_number)".into());
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM user_agents")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    log(&changes, rows);
    Ok(())
}

pub(super) async fn conform_sqlite(pool: &SqlitePool) -> Result<(), Box<dyn std::error::Error>> {
    let mut tx = pool.begin().await?;
    let columns: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pragma_table_info('user_agents')")
            .fetch_all(&mut *tx)
            .await?;
    for needed in NEEDED {
        if !columns.iter().any(|name| name == needed) {
            return Err(not_adoptable(format!("it has no column {needed}")));
        }
    }
    let mut changes = Changes::new();
    let mut added = false;
    for column in TIMESTAMPS {
        if !columns.iter().any(|name| name == column) {
            // SQLite adds no column with a non-constant default: the column
            // is filled now, and a trigger stamps rows inserted without it.
            let add = format!("ALTER TABLE user_agents ADD COLUMN {column} TEXT");
            sqlx::query(sqlx::AssertSqlSafe(add))
                .execute(&mut *tx)
                .await?;
            let fill = format!("UPDATE user_agents SET {column} = CURRENT_TIMESTAMP");
            sqlx::query(sqlx::AssertSqlSafe(fill))
                .execute(&mut *tx)
                .await?;
            changes.push(format!(
                "added column {column} TEXT (existing rows carry the time of adoption)"
            ));
            added = true;
        }
    }
    if added {
        sqlx::query(
            "CREATE TRIGGER IF NOT EXISTS user_agents_stamp AFTER INSERT ON user_agents \
             FOR EACH ROW WHEN NEW.created_at IS NULL OR NEW.updated_at IS NULL BEGIN \
             UPDATE user_agents SET created_at = COALESCE(NEW.created_at, CURRENT_TIMESTAMP), \
             updated_at = COALESCE(NEW.updated_at, CURRENT_TIMESTAMP) \
             WHERE user_number = NEW.user_number; END",
        )
        .execute(&mut *tx)
        .await?;
        changes.push(
            "added trigger user_agents_stamp (stamps rows inserted without timestamps)".into(),
        );
    }
    let unique: Option<String> = sqlx::query_scalar(
        "SELECT il.name FROM pragma_index_list('user_agents') il \
         JOIN pragma_index_info(il.name) ii \
         WHERE il.\"unique\" = 1 AND il.partial = 0 \
         GROUP BY il.name HAVING count(*) = 1 AND max(ii.name) = 'user_number' LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    if unique.is_none() {
        add_unique_index(&mut tx).await?;
        changes.push("added unique index user_agents_user_number_unique (user_number)".into());
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM user_agents")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    log(&changes, rows);
    Ok(())
}

/// The index the claim's `ON CONFLICT (user_number)` needs. Two rows with
/// the very same number make it impossible: that is said, and nothing changes.
async fn add_unique_index<DB: sqlx::Database>(
    tx: &mut sqlx::Transaction<'_, DB>,
) -> Result<(), Box<dyn std::error::Error>>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
{
    sqlx::query(
        "CREATE UNIQUE INDEX IF NOT EXISTS user_agents_user_number_unique \
         ON user_agents (user_number)",
    )
    .execute(&mut **tx)
    .await
    .map_err(|e| {
        not_adoptable(format!(
            "a unique index on user_number could not be added ({e}); \
             rows with the very same user_number must be merged first"
        ))
    })?;
    Ok(())
}
