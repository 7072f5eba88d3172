//! Every failure has a defined answer, and nothing is lost.

use std::time::{Duration, Instant};

use eai_gateway::sim::SimSettings;
use serde_json::{Value, json};

use super::support::*;

const USER: &str = "5521944440001";

async fn setup(
    dialect: Dialect,
    delay_ms: u64,
) -> (eai_gateway::sim::Simulator, TestDb, GatewayProcess) {
    let (sim, sim_addr) = simulator(delay_ms).await;
    let db = TestDb::new(DbKind::Sqlite);
    let gw = GatewayProcess::start(GatewaySpec::new(dialect, &db, sim_addr)).await;
    (sim, db, gw)
}

async fn stale_mapping_heals(dialect: Dialect) {
    let (sim, db, gw) = setup(dialect, 10).await;
    let (status, first) = gw.chat(USER, "antes").await;
    assert_eq!(status, 200, "{first}");
    let old = answering_agent(&first);
    assert!(sim.delete_agent(&old), "deleted behind the gateway's back");

    let (status, second) = gw.chat(USER, "depois").await;
    assert_eq!(status, 200, "{second}");
    let new = answering_agent(&second);
    assert_ne!(new, old);
    assert_eq!(db.mappings().await, vec![(USER.to_owned(), new.clone())]);
    assert_eq!(
        sim.messages_of(&new),
        vec!["depois".to_owned()],
        "delivered exactly once"
    );
    assert_eq!(sim.stats().agents_created, 2);

    // The mapping is healthy again: no further creation.
    let (status, third) = gw.chat(USER, "de novo").await;
    assert_eq!(status, 200);
    assert_eq!(answering_agent(&third), new);
    assert_eq!(sim.stats().agents_created, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_mapping_heals_eai() {
    stale_mapping_heals(Dialect::Eai).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_mapping_heals_letta() {
    stale_mapping_heals(Dialect::Letta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healing_does_not_loop_when_creation_fails() {
    for dialect in [Dialect::Eai, Dialect::Letta] {
        let (sim, db, gw) = setup(dialect, 10).await;
        let (_, first) = gw.chat(USER, "antes").await;
        let old = answering_agent(&first);
        sim.delete_agent(&old);
        sim.configure(SimSettings {
            delay_ms: 10,
            create_error_rate: 1.0,
            ..SimSettings::default()
        });
        let attempts = sim.stats().create_attempts;
        let (status, body) = gw.chat(USER, "depois").await;
        assert_eq!(status, 502, "{dialect:?}: {body}");
        assert_eq!(
            sim.stats().create_attempts,
            attempts + 1,
            "{dialect:?}: one creation attempt"
        );
        // The old mapping stays until a replacement exists.
        assert_eq!(db.mappings().await, vec![(USER.to_owned(), old)]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_failure_is_502_and_stores_nothing() {
    for dialect in [Dialect::Eai, Dialect::Letta] {
        let (sim, db, gw) = setup(dialect, 10).await;
        sim.configure(SimSettings {
            create_error_rate: 1.0,
            ..SimSettings::default()
        });
        let (status, body) = gw.chat(USER, "oi").await;
        assert_eq!(status, 502, "{body}");
        assert!(
            body["detail"].as_str().unwrap().contains("HTTP 500"),
            "{body}"
        );
        assert!(db.mappings().await.is_empty());
        assert_eq!(sim.stats().messages, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_failure_is_502_and_not_repeated() {
    for dialect in [Dialect::Eai, Dialect::Letta] {
        let (sim, _db, gw) = setup(dialect, 10).await;
        sim.configure(SimSettings {
            send_error_rate: 1.0,
            ..SimSettings::default()
        });
        let (status, body) = gw.chat(USER, "oi").await;
        assert_eq!(status, 502, "{body}");
        let metrics = gw.metrics().await;
        assert_eq!(
            metrics.with_label("eai_gateway_agent_service_calls_total", "operation", "send"),
            [(
                vec![
                    ("operation".to_owned(), "send".to_owned()),
                    ("outcome".to_owned(), "http_5xx".to_owned())
                ],
                1.0
            )],
            "a send is never retried:\n{}",
            metrics.page
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_run_is_502_with_the_upstream_reason() {
    for (dialect, reason) in [
        (Dialect::Eai, "model overloaded"),
        (Dialect::Letta, "llm_api_error"),
    ] {
        let (sim, _db, gw) = setup(dialect, 10).await;
        sim.configure(SimSettings {
            delay_ms: 10,
            run_failure_rate: 1.0,
            ..SimSettings::default()
        });
        let (status, body) = gw.chat(USER, "oi").await;
        assert_eq!(status, 502, "{body}");
        assert!(
            body["detail"].as_str().unwrap().contains(reason),
            "{dialect:?}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_without_data_is_502() {
    for dialect in [Dialect::Eai, Dialect::Letta] {
        let (sim, _db, gw) = setup(dialect, 10).await;
        sim.configure(SimSettings {
            delay_ms: 10,
            empty_completion_rate: 1.0,
            ..SimSettings::default()
        });
        let (status, body) = gw.chat(USER, "oi").await;
        assert_eq!(status, 502, "{dialect:?}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains("without"),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_poll_errors_are_retried_within_the_budget() {
    for dialect in [Dialect::Eai, Dialect::Letta] {
        let (sim, _db, gw) = setup(dialect, 10).await;
        sim.configure(SimSettings {
            delay_ms: 30,
            poll_error_rate: 0.6,
            ..SimSettings::default()
        });
        for i in 0..5 {
            let (status, body) = gw.chat(USER, &format!("m{i}")).await;
            assert_eq!(status, 200, "{dialect:?}: {body}");
        }
        let metrics = gw.metrics().await;
        let failed_polls = metrics.value(
            "eai_gateway_agent_service_calls_total",
            &[("operation", "poll"), ("outcome", "http_5xx")],
        );
        assert!(
            failed_polls.is_some_and(|n| n >= 1.0),
            "no poll failed at all:\n{}",
            metrics.page
        );
        assert_eq!(sim.stats().messages, 5, "each message sent once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_is_503_while_pass_through_works_and_recovers() {
    let (sim, sim_addr) = simulator(10).await;
    let mut db = TestDb::new(DbKind::Postgres);
    // The same server the other tests use, reached through a link this
    // test can cut.
    let mut url = reqwest::Url::parse(&db.url).unwrap();
    let pg: std::net::SocketAddr =
        format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432))
            .parse()
            .unwrap();
    let link = DbLink::start(pg).await;
    url.set_port(Some(link.port)).unwrap();
    db.url = url.to_string();
    let backend = plain_backend().await;
    let mut spec = GatewaySpec::new(Dialect::Eai, &db, sim_addr);
    spec.database_extra = "  acquire_timeout_ms: 500\n".into();
    spec.default_upstream = Some(backend.to_string());
    let gw = GatewayProcess::start(spec).await;
    let client = reqwest::Client::new();

    let (status, body) = gw.chat(USER, "antes").await;
    assert_eq!(status, 200, "{body}");

    link.down();
    let (status, body) = gw.chat(USER, "durante").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["detail"], "database unavailable");
    let r = client
        .get(gw.url(&format!("/eai-gateway/agent/{USER}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let r = client.get(gw.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let r = client.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client.get(gw.url("/pass/through")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "backend ok");

    link.up().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = gw.chat(USER, "depois").await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "no recovery without a restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        sim.stats().agents_created,
        1,
        "the mapping survived the outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_chat_frees_the_user_and_keeps_the_mapping() {
    let (sim, db, gw) = setup(Dialect::Eai, 800).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let gone = impatient
        .post(gw.url("/eai-gateway/chat"))
        .json(&json!({"user_number": USER, "message": "primeira"}))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up");
    let (status, body) = gw.chat(USER, "segunda").await;
    assert_eq!(status, 200, "{body}");
    let agent = answering_agent(&body);
    assert_eq!(db.mappings().await, vec![(USER.to_owned(), agent.clone())]);
    assert_eq!(
        sim.messages_of(&agent),
        vec!["primeira".to_owned(), "segunda".to_owned()]
    );
    assert_eq!(
        sim.stats().overlaps,
        0,
        "the abandoned message was allowed to finish first"
    );
    assert_eq!(sim.stats().agents_created, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_chats_finish_then_exits_zero() {
    let (_sim, sim_addr) = simulator(1_500).await;
    let db = TestDb::new(DbKind::Sqlite);
    let mut spec = GatewaySpec::new(Dialect::Eai, &db, sim_addr);
    spec.extra_yaml = "shutdown:\n  drain_seconds: 20\n".into();
    // The generated config already sets shutdown; replace it.
    spec.replace_shutdown = true;
    let mut gw = GatewayProcess::start(spec).await;
    let url = gw.url("/eai-gateway/chat");
    let chat = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(url)
            .json(&json!({"user_number": USER, "message": "até já"}))
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap_or(Value::Null),
        )
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = gw.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let signalled = Instant::now();
    // Pingora closes its listeners right after the signal; allow it a moment.
    let mut refused = false;
    for _ in 0..40 {
        let fresh = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        if fresh.get(gw.url("/healthz")).send().await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "new connections are refused while draining");

    let (status, body) = chat.await.unwrap();
    assert_eq!(status, 200, "in-flight chat finished: {body}");
    let exit = tokio::task::spawn_blocking(move || {
        let status = gw.child.wait().unwrap();
        (status, gw)
    })
    .await
    .unwrap();
    assert!(exit.0.success(), "{}", exit.0);
    // Exits once drained, well before the 20 s drain bound.
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "{:?}",
        signalled.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letta_terminal_stop_reason_on_a_running_run_is_terminal() {
    let (sim, _db, gw) = setup(Dialect::Letta, 10).await;
    sim.configure(SimSettings {
        delay_ms: 30,
        stuck_running_rate: 1.0,
        ..SimSettings::default()
    });
    let started = Instant::now();
    let (status, body) = gw.chat(USER, "preso").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answer_text(&body), "echo: preso");
    // Without the rule the run would look unfinished until the 180 s budget.
    assert!(started.elapsed() < Duration::from_secs(10));
}
