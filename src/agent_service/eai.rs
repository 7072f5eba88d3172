//! The EAI agent gateway API: agent/create, webhook send, message/response poll.

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::http::AgentHttp;
use super::{AgentService, Deleted, Poll, Sent};
use crate::context::RequestContext;
use crate::error::{GatewayError, GatewayResult};
use crate::ids::{AgentId, UserNumber};
use crate::settings::AgentServiceSettings;

pub(crate) struct EaiClient {
    http: AgentHttp,
    agent_fields: serde_json::Map<String, Value>,
}

impl EaiClient {
    pub(crate) fn new(http: AgentHttp, cfg: &AgentServiceSettings) -> Self {
        Self {
            http,
            agent_fields: cfg.eai.agent_fields.clone(),
        }
    }
}

/// The EAI service reports a vanished agent only as text.
fn mentions_missing_agent(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("404") || t.contains("not found") || t.contains("not_found")
}

#[async_trait]
impl AgentService for EaiClient {
    async fn create_agent(
        &self,
        ctx: &RequestContext,
        user: &UserNumber,
    ) -> GatewayResult<AgentId> {
        let mut body = self.agent_fields.clone();
        body.insert("user_number".into(), Value::String(user.as_str().into()));
        self.http
            .create_agent(ctx, "api/v1/agent/create", Value::Object(body), "agent_id")
            .await
    }

    async fn delete_agent(&self, ctx: &RequestContext, agent: &AgentId) -> GatewayResult<Deleted> {
        // This API answers 500 for a missing agent too; tell them apart by text.
        self.http
            .delete_agent(ctx, &format!("api/v1/agent/{agent}"), |reply| {
                mentions_missing_agent(&reply.reason())
            })
            .await
    }

    async fn send(
        &self,
        ctx: &RequestContext,
        agent: &AgentId,
        message: &str,
        metadata: Option<&Value>,
        budget: std::time::Duration,
    ) -> GatewayResult<Sent> {
        let body = json!({"agent_id": agent.as_str(), "message": message, "metadata": metadata});
        let reply = self
            .http
            .call_refusable(
                ctx,
                "send",
                Method::POST,
                "api/v1/message/webhook/agent",
                Some(&body),
                None,
                budget,
                super::retry::never_busy,
            )
            .await?;
        AgentHttp::sent(&reply, "message_id", "message id")
    }

    async fn poll(
        &self,
        ctx: &RequestContext,
        _agent: &AgentId,
        message_id: &str,
    ) -> GatewayResult<Poll> {
        let path = format!("api/v1/message/response?message_id={message_id}");
        let reply = self
            .http
            .call(ctx, "poll", Method::GET, &path, None)
            .await?;
        // Decide on the body's status; the HTTP code has changed across versions.
        let body = &reply.body;
        match body.get("status").and_then(Value::as_str) {
            Some("processing") | Some("pending") | Some("queued") => Ok(Poll::Pending),
            Some("completed") => match body.get("data") {
                Some(data) if data.is_object() => Ok(Poll::Completed(data.clone())),
                _ => Ok(Poll::Failed(
                    "agent service reported completed without data".into(),
                )),
            },
            Some("failed") => {
                let reason = body
                    .get("error")
                    .or_else(|| body.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given");
                if mentions_missing_agent(reason) {
                    Ok(Poll::AgentGone)
                } else {
                    Ok(Poll::Failed(format!(
                        "agent run failed: {}",
                        reason.chars().take(300).collect::<String>()
                    )))
                }
            }
            _ if reply.status == StatusCode::NOT_FOUND => Ok(Poll::Failed(
                "agent service lost the message (unknown or expired id)".into(),
            )),
            _ if reply.status.is_server_error() => Err(GatewayError::agent_service(format!(
                "message status unavailable ({})",
                reply.reason()
            ))
            .transient()),
            _ => Ok(Poll::Failed(format!(
                "agent service answered the poll with an unknown status ({})",
                reply.reason()
            ))),
        }
    }
}
