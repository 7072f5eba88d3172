//! A replica that dies mid-chat costs its user seconds, not the lease TTL:
//! the holder records the message it sent on the lease, and a replica
//! waiting for the turn follows that message and takes over once it has
//! ended. A holder that is alive but cut from the database is never
//! overtaken while its message runs.

use std::time::{Duration, Instant};

use serde_json::json;

use super::support::*;

/// Starts `message` on `gw` in the background and waits until the agent
/// service has it (plus a moment for its id to reach the lease).
async fn start_message(
    sim: &eai_gateway::sim::Simulator,
    gw: &GatewayProcess,
    user: &str,
    message: &str,
) {
    let before = sim.stats().messages;
    let url = gw.url("/eai-gateway/chat");
    let body = json!({"user_number": user, "message": message});
    tokio::spawn(async move { reqwest::Client::new().post(url).json(&body).send().await });
    assert!(
        eventually(Duration::from_secs(5), || sim.stats().messages > before).await,
        "the message never reached the agent service"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
}

async fn the_next_message_follows_a_killed_holder(dialect: Dialect) {
    let (sim, sim_addr) = simulator(30).await;
    let db = TestDb::new(DbKind::Postgres);
    let mut a = GatewayProcess::start(GatewaySpec::new(dialect, &db, sim_addr)).await;
    let b = GatewayProcess::start(GatewaySpec::new(dialect, &db, sim_addr)).await;
    let user = "5521955550001";
    let (code, body) = b.chat(user, "hello").await;
    assert_eq!(code, 200, "{body}");

    start_message(&sim, &a, user, "[delay=5000] long").await;
    a.child.kill().expect("kill -9");
    let killed = Instant::now();
    let (code, body) = b.chat(user, "after").await;
    let took = killed.elapsed();
    assert_eq!(code, 200, "{body}");
    assert_eq!(answer_text(&body), "echo: after");
    // The long message ends 4.5 s after the kill; the next takes its 30 ms.
    assert!(
        took < Duration::from_secs(12),
        "answered {took:?} after the kill"
    );
    assert_eq!(sim.stats().overlaps, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_message_follows_a_killed_holder_eai() {
    the_next_message_follows_a_killed_holder(Dialect::Eai).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_message_follows_a_killed_holder_letta() {
    the_next_message_follows_a_killed_holder(Dialect::Letta).await;
}

/// The holder's database is cut for longer than the lease TTL while its
/// message runs: its lease expires unrenewed, and still the other replica
/// waits for the message to end before it sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_from_the_database_is_not_overtaken() {
    let _heavy = HEAVY.lock().await;
    let (sim, sim_addr) = simulator(30).await;
    let db = TestDb::new(DbKind::Postgres);
    let mut url = reqwest::Url::parse(&db.url).expect("pg url");
    let pg: std::net::SocketAddr = format!(
        "{}:{}",
        url.host_str().expect("host"),
        url.port().unwrap_or(5432)
    )
    .parse()
    .expect("pg addr");
    let link = DbLink::start(pg).await;
    url.set_port(Some(link.port)).expect("port");
    let mut spec = GatewaySpec::new(Dialect::Eai, &db, sim_addr);
    spec.env.push(("DATABASE_URL", url.to_string()));
    spec.database_extra = "  acquire_timeout_ms: 500\n".into();
    let a = GatewayProcess::start(spec).await;
    let b = GatewayProcess::start(GatewaySpec::new(Dialect::Eai, &db, sim_addr)).await;
    let user = "5521955550002";
    let (code, body) = b.chat(user, "hello").await;
    assert_eq!(code, 200, "{body}");

    // Longer than the 30 s lease, so that it expires while A is cut off.
    start_message(&sim, &a, user, "[delay=38000] long").await;
    link.down();
    let (code, body) = b.chat(user, "after").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(sim.stats().overlaps, 0, "B sent while A's message ran");
    link.up().await;
}
