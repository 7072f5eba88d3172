//! The benchmark behind `bench/run.sh`: starts the release gateway on
//! PostgreSQL, the simulator, nginx, drives them with an open-loop load
//! generator and prints one table (also written to bench/results/).
//!
//! Every number comes from real processes on loopback; the gateway's CPU
//! time and RSS are read from /proc. Latencies are measured from each
//! request's scheduled start, so a slow gateway cannot hide queueing
//! (no coordinated omission).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod load;
mod metrics;
mod procs;

/// One module per row group of the table, run by `main` in table order.
mod phases {
    pub mod calls;
    pub mod capacity;
    pub mod latency;
    pub mod letta;
    pub mod memory;
    pub mod modes;
    pub mod passthrough;
    pub mod pooled;
    pub mod shared;
    pub mod simulator;
    pub mod tracing;
}

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use procs::{Gateway, start_gateway, start_simulator};

/// What the phases share. The processes stay owned by `main`, which stops
/// them in order once every phase has run.
pub struct Ctx<'a> {
    pub client: &'a reqwest::Client,
    pub sim: SocketAddr,
    /// The eai/poll gateway most phases measure.
    pub gw: &'a Gateway,
    pub quick: bool,
    /// Length of a latency phase.
    pub phase_secs: u64,
}

/// The table's rows: measurement, result, target, status.
#[derive(Default)]
pub struct Rows(Vec<(String, String, String, String)>);

impl Rows {
    pub fn add(&mut self, what: &str, result: String, target: &str, met: &str) {
        self.0
            .push((what.to_owned(), result, target.to_owned(), met.to_owned()));
    }
}

pub fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem} RAM")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only PHASE` runs one phase: latency, letta, shared, pooled, tracing, capacity, passthrough, calls, modes, memory.
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let run = |phase: &str| only.as_deref().is_none_or(|o| o == phase);
    let client = load::client();
    let mut rows = Rows::default();

    let (sim, sim_addr) = start_simulator().await;
    let gw = start_gateway("eai", "eai", "poll", sim_addr).await;
    let cx = Ctx {
        client: &client,
        sim: sim_addr,
        gw: &gw,
        quick,
        phase_secs: if quick { 4 } else { 10 },
    };

    phases::simulator::run(&cx, &mut rows).await;
    if run("latency") {
        phases::latency::run(&cx, &mut rows).await;
    }
    if run("letta") {
        phases::letta::run(&cx, &mut rows).await;
    }
    if run("capacity") {
        phases::capacity::run(&cx, &mut rows).await;
    }
    if run("passthrough") {
        phases::passthrough::run(&cx, &mut rows).await;
    }
    if run("calls") {
        phases::calls::run(&cx, &mut rows).await;
    }
    if run("modes") {
        phases::modes::run(&cx, &mut rows).await;
    }
    if run("memory") {
        phases::memory::run(&cx, &mut rows).await;
    }
    // Last: their extra gateways must not disturb the phases above.
    if run("shared") {
        phases::shared::run(&cx, &mut rows).await;
    }
    if run("pooled") {
        phases::pooled::run(&cx, &mut rows).await;
    }
    if run("tracing") {
        phases::tracing::run(&cx, &mut rows).await;
    }
    drop(gw);
    drop(sim);

    let date = chrono_date();
    let table = table(&date, quick, &rows);
    println!("{table}");
    if only.is_some() {
        // A partial run is for looking, not for the record.
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
    let _ = std::fs::create_dir_all(&dir);
    let suffix = if quick { "-quick" } else { "" };
    let file = dir.join(format!("{date}{suffix}.md"));
    if std::fs::write(&file, &table).is_ok() {
        eprintln!("written to {}", file.display());
    }
}

fn table(date: &str, quick: bool, rows: &Rows) -> String {
    let mut table = String::new();
    writeln!(table, "# EAI Gateway benchmark, {date}\n").unwrap();
    writeln!(table, "Machine: {}. Gateway: release build, `threads: 2`, PostgreSQL 127.0.0.1:5432; simulator and load generator on the same machine.", machine()).unwrap();
    writeln!(
        table,
        "Mode: {}.\n",
        if quick {
            "--quick (short phases)"
        } else {
            "full"
        }
    )
    .unwrap();
    writeln!(
        table,
        "| measurement | result | target | status |\n|---|---|---|---|"
    )
    .unwrap();
    for (what, result, target, met) in &rows.0 {
        writeln!(table, "| {what} | {result} | {target} | {met} |").unwrap();
    }
    table
}

fn chrono_date() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "unknown-date".into())
}
