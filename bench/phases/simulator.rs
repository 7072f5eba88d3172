//! The simulator alone, so it is known not to be the bottleneck.

use std::time::Duration;

use serde_json::{Value, json};

use crate::load::closed_loop;
use crate::{Ctx, Rows};

pub async fn run(cx: &Ctx<'_>, rows: &mut Rows) {
    let (client, sim_addr) = (cx.client, cx.sim);
    // A finished message's poll: the gateway's most frequent upstream call.
    let post = |path: &str, body: Value| {
        let req = client.post(format!("http://{sim_addr}{path}")).json(&body);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let agent = post(
        "/api/v1/agent/create",
        json!({"user_number": "5599000000000"}),
    )
    .await;
    let sent = post(
        "/api/v1/message/webhook/agent",
        json!({"agent_id": agent["agent_id"], "message": "[delay=0] probe"}),
    )
    .await;
    let probe = format!(
        "http://{sim_addr}/api/v1/message/response?message_id={}",
        sent["message_id"].as_str().unwrap_or_default()
    );
    let (sim_rps, _) = closed_loop(client, &probe, 32, Duration::from_secs(3)).await;
    rows.add(
        "simulator alone (poll endpoint, 32 conns)",
        format!("{sim_rps:.0} req/s"),
        "≫ gateway's upstream rate",
        "—",
    );
}
