//! What span export costs: two gateways, one exporting every span (100 %
//! sampling) to an OTLP/HTTP receiver in this process, one with export off,
//! measured side by side: pass-through CPU per request in alternating
//! half-second turns (as the pass-through phase does), then chat added
//! latency at 200 chats/s on each.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::load::{closed_loop, millis, percentile, steady_latency};
use crate::procs::{Gateway, start_gateway_extra, tree_cpu_secs};
use crate::{Ctx, Rows};

pub async fn run(cx: &Ctx<'_>, rows: &mut Rows) {
    let (collector, received) = collector().await;
    let on = format!(
        "tracing: {{otlp_endpoint: 'http://{collector}', sampler: always_on, queue_spans: 65536}}\n"
    );
    let off = start_gateway_extra("trace-off", cx.sim, "").await;
    let on = start_gateway_extra("trace-on", cx.sim, &on).await;

    let path = "/sim/payload?bytes=1024";
    let window = Duration::from_millis(500);
    let turns = if cx.quick { 10 } else { 20 };
    // (requests, CPU seconds, latencies) of off, then on.
    let mut totals: [(f64, f64, Vec<Duration>); 2] = Default::default();
    for turn in 0..turns {
        for i in 0..2 {
            let which = (i + turn) % 2;
            let gw: &Gateway = if which == 0 { &off } else { &on };
            let cpu0 = tree_cpu_secs(gw.proc.pid());
            let (rps, lat) =
                closed_loop(cx.client, &format!("http://{}{path}", gw.addr), 64, window).await;
            totals[which].0 += rps * window.as_secs_f64();
            totals[which].1 += tree_cpu_secs(gw.proc.pid()) - cpu0;
            totals[which].2.extend(lat);
        }
    }
    let cpu_us = |t: &(f64, f64, Vec<Duration>)| t.1 * 1e6 / t.0.max(1.0);
    let p99 = |t: &(f64, f64, Vec<Duration>)| percentile(&millis(&t.2), 99.0);
    let (off_t, on_t) = (&totals[0], &totals[1]);
    rows.add(
        "pass-through 1 KiB GET, span export off / on (100 % sampled)",
        format!(
            "{:.0} / {:.0} µs CPU per request ({:.2}×), p99 {:.2} / {:.2} ms",
            cpu_us(off_t),
            cpu_us(on_t),
            cpu_us(on_t) / cpu_us(off_t).max(f64::MIN_POSITIVE),
            p99(off_t),
            p99(on_t),
        ),
        "—",
        "—",
    );
    for (phase, gw, what) in [(12, &off, "off"), (13, &on, "on (100 % sampled)")] {
        let latency = steady_latency(cx, gw, phase, 300, 200.0).await;
        rows.add(
            &format!("chat added latency, eai/poll, 200 chats/s, span export {what} (ms)"),
            latency.summary(),
            "—",
            "—",
        );
    }
    rows.add(
        "OTLP export requests received from the exporting gateway",
        format!("{} (batches of spans)", received.load(Ordering::Relaxed)),
        "—",
        "—",
    );
}

/// An OTLP/HTTP receiver that accepts every export and counts them.
async fn collector() -> (SocketAddr, Arc<AtomicU64>) {
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |_body: axum::body::Bytes| {
            let count = count.clone();
            async move {
                count.fetch_add(1, Ordering::Relaxed);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, received)
}
