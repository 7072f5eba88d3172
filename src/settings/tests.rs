use super::*;

const MINIMAL: &str = "agent_service:\n  dialect: eai\n  url: http://127.0.0.1:9\n";

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Result<Settings, ConfigError> {
    Settings::parse(text, no_env)
}

#[test]
fn minimal_file_gets_defaults() {
    let s = parse(MINIMAL).unwrap();
    assert_eq!(s.chat.max_body_bytes, 65536);
    assert_eq!(s.chat.timeout, Duration::from_secs(180));
    assert_eq!(s.chat.poll.initial_delay, Duration::from_millis(25));
    assert_eq!(s.chat.poll.max_delay, Duration::from_secs(2));
    assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
    assert!(matches!(s.database.url, DatabaseUrl::Sqlite(_)));
    assert!(!s.auth.tokens.is_enabled());
}

#[test]
fn file_defaults_equal_code_defaults() {
    let from_file = parse(MINIMAL).unwrap();
    let url = reqwest::Url::parse("http://127.0.0.1:9").unwrap();
    let built = Settings::new(AgentServiceSettings::new(Dialect::Eai, url));
    built.validate().unwrap();
    assert_eq!(format!("{from_file:?}"), format!("{built:?}"));
}

#[test]
fn durations_and_kinds_are_typed() {
    let s = parse(&format!(
        "{MINIMAL}chat: {{timeout_seconds: 2.5, body_timeout_ms: 1500}}\n\
         database: {{url: 'postgres://u:secret@db:5432/x', acquire_timeout_ms: 250}}\n\
         agents: {{cache_ttl_seconds: 0}}\nshutdown: {{drain_seconds: 3}}\n"
    ))
    .unwrap();
    assert_eq!(s.chat.timeout, Duration::from_millis(2500));
    assert_eq!(s.chat.body_timeout, Duration::from_millis(1500));
    assert_eq!(s.database.acquire_timeout, Duration::from_millis(250));
    assert!(s.mapping.cache_ttl.is_zero());
    assert_eq!(s.shutdown.drain, Duration::from_secs(3));
    assert!(matches!(s.database.url, DatabaseUrl::Postgres(_)));
    assert!(!format!("{s:?}").contains("secret"), "password in Debug");
}

#[test]
fn unknown_nested_key_is_named() {
    let err = parse(&format!("{MINIMAL}database:\n  urll: x\n")).unwrap_err();
    assert!(err.to_string().contains("urll"), "{err}");
    assert_eq!(err.key, "database.urll");
}

#[test]
fn route_to_missing_upstream_is_named() {
    let mut s = parse(MINIMAL).unwrap();
    s.routes.push(RouteSettings {
        prefix: "/api".into(),
        upstream: "nope".into(),
        forward_raw_path: false,
    });
    assert_eq!(s.validate().unwrap_err().key, "routes[0].upstream");
}

#[test]
fn env_overrides_and_names_bad_variable() {
    let s = Settings::parse(MINIMAL, |k| match k {
        env::DIALECT => Some("letta".into()),
        env::DEFAULT_UPSTREAM => Some("127.0.0.1:7000".into()),
        env::DATABASE_URL => Some("sqlite:///tmp/x.db".into()),
        env::TOKENS => Some("a-token-of-enough-length".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(s.agent_service.dialect, Dialect::Letta);
    assert_eq!(
        s.default_upstream.as_deref(),
        Some(ENV_DEFAULT_UPSTREAM_NAME)
    );
    assert_eq!(
        s.upstreams[ENV_DEFAULT_UPSTREAM_NAME].backends,
        ["127.0.0.1:7000"]
    );
    assert!(s.auth.tokens.is_enabled());
    for (var, value) in [
        (env::DIALECT, "grpc"),
        (env::LISTEN, "nowhere"),
        (env::AGENT_URL, "ftp://x"),
        (env::DATABASE_URL, "mysql://x"),
        (env::USER_QUEUE_MAX, "-1"),
        (env::TOKENS, "short"),
    ] {
        let err = Settings::parse(MINIMAL, |k| (k == var).then(|| value.into())).unwrap_err();
        assert!(err.key.starts_with(var), "{var}: {err}");
    }
}

#[test]
fn bad_values_name_their_key() {
    let cases = [
        ("listen: nowhere\n", "listen"),
        ("metrics_listen: '127.0.0.1:8080'\n", "metrics_listen"),
        (
            "chat:\n  poll:\n    max_delay_ms: 1\n",
            "chat.poll.max_delay_ms",
        ),
        ("chat:\n  timeout_seconds: -1\n", "chat.timeout_seconds"),
        ("database:\n  url: mysql://x\n", "database.url"),
        ("database:\n  schema: \"x;drop\"\n", "database.schema"),
        ("users:\n  pattern: '[0-9]+'\n", "users.pattern"),
        ("users:\n  pseudonym_key: short\n", "users.pseudonym_key"),
        (
            "upstreams:\n  b:\n    backends: [\"nohost\"]\n",
            "upstreams.b.backends[0]",
        ),
        ("default_upstream: nope\n", "default_upstream"),
        (
            "auth:\n  protect_passthrough: true\n",
            "auth.protect_passthrough",
        ),
    ];
    for (extra, key) in cases {
        let err = parse(&format!("{MINIMAL}{extra}")).unwrap_err();
        assert_eq!(err.key, key, "{extra}: {err}");
    }
    let err = parse("agent_service: {dialect: eai, url: 'not a url'}\n").unwrap_err();
    assert_eq!(err.key, "agent_service.url", "{err}");
}

#[test]
fn restart_only_changes_are_named_and_the_rest_reloads() {
    let base = parse(MINIMAL).unwrap();
    let reloadable = parse(&format!(
        "{MINIMAL}  token: rotated\n  request_timeout_ms: 5000\nchat:\n  timeout_seconds: 9\n\
         limits:\n  user_rate_per_min: 3\nupstreams:\n  a:\n    backends: [\"127.0.0.1:1\"]\n\
         routes:\n  - prefix: /a\n    upstream: a\n"
    ))
    .unwrap();
    assert!(base.restart_only_changes(&reloadable).is_empty());
    let moved = parse(
        "listen: 127.0.0.1:1\nthreads: 3\nagent_service:\n  dialect: letta\n  url: http://127.0.0.1:9\n\
         database:\n  url: sqlite://other.db\nagents:\n  cache_capacity: 5\nusers:\n  pseudonym_key: another-key-123\n",
    )
    .unwrap();
    assert_eq!(
        base.restart_only_changes(&moved),
        [
            "listen",
            "threads",
            "database",
            "agent_service.dialect",
            "agents.cache_capacity",
            "users"
        ]
    );
}

#[test]
fn health_check_is_validated_by_key() {
    let yaml = |hc: &str| {
        format!(
            "{MINIMAL}upstreams:\n  web:\n    backends: [\"127.0.0.1:1\"]\n    health_check:\n{hc}"
        )
    };
    let ok = parse(&yaml(
        "      type: tcp\n      interval_ms: 500\n      timeout_ms: 200\n",
    ))
    .unwrap();
    let hc = ok.upstreams["web"].health_check.clone().unwrap();
    assert_eq!(hc.kind, HealthCheckKind::Tcp);
    assert_eq!(hc.unhealthy_after, 1);
    let err = parse(&yaml("      interval_ms: 500\n      timeout_ms: 900\n")).unwrap_err();
    assert_eq!(err.key, "upstreams.web.health_check.timeout_ms");
    let err = parse(&yaml("      path: health\n")).unwrap_err();
    assert_eq!(err.key, "upstreams.web.health_check.path");
}
