//! A bundled agent-service simulator speaking both dialects (Letta under
//! `/v1`, EAI under `/api/v1`) on one listener. It answers `echo: <message>`
//! after a configurable processing delay and counts what a test needs to
//! check the gateway's guarantees: agents created, deleted and alive, and
//! messages that overlapped on one agent. Counters: `GET /sim/stats`;
//! knobs: `POST /sim/config`.

mod eai;
mod letta;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Knobs; every rate is a probability in [0, 1] drawn per call.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SimSettings {
    /// How long the "agent" takes to answer a message.
    pub delay_ms: u64,
    /// Each answer takes `delay_ms` ± up to this much (uniform).
    pub delay_jitter_ms: u64,
    /// Agent creation answers 500.
    pub create_error_rate: f64,
    /// A send answers 500 without accepting the message.
    pub send_error_rate: f64,
    /// A poll answers 503 (transient; the message keeps processing).
    pub poll_error_rate: f64,
    /// A run ends failed with a reason.
    pub run_failure_rate: f64,
    /// A run ends completed without data (EAI) / without messages (Letta).
    pub empty_completion_rate: f64,
    /// Letta quirk: a finished run keeps `status: running` while already
    /// carrying its terminal `stop_reason`.
    pub stuck_running_rate: f64,
}

impl SimSettings {
    /// The defaults, with every answer taking `delay_ms`.
    pub fn with_delay(delay_ms: u64) -> Self {
        Self {
            delay_ms,
            ..Self::default()
        }
    }
}

/// How an accepted message will end.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Answer,
    Failure,
    Empty,
    /// Cancelled before it ended (Letta's cancel).
    Cancelled,
}

/// A message starting with `[delay=NNN]` takes NNN ms: lets a benchmark know
/// each answer's exact processing time in either dialect.
fn requested_delay(text: &str) -> Option<u64> {
    let rest = text.strip_prefix("[delay=")?;
    let (ms, _) = rest.split_once(']')?;
    ms.parse::<u64>().ok().filter(|ms| *ms <= 600_000)
}

pub(crate) fn chance(rate: f64) -> bool {
    rate > 0.0 && fastrand::f64() < rate
}

/// One request being handled, for `SimStats::peak_in_flight`.
struct InFlight(Simulator);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.world().in_flight -= 1;
    }
}

/// What the simulator has seen (`GET /sim/stats`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimStats {
    /// Create calls received, failed ones included.
    pub create_attempts: u64,
    /// Agents created successfully.
    pub agents_created: u64,
    /// Agents deleted.
    pub agents_deleted: u64,
    /// Agents that exist now.
    pub live_agents: u64,
    /// Messages received.
    pub messages: u64,
    /// Messages that arrived while their agent was still processing another.
    pub overlaps: u64,
    /// Most HTTP requests being handled at once.
    pub peak_in_flight: u64,
    /// Sends refused by `Simulator::refuse_sends` (the message not taken).
    pub sends_refused: u64,
    /// Runs cancelled while still processing.
    pub cancelled: u64,
}

pub(crate) struct Agent {
    pub id: String,
    /// Creation order, for listings oldest first.
    pub seq: u64,
    /// RFC 3339, as Letta reports it.
    pub created_at: String,
    /// What the agent was created for: the EAI `user_number` or Letta `name`.
    pub owner: String,
    pub body: Value,
    busy_until: Instant,
    /// Messages in arrival order: (role, content).
    pub history: Vec<(String, String)>,
}

pub(crate) struct Message {
    pub agent_id: String,
    pub outcome: Outcome,
    /// Letta quirk knob: report `running` even when done.
    pub stuck_running: bool,
    pub text: String,
    pub accepted_at: Instant,
    pub ready_at: Instant,
}

/// Keeps the last 1,000 values of a request header, most recent last.
fn remember(seen: &mut Vec<String>, headers: &axum::http::HeaderMap, name: &str) {
    if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
        if seen.len() >= 1000 {
            seen.remove(0);
        }
        seen.push(v.to_owned());
    }
}

#[derive(Default)]
pub(crate) struct World {
    /// `X-Request-Id` values seen, most recent last (bounded).
    pub request_ids: Vec<String>,
    /// `traceparent` values seen, most recent last (bounded).
    pub traceparents: Vec<String>,
    pub agents: HashMap<String, Agent>,
    pub messages: HashMap<String, Message>,
    pub stats: SimStats,
    in_flight: u64,
    /// The next sends to refuse before taking them (`Simulator::refuse_sends`).
    refusals: Option<Refusals>,
}

/// Sends to refuse: how many more, with which status and `Retry-After`.
#[derive(Clone, Copy)]
struct Refusals {
    left: u32,
    status: u16,
    retry_after_s: Option<u64>,
}

/// The agent-service simulator: both dialects on one port, in process. Clones share its state.
#[derive(Clone)]
pub struct Simulator {
    world: Arc<Mutex<World>>,
    settings: Arc<Mutex<SimSettings>>,
}

/// The state of one message at a given moment.
pub(crate) enum Progress<'a> {
    Processing,
    Done(&'a Message, &'a Agent),
    Failed(&'a Message),
    AgentGone(&'a Message),
}

impl World {
    /// Counts the attempt; None when the knob says this create fails.
    pub fn try_create_agent(
        &mut self,
        owner: String,
        body: Value,
        settings: &SimSettings,
    ) -> Option<String> {
        self.stats.create_attempts += 1;
        if chance(settings.create_error_rate) {
            return None;
        }
        Some(self.create_agent(owner, body))
    }

    fn create_agent(&mut self, owner: String, body: Value) -> String {
        let id = format!("agent-{}", uuid::Uuid::new_v4());
        let seq = self.stats.agents_created;
        let created_at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        self.agents.insert(
            id.clone(),
            Agent {
                id: id.clone(),
                seq,
                created_at,
                owner,
                body,
                busy_until: Instant::now(),
                history: Vec::new(),
            },
        );
        self.stats.agents_created += 1;
        self.stats.live_agents += 1;
        id
    }

    pub fn delete_agent(&mut self, id: &str) -> bool {
        let existed = self.agents.remove(id).is_some();
        if existed {
            self.stats.agents_deleted += 1;
            self.stats.live_agents -= 1;
        }
        existed
    }

    /// Accepts a message for an existing agent; returns the message id.
    pub fn accept(
        &mut self,
        agent_id: &str,
        text: &str,
        settings: &SimSettings,
        prefix: &str,
    ) -> Option<String> {
        let delay = match requested_delay(text) {
            Some(ms) => Duration::from_millis(ms),
            None => {
                let jitter = settings.delay_jitter_ms as i64;
                let spread = if jitter > 0 {
                    fastrand::i64(-jitter..=jitter)
                } else {
                    0
                };
                Duration::from_millis((settings.delay_ms as i64 + spread).max(0) as u64)
            }
        };
        let outcome = if chance(settings.run_failure_rate) {
            Outcome::Failure
        } else if chance(settings.empty_completion_rate) {
            Outcome::Empty
        } else {
            Outcome::Answer
        };
        let now = Instant::now();
        let agent = self.agents.get_mut(agent_id)?;
        if agent.busy_until > now {
            self.stats.overlaps += 1;
        }
        agent.busy_until = now + delay;
        agent.history.push(("user".into(), text.to_owned()));
        agent
            .history
            .push(("assistant".into(), format!("echo: {text}")));
        self.stats.messages += 1;
        let id = format!("{prefix}{}", uuid::Uuid::new_v4());
        self.messages.insert(
            id.clone(),
            Message {
                agent_id: agent_id.to_owned(),
                outcome,
                stuck_running: chance(settings.stuck_running_rate),
                text: text.to_owned(),
                accepted_at: now,
                ready_at: now + delay,
            },
        );
        Some(id)
    }

    pub fn progress(&self, id: &str) -> Option<Progress<'_>> {
        let msg = self.messages.get(id)?;
        Some(match self.agents.get(&msg.agent_id) {
            None => Progress::AgentGone(msg),
            Some(_) if Instant::now() < msg.ready_at && msg.outcome != Outcome::Cancelled => {
                Progress::Processing
            }
            Some(_) if matches!(msg.outcome, Outcome::Failure | Outcome::Cancelled) => {
                Progress::Failed(msg)
            }
            Some(agent) => Progress::Done(msg, agent),
        })
    }
}

/// The run's messages, shaped like real Letta's (ids, dates, run id).
pub(crate) fn answer_messages(msg: &Message) -> Vec<Value> {
    let date = "2026-01-01T00:00:00+00:00";
    let message = |kind: &str, content: String| {
        json!({"id": format!("message-{}", uuid::Uuid::new_v4()), "date": date, "name": null,
               "message_type": kind, "otid": uuid::Uuid::new_v4().to_string(), "sender_id": null,
               "step_id": format!("step-{}", uuid::Uuid::new_v4()), "is_err": null, "seq_id": null,
               "run_id": null, "content": content})
    };
    vec![
        message("user_message", msg.text.clone()),
        message("assistant_message", format!("echo: {}", msg.text)),
    ]
}

pub(crate) fn usage(msg: &Message) -> Value {
    let prompt = msg.text.len() as u64 / 4 + 100;
    json!({"message_type": "usage_statistics", "prompt_tokens": prompt, "completion_tokens": 5,
           "total_tokens": prompt + 5, "step_count": 1})
}

impl Simulator {
    /// A simulator with these knobs and no agents yet.
    pub fn new(settings: SimSettings) -> Self {
        Self {
            world: Arc::default(),
            settings: Arc::new(Mutex::new(settings)),
        }
    }

    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn settings(&self) -> SimSettings {
        self.settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the knobs (as `POST /sim/config` does).
    pub fn configure(&self, settings: SimSettings) {
        *self.settings.lock().unwrap_or_else(|p| p.into_inner()) = settings;
    }

    /// Refuses the next `count` sends (either dialect) with `status` (503,
    /// 429; 409 is Letta's conversation lock) and `Retry-After`, without
    /// taking the message: an overloaded or restarting agent service.
    pub fn refuse_sends(&self, count: u32, status: u16, retry_after_s: Option<u64>) {
        self.world().refusals = Some(Refusals {
            left: count,
            status,
            retry_after_s,
        });
    }

    /// The refusal for this send, if one is due (counted in `sends_refused`).
    pub(crate) fn refusal(&self) -> Option<Response> {
        let mut world = self.world();
        let due = world.refusals.as_mut().filter(|r| r.left > 0)?;
        due.left -= 1;
        let Refusals {
            status,
            retry_after_s,
            ..
        } = *due;
        world.stats.sends_refused += 1;
        drop(world);
        let status = axum::http::StatusCode::from_u16(status)
            .unwrap_or(axum::http::StatusCode::SERVICE_UNAVAILABLE);
        let detail = if status == axum::http::StatusCode::CONFLICT {
            // Letta 0.16.8's words for its per-conversation lock.
            "Cannot send a new message: Another request (run_id=run-busy) is currently being \
             processed for this conversation. Please wait for the current request to complete."
        } else {
            "simulated refusal"
        };
        let mut response = (status, Json(json!({ "detail": detail }))).into_response();
        if let Some(after) = retry_after_s {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(after),
            );
        }
        Some(response)
    }

    /// The runs of `agent` still processing (all of them, or those named)
    /// end cancelled now, and the agent is free; the ids cancelled.
    pub(crate) fn cancel_runs(&self, agent: &str, named: Option<&[String]>) -> Vec<String> {
        let mut world = self.world();
        let now = Instant::now();
        let mut cancelled = Vec::new();
        for (id, msg) in world.messages.iter_mut() {
            let wanted = named.is_none_or(|ids| ids.contains(id));
            if msg.agent_id == agent
                && wanted
                && now < msg.ready_at
                && msg.outcome != Outcome::Cancelled
            {
                msg.outcome = Outcome::Cancelled;
                cancelled.push(id.clone());
            }
        }
        world.stats.cancelled += cancelled.len() as u64;
        if !cancelled.is_empty()
            && let Some(a) = world.agents.get_mut(agent)
        {
            a.busy_until = now;
        }
        cancelled
    }

    /// Deletes an agent behind the gateway's back.
    pub fn delete_agent(&self, id: &str) -> bool {
        self.world().delete_agent(id)
    }

    /// Messages an agent received, in order.
    pub fn messages_of(&self, id: &str) -> Vec<String> {
        self.world()
            .agents
            .get(id)
            .map(|a| {
                a.history
                    .iter()
                    .filter(|(r, _)| r == "user")
                    .map(|(_, c)| c.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The counters of `GET /sim/stats`.
    pub fn stats(&self) -> SimStats {
        self.world().stats.clone()
    }

    /// Live agents created for `owner` (EAI user number or Letta agent name).
    pub fn live_agents_of(&self, owner: &str) -> Vec<String> {
        self.world()
            .agents
            .values()
            .filter(|a| a.owner == owner)
            .map(|a| a.id.clone())
            .collect()
    }

    /// `X-Request-Id` values the simulator has received, most recent last.
    pub fn request_ids(&self) -> Vec<String> {
        self.world().request_ids.clone()
    }

    /// `traceparent` values the simulator has received, most recent last.
    pub fn traceparents(&self) -> Vec<String> {
        self.world().traceparents.clone()
    }

    /// The simulator's routes, to serve on a listener of the caller's.
    pub fn router(&self) -> Router {
        let recorder = self.clone();
        Router::new()
            .route("/sim/stats", get(stats))
            .route("/sim/config", post(configure).get(current))
            .route("/sim/agents", get(agents))
            .route("/sim/payload", get(payload))
            .merge(eai::routes())
            .merge(letta::routes())
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let sim = recorder.clone();
                    async move {
                        {
                            let mut world = sim.world();
                            let headers = req.headers();
                            remember(&mut world.request_ids, headers, "x-request-id");
                            remember(&mut world.traceparents, headers, "traceparent");
                            world.in_flight += 1;
                            world.stats.peak_in_flight =
                                world.stats.peak_in_flight.max(world.in_flight);
                        }
                        // Counted down even when the client hangs up mid-request.
                        let _in_flight = InFlight(sim);
                        next.run(req).await
                    }
                },
            ))
            .with_state(self.clone())
    }

    /// Serves until the listener fails.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    /// Binds and serves in the background of the current runtime.
    pub async fn spawn(self, addr: &str) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        tokio::spawn(async move {
            if let Err(e) = self.serve(listener).await {
                tracing::error!(error = %e, "Simulator stopped.");
            }
        });
        Ok(local)
    }
}

async fn stats(State(sim): State<Simulator>) -> Json<SimStats> {
    Json(sim.stats())
}

async fn configure(
    State(sim): State<Simulator>,
    Json(new): Json<SimSettings>,
) -> Json<SimSettings> {
    sim.configure(new.clone());
    Json(new)
}

/// `?bytes=N` (default 1024, at most 1 MiB) of payload: a plain backend for
/// pass-through benchmarks.
async fn payload(axum::extract::Query(q): axum::extract::Query<HashMap<String, usize>>) -> Vec<u8> {
    let n = q.get("bytes").copied().unwrap_or(1024).min(1 << 20);
    vec![b'x'; n]
}

async fn current(State(sim): State<Simulator>) -> Json<SimSettings> {
    Json(sim.settings())
}

/// Live agents: id, owner and messages received; `?owner=` filters.
async fn agents(
    State(sim): State<Simulator>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Json<Value> {
    let world = sim.world();
    let list: Vec<Value> = world
        .agents
        .values()
        .filter(|a| q.get("owner").is_none_or(|o| &a.owner == o))
        .map(|a| json!({"id": a.id, "owner": a.owner, "messages": a.history.len() / 2}))
        .collect();
    Json(Value::Array(list))
}
