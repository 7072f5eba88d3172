//! The subset of the Letta REST API the gateway uses, shaped like the
//! recordings of the real server in `../shared/letta-real/recordings/`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{Progress, Simulator, answer_messages, usage};

pub fn routes() -> Router<Simulator> {
    Router::new()
        .route(
            "/v1/health/",
            get(|| async { Json(json!({"version": "simulator", "status": "ok"})) }),
        )
        .route("/v1/agents/", post(create).get(list))
        .route("/v1/agents/{agent_id}", get(show).delete(remove))
        .route(
            "/v1/agents/{agent_id}/messages",
            get(history).post(send_sync),
        )
        .route("/v1/agents/{agent_id}/messages/async", post(send))
        .route("/v1/agents/{agent_id}/messages/cancel", post(cancel))
        .route("/v1/agents/{agent_id}/messages/stream", post(send_stream))
        .route("/v1/runs/{run_id}", get(run))
        .route("/v1/runs/{run_id}/messages", get(run_messages))
        .route("/v1/runs/{run_id}/usage", get(run_usage))
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn agent_not_found(id: &str) -> Response {
    reply(
        StatusCode::NOT_FOUND,
        json!({"detail": format!("Agent with ID {id} not found")}),
    )
}

/// What real Letta 0.16.8 answers for a message to a missing agent.
fn send_agent_missing() -> Response {
    reply(StatusCode::NOT_FOUND, json!({"detail": "Agent not found"}))
}

fn run_not_found(id: &str) -> Response {
    reply(
        StatusCode::NOT_FOUND,
        json!({"detail": format!("Run not found with id='{id}'")}),
    )
}

fn agent_state(agent: &super::Agent) -> Value {
    json!({"id": agent.id, "name": agent.body.get("name"), "tags": agent.body.get("tags").cloned().unwrap_or(json!([])),
           "model": agent.body.get("model"), "agent_type": "letta_v1_agent", "created_at": agent.created_at})
}

async fn create(State(sim): State<Simulator>, Json(body): Json<Value>) -> Response {
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("agent")
        .to_owned();
    let settings = sim.settings();
    let mut world = sim.world();
    let created = world.try_create_agent(name, body, &settings);
    match created.and_then(|id| world.agents.get(&id)) {
        Some(agent) => reply(StatusCode::OK, agent_state(agent)),
        None => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"detail": "simulated failure creating the agent"}),
        ),
    }
}

async fn list(State(sim): State<Simulator>, Query(q): Query<Vec<(String, String)>>) -> Response {
    let tags: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "tags")
        .map(|(_, v)| v.as_str())
        .collect();
    let name = q.iter().find(|(k, _)| k == "name").map(|(_, v)| v.as_str());
    let match_all = q.iter().any(|(k, v)| k == "match_all_tags" && v == "true");
    let param = |key: &str| q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    // Letta's defaults: 50 a page, newest first; `after` is an agent id.
    let limit: usize = param("limit").and_then(|l| l.parse().ok()).unwrap_or(50);
    let after = param("after");
    let world = sim.world();
    let mut listed: Vec<&super::Agent> = world.agents.values().collect();
    listed.sort_by_key(|a| a.seq);
    if param("order") != Some("asc") {
        listed.reverse();
    }
    let start = after
        .and_then(|id| listed.iter().position(|a| a.id == id))
        .map_or(0, |i| i + 1);
    let agents: Vec<Value> = listed[start..]
        .iter()
        .copied()
        .filter(|a| name.is_none_or(|n| a.owner == n))
        .filter(|a| {
            let have = a.body.get("tags").and_then(Value::as_array);
            let has = |t: &&str| have.is_some_and(|h| h.iter().any(|x| x == *t));
            // Real Letta matches any listed tag unless match_all_tags=true.
            tags.is_empty()
                || if match_all {
                    tags.iter().all(has)
                } else {
                    tags.iter().any(has)
                }
        })
        .take(limit)
        .map(agent_state)
        .map(|mut a| {
            // Letta 0.16.8 includes the tags only when asked, for any
            // client that does not call itself an old SDK.
            if !q.iter().any(|(k, v)| k == "include" && v == "agent.tags") {
                a["tags"] = json!([]);
            }
            a
        })
        .collect();
    reply(StatusCode::OK, Value::Array(agents))
}

async fn show(State(sim): State<Simulator>, Path(agent_id): Path<String>) -> Response {
    match sim.world().agents.get(&agent_id) {
        Some(agent) => reply(StatusCode::OK, agent_state(agent)),
        None => agent_not_found(&agent_id),
    }
}

async fn remove(State(sim): State<Simulator>, Path(agent_id): Path<String>) -> Response {
    if sim.world().delete_agent(&agent_id) {
        reply(
            StatusCode::OK,
            json!({"message": format!("Agent id={agent_id} successfully deleted")}),
        )
    } else {
        agent_not_found(&agent_id)
    }
}

async fn history(State(sim): State<Simulator>, Path(agent_id): Path<String>) -> Response {
    let world = sim.world();
    let Some(agent) = world.agents.get(&agent_id) else {
        return agent_not_found(&agent_id);
    };
    // Real Letta starts every history with the system prompt.
    let system = json!({"message_type": "system_message", "content": "<base_instructions>simulated</base_instructions>"});
    let messages: Vec<Value> = std::iter::once(system)
        .chain(agent.history.iter().map(|(role, content)| {
            let kind = if role == "user" {
                "user_message"
            } else {
                "assistant_message"
            };
            json!({"message_type": kind, "content": content})
        }))
        .collect();
    reply(StatusCode::OK, Value::Array(messages))
}

/// Accepts a message for an agent, as both sends do; `Err` is the reply.
fn accept(sim: &Simulator, agent_id: &str, body: &Value) -> Result<String, Box<Response>> {
    let text = body
        .pointer("/messages/0/content")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if let Some(refused) = sim.refusal() {
        return Err(Box::new(refused));
    }
    let settings = sim.settings();
    if super::chance(settings.send_error_rate) {
        return Err(Box::new(reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"detail": "simulated failure sending"}),
        )));
    }
    sim.world()
        .accept(agent_id, text, &settings, "run-")
        .ok_or_else(|| Box::new(send_agent_missing()))
}

async fn send(
    State(sim): State<Simulator>,
    Path(agent_id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    match accept(&sim, &agent_id, &body) {
        Ok(run_id) => reply(
            StatusCode::OK,
            json!({"id": run_id, "status": "created", "agent_id": agent_id, "stop_reason": null,
                   "background": true, "metadata": {"run_type": "send_message_async"}}),
        ),
        Err(response) => *response,
    }
}

/// `POST /v1/agents/{id}/messages`: the synchronous send, answering when the
/// run is done, shaped like real Letta's (assistant messages, stop reason,
/// usage).
async fn send_sync(
    State(sim): State<Simulator>,
    Path(agent_id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let run_id = match accept(&sim, &agent_id, &body) {
        Ok(run_id) => run_id,
        Err(response) => return *response,
    };
    let ready_at = sim.world().messages.get(&run_id).map(|m| m.ready_at);
    if let Some(at) = ready_at {
        tokio::time::sleep_until(at.into()).await;
    }
    let world = sim.world();
    match world.progress(&run_id) {
        Some(Progress::Done(msg, _)) if msg.outcome != super::Outcome::Empty => {
            let messages: Vec<Value> = answer_messages(msg)
                .into_iter()
                .filter(|m| m["message_type"] == "assistant_message")
                .map(|mut m| {
                    m["run_id"] = json!(run_id);
                    m
                })
                .collect();
            reply(
                StatusCode::OK,
                json!({"messages": messages,
                       "stop_reason": {"message_type": "stop_reason", "stop_reason": "end_turn"},
                       "usage": usage(msg)}),
            )
        }
        Some(Progress::Done(..)) => reply(
            StatusCode::OK,
            json!({"messages": [], "stop_reason": {"message_type": "stop_reason", "stop_reason": "end_turn"}, "usage": null}),
        ),
        Some(Progress::Failed(_)) => reply(
            StatusCode::OK,
            json!({"messages": [], "stop_reason": {"message_type": "stop_reason", "stop_reason": "llm_api_error"}, "usage": null}),
        ),
        _ => send_agent_missing(),
    }
}

/// `POST /v1/agents/{id}/messages/stream` with `stream_tokens`, shaped like
/// real Letta 0.16.8's: a ping naming the run at once, the assistant message
/// in pieces spread over the run's time (sharing one id), then the stop
/// reason, the usage and `[DONE]`.
async fn send_stream(
    State(sim): State<Simulator>,
    Path(agent_id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let run_id = match accept(&sim, &agent_id, &body) {
        Ok(run_id) => run_id,
        Err(response) => return *response,
    };
    let (accepted_at, ready_at, text) = {
        let world = sim.world();
        let msg = &world.messages[&run_id];
        (msg.accepted_at, msg.ready_at, msg.text.clone())
    };
    let data = |v: &Value| format!("data: {v}\n\n");
    let mut frames = vec![(
        accepted_at,
        data(
            &json!({"id": format!("ping-{}", uuid::Uuid::new_v4()), "message_type": "ping", "run_id": run_id}),
        ),
    )];
    let answer: Vec<char> = format!("echo: {text}").chars().collect();
    let message_id = format!("message-{}", uuid::Uuid::new_v4());
    const PIECES: u32 = 3;
    for (i, piece) in answer
        .chunks(answer.len().div_ceil(PIECES as usize).max(1))
        .enumerate()
    {
        let at = accepted_at + (ready_at - accepted_at) * (i as u32 + 1) / (PIECES + 1);
        let content: String = piece.iter().collect();
        frames.push((
            at,
            data(
                &json!({"id": message_id, "message_type": "assistant_message", "run_id": run_id,
                         "content": content}),
            ),
        ));
    }
    let (stop, usage_frame) = {
        let world = sim.world();
        match world.progress(&run_id) {
            Some(Progress::Failed(_)) => ("llm_api_error", Value::Null),
            _ => (
                "end_turn",
                world.messages.get(&run_id).map(usage).unwrap_or_default(),
            ),
        }
    };
    frames.push((
        ready_at,
        data(&json!({"message_type": "stop_reason", "stop_reason": stop})),
    ));
    if !usage_frame.is_null() {
        frames.push((ready_at, data(&usage_frame)));
    }
    frames.push((ready_at, "data: [DONE]\n\n".to_owned()));
    let stream = futures_util::stream::unfold(frames.into_iter(), |mut frames| async move {
        let (at, frame) = frames.next()?;
        tokio::time::sleep_until(at.into()).await;
        Some((Ok::<_, std::convert::Infallible>(frame), frames))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .body(axum::body::Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `POST /v1/agents/{id}/messages/cancel`, as Letta 0.16.8 answers it:
/// `{run_id: "cancelled"}`, or 400 when the agent has no active run.
async fn cancel(
    State(sim): State<Simulator>,
    Path(agent_id): Path<String>,
    body: Option<Json<Value>>,
) -> Response {
    let named: Option<Vec<String>> = body.and_then(|Json(b)| {
        b.get("run_ids")?.as_array().map(|ids| {
            ids.iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect()
        })
    });
    let cancelled = sim.cancel_runs(&agent_id, named.as_deref());
    if cancelled.is_empty() {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"detail": format!("No active runs to cancel for agent {agent_id}")}),
        );
    }
    let results: serde_json::Map<String, Value> = cancelled
        .into_iter()
        .map(|id| (id, json!("cancelled")))
        .collect();
    reply(StatusCode::OK, Value::Object(results))
}

async fn run(State(sim): State<Simulator>, Path(run_id): Path<String>) -> Response {
    if super::chance(sim.settings().poll_error_rate) {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"detail": "simulated transient failure"}),
        );
    }
    let world = sim.world();
    let Some(progress) = world.progress(&run_id) else {
        return run_not_found(&run_id);
    };
    // Real Letta: `created` until a worker picks the run up, then `running`.
    let (status, stop_reason, agent_id) = match progress {
        Progress::Processing => {
            let msg = &world.messages[&run_id];
            let picked_up = msg.accepted_at.elapsed() >= (msg.ready_at - msg.accepted_at) / 3;
            let status = if picked_up { "running" } else { "created" };
            (status, Value::Null, msg.agent_id.clone())
        }
        Progress::AgentGone(msg) => ("failed", json!("error"), msg.agent_id.clone()),
        Progress::Failed(msg) if msg.outcome == super::Outcome::Cancelled => {
            ("cancelled", json!("cancelled"), msg.agent_id.clone())
        }
        Progress::Failed(msg) => ("failed", json!("llm_api_error"), msg.agent_id.clone()),
        Progress::Done(msg, _) if msg.stuck_running => {
            ("running", json!("end_turn"), msg.agent_id.clone())
        }
        Progress::Done(msg, _) => ("completed", json!("end_turn"), msg.agent_id.clone()),
    };
    reply(
        StatusCode::OK,
        json!({"id": run_id, "status": status, "agent_id": agent_id, "stop_reason": stop_reason,
               "background": true, "metadata": {"run_type": "send_message_async"}}),
    )
}

async fn run_messages(State(sim): State<Simulator>, Path(run_id): Path<String>) -> Response {
    let world = sim.world();
    match world.progress(&run_id) {
        None => run_not_found(&run_id),
        Some(Progress::Processing) => reply(StatusCode::OK, json!([])),
        Some(Progress::AgentGone(_)) => reply(StatusCode::OK, json!([])),
        Some(Progress::Failed(msg)) => {
            let mut m = answer_messages(msg);
            m.truncate(1);
            reply(StatusCode::OK, Value::Array(m))
        }
        Some(Progress::Done(msg, _)) if msg.outcome == super::Outcome::Empty => {
            reply(StatusCode::OK, json!([]))
        }
        Some(Progress::Done(msg, _)) => {
            let messages: Vec<Value> = answer_messages(msg)
                .into_iter()
                .map(|mut m| {
                    m["run_id"] = json!(run_id);
                    m
                })
                .collect();
            reply(StatusCode::OK, Value::Array(messages))
        }
    }
}

async fn run_usage(State(sim): State<Simulator>, Path(run_id): Path<String>) -> Response {
    let world = sim.world();
    match world.messages.get(&run_id) {
        None => run_not_found(&run_id),
        Some(msg) => {
            let u = usage(msg);
            reply(
                StatusCode::OK,
                json!({"completion_tokens": u["completion_tokens"], "completion_tokens_details": null,
                       "prompt_tokens": u["prompt_tokens"], "prompt_tokens_details": null,
                       "total_tokens": u["total_tokens"]}),
            )
        }
    }
}
