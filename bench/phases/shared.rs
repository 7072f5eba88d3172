//! What sharing per-user limits across replicas costs: chat added latency
//! at 200 chats/s with the per-user rate counted in this process, then in
//! Redis (one script call per chat). Both gateways run on PostgreSQL, so
//! both also listen for mapping-cache invalidations (NOTIFY).

use std::time::Duration;

use crate::load::{added_latency, open_loop, user, varied_chat, warm_up};
use crate::procs::start_gateway_with;
use crate::{Ctx, Rows};

const REDIS_URL: &str = "redis://127.0.0.1:6379";

pub async fn run(cx: &Ctx<'_>, rows: &mut Rows) {
    let local = "{user_rate_per_min: 100000, user_queue_max: 0, max_inflight_chats: 0}".to_owned();
    let redis = format!(
        "{{user_rate_per_min: 100000, user_queue_max: 0, max_inflight_chats: 0, redis_url: '{REDIS_URL}'}}"
    );
    for (phase, name, what, limits) in [
        (8, "limits-local", "per-user rate in process", local),
        (9, "limits-redis", "per-user rate in Redis", redis),
    ] {
        let gw = start_gateway_with(name, "eai", "poll", cx.sim, &limits).await;
        let users: Vec<String> = (0..300).map(|i| user(phase, i)).collect();
        warm_up(cx.client, &gw, &users).await;
        let samples = open_loop(
            cx.client,
            &gw.chat_url(),
            200.0,
            Duration::from_secs(cx.phase_secs),
            |i| varied_chat(&users[i % users.len()]),
        )
        .await;
        rows.add(
            &format!("chat added latency, eai/poll, 200 chats/s, {what} (ms)"),
            added_latency(&samples).summary(),
            "—",
            "—",
        );
    }
}
