//! What an operator runs against the gateway, run for real: `promtool` on
//! the metrics page and the shipped rules, and a real Prometheus scraping a
//! real gateway under traffic, through which every dashboard query and every
//! alert expression must evaluate and return data.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::support::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tool of Debian's `prometheus` package, which `.ci/run` installs.
fn tool(name: &str) -> Command {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{name} not found: install Debian's `prometheus` package (.ci/run does)"
    );
    Command::new(name)
}

struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: std::net::SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rules = repo().join("conf/prometheus/alerts.yml");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [\"{}\"]\n\
                 scrape_configs:\n  - job_name: eai-gateway\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let child = tool("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(format!("{url}/-/ready")).await
                && r.status() == 200
            {
                break;
            }
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            child,
            url,
            _dir: dir,
        }
    }

    /// An instant query's result vector; panics when Prometheus refuses it.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let mut url = reqwest::Url::parse(&format!("{}/api/v1/query", self.url)).unwrap();
        url.query_pairs_mut().append_pair("query", expr);
        let r: Value = reqwest::Client::new()
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["status"], "success", "{expr}: {r}");
        match &r["data"]["result"] {
            Value::Array(v) => v.clone(),
            // A scalar result (time()) is data too.
            other => vec![other.clone()],
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every `expr` of the dashboard, rows' panels included, with Grafana's
/// interval variable replaced by a window that holds several scrapes.
fn dashboard_queries(path: &Path) -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(
        dashboard["__inputs"]
            .as_array()
            .is_some_and(|i| i.iter().any(|i| i["name"] == "DS_PROMETHEUS")),
        "the dashboard must ask for a DS_PROMETHEUS datasource"
    );
    let mut out = Vec::new();
    let mut stack: Vec<Value> = dashboard["panels"].as_array().cloned().unwrap_or_default();
    while let Some(panel) = stack.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            stack.extend(nested.iter().cloned());
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                let title = panel["title"].as_str().unwrap_or("?").to_owned();
                let expr = expr
                    .replace("$__rate_interval", "30s")
                    .replace("$__interval", "30s")
                    .replace("$__range", "5m");
                out.push((title, expr));
            }
        }
    }
    out
}

/// Every alert's name, whole expression and the expression without its
/// final threshold (what must return data while nothing is wrong).
fn alert_expressions(path: &Path) -> Vec<(String, String, String)> {
    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap().to_owned();
            let expr = rule["expr"].as_str().unwrap().trim().to_owned();
            let left = [" > ", " == "]
                .iter()
                .filter_map(|op| expr.rfind(op))
                .max()
                .map(|at| expr[..at].to_owned())
                .unwrap_or_else(|| panic!("{name}: no threshold in {expr}"));
            out.push((name, expr, left));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_evaluates_every_dashboard_query_and_alert() {
    let _heavy = HEAVY.lock().await;
    let conf = repo().join("conf/prometheus");
    // The rules and their unit tests, as an operator would check them.
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts.test.yml"],
        vec!["check", "config", "prometheus.yml"],
    ] {
        let out = tool("promtool")
            .args(&args)
            .current_dir(&conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let backend = plain_backend().await;
    let (_sim, sim_addr) = simulator(50).await;
    let db = TestDb::new(DbKind::Postgres);
    let mut spec = GatewaySpec::new(Dialect::Eai, &db, sim_addr);
    spec.extra_yaml = format!(
        "upstreams:\n  web:\n    backends: [\"{backend}\"]\n    health_check:\n      interval_ms: 500\n      timeout_ms: 200\nroutes:\n  - prefix: /web\n    upstream: web\n"
    );
    let gw = GatewayProcess::start(spec).await;

    // Traffic of every kind the dashboard shows: chats, pass-through,
    // refusals and client errors.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        let base = gw.url("");
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let user = format!("55219{:08}", n % 20);
                let _ = client
                    .post(format!("{base}/eai-gateway/chat"))
                    .json(&json!({"user_number": user, "message": format!("hello {n}")}))
                    .send()
                    .await;
                let _ = client.get(format!("{base}/web/page")).send().await;
                let _ = client.get(format!("{base}/nowhere")).send().await;
                let _ = client
                    .post(format!("{base}/eai-gateway/chat"))
                    .json(&json!({"user_number": "x", "message": "bad"}))
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The page passes Prometheus's own lint.
    let page = gw.metrics_text().await;
    let mut lint = tool("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        lint.stdin
            .take()
            .unwrap()
            .write_all(page.as_bytes())
            .unwrap();
    }
    let lint = lint.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    assert!(
        lint.status.success() && findings.trim().is_empty(),
        "{findings}"
    );
    for name in [
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "eai_gateway_build_info",
        "eai_gateway_chats_in_flight",
        "eai_gateway_db_connections",
        "eai_gateway_upstream_ttfb_seconds_bucket",
    ] {
        assert!(page.contains(name), "{name} missing");
    }

    let prom = Prometheus::start(gw.metrics).await;
    // Enough scrapes for every 30 s rate window to hold several samples.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let scrapes = prom
            .query(r#"count_over_time(up{job="eai-gateway"}[30s]) * up{job="eai-gateway"}"#)
            .await;
        let n = scrapes
            .first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if n >= 5.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus did not scrape the gateway"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut empty = Vec::new();
    let queries = dashboard_queries(&repo().join("conf/grafana/eai-gateway.json"));
    assert!(queries.len() >= 20, "{} queries", queries.len());
    for (title, expr) in &queries {
        if prom.query(expr).await.is_empty() {
            empty.push(format!("panel {title:?}: {expr}"));
        }
    }
    let alerts = alert_expressions(&conf.join("alerts.yml"));
    assert!(alerts.len() >= 8);
    for (name, expr, left) in &alerts {
        prom.query(expr).await;
        if prom.query(left).await.is_empty() {
            empty.push(format!("alert {name}: {left}"));
        }
    }
    // Prometheus loaded the same rules and evaluates them without error.
    let rules: Value = reqwest::get(format!("{}/api/v1/rules", prom.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(loaded.len(), alerts.len());
    for rule in loaded {
        assert_ne!(rule["health"], "err", "{rule}");
    }
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    assert!(empty.is_empty(), "no data for:\n{}", empty.join("\n"));
}
