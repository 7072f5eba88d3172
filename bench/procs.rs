//! The processes the benchmark runs (simulator, gateways, nginx, the
//! pingora floor) and what /proc says about them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PG_URL: &str = "postgres://root@127.0.0.1:5432/test";

pub struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss_mb(&self) -> f64 {
        proc_rss_mb(self.pid()).unwrap_or(0.0)
    }

    /// User + system CPU seconds so far.
    pub fn cpu_secs(&self) -> f64 {
        proc_stat(self.pid()).map_or(0.0, |(_, cpu)| cpu)
    }
}

/// Resident set size of a process in MB, from /proc.
pub fn proc_rss_mb(pid: u32) -> Option<f64> {
    proc_status_mb(pid, "VmRSS:")
}

/// RSS split into anonymous memory (the heap: what chats cost) and
/// file-backed pages (mostly the binary's code, whose count moves by a
/// megabyte or two with the code layout of each build).
pub fn proc_rss_split_mb(pid: u32) -> Option<(f64, f64)> {
    Some((
        proc_status_mb(pid, "RssAnon:")?,
        proc_status_mb(pid, "RssFile:")?,
    ))
}

fn proc_status_mb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
}

/// Parent pid and user + system CPU seconds of a process, from /proc.
fn proc_stat(pid: u32) -> Option<(u32, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" of the command name: ppid is the 2nd, utime the
    // 12th, stime the 13th.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    let ppid = fields.get(1)?.parse().ok()?;
    Some((ppid, (field(11)? + field(12)?) / clock_ticks()))
}

/// CPU seconds of `pid` and its direct children (nginx's workers).
pub fn tree_cpu_secs(pid: u32) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| Some((p, proc_stat(p)?)))
        .filter(|&(p, (ppid, _))| p == pid || ppid == pid)
        .map(|(_, (_, cpu))| cpu)
        .sum()
}

/// Starts a helper process and gives it half a second to listen.
fn launch(cmd: &mut Command, name: &'static str) -> Option<Proc> {
    let child = cmd.spawn().ok()?;
    std::thread::sleep(Duration::from_millis(500));
    Some(Proc { child, name })
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master then takes its workers down with it
        // (SIGKILL would orphan them).
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("stopped {}", self.name);
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn gateway_bin() -> PathBuf {
    // A wrapper (heaptrack, perf) can stand in for the binary when profiling.
    if let Some(bin) = std::env::var_os("BENCH_GATEWAY_BIN") {
        return bin.into();
    }
    // target/release/examples/bench → target/release/eai-gateway
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("eai-gateway")
}

pub async fn wait_up(url: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if reqwest::get(url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not come up at {url}");
}

pub async fn start_simulator() -> (Proc, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(gateway_bin())
        .args([
            "simulate",
            "--listen",
            &addr.to_string(),
            "--delay-ms",
            "0",
            "--threads",
            "2",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("simulator");
    wait_up(&format!("http://{addr}/sim/stats"), "simulator").await;
    (
        Proc {
            child,
            name: "simulator",
        },
        addr,
    )
}

pub struct Gateway {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub fn chat_url(&self) -> String {
        format!("http://{}/eai-gateway/chat", self.addr)
    }
}

pub async fn start_gateway(
    name: &'static str,
    dialect: &str,
    delivery: &str,
    sim: SocketAddr,
) -> Gateway {
    start_gateway_with(name, dialect, delivery, sim, NO_LIMITS).await
}

/// Abuse limits off: the benchmark measures the gateway, not them.
const NO_LIMITS: &str = "{user_rate_per_min: 0, user_queue_max: 0, max_inflight_chats: 0}";

/// `start_gateway` with this `limits:` section (YAML flow mapping).
pub async fn start_gateway_with(
    name: &'static str,
    dialect: &str,
    delivery: &str,
    sim: SocketAddr,
    limits: &str,
) -> Gateway {
    let config = gateway_config(name, dialect, delivery, sim, limits, "");
    let mut run = Command::new(gateway_bin());
    run.args(["run", "--config"])
        .arg(&config.1)
        .env_remove("EAI_GATEWAY_LISTEN");
    launch_gateway(name, run, config).await
}

/// A gateway with the default config plus `extra` YAML (top-level keys).
pub async fn start_gateway_extra(name: &'static str, sim: SocketAddr, extra: &str) -> Gateway {
    let config = gateway_config(name, "eai", "poll", sim, NO_LIMITS, extra);
    let mut run = Command::new(gateway_bin());
    run.args(["run", "--config"])
        .arg(&config.1)
        .env_remove("EAI_GATEWAY_LISTEN");
    launch_gateway(name, run, config).await
}

/// `start_gateway_with`, its pool through the transaction pooler at
/// `pooled` (`statement_cache: 0`), LISTEN and migrations direct.
pub async fn start_gateway_pooled(
    name: &'static str,
    sim: SocketAddr,
    limits: &str,
    pooled: &str,
) -> Gateway {
    let config = gateway_config(name, "eai", "poll", sim, limits, "");
    let direct = format!("url: '{PG_URL}',");
    let yaml = std::fs::read_to_string(&config.1).unwrap().replacen(
        &direct,
        &format!("url: '{pooled}', direct_url: '{PG_URL}', statement_cache: 0,"),
        1,
    );
    std::fs::write(&config.1, yaml).unwrap();
    let mut run = Command::new(gateway_bin());
    run.args(["run", "--config"])
        .arg(&config.1)
        .env_remove("EAI_GATEWAY_LISTEN")
        .env_remove("DATABASE_DIRECT_URL");
    launch_gateway(name, run, config).await
}

/// The gateway embedded in a host proxy of its own (`examples/embed.rs`,
/// built beside this binary by bench/run.sh), with the config of
/// `start_gateway`; the host proxies everything else to the simulator.
pub async fn start_embedded(name: &'static str, sim: SocketAddr) -> Gateway {
    let config = gateway_config(name, "eai", "poll", sim, NO_LIMITS, "");
    let bin = std::env::current_exe()
        .expect("current exe")
        .with_file_name("embed");
    let mut host = Command::new(bin);
    host.arg(&config.1)
        .arg(config.2.to_string())
        .arg(sim.to_string())
        .arg(config.3.to_string());
    launch_gateway(name, host, config).await
}

/// Starts `command` (a gateway reading the config of `gateway_config`)
/// and waits until it is ready.
async fn launch_gateway(
    name: &'static str,
    mut command: Command,
    (dir, _config, addr, metrics): (tempfile::TempDir, PathBuf, SocketAddr, SocketAddr),
) -> Gateway {
    let child = command
        .env("RUST_LOG", "error")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    wait_up(&format!("http://{addr}/readyz"), name).await;
    Gateway {
        proc: Proc { child, name },
        addr,
        metrics,
        _dir: dir,
    }
}

/// A config file for one gateway of the benchmark, in a directory of its
/// own, with the addresses it listens on.
fn gateway_config(
    name: &str,
    dialect: &str,
    delivery: &str,
    sim: SocketAddr,
    limits: &str,
    extra: &str,
) -> (tempfile::TempDir, PathBuf, SocketAddr, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let schema = format!("bench_{}_{}", std::process::id(), name.replace('-', "_"));
    // A 15 s database wait instead of 3 s: 10,000 new users arriving at
    // 1,000/s queue for the 32 connections on this 2-core machine, and the
    // memory phase is about memory, not about how fast PostgreSQL inserts.
    // Worker threads of the gateway (default 2, one per core here).
    let threads = std::env::var("BENCH_GATEWAY_THREADS").unwrap_or_else(|_| "2".into());
    let yaml = format!(
        "listen: '{addr}'\nmetrics_listen: '{metrics}'\nthreads: {threads}\nshutdown: {{drain_seconds: 1}}\n\
         database: {{url: '{PG_URL}', schema: {schema}, max_connections: 32, acquire_timeout_ms: 15000}}\n\
         agent_service: {{dialect: {dialect}, url: 'http://{sim}', letta: {{delivery: {delivery}}}}}\n\
         limits: {limits}\nusers: {{pseudonym_key: pseudonyms-of-the-benchmark}}\n\
         upstreams: {{backend: {{backends: ['{sim}']}}}}\ndefault_upstream: backend\n{extra}"
    );
    let config = dir.path().join("gateway.yaml");
    std::fs::write(&config, yaml).unwrap();
    (dir, config, addr, metrics)
}

/// nginx as a plain reverse proxy to the same backend, when it is installed.
pub fn start_nginx(backend: SocketAddr) -> Option<(Proc, SocketAddr, tempfile::TempDir)> {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let dir = tempfile::tempdir().ok()?;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().ok()?;
    let p = dir.path().display();
    let conf = format!(
        "worker_processes 2;\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;\ndaemon off;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
           fastcgi_temp_path {p}/fcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
           upstream backend {{ server {backend}; keepalive 128; }}\n\
           server {{\n    listen {addr};\n    location / {{\n      proxy_pass http://backend;\n\
               proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).ok()?;
    let proc = launch(
        Command::new(bin)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            .stderr(Stdio::null()),
        "nginx",
    )?;
    Some((proc, addr, dir))
}

/// pingora-proxy alone (`bench/pingora_floor.rs`) in front of the same backend.
pub fn start_floor(backend: SocketAddr) -> Option<(Proc, SocketAddr)> {
    // Built beside this binary by bench/run.sh.
    let bin = std::env::current_exe()
        .ok()?
        .with_file_name("pingora_floor");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().ok()?;
    let proc = launch(
        Command::new(bin)
            .arg(addr.to_string())
            .arg(backend.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "pingora-floor",
    )?;
    Some((proc, addr))
}
