//! The agent-service client: one trait, one implementation per dialect
//! (Letta, EAI), the HTTP path they share and the polling loop.

mod eai;
mod http;
mod letta;
pub(crate) use letta::GATEWAY_TAG;
pub mod poll;
mod retry;
mod sse;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::context::RequestContext;
use crate::error::GatewayResult;
use crate::ids::{AgentId, UserNumber};
use crate::settings::{AgentServiceSettings, Dialect};

/// What a send returned.
pub enum Sent {
    /// Accepted; poll with this id (EAI message id or Letta run id).
    Accepted(String),
    /// The agent does not exist at the agent service; nothing was delivered.
    AgentGone,
    /// Delivered, and its messages already streamed to the chat's events;
    /// poll with this id for the outcome.
    Streamed(String),
    /// Delivered and already answered (synchronous delivery): `id` is the
    /// message id for the caller, `outcome` what a poll would have returned.
    Answered { id: String, outcome: Poll },
}

/// What a streamed send reports while it runs (the chat passes these on;
/// `routes::chat` turns them into server-sent events).
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    /// Delivered to the agent under this message id.
    Sent(String),
    /// One of the agent's messages, or a piece of one (the agent service
    /// streams long messages in pieces that share their `id`).
    Message(Value),
}

/// What one poll saw.
#[derive(Debug)]
pub enum Poll {
    Pending,
    /// Finished; `data` is what the caller gets under `response.data`.
    Completed(Value),
    /// Finished without an answer; the reason goes to the caller.
    Failed(String),
    /// The agent vanished before processing; nothing was delivered.
    AgentGone,
}

pub enum Deleted {
    Deleted,
    NotFound,
}

/// What cancelling an abandoned message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    Cancelled,
    /// The service answered, but did not cancel it (the reason).
    NotCancelled(String),
    /// The dialect has no cancel (EAI).
    Unsupported,
}

/// An agent the gateway created, as the agent service lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ListedAgent {
    pub id: AgentId,
    pub name: String,
    /// RFC 3339, as the agent service gave it.
    pub created_at: String,
}

#[async_trait]
pub trait AgentService: Send + Sync {
    async fn create_agent(&self, ctx: &RequestContext, user: &UserNumber)
    -> GatewayResult<AgentId>;
    async fn delete_agent(&self, ctx: &RequestContext, agent: &AgentId) -> GatewayResult<Deleted>;
    /// Never retried: each call may create a message at the agent service.
    /// `budget` is what is left of the chat's polling budget.
    async fn send(
        &self,
        ctx: &RequestContext,
        agent: &AgentId,
        message: &str,
        metadata: Option<&Value>,
        budget: std::time::Duration,
    ) -> GatewayResult<Sent>;
    /// `send`, reporting the agent's messages to `emit` as the agent
    /// service produces them (and `ChatEvent::Sent` as soon as the message
    /// has an id). A dialect without streaming sends as usual; the chat then
    /// reports the messages when the poll completes.
    async fn send_streaming(
        &self,
        ctx: &RequestContext,
        agent: &AgentId,
        message: &str,
        metadata: Option<&Value>,
        budget: std::time::Duration,
        emit: &(dyn Fn(ChatEvent) + Sync),
    ) -> GatewayResult<Sent> {
        let _ = emit;
        self.send(ctx, agent, message, metadata, budget).await
    }
    /// Idempotent; safe to retry.
    async fn poll(&self, ctx: &RequestContext, agent: &AgentId, id: &str) -> GatewayResult<Poll>;

    /// Stops a message the gateway gave up on (`id`: its run; `None` for
    /// whatever the agent is running, when the id never came back).
    async fn cancel(
        &self,
        ctx: &RequestContext,
        agent: &AgentId,
        id: Option<&str>,
    ) -> GatewayResult<Cancel> {
        let _ = (ctx, agent, id);
        Ok(Cancel::Unsupported)
    }

    /// Every agent carrying the gateway's tag, all pages of the listing;
    /// `None` when the dialect has no listing (EAI).
    async fn list_gateway_agents(
        &self,
        ctx: &RequestContext,
    ) -> GatewayResult<Option<Vec<ListedAgent>>> {
        let _ = ctx;
        Ok(None)
    }
}

pub fn build(cfg: &AgentServiceSettings) -> Result<Arc<dyn AgentService>, String> {
    let http = http::AgentHttp::new(cfg)?;
    Ok(match cfg.dialect {
        Dialect::Letta => Arc::new(letta::LettaClient::new(http, cfg)),
        Dialect::Eai => Arc::new(eai::EaiClient::new(http, cfg)),
    })
}

/// Ids from the agent service end up in URL paths: accept only safe ones.
pub(crate) fn safe_id(raw: Option<&Value>, what: &str) -> GatewayResult<String> {
    raw.and_then(Value::as_str)
        .and_then(|s| AgentId::parse(s).ok())
        .map(|id| id.as_str().to_owned())
        .ok_or_else(|| {
            crate::error::GatewayError::agent_service(format!(
                "agent service returned no valid {what}"
            ))
        })
}
