//! `POST /eai-gateway/chat`: decode and validate, then hand over to `ChatService`.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

use bytes::{Bytes, BytesMut};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::Reply;
use super::sse::{self, EventStream};
use crate::chat::records::{self, Begun, IdempotencyKey, OpenRecord, Outcome, Seen, Windows};
use crate::chat::{ChatEvent, ChatRequest, ChatService};
use crate::context::RequestContext;
use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::ids::UserRules;
use crate::inflight::InflightGuard;
use crate::limits::ChatLimits;
use crate::metrics;

/// What a chat body may be, from `users:` and `chat:`.
pub struct ChatRules {
    pub users: Arc<UserRules>,
    pub max_message_chars: usize,
}

/// Validates a decoded body into a request; every failure is a 422 naming the field.
pub fn decode(body: &Value, rules: &ChatRules) -> GatewayResult<ChatRequest> {
    let max_message_chars = rules.max_message_chars;
    let obj = body
        .as_object()
        .ok_or_else(|| GatewayError::invalid("body must be a JSON object"))?;
    let user = match obj.get("user_number") {
        Some(Value::String(s)) => rules.users.parse(s).map_err(GatewayError::invalid)?,
        Some(_) => return Err(GatewayError::invalid("user_number must be a string")),
        None => return Err(GatewayError::invalid("user_number: field required")),
    };
    let message = match obj.get("message") {
        Some(Value::String(s)) if s.trim().is_empty() => {
            return Err(GatewayError::invalid("message must not be empty"));
        }
        // No agent store keeps NUL (PostgreSQL text cannot hold it).
        Some(Value::String(s)) if s.contains('\0') => {
            return Err(GatewayError::invalid(
                "message must not contain NUL characters",
            ));
        }
        Some(Value::String(s)) if s.chars().count() > max_message_chars => {
            return Err(GatewayError::invalid(format!(
                "message must be at most {max_message_chars} characters"
            )));
        }
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(GatewayError::invalid("message must be a string")),
        None => return Err(GatewayError::invalid("message: field required")),
    };
    let timeout = match obj.get("timeout") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(t) if t > 0.0 && t.is_finite() && t <= 86_400.0 => {
                Some(Duration::from_secs_f64(t))
            }
            _ => {
                return Err(GatewayError::invalid(
                    "timeout must be a positive number of seconds",
                ));
            }
        },
    };
    let metadata = match obj.get("metadata") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => return Err(GatewayError::invalid("metadata must be an object")),
    };
    Ok(ChatRequest {
        user,
        message,
        timeout,
        metadata,
        events: None,
    })
}

/// How the caller wants its answer, from the request's headers.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    pub mode: Mode,
    pub key: Option<IdempotencyKey>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// One response with the answer (the default).
    #[default]
    Blocking,
    /// `Prefer: respond-async`: 202 at once, the outcome fetched by id.
    Async,
    /// `Accept: text/event-stream`: progress and answer as events.
    Stream,
}

impl Delivery {
    /// `Prefer: respond-async` wins over `Accept: text/event-stream`: it is
    /// the explicit request not to wait.
    pub fn from_headers(headers: &http::HeaderMap) -> GatewayResult<Self> {
        let listed = |name: http::header::HeaderName, wanted: &str| {
            headers.get_all(name).iter().any(|v| {
                v.to_str().unwrap_or("").split(',').any(|item| {
                    let token = item.split([';', '=']).next().unwrap_or("").trim();
                    token.eq_ignore_ascii_case(wanted)
                })
            })
        };
        let mode = if listed(http::HeaderName::from_static("prefer"), "respond-async") {
            Mode::Async
        } else if listed(http::header::ACCEPT, "text/event-stream") {
            Mode::Stream
        } else {
            Mode::Blocking
        };
        let key = headers
            .get("idempotency-key")
            .map(|v| IdempotencyKey::parse(v.as_bytes()))
            .transpose()?;
        Ok(Self { mode, key })
    }
}

/// Decodes, validates and admits a chat: nothing reaches the database or the
/// agent service before every check here has passed. A chat's duration is
/// observed when its outcome is known: here for a refusal, at its end for
/// one that ran (which, asynchronous or streamed, is after this returns).
pub async fn handle(
    chat: &ChatService,
    limits: &ChatLimits,
    rules: &ChatRules,
    body: GatewayResult<Value>,
    ctx: &RequestContext,
    delivery: GatewayResult<Delivery>,
) -> GatewayResult<Reply> {
    let result = admit_and_run(chat, limits, rules, body, ctx, delivery).await;
    if result.is_err() {
        observe(ctx, false);
    }
    result
}

async fn admit_and_run(
    chat: &ChatService,
    limits: &ChatLimits,
    rules: &ChatRules,
    body: GatewayResult<Value>,
    ctx: &RequestContext,
    delivery: GatewayResult<Delivery>,
) -> GatewayResult<Reply> {
    let request = decode(&body?, rules)?;
    let delivery = delivery?;
    let slot = limits.begin()?;
    // Boxed: a future is as large as its largest await, and this one (a
    // Redis call) would otherwise stay allocated, unused, for as long as
    // the chat it admitted.
    Box::pin(limits.admit(&request.user)).await?;
    match (delivery.mode, &delivery.key) {
        (Mode::Blocking, None) => {
            let answer = chat.chat(ctx.clone(), request).await?;
            drop(slot);
            observe(ctx, true);
            count(Mode::Blocking, false);
            Reply::json(StatusCode::OK, &answer)
        }
        (Mode::Stream, None) => {
            let (events, request) = with_events(request);
            let run = chat.start(ctx.clone(), request)?;
            count(Mode::Stream, false);
            let ctx = ctx.clone();
            Ok(stream(Some(events), async move {
                let result = run.answer().await;
                drop(slot);
                observe(&ctx, result.is_ok());
                Outcome::of(&result)
            }))
        }
        _ => Box::pin(recorded(chat, ctx, request, slot, delivery)).await,
    }
}

/// The chat-duration histograms, once per chat that ran or was refused.
fn observe(ctx: &RequestContext, ok: bool) {
    if ok {
        metrics::CHAT_OVERHEAD.observe(ctx.own_time().as_secs_f64());
    }
    metrics::CHAT_DURATION
        .with_label_values(&[if ok { "ok" } else { "error" }])
        .observe(ctx.elapsed().as_secs_f64());
}

/// Chats taken, by form and whether a key's earlier chat answered them.
fn count(mode: Mode, replayed: bool) {
    metrics::CHAT_REQUESTS
        .with_label_values(&[mode.label(), if replayed { "true" } else { "false" }])
        .inc();
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Self::Blocking => "blocking",
            Self::Async => "async",
            Self::Stream => "stream",
        }
    }
}

fn with_events(mut request: ChatRequest) -> (mpsc::UnboundedReceiver<ChatEvent>, ChatRequest) {
    let (tx, rx) = mpsc::unbounded_channel();
    request.events = Some(tx);
    (rx, request)
}

/// An asynchronous or keyed chat: carried here under a new record, or
/// answered from the record its key already stands for.
async fn recorded(
    chat: &ChatService,
    ctx: &RequestContext,
    request: ChatRequest,
    slot: InflightGuard,
    delivery: Delivery,
) -> GatewayResult<Reply> {
    let fingerprint = records::fingerprint(&request);
    let windows = Windows {
        visible_for: (delivery.mode == Mode::Async).then(|| chat.async_result_ttl()),
        key_for: chat.idempotency_ttl(),
    };
    let begun = chat
        .records()
        .begin(&request.user, delivery.key.as_ref(), &fingerprint, &windows)
        .await?;
    match begun {
        Begun::Fresh(record) => carry(chat, ctx, request, slot, record, delivery.mode).await,
        Begun::Existing(first) => {
            drop(slot);
            if first.fingerprint != fingerprint {
                return Err(GatewayError::invalid(
                    "this Idempotency-Key was first used with a different message; use a new key",
                ));
            }
            let deadline = chat.deadline_for(request.timeout);
            count(delivery.mode, true);
            Ok(replay(chat, first.id, delivery.mode, deadline)
                .await?
                .with_header("idempotency-replayed", "true"))
        }
    }
}

/// Starts the chat of a new record; its outcome is stored however the
/// caller fares.
async fn carry(
    chat: &ChatService,
    ctx: &RequestContext,
    request: ChatRequest,
    slot: InflightGuard,
    record: OpenRecord,
    mode: Mode,
) -> GatewayResult<Reply> {
    let (events, request) = match mode {
        Mode::Stream => {
            let (events, request) = with_events(request);
            (Some(events), request)
        }
        _ => (None, request),
    };
    let visible_for = chat.async_result_ttl();
    let run = match chat.start(ctx.clone(), request) {
        Ok(run) => run,
        Err(e) => {
            // Refused before anything was sent: stored, and the key freed.
            let outcome = Outcome::of(&Err(e.clone()));
            tokio::spawn(record.finish(outcome, visible_for, false));
            return Err(e);
        }
    };
    count(mode, false);
    let id = record.id().to_owned();
    let watch = run.watch();
    let deadline = run.deadline();
    let (done_tx, done_rx) = oneshot::channel();
    let progress = watch.clone();
    // Shutdown waits for this task too, so the outcome is stored before
    // the process ends (an unstored outcome would read as a failure).
    let running = chat.running().enter();
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let _running = running;
        let result = run.outcome().await;
        drop(slot);
        observe(&ctx, result.is_ok());
        let outcome = Outcome::of(&result);
        record
            .finish(outcome.clone(), visible_for, progress.delivery_started())
            .await;
        let _ = done_tx.send(outcome);
    });
    let answer = async move {
        match tokio::time::timeout_at(deadline, done_rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Outcome::of(&Err(GatewayError::new(
                ErrorKind::Internal,
                "internal error",
            ))),
            Err(_) => Outcome::of(&Err(watch.gave_up().await)),
        }
    };
    Ok(match mode {
        Mode::Async => accepted(&id)?,
        Mode::Blocking => {
            let outcome = answer.await;
            Reply::raw(outcome.status, outcome.body)
        }
        Mode::Stream => stream(events, answer),
    })
}

/// A repeat of a keyed chat: its first request's outcome, in this
/// request's form.
async fn replay(
    chat: &ChatService,
    id: String,
    mode: Mode,
    deadline: Instant,
) -> GatewayResult<Reply> {
    let records = chat.records();
    let visible_for = chat.async_result_ttl();
    match mode {
        Mode::Async => {
            if let Some(Seen::Done(outcome)) = records.fetch_any(&id, visible_for).await? {
                return Ok(Reply::raw(outcome.status, outcome.body));
            }
            records.expose(&id).await?;
            accepted(&id)
        }
        Mode::Blocking => match records.wait(&id, deadline, visible_for).await? {
            Some(outcome) => Ok(Reply::raw(outcome.status, outcome.body)),
            None => Err(still_running(id)),
        },
        Mode::Stream => {
            let chat = chat.clone();
            Ok(stream(None, async move {
                let waited = chat
                    .records()
                    .wait(&id, deadline, chat.async_result_ttl())
                    .await;
                match waited {
                    Ok(Some(outcome)) => outcome,
                    Ok(None) => Outcome::of(&Err(still_running(id))),
                    Err(e) => Outcome::of(&Err(e)),
                }
            }))
        }
    }
}

fn still_running(id: String) -> GatewayError {
    GatewayError::new(
        ErrorKind::PollTimeout,
        "the first request with this Idempotency-Key is still being answered",
    )
    .with_message_id(id)
}

/// `202 {"message_id", "status": "processing"}`: what both the accepted
/// asynchronous chat and a read of it while it runs answer.
fn processing(id: &str) -> GatewayResult<Reply> {
    Reply::json(
        StatusCode::ACCEPTED,
        &json!({"message_id": id, "status": "processing"}),
    )
}

/// `processing`, with where to ask.
fn accepted(id: &str) -> GatewayResult<Reply> {
    Ok(processing(id)?
        .with_header("location", format!("/eai-gateway/chat/{id}"))
        .with_header("preference-applied", "respond-async"))
}

/// `GET /eai-gateway/chat/{message_id}`: 202 while the chat runs, then what
/// the chat answered; 404 for an unknown or expired id.
pub async fn outcome(chat: &ChatService, raw_id: &str) -> GatewayResult<Reply> {
    let not_found = || {
        GatewayError::new(
            ErrorKind::NotFound,
            "no chat with this id: unknown, or its result has expired",
        )
    };
    if !records::is_record_id(raw_id) {
        return Err(not_found());
    }
    match chat
        .records()
        .fetch(raw_id, chat.async_result_ttl())
        .await?
    {
        None => Err(not_found()),
        Some(Seen::Processing) => Ok(processing(raw_id)?.with_header("retry-after", "1")),
        Some(Seen::Done(outcome)) => Ok(Reply::raw(outcome.status, outcome.body)),
    }
}

/// The event stream of a chat: `status` queued at once, then `sent` and
/// each `message` as the chat reports them, then `done` with exactly the
/// blocking answer's body, or `error` with its status and detail.
fn stream(
    events: Option<mpsc::UnboundedReceiver<ChatEvent>>,
    answer: impl Future<Output = Outcome> + Send + 'static,
) -> Reply {
    let (frames, body) = EventStream::channel();
    tokio::spawn(async move {
        // Sends fail only when the client has gone: the chat goes on.
        let _ = frames.send(sse::frame("status", &json!({"status": "queued"})));
        let mut events = events;
        let mut answer = std::pin::pin!(answer);
        let outcome = loop {
            tokio::select! {
                biased;
                event = next_event(&mut events) => match event {
                    Some(event) => {
                        let _ = frames.send(event_frame(event));
                    }
                    None => events = None,
                },
                outcome = &mut answer => break outcome,
            }
        };
        // What the chat reported just before it ended.
        if let Some(events) = &mut events {
            while let Ok(event) = events.try_recv() {
                let _ = frames.send(event_frame(event));
            }
        }
        let _ = frames.send(final_frame(&outcome));
    });
    Reply::events(body)
}

async fn next_event(events: &mut Option<mpsc::UnboundedReceiver<ChatEvent>>) -> Option<ChatEvent> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

fn event_frame(event: ChatEvent) -> Bytes {
    match event {
        ChatEvent::Sent(id) => sse::frame("status", &json!({"status": "sent", "message_id": id})),
        ChatEvent::Message(message) => sse::frame("message", &message),
    }
}

fn final_frame(outcome: &Outcome) -> Bytes {
    if outcome.status == StatusCode::OK {
        // The blocking answer's body, byte for byte (it is one line).
        let mut frame = BytesMut::from(&b"event: done\ndata: "[..]);
        frame.extend_from_slice(&outcome.body);
        frame.extend_from_slice(b"\n\n");
        return frame.freeze();
    }
    let mut error = serde_json::from_slice::<Value>(&outcome.body)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({"detail": "internal error"}));
    error["status"] = json!(outcome.status.as_u16());
    sse::frame("error", &error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> ChatRules {
        ChatRules {
            users: UserRules::standard(),
            max_message_chars: MAX,
        }
    }

    const MAX: usize = 4096;

    #[test]
    fn decodes_valid_body() {
        let r = decode(
            &json!({"user_number": "+5521999999999", "message": "oi", "timeout": 5, "metadata": {"a": 1}}),
            &rules(),
        )
        .unwrap();
        assert_eq!(r.user.as_str(), "5521999999999");
        assert_eq!(r.timeout, Some(Duration::from_secs(5)));
    }

    #[test]
    fn reads_the_form_and_the_key_from_the_headers() {
        let delivery = |pairs: &[(&'static str, &str)]| {
            let mut headers = http::HeaderMap::new();
            for (name, value) in pairs {
                headers.append(*name, value.parse().unwrap());
            }
            Delivery::from_headers(&headers)
        };
        let mode = |pairs: &[(&'static str, &str)]| delivery(pairs).unwrap().mode;
        assert_eq!(mode(&[]), Mode::Blocking);
        assert_eq!(mode(&[("prefer", "wait=10, Respond-Async")]), Mode::Async);
        assert_eq!(
            mode(&[("accept", "application/json, text/event-stream;q=0.9")]),
            Mode::Stream
        );
        assert_eq!(
            mode(&[("accept", "text/event-stream"), ("prefer", "respond-async")]),
            Mode::Async
        );
        assert_eq!(
            mode(&[("prefer", "respond-asynchronously")]),
            Mode::Blocking
        );
        let key = delivery(&[("idempotency-key", "order-1")]).unwrap().key;
        assert_eq!(key.unwrap().as_str(), "order-1");
        assert_eq!(
            delivery(&[("idempotency-key", "")]).unwrap_err().status(),
            422
        );
    }

    #[test]
    fn rejects_each_bad_field() {
        let long = "x".repeat(MAX + 1);
        for body in [
            json!([]),
            json!({"message": "oi"}),
            json!({"user_number": "5521999999999"}),
            json!({"user_number": 5521999999999u64, "message": "oi"}),
            json!({"user_number": "5521999999999", "message": ""}),
            json!({"user_number": "5521999999999", "message": long}),
            json!({"user_number": "5521999999999", "message": "oi", "timeout": -1}),
            json!({"user_number": "5521999999999", "message": "oi", "metadata": "x"}),
        ] {
            let err = decode(&body, &rules())
                .err()
                .unwrap_or_else(|| panic!("accepted {body}"));
            assert_eq!(err.status(), 422, "{body}");
        }
    }
}
