//! The statements of `chat_records` (see `chat::records`), in both dialects.

use std::time::Duration;

use super::{Pool, SqlStore, db_error, ttl_ms};
use crate::error::GatewayResult;
use crate::mapping::store::{NewRecord, RecordState, RecordStore, StoredRecord};
use async_trait::async_trait;

/// The statements with the dialect's clock written in.
pub(super) struct Sql {
    release_expired_key: String,
    insert: String,
    by_key: String,
    by_id: String,
    visible: String,
    expose: String,
    finish: String,
    fail_orphan: String,
    renew: String,
    purge: String,
}

/// Columns every read returns, in `read`'s order.
const COLUMNS: &str = "id, fingerprint, status, body";

impl Sql {
    pub(super) fn new(now: &str) -> Self {
        let state = format!("{COLUMNS}, lease_until_ms < {now} AS orphaned");
        Self {
            // An expired key stops standing for its chat; the chat's
            // asynchronous window, if any, is its own.
            release_expired_key: format!(
                "UPDATE chat_records SET idempotency_key = NULL \
                 WHERE user_number = $1 AND idempotency_key = $2 AND key_until_ms < {now}"
            ),
            insert: format!(
                "INSERT INTO chat_records (id, user_number, idempotency_key, fingerprint, owner, \
                 lease_until_ms, visible_until_ms, key_until_ms) \
                 VALUES ($1, $2, $3, $4, $5, {now} + $6, \
                 CASE WHEN $7 < 0 THEN NULL ELSE {now} + $7 END, \
                 CASE WHEN $3 IS NULL THEN NULL ELSE {now} + $8 END) \
                 ON CONFLICT (user_number, idempotency_key) DO NOTHING"
            ),
            by_key: format!(
                "SELECT {state} FROM chat_records WHERE user_number = $1 AND idempotency_key = $2"
            ),
            by_id: format!("SELECT {state} FROM chat_records WHERE id = $1"),
            // Still processing is always visible: the window counts from the end.
            visible: format!(
                "SELECT {state} FROM chat_records WHERE id = $1 \
                 AND visible_until_ms IS NOT NULL AND (status = 0 OR visible_until_ms >= {now})"
            ),
            // The window itself starts when the chat ends (`finish`).
            expose: format!(
                "UPDATE chat_records SET visible_until_ms = COALESCE(visible_until_ms, {now}) \
                 WHERE id = $1"
            ),
            finish: format!(
                "UPDATE chat_records SET status = $2, body = $3, \
                 visible_until_ms = CASE WHEN visible_until_ms IS NULL THEN NULL ELSE {now} + $4 END, \
                 idempotency_key = CASE WHEN $5 = 1 THEN NULL ELSE idempotency_key END \
                 WHERE id = $1 AND status = 0"
            ),
            fail_orphan: format!(
                "UPDATE chat_records SET status = $2, body = $3, \
                 visible_until_ms = CASE WHEN visible_until_ms IS NULL THEN NULL ELSE {now} + $4 END \
                 WHERE id = $1 AND status = 0 AND lease_until_ms < {now}"
            ),
            renew: format!(
                "UPDATE chat_records SET lease_until_ms = {now} + $2 WHERE owner = $1 AND status = 0"
            ),
            purge: format!(
                "DELETE FROM chat_records \
                 WHERE COALESCE(visible_until_ms, 0) < {now} AND COALESCE(key_until_ms, 0) < {now} \
                 AND (status <> 0 OR lease_until_ms < {now})"
            ),
        }
    }
}

fn ms(d: Duration) -> i64 {
    ttl_ms(d)
}

/// One row of a `{state}` select: id, fingerprint, status, body, orphaned.
type Columns = (String, String, i64, Option<String>, bool);

fn read((id, fingerprint, status, body, orphaned): Columns) -> StoredRecord {
    let state = match status {
        0 if orphaned => RecordState::Orphaned,
        0 => RecordState::Processing,
        status => RecordState::Done {
            status: u16::try_from(status).unwrap_or(500),
            body: body.unwrap_or_else(|| "{}".into()),
        },
    };
    StoredRecord {
        id,
        fingerprint,
        state,
    }
}

impl SqlStore {
    fn records_sql(&self) -> &Sql {
        &self.sql.records
    }

    async fn record_by(
        &self,
        sql: &str,
        a: &str,
        b: Option<&str>,
    ) -> GatewayResult<Option<StoredRecord>> {
        let sql = sqlx::AssertSqlSafe(sql);
        let row: Option<Columns> = on_pool!(self, |p| {
            let mut q = self.query_as(sql).bind(a);
            if let Some(b) = b {
                q = q.bind(b);
            }
            q.fetch_optional(p).await.map_err(db_error)?
        });
        Ok(row.map(read))
    }
}

#[async_trait]
impl RecordStore for SqlStore {
    async fn begin_record(&self, record: &NewRecord<'_>) -> GatewayResult<Option<StoredRecord>> {
        let sql = self.records_sql();
        if let Some(key) = record.key {
            let release = sqlx::AssertSqlSafe(sql.release_expired_key.as_str());
            on_pool!(self, |p| self
                .query(release)
                .bind(record.user.as_str())
                .bind(key)
                .execute(p)
                .await
                .map_err(db_error)?
                .rows_affected());
        }
        // A key's record can be released between the insert and the read;
        // a second round then finds it free.
        for _ in 0..3 {
            let insert = sqlx::AssertSqlSafe(sql.insert.as_str());
            let inserted = on_pool!(self, |p| self
                .query(insert)
                .bind(record.id)
                .bind(record.user.as_str())
                .bind(record.key)
                .bind(record.fingerprint)
                .bind(record.owner)
                .bind(ms(record.lease))
                .bind(record.visible_for.map_or(-1, ms))
                .bind(ms(record.key_for))
                .execute(p)
                .await
                .map_err(db_error)?
                .rows_affected());
            if inserted == 1 {
                return Ok(None);
            }
            let Some(key) = record.key else {
                break;
            };
            if let Some(existing) = self
                .record_by(&sql.by_key, record.user.as_str(), Some(key))
                .await?
            {
                return Ok(Some(existing));
            }
        }
        Err(crate::error::GatewayError::new(
            crate::error::ErrorKind::Internal,
            "the chat record could not be created",
        ))
    }

    async fn visible_record(&self, id: &str) -> GatewayResult<Option<StoredRecord>> {
        self.record_by(&self.records_sql().visible, id, None).await
    }

    async fn record(&self, id: &str) -> GatewayResult<Option<StoredRecord>> {
        self.record_by(&self.records_sql().by_id, id, None).await
    }

    async fn expose_record(&self, id: &str) -> GatewayResult<()> {
        let sql = sqlx::AssertSqlSafe(self.records_sql().expose.as_str());
        on_pool!(self, |p| self
            .query(sql)
            .bind(id)
            .execute(p)
            .await
            .map_err(db_error)?
            .rows_affected());
        Ok(())
    }

    async fn finish_record(
        &self,
        id: &str,
        status: u16,
        body: &str,
        visible_for: Duration,
        release_key: bool,
    ) -> GatewayResult<bool> {
        let sql = sqlx::AssertSqlSafe(self.records_sql().finish.as_str());
        Ok(on_pool!(self, |p| self
            .query(sql)
            .bind(id)
            .bind(i64::from(status))
            .bind(body)
            .bind(ms(visible_for))
            .bind(i64::from(release_key))
            .execute(p)
            .await
            .map_err(db_error)?
            .rows_affected())
            == 1)
    }

    async fn fail_orphan(
        &self,
        id: &str,
        status: u16,
        body: &str,
        visible_for: Duration,
    ) -> GatewayResult<bool> {
        let sql = sqlx::AssertSqlSafe(self.records_sql().fail_orphan.as_str());
        Ok(on_pool!(self, |p| self
            .query(sql)
            .bind(id)
            .bind(i64::from(status))
            .bind(body)
            .bind(ms(visible_for))
            .execute(p)
            .await
            .map_err(db_error)?
            .rows_affected())
            == 1)
    }

    async fn renew_records(&self, owner: &str, lease: Duration) -> GatewayResult<u64> {
        let sql = sqlx::AssertSqlSafe(self.records_sql().renew.as_str());
        Ok(on_pool!(self, |p| self
            .query(sql)
            .bind(owner)
            .bind(ms(lease))
            .execute(p)
            .await
            .map_err(db_error)?
            .rows_affected()))
    }

    async fn purge_records(&self) -> GatewayResult<u64> {
        let sql = sqlx::AssertSqlSafe(self.records_sql().purge.as_str());
        Ok(on_pool!(self, |p| self
            .query(sql)
            .execute(p)
            .await
            .map_err(db_error)?
            .rows_affected()))
    }
}
