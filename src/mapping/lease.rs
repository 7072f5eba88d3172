//! Cluster-wide "one chat at a time per user": a lease row in the shared
//! database. Replicas (and processes sharing a SQLite file) take turns; a
//! crashed holder's lease expires after `LEASE_TTL`.
//!
//! Why a lease row and not a PostgreSQL advisory lock: an advisory lock lives
//! on one connection, so every user with a chat in flight would pin a pooled
//! connection for up to the whole polling budget; 100 concurrent users would
//! need 100 connections per replica. The lease costs one short statement to
//! take and one to release, works the same on SQLite, and survives pool churn.
//!
//! Renewal is per process, not per chat: every `LEASE_TTL / 3` one statement
//! extends all leases whose holder starts with this process's id. With
//! 10,000 chats in flight that is one statement instead of 1,000 a second,
//! and no timer task per chat.
//!
//! A holder records on its lease the message it sends (`Lease::sending`,
//! `Lease::sent`). A replica waiting for the turn polls that message at the
//! agent service (`SentProbe`) and takes the turn as soon as it has ended,
//! instead of waiting out the lease of a holder that died: seconds, not the
//! TTL. The same record keeps a holder that is alive but stalled (a long
//! database outage stops its renewals) from being overtaken while the agent
//! still works on its message; and a holder checks the lease is still its own
//! before every send, so a turn that passed on is never used twice.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;

use super::{LeaseStore, SentMessage};
use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::ids::{AgentId, UserNumber};

pub(crate) const LEASE_TTL: Duration = Duration::from_secs(30);
const RETRY_FIRST: Duration = Duration::from_millis(5);
const RETRY_CAP: Duration = Duration::from_millis(50);
/// How often a waiter looks at the message its lease's holder sent.
const LOOK_EVERY: Duration = Duration::from_millis(500);
/// Past its bound, a message's holder has given it up unless it is gone.
const GIVE_UP_GRACE: Duration = Duration::from_secs(5);

/// What a replica waiting for a turn can learn of the message the holder
/// sent, from the agent service.
#[async_trait]
pub trait SentProbe: Send + Sync {
    /// Whether the message has ended (answered, failed, or its agent gone);
    /// an unknown state counts as not ended.
    async fn ended(&self, agent: &AgentId, id: &str) -> bool;
    /// Cancels a message whose holder is gone and whose bound has passed.
    async fn give_up(&self, agent: &AgentId, id: &str);
    /// How long after its send a live holder gives a message up
    /// (`chat.max_processing_seconds`).
    fn bound(&self) -> Duration;
}

pub struct ChatLeases {
    store: Arc<dyn LeaseStore>,
    /// Unique per process, so holders never collide across replicas; every
    /// holder is `<process>:<n>`.
    process: String,
    counter: AtomicU64,
    held: Arc<AtomicUsize>,
    renewer: Once,
}

pub struct Lease {
    store: Arc<dyn LeaseStore>,
    user: UserNumber,
    holder: String,
    held: Arc<AtomicUsize>,
    released: bool,
}

impl ChatLeases {
    pub fn new(store: Arc<dyn LeaseStore>) -> Self {
        Self {
            store,
            // Hex only: safe inside a LIKE pattern.
            process: uuid::Uuid::new_v4().simple().to_string(),
            counter: AtomicU64::new(0),
            held: Arc::new(AtomicUsize::new(0)),
            renewer: Once::new(),
        }
    }

    /// Leases this process holds now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Waits for the user's lease until `deadline` (then 504), looking at
    /// the holder's message through `probe` to take over as soon as it ends.
    pub async fn acquire(
        &self,
        user: &UserNumber,
        deadline: Instant,
        probe: &dyn SentProbe,
    ) -> GatewayResult<Lease> {
        let holder = format!(
            "{}:{}",
            self.process,
            self.counter.fetch_add(1, Ordering::Relaxed)
        );
        let mut delay = RETRY_FIRST;
        let mut next_look = Instant::now() + LOOK_EVERY;
        while !self.store.try_lease(user, &holder, LEASE_TTL).await? {
            if Instant::now() >= next_look {
                next_look = Instant::now() + LOOK_EVERY;
                if self.take_over(user, &holder, probe).await? {
                    break;
                }
            }
            if Instant::now() + delay >= deadline {
                return Err(GatewayError::new(
                    ErrorKind::PollTimeout,
                    "earlier messages of this user are still being answered",
                ));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_CAP);
        }
        self.held.fetch_add(1, Ordering::SeqCst);
        self.renewer.call_once(|| {
            tokio::spawn(renew(
                self.store.clone(),
                format!("{}:", self.process),
                self.held.clone(),
            ));
        });
        Ok(Lease {
            store: self.store.clone(),
            user: user.clone(),
            holder,
            held: self.held.clone(),
            released: false,
        })
    }
}

impl ChatLeases {
    /// Takes the lease when its holder's message has ended, or has run so
    /// far past its bound that its holder must be gone (then it is
    /// cancelled first). True when `holder` has the lease now.
    async fn take_over(
        &self,
        user: &UserNumber,
        holder: &str,
        probe: &dyn SentProbe,
    ) -> GatewayResult<bool> {
        let Some(seen) = self.store.sent_message(user).await? else {
            return Ok(false);
        };
        let Some(agent) = &seen.agent else {
            return Ok(false);
        };
        let ended = probe.ended(agent, &seen.id).await;
        let overdue = seen.age > probe.bound() + GIVE_UP_GRACE;
        if !ended && !overdue {
            return Ok(false);
        }
        if !ended {
            probe.give_up(agent, &seen.id).await;
        }
        let taken = self.store.take_over(user, &seen, holder, LEASE_TTL).await?;
        if taken {
            log_take_over(user, &seen, ended);
        }
        Ok(taken)
    }
}

fn log_take_over(user: &UserNumber, seen: &SentMessage, ended: bool) {
    tracing::info!(
        user = %user.masked(),
        message_id = %seen.id,
        previous_holder = %seen.holder,
        ended,
        "Took the user's turn: the message its holder sent has ended (or was given up), \
         and the holder has not released it."
    );
}

/// Extends every lease this process holds, for the life of the process.
async fn renew(store: Arc<dyn LeaseStore>, prefix: String, held: Arc<AtomicUsize>) {
    let mut tick = tokio::time::interval(LEASE_TTL / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let holding = held.load(Ordering::SeqCst);
        if holding == 0 {
            continue;
        }
        match store.renew_leases(&prefix, LEASE_TTL).await {
            // Fewer rows than leases is normal while some are being taken
            // or released; a lease lost to expiry shows as a steady gap.
            Ok(renewed) => tracing::debug!(renewed, holding, "Chat leases renewed."),
            // The database may come back before the leases run out.
            Err(e) => tracing::warn!(error = %e, "Chat lease renewal failed."),
        }
    }
}

impl Lease {
    /// Records that a message to `agent` is about to be sent. False when
    /// the turn has passed to another replica: the message must not go.
    pub async fn sending(&self, agent: &AgentId) -> GatewayResult<bool> {
        self.store.sending(&self.user, &self.holder, agent).await
    }

    /// Records the id of the message sent, so that a replica waiting for
    /// the turn can follow it. A failure only costs that replica the wait.
    pub async fn sent(&self, id: &str) {
        if let Err(e) = self.store.sent(&self.user, &self.holder, id).await {
            tracing::warn!(error = %e, "Could not record the sent message on the lease.");
        }
    }

    pub async fn release(mut self) {
        self.released = true;
        self.held.fetch_sub(1, Ordering::SeqCst);
        if let Err(e) = self.store.release_lease(&self.user, &self.holder).await {
            // It expires on its own after LEASE_TTL.
            tracing::warn!(error = %e, "Chat lease release failed.");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.held.fetch_sub(1, Ordering::SeqCst);
        // Dropped without release (cancelled task): free it in the background.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let store = self.store.clone();
            let user = self.user.clone();
            let holder = std::mem::take(&mut self.holder);
            rt.spawn(async move {
                let _ = store.release_lease(&user, &holder).await;
            });
        }
    }
}
