//! The chat flow: lane → mapping → (create and claim) → send → poll → answer,
//! healing a stale mapping once. Also the mapping routes' logic.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::agents::MappingStore;
use crate::agents::lanes::UserLanes;
use crate::config::{ChatConfig, PollConfig};
use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::ids::{AgentId, UserNumber};
use crate::metrics;
use crate::upstream::{AgentService, Deleted, Poll, Sent, poll};

pub struct ChatRequest {
    pub user: UserNumber,
    pub message: String,
    /// Asked-for budget; capped by `chat.timeout_seconds`.
    pub timeout: Option<Duration>,
    pub metadata: Option<Value>,
}

#[derive(Clone)]
pub struct ChatService {
    store: Arc<dyn MappingStore>,
    agents: Arc<dyn AgentService>,
    lanes: UserLanes,
    poll: PollConfig,
    budget: Duration,
    delete_upstream: bool,
}

enum Attempt {
    Answered(Value),
    AgentGone,
}

impl ChatService {
    pub fn new(
        store: Arc<dyn MappingStore>,
        agents: Arc<dyn AgentService>,
        chat: &ChatConfig,
        delete_upstream: bool,
    ) -> Self {
        Self {
            store,
            agents,
            lanes: UserLanes::default(),
            poll: chat.poll.clone(),
            budget: Duration::from_secs_f64(chat.timeout_seconds),
            delete_upstream,
        }
    }

    pub fn store(&self) -> &dyn MappingStore {
        self.store.as_ref()
    }

    pub async fn chat(&self, req: ChatRequest) -> GatewayResult<Value> {
        let budget = req.timeout.map_or(self.budget, |t| t.min(self.budget));
        let deadline = Instant::now() + budget;
        let _lane = tokio::time::timeout_at(deadline, self.lanes.acquire(&req.user))
            .await
            .map_err(|_| {
                GatewayError::new(
                    ErrorKind::PollTimeout,
                    "earlier messages of this user are still being answered",
                )
            })?;
        let mut agent = self.agent_for(&req.user).await?;
        if let Attempt::Answered(v) = self.attempt(&agent, &req, deadline).await? {
            return Ok(v);
        }
        // The stored agent is gone upstream: replace it once, then deliver.
        tracing::info!(user = %req.user.masked(), agent = %agent, "Stored agent is gone upstream; replacing it.");
        agent = self.heal(&req.user, &agent).await?;
        match self.attempt(&agent, &req, deadline).await? {
            Attempt::Answered(v) => Ok(v),
            Attempt::AgentGone => Err(GatewayError::agent_service(
                "the agent vanished again right after it was replaced",
            )),
        }
    }

    async fn attempt(
        &self,
        agent: &AgentId,
        req: &ChatRequest,
        deadline: Instant,
    ) -> GatewayResult<Attempt> {
        let id = match self
            .agents
            .send(agent, &req.message, req.metadata.as_ref())
            .await?
        {
            Sent::Accepted(id) => id,
            Sent::AgentGone => return Ok(Attempt::AgentGone),
        };
        let finished =
            poll::until_done(self.agents.as_ref(), agent, &id, &self.poll, deadline).await?;
        metrics::CHAT_POLLS.observe(f64::from(finished.polls));
        match finished.outcome {
            Poll::Completed(data) => Ok(Attempt::Answered(json!({
                "response": {"status": "completed", "message_id": id, "data": data}
            }))),
            Poll::Failed(reason) => Err(GatewayError::agent_service(reason)),
            Poll::AgentGone => Ok(Attempt::AgentGone),
            Poll::Pending => Err(GatewayError::new(
                ErrorKind::Internal,
                "poll ended while pending",
            )),
        }
    }

    /// The user's agent, created and claimed when there is none.
    async fn agent_for(&self, user: &UserNumber) -> GatewayResult<AgentId> {
        if let Some(agent) = self.store.get(user).await? {
            return Ok(agent);
        }
        // Creation runs as its own task: a client that hangs up between the
        // upstream create and the claim must not leave an unrecorded agent.
        let this = self.clone();
        let user = user.clone();
        run_detached(async move {
            let created = this.create(&user).await?;
            match this.store.claim(&user, &created).await {
                Ok(winner) => {
                    if winner != created {
                        this.discard(created);
                    }
                    Ok(winner)
                }
                Err(e) => {
                    this.discard(created);
                    Err(e)
                }
            }
        })
        .await
    }

    async fn heal(&self, user: &UserNumber, stale: &AgentId) -> GatewayResult<AgentId> {
        let this = self.clone();
        let user = user.clone();
        let stale = stale.clone();
        run_detached(async move {
            let created = this.create(&user).await?;
            let current = match this.store.replace(&user, &stale, &created).await {
                Ok(Some(current)) => Ok(current),
                // Deleted meanwhile: the new agent becomes the mapping.
                Ok(None) => this.store.claim(&user, &created).await,
                Err(e) => Err(e),
            };
            match current {
                Ok(current) => {
                    if current != created {
                        this.discard(created);
                    }
                    Ok(current)
                }
                Err(e) => {
                    this.discard(created);
                    Err(e)
                }
            }
        })
        .await
    }

    async fn create(&self, user: &UserNumber) -> GatewayResult<AgentId> {
        let agent = self.agents.create_agent(user).await?;
        metrics::AGENTS_CREATED.inc();
        tracing::info!(user = %user.masked(), agent = %agent, "Agent created.");
        Ok(agent)
    }

    /// Deletes an agent that lost a race or could not be recorded, so no
    /// agent holding a user's data is left behind unmapped.
    fn discard(&self, agent: AgentId) {
        let agents = self.agents.clone();
        tokio::spawn(async move {
            match agents.delete_agent(&agent).await {
                Ok(_) => tracing::info!(agent = %agent, "Surplus agent deleted upstream."),
                Err(e) => {
                    tracing::error!(agent = %agent, error = %e, "Surplus agent could not be deleted upstream.")
                }
            }
        });
    }

    pub async fn agent_of(&self, user: &UserNumber) -> GatewayResult<Option<AgentId>> {
        self.store.get(user).await
    }

    /// Removes the mapping (and the agent upstream when configured).
    pub async fn forget(&self, user: &UserNumber) -> GatewayResult<()> {
        let Some(agent) = self.store.delete(user).await? else {
            return Err(GatewayError::new(
                ErrorKind::NotFound,
                "no agent is mapped to this user",
            ));
        };
        if self.delete_upstream {
            match self.agents.delete_agent(&agent).await {
                Ok(Deleted::Deleted | Deleted::NotFound) => {}
                // The mapping is already gone; report the agent for cleanup.
                Err(e) => {
                    tracing::error!(agent = %agent, error = %e, "Unmapped agent could not be deleted upstream.")
                }
            }
        }
        Ok(())
    }
}

async fn run_detached<T: Send + 'static>(
    fut: impl std::future::Future<Output = GatewayResult<T>> + Send + 'static,
) -> GatewayResult<T> {
    tokio::spawn(fut).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "Agent creation task failed.");
        Err(GatewayError::new(ErrorKind::Internal, "internal error"))
    })
}
