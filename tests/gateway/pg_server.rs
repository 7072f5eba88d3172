//! The PostgreSQL the tests use: `EAI_TEST_PG_URL` when set, else the
//! machine's server at the conventional address when it answers, else a
//! throwaway server started from the system's PostgreSQL binaries (its own
//! data directory, trust auth, a free port), stopped and deleted when the
//! test process exits. So a fresh machine needs PostgreSQL installed, not
//! configured.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const PG_URL_DEFAULT: &str = "postgres://root@127.0.0.1:5432/test";

static URL: OnceLock<String> = OnceLock::new();

/// Decided once per test process; every PostgreSQL test shares it (each
/// still gets its own schema).
pub fn url() -> String {
    URL.get_or_init(decide).clone()
}

fn decide() -> String {
    if let Ok(url) = std::env::var("EAI_TEST_PG_URL") {
        return url;
    }
    if answers(PG_URL_DEFAULT, Duration::from_secs(2)) {
        return PG_URL_DEFAULT.to_owned();
    }
    match provision() {
        Ok(url) => url,
        Err(why) => panic!(
            "The PostgreSQL tests need a PostgreSQL server. None answers at {PG_URL_DEFAULT} \
             (trust auth, user root, database test), and a throwaway one could not be started: \
             {why}.\nInstall PostgreSQL's server binaries (Debian: `apt-get install postgresql`), \
             and the tests start their own server; or point EAI_TEST_PG_URL at a server you \
             run (e.g. EAI_TEST_PG_URL=postgres://user@host:5432/db)."
        ),
    }
}

/// A real connection and a query, not just an open port: a stock install
/// listens on 5432 but has no `root` role or `test` database.
fn answers(url: &str, within: Duration) -> bool {
    let url = url.to_owned();
    // Called from inside the tests' runtimes: a thread of its own may block.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let connect = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(within)
                .connect(&url);
            let pool = tokio::time::timeout(within, connect).await.ok()?.ok()?;
            let ok = sqlx::query("SELECT 1").execute(&pool).await.is_ok();
            pool.close().await;
            ok.then_some(())
        })
    })
    .join()
    .ok()
    .flatten()
    .is_some()
}

/// The directory holding `initdb` and `postgres`: `EAI_TEST_PG_BINDIR`,
/// Debian's versioned directories (newest first), then `PATH`.
fn bindir() -> Option<PathBuf> {
    let has_server = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Ok(dir) = std::env::var("EAI_TEST_PG_BINDIR") {
        return Some(PathBuf::from(dir)).filter(|d| has_server(d));
    }
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    debian.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    let path = std::env::var_os("PATH").unwrap_or_default();
    debian
        .into_iter()
        .rev()
        .chain(std::env::split_paths(&path))
        .find(|d| has_server(d))
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// PostgreSQL refuses to run as root: as root, the server runs as the
/// `postgres` account that Debian's package creates.
fn as_server_user(program: &str) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    }
}

fn provision() -> Result<String, String> {
    let bin = bindir()
        .ok_or("no initdb/postgres found (EAI_TEST_PG_BINDIR, /usr/lib/postgresql/*/bin, PATH)")?;
    let data = std::env::temp_dir().join(format!("eai-test-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    if running_as_root() {
        let chown = Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(&data)
            .status()
            .map_err(|e| format!("chown: {e}"))?;
        if !chown.success() {
            return Err(
                "running as root and there is no `postgres` account to run the server".into(),
            );
        }
    }
    let initdb = as_server_user(&bin.join("initdb").to_string_lossy())
        .arg("-D")
        .arg(data.join("db"))
        .args(["-U", "root", "-A", "trust", "-E", "UTF8", "--no-sync"])
        .output()
        .map_err(|e| format!("initdb: {e}"))?;
    if !initdb.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr).trim()
        ));
    }
    let port = super::support::free_port();
    // The shell outlives nothing: it stops the server and deletes its data
    // once the test process is gone (a test binary runs no destructors of
    // statics at exit).
    let watch = r#"
        "$1/postgres" -D "$2/db" -p "$3" -k "$2" -c listen_addresses=127.0.0.1 \
            -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
            -c max_connections=400 >"$2/log" 2>&1 &
        pg=$!
        while [ -d "/proc/$4" ] && kill -0 "$pg" 2>/dev/null; do sleep 1; done
        kill -INT "$pg" 2>/dev/null; wait "$pg"; rm -rf "$2"
    "#;
    as_server_user("sh")
        .args(["-c", watch, "sh"])
        .arg(&bin)
        .arg(&data)
        .arg(port.to_string())
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting postgres: {e}"))?;
    let url = format!("postgres://root@127.0.0.1:{port}/postgres");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if answers(&url, Duration::from_secs(1)) {
            eprintln!(
                "tests: no PostgreSQL at {PG_URL_DEFAULT}; started a throwaway one from {} at {url}",
                bin.display()
            );
            return Ok(url);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(data.join("log")).unwrap_or_default();
    Err(format!(
        "postgres did not accept connections within 30 s: {}",
        log.trim()
    ))
}
