//! The binary's subcommands and its shutdown.

use std::process::Command;

use super::support::*;

fn gateway_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_eai-gateway"))
}

fn write(dir: &tempfile::TempDir, yaml: &str) -> std::path::PathBuf {
    let p = dir.path().join("c.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

/// `run` refuses the built-in pseudonym key: every file for it sets one.
const KEY_YAML: &str = "users: {pseudonym_key: pseudonyms-of-the-cli-tests}\n";
const PSEUDONYM_KEY_VAR: &str = "EAI_GATEWAY_PSEUDONYM_KEY";

/// Words of Rust, not of YAML, that no config error may contain.
const RUST_WORDS: &[&str] = &[
    "usize",
    "u64",
    "u32",
    "f64",
    "struct",
    "Option",
    "Duration",
    "variant",
    "<file>",
    "relative URL without a base",
    "invalid socket address syntax",
];

/// `check-config FILE` with `yaml` in FILE: the path and stderr of a
/// refusal, which must exit 2 and speak no Rust.
fn refused(yaml: &str, envs: &[(&str, &str)]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, yaml);
    let mut cmd = gateway_bin();
    cmd.arg("check-config")
        .arg(&path)
        .env_remove("DATABASE_URL")
        .env_remove(PSEUDONYM_KEY_VAR);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{yaml:?}: {err}");
    for word in RUST_WORDS {
        assert!(
            !err.contains(word),
            "{word:?} in the error for {yaml:?}: {err}"
        );
    }
    (path.display().to_string(), err)
}

#[test]
fn check_config_accepts_shipped_files_and_names_bad_keys() {
    // The shipped configs and the recipes under conf/examples.
    let shipped: Vec<_> = ["conf", "conf/examples"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    assert!(
        shipped
            .iter()
            .any(|p| p.ends_with("examples/real-letta.yaml"))
    );
    assert!(
        shipped
            .iter()
            .any(|p| p.ends_with("examples/replicas.yaml"))
    );
    for file in &shipped {
        let file = file.to_str().unwrap();
        let out = gateway_bin()
            .args(["check-config", file])
            .env_remove("DATABASE_URL")
            .env(PSEUDONYM_KEY_VAR, "pseudonyms-of-the-shipped-files")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "agent_service: {dialect: eai, url: 'http://x:1'}\nthread: 4\n",
            "thread",
        ),
        (
            "agent_service: {dialect: eai, url: 'http://x:1'}\nchat: {poll: {jitter: 3}}\n",
            "chat.poll.jitter",
        ),
        (
            "agent_service: {dialect: grpc, url: 'http://x:1'}\n",
            "dialect",
        ),
        (
            "agent_service: {dialect: eai, url: 'not a url'}\n",
            "agent_service.url",
        ),
    ];
    for (yaml, key) in cases {
        let out = gateway_bin()
            .arg("check-config")
            .arg(write(&dir, yaml))
            .output()
            .unwrap();
        assert!(!out.status.success(), "accepted: {yaml}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(key),
            "error for {yaml:?} does not name {key}: {err}"
        );
    }
    let out = gateway_bin()
        .arg("check-config")
        .arg(write(
            &dir,
            "agent_service: {dialect: eai, url: 'http://x:1'}\n",
        ))
        .env("AGENT_SERVICE_DIALECT", "soap")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("AGENT_SERVICE_DIALECT"));
}

#[test]
fn a_file_error_names_the_file_the_key_the_value_and_what_is_expected() {
    let agent = "agent_service: {dialect: eai, url: 'http://x:1'}\n";
    let cases = [
        (
            format!("{agent}threads: many\n"),
            "threads: got the text \"many\", expected a whole number (0 or more)",
        ),
        (
            format!("{agent}chat: {{timeout_seconds: 0}}\n"),
            "chat.timeout_seconds: 0 is out of range: must be more than 0 and at most 3600",
        ),
        (
            format!("{agent}chat: {{body_timeout_ms: 10s}}\n"),
            "chat.body_timeout_ms: got the text \"10s\", expected a whole number of milliseconds",
        ),
        (
            format!("{agent}listen: nonsense\n"),
            "listen: \"nonsense\" is not an ip:port address (expected e.g. 127.0.0.1:8080)",
        ),
        (
            "agent_service: {url: 'not a url'}\n".to_owned(),
            "agent_service.url: \"not a url\" is not an absolute URL (expected e.g. http://host:8283)",
        ),
        (
            format!("{agent}threads: 300\n"),
            "threads: 300 is out of range: must be between 1 and 256",
        ),
    ];
    for (yaml, want) in cases {
        let (path, err) = refused(&yaml, &[]);
        assert!(
            err.starts_with(&format!("config error: {path}: {want}")),
            "{yaml:?}:\n got  {err}\n want {want}"
        );
    }
}

/// `check-config` reads the HTTPS listener's files as `run` and a reload
/// would, and names the setting whose file is wrong.
#[test]
fn check_config_reads_the_tls_certificate_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let yaml = format!(
        "agent_service: {{dialect: eai, url: 'http://x:1'}}\n\
         tls: {{listen: '127.0.0.1:8443', cert_file: '{}', key_file: '{}'}}\n",
        cert.display(),
        key.display()
    );
    let key_env = [(PSEUDONYM_KEY_VAR, "pseudonyms-of-the-tls-check")];
    let (_, err) = refused(&yaml, &key_env);
    assert!(
        err.contains("tls.cert_file: cannot read"),
        "missing certificate: {err}"
    );
    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let (_, err) = refused(&yaml, &key_env);
    assert!(err.contains("holds no PEM certificate"), "not PEM: {err}");
}

#[test]
fn a_top_level_error_starts_with_the_file() {
    for (yaml, want) in [
        ("threads: 2\n", "missing key `agent_service`"),
        (
            "- a list\n",
            "got a list, expected a section of `key: value` lines",
        ),
        (
            "agent_service: {dialect: eai\n",
            "agent_service: did not find expected ',' or '}' at line 2 column 1",
        ),
    ] {
        let (path, err) = refused(yaml, &[]);
        assert!(
            err.starts_with(&format!("config error: {path}: {want}")),
            "{yaml:?}: {err}"
        );
    }
    let out = gateway_bin()
        .args(["check-config", "/nonexistent/eai-gateway.yaml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.starts_with("config error: /nonexistent/eai-gateway.yaml: cannot read the file: "),
        "{err}"
    );
}

#[test]
fn a_bad_environment_variable_is_named_as_the_variable() {
    let yaml = format!("agent_service: {{dialect: eai, url: 'http://x:1'}}\n{KEY_YAML}");
    let (path, err) = refused(&yaml, &[("DATABASE_URL", "bogus")]);
    assert!(
        err.starts_with("config error: environment variable DATABASE_URL: not a database URL: "),
        "{err}"
    );
    assert!(
        !err.contains("database.url") && !err.contains(&path),
        "{err}"
    );
    let (_, err) = refused(&yaml, &[("EAI_GATEWAY_LISTEN", "everywhere")]);
    assert!(
        err.starts_with(
            "config error: environment variable EAI_GATEWAY_LISTEN: \"everywhere\" is not an ip:port address"
        ),
        "{err}"
    );
}

#[test]
fn run_and_check_config_refuse_a_default_placeholder_or_short_pseudonym_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("k.db").display());
    let agent = "agent_service: {dialect: eai, url: 'http://127.0.0.1:9'}\n";
    let cases: [(String, Option<&str>, &str); 6] = [
        (
            agent.to_owned(),
            None,
            "users.pseudonym_key: missing, and EAI_GATEWAY_PSEUDONYM_KEY is not set either: ",
        ),
        (
            format!("{agent}users: {{pseudonym_key: eai-gateway}}\n"),
            None,
            "users.pseudonym_key: \"eai-gateway\" is the built-in default",
        ),
        (
            format!("{agent}users: {{pseudonym_key: change-me-please}}\n"),
            None,
            "users.pseudonym_key: \"change-me-please\" is a placeholder: ",
        ),
        (
            format!("{agent}users: {{pseudonym_key: ab12cd34ef}}\n"),
            None,
            "users.pseudonym_key: a key of 10 characters is too short: ",
        ),
        (
            agent.to_owned(),
            Some("change-me-please"),
            "environment variable EAI_GATEWAY_PSEUDONYM_KEY: \"change-me-please\" is a placeholder: ",
        ),
        (
            agent.to_owned(),
            Some("ab12cd34ef"),
            "environment variable EAI_GATEWAY_PSEUDONYM_KEY: a key of 10 characters is too short: ",
        ),
    ];
    for (yaml, key_env, want) in &cases {
        let config = write(&dir, yaml);
        for sub in [
            &["run", "--config"][..],
            &["check-config"],
            &["migrate", "--config"],
        ] {
            let mut cmd = gateway_bin();
            cmd.args(sub)
                .arg(&config)
                .env("DATABASE_URL", &db)
                .env_remove(PSEUDONYM_KEY_VAR);
            if let Some(key) = key_env {
                cmd.env(PSEUDONYM_KEY_VAR, key);
            }
            let out = cmd.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{sub:?} {yaml:?} {key_env:?}: {err}"
            );
            assert!(
                err.contains(want),
                "{sub:?} {yaml:?}:\n got  {err}\n want {want}"
            );
            assert!(
                err.contains("set a secret of at least 16 characters in users.pseudonym_key or EAI_GATEWAY_PSEUDONYM_KEY (e.g. `openssl rand -hex 32`)"),
                "{sub:?}: {err}"
            );
            assert!(!err.contains("ab12cd34ef"), "the key itself shown: {err}");
        }
    }
    // The shipped sample holds no key of its own.
    let out = gateway_bin()
        .args(["check-config", "conf/eai-gateway.yaml"])
        .env_remove("DATABASE_URL")
        .env_remove(PSEUDONYM_KEY_VAR)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(PSEUDONYM_KEY_VAR));
    // A good key from the variable: `check-config` passes and `run` gets as
    // far as its listener (taken here, so that it stops at once).
    let good = "5f0e9c1d7b2a4e68a3c1f0d2b4e6a8c0";
    let config = write(&dir, agent);
    let out = gateway_bin()
        .arg("check-config")
        .arg(&config)
        .env("DATABASE_URL", &db)
        .env(PSEUDONYM_KEY_VAR, good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = gateway_bin()
        .args(["run", "--config"])
        .arg(&config)
        .env("DATABASE_URL", &db)
        .env(PSEUDONYM_KEY_VAR, good)
        .env("EAI_GATEWAY_LISTEN", &addr)
        .env(
            "EAI_GATEWAY_METRICS_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("config error"), "{err}");
    assert!(
        err.contains(&format!("listen: cannot listen on {addr}")),
        "{err}"
    );
}

#[test]
fn check_config_reports_what_a_reload_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!("agent_service: {{dialect: eai, url: 'http://127.0.0.1:9'}}\n{KEY_YAML}");
    let running = write(&dir, &base);
    let reloadable = dir.path().join("reloadable.yaml");
    std::fs::write(
        &reloadable,
        format!("{base}upstreams:\n  a: {{backends: ['127.0.0.1:1']}}\ndefault_upstream: a\n"),
    )
    .unwrap();
    let out = gateway_bin()
        .args(["check-config", "--config"])
        .arg(&reloadable)
        .arg("--against")
        .arg(&running)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restart = dir.path().join("restart.yaml");
    std::fs::write(
        &restart,
        format!("threads: 4\ndatabase: {{url: 'sqlite://x.db'}}\n{base}"),
    )
    .unwrap();
    let out = gateway_bin()
        .arg("check-config")
        .arg(&restart)
        .arg("--against")
        .arg(&running)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("threads, database: cannot change while running"),
        "{err}"
    );
    // A backend host that does not resolve fails here, not at reload time.
    let unresolvable = dir.path().join("dns.yaml");
    std::fs::write(
        &unresolvable,
        format!("{base}upstreams:\n  a: {{backends: ['no-such-host.invalid:80']}}\n"),
    )
    .unwrap();
    let out = gateway_bin()
        .arg("check-config")
        .arg(&unresolvable)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstreams.a.backends"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_table_in_both_databases() {
    for kind in [DbKind::Sqlite, DbKind::Postgres] {
        let db = TestDb::new(kind);
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "agent_service: {{dialect: eai, url: 'http://127.0.0.1:9'}}\n{KEY_YAML}{}",
            db.yaml()
        );
        let out = gateway_bin()
            .arg("migrate")
            .arg("--config")
            .arg(write(&dir, &yaml))
            .env("DATABASE_URL", &db.url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{kind:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(db.mappings().await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_gateway_exits_zero_at_once_on_sigterm() {
    let (_sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(DbKind::Sqlite);
    let mut spec = GatewaySpec::new(Dialect::Eai, &db, sim_addr);
    spec.replace_shutdown = true;
    spec.extra_yaml = "shutdown:\n  drain_seconds: 30\n".into();
    let mut gw = GatewayProcess::start(spec).await;
    let started = std::time::Instant::now();
    let status = gw.terminate();
    assert!(status.success(), "{status}");
    // Nothing in flight: no need to sit out the 30 s drain bound (Pingora
    // alone would sleep the whole grace period, 300 s by default).
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_a_chat_with_sqlite_and_the_bundled_simulator() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, metrics, sim) = (free_port(), free_port(), free_port());
    let mut child = gateway_bin()
        .arg("demo")
        .args(["--listen", &format!("127.0.0.1:{gw}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .args(["--simulator-listen", &format!("127.0.0.1:{sim}")])
        .args(["--delay-ms", "20"])
        .arg("--database")
        .arg(dir.path().join("demo.db"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{gw}/eai-gateway/chat");
    let body = serde_json::json!({"user_number": "+5521999999999", "message": "Olá!"});
    let mut answer = None;
    for _ in 0..100 {
        if let Ok(r) = client.post(&url).json(&body).send().await {
            answer = Some((
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            ));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let (status, body) = answer.expect("demo gateway answered");
    assert_eq!(status, 200, "{body}");
    assert_eq!(answer_text(&body), "echo: Olá!");
    let banner = String::from_utf8_lossy(&out.stdout);
    assert!(
        banner.contains("curl -s -X POST"),
        "ready-to-paste commands: {banner}"
    );
    assert!(dir.path().join("demo.db").exists());
}

#[test]
fn a_taken_port_fails_at_once_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        &dir,
        &format!("agent_service: {{dialect: eai, url: 'http://127.0.0.1:9'}}\n{KEY_YAML}"),
    );
    let db = format!("sqlite://{}", dir.path().join("p.db").display());
    let free = format!("127.0.0.1:{}", free_port());
    let runs: [(Vec<String>, &str, &str); 3] = [
        (
            vec![
                "run".into(),
                "--config".into(),
                config.display().to_string(),
            ],
            "listen",
            "EAI_GATEWAY_LISTEN",
        ),
        (
            vec![
                "run".into(),
                "--config".into(),
                config.display().to_string(),
            ],
            "metrics_listen",
            "EAI_GATEWAY_METRICS_LISTEN",
        ),
        (
            vec![
                "demo".into(),
                "--listen".into(),
                addr.clone(),
                "--simulator-listen".into(),
                format!("127.0.0.1:{}", free_port()),
                "--metrics-listen".into(),
                format!("127.0.0.1:{}", free_port()),
                "--database".into(),
                dir.path().join("demo.db").display().to_string(),
            ],
            "listen",
            "UNUSED",
        ),
    ];
    for (args, key, var) in runs {
        let started = std::time::Instant::now();
        let (listen, metrics) = if var == "EAI_GATEWAY_METRICS_LISTEN" {
            (free.clone(), addr.clone())
        } else {
            (addr.clone(), format!("127.0.0.1:{}", free_port()))
        };
        let out = gateway_bin()
            .args(&args)
            .env("EAI_GATEWAY_LISTEN", &listen)
            .env("EAI_GATEWAY_METRICS_LISTEN", &metrics)
            .env("DATABASE_URL", &db)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started on a taken port");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{key}: cannot listen on {addr}")),
            "{args:?}: {err}"
        );
    }
    drop(taken);
}

#[test]
fn version_names_the_commit_and_every_option_has_help() {
    let out = gateway_bin().arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.starts_with(&format!("eai-gateway {} (", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    for sub in ["run", "check-config", "migrate", "demo", "simulate"] {
        let out = gateway_bin().args([sub, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        // clap prints an option's help on its line or, in the long form, on
        // the next one; an option without help has neither.
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !line.trim_start().starts_with("--") || line.contains("--help") {
                continue;
            }
            // `[default: …]` alone is not help.
            let inline = line
                .split("  ")
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .skip(1)
                .any(|p| !p.starts_with('['));
            let below = lines.get(i + 1).is_some_and(|next| {
                let t = next.trim_start();
                !t.is_empty()
                    && !t.starts_with('-')
                    && next.len() - t.len() > line.len() - line.trim_start().len()
            });
            assert!(
                inline || below,
                "`{sub} --help`: no help text: {line:?}\n{help}"
            );
        }
    }
}
