//! Orphaned agents: tagged as the gateway's at the agent service, mapped to
//! no user. `agents reconcile` pages through the whole listing, skips young
//! agents, never touches an untagged or a mapped one, and deletes only with
//! `--delete`; `run` can look periodically.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use super::support::*;

/// An agent made at the Letta simulator behind the gateway's back.
async fn letta_agent(sim: SocketAddr, name: &str, tags: &[&str]) -> String {
    let body: Value = reqwest::Client::new()
        .post(format!("http://{sim}/v1/agents/"))
        .json(&json!({"name": name, "tags": tags}))
        .send()
        .await
        .expect("create agent")
        .json()
        .await
        .expect("agent");
    body["id"].as_str().expect("id").to_owned()
}

fn config(dir: &tempfile::TempDir, db: &TestDb, dialect: &str, sim: SocketAddr) -> PathBuf {
    command_config(dir, db, dialect, sim)
}

async fn reconcile(db: &TestDb, config: &Path, args: &[&str]) -> (i32, String) {
    let config = config.to_str().expect("config path");
    let mut all = vec!["agents", "reconcile", "--config", config];
    all.extend_from_slice(args);
    operator_command(db, &all).await
}

#[tokio::test]
async fn reconcile_finds_and_deletes_only_unmapped_gateway_agents() {
    let (sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(DbKind::Postgres);
    let gw = GatewayProcess::start(GatewaySpec::new(Dialect::Letta, &db, sim_addr)).await;
    let (code, body) = gw.chat("5521944440001", "hi").await;
    assert_eq!(code, 200, "{body}");
    let kept = answering_agent(&body);
    let (code, body) = gw.chat("5521944440002", "hi").await;
    assert_eq!(code, 200, "{body}");
    let forgotten = answering_agent(&body);
    // Forgotten without its agent (agents.delete_agent_on_delete off).
    assert_eq!(gw.forget("5521944440002").await, 204);
    // More than one page of crash leftovers, and another application's agent.
    let mut leftovers = Vec::new();
    for i in 0..120 {
        leftovers.push(letta_agent(sim_addr, &format!("eai-left-{i}"), &["eai-gateway"]).await);
    }
    let foreign = letta_agent(sim_addr, "other-app", &["other"]).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(&dir, &db, "letta", sim_addr);
    // All of them young: nothing is an orphan yet.
    let (code, out) = reconcile(&db, &cfg, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "0 orphaned agents (of 122 tagged eai-gateway; agents younger than 600 s skipped)"
        ),
        "{out}"
    );

    let (code, out) = reconcile(&db, &cfg, &["--min-age-seconds", "0"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("121 orphaned agents (of 122 tagged"), "{out}");
    assert!(out.contains(&forgotten), "{out}");
    assert!(
        leftovers.iter().all(|id| out.contains(id.as_str())),
        "{out}"
    );
    assert!(!out.contains(&kept) && !out.contains(&foreign), "{out}");

    let (code, out) = reconcile(&db, &cfg, &["--min-age-seconds", "0", "--json"]).await;
    assert_eq!(code, 1, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("a JSON line");
    let report: Value = serde_json::from_str(line).expect("one JSON object");
    assert_eq!(report["found"], 121, "{report}");
    assert_eq!(report["listed"], 122, "{report}");
    assert_eq!(report["deleted"], Value::Null, "{report}");
    assert_eq!(report["orphans"].as_array().map(Vec::len), Some(121));
    assert_eq!(
        sim.stats().live_agents,
        123,
        "nothing deleted without --delete"
    );

    let (code, out) = reconcile(&db, &cfg, &["--min-age-seconds", "0", "--delete"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("; deleted 121"), "{out}");
    assert_eq!(sim.live_agents_of("other-app"), [foreign]);
    assert_eq!(
        sim.stats().live_agents,
        2,
        "the mapped agent and the foreign one"
    );
    let (code, body) = gw.chat("5521944440001", "still mine").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(answering_agent(&body), kept);

    // The EAI agent API has no listing: said, not guessed.
    let eai = config(&dir, &db, "eai", sim_addr);
    let (code, out) = reconcile(&db, &eai, &[]).await;
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("the eai dialect has no agent listing"),
        "{out}"
    );
}

/// `run` looks by itself when asked: the gauge reports what it found, and
/// with `reconcile_delete` they go. (Two threads: the simulator must answer
/// a sweep while the test stops the first gateway, or that sweep's turn
/// would outlive it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_sweeps_orphans_periodically() {
    let (sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(DbKind::Sqlite);
    let orphans = [
        letta_agent(sim_addr, "eai-a", &["eai-gateway"]).await,
        letta_agent(sim_addr, "eai-b", &["eai-gateway"]).await,
    ];
    let sweeping = |delete: bool| {
        let mut spec = GatewaySpec::new(Dialect::Letta, &db, sim_addr);
        spec.extra_yaml = format!(
            "agents:\n  reconcile_interval_seconds: 1\n  orphan_min_age_seconds: 0\n  \
             reconcile_delete: {delete}\n"
        );
        spec
    };
    let reporter = GatewayProcess::start(sweeping(false)).await;
    let mut found = 0.0;
    for _ in 0..50 {
        found = reporter
            .metrics()
            .await
            .value("eai_gateway_orphaned_agents", &[("state", "found")])
            .unwrap_or(0.0);
        if found == 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(found, 2.0);
    assert_eq!(sim.stats().live_agents, 2, "report-only deletes nothing");
    drop(reporter);

    let _deleter = GatewayProcess::start(sweeping(true)).await;
    assert!(
        eventually(Duration::from_secs(10), || sim.stats().live_agents == 0).await,
        "orphans {orphans:?} not deleted"
    );
}
