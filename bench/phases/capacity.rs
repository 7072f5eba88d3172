//! Capacity: 0 ms processing, highest rate whose p99 stays under 50 ms.

use std::time::Duration;

use crate::load::{chat_body, millis, open_loop, percentile, user, warm_up};
use crate::{Ctx, Rows};

pub async fn run(cx: &Ctx<'_>, rows: &mut Rows) {
    let (client, gw) = (cx.client, cx.gw);
    let chat_url = gw.chat_url();
    let users: Vec<String> = (0..2000).map(|i| user(6, i)).collect();
    warm_up(client, gw, &users).await;
    let mut best: Option<(f64, f64, f64)> = None;
    for rate in [
        250.0, 500.0, 750.0, 1000.0, 1250.0, 1500.0, 2000.0, 2500.0, 3000.0,
    ] {
        let cpu0 = gw.proc.cpu_secs();
        let secs = if cx.quick { 3 } else { 5 };
        let samples = open_loop(client, &chat_url, rate, Duration::from_secs(secs), |i| {
            (chat_body(&users[i % users.len()], 0), Duration::ZERO)
        })
        .await;
        let cpu = gw.proc.cpu_secs() - cpu0;
        let lat = millis(
            &samples
                .iter()
                .filter(|s| s.ok)
                .map(|s| s.latency)
                .collect::<Vec<_>>(),
        );
        let p99 = percentile(&lat, 99.0);
        let errors = samples.iter().filter(|s| !s.ok).count();
        eprintln!(
            "capacity step {rate:.0}/s: p99 {p99:.1} ms, errors {errors}, gateway cpu {cpu:.2} s"
        );
        if p99 >= 50.0 || errors > 0 {
            break;
        }
        best = Some((rate, p99, cpu / samples.len() as f64 * 1000.0));
    }
    match best {
        Some((rate, p99, cpu)) => {
            rows.add(
                "chat capacity, 0 ms processing (p99 < 50 ms)",
                format!("{rate:.0} chats/s (p99 {p99:.1} ms)"),
                "—",
                "—",
            );
            rows.add(
                "gateway CPU per 1,000 chats at that rate",
                format!("{cpu:.3} CPU s"),
                "—",
                "—",
            );
        }
        None => rows.add(
            "chat capacity, 0 ms processing (p99 < 50 ms)",
            "below 250 chats/s".into(),
            "—",
            "—",
        ),
    }
}
