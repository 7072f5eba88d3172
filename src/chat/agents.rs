//! Which agent is the user's: the cache, then the store (by the duplicate
//! policy), then a new agent created and claimed; and its replacement when
//! it turns out to be gone from the agent service. An agent created but not
//! mapped is deleted again, so no agent is left behind.

use super::Inner;
use crate::context::RequestContext;
use crate::error::GatewayResult;
use crate::ids::{AgentId, UserNumber};
use crate::metrics;
use crate::spans::{Kind, Span};

/// A span of a chat's phase, naming the user by its masked form (never the
/// number).
pub(super) fn phase(
    ctx: &RequestContext,
    name: &'static str,
    kind: Kind,
    user: &UserNumber,
) -> Span {
    let mut span = ctx.span(name, kind);
    if span.is_recording() {
        span.set("eai.user", user.masked());
    }
    span
}

/// Where the mapping lookup found the user's agent.
fn found(span: &mut Span, source: &'static str, agent: &AgentId) {
    if span.is_recording() {
        span.set("eai.mapping.source", source);
        span.set("eai.agent_id", agent.to_string());
    }
}

impl Inner {
    /// The agent mapped to the user in the store, by the duplicate policy.
    pub(super) async fn mapped(&self, user: &UserNumber) -> GatewayResult<Option<AgentId>> {
        crate::mapping::duplicates::lookup(&*self.store, self.duplicates, user).await
    }

    /// The user's agent: cache, then store, then created and claimed.
    pub(super) async fn agent_for(
        &self,
        ctx: &RequestContext,
        user: &UserNumber,
    ) -> GatewayResult<AgentId> {
        let mut lookup = phase(ctx, "chat.mapping", Kind::Internal, user);
        if let Some(agent) = self.cache.get(user) {
            found(&mut lookup, "cache", &agent);
            return Ok(agent);
        }
        let mapped = self.mapped(user).await;
        if let Ok(Some(agent)) = &mapped {
            found(&mut lookup, "database", agent);
        }
        if let Some(agent) = mapped.inspect_err(|_| lookup.fail())? {
            self.cache.put(user, &agent);
            return Ok(agent);
        }
        lookup.set("eai.mapping.source", "none");
        drop(lookup);
        let created = self.create(ctx, user).await?;
        let mut claim = phase(ctx, "chat.agent_claim", Kind::Internal, user);
        let claimed = self.store.claim(user, &created).await;
        if let Ok(winner) = &claimed
            && claim.is_recording()
        {
            claim.set("eai.agent_id", winner.to_string());
        }
        drop(claim);
        let winner = self.settle(ctx, created, claimed)?;
        self.cache.put(user, &winner);
        Ok(winner)
    }

    /// Replaces `stale` (gone from the agent service) with a new agent,
    /// unless another replica already did.
    pub(super) async fn heal(
        &self,
        ctx: &RequestContext,
        user: &UserNumber,
        stale: &AgentId,
    ) -> GatewayResult<AgentId> {
        self.cache.remove(user);
        if let Some(current) = self.mapped(user).await?
            && &current != stale
        {
            self.cache.put(user, &current);
            return Ok(current);
        }
        let created = self.create(ctx, user).await?;
        let swapped = match self.store.replace(user, stale, &created).await {
            Ok(true) => Ok(created.clone()),
            // Replaced elsewhere meanwhile: theirs stands; deleted
            // meanwhile: the new agent becomes the mapping.
            Ok(false) => match self.mapped(user).await {
                Ok(Some(current)) => Ok(current),
                Ok(None) => self.store.claim(user, &created).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let winner = self.settle(ctx, created, swapped)?;
        self.cache.put(user, &winner);
        Ok(winner)
    }

    /// After creating `created`, keeps it if it became the mapping and
    /// deletes it at the agent service otherwise, so no agent is left
    /// unmapped.
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
        let mut span = phase(ctx, "chat.agent_create", Kind::Client, user);
        let agent = self
            .agents
            .create_agent(&ctx.under(&span), user)
            .await
            .inspect_err(|_| span.fail())?;
        if span.is_recording() {
            span.set("eai.agent_id", agent.to_string());
        }
        drop(span);
        metrics::AGENTS_CREATED.inc();
        tracing::info!(user = %user.masked(), agent = %agent, "Agent created.");
        Ok(agent)
    }

    fn discard(&self, ctx: &RequestContext, agent: AgentId) {
        let agents = self.agents.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            match agents.delete_agent(&ctx, &agent).await {
                Ok(_) => {
                    tracing::info!(agent = %agent, "Surplus agent deleted at the agent service.")
                }
                Err(e) => {
                    tracing::error!(agent = %agent, error = %e, "Surplus agent could not be deleted at the agent service.")
                }
            }
        });
    }
}
