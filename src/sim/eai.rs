//! The EAI agent gateway API, as `../shared/upstream-contract.md` describes it.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{Progress, Simulator, answer_messages, usage};

pub fn routes() -> Router<Simulator> {
    Router::new()
        .route("/api/v1/agent/create", post(create))
        .route("/api/v1/agent/{agent_id}", delete(remove))
        .route("/api/v1/message/webhook/agent", post(send))
        .route("/api/v1/message/response", get(poll))
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

async fn create(State(sim): State<Simulator>, Json(body): Json<Value>) -> Response {
    let Some(user) = body.get("user_number").and_then(Value::as_str) else {
        return reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"detail": [{"loc": ["body", "user_number"], "msg": "Field required"}]}),
        );
    };
    let settings = sim.settings();
    match sim
        .world()
        .try_create_agent(user.to_owned(), body.clone(), &settings)
    {
        Some(id) => reply(
            StatusCode::OK,
            json!({"agent_id": id, "message": "Agent created successfully"}),
        ),
        None => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"detail": "simulated failure creating the agent"}),
        ),
    }
}

async fn remove(State(sim): State<Simulator>, Path(agent_id): Path<String>) -> Response {
    if sim.world().delete_agent(&agent_id) {
        reply(
            StatusCode::OK,
            json!({"message": format!("Agent {agent_id} deleted successfully.")}),
        )
    } else {
        // The real service answers 500 for every failure, a missing agent included.
        reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"detail": format!("Failed to delete agent: Agent {agent_id} not found (404)")}),
        )
    }
}

async fn send(State(sim): State<Simulator>, Json(body): Json<Value>) -> Response {
    let (Some(agent_id), Some(message)) = (
        body.get("agent_id").and_then(Value::as_str),
        body.get("message").and_then(Value::as_str),
    ) else {
        return reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"detail": [{"msg": "Field required"}]}),
        );
    };
    if let Some(refused) = sim.refusal() {
        return refused;
    }
    let settings = sim.settings();
    if super::chance(settings.send_error_rate) {
        return reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"detail": "simulated failure sending"}),
        );
    }
    let mut world = sim.world();
    // The real service accepts a message for any id; a missing agent only
    // shows when the run fails. Record it against a ghost so polls see that.
    let id = match world.accept(agent_id, message, &settings, "") {
        Some(id) => id,
        None => {
            let id = uuid::Uuid::new_v4().to_string();
            let now = std::time::Instant::now();
            world.messages.insert(
                id.clone(),
                super::Message {
                    agent_id: agent_id.to_owned(),
                    outcome: super::Outcome::Answer,
                    stuck_running: false,
                    text: message.to_owned(),
                    accepted_at: now,
                    ready_at: now,
                },
            );
            id
        }
    };
    reply(
        StatusCode::CREATED,
        json!({"message_id": id, "status": "processing",
               "polling_endpoint": format!("/api/v1/message/response?message_id={id}")}),
    )
}

async fn poll(
    State(sim): State<Simulator>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let Some(id) = q.get("message_id") else {
        return reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"detail": [{"msg": "Field required"}]}),
        );
    };
    if uuid::Uuid::parse_str(id).is_err() {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"detail": "message_id deve ser um UUID válido"}),
        );
    }
    if super::chance(sim.settings().poll_error_rate) {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"detail": "simulated transient failure"}),
        );
    }
    let world = sim.world();
    match world.progress(id) {
        None => reply(
            StatusCode::NOT_FOUND,
            json!({"detail": {"status": "not_found", "message": "message not found or expired"}}),
        ),
        Some(Progress::Processing) => reply(
            StatusCode::ACCEPTED,
            json!({"status": "processing", "message": "Mensagem ainda em processamento"}),
        ),
        Some(Progress::AgentGone(msg)) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"status": "failed", "message": "Erro no processamento",
                   "error": format!("HTTP 404: Agent {} not found", msg.agent_id)}),
        ),
        Some(Progress::Failed(_)) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"status": "failed", "message": "Erro no processamento",
                   "error": "simulated LLM failure: model overloaded"}),
        ),
        Some(Progress::Done(msg, _)) if msg.outcome == super::Outcome::Empty => {
            reply(StatusCode::OK, json!({"status": "completed"}))
        }
        Some(Progress::Done(msg, agent)) => {
            let mut messages: Vec<Value> = answer_messages(msg)
                .into_iter()
                .filter(|m| m["message_type"] == "assistant_message")
                .map(|m| json!({"message_type": m["message_type"], "content": m["content"]}))
                .collect();
            messages.push(usage(msg));
            let processed = msg.ready_at.duration_since(msg.accepted_at).as_millis() as u64;
            reply(
                StatusCode::OK,
                json!({"status": "completed", "data": {
                    "messages": messages, "agent_id": agent.id,
                    "processing_ms": processed, "status": "done"}}),
            )
        }
    }
}
