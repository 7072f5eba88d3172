//! Chat beyond one blocking call: asynchronous chats read back by id on any
//! replica, answers streamed as server-sent events, and `Idempotency-Key`s
//! that send a retried message once — in both dialects, on SQLite and on
//! PostgreSQL with two replicas.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use eai_gateway::sim::SimSettings;

use super::support::*;

fn body(user: &str, message: &str) -> Value {
    json!({"user_number": user, "message": message})
}

async fn post(gw: &GatewayProcess, headers: &[(&str, &str)], body: &Value) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(gw.url("/eai-gateway/chat"))
        .json(body);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.expect("chat request")
}

async fn get_json(gw: &GatewayProcess, path: &str) -> (u16, Value) {
    let r = reqwest::get(gw.url(path)).await.expect("get");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// 202 with a Location; 202 processing while the agent works; then the
/// blocking call's answer, on the other replica too; unknown ids are 404.
async fn async_chat(dialect: Dialect, kind: DbKind) {
    let (_sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(kind);
    let a = GatewayProcess::start(GatewaySpec::new(dialect, &db, sim_addr)).await;
    let b = GatewayProcess::start(GatewaySpec::new(dialect, &db, sim_addr)).await;
    let user = "5521966660001";
    let r = post(
        &a,
        &[("prefer", "respond-async")],
        &body(user, "[delay=800] later"),
    )
    .await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let accepted: Value = r.json().await.unwrap();
    let id = accepted["message_id"].as_str().unwrap().to_owned();
    assert_eq!(accepted["status"], "processing");
    assert_eq!(location, format!("/eai-gateway/chat/{id}"));
    assert_eq!(id.len(), 32, "128 random bits in hex: {id}");

    let (status, seen) = get_json(&b, &location).await;
    assert_eq!(
        (status, &seen["status"]),
        (202, &json!("processing")),
        "{seen}"
    );
    let mut answered = None;
    for _ in 0..100 {
        let (status, seen) = get_json(&b, &location).await;
        if status != 202 {
            answered = Some((status, seen));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, answer) = answered.expect("the async chat ended");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["response"]["status"], "completed");
    assert_eq!(answer_text(&answer), "echo: [delay=800] later");
    // The same shape as the blocking call's answer.
    let (status, blocking) = a.chat(user, "now").await;
    assert_eq!(status, 200);
    let keys = |v: &Value| {
        let mut k: Vec<String> = v["response"].as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&answer), keys(&blocking));
    assert_eq!(get_json(&a, &location).await, (200, answer));

    let (status, body) = get_json(&a, &format!("/eai-gateway/chat/{}", "0".repeat(32))).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["detail"].is_string());
    assert_eq!(get_json(&a, "/eai-gateway/chat/not-an-id").await.0, 404);
}

#[tokio::test]
async fn async_chat_eai_sqlite() {
    async_chat(Dialect::Eai, DbKind::Sqlite).await;
}

#[tokio::test]
async fn async_chat_letta_postgres_two_replicas() {
    async_chat(Dialect::Letta, DbKind::Postgres).await;
}

/// A failed chat is fetched as the failure the blocking call would have
/// answered; a result past `chat.async_result_ttl_seconds` is 404 and purged.
#[tokio::test]
async fn async_failures_are_kept_and_results_expire() {
    let (sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(DbKind::Postgres);
    let mut spec = GatewaySpec::new(Dialect::Letta, &db, sim_addr);
    spec.chat_extra = "  async_result_ttl_seconds: 1\n".into();
    let gw = GatewayProcess::start(spec).await;
    let (status, _) = gw.chat("5521966660002", "hello").await;
    assert_eq!(status, 200);
    sim.configure(SimSettings {
        run_failure_rate: 1.0,
        ..SimSettings::with_delay(10)
    });
    let r = post(
        &gw,
        &[("prefer", "respond-async")],
        &body("5521966660002", "fails"),
    )
    .await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let mut last = (0, Value::Null);
    for _ in 0..100 {
        last = get_json(&gw, &location).await;
        if last.0 != 202 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last.0, 502, "{}", last.1);
    assert!(
        last.1["detail"].as_str().unwrap().contains("agent run"),
        "{}",
        last.1
    );
    assert!(last.1["message_id"].is_string(), "{}", last.1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get_json(&gw, &location).await.0, 404);
    let table = format!("{}.chat_records", db.schema.as_deref().unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut purged = false;
    while !purged && Instant::now() < deadline {
        purged = db.execute(&format!("SELECT id FROM {table}")).await == 0;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(purged, "the expired record was purged");
}

/// The process carrying an asynchronous chat dies: once its lease has run
/// out, the other replica reports the chat failed (502), not processing.
#[tokio::test]
async fn an_async_chat_whose_process_died_is_reported_failed() {
    let (_sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(DbKind::Postgres);
    let mut a = GatewayProcess::start(GatewaySpec::new(Dialect::Eai, &db, sim_addr)).await;
    let b = GatewayProcess::start(GatewaySpec::new(Dialect::Eai, &db, sim_addr)).await;
    let r = post(
        &a,
        &[("prefer", "respond-async")],
        &body("5521966660003", "[delay=120000] never seen"),
    )
    .await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let died = Instant::now();
    assert_eq!(get_json(&b, &location).await.0, 202);
    let mut last = (0, Value::Null);
    while died.elapsed() < Duration::from_secs(60) {
        last = get_json(&b, &location).await;
        if last.0 != 202 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(last.0, 502, "{}", last.1);
    assert!(
        last.1["detail"].as_str().unwrap().contains("stopped"),
        "{}",
        last.1
    );
    // Stable: every later read gives the same failure.
    assert_eq!(get_json(&b, &location).await, last);
}

/// queued, sent, the agent's message(s), then done with the blocking
/// answer's body.
async fn streamed_chat(dialect: Dialect) {
    let (_sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(DbKind::Sqlite);
    let gw = GatewayProcess::start(GatewaySpec::new(dialect, &db, sim_addr)).await;
    let user = "5521966660004";
    let started = Instant::now();
    let r = post(
        &gw,
        &[("accept", "text/event-stream")],
        &body(user, "[delay=1200] streamed"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let header_at = started.elapsed();
    assert!(
        header_at < Duration::from_millis(800),
        "header at once: {header_at:?}"
    );
    let events = read_events(r, |_| false).await;
    let n = names(&events);
    assert_eq!(n[0], "status");
    assert_eq!(events[0].json(), json!({"status": "queued"}));
    assert_eq!(n[1], "status");
    assert_eq!(events[1].json()["status"], "sent");
    assert_eq!(*n.last().unwrap(), "done", "{n:?}");
    let messages: Vec<&Event> = events.iter().filter(|e| e.name == "message").collect();
    assert!(!messages.is_empty(), "{n:?}");
    let done = events.last().unwrap().json();
    assert_eq!(done["response"]["status"], "completed");
    assert_eq!(
        done["response"]["message_id"],
        events[1].json()["message_id"]
    );
    assert_eq!(answer_text(&done), "echo: [delay=1200] streamed");
    let streamed: String = messages
        .iter()
        .map(|m| m.json())
        .filter(|m| m["message_type"] == "assistant_message")
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(streamed, "echo: [delay=1200] streamed");
    if dialect == Dialect::Letta {
        // Pieces arrive as the agent produces them, well before the end.
        let first = messages[0].at;
        let end = events.last().unwrap().at;
        assert!(
            end.duration_since(first) > Duration::from_millis(400),
            "first piece {:?} before the end",
            end.duration_since(first)
        );
        assert!(messages.len() >= 2, "{n:?}");
    }
}

#[tokio::test]
async fn streamed_chat_eai() {
    streamed_chat(Dialect::Eai).await;
}

#[tokio::test]
async fn streamed_chat_letta() {
    streamed_chat(Dialect::Letta).await;
}

/// A failure is an `error` event with status and detail; a client that
/// leaves mid-stream does not cut its message short, and the user's next
/// message waits for it.
#[tokio::test]
async fn stream_errors_and_a_client_that_leaves() {
    let (sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(DbKind::Sqlite);
    let gw = GatewayProcess::start(GatewaySpec::new(Dialect::Letta, &db, sim_addr)).await;
    let user = "5521966660005";
    let r = post(
        &gw,
        &[("accept", "text/event-stream")],
        &body(user, "[delay=1500] left"),
    )
    .await;
    let events = read_events(r, |e| e.name == "message").await;
    assert_eq!(names(&events).last(), Some(&"message"));
    drop(events);
    // The client is gone (its response dropped above); the next message
    // queues behind the first and is never sent on top of it.
    let (status, answer) = gw.chat(user, "next").await;
    assert_eq!(status, 200, "{answer}");
    let stats = sim.stats();
    assert_eq!((stats.messages, stats.overlaps), (2, 0));

    sim.configure(SimSettings {
        run_failure_rate: 1.0,
        ..SimSettings::with_delay(10)
    });
    let r = post(
        &gw,
        &[("accept", "text/event-stream")],
        &body(user, "fails"),
    )
    .await;
    let events = read_events(r, |_| false).await;
    let last = events.last().unwrap();
    assert_eq!(last.name, "error", "{:?}", names(&events));
    let error = last.json();
    assert_eq!(error["status"], 502, "{error}");
    assert!(error["detail"].is_string(), "{error}");
}

/// A chat that takes longer than 15 s keeps its stream alive with comments.
#[tokio::test]
async fn a_quiet_stream_carries_keepalive_comments() {
    let (_sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(DbKind::Sqlite);
    let gw = GatewayProcess::start(GatewaySpec::new(Dialect::Eai, &db, sim_addr)).await;
    let r = post(
        &gw,
        &[("accept", "text/event-stream")],
        &body("5521966660006", "[delay=16500] slow"),
    )
    .await;
    let events = read_events(r, |_| false).await;
    let n = names(&events);
    let comment = n.iter().position(|n| *n == ":").expect("a comment line");
    assert!(
        comment < n.len() - 1 && *n.last().unwrap() == "done",
        "{n:?}"
    );
}

/// The same keyed chat 20 times at once across two replicas: the agent gets
/// one message, every caller the same answer, 19 of them marked replayed.
#[tokio::test]
async fn one_key_one_message_across_replicas() {
    let (sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(DbKind::Postgres);
    let a = GatewayProcess::start(GatewaySpec::new(Dialect::Letta, &db, sim_addr)).await;
    let b = GatewayProcess::start(GatewaySpec::new(Dialect::Letta, &db, sim_addr)).await;
    let user = "5521966660007";
    let chat = body(user, "[delay=500] pay my bill");
    let calls = (0..20).map(|i| {
        let gw = if i % 2 == 0 { &a } else { &b };
        let chat = &chat;
        async move {
            let r = post(gw, &[("idempotency-key", "bill-2026-11")], chat).await;
            let replayed = r.headers().get("idempotency-replayed").is_some();
            let status = r.status().as_u16();
            (status, replayed, r.json::<Value>().await.unwrap())
        }
    });
    let results = futures_util::future::join_all(calls).await;
    assert_eq!(sim.stats().messages, 1, "sent once");
    let first = &results[0].2;
    for (status, _, answer) in &results {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(answer, first);
    }
    assert_eq!(results.iter().filter(|r| r.1).count(), 19);

    // Later, in the other forms: the same answer, still not sent again.
    let r = post(
        &b,
        &[
            ("idempotency-key", "bill-2026-11"),
            ("prefer", "respond-async"),
        ],
        &chat,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.json::<Value>().await.unwrap(), first);
    let r = post(
        &a,
        &[
            ("idempotency-key", "bill-2026-11"),
            ("accept", "text/event-stream"),
        ],
        &chat,
    )
    .await;
    assert_eq!(r.headers()["idempotency-replayed"], "true");
    let events = read_events(r, |_| false).await;
    assert_eq!(&events.last().unwrap().json(), first);
    assert_eq!(sim.stats().messages, 1);

    // The key with another message: refused, nothing sent.
    let r = post(
        &a,
        &[("idempotency-key", "bill-2026-11")],
        &body(user, "something else"),
    )
    .await;
    assert_eq!(r.status(), 422);
    assert!(
        r.json::<Value>().await.unwrap()["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key")
    );
    // Another user's same key is another chat.
    let r = post(
        &a,
        &[("idempotency-key", "bill-2026-11")],
        &body("5521966660008", "hi"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("idempotency-replayed").is_none());
    assert_eq!(sim.stats().messages, 2);
    for bad in ["", &"k".repeat(256)] {
        let r = post(&a, &[("idempotency-key", bad)], &chat).await;
        assert_eq!(r.status(), 422, "key {bad:?}");
    }
}

/// A keyed asynchronous chat: repeats name the same message id, and the
/// message is sent once; a keyed stream's repeat replays its `done`.
#[tokio::test]
async fn keyed_async_and_streamed_chats_are_sent_once() {
    let (sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(DbKind::Sqlite);
    let gw = GatewayProcess::start(GatewaySpec::new(Dialect::Eai, &db, sim_addr)).await;
    let chat = body("5521966660009", "[delay=600] once");
    let headers = [("idempotency-key", "k-async"), ("prefer", "respond-async")];
    let first: Value = post(&gw, &headers, &chat).await.json().await.unwrap();
    let r = post(&gw, &headers, &chat).await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["idempotency-replayed"], "true");
    let again: Value = r.json().await.unwrap();
    assert_eq!(first["message_id"], again["message_id"]);
    // A blocking repeat waits for the first and gets its answer.
    let r = post(&gw, &[("idempotency-key", "k-async")], &chat).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer_text(&answer), "echo: [delay=600] once");
    assert_eq!(sim.stats().messages, 1);

    let stream = [
        ("idempotency-key", "k-stream"),
        ("accept", "text/event-stream"),
    ];
    let streamed = read_events(
        post(&gw, &stream, &body("5521966660009", "twice?")).await,
        |_| false,
    )
    .await;
    let replayed = read_events(
        post(&gw, &stream, &body("5521966660009", "twice?")).await,
        |_| false,
    )
    .await;
    assert_eq!(streamed.last().unwrap().data, replayed.last().unwrap().data);
    assert_eq!(sim.stats().messages, 2);
}
