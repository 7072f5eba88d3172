//! The statements of `chat_leases` (see `mapping::lease`): the turn of a
//! user, and the message its holder has sent.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;

use super::{Pool, SqlStore, db_error, ttl_ms};
use crate::error::GatewayResult;
use crate::ids::{AgentId, UserNumber};
use crate::mapping::store::{LeaseStore, SentMessage};

const RELEASE: &str = "DELETE FROM chat_leases WHERE user_number = $1 AND holder = $2";
const RECORD_SENT: &str =
    "UPDATE chat_leases SET message_id = $3 WHERE user_number = $1 AND holder = $2";

#[async_trait]
impl LeaseStore for SqlStore {
    async fn try_lease(
        &self,
        user: &UserNumber,
        holder: &str,
        ttl: Duration,
    ) -> GatewayResult<bool> {
        self.try_lease_key(user.as_str(), holder, ttl).await
    }

    async fn renew_leases(&self, holder_prefix: &str, ttl: Duration) -> GatewayResult<u64> {
        let sql = sqlx::AssertSqlSafe(self.sql.renew_leases.as_str());
        on_pool!(self, |p| self
            .query(sql)
            .bind(format!("{holder_prefix}%"))
            .bind(ttl_ms(ttl))
            .execute(p)
            .await
            .map(|done| done.rows_affected())
            .map_err(db_error))
    }

    async fn release_lease(&self, user: &UserNumber, holder: &str) -> GatewayResult<()> {
        self.release_lease_key(user.as_str(), holder).await
    }

    async fn sending(
        &self,
        user: &UserNumber,
        holder: &str,
        agent: &AgentId,
    ) -> GatewayResult<bool> {
        let sql = sqlx::AssertSqlSafe(self.sql.sending.as_str());
        on_pool!(self, |p| self
            .query(sql)
            .bind(user.as_str())
            .bind(holder)
            .bind(agent.as_str())
            .execute(p)
            .await
            .map(|done| done.rows_affected() == 1)
            .map_err(db_error))
    }

    async fn sent(&self, user: &UserNumber, holder: &str, message_id: &str) -> GatewayResult<()> {
        on_pool!(self, |p| self
            .query(RECORD_SENT)
            .bind(user.as_str())
            .bind(holder)
            .bind(message_id)
            .execute(p)
            .await
            .map(|_| ())
            .map_err(db_error))
    }

    async fn sent_message(&self, user: &UserNumber) -> GatewayResult<Option<SentMessage>> {
        let sql = sqlx::AssertSqlSafe(self.sql.sent_message.as_str());
        let row: Option<(String, Option<String>, String, Option<i64>)> = on_pool!(self, |p| self
            .query(sql)
            .bind(user.as_str())
            .fetch_optional(p)
            .await
            .map_err(db_error)?
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))));
        Ok(row.map(|(holder, agent, id, age_ms)| SentMessage {
            holder,
            agent: agent.and_then(|a| AgentId::parse(&a).ok()),
            id,
            age: Duration::from_millis(u64::try_from(age_ms.unwrap_or(0)).unwrap_or(0)),
        }))
    }

    async fn take_over(
        &self,
        user: &UserNumber,
        seen: &SentMessage,
        holder: &str,
        ttl: Duration,
    ) -> GatewayResult<bool> {
        let sql = sqlx::AssertSqlSafe(self.sql.take_over.as_str());
        on_pool!(self, |p| self
            .query(sql)
            .bind(user.as_str())
            .bind(seen.holder.as_str())
            .bind(holder)
            .bind(ttl_ms(ttl))
            .bind(seen.id.as_str())
            .execute(p)
            .await
            .map(|done| done.rows_affected() == 1)
            .map_err(db_error))
    }
}

impl SqlStore {
    /// `try_lease` for any key of `chat_leases`: a user's number, or a
    /// name no number can be (a cluster-wide job's turn, `~reconcile`).
    pub(crate) async fn try_lease_key(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> GatewayResult<bool> {
        let sql = sqlx::AssertSqlSafe(self.sql.try_lease.as_str());
        let winner: Option<String> = on_pool!(self, |p| self
            .query(sql)
            .bind(key)
            .bind(holder)
            .bind(ttl_ms(ttl))
            .fetch_optional(p)
            .await
            .map_err(db_error)?
            .map(|r| r.get(0)));
        Ok(winner.is_some_and(|w| w == holder))
    }

    pub(crate) async fn release_lease_key(&self, key: &str, holder: &str) -> GatewayResult<()> {
        on_pool!(self, |p| self
            .query(RELEASE)
            .bind(key)
            .bind(holder)
            .execute(p)
            .await
            .map(|_| ())
            .map_err(db_error))
    }
}
