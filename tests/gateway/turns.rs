//! The user's agent has one holder at a time: a caller that stops waiting
//! does not end its message's turn, a stuck message is given up after
//! `chat.max_processing_seconds`, and a DELETE runs between messages, never
//! under one — on one replica and across two.

use std::time::Duration;

use serde_json::{Value, json};

use super::support::*;

const USER: &str = "5521977770001";

async fn chat_with(
    gw: &GatewayProcess,
    user: &str,
    message: &str,
    timeout: Option<f64>,
) -> (u16, Value) {
    let mut body = json!({"user_number": user, "message": message});
    if let Some(t) = timeout {
        body["timeout"] = json!(t);
    }
    post_chat(&reqwest::Client::new(), gw, body).await
}

fn replica<'a>(
    dialect: Dialect,
    db: &'a TestDb,
    sim: std::net::SocketAddr,
    extra: &str,
) -> GatewaySpec<'a> {
    let mut spec = GatewaySpec::new(dialect, db, sim);
    spec.extra_yaml = extra.to_owned();
    spec
}

/// "warm" answered, "short" given up by its caller after 0.3 s while the
/// agent still works, then "next": never sent on top of "short".
async fn a_504_keeps_the_turn(dialect: Dialect, two_replicas: bool) {
    let (sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(if two_replicas {
        DbKind::Postgres
    } else {
        DbKind::Sqlite
    });
    let a = GatewayProcess::start(replica(dialect, &db, sim_addr, "")).await;
    let b = if two_replicas {
        Some(GatewayProcess::start(replica(dialect, &db, sim_addr, "")).await)
    } else {
        None
    };
    let (status, body) = chat_with(&a, USER, "[delay=300] warm", None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = chat_with(&a, USER, "[delay=1500] short", Some(0.3)).await;
    assert_eq!(status, 504, "{body}");
    assert!(body["detail"].is_string(), "{body}");
    assert!(
        body["message_id"].as_str().is_some_and(|id| !id.is_empty()),
        "the 504 names the message still in progress: {body}"
    );
    let next_gw = b.as_ref().unwrap_or(&a);
    let (status, body) = chat_with(next_gw, USER, "[delay=100] next", None).await;
    assert_eq!(status, 200, "{body}");
    let stats = sim.stats();
    assert_eq!(stats.messages, 3, "{stats:?}");
    assert_eq!(
        stats.overlaps, 0,
        "\"next\" was sent while \"short\" was processing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_504_keeps_the_users_turn_eai() {
    a_504_keeps_the_turn(Dialect::Eai, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_504_keeps_the_users_turn_letta() {
    a_504_keeps_the_turn(Dialect::Letta, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_504_on_one_replica_keeps_the_turn_on_another() {
    a_504_keeps_the_turn(Dialect::Eai, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_message_is_abandoned_after_max_processing() {
    let (_sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(DbKind::Sqlite);
    let mut spec = replica(Dialect::Eai, &db, sim_addr, "");
    spec.chat_extra = "  timeout_seconds: 0.5\n  max_processing_seconds: 1\n".into();
    let gw = GatewayProcess::start(spec).await;
    let (status, body) = chat_with(&gw, USER, "[delay=30000] stuck", None).await;
    assert_eq!(status, 504, "{body}");
    let abandoned = async {
        gw.metrics()
            .await
            .value("eai_gateway_abandoned_messages_total", &[])
    };
    assert_eq!(abandoned.await, Some(0.0));
    let mut given_up = false;
    for _ in 0..100 {
        let n = gw
            .metrics()
            .await
            .value("eai_gateway_abandoned_messages_total", &[]);
        if n == Some(1.0) {
            given_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(given_up, "the stuck message was never abandoned");
    // The user has their turn back.
    let (status, body) = chat_with(&gw, USER, "[delay=50] again", None).await;
    assert_eq!(status, 200, "{body}");
}

/// A DELETE sent while a message is processing waits for it, then removes
/// the mapping and the agent; nothing recreates them. The next message
/// starts fresh.
async fn delete_waits_for_the_message(dialect: Dialect, two_replicas: bool) {
    let (sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(if two_replicas {
        DbKind::Postgres
    } else {
        DbKind::Sqlite
    });
    let extra = "agents:\n  delete_agent_on_delete: true\n";
    let a = GatewayProcess::start(replica(dialect, &db, sim_addr, extra)).await;
    let b = if two_replicas {
        Some(GatewayProcess::start(replica(dialect, &db, sim_addr, extra)).await)
    } else {
        None
    };
    let (status, body) = chat_with(&a, USER, "[delay=50] warm", None).await;
    assert_eq!(status, 200, "{body}");
    let url = a.url("/eai-gateway/chat");
    let in_flight = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(url)
            .json(&json!({"user_number": USER, "message": "[delay=1500] slow"}))
            .send()
            .await
            .unwrap();
        r.status().as_u16()
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let deleter = b.as_ref().unwrap_or(&a);
    assert_eq!(deleter.forget(USER).await, 204);
    assert_eq!(
        in_flight.await.unwrap(),
        200,
        "the message in progress finished first"
    );
    assert!(db.mappings().await.is_empty(), "{:?}", db.mappings().await);
    let stats = sim.stats();
    assert_eq!(
        (
            stats.agents_created,
            stats.agents_deleted,
            stats.live_agents
        ),
        (1, 1, 0),
        "{stats:?}"
    );
    assert_eq!(stats.overlaps, 0);
    let (status, body) = chat_with(deleter, USER, "[delay=50] fresh", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        sim.stats().agents_created,
        2,
        "a new agent only after the DELETE"
    );
    assert_eq!(db.mappings().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_waits_for_the_message_in_progress() {
    delete_waits_for_the_message(Dialect::Eai, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_waits_for_the_message_in_progress_letta() {
    delete_waits_for_the_message(Dialect::Letta, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_on_another_replica_waits_for_the_message_in_progress() {
    delete_waits_for_the_message(Dialect::Eai, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_behind_a_long_message_is_503_with_retry_after() {
    let (sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(DbKind::Sqlite);
    let extra = "agents:\n  delete_agent_on_delete: true\n  delete_wait_seconds: 1\n";
    let gw = GatewayProcess::start(replica(Dialect::Eai, &db, sim_addr, extra)).await;
    let url = gw.url("/eai-gateway/chat");
    let in_flight = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&json!({"user_number": USER, "message": "[delay=4000] long"}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = reqwest::Client::new()
        .delete(gw.url(&format!("/eai-gateway/agent/{USER}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert!(r.json::<Value>().await.unwrap()["detail"].is_string());
    assert_eq!(in_flight.await.unwrap(), 200);
    assert_eq!(
        db.mappings().await.len(),
        1,
        "the refused DELETE changed nothing"
    );
    assert_eq!(sim.stats().agents_deleted, 0);
    assert_eq!(gw.forget(USER).await, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_a_message_its_caller_gave_up_on() {
    let (sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(DbKind::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gw.log");
    let mut spec = replica(
        Dialect::Eai,
        &db,
        sim_addr,
        "shutdown:\n  drain_seconds: 20\n",
    );
    spec.replace_shutdown = true;
    spec.log_file = Some(log.clone());
    let mut gw = GatewayProcess::start(spec).await;
    let (status, body) = chat_with(&gw, USER, "[delay=1500] late", Some(0.3)).await;
    assert_eq!(status, 504, "{body}");
    let status = tokio::task::spawn_blocking(move || gw.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("Drained"), "{text}");
    assert!(!text.contains("abandon"), "{text}");
    // The gateway polled the message to its end before leaving.
    assert!(
        text.contains("Message finished after its caller stopped waiting")
            && text.contains("\"outcome\":\"answered\""),
        "{text}"
    );
    assert_eq!(sim.stats().messages, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_abandons_what_outlives_the_drain_period() {
    let (_sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(DbKind::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gw.log");
    let mut spec = replica(Dialect::Eai, &db, sim_addr, "");
    spec.log_file = Some(log.clone());
    let mut gw = GatewayProcess::start(spec).await;
    let (status, body) = chat_with(&gw, USER, "[delay=60000] forever", Some(0.3)).await;
    assert_eq!(status, 504, "{body}");
    let status = tokio::task::spawn_blocking(move || gw.terminate())
        .await
        .unwrap();
    // Stopped, and says that it gave work up.
    assert_eq!(status.code(), Some(3), "{status}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("abandoning") && l.contains("\"abandoned\":1")),
        "{text}"
    );
}
