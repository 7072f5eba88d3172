//! Many replicas on the infrastructure operators run: four gateways whose
//! pools go through one PgBouncer in transaction mode (their LISTEN and
//! migrations direct), their per-user rate counted in a three-node Redis
//! Cluster, one database. A thousand users write at once; a quarter of
//! them send their first two messages to two replicas at the same moment.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;

use super::pgbouncer::{PgBouncer, through};
use super::redis_cluster::RedisCluster;
use super::support::*;

const USERS: usize = 1000;
const PER_USER: usize = 5;
/// Users writing at once (each with one or two chats in flight).
const AT_ONCE: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_through_pgbouncer_and_a_redis_cluster_act_as_one() {
    let bouncer = PgBouncer::start(16).await;
    let cluster = RedisCluster::start().await;
    let (sim, sim_addr) = simulator(5).await;
    let db = TestDb::new(DbKind::Postgres);
    let mut replicas = Vec::new();
    for _ in 0..4 {
        let mut spec = through(&db, sim_addr, &bouncer, "live", Some(&db.url));
        // The default rate (20 a minute) stays above a user's five chats:
        // every chat is counted in the cluster and none is refused.
        spec.extra_yaml = "limits:\n  max_inflight_chats: 2000\n".to_owned();
        spec.env
            .push(("EAI_GATEWAY_REDIS_CLUSTER_URLS", cluster.urls()));
        replicas.push(GatewayProcess::start(spec).await);
    }
    let replicas = &replicas;
    let client = reqwest::Client::new();
    let numbers: Vec<String> = (0..USERS).map(|u| format!("55213{:08}", u)).collect();

    // Each user's chats in order, one replica after another; a quarter of
    // the users send their first two at once, to two replicas.
    let results: Vec<(String, Vec<(u16, serde_json::Value)>)> =
        futures_util::stream::iter(numbers.iter().enumerate())
            .map(|(u, user)| {
                let client = client.clone();
                async move {
                    let chat = |i: usize| {
                        let gw = &replicas[(u + i) % replicas.len()];
                        post_chat(
                            &client,
                            gw,
                            json!({"user_number": user, "message": format!("m{i}")}),
                        )
                    };
                    let mut answers = Vec::new();
                    let mut next = 0;
                    if u % 4 == 0 {
                        let (a, b) = futures_util::join!(chat(0), chat(1));
                        answers.extend([a, b]);
                        next = 2;
                    }
                    for i in next..PER_USER {
                        answers.push(chat(i).await);
                    }
                    (user.clone(), answers)
                }
            })
            .buffer_unordered(AT_ONCE)
            .collect()
            .await;

    let mapped: BTreeMap<String, String> = db.mappings().await.into_iter().collect();
    assert_eq!(mapped.len(), USERS, "one mapping per user");
    let mut failed = Vec::new();
    for (user, answers) in &results {
        for (status, body) in answers {
            if *status != 200 {
                failed.push(format!("{status} {body}"));
            } else {
                assert_eq!(answering_agent(body), mapped[user], "the mapped agent");
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} chats failed, e.g. {:?}",
        failed.len(),
        USERS * PER_USER,
        &failed[..failed.len().min(5)]
    );
    // Surplus agents of lost races are deleted in the background.
    let settled = eventually(Duration::from_secs(20), || {
        numbers.iter().all(|n| sim.live_agents_of(n).len() == 1)
    })
    .await;
    assert!(settled, "leaked agents: {:?}", sim.stats());
    let expected: Vec<String> = (0..PER_USER).map(|i| format!("m{i}")).collect();
    for n in &numbers {
        assert_eq!(sim.live_agents_of(n), [mapped[n].clone()], "{n}");
        let mut got = sim.messages_of(&mapped[n]);
        got.sort();
        assert_eq!(got, expected, "every chat of {n} delivered once");
    }
    let stats = sim.stats();
    assert_eq!(stats.overlaps, 0, "{stats:?}");
    assert_eq!(
        stats.agents_created - stats.agents_deleted,
        USERS as u64,
        "{stats:?}"
    );
    // The rate was counted in the cluster, chat for chat.
    for n in numbers.iter().step_by(97) {
        assert_eq!(cluster.counted(n).await, PER_USER as i64, "{n}");
    }
}
