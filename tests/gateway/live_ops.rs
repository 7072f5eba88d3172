//! Changing a gateway while it serves: reload on SIGHUP, the zero-downtime
//! binary upgrade (SIGQUIT to the old process, `run --upgrade` for the new
//! one), and health-checked backends. Real processes under real traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::any;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::support::*;

/// A backend answering its tag on every path, on a port of its own that
/// survives a stop and a restart.
struct TagBackend {
    addr: SocketAddr,
    tag: &'static str,
    stop: Option<oneshot::Sender<()>>,
}

impl TagBackend {
    async fn start(tag: &'static str) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut backend = Self {
            addr,
            tag,
            stop: None,
        };
        backend.restart().await;
        backend
    }

    async fn restart(&mut self) {
        let tag = self.tag;
        let app = Router::new().fallback(any(move || async move { tag }));
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        self.stop = Some(tx);
    }

    /// Stops listening; requests in progress finish, then connections close.
    fn kill(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Failures seen by a load generator, with what they were.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    first_failure: std::sync::Mutex<Option<String>>,
}

impl Tally {
    fn record(&self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_failure.lock().unwrap().get_or_insert(e);
            }
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Waits (up to `within`) until `more` requests beyond `since`
    /// succeeded; whether they did.
    async fn passed(&self, since: u64, more: u64, within: Duration) -> bool {
        eventually(within, || self.ok() >= since + more).await
    }

    fn report(&self) -> String {
        format!(
            "{} ok, {} failed; first failure: {:?}",
            self.ok(),
            self.failed(),
            self.first_failure.lock().unwrap()
        )
    }
}

async fn get_ok(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let r = client.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    let status = r.status();
    let body = r.text().await.map_err(|e| format!("body: {e:?}"))?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{status}: {body}"))
    }
}

/// Starts `each(n)` as a task about `per_sec` times a second until `stop`,
/// then waits for the tasks; returns how many it started.
fn paced<F, Fut>(per_sec: u32, stop: Arc<AtomicBool>, mut each: F) -> tokio::task::JoinHandle<u64>
where
    F: FnMut(u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1) / per_sec);
        let mut n = 0u64;
        let mut running = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            n += 1;
            running.push(tokio::spawn(each(n)));
            if running.len() > 256 {
                running.retain(|t| !t.is_finished());
            }
        }
        for t in running {
            let _ = t.await;
        }
        n
    })
}

/// Sends GET `path` at about `per_sec` until `stop`, alternating keep-alive
/// and fresh connections.
fn pass_through_load(
    base: String,
    path: &'static str,
    per_sec: u32,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> tokio::task::JoinHandle<u64> {
    let pooled = reqwest::Client::new();
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    paced(per_sec, stop, move |n| {
        let client = if n.is_multiple_of(2) { &pooled } else { &fresh }.clone();
        let url = format!("{base}{path}");
        let tally = tally.clone();
        async move { tally.record(get_ok(&client, &url).await.map(drop)) }
    })
}

/// Sends chats at about `per_sec` until `stop`; each answer must echo its
/// own message. Returns how many were sent.
fn chat_load(
    base: String,
    per_sec: u32,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> tokio::task::JoinHandle<u64> {
    let client = reqwest::Client::new();
    paced(per_sec, stop, move |n| {
        let client = client.clone();
        let url = format!("{base}/eai-gateway/chat");
        let tally = tally.clone();
        // Many users, so that chats run side by side.
        let user = format!("55219{:08}", n % 200);
        let message = format!("message {n}");
        async move {
            let outcome = async {
                let r = client
                    .post(&url)
                    .json(&json!({"user_number": user, "message": message}))
                    .send()
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                let status = r.status();
                let body: Value = r.json().await.map_err(|e| format!("body: {e:?}"))?;
                if status != 200 {
                    return Err(format!("{status}: {body}"));
                }
                let text = answer_text(&body);
                if text.contains(&message) {
                    Ok(())
                } else {
                    Err(format!("answer {text:?} is not for {message:?}"))
                }
            }
            .await;
            tally.record(outcome);
        }
    })
}

fn upstream_yaml(name: &str, backends: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "  {name}:\n    backends: [{}]\n    connect_timeout_ms: 1000\n{extra}",
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_a_route_under_traffic_and_refuses_bad_files() {
    let a = TagBackend::start("A").await;
    let b = TagBackend::start("B").await;
    let (_sim, sim_addr) = simulator(20).await;
    let db = TestDb::new(DbKind::Postgres);
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut spec = GatewaySpec::new(Dialect::Eai, &db, sim_addr);
    spec.extra_yaml = format!(
        "upstreams:\n{}default_upstream: a\n",
        upstream_yaml("a", &[a.addr], "")
    );
    spec.log_file = Some(log.path().to_owned());
    let gw = GatewayProcess::start(spec).await;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();

    let stop = Arc::new(AtomicBool::new(false));
    let proxied = Arc::new(Tally::default());
    let chats = Arc::new(Tally::default());
    let load = pass_through_load(gw.url(""), "/x", 100, stop.clone(), proxied.clone());
    let chatting = chat_load(gw.url(""), 20, stop.clone(), chats.clone());
    // Both loads answered before the first reload, so the reloads happen
    // under traffic that works.
    let warm = Duration::from_secs(10);
    assert!(proxied.passed(0, 20, warm).await, "{}", proxied.report());
    assert!(chats.passed(0, 5, warm).await, "{}", chats.report());

    // Before: /b goes to the default upstream.
    let client = reqwest::Client::new();
    assert_eq!(get_ok(&client, &gw.url("/b/x")).await.unwrap(), "A");
    let before = gw.metrics().await;
    assert_eq!(
        before.value("eai_gateway_config_reloads_total", &[("result", "success")]),
        Some(0.0)
    );
    let taken = before
        .value(
            "eai_gateway_config_last_reload_success_timestamp_seconds",
            &[],
        )
        .unwrap();
    assert!(taken >= started - 60.0, "start-up counts as taken: {taken}");

    // A route to a new upstream.
    gw.edit_config(
        "default_upstream: a\n",
        &format!(
            "{}routes:\n  - prefix: /b\n    upstream: b\ndefault_upstream: a\n",
            upstream_yaml("b", &[b.addr], "")
        ),
    );
    let sent = Instant::now();
    gw.signal("HUP");
    let mut answered_within = None;
    while sent.elapsed() < Duration::from_secs(5) {
        if get_ok(&client, &gw.url("/b/x")).await.as_deref() == Ok("B") {
            answered_within = Some(sent.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let within = answered_within.expect("the new route never answered");
    assert!(within < Duration::from_secs(1), "took {within:?}");
    let after = gw.metrics().await;
    assert_eq!(
        after.value("eai_gateway_config_reloads_total", &[("result", "success")]),
        Some(1.0)
    );
    assert!(
        after
            .value(
                "eai_gateway_config_last_reload_success_timestamp_seconds",
                &[]
            )
            .unwrap()
            > taken
    );

    // A file that does not validate changes nothing, and says where.
    let good = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(
        &gw.config_path,
        good.replace("chat:\n", "chat:\n  timeout_seconds: soon\n"),
    )
    .unwrap();
    gw.signal("HUP");
    // A key that needs a restart is refused by name, the rest not taken.
    let failures =
        |m: &Metrics| m.value("eai_gateway_config_reloads_total", &[("result", "failure")]);
    assert!(
        eventually_async(Duration::from_secs(5), || async {
            failures(&gw.metrics().await) == Some(1.0)
        })
        .await
    );
    std::fs::write(
        &gw.config_path,
        format!("threads: 3\n{}", good.replace("prefix: /b", "prefix: /c")),
    )
    .unwrap();
    gw.signal("HUP");
    assert!(
        eventually_async(Duration::from_secs(5), || async {
            failures(&gw.metrics().await) == Some(2.0)
        })
        .await
    );
    assert_eq!(get_ok(&client, &gw.url("/b/x")).await.unwrap(), "B");
    assert_eq!(get_ok(&client, &gw.url("/c/x")).await.unwrap(), "A");

    // "No failure" means something only once traffic ran on the reloaded
    // gateway: a second's worth of each load after the last reload.
    let (proxied_then, chats_then) = (proxied.ok(), chats.ok());
    let after_reloads = Duration::from_secs(15);
    assert!(
        proxied.passed(proxied_then, 100, after_reloads).await,
        "pass-through stalled after the reloads: {}",
        proxied.report()
    );
    assert!(
        chats.passed(chats_then, 20, after_reloads).await,
        "chats stalled after the reloads: {}",
        chats.report()
    );
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let sent_chats = chatting.await.unwrap();
    assert_eq!(proxied.failed(), 0, "pass-through: {}", proxied.report());
    assert_eq!(chats.failed(), 0, "chats: {}", chats.report());
    assert!(
        proxied.ok() > 100 && sent_chats > 20,
        "{} / {sent_chats}",
        proxied.report()
    );
    let logged = std::fs::read_to_string(log.path()).unwrap();
    assert!(logged.contains("chat.timeout_seconds"), "{logged}");
    assert!(
        logged.contains("threads: cannot change while running"),
        "{logged}"
    );
}

/// Polls an async condition until it holds or `within` passes.
async fn eventually_async<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_tokens_and_chat_settings() {
    let (_sim, sim_addr) = simulator(300).await;
    let db = TestDb::new(DbKind::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "old-token-0123456789\n").unwrap();
    let mut spec = GatewaySpec::new(Dialect::Eai, &db, sim_addr);
    spec.extra_yaml = format!("auth:\n  tokens_file: {}\n", tokens.display());
    spec.chat_extra = "  timeout_seconds: 30\n".into();
    let gw = GatewayProcess::start(spec).await;
    let client = reqwest::Client::new();
    let chat = |token: &'static str| {
        client
            .post(gw.url("/eai-gateway/chat"))
            .bearer_auth(token)
            .json(&json!({"user_number": "5521900000001", "message": "hi"}))
            .send()
    };
    assert_eq!(chat("old-token-0123456789").await.unwrap().status(), 200);

    // A chat in progress keeps the 30 s budget it started with.
    let long = tokio::spawn(
        client
            .post(gw.url("/eai-gateway/chat"))
            .bearer_auth("old-token-0123456789")
            .json(&json!({"user_number": "5521900000002", "message": "[delay=1500] slow"}))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(&tokens, "new-token-0123456789\n").unwrap();
    gw.edit_config("timeout_seconds: 30", "timeout_seconds: 0.5");
    gw.signal("HUP");
    let m = || async {
        gw.metrics()
            .await
            .value("eai_gateway_config_reloads_total", &[("result", "success")])
    };
    assert!(eventually_async(Duration::from_secs(5), || async { m().await == Some(1.0) }).await);

    // Auth checked on a route that does not depend on the chat budget.
    let lookup = |token: &'static str| {
        client
            .get(gw.url("/eai-gateway/agent/5521900000001"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(lookup("old-token-0123456789").await.unwrap().status(), 401);
    assert_eq!(lookup("new-token-0123456789").await.unwrap().status(), 200);
    assert_eq!(long.await.unwrap().unwrap().status(), 200);
    // The next chat has the new, shorter budget.
    let r = client
        .post(gw.url("/eai-gateway/chat"))
        .bearer_auth("new-token-0123456789")
        .json(&json!({"user_number": "5521900000003", "message": "[delay=1500] slow"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_backend_leaves_rotation_and_returns() {
    let mut backends = vec![
        TagBackend::start("one").await,
        TagBackend::start("two").await,
        TagBackend::start("three").await,
    ];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let db = TestDb::new(DbKind::Sqlite);
    let (_sim, sim_addr) = simulator(10).await;
    let mut spec = GatewaySpec::new(Dialect::Eai, &db, sim_addr);
    let interval_ms = 300;
    spec.extra_yaml = format!(
        "upstreams:\n{}default_upstream: web\n",
        upstream_yaml(
            "web",
            &addrs,
            &format!(
                "    connect_timeout_ms: 5000\n    health_check:\n      path: /health\n      interval_ms: {interval_ms}\n      timeout_ms: 200\n      healthy_after: 1\n      unhealthy_after: 1\n"
            )
        )
        .replace("    connect_timeout_ms: 1000\n", "")
    );
    let gw = GatewayProcess::start(spec).await;
    let up = |m: &Metrics, b: SocketAddr| {
        m.value(
            "eai_gateway_upstream_backend_up",
            &[("upstream", "web"), ("backend", &b.to_string())],
        )
    };
    let m = gw.metrics().await;
    for b in &addrs {
        assert_eq!(up(&m, *b), Some(1.0));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let before = Arc::new(Tally::default());
    let load = pass_through_load(gw.url(""), "/x", 100, stop.clone(), before.clone());
    // The load reaches every backend before one dies, so "no request
    // failed" below covers the death.
    assert!(
        before.passed(0, 30, Duration::from_secs(10)).await,
        "{}",
        before.report()
    );
    backends[1].kill();
    // No request may fail meanwhile: a refused connection is retried on
    // another backend. Out of rotation is awaited, not slept for: on a
    // loaded machine a check may run late, and the assertions after it
    // would then blame the gateway for the test's haste.
    let gone = eventually_async(Duration::from_secs(10), || async {
        up(&gw.metrics().await, addrs[1]) == Some(0.0)
    })
    .await;
    assert!(gone, "the dead backend never failed its health check");
    let client = reqwest::Client::new();
    // Out of rotation means never tried: connect failures stop growing
    // (with the backend still in rotation, round robin would try it for a
    // third of these requests and of the background load).
    let failures = || async {
        gw.metrics()
            .await
            .value(
                "eai_gateway_upstream_connect_failures_total",
                &[("upstream", "web")],
            )
            .unwrap()
    };
    let failed_before = failures().await;
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..60 {
        *seen
            .entry(get_ok(&client, &gw.url("/x")).await.unwrap())
            .or_default() += 1;
    }
    assert!(!seen.contains_key("two"), "{seen:?}");
    assert_eq!(
        failures().await,
        failed_before,
        "the dead backend was still tried"
    );

    backends[1].restart().await;
    let back = eventually_async(Duration::from_secs(5), || async {
        get_ok(&client, &gw.url("/x")).await.as_deref() == Ok("two")
    })
    .await;
    assert!(back, "the restarted backend never came back");
    assert_eq!(up(&gw.metrics().await, addrs[1]), Some(1.0));
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(before.failed(), 0, "{}", before.report());

    // Every backend down: a prompt 502 with a detail, not a connect timeout.
    for b in &mut backends {
        b.kill();
    }
    assert!(
        eventually_async(Duration::from_secs(3), || async {
            let m = gw.metrics().await;
            addrs.iter().all(|b| up(&m, *b) == Some(0.0))
        })
        .await
    );
    let asked = Instant::now();
    let r = client.get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(asked.elapsed() < Duration::from_secs(2));
    let body: Value = r.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("web"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_is_retried_on_another_backend() {
    let live = TagBackend::start("live").await;
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let db = TestDb::new(DbKind::Sqlite);
    let (_sim, sim_addr) = simulator(10).await;
    let mut spec = GatewaySpec::new(Dialect::Eai, &db, sim_addr);
    spec.extra_yaml = format!(
        "upstreams:\n{}default_upstream: web\n",
        upstream_yaml("web", &[dead, live.addr], "")
    );
    let gw = GatewayProcess::start(spec).await;
    let client = reqwest::Client::new();
    // Round robin sends every other request to the dead backend first.
    for _ in 0..20 {
        let r = client
            .post(gw.url("/x"))
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "live");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_hands_over_the_sockets_under_load() {
    let _heavy = HEAVY.lock().await;
    let backend = plain_backend().await;
    let (sim, sim_addr) = simulator(300).await;
    let db = TestDb::new(DbKind::Postgres);
    let mut spec = GatewaySpec::new(Dialect::Eai, &db, sim_addr);
    spec.replace_shutdown = true;
    spec.extra_yaml = format!(
        "shutdown:\n  drain_seconds: 30\nlimits:\n  max_inflight_chats: 0\n  user_rate_per_min: 0\nupstreams:\n{}default_upstream: web\n",
        upstream_yaml("web", &[backend], "")
    );
    // The test is about the hand-over, not the database: on a loaded
    // 2-core machine a debug build may wait seconds for a connection.
    spec.database_extra = "  max_connections: 32\n  acquire_timeout_ms: 20000\n".into();
    let mut old = GatewayProcess::start(spec).await;

    let stop = Arc::new(AtomicBool::new(false));
    let proxied = Arc::new(Tally::default());
    let chats = Arc::new(Tally::default());
    let load = pass_through_load(gw_base(&old), "/x", 500, stop.clone(), proxied.clone());
    let chatting = chat_load(gw_base(&old), 50, stop.clone(), chats.clone());
    let began = Instant::now();

    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut new = old.start_successor();
    // The successor asks for the sockets once a second for 5 s.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    old.signal("QUIT");
    let old_status = tokio::task::spawn_blocking(move || {
        let status = old.child.wait().unwrap();
        (status, old)
    });

    tokio::time::sleep(Duration::from_secs(30).saturating_sub(began.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let sent_chats = chatting.await.unwrap();
    let (status, _old) = old_status.await.unwrap();
    assert!(status.success(), "old process: {status}");
    assert!(
        new.child.try_wait().unwrap().is_none(),
        "the new process must keep serving"
    );

    eprintln!(
        "across the upgrade: pass-through {}; chats {}",
        proxied.report(),
        chats.report()
    );
    assert_eq!(proxied.failed(), 0, "pass-through: {}", proxied.report());
    assert_eq!(chats.failed(), 0, "chats: {}", chats.report());
    assert!(proxied.ok() > 5_000, "{}", proxied.report());
    assert_eq!(chats.ok(), sent_chats);
    // Every chat reached its agent exactly once.
    assert_eq!(sim.stats().messages, sent_chats);
    // The metrics listener moved too.
    assert!(
        new.metrics_text()
            .await
            .contains("eai_gateway_requests_total")
    );
    assert!(new.terminate().success());
}

fn gw_base(gw: &GatewayProcess) -> String {
    gw.url("")
}
