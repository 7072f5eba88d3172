//! Memory: a fresh gateway idle, then with 10,000 chats in flight.

use std::time::{Duration, Instant};

use crate::load::{chat_body, open_loop, user};
use crate::procs::{proc_rss_mb, proc_rss_split_mb, start_gateway};
use crate::{Ctx, Rows, verdict};

pub async fn run(cx: &Ctx<'_>, rows: &mut Rows) {
    let mg = start_gateway("memory", "eai", "poll", cx.sim).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fresh_idle = mg.proc.rss_mb();
    let url = mg.chat_url();
    let total = 10_000;
    let launch_rate = 1_000.0;
    let sampler = {
        let pid = mg.proc.pid();
        tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            let mut split = (0.0, 0.0);
            let end = Instant::now() + Duration::from_secs(45);
            while Instant::now() < end {
                if let Some(mb) = proc_rss_mb(pid) {
                    if mb > peak {
                        peak = mb;
                        split = proc_rss_split_mb(pid).unwrap_or_default();
                    }
                    if std::env::var_os("BENCH_TRACE_RSS").is_some() {
                        eprintln!("rss {mb:.1} MB");
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (peak, split)
        })
    };
    let samples = open_loop(
        cx.client,
        &url,
        launch_rate,
        Duration::from_secs_f64(total as f64 / launch_rate),
        |i| (chat_body(&user(10, i), 30_000), Duration::from_secs(30)),
    )
    .await;
    let (peak, (anon, file)) = sampler.await.unwrap_or_default();
    let ok = samples.iter().filter(|s| s.ok).count();
    let mut failures = std::collections::BTreeMap::<&str, usize>::new();
    for f in samples.iter().filter_map(|s| s.failure.as_deref()) {
        *failures.entry(f).or_default() += 1;
    }
    if !failures.is_empty() {
        eprintln!("memory phase failures: {failures:?}");
    }
    rows.add(
        "gateway RSS, idle (fresh instance)",
        format!("{fresh_idle:.1} MB"),
        "—",
        "—",
    );
    rows.add(
        "gateway RSS, 10,000 chats in flight (30 s processing)",
        format!(
            "{peak:.1} MB peak: {anon:.1} anon + {file:.1} file-backed ({ok}/{total} answered 200)"
        ),
        "< 150 MB",
        verdict(peak < 150.0 && ok == total),
    );
    drop(mg);
}
