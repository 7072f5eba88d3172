//! The route contract of `/eai-gateway/*`, `/healthz` and `/readyz`.

use serde_json::{Value, json};

use super::support::*;

const USER: &str = "+5521987650001";
const USER_BARE: &str = "5521987650001";

async fn contract(dialect: Dialect, kind: DbKind) {
    let (sim, sim_addr) = simulator(30).await;
    let db = TestDb::new(kind);
    let gw = GatewayProcess::start(GatewaySpec::new(dialect, &db, sim_addr)).await;
    let client = reqwest::Client::new();

    // First chat creates the agent; the envelope is the documented one.
    let (status, first) = gw.chat(USER, "olá").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["response"]["status"], "completed");
    assert!(
        first["response"]["message_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert_eq!(answer_text(&first), "echo: olá");
    let agent = answering_agent(&first);

    // Same user again (bare digits are the same user) → the same agent.
    let (status, second) = gw.chat(USER_BARE, "de novo").await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(answering_agent(&second), agent);
    assert_eq!(answer_text(&second), "echo: de novo");
    assert_eq!(sim.stats().agents_created, 1);
    assert_eq!(
        db.mappings().await,
        vec![(USER_BARE.to_owned(), agent.clone())]
    );

    // GET the mapping, by either spelling.
    for path in [
        format!("/eai-gateway/agent/{USER_BARE}"),
        "/eai-gateway/agent/%2B5521987650001".into(),
    ] {
        let r = client.get(gw.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap(), json!({"agent_id": agent}));
    }

    // DELETE removes it; the next chat creates a new agent.
    assert_eq!(gw.forget(USER_BARE).await, 204);
    let r = client
        .get(gw.url(&format!("/eai-gateway/agent/{USER_BARE}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"agent_id": null}));
    let (status, third) = gw.chat(USER, "voltei").await;
    assert_eq!(status, 200, "{third}");
    let new_agent = answering_agent(&third);
    assert_ne!(new_agent, agent);
    assert_eq!(sim.stats().agents_created, 2);
    assert_eq!(db.mappings().await, vec![(USER_BARE.to_owned(), new_agent)]);

    // Unknown users.
    let r = client
        .get(gw.url("/eai-gateway/agent/5521000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"agent_id": null}));
    let r = client
        .delete(gw.url("/eai-gateway/agent/5521000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["detail"].is_string());

    // Bad input never reaches the store or the agent service.
    let before = sim.stats();
    let r = client
        .post(gw.url("/eai-gateway/chat"))
        .header("content-type", "application/json")
        .body("{\"user_number\": \"5521987650002\", ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.unwrap()["detail"].is_string());
    for body in [
        json!({"message": "sem número"}),
        json!({"user_number": "5521987650002"}),
        json!({"user_number": "12", "message": "curto"}),
        json!({"user_number": "5521987650002", "message": ""}),
    ] {
        let r = client
            .post(gw.url("/eai-gateway/chat"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{body}");
        assert!(r.json::<Value>().await.unwrap()["detail"].is_string());
    }
    let r = client
        .get(gw.url("/eai-gateway/agent/abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(sim.stats(), before);
    assert_eq!(db.mappings().await.len(), 1);

    // Probes.
    let r = client.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client.get(gw.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_eai_postgres() {
    contract(Dialect::Eai, DbKind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_eai_sqlite() {
    contract(Dialect::Eai, DbKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_letta_postgres() {
    contract(Dialect::Letta, DbKind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_letta_sqlite() {
    contract(Dialect::Letta, DbKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letta_envelope_carries_run_messages_and_usage() {
    let (_sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(DbKind::Sqlite);
    let gw = GatewayProcess::start(GatewaySpec::new(Dialect::Letta, &db, sim_addr)).await;
    let (status, body) = gw.chat("5521987650003", "uso").await;
    assert_eq!(status, 200, "{body}");
    let r = &body["response"];
    assert!(
        r["message_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("run-")),
        "{body}"
    );
    assert_eq!(r["data"]["messages"][0]["message_type"], "user_message");
    assert_eq!(r["data"]["messages"][1]["content"], "echo: uso");
    assert!(
        r["data"]["usage"]["total_tokens"].as_u64().is_some(),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letta_agents_are_named_without_the_number() {
    let (sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(DbKind::Sqlite);
    let gw = GatewayProcess::start(GatewaySpec::new(Dialect::Letta, &db, sim_addr)).await;
    let (status, body) = gw.chat("5521987650004", "nome").await;
    assert_eq!(status, 200, "{body}");
    let listed: Value = reqwest::get(format!("http://{sim_addr}/v1/agents/?tags=eai-gateway"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = listed.to_string();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{text}");
    assert!(
        !text.contains("5521987650004") && !text.contains("87650004"),
        "{text}"
    );
    assert_eq!(
        sim.live_agents_of(listed[0]["name"].as_str().unwrap())
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_budget_exhausted_is_504() {
    let (_sim, sim_addr) = simulator(3_000).await;
    let db = TestDb::new(DbKind::Sqlite);
    let gw = GatewayProcess::start(GatewaySpec::new(Dialect::Eai, &db, sim_addr)).await;
    let r = reqwest::Client::new()
        .post(gw.url("/eai-gateway/chat"))
        .json(&json!({"user_number": "5521987650005", "message": "lento", "timeout": 0.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(r.json::<Value>().await.unwrap()["detail"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_agent_service_is_502_and_stores_nothing() {
    let db = TestDb::new(DbKind::Sqlite);
    let closed: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = GatewayProcess::start(GatewaySpec::new(Dialect::Eai, &db, closed)).await;
    let (status, body) = gw.chat("5521987650006", "alô").await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("unreachable")),
        "{body}"
    );
    assert!(db.mappings().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_and_unknown_native_path() {
    let (_sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(DbKind::Sqlite);
    let gw = GatewayProcess::start(GatewaySpec::new(Dialect::Eai, &db, sim_addr)).await;
    let r = reqwest::get(gw.url("/eai-gateway/chat")).await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let r = reqwest::Client::new()
        .put(gw.url("/eai-gateway/agent/5521987650008"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, DELETE");
    let r = reqwest::get(gw.url("/eai-gateway/nothing")).await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["detail"].is_string());
    // No default upstream configured: other paths are 404 with a detail.
    let r = reqwest::get(gw.url("/elsewhere")).await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["detail"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letta_sync_delivery_answers_without_polling_and_heals() {
    let (sim, sim_addr) = simulator(300).await;
    let db = TestDb::new(DbKind::Sqlite);
    let mut spec = GatewaySpec::new(Dialect::Letta, &db, sim_addr);
    spec.agent_extra = "  letta:\n    delivery: sync\n".into();
    let gw = GatewayProcess::start(spec).await;
    let (status, body) = gw.chat("5521987650007", "direto").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answer_text(&body), "echo: direto");
    assert!(
        body["response"]["message_id"]
            .as_str()
            .unwrap()
            .starts_with("run-"),
        "{body}"
    );
    let old = answering_agent(&body);
    sim.delete_agent(&old);
    let (status, body) = gw.chat("5521987650007", "de novo").await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(answering_agent(&body), old);
    let metrics = gw.metrics().await;
    let page = &metrics.page;
    assert_eq!(
        metrics.value("eai_gateway_chat_polls_sum", &[]),
        Some(0.0),
        "{page}"
    );
    assert!(
        metrics
            .value(
                "eai_gateway_agent_service_calls_total",
                &[("operation", "send_sync"), ("outcome", "ok")]
            )
            .is_some_and(|n| n >= 1.0),
        "{page}"
    );
    assert!(
        metrics
            .with_label("eai_gateway_agent_service_calls_total", "operation", "poll")
            .is_empty(),
        "{page}"
    );
}
