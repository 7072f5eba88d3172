//! What sharing per-user limits across replicas costs: chat added latency
//! at 200 chats/s with the per-user rate counted in this process, then in
//! Redis (one script call per chat). Both gateways run on PostgreSQL, so
//! both also listen for mapping-cache invalidations (NOTIFY).

use crate::load::steady_latency;
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
        let latency = steady_latency(cx, &gw, phase, 300, 200.0).await;
        rows.add(
            &format!("chat added latency, eai/poll, 200 chats/s, {what} (ms)"),
            latency.summary(),
            "—",
            "—",
        );
    }
}
