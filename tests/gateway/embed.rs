//! The middleware inside a host proxy of its own (`examples/embed.rs`):
//! chat, agent and pass-through requests over HTTP, against the simulator,
//! on PostgreSQL and SQLite.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::support::{
    DbKind, Dialect, Metrics, TEST_PSEUDONYM_KEY, TestDb, answer_text, answering_agent, free_port,
    plain_backend, simulator,
};

const TOKEN: &str = "embedded-host-token-0123456789";
const USER: &str = "+5521987650071";
const USER_BARE: &str = "5521987650071";

/// `target/<profile>/examples/embed`, which `cargo test` builds beside the
/// test binaries (`target/<profile>/deps/`).
fn example_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let bin = profile_dir.join("examples").join("embed");
    assert!(
        bin.exists(),
        "{} is missing: run the suite with `cargo test` (which builds the examples) \
         or `cargo build --example embed` first",
        bin.display()
    );
    bin
}

struct Host {
    child: Child,
    addr: SocketAddr,
    metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Host {
    async fn start(db: &TestDb, dialect: Dialect, agent: SocketAddr, upstream: SocketAddr) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("eai-gateway.yaml");
        let schema = db
            .schema
            .as_ref()
            .map(|s| format!("  schema: {s}\n"))
            .unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "agent_service:\n  dialect: {}\n  url: http://{agent}\n\
                 database:\n  url: '{}'\n{schema}\
                 users:\n  pseudonym_key: {TEST_PSEUDONYM_KEY}\n\
                 chat:\n  poll:\n    initial_delay_ms: 20\n    max_delay_ms: 200\n",
                dialect.name(),
                db.url
            ),
        )
        .expect("write config");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(example_bin())
            .arg(&config)
            .arg(addr.to_string())
            .arg(upstream.to_string())
            .arg(metrics.to_string())
            .env("EAI_GATEWAY_TOKENS", TOKEN)
            .env("RUST_LOG", "error")
            .env_remove("DATABASE_URL")
            .env_remove("EAI_GATEWAY_PSEUDONYM_KEY")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn the embed example");
        let host = Self {
            child,
            addr,
            metrics,
            _dir: dir,
        };
        let client = reqwest::Client::new();
        for _ in 0..150 {
            if let Ok(r) = client.get(host.url("/healthz")).send().await
                && r.status() == 200
            {
                return host;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the embed example did not answer /healthz within 15 s");
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn embedded_gateway_serves_beside_the_host(kind: DbKind, dialect: Dialect) {
    let db = TestDb::new(kind);
    let (sim, agent) = simulator(30).await;
    let backend = plain_backend().await;
    let host = Host::start(&db, dialect, agent, backend).await;
    let client = reqwest::Client::new();
    let bearer = format!("Bearer {TOKEN}");

    // The gateway's routes, under its own bearer tokens.
    let chat = |message: &str| {
        client
            .post(host.url("/eai-gateway/chat"))
            .header("authorization", &bearer)
            .json(&json!({"user_number": USER, "message": message}))
            .send()
    };
    let r = chat("olá").await.unwrap();
    assert_eq!(r.status(), 200);
    let first: Value = r.json().await.unwrap();
    let agent_id = answering_agent(&first);
    assert_eq!(answer_text(&first), "echo: olá");
    let second: Value = chat("de novo").await.unwrap().json().await.unwrap();
    assert_eq!(answering_agent(&second), agent_id);
    assert_eq!(sim.stats().agents_created, 1);
    assert_eq!(
        db.mappings().await,
        vec![(USER_BARE.to_owned(), agent_id.clone())]
    );
    let r = client
        .post(host.url("/eai-gateway/chat"))
        .json(&json!({"user_number": USER, "message": "sem token"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let agent_url = host.url(&format!("/eai-gateway/agent/{USER_BARE}"));
    let r = client
        .get(&agent_url)
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"agent_id": agent_id})
    );
    let r = client
        .delete(&agent_url)
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(db.mappings().await, vec![]);

    // Bad input and unknown native paths are the gateway's, answered in JSON.
    let r = client
        .post(host.url("/eai-gateway/chat"))
        .header("authorization", &bearer)
        .json(&json!({"user_number": "12", "message": "curto"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.json::<Value>().await.unwrap()["detail"].is_string());
    let r = client
        .get(host.url("/eai-gateway/nothing-here"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["detail"].is_string());

    // Everything else is the host's: its own upstream, no token needed,
    // the gateway's path rules not applied.
    for path in ["/", "/api/orders?id=7", "/eai-gatewayx", "/static/app.js"] {
        let r = client.get(host.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.text().await.unwrap(), "backend ok", "{path}");
    }

    // The gateway's metrics are on the host's Prometheus endpoint.
    let page = reqwest::get(format!("http://{}/metrics", host.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metrics = Metrics::parse(&page);
    let chats = metrics
        .value(
            "eai_gateway_requests_total",
            &[
                ("route", "/eai-gateway/chat"),
                ("method", "POST"),
                ("status", "200"),
            ],
        )
        .unwrap_or_else(|| panic!("no chat requests counted in\n{page}"));
    assert_eq!(chats, 2.0);
    assert!(page.contains("eai_gateway_build_info"), "{page}");
    assert!(
        !page.contains(USER_BARE),
        "a phone number in the metrics:\n{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_in_a_host_proxy_on_postgres() {
    embedded_gateway_serves_beside_the_host(DbKind::Postgres, Dialect::Letta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_in_a_host_proxy_on_sqlite() {
    embedded_gateway_serves_beside_the_host(DbKind::Sqlite, Dialect::Eai).await;
}
