//! Per-user limits counted in a Redis Cluster: a real three-node cluster
//! started by the test (`redis-server --cluster-enabled yes` × 3 and
//! `redis-cli --cluster create`), three replicas sharing one user's rate
//! through it, the fallback while a node is dead, and the count shared
//! again once the node is back.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::shared_limits::{chat_status, fresh_user};
use super::support::*;

/// How soon the surviving nodes call a silent one failed (the default,
/// 15 s, would make the test wait that long for CLUSTERDOWN).
const NODE_TIMEOUT_MS: &str = "1000";

struct Node {
    port: u16,
    /// The cluster bus port, given explicitly: the default (port + 10000)
    /// may lie above 65535 for a port the kernel handed out.
    bus: u16,
    child: Option<Child>,
}

/// Three primaries, no replicas, on free ports; their files in a
/// temporary directory. Every process is killed on drop.
pub(super) struct RedisCluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

impl RedisCluster {
    pub(super) async fn start() -> Self {
        let mut ports = Vec::new();
        while ports.len() < 6 {
            let port = free_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let mut cluster = Self {
            dir: tempfile::tempdir().unwrap(),
            nodes: ports
                .chunks(2)
                .map(|p| Node {
                    port: p[0],
                    bus: p[1],
                    child: None,
                })
                .collect(),
        };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i).await;
        }
        let mut create = tokio::process::Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_state("ok", 0..3).await;
        cluster
    }

    /// Starts node `i` (again: the same port and nodes.conf, so that it
    /// rejoins as the same node) and waits until it answers.
    async fn spawn(&mut self, i: usize) {
        let dir = self.dir.path();
        let node = &mut self.nodes[i];
        let port = node.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-port", &node.bus.to_string()])
            .arg("--cluster-config-file")
            .arg(dir.join(format!("nodes-{port}.conf")))
            .args(["--cluster-node-timeout", NODE_TIMEOUT_MS])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join(format!("redis-{port}.log")))
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        node.child = Some(child);
        let port = node.port;
        let deadline = Instant::now() + Duration::from_secs(10);
        while cli(port, &["PING"]).await != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server :{port} did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills node `i` as a crash would (SIGKILL).
    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Waits until every node in `which` reports `cluster_state:STATE`.
    async fn wait_state(&self, state: &str, which: impl IntoIterator<Item = usize> + Clone) {
        let want = format!("cluster_state:{state}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut all = true;
            for i in which.clone() {
                all &= cli(self.nodes[i].port, &["CLUSTER", "INFO"])
                    .await
                    .contains(&want);
            }
            if all {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster never said {want}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `redis://` URLs of every node, comma-separated.
    pub(super) fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node (by index) that serves the hash slot of `key`, as the
    /// cluster itself says (`CLUSTER KEYSLOT`, `CLUSTER NODES`); asked of
    /// the first node, which must be up.
    async fn owner(&self, key: &str) -> usize {
        let port = self.nodes[0].port;
        let slot: u16 = cli(port, &["CLUSTER", "KEYSLOT", key])
            .await
            .parse()
            .unwrap();
        let nodes = cli(port, &["CLUSTER", "NODES"]).await;
        // `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slots>…`
        let owner = nodes
            .lines()
            .find(|line| {
                line.split(' ').skip(8).any(|range| {
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    match (lo.parse::<u16>(), hi.parse::<u16>()) {
                        (Ok(lo), Ok(hi)) => (lo..=hi).contains(&slot),
                        _ => false,
                    }
                })
            })
            .unwrap_or_else(|| panic!("no node serves slot {slot}:\n{nodes}"));
        let addr = owner.split(' ').nth(1).unwrap();
        let owner_port: u16 = addr
            .split('@')
            .next()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap();
        self.nodes
            .iter()
            .position(|n| n.port == owner_port)
            .unwrap()
    }

    /// Entries the cluster holds under the user's rate key (`redis-cli -c`
    /// follows the cluster to the node that holds it).
    pub(super) async fn counted(&self, user: &str) -> i64 {
        let key = rate_key(user);
        let out = cli_args(self.nodes[0].port, &["-c"], &["ZCARD", &key]).await;
        out.parse().unwrap_or_else(|_| panic!("ZCARD {key}: {out}"))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// `redis-cli -p PORT ARGS…`: its output, trimmed ("" when it cannot
/// connect).
async fn cli(port: u16, args: &[&str]) -> String {
    cli_args(port, &[], args).await
}

async fn cli_args(port: u16, options: &[&str], args: &[&str]) -> String {
    let out = tokio::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(options)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The user's rate key: the pseudonym in braces, a hash tag.
fn rate_key(user: &str) -> String {
    let pseudonym = test_user_rules().parse(user).unwrap().pseudonym();
    format!("eai-gateway:user-rate:{{{pseudonym}}}")
}

/// A fresh user whose key lives on a node that `keep` accepts.
async fn user_on(cluster: &RedisCluster, keep: impl Fn(usize) -> bool) -> String {
    loop {
        let user = fresh_user();
        if keep(cluster.owner(&rate_key(&user)).await) {
            return user;
        }
    }
}

/// `n` chats of `user` round robin over `replicas`: how many answered, and
/// every status that was neither 200 nor 429 with `Retry-After`.
async fn round_robin(replicas: &[GatewayProcess], user: &str, n: usize) -> (usize, Vec<u16>) {
    let mut answered = 0;
    let mut other = Vec::new();
    for i in 0..n {
        match chat_status(&replicas[i % replicas.len()], user).await {
            (200, _) => answered += 1,
            (429, true) => {}
            (status, _) => other.push(status),
        }
    }
    (answered, other)
}

async fn fallbacks(gw: &GatewayProcess) -> f64 {
    gw.metrics()
        .await
        .value("eai_gateway_redis_fallbacks_total", &[])
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_users_rate_through_a_cluster() {
    let mut cluster = RedisCluster::start().await;
    let (_sim, sim_addr) = simulator(5).await;
    let db = TestDb::new(DbKind::Postgres);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let mut spec = GatewaySpec::new(Dialect::Eai, &db, sim_addr);
        spec.extra_yaml =
            "limits:\n  user_rate_per_min: 20\n  redis_fallback: fail_closed\n".to_owned();
        spec.env
            .push(("EAI_GATEWAY_REDIS_CLUSTER_URLS", cluster.urls()));
        replicas.push(GatewayProcess::start(spec).await);
    }

    // One limit across three replicas, counted under the hash-tagged key;
    // the user's slot is not on the first seed node, so a client that only
    // talks to the node it was given cannot pass.
    let user = user_on(&cluster, |node| node != 0).await;
    let (answered, other) = round_robin(&replicas, &user, 60).await;
    assert_eq!((answered, other), (20, vec![]), "60 chats at 20/min");
    assert_eq!(cluster.counted(&user).await, 20);
    for gw in &replicas {
        assert_eq!(fallbacks(gw).await, 0.0, "the cluster answered every check");
    }

    // The node that holds the user's slot dies: its slot cannot answer, and
    // fail_closed refuses the user's chats on every replica.
    let dead = cluster.owner(&rate_key(&user)).await;
    let elsewhere = user_on(&cluster, |node| node != dead).await;
    assert_eq!(chat_status(&replicas[0], &elsewhere).await, (200, false));
    cluster.kill(dead);
    for gw in &replicas {
        assert_eq!(
            chat_status(gw, &user).await,
            (503, true),
            "slot of a dead node"
        );
        assert_eq!(fallbacks(gw).await, 1.0);
    }

    // Once the others have marked it failed, the whole cluster answers
    // CLUSTERDOWN (full slot coverage is required by default): a user whose
    // slot lives on a surviving node falls back too.
    let alive: Vec<usize> = (0..3).filter(|i| *i != dead).collect();
    cluster.wait_state("fail", alive).await;
    assert_eq!(
        chat_status(&replicas[1], &elsewhere).await,
        (503, true),
        "CLUSTERDOWN"
    );
    assert_eq!(fallbacks(&replicas[1]).await, 2.0);

    // The node comes back with its slots; every replica uses the cluster
    // again within a few seconds, without a restart.
    cluster.spawn(dead).await;
    cluster.wait_state("ok", 0..3).await;
    let probe = user_on(&cluster, |node| node == dead).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    for gw in &replicas {
        while chat_status(gw, &probe).await.0 == 503 {
            assert!(
                Instant::now() < deadline,
                "the gateway never used the cluster again"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Exact again, for a new user on the node that came back.
    let user = user_on(&cluster, |node| node == dead).await;
    let (answered, other) = round_robin(&replicas, &user, 30).await;
    assert_eq!((answered, other), (20, vec![]), "30 chats at 20/min");
    assert_eq!(cluster.counted(&user).await, 20);
}
