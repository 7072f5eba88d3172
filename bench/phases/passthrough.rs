//! Pass-through of a 1 KiB GET: direct, nginx, bare pingora-proxy and the
//! gateway, the three proxies taking half-second turns (the machine is
//! shared and its speed drifts) and each one's turns added up. CPU per
//! request is read from /proc, which load on the other core does not
//! distort.
//!
//! The gateway serves the request through a route with rules in place (a
//! host route and a stripped prefix beside it, header edits, a body bound
//! and a timeout on the route taken), as a real stack would configure it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::load::{closed_loop, millis, percentile};
use crate::procs::{start_floor, start_gateway_extra, start_nginx, tree_cpu_secs};
use crate::{Ctx, Rows, verdict};

/// Routes a real stack would have; `/sim/…` takes the third.
const ROUTES: &str = concat!(
    "routes:\n",
    "  - {host: api.example.com, prefix: /api, upstream: backend, strip_prefix: true}\n",
    "  - {prefix: /static, upstream: backend, strip_prefix: true}\n",
    "  - prefix: /sim\n",
    "    upstream: backend\n",
    "    max_body_bytes: 1048576\n",
    "    timeout_ms: 30000\n",
    "    request_headers: {set: {x-via: eai-gateway}, remove: [cookie]}\n",
    "    response_headers: {set: {x-frame-options: DENY}, remove: [server]}\n",
);

pub async fn run(cx: &Ctx<'_>, rows: &mut Rows) {
    let (client, sim_addr) = (cx.client, cx.sim);
    let routed = start_gateway_extra("passthrough", sim_addr, ROUTES).await;
    let gw = &routed;
    let conns = 64;
    let dur = Duration::from_secs(if cx.quick { 3 } else { 5 });
    let path = "/sim/payload?bytes=1024";
    let (d_rps, d_lat) = closed_loop(client, &format!("http://{sim_addr}{path}"), conns, dur).await;
    rows.add(
        "pass-through 1 KiB GET, direct to backend",
        format!(
            "{d_rps:.0} req/s, p99 {:.2} ms",
            percentile(&millis(&d_lat), 99.0)
        ),
        "—",
        "—",
    );
    let nginx = start_nginx(sim_addr);
    let floor = start_floor(sim_addr);
    let mut proxies: Vec<(&str, SocketAddr, u32)> = vec![("eai-gateway", gw.addr, gw.proc.pid())];
    if let Some((p, addr, _)) = &nginx {
        proxies.push(("nginx", *addr, p.pid()));
    }
    if let Some((p, addr)) = &floor {
        proxies.push(("pingora-proxy alone (floor)", *addr, p.pid()));
    }
    // Short windows, the proxies taking turns, each proxy's windows then
    // added up: requests, CPU and latencies. On this shared machine the
    // speed drifts by a third within a minute; whole runs one after the
    // other compared one proxy's fast minute with another's slow one, while
    // half-second turns give every proxy the same share of each drift.
    let window = Duration::from_millis(500);
    let turns: u32 = if cx.quick { 20 } else { 40 };
    let mut totals: BTreeMap<&str, (f64, f64, Vec<Duration>)> = BTreeMap::new();
    for turn in 0..turns as usize {
        for i in 0..proxies.len() {
            let (name, addr, pid) = proxies[(i + turn) % proxies.len()];
            let cpu0 = tree_cpu_secs(pid);
            let (rps, lat) =
                closed_loop(client, &format!("http://{addr}{path}"), conns, window).await;
            let entry = totals.entry(name).or_default();
            entry.0 += rps * window.as_secs_f64();
            entry.1 += tree_cpu_secs(pid) - cpu0;
            entry.2.extend(lat);
        }
    }
    let measured = window.as_secs_f64() * f64::from(turns);
    let best: BTreeMap<&str, (f64, f64, f64)> = totals
        .iter()
        .map(|(name, (requests, cpu, lat))| {
            let p99 = percentile(&millis(lat), 99.0);
            let cpu_us = cpu * 1e6 / requests.max(1.0);
            (*name, (requests / measured, p99, cpu_us))
        })
        .collect();
    let show = |(rps, p99, cpu): (f64, f64, f64)| {
        format!("{rps:.0} req/s, p99 {p99:.2} ms, {cpu:.0} µs CPU per request")
    };
    let nginx_best = best.get("nginx").copied();
    for (name, result) in &best {
        if *name == "eai-gateway" {
            continue;
        }
        rows.add(
            &format!("pass-through 1 KiB GET, {name}"),
            show(*result),
            "—",
            "—",
        );
    }
    let gw_best = best.get("eai-gateway").copied().unwrap_or((0.0, 0.0, 0.0));
    if let Some(floor) = best.get("pingora-proxy alone (floor)").copied() {
        let (cpu, p99) = (gw_best.2 / floor.2, gw_best.1 / floor.1);
        rows.add(
            "pass-through 1 KiB GET, eai-gateway (route rules on) against the floor",
            format!("CPU {cpu:.2}×, p99 {p99:.2}× the floor's"),
            "≤ 1.10× each",
            verdict(cpu <= 1.10 && p99 <= 1.10),
        );
    }
    match nginx_best {
        Some(n) => rows.add(
            "pass-through 1 KiB GET, eai-gateway",
            show(gw_best),
            "req/s ≥ nginx, p99 ≤ nginx",
            verdict(gw_best.0 >= n.0 && gw_best.1 <= n.1),
        ),
        None => rows.add(
            "pass-through 1 KiB GET, eai-gateway",
            show(gw_best),
            "req/s ≥ nginx, p99 ≤ nginx",
            "nginx not installed",
        ),
    }
    drop(nginx);
    drop(floor);
}
