//! Putting the gateway in front of a deployment that already has users: a
//! `user_agents` table written by the service it replaces (numbers as the
//! frontend sent them, one person under two spellings), and mappings moved
//! between stores with `mappings export` / `import`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::support::*;

/// The old service's DDL, as the issue found it (PostgreSQL), and the same
/// table as a SQLite deployment of it would have made it.
const OLD_DDL_PG: [&str; 2] = [
    "CREATE TABLE user_agents (user_number VARCHAR NOT NULL PRIMARY KEY, \
     agent_id VARCHAR NOT NULL UNIQUE)",
    "CREATE INDEX ix_user_agents_user_number ON user_agents (user_number)",
];
const OLD_DDL_SQLITE: [&str; 2] = [
    "CREATE TABLE user_agents (user_number VARCHAR NOT NULL PRIMARY KEY, \
     agent_id VARCHAR NOT NULL UNIQUE)",
    "CREATE INDEX ix_user_agents_user_number ON user_agents (user_number)",
];

/// An agent that exists at the simulator, as the old service created them.
async fn sim_agent(sim: SocketAddr, owner: &str) -> String {
    let body: Value = reqwest::Client::new()
        .post(format!("http://{sim}/api/v1/agent/create"))
        .json(&json!({"user_number": owner}))
        .send()
        .await
        .expect("create agent")
        .json()
        .await
        .expect("create answer");
    body["agent_id"].as_str().expect("agent_id").to_owned()
}

/// A config file for the operator commands on `db`, speaking to `sim`.
fn config(dir: &tempfile::TempDir, db: &TestDb, sim: SocketAddr) -> PathBuf {
    command_config(dir, db, "eai", sim)
}

/// `eai-gateway ARGS… --config FILE`; exit code and everything it printed.
async fn cli(db: &TestDb, config: &Path, args: &[&str]) -> (i32, String) {
    let config = config.to_str().expect("config path");
    let args: Vec<&str> = args.iter().copied().chain(["--config", config]).collect();
    operator_command(db, &args).await
}

async fn agent_of(gw: &GatewayProcess, user: &str) -> Value {
    reqwest::get(gw.url(&format!("/eai-gateway/agent/{}", user.replace('+', "%2B"))))
        .await
        .expect("get agent")
        .json::<Value>()
        .await
        .expect("json")["agent_id"]
        .clone()
}

async fn adopts_the_old_services_table(kind: DbKind) {
    let (sim, sim_addr) = simulator(20).await;
    let db = TestDb::new(kind);
    let a = sim_agent(sim_addr, "old-a").await;
    let b = sim_agent(sim_addr, "old-b").await;
    let (c1, c2) = (
        sim_agent(sim_addr, "c1").await,
        sim_agent(sim_addr, "c2").await,
    );
    let (d1, d2) = (
        sim_agent(sim_addr, "d1").await,
        sim_agent(sim_addr, "d2").await,
    );
    let ddl = match kind {
        DbKind::Postgres => OLD_DDL_PG,
        DbKind::Sqlite => OLD_DDL_SQLITE,
    };
    let rows = [
        ("+5521911110001", &a),
        ("5521911110002", &b),
        ("+5521911110003", &c1),
        ("5521911110003", &c2),
        ("+5521911110004", &d1),
        ("5521911110004", &d2),
    ];
    let inserts: Vec<String> = rows
        .iter()
        .map(|(u, a)| {
            format!("INSERT INTO user_agents (user_number, agent_id) VALUES ('{u}', '{a}')")
        })
        .collect();
    let mut statements: Vec<&str> = ddl.to_vec();
    statements.extend(inserts.iter().map(String::as_str));
    db.run_sql(&statements).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(&dir, &db, sim_addr);
    let (code, out) = cli(&db, &cfg, &["migrate"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Adopted an existing user_agents table"),
        "{out}"
    );
    assert!(out.contains("added column created_at"), "{out}");
    assert!(out.contains("added column updated_at"), "{out}");
    assert!(
        out.contains("Users with more than one mapping row"),
        "{out}"
    );
    // A second run finds nothing to change.
    let (code, again) = cli(&db, &cfg, &["migrate"]).await;
    assert_eq!(code, 0, "{again}");
    assert!(!again.contains("added column"), "{again}");
    // No row lost, the old index kept, and the old service still writes
    // and reads the table as it did (a rollback stays possible).
    assert_eq!(db.mappings().await.len(), 6);
    let index = match kind {
        DbKind::Postgres => {
            "SELECT 1 FROM pg_indexes WHERE indexname = 'ix_user_agents_user_number' \
             AND schemaname = current_schema()"
        }
        DbKind::Sqlite => "SELECT 1 FROM sqlite_master WHERE name = 'ix_user_agents_user_number'",
    };
    let old_write = [
        "INSERT INTO user_agents (user_number, agent_id) VALUES ('+5521911119999', 'agent-old-write')",
        index,
        "DELETE FROM user_agents WHERE user_number = '+5521911119999'",
    ];
    db.run_sql(&old_write).await;

    let (code, out) = cli(&db, &cfg, &["mappings", "check"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("2 users with more than one mapping (4 rows)"),
        "{out}"
    );
    assert!(
        out.contains("***0003#") && out.contains("+***0003#"),
        "{out}"
    );
    assert!(!out.contains("5521911110003"), "unmasked number in: {out}");
    assert!(out.contains(&format!("{c2:<40} created")), "{out}");

    let mut spec = GatewaySpec::new(Dialect::Eai, &db, sim_addr);
    // Every lookup reaches the store, so resolving shows at once.
    spec.extra_yaml = "agents:\n  cache_ttl_seconds: 0\n".into();
    let gw = GatewayProcess::start(spec).await;
    let created_before = sim.stats().agents_created;
    // Stored as "+…", found under either spelling, by GET and by chat.
    assert_eq!(agent_of(&gw, "+5521911110001").await, json!(a));
    assert_eq!(agent_of(&gw, "5521911110001").await, json!(a));
    let (status, body) = gw.chat("5521911110001", "hello again").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answering_agent(&body), a);
    let (status, body) = gw.chat("+5521911110002", "hi").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answering_agent(&body), b);
    // Two rows: the canonical spelling's serves (the default policy).
    let (status, body) = gw.chat("+5521911110003", "which one?").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answering_agent(&body), c2);
    assert_eq!(sim.stats().agents_created, created_before, "no new agent");
    let served = gw.metrics().await;
    assert!(
        served
            .value("eai_gateway_duplicate_mappings_served_total", &[])
            .is_some_and(|v| v >= 1.0)
    );

    // The operator keeps the older agent of user 3: the other row goes,
    // its agent stays at the agent service.
    let (code, out) = cli(
        &db,
        &cfg,
        &[
            "mappings",
            "resolve",
            "--user",
            "5521911110003",
            "--keep",
            &c1,
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("resolved 1 users, removed 1 rows"), "{out}");
    let (status, body) = gw.chat("5521911110003", "and now?").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answering_agent(&body), c1);
    assert!(
        !sim.live_agents_of("c2").is_empty(),
        "deleted without --delete-agents"
    );
    // The rest by the policy, deleting the removed agents upstream.
    let (code, out) = cli(
        &db,
        &cfg,
        &["mappings", "resolve", "--all", "--delete-agents"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("resolved 1 users, removed 1 rows"), "{out}");
    assert!(
        sim.live_agents_of("d1").is_empty(),
        "d1 not deleted upstream"
    );
    assert_eq!(sim.live_agents_of("d2"), [d2]);
    let (code, out) = cli(&db, &cfg, &["mappings", "check"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 users with more than one mapping"), "{out}");

    // DELETE finds the "+" row too.
    assert_eq!(gw.forget("5521911110001").await, 204);
    assert_eq!(agent_of(&gw, "+5521911110001").await, Value::Null);
    let mut left: Vec<String> = db.mappings().await.into_iter().map(|(u, _)| u).collect();
    left.sort();
    assert_eq!(left, ["+5521911110003", "5521911110002", "5521911110004"]);
}

#[tokio::test]
async fn adopts_the_old_services_table_postgres() {
    adopts_the_old_services_table(DbKind::Postgres).await;
}

#[tokio::test]
async fn adopts_the_old_services_table_sqlite() {
    adopts_the_old_services_table(DbKind::Sqlite).await;
}

/// A table that cannot be a mapping table is refused with what is wrong,
/// and left alone.
#[tokio::test]
async fn refuses_a_table_it_cannot_adopt() {
    let (_sim, sim_addr) = simulator(20).await;
    let db = TestDb::new(DbKind::Postgres);
    db.run_sql(&["CREATE TABLE user_agents (phone TEXT PRIMARY KEY, agent TEXT)"])
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, out) = cli(&db, &config(&dir, &db, sim_addr), &["migrate"]).await;
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("user_agents cannot be adopted: it has no column user_number"),
        "{out}"
    );
}

/// A SQLite deployment moves to PostgreSQL: export, import (twice, the
/// second changing nothing), and every user's next chat reaches the agent
/// it reached before. Then CSV, conflicts, `--replace` and bad files.
#[tokio::test]
async fn moves_mappings_from_sqlite_to_postgres() {
    let (sim, sim_addr) = simulator(20).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let users = ["+5521922220001", "5521922220002", "5521922220003"];
    let lite = TestDb::new(DbKind::Sqlite);
    let mut before = Vec::new();
    {
        let gw = GatewayProcess::start(GatewaySpec::new(Dialect::Eai, &lite, sim_addr)).await;
        for user in users {
            let (status, body) = gw.chat(user, "first").await;
            assert_eq!(status, 200, "{body}");
            before.push(answering_agent(&body));
        }
    }
    let lite_cfg = config(&dir, &lite, sim_addr);
    let export = dir.path().join("mappings.jsonl");
    let (code, out) = cli(
        &lite,
        &lite_cfg,
        &[
            "mappings",
            "export",
            "--output",
            export.to_str().expect("path"),
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("exported 3 mappings"), "{out}");
    let text = std::fs::read_to_string(&export).expect("export file");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 3);
    for line in &lines {
        assert!(
            line["created_at"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
        assert!(line["updated_at"].is_string(), "{line}");
    }

    let pg = TestDb::new(DbKind::Postgres);
    let pg_cfg = config(&dir, &pg, sim_addr);
    assert_eq!(cli(&pg, &pg_cfg, &["migrate"]).await.0, 0);
    let file = export.to_str().expect("path");
    let (code, out) = cli(&pg, &pg_cfg, &["mappings", "import", file]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("imported 3, unchanged 0, replaced 0, conflicts 0"),
        "{out}"
    );
    let (code, out) = cli(&pg, &pg_cfg, &["mappings", "import", file]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("imported 0, unchanged 3, replaced 0, conflicts 0"),
        "{out}"
    );

    let created = sim.stats().agents_created;
    let gw = GatewayProcess::start(GatewaySpec::new(Dialect::Eai, &pg, sim_addr)).await;
    for (user, agent) in users.iter().zip(&before) {
        let (status, body) = gw.chat(user, "after the move").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(&answering_agent(&body), agent, "{user}");
    }
    assert_eq!(sim.stats().agents_created, created, "no new agent");

    // CSV: one conflict (line 2), one new user (line 3); the rest go in.
    let fresh = sim_agent(sim_addr, "csv").await;
    let csv = dir.path().join("more.csv");
    std::fs::write(
        &csv,
        format!("user_number,agent_id\n5521922220001,{fresh}\n+5521922220004,{fresh}\n"),
    )
    .expect("csv");
    let csv_path = csv.to_str().expect("path");
    let (code, out) = cli(&pg, &pg_cfg, &["mappings", "import", csv_path]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("{csv_path}:2: conflict")), "{out}");
    assert!(
        out.contains("imported 1, unchanged 0, replaced 0, conflicts 1"),
        "{out}"
    );

    // --replace overwrites a different mapping, and says which agent lost it.
    std::fs::write(
        &csv,
        format!("user_number,agent_id\n5521922220002,{}\n", before[0]),
    )
    .expect("csv");
    let (code, out) = cli(&pg, &pg_cfg, &["mappings", "import", "--replace", csv_path]).await;
    // before[0] is user 1's agent: the agent is mapped to another user.
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("the agent is mapped to another user"), "{out}");
    let spare = sim_agent(sim_addr, "spare").await;
    std::fs::write(
        &csv,
        format!("user_number,agent_id\n5521922220002,{spare}\n"),
    )
    .expect("csv");
    let (code, out) = cli(&pg, &pg_cfg, &["mappings", "import", "--replace", csv_path]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "{csv_path}:2: replaced: the user mapped to {}",
            before[1]
        )),
        "{out}"
    );

    // A bad row anywhere: nothing imported, every bad row named by line.
    let rows_before = pg.mappings().await;
    std::fs::write(
        &csv,
        "user_number,agent_id\n5521922220005,agent-ok\n55 219,agent-x\n5521922220006,a/b\n",
    )
    .expect("csv");
    let (code, out) = cli(&pg, &pg_cfg, &["mappings", "import", csv_path]).await;
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!("{csv_path}:3: rejected: user_number")),
        "{out}"
    );
    assert!(
        out.contains(&format!("{csv_path}:4: rejected: agent_id")),
        "{out}"
    );
    assert!(out.contains("nothing was imported"), "{out}");
    assert_eq!(pg.mappings().await, rows_before);
    std::fs::write(&csv, "phone,agent_id\n1,2\n").expect("csv");
    let (code, out) = cli(&pg, &pg_cfg, &["mappings", "import", csv_path]).await;
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!("{csv_path}: line 1: unknown column \"phone\"")),
        "{out}"
    );
    let missing = dir.path().join("missing.csv");
    let (code, out) = cli(
        &pg,
        &pg_cfg,
        &["mappings", "import", missing.to_str().expect("path")],
    )
    .await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("missing.csv: cannot be read"), "{out}");
}
