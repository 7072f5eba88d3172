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

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use tokio::time::Instant;

use super::LeaseStore;
use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::ids::UserNumber;

pub(crate) const LEASE_TTL: Duration = Duration::from_secs(30);
const RETRY_FIRST: Duration = Duration::from_millis(5);
const RETRY_CAP: Duration = Duration::from_millis(50);

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

    /// Waits for the user's lease until `deadline` (then 504).
    pub async fn acquire(&self, user: &UserNumber, deadline: Instant) -> GatewayResult<Lease> {
        let holder = format!(
            "{}:{}",
            self.process,
            self.counter.fetch_add(1, Ordering::Relaxed)
        );
        let mut delay = RETRY_FIRST;
        while !self.store.try_lease(user, &holder, LEASE_TTL).await? {
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
