//! What a transaction pooler costs a chat: chat added latency at 200
//! chats/s with the pool connected to PostgreSQL directly (named, cached
//! statements), then through PgBouncer in transaction mode
//! (`statement_cache: 0`: unnamed statements, each store call in a
//! transaction of its own: two more round trips per call).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::load::steady_latency;
use crate::procs::{free_port, start_gateway_pooled, start_gateway_with};
use crate::{Ctx, Rows};

const LIMITS: &str = "{user_rate_per_min: 0, user_queue_max: 0, max_inflight_chats: 0}";

pub async fn run(cx: &Ctx<'_>, rows: &mut Rows) {
    let what = "chat added latency, eai/poll, 200 chats/s, PostgreSQL";
    let Some(bouncer) = PgBouncer::start() else {
        rows.add(
            &format!("{what} through PgBouncer (ms)"),
            "not run: pgbouncer is not installed".into(),
            "—",
            "—",
        );
        return;
    };
    for (phase, name, how) in [
        (10, "pg-direct", "direct"),
        (11, "pg-pooled", "through PgBouncer, transaction mode"),
    ] {
        let gw = if phase == 10 {
            start_gateway_with(name, "eai", "poll", cx.sim, LIMITS).await
        } else {
            start_gateway_pooled(name, cx.sim, LIMITS, &bouncer.url()).await
        };
        let latency = steady_latency(cx, &gw, phase, 300, 200.0).await;
        rows.add(&format!("{what} {how} (ms)"), latency.summary(), "—", "—");
    }
}

/// PgBouncer 1.18+ in transaction mode with 16 server connections to the
/// benchmark's PostgreSQL; stopped on drop.
struct PgBouncer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl PgBouncer {
    fn start() -> Option<Self> {
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        let dir = tempfile::tempdir().ok()?;
        let port = free_port();
        let file = |name: &str| dir.path().join(name).display().to_string();
        let ini = format!(
            "[databases]\ntest = host=127.0.0.1 port=5432 dbname=test user=root\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {}\npool_mode = transaction\n\
             default_pool_size = 16\nmax_client_conn = 1000\nlogfile = {}\npidfile = {}\n",
            file("users.txt"),
            file("pgbouncer.log"),
            file("pgbouncer.pid"),
        );
        std::fs::write(dir.path().join("pgbouncer.ini"), ini).ok()?;
        std::fs::write(dir.path().join("users.txt"), "\"root\" \"\"\n").ok()?;
        // PgBouncer refuses to run as root: as Debian's postgres user then.
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let mut cmd = if root {
            use std::os::unix::fs::PermissionsExt;
            let open = std::fs::Permissions::from_mode(0o777);
            std::fs::set_permissions(dir.path(), open).ok()?;
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", bin]);
            c
        } else {
            Command::new(bin)
        };
        let child = cmd
            .arg(dir.path().join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Self { child, port, dir })
    }

    fn url(&self) -> String {
        format!("postgres://root@127.0.0.1:{}/test", self.port)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // Under runuser, PgBouncer is runuser's child: stopped by its pid.
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("pgbouncer.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
