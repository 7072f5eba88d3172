//! One agent per user and one message at a time per agent, across replicas.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::json;

use super::support::*;

/// Chat limits high enough for storms; the gateways share `db`.
fn replica<'a>(db: &'a TestDb, sim: std::net::SocketAddr) -> GatewaySpec<'a> {
    let mut spec = GatewaySpec::new(Dialect::Eai, db, sim);
    spec.database_extra = "  max_connections: 32\n".to_owned();
    // Storms are the point here: raise the abuse limits above the burst.
    spec.extra_yaml = "limits:\n  user_rate_per_min: 100000\n  user_queue_max: 1000\n  max_inflight_chats: 2000\n".to_owned();
    spec
}

/// Fires `messages` (user, text) at the two replicas alternately, all at once.
async fn storm(
    replicas: &[&GatewayProcess; 2],
    messages: Vec<(String, String)>,
) -> Vec<(String, u16, serde_json::Value)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let calls = messages.into_iter().enumerate().map(|(i, (user, text))| {
        let gw = replicas[i % 2];
        let client = client.clone();
        async move {
            let (status, body) =
                post_chat(&client, gw, json!({"user_number": user, "message": text})).await;
            (user, status, body)
        }
    });
    futures_util::future::join_all(calls).await
}

async fn one_agent_per_user(kind: DbKind, users: usize, per_user: usize) {
    let (sim, sim_addr) = simulator(5).await;
    let db = TestDb::new(kind);
    let a = GatewayProcess::start(replica(&db, sim_addr)).await;
    let b = GatewayProcess::start(replica(&db, sim_addr)).await;
    let numbers: Vec<String> = (0..users)
        .map(|u| format!("55219{:08}", 10_000 + u))
        .collect();
    let mut messages = Vec::new();
    for i in 0..per_user {
        for n in &numbers {
            messages.push((n.clone(), format!("m{i}")));
        }
    }
    let results = storm(&[&a, &b], messages).await;

    let mapped: BTreeMap<String, String> = db.mappings().await.into_iter().collect();
    assert_eq!(mapped.len(), users, "one mapping per user");
    for (user, status, body) in &results {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(
            &answering_agent(body),
            &mapped[user],
            "answered by the mapped agent"
        );
    }
    // Surplus agents from lost races are deleted upstream in the background.
    let settled = eventually(Duration::from_secs(10), || {
        numbers.iter().all(|n| sim.live_agents_of(n).len() == 1)
    })
    .await;
    assert!(settled, "leaked agents: {:?}", sim.stats());
    for n in &numbers {
        assert_eq!(sim.live_agents_of(n), vec![mapped[n].clone()]);
        assert_eq!(
            sim.messages_of(&mapped[n]).len(),
            per_user,
            "every message delivered once"
        );
    }
    let stats = sim.stats();
    assert_eq!(stats.overlaps, 0, "{stats:?}");
    assert_eq!(
        stats.agents_created - stats.agents_deleted,
        users as u64,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_first_messages_one_user_two_replicas_postgres() {
    one_agent_per_user(DbKind::Postgres, 1, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_users_twenty_messages_each_two_replicas_postgres() {
    one_agent_per_user(DbKind::Postgres, 50, 20).await;
}

/// SQLite mode: the same guarantees for processes sharing the file on one host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_first_messages_one_user_two_replicas_sqlite() {
    one_agent_per_user(DbKind::Sqlite, 1, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_one_user_arrive_in_order() {
    let (sim, sim_addr) = simulator(200).await;
    let db = TestDb::new(DbKind::Sqlite);
    let gw = GatewayProcess::start(replica(&db, sim_addr)).await;
    let client = reqwest::Client::new();
    let user = "5521955550001";
    let mut calls = Vec::new();
    for i in 0..10 {
        let (client, url) = (client.clone(), gw.url("/eai-gateway/chat"));
        calls.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"user_number": user, "message": format!("m{i}")}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
        // Arrival order is only defined for requests that arrive apart; 40 ms
        // apart they queue behind the first 200 ms answer in that order.
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap(), 200);
    }
    let agent = db.mappings().await[0].1.clone();
    let expected: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    assert_eq!(sim.messages_of(&agent), expected);
    assert_eq!(sim.stats().overlaps, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_users_do_not_wait_on_each_other() {
    let (sim, sim_addr) = simulator(500).await;
    let db = TestDb::new(DbKind::Postgres);
    let gw = GatewayProcess::start(replica(&db, sim_addr)).await;
    let numbers: Vec<String> = (0..100).map(|u| format!("55218{:08}", u)).collect();
    let started = Instant::now();
    let client = reqwest::Client::new();
    let calls = numbers
        .iter()
        .map(|n| post_chat(&client, &gw, json!({"user_number": n, "message": "oi"})));
    let results = futures_util::future::join_all(calls).await;
    let elapsed = started.elapsed();
    assert!(results.iter().all(|(s, _)| *s == 200));
    let agents: BTreeSet<String> = results.iter().map(|(_, b)| answering_agent(b)).collect();
    assert_eq!(agents.len(), 100);
    assert_eq!(sim.stats().overlaps, 0);
    // Serialised, 100 × 500 ms would take 50 s; in parallel about one
    // processing time plus polling granularity. The bound only separates those.
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

/// Two replicas with the given mapping-cache TTL; returns (agent before the
/// DELETE on replica B, agent replica A answers with right after it, A's
/// metrics). With PostgreSQL, A is given up to 1 s to hear of the DELETE.
async fn delete_seen_by_other_replica(kind: DbKind, ttl_seconds: u64) -> (String, String, Metrics) {
    let (_sim, sim_addr) = simulator(5).await;
    let db = TestDb::new(kind);
    let spec = |db| {
        let mut s = replica(db, sim_addr);
        s.extra_yaml += &format!("agents:\n  cache_ttl_seconds: {ttl_seconds}\n");
        s
    };
    let a = GatewayProcess::start(spec(&db)).await;
    let b = GatewayProcess::start(spec(&db)).await;
    let user = "5521966660001";
    let (_, first) = a.chat(user, "um").await;
    let (_, again) = a.chat(user, "dois").await;
    assert_eq!(answering_agent(&first), answering_agent(&again));
    assert_eq!(b.forget(user).await, 204);
    if kind == DbKind::Postgres && ttl_seconds > 0 {
        let heard = invalidations_reach(&a, 1.0).await;
        assert!(heard, "replica A did not hear of the DELETE within 1 s");
    }
    let (status, after) = a.chat(user, "três").await;
    assert_eq!(status, 200, "{after}");
    (
        answering_agent(&first),
        answering_agent(&after),
        a.metrics().await,
    )
}

/// Whether `gw` has received `count` mapping invalidations within 1 s.
async fn invalidations_reach(gw: &GatewayProcess, count: f64) -> bool {
    for _ in 0..20 {
        let metrics = gw.metrics().await;
        if metrics.value("eai_gateway_mapping_invalidations_total", &[]) >= Some(count) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_on_one_replica_reaches_the_others_cache_over_notify() {
    let (before, after, metrics) = delete_seen_by_other_replica(DbKind::Postgres, 30).await;
    assert_ne!(before, after, "replica A used the deleted mapping");
    let cache = "eai_gateway_mapping_cache_total";
    // "dois" hit; "três" missed after the invalidation, like "um".
    assert_eq!(
        metrics.value(cache, &[("result", "hit")]),
        Some(1.0),
        "{}",
        metrics.page
    );
    assert_eq!(
        metrics.value(cache, &[("result", "miss")]),
        Some(2.0),
        "{}",
        metrics.page
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sqlite_another_process_may_use_a_deleted_mapping_until_the_cache_ttl() {
    let (before, after, metrics) = delete_seen_by_other_replica(DbKind::Sqlite, 30).await;
    // Documented bound without notifications: agents.cache_ttl_seconds.
    assert_eq!(before, after);
    assert_eq!(
        metrics.value("eai_gateway_mapping_cache_total", &[("result", "hit")]),
        Some(2.0),
        "{}",
        metrics.page
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cache_off_a_delete_is_seen_at_once_everywhere() {
    let (before, after, _) = delete_seen_by_other_replica(DbKind::Postgres, 0).await;
    assert_ne!(before, after);
}

/// The listening connection is cut: the replica keeps serving, reconnects,
/// clears its cache, and hears the next change again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_notification_connection_is_re_established() {
    let (_sim, sim_addr) = simulator(5).await;
    let db = TestDb::new(DbKind::Postgres);
    let a = GatewayProcess::start(replica(&db, sim_addr)).await;
    let b = GatewayProcess::start(replica(&db, sim_addr)).await;
    let user = "5521966660003";
    let (_, first) = a.chat(user, "um").await;
    let schema = db.schema.clone().unwrap_or_default();
    let cut = db
        .execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query = 'LISTEN \"eai_gateway_{schema}\"'"
        ))
        .await;
    assert_eq!(cut, 2, "one listener per replica");
    // Served meanwhile, from the cache or the store.
    let (status, body) = a.chat(user, "dois").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answering_agent(&body), answering_agent(&first));
    let mut back = false;
    for _ in 0..100 {
        let m = a.metrics().await;
        if m.value("eai_gateway_mapping_listener_reconnects_total", &[]) == Some(1.0) {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "the listener did not reconnect");
    assert_eq!(b.forget(user).await, 204);
    assert!(invalidations_reach(&a, 1.0).await);
    let (status, after) = a.chat(user, "três").await;
    assert_eq!(status, 200, "{after}");
    assert_ne!(answering_agent(&after), answering_agent(&first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_invalidates_the_local_cache_immediately() {
    let (_sim, sim_addr) = simulator(5).await;
    let db = TestDb::new(DbKind::Sqlite);
    let gw = GatewayProcess::start(replica(&db, sim_addr)).await;
    let user = "5521966660002";
    let (_, first) = gw.chat(user, "um").await;
    assert_eq!(gw.forget(user).await, 204);
    let (status, second) = gw.chat(user, "dois").await;
    assert_eq!(status, 200);
    assert_ne!(answering_agent(&first), answering_agent(&second));
}

/// One statement renews every lease of one process and no other's.
async fn leases_renew_per_process(kind: DbKind) {
    use eai_gateway::ids::{UserNumber, UserRules};
    use eai_gateway::mapping::{LazyStore, LeaseStore};

    let db = TestDb::new(kind);
    let cfg = db.settings();
    eai_gateway::mapping::migrate(&cfg).await.expect("migrate");
    let store = LazyStore::new(&cfg);
    let rules = UserRules::standard();
    let short = Duration::from_millis(800);
    let long = Duration::from_secs(60);
    let users: Vec<UserNumber> = ["5521000000001", "5521000000002", "5521000000003"]
        .iter()
        .map(|u| rules.parse(u).expect("user"))
        .collect();
    assert!(store.try_lease(&users[0], "aa11:1", short).await.unwrap());
    assert!(store.try_lease(&users[1], "aa11:2", short).await.unwrap());
    assert!(store.try_lease(&users[2], "aa1:1", short).await.unwrap());
    assert_eq!(store.renew_leases("aa11:", long).await.unwrap(), 2);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Renewed leases are still held; the other process's lease expired.
    assert!(!store.try_lease(&users[0], "bb:1", long).await.unwrap());
    assert!(!store.try_lease(&users[1], "bb:2", long).await.unwrap());
    assert!(store.try_lease(&users[2], "bb:3", long).await.unwrap());
    // A lease taken over by another holder is no longer renewed by the old one.
    assert_eq!(store.renew_leases("aa1:", long).await.unwrap(), 0);
}

#[tokio::test]
async fn leases_renew_per_process_postgres() {
    leases_renew_per_process(DbKind::Postgres).await;
}

#[tokio::test]
async fn leases_renew_per_process_sqlite() {
    leases_renew_per_process(DbKind::Sqlite).await;
}

/// With one database slot and one agent-service slot, a burst of 80 chats
/// (40 new users) queues for them and every chat is still answered: no step
/// holds a slot while it waits for another, and the agent service never sees
/// two calls at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_database_slot_and_one_agent_service_slot_serve_a_burst() {
    let db = TestDb::new(DbKind::Postgres);
    let (sim, sim_addr) = simulator(30).await;
    let mut spec = replica(&db, sim_addr);
    spec.database_extra = "  max_connections: 1\n".to_owned();
    spec.agent_extra = "  max_concurrent_calls: 1\n".to_owned();
    let gw = GatewayProcess::start(spec).await;
    let client = reqwest::Client::new();
    let calls = (0..80).map(|i| {
        let (client, gw) = (client.clone(), &gw);
        async move {
            let user = format!("55219880{:05}", i % 40);
            post_chat(
                &client,
                gw,
                json!({"user_number": user, "message": format!("m{i}")}),
            )
            .await
        }
    });
    let results = futures_util::future::join_all(calls).await;
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}");
    }
    assert_eq!(db.mappings().await.len(), 40);
    assert_eq!(
        sim.stats().peak_in_flight,
        1,
        "the agent service saw more than one call at once"
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics
            .with_label(
                "eai_gateway_agent_service_calls_total",
                "outcome",
                "queue_timeout"
            )
            .is_empty(),
        "no call should have timed out waiting for its slot"
    );
}
