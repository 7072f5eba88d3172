//! Messages the gateway gives up on. Letta keeps running an abandoned run
//! (it has no clean-up for stuck runs), so the user's next message would go
//! to a busy agent or queue behind it: the run is cancelled first, and only
//! then is the user's turn released. A cancel that fails is logged, and the
//! next message goes out anyway. The EAI agent API has no cancel.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Duration;

use async_trait::async_trait;

use super::{ChatService, Inner};
use crate::agent_service::{AgentService, Cancel, Poll};
use crate::context::RequestContext;
use crate::context::RequestId;
use crate::ids::{AgentId, UserNumber};
use crate::mapping::lease::SentProbe;
use crate::metrics;

impl Inner {
    /// `chat.max_processing_seconds` passed after the send (or a run stayed
    /// `created`/`running` that long): counted, logged, cancelled at the
    /// agent service. `id` is `None` for a synchronous send, whose run id
    /// never came back.
    pub(super) async fn abandon(
        &self,
        ctx: &RequestContext,
        agent: &AgentId,
        user: &UserNumber,
        id: Option<&str>,
    ) {
        metrics::ABANDONED_MESSAGES.inc();
        tracing::warn!(
            user = %user.masked(),
            message_id = id.unwrap_or("(synchronous send)"),
            max_processing_s = self.max_processing.as_secs(),
            "Message abandoned: still processing at chat.max_processing_seconds; cancelling it, \
             then releasing the user."
        );
        cancel(self.agents.as_ref(), ctx, agent, id).await;
    }
}

impl ChatService {
    /// Cancels every message still in progress at the agent service: what
    /// a shutdown does with the messages its drain gives up. How many.
    pub async fn cancel_in_progress(&self) -> usize {
        let ctx = RequestContext::new(RequestId::generate());
        let sent = self.inner.in_progress.all();
        for (agent, id) in &sent {
            cancel(self.inner.agents.as_ref(), &ctx, agent, Some(id)).await;
        }
        sent.len()
    }
}

/// A replica waiting for a user's turn follows the message the holder sent
/// (`mapping::lease`): polled as the chat polls it, cancelled as an
/// abandoned one is.
#[async_trait]
impl SentProbe for Inner {
    async fn ended(&self, agent: &AgentId, id: &str) -> bool {
        let ctx = RequestContext::new(RequestId::generate());
        matches!(
            self.agents.poll(&ctx, agent, id).await,
            Ok(Poll::Completed(_) | Poll::Failed(_) | Poll::AgentGone)
        )
    }

    async fn give_up(&self, agent: &AgentId, id: &str) {
        let ctx = RequestContext::new(RequestId::generate());
        tracing::warn!(
            agent = %agent,
            message_id = id,
            "A message whose holder is gone outlived chat.max_processing_seconds; cancelling it."
        );
        cancel(self.agents.as_ref(), &ctx, agent, Some(id)).await;
    }

    fn bound(&self) -> Duration {
        self.max_processing
    }
}

/// Cancels one message and logs how that went (the client counts the call
/// in `eai_gateway_agent_service_calls_total{operation="cancel"}`).
pub(crate) async fn cancel(
    agents: &dyn AgentService,
    ctx: &RequestContext,
    agent: &AgentId,
    id: Option<&str>,
) {
    match agents.cancel(ctx, agent, id).await {
        Ok(Cancel::Cancelled) => {
            tracing::info!(agent = %agent, message_id = id, "Abandoned message cancelled.");
        }
        Ok(Cancel::Unsupported) => {}
        Ok(Cancel::NotCancelled(reason)) => tracing::warn!(
            agent = %agent,
            message_id = id,
            reason = %reason,
            "Abandoned message could not be cancelled; the user's next message goes out anyway."
        ),
        Err(e) => tracing::warn!(
            agent = %agent,
            message_id = id,
            error = %e,
            "Abandoned message could not be cancelled; the user's next message goes out anyway."
        ),
    }
}

/// Messages sent and not yet ended, so that a shutdown that has to give
/// them up can cancel them.
#[derive(Default)]
pub(crate) struct InProgress {
    next: AtomicU64,
    sent: Mutex<HashMap<u64, (AgentId, String)>>,
}

impl InProgress {
    /// Tracks the message until the guard drops.
    pub(super) fn track(&self, agent: &AgentId, id: &str) -> Tracked<'_> {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(key, (agent.clone(), id.to_owned()));
        Tracked { set: self, key }
    }

    /// Every message still in progress.
    pub(super) fn all(&self) -> Vec<(AgentId, String)> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (AgentId, String)>> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// See `InProgress::track`.
pub(super) struct Tracked<'a> {
    set: &'a InProgress,
    key: u64,
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.set.lock().remove(&self.key);
    }
}
