//! The per-user rate counted cluster-wide in Redis: every replica asks the
//! same sorted set, so a user gets `limits.user_rate_per_min` chats a minute
//! however many replicas there are. The set lives in one Redis
//! (`limits.redis_url`) or in a Redis Cluster (`limits.redis_cluster_urls`);
//! the check is the same script call on either connection.
//!
//! One script call per check (atomic, one round trip): drop entries older
//! than the window, count, and add this chat when under the limit. Redis's
//! own clock decides, so replicas need not agree on time; keys expire with
//! the window; the key names the user by their keyed pseudonym, never the
//! number.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::OnceCell;

use crate::ids::UserNumber;
use crate::metrics;

/// How long a Redis call may take before the check falls back.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// Retries of a cluster call (after a MOVED, a dropped node, a TRYAGAIN):
/// one, so that a resharding is followed but an outage falls back within
/// `REDIS_TIMEOUT`.
const CLUSTER_RETRIES: u32 = 1;
/// The bounds of the pause before that retry, in milliseconds: the crate's
/// own (from 1.28 s) would outlast `REDIS_TIMEOUT` and make the retry moot.
const CLUSTER_RETRY_WAIT_MS: (u64, u64) = (20, 100);
/// After a failed connection attempt, checks fall back without trying again
/// for this long: an outage must not add a connect timeout to every chat.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

const SLIDING_LOG: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local wait = window
  if oldest[2] then wait = tonumber(oldest[2]) + window - now end
  return {0, wait}
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return {1, 0}
";

/// What Redis decided.
pub enum Decision {
    Allow,
    /// Over the limit; the oldest counted chat leaves the window after this.
    Deny(Duration),
}

/// Where the counts live.
pub enum Store {
    /// One Redis (`limits.redis_url`).
    Single(redis::Client),
    /// A Redis Cluster, by its seed nodes (`limits.redis_cluster_urls`).
    Cluster(Vec<redis::ConnectionInfo>),
}

/// A connection to either store: both reconnect by themselves once made,
/// and the script runs on either, so the check has one code path.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

impl Store {
    async fn connect(&self) -> RedisResult<Connection> {
        match self {
            Self::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(REDIS_TIMEOUT))
                    .set_response_timeout(Some(REDIS_TIMEOUT))
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map(Connection::Single)
            }
            Self::Cluster(nodes) => ClusterClientBuilder::new(nodes.clone())
                .connection_timeout(REDIS_TIMEOUT)
                // Also the bound of a whole call, retries and redirections
                // included.
                .response_timeout(REDIS_TIMEOUT)
                .retries(CLUSTER_RETRIES)
                .min_retry_wait(CLUSTER_RETRY_WAIT_MS.0)
                .max_retry_wait(CLUSTER_RETRY_WAIT_MS.1)
                .build()?
                .get_async_connection()
                .await
                .map(Connection::Cluster),
        }
    }
}

/// The sorted set of one user's counted chats. The braces are a hash tag:
/// a cluster places the key by the pseudonym alone. The script touches this
/// one key today; any other key it comes to need for the same user, named
/// `…{pseudonym}` too, then lies in the same slot, where a cluster runs the
/// script (keys across slots are refused with CROSSSLOT). One Redis uses
/// the same key, so both modes share one key format.
fn user_key(user: &UserNumber) -> String {
    format!("eai-gateway:user-rate:{{{}}}", user.pseudonym())
}

pub struct SharedRate {
    store: Store,
    connection: OnceCell<Connection>,
    last_failure: Mutex<Option<Instant>>,
    script: redis::Script,
    /// Unique chat ids within this process, for the sorted set's members.
    process: String,
    counter: AtomicU64,
    /// Whether the last check failed: one log line per outage.
    down: AtomicBool,
}

impl SharedRate {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            connection: OnceCell::new(),
            last_failure: Mutex::new(None),
            script: redis::Script::new(SLIDING_LOG),
            process: uuid::Uuid::new_v4().simple().to_string(),
            counter: AtomicU64::new(0),
            down: AtomicBool::new(false),
        }
    }

    /// Counts a chat of `user` against `limit` per `window`; `Err` when
    /// Redis could not answer (the caller falls back).
    pub async fn check(
        &self,
        user: &UserNumber,
        limit: u32,
        window: Duration,
    ) -> Result<Decision, ()> {
        let outcome = match self.connection().await {
            Some(mut conn) => {
                let member = format!(
                    "{}:{}",
                    self.process,
                    self.counter.fetch_add(1, Ordering::Relaxed)
                );
                let call = self
                    .script
                    .key(user_key(user))
                    .arg(u64::try_from(window.as_millis()).unwrap_or(u64::MAX))
                    .arg(limit)
                    .arg(member)
                    .invoke_async::<(i64, i64)>(&mut conn)
                    .await;
                call.map_err(|e| e.to_string())
            }
            None => Err("no connection".to_owned()),
        };
        match outcome {
            Ok((allowed, wait_ms)) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        "Redis answers again: per-user limits are shared across replicas."
                    );
                }
                Ok(if allowed == 1 {
                    Decision::Allow
                } else {
                    Decision::Deny(Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0)))
                })
            }
            Err(e) => {
                metrics::REDIS_FALLBACKS.inc();
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "Redis unavailable: per-user limits fall back (limits.redis_fallback).");
                }
                Err(())
            }
        }
    }

    /// The shared connection (it reconnects by itself once made); `None`
    /// while Redis cannot be reached.
    async fn connection(&self) -> Option<Connection> {
        if let Some(conn) = self.connection.get() {
            return Some(conn.clone());
        }
        {
            let last = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < RECONNECT_PAUSE) {
                return None;
            }
        }
        let made = self
            .connection
            .get_or_try_init(|| self.store.connect())
            .await;
        match made {
            Ok(conn) => Some(conn.clone()),
            Err(_) => {
                *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                None
            }
        }
    }
}
