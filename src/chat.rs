//! The chat flow: lane → lease → mapping (cache, store) → create and claim →
//! send → poll → answer, healing a stale mapping once. Also the logic of the
//! mapping routes.
//!
//! Ordering guarantees: the per-process lane queues one user's chats in
//! arrival order (tokio's mutex is fair), and the lease makes one replica at a
//! time talk to the user's agent. Everything from the lane on runs in its own
//! task, so a client that hangs up mid-chat neither cuts a chat short while
//! its message is being processed (the next message would overlap it) nor
//! leaves a created agent unrecorded.
//!
//! The caller's wait and the message's life are two clocks. The caller waits
//! at most its budget (`chat.timeout_seconds`, or less on request) and then
//! gets a 504 naming the message; the message, once sent, keeps its user's
//! lane and lease and is polled in the background until it ends or
//! `chat.max_processing_seconds` pass, so the user's next message is never
//! sent on top of it, from this replica or another. A DELETE takes the same
//! lane and lease, so it runs between messages, never under one.
//!
//! Here the service and its state; `run` the task and the caller's wait,
//! `deliver` one message in its turn, `agents` which agent is the user's,
//! `abandon` messages given up, `forget` the DELETE, `records` outcomes
//! that outlive their request.

mod abandon;
mod agents;
mod deliver;
mod forget;
pub mod records;
mod run;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::agent_service::AgentService;
pub use crate::agent_service::ChatEvent;
use crate::error::GatewayResult;
use crate::ids::{AgentId, UserNumber};
use crate::inflight::InFlight;
use crate::mapping::cache::MappingCache;
use crate::mapping::lanes::UserLanes;
use crate::mapping::lease::ChatLeases;
use crate::mapping::{LeaseStore, MappingStore, RecordStore};
use crate::settings::{DuplicatePolicy, PollSettings, Settings, limit};

pub struct ChatRequest {
    pub user: UserNumber,
    pub message: String,
    /// Asked-for budget; capped by `chat.timeout_seconds`.
    pub timeout: Option<Duration>,
    pub metadata: Option<Value>,
    /// Where a streamed chat's progress goes as it happens.
    pub events: Option<ChatEvents>,
}

/// The sending side of a streamed chat's events. Unbounded: a chat produces
/// a handful, and a slow client must not slow the chat down.
pub type ChatEvents = tokio::sync::mpsc::UnboundedSender<ChatEvent>;

/// The agent's answer to one message, as the route returns it:
/// `{"response": {"status": "completed", "message_id": …, "data": …}}`.
#[derive(Debug, Serialize)]
pub struct ChatAnswer {
    pub response: CompletedMessage,
}

#[derive(Debug, Serialize)]
pub struct CompletedMessage {
    /// Always `completed`: anything else is an error, not an answer.
    pub status: &'static str,
    pub message_id: String,
    /// The dialect's messages, agent id and usage.
    pub data: Value,
}

/// See `ChatService::saturation`.
pub struct ChatSaturation {
    pub waiting: usize,
    pub leases_held: usize,
    pub cache_entries: usize,
    pub pool: Option<crate::mapping::PoolStats>,
}

#[derive(Clone)]
pub struct ChatService {
    inner: Arc<Inner>,
}

/// What a chat reads: the tuning it started with (replaced as a whole on
/// reload; a running chat keeps its own copy) over the process's state.
struct Inner {
    state: Arc<State>,
    agents: Arc<dyn AgentService>,
    poll: PollSettings,
    budget: Duration,
    max_processing: Duration,
    delete_agents: bool,
    duplicates: DuplicatePolicy,
    delete_wait: Duration,
    max_queued: Option<usize>,
    async_result_ttl: Duration,
    idempotency_ttl: Duration,
}

/// What outlives a reload: the mapping and its cache, the users' lanes and
/// leases, and the count of running chats.
struct State {
    store: Arc<dyn MappingStore>,
    cache: Arc<MappingCache>,
    lanes: UserLanes,
    leases: ChatLeases,
    /// Chats whose task is still running, answered or not: shutdown waits
    /// for them.
    running: InFlight,
    /// Outcomes kept for asynchronous and keyed chats.
    records: records::ChatRecords,
    /// Messages sent and not yet ended (cancelled when shutdown gives up).
    in_progress: abandon::InProgress,
}

impl std::ops::Deref for Inner {
    type Target = State;

    fn deref(&self) -> &State {
        &self.state
    }
}

impl ChatService {
    pub fn new<S: MappingStore + LeaseStore + RecordStore + 'static>(
        settings: &Settings,
        store: Arc<S>,
        agents: Arc<dyn AgentService>,
    ) -> Self {
        let state = Arc::new(State {
            leases: ChatLeases::new(store.clone()),
            records: records::ChatRecords::new(store.clone()),
            store,
            cache: Arc::new(MappingCache::new(
                settings.mapping.cache_capacity,
                settings.mapping.cache_ttl,
            )),
            lanes: UserLanes::default(),
            running: InFlight::default(),
            in_progress: abandon::InProgress::default(),
        });
        Self::with_state(state, settings, agents)
    }

    /// The same state (mapping, lanes, leases, running chats) with new
    /// tuning and agent-service client: what a reload swaps in. Chats
    /// already running keep the tuning they started with.
    pub fn reconfigured(&self, settings: &Settings, agents: Arc<dyn AgentService>) -> Self {
        Self::with_state(self.inner.state.clone(), settings, agents)
    }

    fn with_state(state: Arc<State>, settings: &Settings, agents: Arc<dyn AgentService>) -> Self {
        Self {
            inner: Arc::new(Inner {
                state,
                agents,
                poll: settings.chat.poll.clone(),
                budget: settings.chat.timeout,
                max_processing: settings.chat.max_processing,
                delete_agents: settings.mapping.delete_agent_on_delete,
                duplicates: settings.mapping.duplicate_policy,
                delete_wait: settings.mapping.delete_wait,
                max_queued: limit(settings.limits.user_queue_max),
                async_result_ttl: settings.chat.async_result_ttl,
                idempotency_ttl: settings.chat.idempotency_ttl,
            }),
        }
    }

    /// How full the chat flow's queues and pools are, for the gauges.
    pub fn saturation(&self) -> ChatSaturation {
        ChatSaturation {
            waiting: self.inner.lanes.waiting(),
            leases_held: self.inner.leases.held(),
            cache_entries: self.inner.cache.len_estimate(),
            pool: self.inner.store.pool_stats(),
        }
    }

    /// The outcomes of asynchronous and keyed chats.
    pub fn records(&self) -> &records::ChatRecords {
        &self.inner.records
    }

    /// How long an asynchronous chat's outcome stays readable.
    pub fn async_result_ttl(&self) -> Duration {
        self.inner.async_result_ttl
    }

    /// How long an `Idempotency-Key` stands for its chat.
    pub fn idempotency_ttl(&self) -> Duration {
        self.inner.idempotency_ttl
    }

    pub fn store(&self) -> &dyn MappingStore {
        self.inner.store.as_ref()
    }

    /// The mapping cache, for the listener that keeps it in step with other
    /// replicas.
    pub fn cache(&self) -> Arc<MappingCache> {
        self.inner.cache.clone()
    }

    /// Chats whose task is still running, including those whose caller
    /// has stopped waiting.
    pub fn running(&self) -> InFlight {
        self.inner.running.clone()
    }

    pub async fn agent_of(&self, user: &UserNumber) -> GatewayResult<Option<AgentId>> {
        self.inner.mapped(user).await
    }
}
