//! The agent service's own failure modes: a send it refused before taking
//! it (503, 429, Letta's 409 conversation lock, a refused connection) is
//! tried again within the caller's budget, and exactly one message reaches
//! the agent; a failure after the send may have reached it and is not.

use std::time::Duration;

use super::support::*;

/// How many retries the gateway counted for `reason`, over every operation.
fn retries(m: &Metrics, reason: &str) -> f64 {
    m.with_label("eai_gateway_agent_service_retries_total", "reason", reason)
        .iter()
        .map(|(_, v)| v)
        .sum()
}

/// The first two sends of the second chat are refused with `status`; the
/// chat answers 200 and the agent saw each chat's message once.
async fn refused_sends_are_retried(dialect: Dialect, status: u16, retry_after: Option<u64>) {
    let (sim, sim_addr) = simulator(30).await;
    let db = TestDb::new(DbKind::Sqlite);
    let gw = GatewayProcess::start(GatewaySpec::new(dialect, &db, sim_addr)).await;
    let user = "5521933330001";
    let (code, body) = gw.chat(user, "first").await;
    assert_eq!(code, 200, "{body}");
    let agent = answering_agent(&body);

    sim.refuse_sends(2, status, retry_after);
    let started = std::time::Instant::now();
    let (code, body) = gw.chat(user, "second").await;
    assert_eq!(code, 200, "{status}: {body}");
    assert_eq!(answer_text(&body), "echo: second");
    assert_eq!(sim.stats().sends_refused, 2);
    assert_eq!(sim.messages_of(&agent), ["first", "second"], "{status}");
    if let Some(after) = retry_after {
        // Retry-After honoured: two waits of at least its seconds.
        assert!(
            started.elapsed() >= Duration::from_secs(2 * after),
            "{status}"
        );
    }
    let reason = match status {
        503 => "unavailable_503",
        429 => "too_many_429",
        _ => "busy_409",
    };
    assert_eq!(retries(&gw.metrics().await, reason), 2.0, "{status}");
}

#[tokio::test]
async fn a_503_send_is_retried_eai() {
    refused_sends_are_retried(Dialect::Eai, 503, Some(1)).await;
}

#[tokio::test]
async fn a_429_send_is_retried_eai() {
    refused_sends_are_retried(Dialect::Eai, 429, Some(1)).await;
}

#[tokio::test]
async fn a_503_send_is_retried_letta() {
    refused_sends_are_retried(Dialect::Letta, 503, Some(1)).await;
}

#[tokio::test]
async fn a_429_send_is_retried_letta() {
    refused_sends_are_retried(Dialect::Letta, 429, Some(1)).await;
}

#[tokio::test]
async fn lettas_conversation_lock_is_waited_out() {
    refused_sends_are_retried(Dialect::Letta, 409, None).await;
}

/// A 409 from the EAI service, or a 500 from either, may mean anything: the
/// gateway does not guess, and sends nothing again.
#[tokio::test]
async fn other_failures_are_not_retried() {
    for (dialect, status) in [
        (Dialect::Eai, 409),
        (Dialect::Eai, 500),
        (Dialect::Letta, 500),
    ] {
        let (sim, sim_addr) = simulator(30).await;
        let db = TestDb::new(DbKind::Sqlite);
        let gw = GatewayProcess::start(GatewaySpec::new(dialect, &db, sim_addr)).await;
        let (code, body) = gw.chat("5521933330002", "first").await;
        assert_eq!(code, 200, "{body}");
        sim.refuse_sends(1, status, Some(1));
        let (code, body) = gw.chat("5521933330002", "second").await;
        assert_eq!(code, 502, "{dialect:?} {status}: {body}");
        assert_eq!(sim.stats().sends_refused, 1, "{dialect:?} {status}");
        let m = gw.metrics().await;
        assert!(
            m.with_label(
                "eai_gateway_agent_service_retries_total",
                "operation",
                "send"
            )
            .is_empty(),
            "{dialect:?} {status}"
        );
    }
}

/// The agent service down for a second (connections refused): the send
/// waits it out and the message arrives once.
async fn a_refused_connection_is_retried(dialect: Dialect) {
    let (sim, sim_addr) = simulator(30).await;
    let link = DbLink::start(sim_addr).await;
    let db = TestDb::new(DbKind::Sqlite);
    let mut spec = GatewaySpec::new(dialect, &db, sim_addr);
    spec.agent_url = format!("http://127.0.0.1:{}", link.port);
    let gw = GatewayProcess::start(spec).await;
    let user = "5521933330003";
    let (code, body) = gw.chat(user, "first").await;
    assert_eq!(code, 200, "{body}");
    let agent = answering_agent(&body);

    link.down();
    // The gateway's pooled connection sees its end before the next send.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let chat = tokio::spawn({
        let url = gw.url("/eai-gateway/chat");
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(&serde_json::json!({"user_number": user, "message": "second"}))
                .send()
                .await
                .expect("chat");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    link.up().await;
    let (code, body) = chat.await.expect("chat task");
    assert_eq!(code, 200, "{body}");
    assert_eq!(sim.messages_of(&agent), ["first", "second"]);
    assert!(retries(&gw.metrics().await, "connect_refused") >= 1.0);
}

#[tokio::test]
async fn a_refused_connection_is_retried_eai() {
    a_refused_connection_is_retried(Dialect::Eai).await;
}

#[tokio::test]
async fn a_refused_connection_is_retried_letta() {
    a_refused_connection_is_retried(Dialect::Letta).await;
}

/// A Letta run still going at `chat.max_processing_seconds` is cancelled at
/// the agent service before the user's turn is released: the next message
/// reaches an idle agent.
#[tokio::test]
async fn an_abandoned_letta_run_is_cancelled_before_the_next_message() {
    let (sim, sim_addr) = simulator(30).await;
    let db = TestDb::new(DbKind::Sqlite);
    let mut spec = GatewaySpec::new(Dialect::Letta, &db, sim_addr);
    spec.chat_extra = "  timeout_seconds: 1\n  max_processing_seconds: 2\n".into();
    let gw = GatewayProcess::start(spec).await;
    let user = "5521933330004";
    let (code, body) = gw.chat(user, "hello").await;
    assert_eq!(code, 200, "{body}");

    let (code, body) = gw.chat(user, "[delay=20000] a long one").await;
    assert_eq!(code, 504, "{body}");
    let run = body["message_id"].as_str().expect("message_id").to_owned();
    let cancelled = |m: &Metrics| {
        m.value(
            "eai_gateway_agent_service_calls_total",
            &[("operation", "cancel"), ("outcome", "ok")],
        )
        .unwrap_or(0.0)
    };
    let mut seen = 0.0;
    for _ in 0..60 {
        seen = cancelled(&gw.metrics().await);
        if seen > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, 1.0, "no cancel call");
    assert_eq!(sim.stats().cancelled, 1);
    let status: serde_json::Value = reqwest::get(format!("http://{sim_addr}/v1/runs/{run}"))
        .await
        .expect("run")
        .json()
        .await
        .expect("run json");
    assert_eq!(status["status"], "cancelled", "{status}");

    let (code, body) = gw.chat(user, "next").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(answer_text(&body), "echo: next");
    assert_eq!(sim.stats().overlaps, 0);
}

/// A shutdown whose drain gives a Letta message up cancels its run first.
#[tokio::test]
async fn a_shutdown_cancels_the_runs_it_gives_up() {
    let (sim, sim_addr) = simulator(30).await;
    let db = TestDb::new(DbKind::Sqlite);
    let mut gw = GatewayProcess::start(GatewaySpec::new(Dialect::Letta, &db, sim_addr)).await;
    let (code, body) = gw.chat("5521933330005", "hello").await;
    assert_eq!(code, 200, "{body}");
    let url = gw.url("/eai-gateway/chat");
    let _waiting = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&serde_json::json!({"user_number": "5521933330005", "message": "[delay=20000] long"}))
            .send()
            .await
    });
    assert!(
        eventually(Duration::from_secs(5), || sim.stats().messages == 2).await,
        "the long message never arrived"
    );
    let status = tokio::task::spawn_blocking(move || gw.terminate())
        .await
        .expect("terminate");
    assert_eq!(status.code(), Some(3), "abandoned work: {status:?}");
    assert_eq!(
        sim.stats().cancelled,
        1,
        "the abandoned run was not cancelled"
    );
}
