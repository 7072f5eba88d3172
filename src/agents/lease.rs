//! Cluster-wide "one chat at a time per user": a lease row in the shared
//! database. Replicas (and processes sharing a SQLite file) take turns; a
//! crashed holder's lease expires after `LEASE_TTL`.
//!
//! Why a lease row and not a PostgreSQL advisory lock: an advisory lock lives
//! on one connection, so every user with a chat in flight would pin a pooled
//! connection for up to the whole polling budget; 100 concurrent users would
//! need 100 connections per replica. The lease costs one short statement to
//! take, one to release and one per `LEASE_TTL / 3` to renew, works the same
//! on SQLite, and survives pool churn.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::MappingStore;
use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::ids::UserNumber;

pub const LEASE_TTL: Duration = Duration::from_secs(30);
const RETRY_FIRST: Duration = Duration::from_millis(5);
const RETRY_CAP: Duration = Duration::from_millis(50);

pub struct ChatLeases {
    store: Arc<dyn MappingStore>,
    /// Unique per process, so holders never collide across replicas.
    process: String,
    counter: AtomicU64,
}

pub struct Lease {
    store: Arc<dyn MappingStore>,
    user: UserNumber,
    holder: String,
    renewer: JoinHandle<()>,
    released: bool,
}

impl ChatLeases {
    pub fn new(store: Arc<dyn MappingStore>) -> Self {
        Self {
            store,
            process: uuid::Uuid::new_v4().simple().to_string(),
            counter: AtomicU64::new(0),
        }
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
        let renewer = tokio::spawn(renew(self.store.clone(), user.clone(), holder.clone()));
        Ok(Lease {
            store: self.store.clone(),
            user: user.clone(),
            holder,
            renewer,
            released: false,
        })
    }
}

async fn renew(store: Arc<dyn MappingStore>, user: UserNumber, holder: String) {
    loop {
        tokio::time::sleep(LEASE_TTL / 3).await;
        match store.renew_lease(&user, &holder, LEASE_TTL).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(user = %user.masked(), "Chat lease was lost before the chat ended.");
                return;
            }
            // The database may come back before the lease runs out.
            Err(e) => tracing::warn!(error = %e, "Chat lease renewal failed."),
        }
    }
}

impl Lease {
    pub async fn release(mut self) {
        self.renewer.abort();
        self.released = true;
        if let Err(e) = self.store.release_lease(&self.user, &self.holder).await {
            // It expires on its own after LEASE_TTL.
            tracing::warn!(error = %e, "Chat lease release failed.");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
        if self.released {
            return;
        }
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
