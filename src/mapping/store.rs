//! What the chat flow needs from the database: the user → agent mapping
//! and the per-user chat leases, two traits over one SQL store. Every
//! operation is one atomic SQL statement, so a crash or a disconnect in the
//! middle of a chat leaves the old state or the new one, never a mix.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::GatewayResult;
use crate::ids::{AgentId, UserNumber};

/// One stored row of a user's mapping. A table adopted from an earlier
/// service may hold one user under two spellings (`duplicates.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedRow {
    /// The user number as stored: canonical, or with its `+`.
    pub spelling: String,
    pub agent: AgentId,
    /// When the row was created, in Unix milliseconds; `None` if unknown.
    pub created_ms: Option<i64>,
}

#[async_trait]
pub trait MappingStore: Send + Sync {
    /// Every row of the user, under each spelling that names them (see
    /// `duplicates::lookup` for the one that serves).
    async fn get(&self, user: &UserNumber) -> GatewayResult<Vec<MappedRow>>;

    /// Stores `agent` for `user` unless a mapping exists; returns the agent
    /// that is mapped afterwards (the caller's, or the one that won the race).
    async fn claim(&self, user: &UserNumber, agent: &AgentId) -> GatewayResult<AgentId>;

    /// Compare-and-swap: maps `user` to `new` only in the row that still
    /// maps it to `old`. True when it did.
    async fn replace(&self, user: &UserNumber, old: &AgentId, new: &AgentId)
    -> GatewayResult<bool>;

    /// Removes the user's rows under every spelling; returns their agents.
    async fn delete(&self, user: &UserNumber) -> GatewayResult<Vec<AgentId>>;

    /// Cheap round trip for `/readyz`.
    async fn ping(&self) -> GatewayResult<()>;

    /// The connection pool's use, for the saturation gauges.
    fn pool_stats(&self) -> Option<PoolStats> {
        None
    }
}

/// Connections of a database pool.
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolStats {
    pub in_use: u32,
    pub idle: u32,
    pub max: u32,
}

/// Cluster-wide "one chat at a time per user" (see `lease.rs`).
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes the user's chat lease for `holder` when it is free or expired;
    /// true when `holder` now has it.
    async fn try_lease(
        &self,
        user: &UserNumber,
        holder: &str,
        ttl: Duration,
    ) -> GatewayResult<bool>;

    /// Extends every lease whose holder starts with `holder_prefix` (one
    /// process's leases); returns how many it extended. A lease that expired
    /// and was taken by another holder is not among them.
    async fn renew_leases(&self, holder_prefix: &str, ttl: Duration) -> GatewayResult<u64>;

    async fn release_lease(&self, user: &UserNumber, holder: &str) -> GatewayResult<()>;

    /// Records on the lease that `holder` is about to send a message to
    /// `agent`. True while `holder` still has the lease (the send may go
    /// out); false when the turn has passed to another replica (it must not).
    async fn sending(
        &self,
        user: &UserNumber,
        holder: &str,
        agent: &AgentId,
    ) -> GatewayResult<bool>;

    /// Records the id the agent service gave the message being sent.
    async fn sent(&self, user: &UserNumber, holder: &str, message_id: &str) -> GatewayResult<()>;

    /// The message recorded on the user's lease, if any.
    async fn sent_message(&self, user: &UserNumber) -> GatewayResult<Option<SentMessage>>;

    /// Takes the user's lease for `holder` from `seen.holder`, only while it
    /// still records `seen.id`. True when `holder` has it now.
    async fn take_over(
        &self,
        user: &UserNumber,
        seen: &SentMessage,
        holder: &str,
        ttl: Duration,
    ) -> GatewayResult<bool>;
}

/// The message a lease's holder sent, as a replica waiting for the turn
/// sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    pub holder: String,
    pub agent: Option<AgentId>,
    /// Empty while it is being sent (no id known yet).
    pub id: String,
    /// Since the send began.
    pub age: Duration,
}

/// A chat record to create (see `chat::records`).
pub struct NewRecord<'a> {
    pub id: &'a str,
    pub user: &'a UserNumber,
    /// With a key, an unexpired record of the same user and key wins.
    pub key: Option<&'a str>,
    pub fingerprint: &'a str,
    pub owner: &'a str,
    pub lease: Duration,
    /// Asynchronous: fetchable by id at least this long.
    pub visible_for: Option<Duration>,
    pub key_for: Duration,
}

/// A chat record as stored.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub id: String,
    pub fingerprint: String,
    pub state: RecordState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// Its owner carries it and renews its lease.
    Processing,
    /// Nobody renewed its lease in time: its owner is gone.
    Orphaned,
    /// The outcome: the HTTP status and JSON body the chat answered.
    Done { status: u16, body: String },
}

/// Chat outcomes shared by the replicas: asynchronous chats and
/// `Idempotency-Key`s (see `chat::records`).
#[async_trait]
pub trait RecordStore: Send + Sync {
    /// Creates the record and returns `None`, or, when its key is taken by
    /// an unexpired record, returns that record and creates nothing.
    async fn begin_record(&self, record: &NewRecord<'_>) -> GatewayResult<Option<StoredRecord>>;

    /// The record of an asynchronous chat, unless its window has passed.
    async fn visible_record(&self, id: &str) -> GatewayResult<Option<StoredRecord>>;

    /// Any record by id, for a caller that holds it (a repeated key).
    async fn record(&self, id: &str) -> GatewayResult<Option<StoredRecord>>;

    /// Makes a record still processing readable by id (it may have been
    /// created without that window, which starts when it ends).
    async fn expose_record(&self, id: &str) -> GatewayResult<()>;

    /// Stores the outcome of a record still processing; `visible_for`
    /// restarts its asynchronous window, `release_key` frees its key for a
    /// fresh attempt. False when it was no longer processing.
    async fn finish_record(
        &self,
        id: &str,
        status: u16,
        body: &str,
        visible_for: Duration,
        release_key: bool,
    ) -> GatewayResult<bool>;

    /// `finish_record`, only if the record is processing with its lease run out.
    async fn fail_orphan(
        &self,
        id: &str,
        status: u16,
        body: &str,
        visible_for: Duration,
    ) -> GatewayResult<bool>;

    /// Extends the lease of every record `owner` is processing.
    async fn renew_records(&self, owner: &str, lease: Duration) -> GatewayResult<u64>;

    /// Deletes records whose windows have all passed.
    async fn purge_records(&self) -> GatewayResult<u64>;
}
