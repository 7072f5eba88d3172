//! The statements of the operator commands (`eai-gateway mappings …`): read
//! every row, find users stored under two spellings, remove chosen rows, and
//! import rows in one transaction. Changes to a user's mapping notify the
//! other replicas on PostgreSQL, as the request path's changes do.

use futures_util::TryStreamExt;
// `begin` on a connection too: through a transaction pooler these run in
// the transaction `on_pool!` opened, as a savepoint.
use sqlx::{Acquire, Row};

use super::{Dialect, Pool, SqlStore};
use crate::ids::{AgentId, UserNumber};

/// The canonical spelling of a stored number, in SQL: without one leading '+'.
const CANONICAL: &str =
    "CASE WHEN substr(user_number, 1, 1) = '+' THEN substr(user_number, 2) ELSE user_number END";

pub(super) struct Sql {
    all: String,
    doubles: String,
    count_doubles: String,
    insert: String,
}

impl Sql {
    pub(super) fn new(d: &Dialect) -> Self {
        let columns = format!(
            "user_number, agent_id, {}, {}, {}",
            d.created_text, d.updated_text, d.created_ms
        );
        let groups =
            format!("SELECT {CANONICAL} FROM user_agents GROUP BY {CANONICAL} HAVING count(*) > 1");
        Self {
            all: format!("SELECT {columns} FROM user_agents ORDER BY user_number"),
            doubles: format!(
                "SELECT {columns} FROM user_agents WHERE {CANONICAL} IN ({groups}) \
                 ORDER BY {CANONICAL}, user_number"
            ),
            count_doubles: format!("SELECT count(*) FROM ({groups}) AS doubles"),
            insert: format!(
                "INSERT INTO user_agents (user_number, agent_id, created_at, updated_at) \
                 VALUES ($1, $2, COALESCE({}, CURRENT_TIMESTAMP), COALESCE({}, CURRENT_TIMESTAMP))",
                (d.stored_time)(3),
                (d.stored_time)(4)
            ),
        }
    }
}

const OWNER_OF: &str = "SELECT user_number FROM user_agents WHERE agent_id = $1";
const REMOVE_ROW: &str = "DELETE FROM user_agents WHERE user_number = $1 AND agent_id = $2";
const NOTIFY: &str = "SELECT pg_notify($1, $2)::text";

/// A row as stored, with its times as RFC 3339 text (export) and in
/// milliseconds (the duplicate policy).
#[derive(Debug, Clone)]
pub(crate) struct StoredMapping {
    pub user_number: String,
    pub agent_id: String,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub created_ms: Option<i64>,
}

/// One row to import, validated.
pub(crate) struct ImportRow {
    pub line: usize,
    pub user: UserNumber,
    pub agent: AgentId,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

/// What importing one row did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Imported {
    Inserted,
    /// The user already maps to this agent.
    Unchanged,
    /// `--replace`: the user mapped to these agents before.
    Replaced(Vec<String>),
    /// Left as it is, and why.
    Conflict(String),
}

macro_rules! stored {
    ($row:expr) => {
        StoredMapping {
            user_number: $row.get(0),
            agent_id: $row.get(1),
            created_at: $row.get(2),
            updated_at: $row.get(3),
            created_ms: $row.get(4),
        }
    };
}

type Result<T> = std::result::Result<T, sqlx::Error>;

impl SqlStore {
    /// Every row, in the order of the stored numbers, one at a time.
    pub(crate) async fn each_mapping(
        &self,
        mut each: impl FnMut(StoredMapping) -> std::io::Result<()>,
    ) -> Result<u64> {
        let sql = sqlx::AssertSqlSafe(self.sql.admin.all.as_str());
        let mut count = 0;
        on_pool!(self, |p| {
            let mut rows = self.query(sql).fetch(p);
            while let Some(row) = rows.try_next().await? {
                each(stored!(row)).map_err(sqlx::Error::Io)?;
                count += 1;
            }
        });
        Ok(count)
    }

    /// The rows of every number stored under more than one spelling, grouped
    /// by the canonical number.
    pub(crate) async fn double_rows(&self) -> Result<Vec<StoredMapping>> {
        let sql = sqlx::AssertSqlSafe(self.sql.admin.doubles.as_str());
        Ok(on_pool!(self, |p| self
            .query(sql)
            .fetch_all(p)
            .await?
            .iter()
            .map(|r| stored!(r))
            .collect()))
    }

    /// How many numbers are stored under more than one spelling.
    pub(crate) async fn count_doubles(&self) -> Result<i64> {
        let sql = sqlx::AssertSqlSafe(self.sql.admin.count_doubles.as_str());
        on_pool!(self, |p| self.query_scalar(sql).fetch_one(p).await)
    }

    /// Removes exactly these rows (spelling, agent) of one user in one
    /// transaction; returns how many were removed.
    pub(crate) async fn remove_rows(
        &self,
        user: &UserNumber,
        rows: &[(String, String)],
    ) -> Result<u64> {
        let channel = self.channel.as_deref();
        on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let mut removed = 0;
            for (spelling, agent) in rows {
                removed += self
                    .query(REMOVE_ROW)
                    .bind(spelling)
                    .bind(agent)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            if let Some(channel) = channel {
                self.query(NOTIFY)
                    .bind(channel)
                    .bind(user.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(removed)
        })
    }

    /// Imports the rows in one transaction: all of their outcomes, or an
    /// error and nothing changed.
    pub(crate) async fn import(&self, rows: &[ImportRow], replace: bool) -> Result<Vec<Imported>> {
        let (get, insert) = (self.sql.get.as_str(), self.sql.admin.insert.as_str());
        let channel = self.channel.as_deref();
        on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let mut outcomes = Vec::with_capacity(rows.len());
            for row in rows {
                let (canonical, plus) = super::spellings(&row.user);
                let existing: Vec<(String, String)> = self
                    .query(sqlx::AssertSqlSafe(get))
                    .bind(canonical)
                    .bind(&plus)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect();
                if existing.iter().any(|(_, a)| a == row.agent.as_str()) {
                    outcomes.push(Imported::Unchanged);
                    continue;
                }
                if !existing.is_empty() && !replace {
                    let agents: Vec<&str> = existing.iter().map(|(_, a)| a.as_str()).collect();
                    outcomes.push(Imported::Conflict(format!(
                        "the user is mapped to {} already (--replace to overwrite)",
                        agents.join(", ")
                    )));
                    continue;
                }
                let owner: Option<String> = self
                    .query_scalar(OWNER_OF)
                    .bind(row.agent.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                if owner.is_some() {
                    outcomes.push(Imported::Conflict(
                        "the agent is mapped to another user".into(),
                    ));
                    continue;
                }
                for (spelling, agent) in &existing {
                    self.query(REMOVE_ROW)
                        .bind(spelling)
                        .bind(agent)
                        .execute(&mut *tx)
                        .await?;
                }
                self.query(sqlx::AssertSqlSafe(insert))
                    .bind(canonical)
                    .bind(row.agent.as_str())
                    .bind(row.created_at.as_deref())
                    .bind(row.updated_at.as_deref())
                    .execute(&mut *tx)
                    .await?;
                if existing.is_empty() {
                    outcomes.push(Imported::Inserted);
                } else {
                    if let Some(channel) = channel {
                        self.query(NOTIFY)
                            .bind(channel)
                            .bind(canonical)
                            .execute(&mut *tx)
                            .await?;
                    }
                    outcomes.push(Imported::Replaced(
                        existing.into_iter().map(|(_, a)| a).collect(),
                    ));
                }
            }
            tx.commit().await?;
            Ok(outcomes)
        })
    }
}

impl SqlStore {
    /// Which of `ids` some mapping references.
    pub(crate) async fn mapped_among(
        &self,
        ids: &[&str],
    ) -> Result<std::collections::HashSet<String>> {
        let mut mapped = std::collections::HashSet::new();
        for chunk in ids.chunks(100) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT agent_id FROM user_agents WHERE agent_id IN ({})",
                marks.join(", ")
            );
            let found: Vec<String> = on_pool!(self, |p| {
                let mut query = self.query_scalar(sqlx::AssertSqlSafe(sql.as_str()));
                for id in chunk {
                    query = query.bind(*id);
                }
                query.fetch_all(p).await?
            });
            mapped.extend(found);
        }
        Ok(mapped)
    }

    /// Closes the pool: a command's connections end before it exits.
    pub(crate) async fn close(&self) {
        match &self.pool {
            Pool::Postgres(p) => p.close().await,
            Pool::Sqlite(p) => p.close().await,
        }
    }
}
