//! Mapping-cache invalidation across replicas over PostgreSQL LISTEN/NOTIFY.
//!
//! The store notifies a channel in the same statement that deletes or
//! replaces a mapping (`sql.rs`), so a notification exists exactly when the
//! change was committed. Every replica listens on its own connection and
//! drops the user's cache entry when one arrives, typically within
//! milliseconds. When the listening connection drops, the replica keeps
//! serving with its cache bounded by `agents.cache_ttl_seconds`, reconnects
//! with backoff, and clears its cache once reconnected: a change missed in
//! between cannot survive. SQLite has no such channel: there the TTL stays
//! the bound between processes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sqlx::postgres::{PgListener, PgPoolOptions};

use super::cache::MappingCache;
use crate::ids::UserRules;
use crate::metrics;
use crate::settings::{DatabaseSettings, DatabaseUrl};

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// The channel of this database and schema; `None` for SQLite. Channels are
/// database-wide, so gateways on different schemas must not hear each other.
pub fn channel(db: &DatabaseSettings) -> Option<String> {
    match db.url {
        DatabaseUrl::Sqlite(_) => None,
        DatabaseUrl::Postgres(_) => {
            let mut name = match &db.schema {
                Some(schema) => format!("eai_gateway_{schema}"),
                None => "eai_gateway".to_owned(),
            };
            // PostgreSQL refuses channel names over 63 bytes.
            name.truncate(63);
            Some(name)
        }
    }
}

/// The listener, run as a Pingora background service.
pub struct Invalidations {
    db: DatabaseSettings,
    channel: String,
    cache: Arc<MappingCache>,
    users: Arc<UserRules>,
}

impl Invalidations {
    /// `None` when the database has no notification channel (SQLite), or
    /// only a transaction pooler to listen through, which cannot: PgBouncer
    /// in transaction mode runs a LISTEN on whichever server connection the
    /// statement got, and the notifications go to no one.
    pub fn new(
        db: &DatabaseSettings,
        cache: Arc<MappingCache>,
        users: Arc<UserRules>,
    ) -> Option<Self> {
        let channel = channel(db)?;
        if db.session_url().is_none() {
            tracing::warn!(
                "database.statement_cache is 0 (a transaction pooler) and database.direct_url is \
                 not set: no LISTEN for other replicas' mapping changes, which are seen within \
                 agents.cache_ttl_seconds instead. Set database.direct_url \
                 (DATABASE_DIRECT_URL) to a direct connection to hear of them at once."
            );
            return None;
        }
        Some(Self {
            channel,
            db: db.clone(),
            cache,
            users,
        })
    }

    /// Listens until the connection fails for good; every reconnection
    /// after the first clears the cache.
    async fn listen(
        &self,
        connected_before: &mut bool,
        backoff: &mut Duration,
    ) -> Result<(), sqlx::Error> {
        let Some(DatabaseUrl::Postgres(url)) = self.db.session_url() else {
            return Ok(());
        };
        let options: sqlx::postgres::PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_with(options)
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(&self.channel).await?;
        *backoff = BACKOFF_FIRST;
        self.connected(connected_before);
        loop {
            match listener.try_recv().await? {
                Some(note) => self.invalidate(note.payload()),
                // The connection was lost and re-established by sqlx.
                None => self.connected(connected_before),
            }
        }
    }

    fn connected(&self, connected_before: &mut bool) {
        if *connected_before {
            // Whatever changed while nobody listened is unknown.
            self.cache.clear();
            metrics::MAPPING_LISTENER_RECONNECTS.inc();
            tracing::info!("Mapping notifications resumed; cache cleared.");
        }
        *connected_before = true;
    }

    fn invalidate(&self, payload: &str) {
        metrics::MAPPING_INVALIDATIONS.inc();
        match self.users.parse(payload) {
            Ok(user) => self.cache.remove(&user),
            // Not ours to interpret (a user rule changed?): be safe.
            Err(_) => self.cache.clear(),
        }
    }
}

#[async_trait]
impl BackgroundService for Invalidations {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut connected_before = false;
        let mut backoff = BACKOFF_FIRST;
        loop {
            let outcome = tokio::select! {
                _ = shutdown.changed() => return,
                outcome = self.listen(&mut connected_before, &mut backoff) => outcome,
            };
            if let Err(e) = outcome {
                if backoff == BACKOFF_FIRST {
                    // Once per outage: the backoff resets only on success.
                    tracing::warn!(error = %e, "Mapping notifications unavailable; other replicas' changes are seen within agents.cache_ttl_seconds until they return.");
                }
                // Counted as a reconnect once it succeeds.
                connected_before = true;
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_CAP);
        }
    }
}
