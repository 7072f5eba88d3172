//! Letta dialect: polling (default) vs synchronous delivery.

use crate::load::steady_latency;
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
        let a = steady_latency(cx, &lg, phase, 300, 200.0).await;
        rows.add(
            &format!("chat added latency, letta/{delivery}, 200 chats/s (ms)"),
            a.summary(),
            "—",
            "—",
        );
    }
}
