//! Test fixtures: real processes and real databases on loopback. Every test
//! gets its own ports, its own PostgreSQL schema or SQLite file, and its own
//! simulator, so tests run in parallel.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use eai_gateway::sim::{SimSettings, Simulator};
use serde_json::{Value, json};

pub use super::pg_server::url as pg_url;

/// The pseudonym key of every gateway started from a generated config
/// (`run` refuses the built-in one).
pub const TEST_PSEUDONYM_KEY: &str = "pseudonyms-of-the-test-suite";

/// The user rules those gateways apply: pseudonyms as they compute them.
pub fn test_user_rules() -> std::sync::Arc<eai_gateway::ids::UserRules> {
    eai_gateway::ids::UserRules::new(&eai_gateway::settings::UserSettings {
        pseudonym_key: TEST_PSEUDONYM_KEY.into(),
        ..Default::default()
    })
}

/// Held by the tests that load the machine for many seconds (the 30 s
/// upgrade under load, the Prometheus run), so that on a 2-core machine
/// they do not starve each other; lighter tests still run beside them.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A port nobody listens on right now, and not handed out before in this
/// process: the kernel may offer a just-released port again, and two calls
/// in a row (a listener and its metrics listener) must not get the same.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Eai,
    Letta,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Self::Eai => "eai",
            Self::Letta => "letta",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbKind {
    Postgres,
    Sqlite,
}

/// One test's database: a fresh PostgreSQL schema or SQLite file.
pub struct TestDb {
    pub kind: DbKind,
    pub url: String,
    pub schema: Option<String>,
    _dir: tempfile::TempDir,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    pub fn new(kind: DbKind) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        match kind {
            DbKind::Postgres => {
                let schema = format!(
                    "t_{}_{}_{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::Relaxed),
                    fastrand::u32(..)
                );
                Self {
                    kind,
                    url: pg_url(),
                    schema: Some(schema),
                    _dir: dir,
                }
            }
            DbKind::Sqlite => Self {
                kind,
                url: format!("sqlite://{}", dir.path().join("gw.db").display()),
                schema: None,
                _dir: dir,
            },
        }
    }

    /// The `database:` settings of this test's database.
    pub fn settings(&self) -> eai_gateway::settings::DatabaseSettings {
        let url = eai_gateway::settings::DatabaseUrl::parse(&self.url).expect("test database url");
        eai_gateway::settings::DatabaseSettings {
            url,
            schema: self.schema.clone(),
            ..Default::default()
        }
    }

    /// YAML `database:` section, with `extra` lines (indented) appended.
    pub fn yaml_with(&self, extra: &str) -> String {
        let schema = match &self.schema {
            Some(s) => format!("  schema: {s}\n"),
            None => String::new(),
        };
        format!("database:\n  url: 'sqlite://unused.db'\n{schema}{extra}")
    }

    pub fn yaml(&self) -> String {
        self.yaml_with("")
    }

    /// Runs one statement in this test's PostgreSQL database; the number
    /// of rows it returned.
    pub async fn execute(&self, sql: &str) -> usize {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.url)
            .await
            .expect("pg connect");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_all(&pool)
            .await
            .expect("statement");
        pool.close().await;
        rows.len()
    }

    /// Runs statements in this test's own schema or file, as another
    /// service sharing the database would (the schema is created if need be).
    pub async fn run_sql(&self, statements: &[&str]) {
        match self.kind {
            DbKind::Postgres => {
                let schema = self.schema.clone().unwrap_or_default();
                self.execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                    .await;
                let opts: sqlx::postgres::PgConnectOptions = self.url.parse().expect("pg url");
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(opts.options([("search_path", schema.as_str())]))
                    .await
                    .expect("pg connect");
                for sql in statements {
                    sqlx::query(sqlx::AssertSqlSafe(*sql))
                        .execute(&pool)
                        .await
                        .unwrap_or_else(|e| panic!("{sql}: {e}"));
                }
                pool.close().await;
            }
            DbKind::Sqlite => {
                let opts: sqlx::sqlite::SqliteConnectOptions =
                    self.url.parse().expect("sqlite url");
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(opts.create_if_missing(true))
                    .await
                    .expect("sqlite connect");
                for sql in statements {
                    sqlx::query(sqlx::AssertSqlSafe(*sql))
                        .execute(&pool)
                        .await
                        .unwrap_or_else(|e| panic!("{sql}: {e}"));
                }
                pool.close().await;
            }
        }
    }

    /// Rows in the mapping table, read directly.
    pub async fn mappings(&self) -> Vec<(String, String)> {
        use sqlx::Row;
        let sql = "SELECT user_number, agent_id FROM user_agents ORDER BY user_number";
        match self.kind {
            DbKind::Postgres => {
                let schema = self.schema.clone().unwrap_or_default();
                let opts: sqlx::postgres::PgConnectOptions = self.url.parse().expect("pg url");
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(opts.options([("search_path", schema.as_str())]))
                    .await
                    .expect("pg connect");
                let rows = sqlx::query(sql).fetch_all(&pool).await.expect("select");
                pool.close().await;
                rows.iter().map(|r| (r.get(0), r.get(1))).collect()
            }
            DbKind::Sqlite => {
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect(&self.url)
                    .await
                    .expect("sqlite connect");
                let rows = sqlx::query(sql).fetch_all(&pool).await.expect("select");
                pool.close().await;
                rows.iter().map(|r| (r.get(0), r.get(1))).collect()
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(schema) = self.schema.clone() else {
            return;
        };
        let url = self.url.clone();
        // Best effort; a leftover schema only costs disk.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await
                    .ok()?;
                let drop = sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
                sqlx::query(drop).execute(&pool).await.ok()?;
                pool.close().await;
                Some(())
            })
        })
        .join();
    }
}

/// A config file for the operator commands (`mappings`, `agents`,
/// `migrate`): the agent service in `dialect` at `agent`, this test's
/// database.
pub fn command_config(
    dir: &tempfile::TempDir,
    db: &TestDb,
    dialect: &str,
    agent: SocketAddr,
) -> std::path::PathBuf {
    let path = dir.path().join(format!("{dialect}-commands.yaml"));
    let yaml = format!(
        "agent_service:\n  dialect: {dialect}\n  url: http://{agent}\n{}",
        db.yaml()
    );
    std::fs::write(&path, yaml).expect("write config");
    path
}

/// `eai-gateway ARGS…` as an operator runs it against this test's
/// database: its exit code and everything it printed. Awaited, so that a
/// simulator in this process answers meanwhile.
pub async fn operator_command(db: &TestDb, args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_eai-gateway"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("EAI_GATEWAY_PSEUDONYM_KEY", TEST_PSEUDONYM_KEY)
        .env("RUST_LOG", "warn")
        .env_remove("AGENT_SERVICE_URL")
        .env_remove("AGENT_SERVICE_DIALECT")
        .output()
        .await
        .expect("run eai-gateway");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The bundled simulator, in this test's process on its own port.
pub async fn simulator(delay_ms: u64) -> (Simulator, SocketAddr) {
    let sim = Simulator::new(SimSettings::with_delay(delay_ms));
    let addr = sim.clone().spawn("127.0.0.1:0").await.expect("simulator");
    (sim, addr)
}

pub struct GatewayProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    /// The file given to `run --config`: rewrite it, then `signal("HUP")`.
    pub config_path: std::path::PathBuf,
    /// Where its output goes: shown when the test fails, so that a passing
    /// run is quiet about the errors tests provoke on purpose.
    pub log: std::path::PathBuf,
    /// How the process was started, to start its successor (`upgrade`).
    command: (
        Vec<std::ffi::OsString>,
        Vec<(std::ffi::OsString, Option<std::ffi::OsString>)>,
    ),
    _dir: std::sync::Arc<tempfile::TempDir>,
}

pub struct GatewaySpec<'a> {
    pub dialect: Dialect,
    pub db: &'a TestDb,
    pub agent_url: String,
    pub default_upstream: Option<String>,
    /// Appended to the generated YAML.
    pub extra_yaml: String,
    /// Extra lines under `database:`, indented by two spaces.
    pub database_extra: String,
    /// Extra lines under `chat:`, indented by two spaces.
    pub chat_extra: String,
    /// Extra lines under `agent_service:`, indented by two spaces.
    pub agent_extra: String,
    /// Leave `shutdown:` to `extra_yaml`.
    pub replace_shutdown: bool,
    /// Extra environment variables.
    pub env: Vec<(&'static str, String)>,
    /// Capture the gateway's JSON logs (info level) into this file.
    pub log_file: Option<std::path::PathBuf>,
    /// Run with this config file instead of a generated one.
    pub config_file: Option<std::path::PathBuf>,
}

impl<'a> GatewaySpec<'a> {
    pub fn new(dialect: Dialect, db: &'a TestDb, agent: SocketAddr) -> Self {
        Self {
            dialect,
            db,
            agent_url: format!("http://{agent}"),
            default_upstream: None,
            extra_yaml: String::new(),
            database_extra: String::new(),
            chat_extra: String::new(),
            agent_extra: String::new(),
            replace_shutdown: false,
            env: Vec::new(),
            log_file: None,
            config_file: None,
        }
    }
}

impl GatewayProcess {
    /// Starts `eai-gateway run --config FILE` the way operators do: the file
    /// plus the documented environment variables. Waits for `/healthz`.
    pub async fn start(spec: GatewaySpec<'_>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("gateway.yaml");
        let shutdown = if spec.replace_shutdown {
            ""
        } else {
            "shutdown:\n  drain_seconds: 1\n"
        };
        let yaml = format!(
            "agent_service:\n  dialect: eai\n  url: http://127.0.0.1:9\n{}{shutdown}\
             chat:\n  poll:\n    initial_delay_ms: 20\n    max_delay_ms: 200\n{}{}{}",
            spec.agent_extra,
            spec.chat_extra,
            spec.db.yaml_with(&spec.database_extra),
            spec.extra_yaml
        );
        std::fs::write(&config_path, yaml).expect("write config");
        let config_path = spec.config_file.clone().unwrap_or(config_path);
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_eai-gateway"));
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .env("EAI_GATEWAY_LISTEN", addr.to_string())
            .env("EAI_GATEWAY_METRICS_LISTEN", metrics.to_string())
            .env("DATABASE_URL", &spec.db.url)
            .env("AGENT_SERVICE_DIALECT", spec.dialect.name())
            .env("AGENT_SERVICE_URL", &spec.agent_url)
            .env(
                "RUST_LOG",
                // Errors only: most tests run with open routes on purpose, and
                // the start-up warning about that would fill the output.
                std::env::var("EAI_TEST_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdin(Stdio::null());
        if spec.config_file.is_none() {
            // `run` refuses the built-in key; a given file brings its own.
            cmd.env("EAI_GATEWAY_PSEUDONYM_KEY", TEST_PSEUDONYM_KEY);
        }
        if let Some(up) = &spec.default_upstream {
            cmd.env("EAI_GATEWAY_DEFAULT_UPSTREAM", up);
        } else {
            cmd.env_remove("EAI_GATEWAY_DEFAULT_UPSTREAM");
        }
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        let log = match &spec.log_file {
            Some(path) => {
                cmd.env("RUST_LOG", "info")
                    .env("EAI_GATEWAY_LOG_FORMAT", "json");
                path.clone()
            }
            None => dir.path().join("gateway.log"),
        };
        output_to(&mut cmd, &log);
        let command = (
            cmd.get_args().map(ToOwned::to_owned).collect(),
            cmd.get_envs()
                .map(|(k, v)| (k.to_owned(), v.map(ToOwned::to_owned)))
                .collect(),
        );
        let child = cmd.spawn().expect("spawn gateway");
        let mut gw = Self {
            child,
            addr,
            metrics,
            config_path,
            command,
            log,
            _dir: std::sync::Arc::new(dir),
        };
        gw.wait_healthy().await;
        gw
    }

    /// Starts `run --upgrade` with this process's config and environment:
    /// it waits (up to 5 s) for this one to hand over its sockets on SIGQUIT.
    pub fn start_successor(&self) -> Self {
        let (args, envs) = &self.command;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_eai-gateway"));
        cmd.args(args).arg("--upgrade").stdin(Stdio::null());
        for (k, v) in envs {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let log = self
            .log
            .with_extension(format!("{}.log", fastrand::u32(..)));
        output_to(&mut cmd, &log);
        Self {
            child: cmd.spawn().expect("spawn successor"),
            addr: self.addr,
            metrics: self.metrics,
            config_path: self.config_path.clone(),
            command: self.command.clone(),
            log,
            _dir: self._dir.clone(),
        }
    }

    /// Sends a signal (`HUP`, `QUIT`, `TERM`) to the process.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Replaces `from` with `to` in the config file (which must contain it).
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config_path).expect("read config");
        assert!(text.contains(from), "{from:?} not in config:\n{text}");
        std::fs::write(&self.config_path, text.replacen(from, to, 1)).expect("write config");
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = reqwest::Client::new();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("gateway exited during start-up: {status}");
            }
            if let Ok(r) = client.get(self.url("/healthz")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "gateway did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn chat(&self, user: &str, message: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(self.url("/eai-gateway/chat"))
            .json(&json!({"user_number": user, "message": message}))
            .send()
            .await
            .expect("chat request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `DELETE /eai-gateway/agent/{user}`; the status.
    pub async fn forget(&self, user: &str) -> u16 {
        reqwest::Client::new()
            .delete(self.url(&format!("/eai-gateway/agent/{user}")))
            .send()
            .await
            .expect("delete mapping")
            .status()
            .as_u16()
    }

    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// The metrics page, parsed.
    pub async fn metrics(&self) -> Metrics {
        Metrics::parse(&self.metrics_text().await)
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait")
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let output = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- gateway output ({}) ---\n{output}", self.log.display());
        }
    }
}

/// Sends a gateway's standard output and error to `log` (appended).
fn output_to(cmd: &mut Command, log: &std::path::Path) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("gateway log file");
    cmd.stdout(file.try_clone().expect("dup")).stderr(file);
}

/// The agent that answered, from the response envelope.
pub fn answering_agent(body: &Value) -> String {
    body.pointer("/response/data/agent_id")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no agent_id in {body}"))
        .to_owned()
}

/// The assistant's text, from the response envelope.
pub fn answer_text(body: &Value) -> String {
    body.pointer("/response/data/messages")
        .and_then(Value::as_array)
        .and_then(|m| m.iter().find(|m| m["message_type"] == "assistant_message"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_else(|| panic!("no assistant message in {body}"))
        .to_owned()
}

/// Polls `cond` until it holds or `within` passes; returns whether it held.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP forwarder in front of PostgreSQL that a test can cut and restore,
/// to take "the database" away from a gateway without touching the server
/// other tests share.
pub struct DbLink {
    pub port: u16,
    target: SocketAddr,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl DbLink {
    pub async fn start(target: SocketAddr) -> Self {
        let link = Self {
            port: free_port(),
            target,
            tasks: Default::default(),
        };
        link.up().await;
        link
    }

    pub async fn up(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind link");
        let target = self.target;
        let tasks = self.tasks.clone();
        let acceptor = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(acceptor);
    }

    /// Closes the listener and every forwarded connection.
    pub fn down(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Drop for DbLink {
    fn drop(&mut self) {
        self.down();
    }
}

/// A plain HTTP backend answering `backend ok` on every path.
pub async fn plain_backend() -> SocketAddr {
    let app = axum::Router::new().fallback(|| async { "backend ok" });
    // The kernel's own bound (somaxconn) rather than tokio's 1,024: when a
    // successor takes over under load it opens hundreds of backend
    // connections at once, and a SYN dropped from a full queue is resent
    // only after 1 s, which a test's 1 s connect timeout reads as a failure
    // of the gateway.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(4096).expect("listen");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

pub async fn post_chat(client: &reqwest::Client, gw: &GatewayProcess, body: Value) -> (u16, Value) {
    let r = client
        .post(gw.url("/eai-gateway/chat"))
        .json(&body)
        .send()
        .await
        .expect("chat request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Label pairs of one sample, sorted by name.
pub type Labels = Vec<(String, String)>;

/// A Prometheus text page as samples: name, exact label set, value.
pub struct Metrics {
    pub page: String,
    samples: Vec<(String, Labels, f64)>,
}

impl Metrics {
    pub fn parse(page: &str) -> Self {
        let samples = page
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("sample line");
                let value: f64 = value.parse().expect("sample value");
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => {
                        let body = rest.strip_suffix('}').expect("closing brace");
                        let mut labels: Labels = body
                            .split("\",")
                            .filter(|kv| !kv.is_empty())
                            .map(|kv| {
                                let (k, v) = kv.split_once("=\"").expect("label");
                                (k.to_owned(), v.trim_end_matches('"').to_owned())
                            })
                            .collect();
                        labels.sort();
                        (name.to_owned(), labels)
                    }
                    None => (series.to_owned(), Vec::new()),
                };
                (name, labels, value)
            })
            .collect();
        Self {
            page: page.to_owned(),
            samples,
        }
    }

    /// The value of the sample with exactly these labels; None when absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut want: Labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        want.sort();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|(_, _, v)| *v)
    }

    /// Every label set of `name` that has `label` = `value`, e.g. all
    /// outcomes of one operation.
    /// The non-zero samples of `name` with this label (counters with known
    /// labels are exported at 0, so "never happened" is an empty list).
    pub fn with_label(&self, name: &str, label: &str, value: &str) -> Vec<(Labels, f64)> {
        self.samples
            .iter()
            .filter(|(n, l, v)| {
                n == name && *v != 0.0 && l.iter().any(|(k, v)| k == label && v == value)
            })
            .map(|(_, l, v)| (l.clone(), *v))
            .collect()
    }
}

/// One server-sent event as the client saw it, with when it arrived.
#[derive(Debug)]
pub struct Event {
    pub at: Instant,
    pub name: String,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

/// Reads events until the stream ends (or `stop` says so); comments are
/// returned as events named `:`.
pub async fn read_events(mut resp: reqwest::Response, stop: impl Fn(&Event) -> bool) -> Vec<Event> {
    let mut events = Vec::new();
    let mut buf = String::new();
    while let Some(chunk) = resp.chunk().await.expect("stream chunk") {
        buf.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        while let Some(end) = buf.find("\n\n") {
            let raw: String = buf.drain(..end + 2).collect();
            let mut event = Event {
                at: Instant::now(),
                name: String::new(),
                data: String::new(),
            };
            for line in raw.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event.name = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    event.data = v.to_owned();
                } else if line.starts_with(':') {
                    event.name = ":".into();
                }
            }
            let done = stop(&event);
            events.push(event);
            if done {
                return events;
            }
        }
    }
    events
}

pub fn names(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_str()).collect()
}

/// `(route, via)` of the access lines that `keep` selects, once there are
/// `n` of them (or after 5 s): a request's line is written after its
/// response has gone out, so a client can read the answer before the line
/// exists.
pub async fn access_lines_settled(
    log: &std::path::Path,
    n: usize,
    keep: impl Fn(&(String, String)) -> bool,
) -> Vec<(String, String)> {
    let read =
        || -> Vec<(String, String)> { access_lines(log).into_iter().filter(&keep).collect() };
    eventually(Duration::from_secs(5), || read().len() >= n).await;
    read()
}

/// `(route, via)` of every access line in a gateway's JSON log
/// (`GatewaySpec::log_file`): which path served each request.
pub fn access_lines(log: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let fields = v.get("fields")?;
            if fields.get("message")?.as_str()? != "Request." {
                return None;
            }
            let text = |k: &str| fields.get(k)?.as_str().map(str::to_owned);
            Some((text("route")?, text("via")?))
        })
        .collect()
}
