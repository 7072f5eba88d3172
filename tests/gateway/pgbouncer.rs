//! PostgreSQL behind PgBouncer in transaction pooling, as operators run it:
//! Debian's `pgbouncer`, started here on a free port in front of the test
//! PostgreSQL, with fewer server connections than the gateways have
//! clients, so statements of one client do move between server
//! connections. The gateways' pools go through it (`statement_cache: 0`);
//! their `direct_url` does not.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::support::*;

/// A PgBouncer of this test's own: `live` reaches the test PostgreSQL,
/// `dead` a port where nothing listens.
pub(super) struct PgBouncer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl PgBouncer {
    /// With `servers` server connections to the test PostgreSQL.
    pub(super) async fn start(servers: u32) -> Self {
        let pg = reqwest::Url::parse(&pg_url()).expect("test PostgreSQL URL");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let server = |port: u16| {
            let mut line = format!(
                "host={} port={port} dbname={} user={}",
                pg.host_str().unwrap_or("127.0.0.1"),
                pg.path().trim_start_matches('/'),
                pg.username(),
            );
            if let Some(password) = pg.password() {
                line += &format!(" password={password}");
            }
            line
        };
        let path = |name: &str| dir.path().join(name).display().to_string();
        let ini = format!(
            "[databases]\nlive = {}\ndead = {}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {}\npool_mode = transaction\n\
             default_pool_size = {servers}\nmax_client_conn = 1000\n\
             admin_users = {}\n\
             logfile = {}\npidfile = {}\n",
            server(pg.port().unwrap_or(5432)),
            server(free_port()),
            path("users.txt"),
            pg.username(),
            path("pgbouncer.log"),
            path("pgbouncer.pid"),
        );
        std::fs::write(dir.path().join("pgbouncer.ini"), ini).expect("write ini");
        std::fs::write(
            dir.path().join("users.txt"),
            format!("\"{}\" \"\"\n", pg.username()),
        )
        .expect("write users");
        // PgBouncer refuses to run as root; the test machine runs tests as
        // root, so it runs as Debian's postgres user there, which must be
        // able to read the config and write the log.
        let as_root = running_as_root();
        if as_root {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
                .expect("chmod");
        }
        let mut cmd = if as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "pgbouncer"]);
            c
        } else {
            Command::new("pgbouncer")
        };
        let child = cmd
            .arg(dir.path().join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pgbouncer (Debian's pgbouncer package; .ci/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen:\n{}",
                std::fs::read_to_string(dir.path().join("pgbouncer.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, port, dir }
    }

    pub(super) fn url(&self, database: &str) -> String {
        let pg = reqwest::Url::parse(&pg_url()).expect("test PostgreSQL URL");
        format!(
            "postgres://{}@127.0.0.1:{}/{database}",
            pg.username(),
            self.port
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }

    /// (client connections, server connections) of a database, from
    /// PgBouncer's admin console (`SHOW POOLS`).
    fn pools(&self, database: &str) -> (u64, u64) {
        let out = Command::new("psql")
            .arg(self.url("pgbouncer"))
            .args(["-A", "-F", ",", "-c", "SHOW POOLS"])
            .output()
            .expect("psql");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
        let row: Vec<&str> = lines
            .find(|l| l.starts_with(&format!("{database},")))
            .unwrap_or_else(|| panic!("no pool {database} in {text}"))
            .split(',')
            .collect();
        let sum = |prefix: &str| -> u64 {
            header
                .iter()
                .zip(&row)
                .filter(|(h, _)| h.starts_with(prefix))
                .filter_map(|(_, v)| v.parse::<u64>().ok())
                .sum()
        };
        (sum("cl_"), sum("sv_"))
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // Under runuser, PgBouncer is runuser's child: killing runuser would
        // orphan it, so it is stopped by the pid it wrote.
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("pgbouncer.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A replica whose pool goes through `bouncer` and whose session needs
/// (LISTEN, migrations) use `direct` (when given).
pub(super) fn through<'a>(
    db: &'a TestDb,
    sim: SocketAddr,
    bouncer: &PgBouncer,
    database: &str,
    direct: Option<&str>,
) -> GatewaySpec<'a> {
    let mut spec = GatewaySpec::new(Dialect::Eai, db, sim);
    spec.database_extra = "  statement_cache: 0\n  max_connections: 32\n".to_owned();
    spec.extra_yaml = "limits:\n  user_rate_per_min: 100000\n  user_queue_max: 1000\n  \
                       max_inflight_chats: 2000\nagents:\n  cache_ttl_seconds: 300\n"
        .to_owned();
    spec.env.push(("DATABASE_URL", bouncer.url(database)));
    if let Some(direct) = direct {
        spec.env.push(("DATABASE_DIRECT_URL", direct.to_owned()));
    }
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_through_pgbouncer_keep_every_guarantee() {
    let bouncer = PgBouncer::start(4).await;
    let (sim, sim_addr) = simulator(5).await;
    let db = TestDb::new(DbKind::Postgres);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a.log");
    let mut spec = through(&db, sim_addr, &bouncer, "live", Some(&db.url));
    spec.log_file = Some(log.clone());
    let a = GatewayProcess::start(spec).await;
    let b = GatewayProcess::start(through(&db, sim_addr, &bouncer, "live", Some(&db.url))).await;

    // A 200-way first-message storm for one user, across both replicas.
    let user = "5521977770001";
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let calls = (0..200).map(|i| {
        let gw = if i % 2 == 0 { &a } else { &b };
        post_chat(
            &client,
            gw,
            json!({"user_number": user, "message": format!("m{i}")}),
        )
    });
    let results = futures_util::future::join_all(calls).await;
    let mapped: BTreeMap<String, String> = db.mappings().await.into_iter().collect();
    assert_eq!(mapped.len(), 1, "one mapping");
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(answering_agent(body), mapped[user]);
    }
    let settled = eventually(Duration::from_secs(10), || {
        sim.live_agents_of(user).len() == 1
    })
    .await;
    assert!(settled, "leaked agents: {:?}", sim.stats());
    assert_eq!(sim.messages_of(&mapped[user]).len(), 200, "each sent once");
    assert_eq!(sim.stats().overlaps, 0, "{:?}", sim.stats());

    // A DELETE on A reaches B's cache (a 300 s TTL) within 1 s: B listens
    // on its direct connection.
    let (_, before) = b.chat(user, "cached").await;
    let invalidations = "eai_gateway_mapping_invalidations_total";
    let seen = b.metrics().await.value(invalidations, &[]).unwrap_or(0.0);
    assert_eq!(a.forget(user).await, 204);
    let heard = eventually_metric(&b, invalidations, seen + 1.0).await;
    assert!(heard, "replica B did not hear of the DELETE within 1 s");
    let (status, after) = b.chat(user, "again").await;
    assert_eq!(status, 200, "{after}");
    assert_ne!(answering_agent(&before), answering_agent(&after));

    // Chat records and idempotency keys: a keyed asynchronous chat on A,
    // read and repeated on B, sent once.
    let keyed = json!({"user_number": "5521977770002", "message": "[delay=300] once"});
    let post = |gw: &GatewayProcess, prefer: bool| {
        let mut r = client
            .post(gw.url("/eai-gateway/chat"))
            .header("idempotency-key", "pgb-1")
            .json(&keyed);
        if prefer {
            r = r.header("prefer", "respond-async");
        }
        r.send()
    };
    let accepted = post(&a, true).await.unwrap();
    assert_eq!(accepted.status(), 202);
    let id = accepted.json::<serde_json::Value>().await.unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let repeat = post(&b, false).await.unwrap();
    assert_eq!(repeat.status(), 200);
    assert_eq!(repeat.headers()["idempotency-replayed"], "true");
    let answer: serde_json::Value = repeat.json().await.unwrap();
    let polled = client
        .get(b.url(&format!("/eai-gateway/chat/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(polled.status(), 200);
    assert_eq!(polled.json::<serde_json::Value>().await.unwrap(), answer);
    assert_eq!(sim.messages_of(&answering_agent(&answer)).len(), 1);

    // Not vacuous: the gateways' connections did share PgBouncer's four
    // server connections, and no statement failed.
    let (clients, servers) = bouncer.pools("live");
    assert!(
        servers <= 4 && clients > servers,
        "{clients} clients, {servers} servers"
    );
    let pooled = bouncer.log();
    assert!(!pooled.contains("prepared statement"), "{pooled}");
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!log.contains("Database call failed"), "{log}");
}

/// Whether `gw`'s counter `name` reaches `count` within 1 s.
async fn eventually_metric(gw: &GatewayProcess, name: &str, count: f64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        if gw.metrics().await.value(name, &[]) >= Some(count) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// `migrate` takes the direct URL; without one, through the pooler alone,
/// it refuses by name instead of taking a session lock a pooler would
/// strand; `run` starts on a migrated database and says what it gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_need_the_direct_url() {
    let bouncer = PgBouncer::start(4).await;
    let db = TestDb::new(DbKind::Postgres);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.yaml");
    std::fs::write(
        &config,
        format!(
            "agent_service:\n  dialect: eai\n  url: http://127.0.0.1:9\n{}",
            db.yaml_with("  statement_cache: 0\n")
        ),
    )
    .unwrap();
    let migrate = |direct: Option<String>| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_eai-gateway"));
        cmd.arg("migrate")
            .arg("--config")
            .arg(&config)
            .env("DATABASE_URL", bouncer.url("live"))
            .env("EAI_GATEWAY_PSEUDONYM_KEY", TEST_PSEUDONYM_KEY)
            .env("RUST_LOG", "warn")
            .env_remove("DATABASE_DIRECT_URL");
        if let Some(direct) = direct {
            cmd.env("DATABASE_DIRECT_URL", direct);
        }
        async move {
            let out = cmd.output().await.unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        }
    };
    let (code, text) = migrate(None).await;
    assert_ne!(code, Some(0), "{text}");
    assert!(
        text.contains("not applied") && text.contains("database.direct_url"),
        "{text}"
    );
    let (code, text) = migrate(Some(db.url.clone())).await;
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        db.execute(&format!(
            "SELECT 1 FROM {}.user_agents",
            db.schema.as_deref().unwrap_or("public")
        ))
        .await,
        0,
        "the tables exist"
    );

    // Migrated: a replica through the pooler alone starts, serves, and warns
    // that other replicas' changes now wait for the cache TTL.
    let (_sim, sim_addr) = simulator(5).await;
    let log = dir.path().join("run.log");
    let mut spec = through(&db, sim_addr, &bouncer, "live", None);
    spec.log_file = Some(log.clone());
    let gw = GatewayProcess::start(spec).await;
    let (status, body) = gw.chat("5521977770003", "oi").await;
    assert_eq!(status, 200, "{body}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("agents.cache_ttl_seconds") && text.contains("DATABASE_DIRECT_URL"),
        "{text}"
    );
}

/// PgBouncer answers, the database behind it does not: every statement
/// fails. Liveness stays true (a restart would not help), readiness and
/// the routes say the database is unavailable, in JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_tells_the_truth_when_every_statement_fails() {
    let bouncer = PgBouncer::start(4).await;
    let (_sim, sim_addr) = simulator(5).await;
    let db = TestDb::new(DbKind::Postgres);
    // The tables exist (migrated directly); the pool's database is dead.
    let gw = GatewayProcess::start(through(&db, sim_addr, &bouncer, "dead", Some(&db.url))).await;
    let client = reqwest::Client::new();
    let live = client.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let ready = client.get(gw.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let (status, body) = gw.chat("5521977770004", "oi").await;
    assert_eq!(status, 503, "{body}");
    assert!(body["detail"].is_string(), "{body}");

    // The same replica on the live database is ready.
    let ok = GatewayProcess::start(through(&db, sim_addr, &bouncer, "live", Some(&db.url))).await;
    let ready = client.get(ok.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    // One not told of the pooler (statements named and cached, the schema
    // as a connection option): unready, 503, and a log line naming the fix.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("untold.log");
    let mut spec = through(&db, sim_addr, &bouncer, "live", Some(&db.url));
    spec.database_extra = String::new();
    spec.log_file = Some(log.clone());
    let untold = GatewayProcess::start(spec).await;
    let ready = client.get(untold.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let (status, body) = untold.chat("5521977770005", "oi").await;
    assert_eq!(status, 503, "{body}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("hint") && text.contains("database.statement_cache: 0"),
        "{text}"
    );
}
