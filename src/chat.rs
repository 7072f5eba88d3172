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

mod abandon;
mod agents;
pub mod records;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use std::sync::Mutex;

use tokio::time::Instant;

pub use crate::agent_service::ChatEvent;
use crate::agent_service::{AgentService, Deleted, Poll, Sent, poll};
use crate::context::RequestContext;
use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::ids::{AgentId, UserNumber};
use crate::inflight::InFlight;
use crate::mapping::cache::MappingCache;
use crate::mapping::lanes::UserLanes;
use crate::mapping::lease::{ChatLeases, Lease};
use crate::mapping::{LeaseStore, MappingStore, RecordStore};
use crate::metrics;
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
    delete_upstream: bool,
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

/// How far a chat's task has come, shared with its caller. A plain cell,
/// not a channel: every chat in flight holds one (a tokio watch channel
/// costs about 450 bytes, 4 MB per 10,000 chats), and the caller reads it
/// only when its wait runs out.
#[derive(Clone, Default)]
struct ProgressCell(Arc<Mutex<Progress>>);

impl ProgressCell {
    fn set(&self, progress: Progress) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = progress;
    }

    fn get(&self) -> Progress {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the caller has stopped waiting (and dropped its side).
    fn abandoned_by_caller(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }

    /// The 504 for a caller whose wait ran out; names the message if it
    /// was sent (a send in flight gets a moment to return its id).
    async fn gave_up(&self) -> GatewayError {
        let settled = Instant::now() + SEND_SETTLE;
        while self.get() == Progress::Sending && Instant::now() < settled {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match self.get() {
            Progress::Sent(id) => gave_up().with_message_id(id),
            Progress::Sending => GatewayError::new(
                ErrorKind::PollTimeout,
                "the agent did not answer within the polling budget; the message is being delivered",
            ),
            Progress::Preparing => GatewayError::new(
                ErrorKind::PollTimeout,
                "earlier messages of this user are still being answered",
            ),
        }
    }
}

/// How far a chat's task has come, for a caller that stops waiting.
#[derive(Clone, Default, PartialEq, Eq)]
enum Progress {
    /// Waiting for the user's turn, or finding the agent: nothing sent.
    #[default]
    Preparing,
    /// The send is on the wire.
    Sending,
    /// Delivered; polled under this id.
    Sent(String),
}

/// How long a caller whose wait ran out mid-send waits for the send to
/// return, to name the message in its 504.
const SEND_SETTLE: Duration = Duration::from_secs(2);

fn gave_up() -> GatewayError {
    GatewayError::new(
        ErrorKind::PollTimeout,
        "the agent did not answer within the polling budget",
    )
}

enum Attempt {
    Answered(ChatAnswer),
    AgentGone,
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
                delete_upstream: settings.mapping.delete_upstream_on_delete,
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

    /// Runs one chat to its answer, or to the caller's deadline (504 with
    /// the message id when it was sent). Everything from the user's lane on
    /// runs in a task of its own (see the module comment).
    pub async fn chat(&self, ctx: RequestContext, req: ChatRequest) -> GatewayResult<ChatAnswer> {
        self.start(ctx, req)?.answer().await
    }

    /// When a caller asking for `timeout` stops waiting.
    pub fn deadline_for(&self, timeout: Option<Duration>) -> Instant {
        let budget = timeout.map_or(self.inner.budget, |t| t.min(self.inner.budget));
        Instant::now() + budget
    }

    /// Queues the chat in its user's lane and starts its task; the caller
    /// then waits for its answer (`ChatRun::answer`) or for its end
    /// (`ChatRun::outcome`). Refused (429) when the user's queue is full.
    pub fn start(&self, ctx: RequestContext, req: ChatRequest) -> GatewayResult<ChatRun> {
        let deadline = self.deadline_for(req.timeout);
        let ticket = self
            .inner
            .lanes
            .enqueue(&req.user, self.inner.max_queued)
            .map_err(|_| {
                GatewayError::new(
                    ErrorKind::UserQueueFull,
                    "too many messages of this user are waiting for an answer",
                )
                .retry_after(1)
            })?;
        let inner = self.inner.clone();
        let running = inner.running.enter();
        let progress = ProgressCell::default();
        let watched = progress.clone();
        let task = tokio::spawn(async move {
            let _running = running;
            let _lane = tokio::time::timeout_at(deadline, ticket.wait())
                .await
                .map_err(|_| {
                    GatewayError::new(
                        ErrorKind::PollTimeout,
                        "earlier messages of this user are still being answered",
                    )
                })?;
            let result = inner.chat_in_turn(&ctx, req, deadline, &progress).await;
            if progress.abandoned_by_caller() {
                // The caller has had its 504; this is the only trace left.
                tracing::info!(
                    request_id = %ctx.id,
                    outcome = match &result {
                        Ok(_) => "answered",
                        Err(e) => e.kind.label(),
                    },
                    "Message finished after its caller stopped waiting."
                );
            }
            result
        });
        Ok(ChatRun {
            task,
            progress: watched,
            deadline,
        })
    }

    pub async fn agent_of(&self, user: &UserNumber) -> GatewayResult<Option<AgentId>> {
        self.inner.mapped(user).await
    }

    /// Removes the mapping (and the agent upstream when configured). Takes
    /// the user's turn like a message does, so it never runs under a
    /// message in progress on any replica, and a message queued behind it
    /// starts fresh; answers 503 with `Retry-After` when the turn does not
    /// come within `agents.delete_wait_seconds`.
    pub async fn forget(&self, ctx: &RequestContext, user: &UserNumber) -> GatewayResult<()> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.delete_wait;
        let busy = || {
            GatewayError::new(
                ErrorKind::UserBusy,
                "a message of this user is still being answered; retry the DELETE later",
            )
            .retry_after(inner.delete_wait.as_secs().max(1))
        };
        // No queue cap: forgetting a user must not be refused for being busy.
        let Ok(ticket) = inner.lanes.enqueue(user, None) else {
            return Err(busy());
        };
        let _lane = tokio::time::timeout_at(deadline, ticket.wait())
            .await
            .map_err(|_| busy())?;
        let lease = match inner.leases.acquire(user, deadline, &**inner).await {
            Ok(lease) => lease,
            Err(e) if e.kind == ErrorKind::PollTimeout => return Err(busy()),
            Err(e) => return Err(e),
        };
        let result = inner.forget_in_turn(ctx, user).await;
        lease.release().await;
        result
    }
}

/// A chat whose task has started.
pub struct ChatRun {
    task: tokio::task::JoinHandle<GatewayResult<ChatAnswer>>,
    progress: ProgressCell,
    deadline: Instant,
}

impl ChatRun {
    /// The answer, or at the caller's deadline a 504 that names the message
    /// if it was sent; the chat goes on either way.
    pub async fn answer(mut self) -> GatewayResult<ChatAnswer> {
        let joined = match tokio::time::timeout_at(self.deadline, &mut self.task).await {
            Ok(joined) => joined,
            // Finished on the deadline itself: the answer still counts.
            Err(_) if self.task.is_finished() => self.task.await,
            Err(_) => return Err(self.progress.gave_up().await),
        };
        Self::joined(joined)
    }

    /// How the chat ended, however long that takes (up to
    /// `chat.max_processing_seconds` after the send).
    pub async fn outcome(self) -> GatewayResult<ChatAnswer> {
        Self::joined(self.task.await)
    }

    /// Follows the chat from elsewhere (a second waiter).
    pub fn watch(&self) -> ChatWatch {
        ChatWatch(self.progress.clone())
    }

    /// The caller's deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    fn joined(
        joined: Result<GatewayResult<ChatAnswer>, tokio::task::JoinError>,
    ) -> GatewayResult<ChatAnswer> {
        joined.unwrap_or_else(|e| {
            tracing::error!(error = %e, "Chat task failed.");
            Err(GatewayError::new(ErrorKind::Internal, "internal error"))
        })
    }
}

/// How far a chat has come, for a caller that waits for it elsewhere.
#[derive(Clone)]
pub struct ChatWatch(ProgressCell);

impl ChatWatch {
    /// Whether the message may have reached the agent.
    pub fn delivery_started(&self) -> bool {
        self.0.get() != Progress::Preparing
    }

    /// The 504 for a caller whose wait ran out (see `ChatRun::answer`).
    pub async fn gave_up(&self) -> GatewayError {
        self.0.gave_up().await
    }
}

impl Inner {
    async fn forget_in_turn(&self, ctx: &RequestContext, user: &UserNumber) -> GatewayResult<()> {
        self.cache.remove(user);
        let agents = self.store.delete(user).await?;
        if agents.is_empty() {
            return Err(GatewayError::new(
                ErrorKind::NotFound,
                "no agent is mapped to this user",
            ));
        }
        // A user stored under two spellings had two agents: forgetting
        // them forgets both.
        for agent in agents.iter().filter(|_| self.delete_upstream) {
            match self.agents.delete_agent(ctx, agent).await {
                Ok(Deleted::Deleted | Deleted::NotFound) => {}
                // The mapping is already gone; leave a trace for cleanup.
                Err(e) => {
                    tracing::error!(agent = %agent, error = %e, "Unmapped agent could not be deleted upstream.")
                }
            }
        }
        Ok(())
    }

    /// Runs while holding the user's lane; `deadline` is the caller's.
    async fn chat_in_turn(
        &self,
        ctx: &RequestContext,
        req: ChatRequest,
        deadline: Instant,
        progress: &ProgressCell,
    ) -> GatewayResult<ChatAnswer> {
        let lease = self.leases.acquire(&req.user, deadline, self).await?;
        let result = self.converse(ctx, &req, &lease, deadline, progress).await;
        lease.release().await;
        result
    }

    async fn converse(
        &self,
        ctx: &RequestContext,
        req: &ChatRequest,
        lease: &Lease,
        deadline: Instant,
        progress: &ProgressCell,
    ) -> GatewayResult<ChatAnswer> {
        let agent = self.agent_for(ctx, &req.user).await?;
        if let Attempt::Answered(v) = self
            .attempt(ctx, &agent, req, lease, deadline, progress)
            .await?
        {
            return Ok(v);
        }
        tracing::info!(user = %req.user.masked(), agent = %agent, "Stored agent is gone upstream; replacing it.");
        let agent = self.heal(ctx, &req.user, &agent).await?;
        match self
            .attempt(ctx, &agent, req, lease, deadline, progress)
            .await?
        {
            Attempt::Answered(v) => Ok(v),
            // Once only: a second disappearance is reported, not chased.
            Attempt::AgentGone => Err(GatewayError::agent_service(
                "the agent vanished again right after it was replaced",
            )),
        }
    }

    /// Sends the message unless the caller has already stopped waiting, and
    /// polls it until it ends or `max_processing` after the send, whether
    /// or not the caller still waits.
    async fn attempt(
        &self,
        ctx: &RequestContext,
        agent: &AgentId,
        req: &ChatRequest,
        lease: &Lease,
        deadline: Instant,
        progress: &ProgressCell,
    ) -> GatewayResult<Attempt> {
        if Instant::now() >= deadline {
            // The caller has its 504; a message sent now would be answered
            // to nobody and could overlap the one it retries with.
            return Err(gave_up());
        }
        if !lease.sending(agent).await? {
            // Taken over while this process could not renew it: another
            // replica has the turn, and a message from here could overlap.
            return Err(GatewayError::new(
                ErrorKind::UserBusy,
                "this user's turn passed to another replica; send the message again",
            )
            .retry_after(1));
        }
        progress.set(Progress::Sending);
        ctx.set_deadline(deadline.into_std());
        let processing_deadline = Instant::now() + self.max_processing;
        let emit = |event: ChatEvent| {
            if let ChatEvent::Sent(id) = &event {
                if matches!(progress.get(), Progress::Sent(known) if &known == id) {
                    return;
                }
                progress.set(Progress::Sent(id.clone()));
            }
            if let Some(events) = &req.events {
                // The receiver is gone when the client left: nothing to do.
                let _ = events.send(event);
            }
        };
        let sent = match &req.events {
            Some(_) => {
                self.agents
                    .send_streaming(
                        ctx,
                        agent,
                        &req.message,
                        req.metadata.as_ref(),
                        self.max_processing,
                        &emit,
                    )
                    .await
            }
            None => {
                self.agents
                    .send(
                        ctx,
                        agent,
                        &req.message,
                        req.metadata.as_ref(),
                        self.max_processing,
                    )
                    .await
            }
        };
        // Streamed: the messages have reached the events already.
        let streamed = matches!(sent, Ok(Sent::Streamed(_)));
        let (id, finished) = match sent {
            Ok(Sent::Accepted(id) | Sent::Streamed(id)) => {
                lease.sent(&id).await;
                let _tracked = self.in_progress.track(agent, &id);
                let finished = self
                    .follow(ctx, agent, &req.user, &id, processing_deadline, &emit)
                    .await?;
                (id, finished)
            }
            // Synchronous delivery: answered without a single poll.
            Ok(Sent::Answered { id, outcome }) => {
                emit(ChatEvent::Sent(id.clone()));
                (id, poll::Finished { outcome, polls: 0 })
            }
            Ok(Sent::AgentGone) => {
                progress.set(Progress::Preparing);
                return Ok(Attempt::AgentGone);
            }
            Err(e) => {
                if e.kind == ErrorKind::PollTimeout {
                    self.abandon(ctx, agent, &req.user, None).await;
                }
                return Err(e);
            }
        };
        if let (Poll::Completed(data), false) = (&finished.outcome, streamed) {
            // Not streamed by the agent service: the messages as one batch.
            for message in data
                .get("messages")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                emit(ChatEvent::Message(message.clone()));
            }
        }
        metrics::CHAT_POLLS.observe(f64::from(finished.polls));
        match finished.outcome {
            Poll::Completed(data) => Ok(Attempt::Answered(ChatAnswer {
                response: CompletedMessage {
                    status: "completed",
                    message_id: id,
                    data,
                },
            })),
            Poll::Failed(reason) => Err(GatewayError::agent_service(reason).with_message_id(id)),
            Poll::AgentGone => {
                progress.set(Progress::Preparing);
                Ok(Attempt::AgentGone)
            }
            Poll::Pending => Err(GatewayError::new(
                ErrorKind::Internal,
                "poll ended while pending",
            )),
        }
    }

    /// Polls a delivered message until it ends or `processing_deadline`.
    async fn follow(
        &self,
        ctx: &RequestContext,
        agent: &AgentId,
        user: &UserNumber,
        id: &str,
        processing_deadline: Instant,
        emit: &(dyn Fn(ChatEvent) + Sync),
    ) -> GatewayResult<poll::Finished> {
        emit(ChatEvent::Sent(id.to_owned()));
        let polled = poll::until_done(
            ctx,
            self.agents.as_ref(),
            agent,
            id,
            &self.poll,
            processing_deadline,
        )
        .await;
        if let Err(e) = &polled
            && e.kind == ErrorKind::PollTimeout
        {
            self.abandon(ctx, agent, user, Some(id)).await;
        }
        polled.map_err(|e| e.with_message_id(id.to_owned()))
    }
}
