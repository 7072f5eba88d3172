//! Chats whose outcome outlives their request, shared by every replica
//! through the database: asynchronous chats (`Prefer: respond-async`, read
//! back by id) and chats with an `Idempotency-Key` (a repeat is answered
//! from the first, never sent again).
//!
//! A record is owned by the process that carries its chat. That process
//! renews the leases of all its open records with one statement every
//! `LEASE_TTL / 3` (as for the chat leases); a record whose lease ran out
//! unrenewed belongs to a process that died, and the first reader turns it
//! into a 502. Expired records are purged by the same background task.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{ChatAnswer, ChatRequest};
use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::ids::UserNumber;
use crate::mapping::lease::LEASE_TTL;
use crate::mapping::{NewRecord, RecordState, RecordStore, StoredRecord};

/// What a chat answered: the status and JSON body of its response.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Outcome {
    pub fn of(result: &GatewayResult<ChatAnswer>) -> Self {
        match result {
            Ok(answer) => match serde_json::to_vec(answer) {
                Ok(body) => Self {
                    status: StatusCode::OK,
                    body: Bytes::from(body),
                },
                Err(e) => {
                    tracing::error!(error = %e, "Answer could not be serialised.");
                    Self::of_error(&GatewayError::new(ErrorKind::Internal, "internal error"))
                }
            },
            Err(e) => Self::of_error(e),
        }
    }

    fn of_error(e: &GatewayError) -> Self {
        Self {
            status: e.status(),
            body: Bytes::from(e.body().to_string()),
        }
    }

    fn stored(status: u16, body: String) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body: Bytes::from(body),
        }
    }

    /// A chat whose process stopped before it ended.
    fn orphaned(id: &str) -> Self {
        Self::of_error(
            &GatewayError::agent_service(
                "the gateway process carrying this chat stopped before the chat ended; \
                 the message may or may not have reached the agent",
            )
            .with_message_id(id.to_owned()),
        )
    }
}

/// An `Idempotency-Key` header: 1 to 255 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &[u8]) -> GatewayResult<Self> {
        let printable = raw.iter().all(|b| (0x20..=0x7e).contains(b));
        if raw.is_empty() || raw.len() > 255 || !printable {
            return Err(GatewayError::invalid(
                "Idempotency-Key must be 1 to 255 printable ASCII characters",
            ));
        }
        Ok(Self(String::from_utf8_lossy(raw).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What identifies a request for its key: the same key with another
/// message is a client error, not a repeat. The caller's `timeout` is left
/// out: a retry may well wait less.
pub fn fingerprint(req: &ChatRequest) -> String {
    let canonical = json!({
        "user_number": req.user.as_str(),
        "message": req.message,
        "metadata": req.metadata,
    });
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A record id: 128 random bits, so ids cannot be guessed.
fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Whether `raw` can be a record id at all (32 lowercase hex digits).
pub fn is_record_id(raw: &str) -> bool {
    raw.len() == 32 && raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub enum Begun {
    /// A new record: this request carries the chat.
    Fresh(OpenRecord),
    /// The key's record (same user, unexpired): answer from it.
    Existing(StoredRecord),
}

/// What a reader of a record sees.
pub enum Seen {
    Processing,
    Done(Outcome),
}

pub struct ChatRecords {
    store: Arc<dyn RecordStore>,
    /// This process, as the owner of the records it carries.
    owner: String,
    open: Arc<AtomicUsize>,
    background: Once,
}

/// How a new record is kept.
pub struct Windows {
    /// Asynchronous: readable by id this long after the chat ends.
    pub visible_for: Option<Duration>,
    pub key_for: Duration,
}

impl ChatRecords {
    pub fn new(store: Arc<dyn RecordStore>) -> Self {
        Self {
            store,
            owner: uuid::Uuid::new_v4().simple().to_string(),
            open: Arc::new(AtomicUsize::new(0)),
            background: Once::new(),
        }
    }

    /// Creates the record of a chat about to start, or finds the chat its
    /// key already stands for.
    pub async fn begin(
        &self,
        user: &UserNumber,
        key: Option<&IdempotencyKey>,
        fingerprint: &str,
        windows: &Windows,
    ) -> GatewayResult<Begun> {
        self.start_background(windows);
        let id = new_id();
        let record = NewRecord {
            id: &id,
            user,
            key: key.map(IdempotencyKey::as_str),
            fingerprint,
            owner: &self.owner,
            lease: LEASE_TTL,
            visible_for: windows.visible_for,
            key_for: windows.key_for,
        };
        if let Some(existing) = self.store.begin_record(&record).await? {
            return Ok(Begun::Existing(existing));
        }
        self.open.fetch_add(1, Ordering::SeqCst);
        Ok(Begun::Fresh(OpenRecord {
            store: self.store.clone(),
            id,
            open: self.open.clone(),
            done: false,
        }))
    }

    /// An asynchronous chat's record by id, unless unknown or expired.
    pub async fn fetch(&self, id: &str, visible_for: Duration) -> GatewayResult<Option<Seen>> {
        match self.store.visible_record(id).await? {
            None => Ok(None),
            Some(record) => self.resolve(record, visible_for).await.map(Some),
        }
    }

    /// Any record by id (a repeated key's), whatever its windows.
    pub async fn fetch_any(&self, id: &str, visible_for: Duration) -> GatewayResult<Option<Seen>> {
        match self.store.record(id).await? {
            None => Ok(None),
            Some(record) => self.resolve(record, visible_for).await.map(Some),
        }
    }

    /// Makes a keyed record readable by id (an asynchronous repeat of a
    /// chat first sent blocking or streamed).
    pub async fn expose(&self, id: &str) -> GatewayResult<()> {
        self.store.expose_record(id).await
    }

    /// Waits for the record's outcome until `deadline` (`None` then).
    pub async fn wait(
        &self,
        id: &str,
        deadline: Instant,
        visible_for: Duration,
    ) -> GatewayResult<Option<Outcome>> {
        let mut delay = Duration::from_millis(20);
        loop {
            let Some(record) = self.store.record(id).await? else {
                // Purged under a waiter: only after both windows passed.
                return Err(GatewayError::new(
                    ErrorKind::NotFound,
                    "the chat this Idempotency-Key stood for has expired",
                ));
            };
            if let Seen::Done(outcome) = self.resolve(record, visible_for).await? {
                return Ok(Some(outcome));
            }
            if Instant::now() + delay >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    async fn resolve(&self, record: StoredRecord, visible_for: Duration) -> GatewayResult<Seen> {
        match record.state {
            RecordState::Processing => Ok(Seen::Processing),
            RecordState::Done { status, body } => Ok(Seen::Done(Outcome::stored(status, body))),
            RecordState::Orphaned => {
                let failed = Outcome::orphaned(&record.id);
                let body = String::from_utf8_lossy(&failed.body).into_owned();
                if self
                    .store
                    .fail_orphan(&record.id, failed.status.as_u16(), &body, visible_for)
                    .await?
                {
                    tracing::warn!(
                        message_id = %record.id,
                        "Chat record orphaned: its process stopped renewing it; reported as failed."
                    );
                    return Ok(Seen::Done(failed));
                }
                // Finished or failed by someone else meanwhile: read that.
                match self.store.record(&record.id).await? {
                    Some(StoredRecord {
                        state: RecordState::Done { status, body },
                        ..
                    }) => Ok(Seen::Done(Outcome::stored(status, body))),
                    _ => Ok(Seen::Done(failed)),
                }
            }
        }
    }

    /// The task that renews this process's open records and purges
    /// expired ones, started with the first record.
    fn start_background(&self, windows: &Windows) {
        self.background.call_once(|| {
            // Short windows (tests) purge as often as they expire.
            let purge_every = windows
                .visible_for
                .unwrap_or(windows.key_for)
                .min(windows.key_for)
                .clamp(Duration::from_secs(1), Duration::from_secs(60));
            tokio::spawn(maintain(
                self.store.clone(),
                self.owner.clone(),
                self.open.clone(),
                purge_every,
            ));
        });
    }
}

async fn maintain(
    store: Arc<dyn RecordStore>,
    owner: String,
    open: Arc<AtomicUsize>,
    purge_every: Duration,
) {
    let mut renew = tokio::time::interval(LEASE_TTL / 3);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut purge = tokio::time::interval(purge_every);
    purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = renew.tick() => {
                if open.load(Ordering::SeqCst) == 0 {
                    continue;
                }
                if let Err(e) = store.renew_records(&owner, LEASE_TTL).await {
                    tracing::warn!(error = %e, "Chat record renewal failed.");
                }
            }
            _ = purge.tick() => match store.purge_records().await {
                Ok(0) => {}
                Ok(purged) => tracing::debug!(purged, "Expired chat records purged."),
                Err(e) => tracing::warn!(error = %e, "Chat record purge failed."),
            },
        }
    }
}

/// A record this process carries the chat of; `finish` stores the outcome.
pub struct OpenRecord {
    store: Arc<dyn RecordStore>,
    id: String,
    open: Arc<AtomicUsize>,
    done: bool,
}

impl OpenRecord {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stores the outcome. `delivered` false means the message never left
    /// the gateway: the key is freed, so a retry makes a fresh attempt.
    pub async fn finish(mut self, outcome: Outcome, visible_for: Duration, delivered: bool) {
        self.done = true;
        self.open.fetch_sub(1, Ordering::SeqCst);
        let body = String::from_utf8_lossy(&outcome.body);
        let release_key = !delivered && outcome.status != StatusCode::OK;
        // The database may be briefly away; the outcome is worth a few tries.
        for attempt in 0..5u32 {
            match self
                .store
                .finish_record(
                    &self.id,
                    outcome.status.as_u16(),
                    &body,
                    visible_for,
                    release_key,
                )
                .await
            {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, message_id = %self.id, attempt, "Chat outcome could not be stored.");
                    tokio::time::sleep(Duration::from_millis(200) * 2u32.pow(attempt)).await;
                }
            }
        }
    }
}

impl Drop for OpenRecord {
    fn drop(&mut self) {
        if !self.done {
            // Never finished (the process is going down): its lease runs
            // out and readers report it failed.
            self.open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_printable_ascii_up_to_255() {
        assert!(IdempotencyKey::parse(b"order-42").is_ok());
        assert!(IdempotencyKey::parse(&[b'a'; 255]).is_ok());
        for bad in [&b""[..], &[b'a'; 256], b"tab\there", "ção".as_bytes()] {
            assert_eq!(IdempotencyKey::parse(bad).unwrap_err().status(), 422);
        }
    }

    #[test]
    fn record_ids_are_128_random_bits_in_hex() {
        let id = new_id();
        assert!(is_record_id(&id), "{id}");
        assert_ne!(id, new_id());
        assert!(!is_record_id("../etc"));
    }
}
