//! Chat added latency at 300 ± 100 ms processing, eai dialect.

use std::time::Duration;

use crate::load::{added_latency, open_loop, user, varied_chat, warm_up};
use crate::{Ctx, Rows, verdict};

pub async fn run(cx: &Ctx<'_>, rows: &mut Rows) {
    let chat_url = cx.gw.chat_url();
    for (phase, rate) in [(1, 50.0), (2, 200.0), (3, 500.0)] {
        let pool = ((rate * 1.5) as usize).max(100);
        let users: Vec<String> = (0..pool).map(|i| user(phase, i)).collect();
        warm_up(cx.client, cx.gw, &users).await;
        let samples = open_loop(
            cx.client,
            &chat_url,
            rate,
            Duration::from_secs(cx.phase_secs),
            |i| varied_chat(&users[i % users.len()]),
        )
        .await;
        let a = added_latency(&samples);
        let target = if rate == 200.0 {
            "p50 ≤ 60, p99 ≤ 150"
        } else {
            "—"
        };
        let met = if rate == 200.0 {
            verdict(a.p50 <= 60.0 && a.p99 <= 150.0 && a.errors == 0)
        } else {
            "—"
        };
        rows.add(
            &format!("chat added latency, eai/poll, {rate:.0} chats/s (ms)"),
            a.summary(),
            target,
            met,
        );
    }
}
