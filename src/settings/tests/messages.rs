//! Errors in the words of the YAML file, naming the key, the file or the
//! variable.

use super::*;

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
            "database: {direct_url: 'postgres://h/db'}\n",
            "database.direct_url: applies to PostgreSQL only: database.url is SQLite",
        ),
        (
            "database: {url: 'postgres://h/db', direct_url: 'sqlite://x.db'}\n",
            "database.direct_url: must be a postgres:// URL",
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

#[test]
fn redis_cluster_urls_errors_name_the_key_and_hide_passwords() {
    let cases = [
        (
            "limits: {redis_cluster_urls: ['redis://127.0.0.1:7000', 'http://r:1']}\n",
            "limits.redis_cluster_urls: seed node 2: the scheme \"http\" is not known: \
             expected redis:// or rediss://",
        ),
        (
            "limits: {redis_cluster_urls: []}\n",
            "limits.redis_cluster_urls: no seed node: expected redis:// URLs",
        ),
        (
            "limits: {redis_cluster_urls: ' , '}\n",
            "limits.redis_cluster_urls: no seed node: expected redis:// URLs",
        ),
        (
            "limits: {redis_cluster_urls: {a: 1}}\n",
            "limits.redis_cluster_urls: got a section of `key: value` lines, expected a list",
        ),
        (
            "limits:\n  redis_url: 'redis://127.0.0.1:6379'\n  \
             redis_cluster_urls: ['redis://127.0.0.1:7000']\n",
            "limits.redis_cluster_urls: is set together with limits.redis_url",
        ),
        (
            "limits: {user_rate_per_min: 0, redis_cluster_urls: ['redis://127.0.0.1:7000']}\n",
            "limits.redis_cluster_urls: shares limits.user_rate_per_min, which is 0 (off)",
        ),
        (
            "limits: {user_rate_per_min: 0, redis_url: 'redis://127.0.0.1:6379'}\n",
            "limits.redis_url: shares limits.user_rate_per_min, which is 0 (off)",
        ),
    ];
    assert_errors_start_with(&cases);
    for (extra, want) in [
        (
            "limits: {redis_cluster_urls: ['redis://:PW-ONE@a:1', 'redis://:PW-TWO@b:2']}\n",
            "not a usable set of seed nodes: Cannot use different password among initial nodes",
        ),
        (
            "limits: {redis_cluster_urls: 'redis://:PW-ONE@a:1,redis://:PW-ONE@b:bad'}\n",
            "seed node 2: not a valid Redis URL",
        ),
    ] {
        let err = parse(&format!("{MINIMAL}{extra}")).unwrap_err();
        assert_eq!(err.key, "limits.redis_cluster_urls", "{err}");
        assert!(err.message.starts_with(want), "{extra:?}: {err}");
        assert!(!err.to_string().contains("PW-"), "password shown: {err}");
    }
    let env = |k: &str| {
        (k == env::REDIS_CLUSTER_URLS).then(|| "redis://a:1, redis://:PW-ONE@b:bad".to_owned())
    };
    let err = Settings::parse(MINIMAL, env).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "environment variable {}: {}",
            env::REDIS_CLUSTER_URLS,
            err.message
        )
    );
    assert!(
        err.message
            .starts_with("seed node 2: not a valid Redis URL"),
        "{err}"
    );
    assert!(!err.message.contains("PW-"), "password shown: {err}");
}
