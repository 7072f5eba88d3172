//! Forgetting a user (the mapping routes' DELETE): the mapping, and the
//! agents too when configured, in the user's turn.

use tokio::time::Instant;

use super::{ChatService, Inner};
use crate::agent_service::Deleted;
use crate::context::RequestContext;
use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::ids::UserNumber;

impl ChatService {
    /// Removes the mapping (and the agent at the agent service when
    /// configured). Takes the user's turn like a message does, so it never
    /// runs under a message in progress on any replica, and a message
    /// queued behind it starts fresh; answers 503 with `Retry-After` when
    /// the turn does not come within `agents.delete_wait_seconds`.
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
        for agent in agents.iter().filter(|_| self.delete_agents) {
            match self.agents.delete_agent(ctx, agent).await {
                Ok(Deleted::Deleted | Deleted::NotFound) => {}
                // The mapping is already gone; leave a trace for cleanup.
                Err(e) => {
                    tracing::error!(agent = %agent, error = %e, "Unmapped agent could not be deleted at the agent service.")
                }
            }
        }
        Ok(())
    }
}
