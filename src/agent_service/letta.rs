//! The Letta REST API: create agent, send async, poll the run, read the run's
//! messages and usage.

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::http::AgentHttp;
use super::{AgentService, Cancel, ChatEvent, Deleted, ListedAgent, Poll, Sent, safe_id};
use std::time::Duration;

use crate::context::RequestContext;
use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::ids::{AgentId, UserNumber};
use crate::settings::{AgentServiceSettings, LettaDelivery};

pub(crate) struct LettaClient {
    http: AgentHttp,
    delivery: LettaDelivery,
    template: serde_json::Map<String, Value>,
}

/// Agents per page of the listing.
const LIST_PAGE: usize = 100;

/// Tag carried by every agent the gateway creates.
pub const GATEWAY_TAG: &str = "eai-gateway";

/// Stop reasons that end a run without a usable answer.
const FAILED_STOP_REASONS: &[&str] = &[
    "error",
    "llm_api_error",
    "invalid_llm_response",
    "invalid_tool_call",
    "cancelled",
    "context_window_overflow_in_system_prompt",
];

/// Letta's per-conversation lock: `409 {"detail": "Cannot send a new
/// message: Another request (run_id=…) is currently being processed for this
/// conversation…"}`. The message was not taken; waiting and retrying is the
/// maintainers' advice.
fn conversation_busy(reply: &super::http::Reply) -> bool {
    reply.reason().contains("is currently being processed")
}

impl LettaClient {
    pub(crate) fn new(http: AgentHttp, cfg: &AgentServiceSettings) -> Self {
        Self {
            delivery: cfg.letta.delivery,
            http,
            template: cfg
                .letta
                .agent_template
                .as_object()
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// Name and tag an operator can find the user's agent by, without the
    /// raw number ever reaching the agent service.
    pub fn agent_name(pseudonym: &str) -> String {
        format!("eai-{pseudonym}")
    }

    pub fn user_tag(pseudonym: &str) -> String {
        format!("eai-user-{pseudonym}")
    }

    /// Synchronous delivery: one `POST /v1/agents/{id}/messages` that returns
    /// when the run is done, so the answer is seen the moment it exists
    /// instead of at the next poll. Its messages are the run's output (no
    /// echo of the user message, unlike `GET /v1/runs/{id}/messages`).
    async fn send_sync(
        &self,
        ctx: &RequestContext,
        agent: &AgentId,
        body: &Value,
        budget: Duration,
    ) -> GatewayResult<Sent> {
        let path = format!("v1/agents/{agent}/messages");
        let reply = match self
            .http
            .call_refusable(
                ctx,
                "send_sync",
                Method::POST,
                &path,
                Some(body),
                Some(budget),
                budget,
                conversation_busy,
            )
            .await
        {
            Ok(reply) => reply,
            // The message was delivered; only the wait ran out.
            Err(e) if e.detail.contains("timed out") => {
                return Err(GatewayError::new(
                    ErrorKind::PollTimeout,
                    "the agent did not answer within the budget",
                ));
            }
            Err(e) => return Err(e),
        };
        match reply.status {
            StatusCode::NOT_FOUND => return Ok(Sent::AgentGone),
            s if !s.is_success() => {
                return Err(GatewayError::agent_service(format!(
                    "agent service refused the message ({})",
                    reply.reason()
                )));
            }
            _ => {}
        }
        let messages = reply.body.get("messages").cloned().unwrap_or(Value::Null);
        let stop = reply
            .body
            .pointer("/stop_reason/stop_reason")
            .and_then(Value::as_str)
            .unwrap_or("end_turn");
        let id = messages
            .as_array()
            .and_then(|m| m.iter().find_map(|m| m.get("run_id")))
            .and_then(|id| safe_id(Some(id), "run id").ok())
            .unwrap_or_else(|| format!("sync-{}", uuid::Uuid::new_v4()));
        let outcome = if FAILED_STOP_REASONS.contains(&stop) {
            Poll::Failed(format!("agent run {stop}"))
        } else if messages.as_array().is_none_or(Vec::is_empty) {
            Poll::Failed("agent run completed without messages".into())
        } else {
            Poll::Completed(json!({
                "messages": messages,
                "agent_id": agent.as_str(),
                "usage": reply.body.get("usage").cloned().unwrap_or(Value::Null),
            }))
        };
        Ok(Sent::Answered { id, outcome })
    }

    async fn finished(
        &self,
        ctx: &RequestContext,
        run_id: &str,
        run: &Value,
        succeeded: bool,
    ) -> GatewayResult<Poll> {
        // Read the messages even on failure: Letta can fail with output present.
        let path = format!("v1/runs/{run_id}/messages?order=asc&limit=1000");
        let messages = self
            .http
            .call(ctx, "fetch_messages", Method::GET, &path, None)
            .await?;
        if !messages.status.is_success() || !messages.body.is_array() {
            let err = GatewayError::agent_service(format!(
                "agent service did not return the run's messages ({})",
                messages.reason()
            ));
            // Idempotent read: a 5xx is retried on the poll schedule.
            return Err(if messages.status.is_server_error() {
                err.transient()
            } else {
                err
            });
        }
        if succeeded && messages.body.as_array().is_some_and(Vec::is_empty) {
            return Ok(Poll::Failed("agent run completed without messages".into()));
        }
        if !succeeded {
            let reason = run
                .get("stop_reason")
                .and_then(Value::as_str)
                .or_else(|| run.get("status").and_then(Value::as_str))
                .unwrap_or("failed");
            return Ok(Poll::Failed(format!("agent run {reason}")));
        }
        let usage = self
            .http
            .call(
                ctx,
                "fetch_usage",
                Method::GET,
                &format!("v1/runs/{run_id}/usage"),
                None,
            )
            .await
            .ok()
            .filter(|r| r.status.is_success())
            .map(|r| r.body)
            .unwrap_or(Value::Null);
        Ok(Poll::Completed(json!({
            "messages": messages.body,
            "agent_id": run.get("agent_id").cloned().unwrap_or(Value::Null),
            "usage": usage,
        })))
    }
}

#[async_trait]
impl AgentService for LettaClient {
    async fn create_agent(
        &self,
        ctx: &RequestContext,
        user: &UserNumber,
    ) -> GatewayResult<AgentId> {
        let pseudonym = user.pseudonym();
        let mut body = self.template.clone();
        body.insert("name".into(), Value::String(Self::agent_name(&pseudonym)));
        let mut tags: Vec<Value> = body
            .get("tags")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        tags.push(Value::String(GATEWAY_TAG.into()));
        tags.push(Value::String(Self::user_tag(&pseudonym)));
        body.insert("tags".into(), Value::Array(tags));
        self.http
            .create_agent(ctx, "v1/agents/", Value::Object(body), "id")
            .await
    }

    async fn delete_agent(&self, ctx: &RequestContext, agent: &AgentId) -> GatewayResult<Deleted> {
        self.http
            .delete_agent(ctx, &format!("v1/agents/{agent}"), |_| false)
            .await
    }

    /// `POST /v1/agents/{id}/messages/cancel {"run_ids": [id]}`: Letta
    /// answers `{run_id: "cancelled" | "failed"}`, or 400 when no run of
    /// the agent is active (nothing left to stop).
    async fn cancel(
        &self,
        ctx: &RequestContext,
        agent: &AgentId,
        id: Option<&str>,
    ) -> GatewayResult<Cancel> {
        let body = match id {
            Some(run) => json!({ "run_ids": [run] }),
            None => json!({}),
        };
        let reply = self
            .http
            .call(
                ctx,
                "cancel",
                Method::POST,
                &format!("v1/agents/{agent}/messages/cancel"),
                Some(&body),
            )
            .await?;
        if !reply.status.is_success() {
            return Ok(Cancel::NotCancelled(reply.reason()));
        }
        let failed = reply
            .body
            .as_object()
            .is_some_and(|runs| runs.values().any(|v| v != "cancelled"));
        Ok(if failed {
            Cancel::NotCancelled(format!("agent service answered {}", reply.body))
        } else {
            Cancel::Cancelled
        })
    }

    /// `GET /v1/agents/?tags=eai-gateway&include=agent.tags`, oldest first,
    /// a page at a time with the last id as the cursor.
    async fn list_gateway_agents(
        &self,
        ctx: &RequestContext,
    ) -> GatewayResult<Option<Vec<ListedAgent>>> {
        let mut agents: Vec<ListedAgent> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            // Letta leaves relationships such as the tags out of a listing
            // unless asked (for any client that is not an old SDK).
            let mut path = format!(
                "v1/agents/?tags={GATEWAY_TAG}&include=agent.tags&order=asc&limit={LIST_PAGE}"
            );
            if let Some(last) = &after {
                path.push_str(&format!("&after={last}"));
            }
            let reply = self
                .http
                .call(ctx, "list_agents", Method::GET, &path, None)
                .await?;
            let page = match (&reply.status, reply.body.as_array()) {
                (s, Some(page)) if s.is_success() => page,
                _ => {
                    return Err(GatewayError::agent_service(format!(
                        "agent service could not list the agents ({})",
                        reply.reason()
                    )));
                }
            };
            for agent in page {
                let tagged = agent["tags"]
                    .as_array()
                    .is_some_and(|tags| tags.iter().any(|t| t == GATEWAY_TAG));
                if !tagged {
                    // Never touch an agent without the gateway's tag, whatever
                    // the filter returned.
                    continue;
                }
                agents.push(ListedAgent {
                    id: AgentId::parse(&safe_id(agent.get("id"), "agent id")?)
                        .map_err(GatewayError::agent_service)?,
                    name: agent["name"].as_str().unwrap_or_default().to_owned(),
                    created_at: agent["created_at"].as_str().unwrap_or_default().to_owned(),
                });
            }
            match page.last() {
                Some(last) if page.len() >= LIST_PAGE => {
                    after = Some(safe_id(last.get("id"), "agent id")?);
                }
                _ => return Ok(Some(agents)),
            }
        }
    }

    async fn send(
        &self,
        ctx: &RequestContext,
        agent: &AgentId,
        message: &str,
        _metadata: Option<&Value>,
        budget: Duration,
    ) -> GatewayResult<Sent> {
        let body = json!({"messages": [{"role": "user", "content": message}]});
        if self.delivery == LettaDelivery::Sync {
            return self.send_sync(ctx, agent, &body, budget).await;
        }
        let reply = self
            .http
            .call_refusable(
                ctx,
                "send",
                Method::POST,
                &format!("v1/agents/{agent}/messages/async"),
                Some(&body),
                None,
                budget,
                conversation_busy,
            )
            .await?;
        AgentHttp::sent(&reply, "id", "run id")
    }

    /// Letta's streaming send, token by token: each piece of the agent's
    /// messages is reported as it arrives; the run's outcome is then polled
    /// as for an asynchronous send, so the answer is the same.
    async fn send_streaming(
        &self,
        ctx: &RequestContext,
        agent: &AgentId,
        message: &str,
        _metadata: Option<&Value>,
        budget: Duration,
        emit: &(dyn Fn(ChatEvent) + Sync),
    ) -> GatewayResult<Sent> {
        let body = json!({
            "messages": [{"role": "user", "content": message}],
            "stream_tokens": true,
            "include_pings": true,
        });
        let opened = self
            .http
            .open_stream(
                ctx,
                "send_stream",
                &format!("v1/agents/{agent}/messages/stream"),
                &body,
                budget,
                conversation_busy,
            )
            .await?;
        let mut events = match opened {
            Ok(events) => events,
            Err(reply) if reply.status == StatusCode::NOT_FOUND => return Ok(Sent::AgentGone),
            Err(reply) => {
                return Err(GatewayError::agent_service(format!(
                    "agent service refused the message ({})",
                    reply.reason()
                )));
            }
        };
        let mut run_id: Option<String> = None;
        loop {
            let event = match events.next().await {
                Ok(Some(event)) => event,
                Ok(None) => break,
                // Once the run is known its outcome is polled for, whatever
                // became of the stream.
                Err(e) if run_id.is_some() => {
                    tracing::warn!(error = %e, "Letta stream ended early; polling the run.");
                    break;
                }
                Err(e) => return Err(e),
            };
            if event.data == "[DONE]" {
                break;
            }
            let Ok(value) = serde_json::from_str::<Value>(&event.data) else {
                continue;
            };
            if run_id.is_none()
                && let Ok(id) = safe_id(value.get("run_id"), "run id")
            {
                emit(ChatEvent::Sent(id.clone()));
                run_id = Some(id);
            }
            if event.name == "error" {
                // Only its type: an error's text may quote the message.
                let kind = value
                    .pointer("/error/type")
                    .or_else(|| value.get("error_type"))
                    .and_then(Value::as_str)
                    .unwrap_or("unknown");
                tracing::warn!(
                    kind,
                    "Letta stream reported an error; the run's outcome decides."
                );
                continue;
            }
            let kind = value.get("message_type").and_then(Value::as_str);
            if !matches!(
                kind,
                None | Some("ping" | "stop_reason" | "usage_statistics")
            ) {
                emit(ChatEvent::Message(value));
            }
        }
        run_id.map(Sent::Streamed).ok_or_else(|| {
            GatewayError::agent_service("agent service stream named no run for the message")
        })
    }

    async fn poll(
        &self,
        ctx: &RequestContext,
        _agent: &AgentId,
        run_id: &str,
    ) -> GatewayResult<Poll> {
        let reply = self
            .http
            .call(ctx, "poll", Method::GET, &format!("v1/runs/{run_id}"), None)
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(Poll::Failed("agent run not found".into()));
        }
        if reply.status.is_server_error() {
            return Err(GatewayError::agent_service(format!(
                "run status unavailable ({})",
                reply.reason()
            ))
            .transient());
        }
        if !reply.status.is_success() {
            return Ok(Poll::Failed(format!(
                "run status refused ({})",
                reply.reason()
            )));
        }
        let run = reply.body;
        let status = run.get("status").and_then(Value::as_str).unwrap_or("");
        let stop_reason = run.get("stop_reason").and_then(Value::as_str);
        match (status, stop_reason) {
            ("completed", _) => self.finished(ctx, run_id, &run, true).await,
            ("failed" | "cancelled" | "expired", _) => {
                self.finished(ctx, run_id, &run, false).await
            }
            // A terminal stop reason on a run still marked running is terminal.
            (_, Some(reason)) => {
                let ok = !FAILED_STOP_REASONS.contains(&reason);
                self.finished(ctx, run_id, &run, ok).await
            }
            _ => Ok(Poll::Pending),
        }
    }
}
