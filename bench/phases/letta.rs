//! Letta dialect: polling (default) vs synchronous delivery.

use std::time::Duration;

use crate::load::{added_latency, open_loop, user, varied_chat, warm_up};
use crate::procs::start_gateway;
use crate::{Ctx, Rows};

pub async fn run(cx: &Ctx<'_>, rows: &mut Rows) {
    for (phase, delivery) in [(4, "poll"), (5, "sync")] {
        let lg = start_gateway(
            if delivery == "poll" {
                "letta-poll"
            } else {
                "letta-sync"
            },
            "letta",
            delivery,
            cx.sim,
        )
        .await;
        let users: Vec<String> = (0..300).map(|i| user(phase, i)).collect();
        warm_up(cx.client, &lg, &users).await;
        let url = lg.chat_url();
        let samples = open_loop(
            cx.client,
            &url,
            200.0,
            Duration::from_secs(cx.phase_secs),
            |i| varied_chat(&users[i % users.len()]),
        )
        .await;
        let a = added_latency(&samples);
        rows.add(
            &format!("chat added latency, letta/{delivery}, 200 chats/s (ms)"),
            a.summary(),
            "—",
            "—",
        );
    }
}
