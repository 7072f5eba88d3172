//! Per-user limits shared through Redis (127.0.0.1:6379): replicas count
//! one user's chats together, and fall back as configured when Redis is
//! away.

use std::time::Duration;

use serde_json::json;

use super::support::*;

const REDIS: &str = "127.0.0.1:6379";

/// A user no earlier run has counted (Redis keeps keys for a minute).
pub fn fresh_user() -> String {
    format!("5521{:09}", fastrand::u32(..1_000_000_000))
}

fn spec<'a>(db: &'a TestDb, sim: std::net::SocketAddr, limits: &str) -> GatewaySpec<'a> {
    let mut spec = GatewaySpec::new(Dialect::Eai, db, sim);
    spec.extra_yaml = format!("limits:\n{limits}");
    spec
}

/// A chat's status, and whether it came with `Retry-After`.
pub async fn chat_status(gw: &GatewayProcess, user: &str) -> (u16, bool) {
    let r = reqwest::Client::new()
        .post(gw.url("/eai-gateway/chat"))
        .json(&json!({"user_number": user, "message": "oi"}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.headers().contains_key("retry-after"))
}

/// Entries Redis holds for the user (the key names the pseudonym, in braces:
/// the hash tag that matters in a cluster is the same key here).
async fn counted_in_redis(user: &str) -> i64 {
    let pseudonym = test_user_rules().parse(user).unwrap().pseudonym();
    let client = redis::Client::open(format!("redis://{REDIS}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("ZCARD")
        .arg(format!("eai-gateway:user-rate:{{{pseudonym}}}"))
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_users_rate() {
    let (_sim, sim_addr) = simulator(5).await;
    let db = TestDb::new(DbKind::Postgres);
    let limits = format!("  user_rate_per_min: 20\n  redis_url: 'redis://{REDIS}'\n");
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(GatewayProcess::start(spec(&db, sim_addr, &limits)).await);
    }
    let user = fresh_user();
    let mut answered = 0;
    for i in 0..60 {
        match chat_status(&replicas[i % 3], &user).await {
            (200, _) => answered += 1,
            (429, retry_after) => assert!(retry_after, "429 without Retry-After"),
            other => panic!("chat {i}: {other:?}"),
        }
    }
    assert_eq!(answered, 20, "one limit across three replicas");
    assert_eq!(counted_in_redis(&user).await, 20);
    // No phone number in the key names.
    let client = redis::Client::open(format!("redis://{REDIS}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{}*", &user[4..]))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_fallback_does_what_it_says() {
    let (_sim, sim_addr) = simulator(5).await;
    let db = TestDb::new(DbKind::Sqlite);
    let closed = format!("127.0.0.1:{}", free_port());
    for (fallback, expected) in [
        ("local", [200, 200, 429, 429]),
        ("fail_open", [200, 200, 200, 200]),
        ("fail_closed", [503, 503, 503, 503]),
    ] {
        let limits = format!(
            "  user_rate_per_min: 2\n  redis_url: 'redis://{closed}'\n  redis_fallback: {fallback}\n"
        );
        let gw = GatewayProcess::start(spec(&db, sim_addr, &limits)).await;
        let user = fresh_user();
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(chat_status(&gw, &user).await.0);
        }
        assert_eq!(got, expected, "{fallback}");
        let fallbacks = gw
            .metrics()
            .await
            .value("eai_gateway_redis_fallbacks_total", &[]);
        assert_eq!(fallbacks, Some(4.0), "{fallback}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_coming_back_needs_no_restart() {
    let (_sim, sim_addr) = simulator(5).await;
    let db = TestDb::new(DbKind::Sqlite);
    let link = DbLink::start(REDIS.parse().unwrap()).await;
    let limits = format!(
        "  user_rate_per_min: 10\n  redis_url: 'redis://127.0.0.1:{}'\n",
        link.port
    );
    let gw = GatewayProcess::start(spec(&db, sim_addr, &limits)).await;
    let user = fresh_user();
    assert_eq!(chat_status(&gw, &user).await.0, 200);
    assert_eq!(counted_in_redis(&user).await, 1);
    link.down();
    assert_eq!(
        chat_status(&gw, &user).await.0,
        200,
        "counted locally meanwhile"
    );
    let fallbacks = |m: Metrics| m.value("eai_gateway_redis_fallbacks_total", &[]);
    assert_eq!(fallbacks(gw.metrics().await), Some(1.0));
    link.up().await;
    let mut shared_again = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(chat_status(&gw, &user).await.0, 200);
        if counted_in_redis(&user).await >= 2 {
            shared_again = true;
            break;
        }
    }
    assert!(shared_again, "the gateway never used Redis again");
}
