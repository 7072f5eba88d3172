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
    s.routes.push(RouteSettings::new("/api", "nope"));
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
        ("tls:\n  listen: '127.0.0.1:8443'\n", "tls.cert_file"),
        (
            "tls:\n  listen: '127.0.0.1:8443'\n  cert_file: c.pem\n",
            "tls.key_file",
        ),
        (
            "tls:\n  cert_file: c.pem\n  key_file: k.pem\n",
            "tls.listen",
        ),
        (
            "tls:\n  listen: '127.0.0.1:8080'\n  cert_file: c.pem\n  key_file: k.pem\n",
            "tls.listen",
        ),
        ("tls:\n  listen: 8443\n", "tls.listen"),
    ];
    let up = "upstreams:\n  u:\n    backends: ['127.0.0.1:9']\nroutes:\n  - upstream: u\n";
    let route_cases = [
        ("    host: 'a b'\n", "routes[0].host"),
        ("    host: '*.'\n", "routes[0].host"),
        (
            "    strip_prefix: true\n    forward_raw_path: true\n",
            "routes[0].strip_prefix",
        ),
        (
            "    request_headers: {set: {'bad name': x}}\n",
            "routes[0].request_headers.set.bad name",
        ),
        (
            "    response_headers: {remove: [Transfer-Encoding]}\n",
            "routes[0].response_headers.remove[0]",
        ),
        (
            "    request_headers: {set: {x-a: \"v\\u0001\"}}\n",
            "routes[0].request_headers.set.x-a",
        ),
        ("    timeout_ms: 0\n", "routes[0].timeout_ms"),
        ("    max_body_bytes: -1\n", "routes[0].max_body_bytes"),
    ];
    for (extra, key) in route_cases {
        let err = parse(&format!("{MINIMAL}{up}{extra}")).unwrap_err();
        assert_eq!(err.key, key, "{extra}: {err}");
    }
    let ok = [
        "    host: '*.example.com'\n",
        "    prefix: /api\n",
        "    strip_prefix: true\n",
        "    request_headers: {set: {Host: backend.internal}, remove: [cookie]}\n",
        "    response_headers: {set: {x-frame-options: DENY}}\n",
        "    max_body_bytes: 1024\n",
        "    timeout_ms: 2500\n",
    ]
    .concat();
    parse(&format!("{MINIMAL}{up}{ok}")).unwrap();
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

/// Words of Rust, not of YAML, that no message may contain.
const RUST_WORDS: &[&str] = &[
    "usize",
    "u64",
    "u32",
    "u16",
    "u8",
    "i64",
    "i32",
    "f64",
    "f32",
    "struct",
    "Option",
    "Duration",
    "String",
    "enum ",
    "variant",
    "field",
    "sequence",
    "<file>",
    "relative URL without a base",
    "invalid socket address syntax",
    "Settings",
];

fn assert_plain(message: &str) {
    for word in RUST_WORDS {
        assert!(!message.contains(word), "{word:?} in {message:?}");
    }
}

/// Each `(extra YAML, expected start of the error)` added to a minimal file.
fn assert_errors_start_with(cases: &[(&str, &str)]) {
    for (extra, want) in cases {
        let err = parse(&format!("{MINIMAL}{extra}")).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with(want),
            "{extra:?}:\n got  {shown}\n want {want}"
        );
        assert_plain(&shown);
    }
}

#[test]
fn type_errors_name_key_value_and_kind_in_yaml_words() {
    let cases = [
        (
            "threads: many\n",
            "threads: got the text \"many\", expected a whole number (0 or more) at line 4 column 10",
        ),
        (
            "threads: -3\n",
            "threads: got -3, expected a whole number (0 or more) at line 4 column 10",
        ),
        (
            "threads: 1.5\n",
            "threads: got 1.5, expected a whole number (0 or more) at line 4 column 10",
        ),
        (
            "limits: {user_rate_per_min: -1}\n",
            "limits.user_rate_per_min: got -1, expected a whole number from 0 to 4294967295",
        ),
        (
            "chat: {body_timeout_ms: 5s}\n",
            "chat.body_timeout_ms: got the text \"5s\", expected a whole number of milliseconds (0 or more)",
        ),
        (
            "agents: {delete_wait_seconds: -1}\n",
            "agents.delete_wait_seconds: got -1, expected a whole number of seconds (0 or more)",
        ),
        (
            "chat: {timeout_seconds: soon}\n",
            "chat.timeout_seconds: got the text \"soon\", expected a number of seconds (0 or more, e.g. 2.5)",
        ),
        (
            "chat: {timeout_seconds: -1}\n",
            "chat.timeout_seconds: got -1, expected a number of seconds (0 or more, e.g. 2.5)",
        ),
        (
            "chat: {poll: {jitter: lots}}\n",
            "chat.poll.jitter: got the text \"lots\", expected a number",
        ),
        (
            "chat: 5\n",
            "chat: got 5, expected a section of `key: value` lines",
        ),
        (
            "upstreams: {a: {backends: 127.0.0.1:1}}\n",
            "upstreams.a.backends: got the text \"127.0.0.1:1\", expected a list",
        ),
        (
            "paths: {merge_slashes: maybe}\n",
            "paths.merge_slashes: got the text \"maybe\", expected true or false",
        ),
        (
            "paths: {encoded_separators: drop}\n",
            "paths.encoded_separators: unknown value `drop`, expected `reject` or `keep`",
        ),
        (
            "listen: nonsense\n",
            "listen: \"nonsense\" is not an ip:port address (expected e.g. 127.0.0.1:8080)",
        ),
        (
            "metrics_listen: 9091\n",
            "metrics_listen: \"9091\" is not an ip:port address (expected e.g. 127.0.0.1:8080)",
        ),
        (
            "chat: {max_body_byte: 5}\n",
            "chat.max_body_byte: unknown key `max_body_byte`, expected one of",
        ),
        (
            "threads:\n",
            "threads: got nothing, expected a whole number (0 or more)",
        ),
    ];
    assert_errors_start_with(&cases);
}

#[test]
fn url_and_top_level_errors_are_plain() {
    let cases = [
        (
            "agent_service: {dialect: eai, url: 'not a url'}\n",
            "agent_service.url: \"not a url\" is not an absolute URL (expected e.g. http://host:8283)",
        ),
        (
            "agent_service: {dialect: eai, url: 'ftp://x'}\n",
            "agent_service.url: \"ftp://x\" is not an http(s) URL with a host",
        ),
        (
            "agent_service: {dialect: eai, url: 'http://x:99999'}\n",
            "agent_service.url: \"http://x:99999\" has an invalid port number",
        ),
        (
            "agent_service: {dialect: grpc}\n",
            "agent_service.dialect: unknown value `grpc`, expected `letta` or `eai`",
        ),
        ("threads: 2\n", "missing key `agent_service`"),
        ("", "missing key `agent_service`"),
        (
            "- a\n- b\n",
            "got a list, expected a section of `key: value` lines",
        ),
        (
            "agent_service: {dialect: eai\n",
            "agent_service: did not find expected ',' or '}' at line 2 column 1",
        ),
        (
            "agent_service: {dialect: eai}\nthreads: 2\nthreads: 3\n",
            "the key `threads` appears twice",
        ),
    ];
    for (text, want) in cases {
        let err = parse(text).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with(want),
            "{text:?}:\n got  {shown}\n want {want}"
        );
        assert_plain(&shown);
    }
}

#[test]
fn humanize_rewrites_serde_wording() {
    for (serde, plain) in [
        (
            "invalid type: string \"abc\", expected u64",
            "got the text \"abc\", expected a whole number (0 or more)",
        ),
        (
            "invalid value: integer `-1`, expected u32",
            "got -1, expected a whole number from 0 to 4294967295",
        ),
        (
            "invalid type: integer `-1`, expected i64",
            "got -1, expected a whole number",
        ),
        (
            "invalid type: floating point `0.5`, expected usize at line 3 column 9",
            "got 0.5, expected a whole number (0 or more) at line 3 column 9",
        ),
        (
            "invalid type: string \"x\", expected f64",
            "got the text \"x\", expected a number",
        ),
        (
            "invalid type: sequence, expected struct ChatSettings",
            "got a list, expected a section of `key: value` lines",
        ),
        (
            "invalid type: map, expected a sequence",
            "got a section of `key: value` lines, expected a list",
        ),
        (
            "invalid type: string \"x\", expected a map",
            "got the text \"x\", expected a section of `key: value` lines",
        ),
        (
            "missing field `agent_service`",
            "missing key `agent_service`",
        ),
        (
            "unknown field `thread`, expected one of `listen`, `threads`",
            "unknown key `thread`, expected one of `listen`, `threads`",
        ),
        (
            "invalid socket address syntax",
            "expected an ip:port address such as 127.0.0.1:8080",
        ),
        (
            "relative URL without a base",
            "not an absolute URL (expected e.g. http://host:8283)",
        ),
        (
            "invalid type: integer `99999999999999999999999` as u128, expected usize",
            "got 99999999999999999999999, expected a whole number (0 or more)",
        ),
        (
            "invalid type: sequence, expected a YAML tag starting with '!'",
            "got a list, expected one of the words this key takes",
        ),
        ("must be anchored", "must be anchored"),
    ] {
        assert_eq!(humanize::serde_message(serde), plain);
    }
}

#[test]
fn validation_errors_show_the_bad_value_in_the_unit_of_the_key() {
    let cases = [
        (
            "threads: 300\n",
            "threads: 300 is out of range: must be between 1 and 256",
        ),
        (
            "chat: {timeout_seconds: 0}\n",
            "chat.timeout_seconds: 0 is out of range: must be more than 0 and at most 3600",
        ),
        (
            "chat: {timeout_seconds: 4000.5}\n",
            "chat.timeout_seconds: 4000.5 is out of range",
        ),
        (
            "chat: {body_timeout_ms: 50}\n",
            "chat.body_timeout_ms: 50 is out of range: must be between 100 and 600000",
        ),
        (
            "chat: {max_processing_seconds: 10}\n",
            "chat.max_processing_seconds: 10 is out of range: must be between chat.timeout_seconds (180) and 86400",
        ),
        (
            "chat: {poll: {jitter: 3}}\n",
            "chat.poll.jitter: 3 is out of range: must be between 0 and 1",
        ),
        (
            "chat: {poll: {multiplier: 0.5}}\n",
            "chat.poll.multiplier: 0.5 is out of range",
        ),
        (
            "shutdown: {drain_seconds: 7200}\n",
            "shutdown.drain_seconds: 7200 is out of range: must be at most 3600",
        ),
        (
            "agents: {cache_ttl_seconds: 100000}\n",
            "agents.cache_ttl_seconds: 100000 is out of range",
        ),
        (
            "database: {max_connections: 0}\n",
            "database.max_connections: 0 is out of range: must be at least 1",
        ),
        (
            "database: {schema: 'x;drop'}\n",
            "database.schema: \"x;drop\" is not a schema name",
        ),
        (
            "database: {url: 'mysql://u:pw@h/db'}\n",
            "database.url: the scheme \"mysql\" is not known",
        ),
        (
            "read_buffer_bytes: 10\n",
            "read_buffer_bytes: 10 is out of range",
        ),
        (
            "upstreams: {a: {backends: ['127.0.0.1:1'], health_check: {interval_ms: 500, timeout_ms: 900}}}\n",
            "upstreams.a.health_check.timeout_ms: 900 is out of range: must be at least 1 and at most interval_ms (500)",
        ),
        (
            "upstreams: {a: {backends: ['127.0.0.1:1'], health_check: {expect_status: 700}}}\n",
            "upstreams.a.health_check.expect_status: 700 is out of range",
        ),
        (
            "upstreams: {a: {backends: ['nohost']}}\n",
            "upstreams.a.backends[0]: \"nohost\" is not host:port",
        ),
        (
            "routes: [{prefix: api, upstream: a}]\nupstreams: {a: {backends: ['127.0.0.1:1']}}\n",
            "routes[0].prefix: \"api\" does not start with '/'",
        ),
        (
            "users: {pattern: '[0-9]+'}\n",
            "users.pattern: \"[0-9]+\" is not anchored",
        ),
        (
            "users: {pseudonym_key: short}\n",
            "users.pseudonym_key: a key of 5 characters is too short: set a secret of at least 16",
        ),
    ];
    assert_errors_start_with(&cases);
    let err = parse(&format!(
        "{MINIMAL}database: {{url: 'mysql://u:pw@h/db'}}\n"
    ))
    .unwrap_err();
    assert!(!err.to_string().contains("pw"), "password shown: {err}");
}

#[test]
fn errors_name_the_file_or_the_variable() {
    let file = Path::new("/etc/eai-gateway.yaml");
    let err = parse(&format!("{MINIMAL}threads: 0\n"))
        .unwrap_err()
        .in_file(file);
    assert_eq!(
        err.to_string(),
        "/etc/eai-gateway.yaml: threads: 0 is out of range: must be between 1 and 256"
    );
    let err = parse("threads: 2\n").unwrap_err().in_file(file);
    assert_eq!(err.key, "");
    assert!(
        err.to_string()
            .starts_with("/etc/eai-gateway.yaml: missing key `agent_service`"),
        "{err}"
    );
    let bogus = |k: &str| (k == env::DATABASE_URL).then(|| "bogus".to_owned());
    let err = Settings::parse(MINIMAL, bogus).unwrap_err().in_file(file);
    assert_eq!(
        err.to_string(),
        "environment variable DATABASE_URL: not a database URL: expected postgres://, \
         postgresql:// or sqlite: (e.g. postgres://user:password@host/db or sqlite://eai-gateway.db)"
    );
    for (var, value, want) in [
        (
            env::LISTEN,
            "nowhere",
            "\"nowhere\" is not an ip:port address",
        ),
        (env::AGENT_URL, "x", "\"x\" is not an absolute URL"),
        (
            env::USER_QUEUE_MAX,
            "-1",
            "got \"-1\", expected a whole number",
        ),
        (env::TOKENS, "short", "a token of 5 characters is too short"),
        (
            env::REDIS_URL,
            "http://r",
            "the scheme \"http\" is not known",
        ),
        (
            env::REDIS_URL,
            "redis://:pw@h:bad",
            "not a valid Redis URL: Redis URL did not parse (expected e.g. redis://",
        ),
    ] {
        let err = Settings::parse(MINIMAL, |k| (k == var).then(|| value.into()))
            .unwrap_err()
            .in_file(file);
        assert_eq!(
            err.to_string(),
            format!("environment variable {var}: {}", err.message)
        );
        assert!(err.message.starts_with(want), "{var}: {err}");
        assert!(!err.message.contains("pw"), "password shown: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.yaml");
    let err = Settings::load(&missing).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read the file: ", missing.display())),
        "{err}"
    );
}

fn deployed(text: &str, key_env: Option<&str>) -> Result<Settings, ConfigError> {
    Settings::parse_deployed(text, |k| {
        (k == env::PSEUDONYM_KEY)
            .then(|| key_env.map(str::to_owned))
            .flatten()
    })
}

#[test]
fn a_deployment_refuses_a_default_placeholder_or_short_key() {
    const HOW: &str = "set a secret of at least 16 characters in users.pseudonym_key or \
                       EAI_GATEWAY_PSEUDONYM_KEY (e.g. `openssl rand -hex 32`); it names the \
                       Letta agents and masks user numbers in logs, so keep it stable";
    let with_key = |k: &str| format!("{MINIMAL}users: {{pseudonym_key: '{k}'}}\n");
    let cases = [
        (
            MINIMAL.to_owned(),
            None,
            format!(
                "users.pseudonym_key: missing, and EAI_GATEWAY_PSEUDONYM_KEY is not set either: {HOW}"
            ),
        ),
        (
            with_key("eai-gateway"),
            None,
            format!(
                "users.pseudonym_key: \"eai-gateway\" is the built-in default, the same in every installation: {HOW}"
            ),
        ),
        (
            with_key("change-me-please"),
            None,
            format!("users.pseudonym_key: \"change-me-please\" is a placeholder: {HOW}"),
        ),
        (
            with_key("CHANGEME"),
            None,
            format!("users.pseudonym_key: \"CHANGEME\" is a placeholder: {HOW}"),
        ),
        (
            with_key("placeholder"),
            None,
            format!("users.pseudonym_key: \"placeholder\" is a placeholder: {HOW}"),
        ),
        (
            with_key("k3y-0f-12-chr"),
            None,
            format!("users.pseudonym_key: a key of 13 characters is too short: {HOW}"),
        ),
        (
            MINIMAL.to_owned(),
            Some("Change_Me-later-please"),
            format!(
                "environment variable EAI_GATEWAY_PSEUDONYM_KEY: \"Change_Me-later-please\" is a placeholder: {HOW}"
            ),
        ),
        (
            with_key("a-good-key-of-the-file"),
            Some("eai-gateway"),
            format!(
                "environment variable EAI_GATEWAY_PSEUDONYM_KEY: \"eai-gateway\" is the built-in default, the same in every installation: {HOW}"
            ),
        ),
        (
            MINIMAL.to_owned(),
            Some("s3cr3t-12chr"),
            format!(
                "environment variable EAI_GATEWAY_PSEUDONYM_KEY: a key of 12 characters is too short: {HOW}"
            ),
        ),
        (
            MINIMAL.to_owned(),
            Some("tiny"),
            format!(
                "environment variable EAI_GATEWAY_PSEUDONYM_KEY: a key of 4 characters is too short: {HOW}"
            ),
        ),
    ];
    for (text, key_env, want) in cases {
        let err = deployed(&text, key_env).unwrap_err();
        assert_eq!(err.to_string(), want, "{text:?} {key_env:?}");
    }
    // A secret is never shown, even when refused.
    let err = deployed(&with_key("s3cr3t-12chr"), None).unwrap_err();
    assert!(!err.to_string().contains("s3cr3t"), "{err}");
    // Other mistakes come first.
    let err = deployed(&format!("{MINIMAL}threads: 0\n"), None).unwrap_err();
    assert_eq!(err.key, "threads");
    // `parse` (tests, tools) still takes the built-in key.
    assert_eq!(
        parse(MINIMAL).unwrap().users.pseudonym_key,
        DEFAULT_PSEUDONYM_KEY
    );
}

#[test]
fn a_deployment_takes_a_good_key_from_the_file_or_the_variable() {
    let good = "9f2c4e7a1b3d5f60";
    let from_file = deployed(
        &format!("{MINIMAL}users: {{pseudonym_key: '{good}'}}\n"),
        None,
    )
    .unwrap();
    assert_eq!(from_file.users.pseudonym_key, good);
    let from_env = deployed(
        &format!("{MINIMAL}users: {{pseudonym_key: change-me-please}}\n"),
        Some(good),
    )
    .unwrap();
    assert_eq!(from_env.users.pseudonym_key, good);
    // An empty variable is no variable.
    assert!(deployed(MINIMAL, Some("")).is_err());
}
