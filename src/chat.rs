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

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::agent_service::{AgentService, Deleted, Poll, Sent, poll};
use crate::context::RequestContext;
use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::ids::{AgentId, UserNumber};
use crate::mapping::cache::MappingCache;
use crate::mapping::lanes::UserLanes;
use crate::mapping::lease::ChatLeases;
use crate::mapping::{LeaseStore, MappingStore};
use crate::metrics;
use crate::settings::{PollSettings, Settings, limit};

pub struct ChatRequest {
    pub user: UserNumber,
    pub message: String,
    /// Asked-for budget; capped by `chat.timeout_seconds`.
    pub timeout: Option<Duration>,
    pub metadata: Option<Value>,
}

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

#[derive(Clone)]
pub struct ChatService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn MappingStore>,
    agents: Arc<dyn AgentService>,
    cache: MappingCache,
    lanes: UserLanes,
    leases: ChatLeases,
    poll: PollSettings,
    budget: Duration,
    delete_upstream: bool,
    max_queued: Option<usize>,
}

enum Attempt {
    Answered(ChatAnswer),
    AgentGone,
}

impl ChatService {
    pub fn new<S: MappingStore + LeaseStore + 'static>(
        settings: &Settings,
        store: Arc<S>,
        agents: Arc<dyn AgentService>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                leases: ChatLeases::new(store.clone()),
                store,
                agents,
                cache: MappingCache::new(
                    settings.mapping.cache_capacity,
                    settings.mapping.cache_ttl,
                ),
                lanes: UserLanes::default(),
                poll: settings.chat.poll.clone(),
                budget: settings.chat.timeout,
                delete_upstream: settings.mapping.delete_upstream_on_delete,
                max_queued: limit(settings.limits.user_queue_max),
            }),
        }
    }

    pub fn store(&self) -> &dyn MappingStore {
        self.inner.store.as_ref()
    }

    /// Runs one chat to its answer. Everything from the user's lane on runs
    /// in a task of its own (see the module comment).
    pub async fn chat(&self, ctx: RequestContext, req: ChatRequest) -> GatewayResult<ChatAnswer> {
        let budget = req
            .timeout
            .map_or(self.inner.budget, |t| t.min(self.inner.budget));
        let deadline = Instant::now() + budget;
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
        let task = tokio::spawn(async move {
            let _lane = tokio::time::timeout_at(deadline, ticket.wait())
                .await
                .map_err(|_| {
                    GatewayError::new(
                        ErrorKind::PollTimeout,
                        "earlier messages of this user are still being answered",
                    )
                })?;
            inner.chat_in_turn(&ctx, req, deadline).await
        });
        task.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "Chat task failed.");
            Err(GatewayError::new(ErrorKind::Internal, "internal error"))
        })
    }

    pub async fn agent_of(&self, user: &UserNumber) -> GatewayResult<Option<AgentId>> {
        self.inner.store.get(user).await
    }

    /// Removes the mapping (and the agent upstream when configured).
    pub async fn forget(&self, ctx: &RequestContext, user: &UserNumber) -> GatewayResult<()> {
        let inner = &self.inner;
        inner.cache.remove(user);
        let Some(agent) = inner.store.delete(user).await? else {
            return Err(GatewayError::new(
                ErrorKind::NotFound,
                "no agent is mapped to this user",
            ));
        };
        if inner.delete_upstream {
            match inner.agents.delete_agent(ctx, &agent).await {
                Ok(Deleted::Deleted | Deleted::NotFound) => {}
                // The mapping is already gone; leave a trace for cleanup.
                Err(e) => {
                    tracing::error!(agent = %agent, error = %e, "Unmapped agent could not be deleted upstream.")
                }
            }
        }
        Ok(())
    }
}

impl Inner {
    /// Runs while holding the user's lane.
    async fn chat_in_turn(
        &self,
        ctx: &RequestContext,
        req: ChatRequest,
        deadline: Instant,
    ) -> GatewayResult<ChatAnswer> {
        let lease = self.leases.acquire(&req.user, deadline).await?;
        let result = self.converse(ctx, &req, deadline).await;
        lease.release().await;
        result
    }

    async fn converse(
        &self,
        ctx: &RequestContext,
        req: &ChatRequest,
        deadline: Instant,
    ) -> GatewayResult<ChatAnswer> {
        let agent = self.agent_for(ctx, &req.user).await?;
        if let Attempt::Answered(v) = self.attempt(ctx, &agent, req, deadline).await? {
            return Ok(v);
        }
        tracing::info!(user = %req.user.masked(), agent = %agent, "Stored agent is gone upstream; replacing it.");
        let agent = self.heal(ctx, &req.user, &agent).await?;
        match self.attempt(ctx, &agent, req, deadline).await? {
            Attempt::Answered(v) => Ok(v),
            // Once only: a second disappearance is reported, not chased.
            Attempt::AgentGone => Err(GatewayError::agent_service(
                "the agent vanished again right after it was replaced",
            )),
        }
    }

    async fn attempt(
        &self,
        ctx: &RequestContext,
        agent: &AgentId,
        req: &ChatRequest,
        deadline: Instant,
    ) -> GatewayResult<Attempt> {
        let budget = deadline.saturating_duration_since(Instant::now());
        let sent = self
            .agents
            .send(ctx, agent, &req.message, req.metadata.as_ref(), budget)
            .await?;
        let (id, finished) = match sent {
            Sent::Accepted(id) => {
                let finished =
                    poll::until_done(ctx, self.agents.as_ref(), agent, &id, &self.poll, deadline)
                        .await?;
                (id, finished)
            }
            // Synchronous delivery: answered without a single poll.
            Sent::Answered { id, outcome } => (id, poll::Finished { outcome, polls: 0 }),
            Sent::AgentGone => return Ok(Attempt::AgentGone),
        };
        metrics::CHAT_POLLS.observe(f64::from(finished.polls));
        match finished.outcome {
            Poll::Completed(data) => Ok(Attempt::Answered(ChatAnswer {
                response: CompletedMessage {
                    status: "completed",
                    message_id: id,
                    data,
                },
            })),
            Poll::Failed(reason) => Err(GatewayError::agent_service(reason)),
            Poll::AgentGone => Ok(Attempt::AgentGone),
            Poll::Pending => Err(GatewayError::new(
                ErrorKind::Internal,
                "poll ended while pending",
            )),
        }
    }

    /// The user's agent: cache, then store, then created and claimed.
    async fn agent_for(&self, ctx: &RequestContext, user: &UserNumber) -> GatewayResult<AgentId> {
        if let Some(agent) = self.cache.get(user) {
            return Ok(agent);
        }
        if let Some(agent) = self.store.get(user).await? {
            self.cache.put(user, &agent);
            return Ok(agent);
        }
        let created = self.create(ctx, user).await?;
        let claimed = self.store.claim(user, &created).await;
        let winner = self.settle(ctx, created, claimed)?;
        self.cache.put(user, &winner);
        Ok(winner)
    }

    /// Replaces `stale` (gone upstream) with a new agent, unless another
    /// replica already did.
    async fn heal(
        &self,
        ctx: &RequestContext,
        user: &UserNumber,
        stale: &AgentId,
    ) -> GatewayResult<AgentId> {
        self.cache.remove(user);
        if let Some(current) = self.store.get(user).await?
            && &current != stale
        {
            self.cache.put(user, &current);
            return Ok(current);
        }
        let created = self.create(ctx, user).await?;
        let swapped = match self.store.replace(user, stale, &created).await {
            Ok(Some(current)) => Ok(current),
            // Deleted meanwhile: the new agent becomes the mapping.
            Ok(None) => self.store.claim(user, &created).await,
            Err(e) => Err(e),
        };
        let winner = self.settle(ctx, created, swapped)?;
        self.cache.put(user, &winner);
        Ok(winner)
    }

    /// After creating `created`, keeps it if it became the mapping and
    /// deletes it upstream otherwise, so no agent is left unmapped.
    fn settle(
        &self,
        ctx: &RequestContext,
        created: AgentId,
        mapped: GatewayResult<AgentId>,
    ) -> GatewayResult<AgentId> {
        match mapped {
            Ok(winner) => {
                if winner != created {
                    self.discard(ctx, created);
                }
                Ok(winner)
            }
            Err(e) => {
                self.discard(ctx, created);
                Err(e)
            }
        }
    }

    async fn create(&self, ctx: &RequestContext, user: &UserNumber) -> GatewayResult<AgentId> {
        let agent = self.agents.create_agent(ctx, user).await?;
        metrics::AGENTS_CREATED.inc();
        tracing::info!(user = %user.masked(), agent = %agent, "Agent created.");
        Ok(agent)
    }

    fn discard(&self, ctx: &RequestContext, agent: AgentId) {
        let agents = self.agents.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            match agents.delete_agent(&ctx, &agent).await {
                Ok(_) => tracing::info!(agent = %agent, "Surplus agent deleted upstream."),
                Err(e) => {
                    tracing::error!(agent = %agent, error = %e, "Surplus agent could not be deleted upstream.")
                }
            }
        });
    }
}
