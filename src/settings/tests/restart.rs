//! Which changes a reload takes and which need a restart.

use super::*;

/// The file `MINIMAL` with `extra` added.
fn with(extra: &str) -> String {
    format!("{MINIMAL}{extra}")
}

/// For every key of `RESTART_ONLY`, files that differ from `MINIMAL` in
/// that key alone; a section's key has one file per key of the section.
fn changes_of_each_restart_only_key() -> Vec<(&'static str, Vec<String>)> {
    let agent =
        |dialect: &str, url: &str| format!("agent_service:\n  dialect: {dialect}\n  url: {url}\n");
    vec![
        ("listen", vec![with("listen: 127.0.0.1:1\n")]),
        (
            "metrics_listen",
            vec![with("metrics_listen: 127.0.0.1:9091\n")],
        ),
        (
            "tls.listen",
            vec![with(
                "tls: {listen: '127.0.0.1:8443', cert_file: c.pem, key_file: k.pem}\n",
            )],
        ),
        ("threads", vec![with("threads: 3\n")]),
        ("read_buffer_bytes", vec![with("read_buffer_bytes: 4096\n")]),
        (
            "upgrade_sock",
            vec![with("upgrade_sock: /tmp/other.sock\n")],
        ),
        (
            "shutdown.drain_seconds",
            vec![with("shutdown: {drain_seconds: 3}\n")],
        ),
        (
            "database",
            vec![
                with("database: {url: 'sqlite://other.db'}\n"),
                with("database: {schema: other}\n"),
                with("database: {max_connections: 3}\n"),
                with("database: {acquire_timeout_ms: 9}\n"),
            ],
        ),
        (
            "agent_service.dialect",
            vec![agent("letta", "http://127.0.0.1:9")],
        ),
        (
            "agent_service.url",
            vec![agent("eai", "http://127.0.0.1:10")],
        ),
        (
            "agents.cache_capacity",
            vec![with("agents: {cache_capacity: 5}\n")],
        ),
        (
            "agents.cache_ttl_seconds",
            vec![with("agents: {cache_ttl_seconds: 7}\n")],
        ),
        (
            "agents.reconcile_interval_seconds",
            vec![with("agents: {reconcile_interval_seconds: 60}\n")],
        ),
        (
            "agents.reconcile_delete",
            vec![with("agents: {reconcile_delete: true}\n")],
        ),
        (
            "agents.orphan_min_age_seconds",
            vec![with("agents: {orphan_min_age_seconds: 60}\n")],
        ),
        (
            "users",
            vec![
                with("users: {pattern: '^[0-9]{8}$'}\n"),
                with("users: {pseudonym_key: another-key-123}\n"),
            ],
        ),
        (
            "tracing",
            vec![
                with("tracing: {otlp_endpoint: 'http://127.0.0.1:4318'}\n"),
                with("tracing: {service_name: other}\n"),
                with("tracing: {resource_attributes: {a: b}}\n"),
                with("tracing: {sampler: always_off}\n"),
                with("tracing: {sampler_arg: 0.5}\n"),
                with("tracing: {queue_spans: 100}\n"),
            ],
        ),
    ]
}

#[test]
fn a_change_of_each_restart_only_key_alone_is_named() {
    let base = parse(MINIMAL).unwrap();
    let cases = changes_of_each_restart_only_key();
    // Driven by the table: a key added to it fails here until it has a case.
    for entry in RESTART_ONLY {
        assert!(
            cases.iter().any(|(key, _)| *key == entry.key),
            "RESTART_ONLY key {:?} has no change in this test",
            entry.key
        );
    }
    assert_eq!(
        cases.len(),
        RESTART_ONLY.len(),
        "a case for a key not in the table"
    );
    for (key, texts) in cases {
        for text in texts {
            let new = parse(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(base.restart_only_changes(&new), [key], "{text:?}");
            assert_eq!(new.restart_only_changes(&base), [key], "{text:?}");
            assert!(
                new.restart_only_changes(&new.clone()).is_empty(),
                "{text:?}"
            );
        }
    }
}

#[test]
fn a_change_of_a_reloadable_key_is_taken() {
    let base = parse(MINIMAL).unwrap();
    let reloadable = [
        "lean_passthrough: false\n",
        "agents: {delete_agent_on_delete: true}\n",
        "agents: {delete_wait_seconds: 3, duplicate_policy: newest}\n",
        "chat: {timeout_seconds: 9, poll: {jitter: 0.5}}\n",
        "limits: {user_rate_per_min: 3, redis_url: 'redis://127.0.0.1:6379'}\n",
        "limits: {redis_cluster_urls: ['redis://127.0.0.1:7000', 'redis://127.0.0.1:7001']}\n",
        "paths: {merge_slashes: false}\n",
        "upstreams: {a: {backends: ['127.0.0.1:1']}}\nroutes: [{prefix: /a, upstream: a}]\n",
        "upstreams: {a: {backends: ['127.0.0.1:1']}}\ndefault_upstream: a\n",
    ];
    for extra in reloadable {
        let new = parse(&with(extra)).unwrap_or_else(|e| panic!("{extra:?}: {e}"));
        assert!(base.restart_only_changes(&new).is_empty(), "{extra:?}");
    }
    let agent = "agent_service:\n  dialect: eai\n  url: http://127.0.0.1:9\n  \
                 token: rotated\n  request_timeout_ms: 5000\n  retry: {max_retries: 1}\n";
    let new = parse(agent).unwrap();
    assert!(base.restart_only_changes(&new).is_empty());
    let tokens = |k: &str| (k == env::TOKENS).then(|| "a-token-of-enough-length".to_owned());
    let new = Settings::parse(MINIMAL, tokens).unwrap();
    assert!(base.restart_only_changes(&new).is_empty());
}

#[test]
fn every_key_that_moved_is_named_in_the_order_of_the_table() {
    let base = parse(MINIMAL).unwrap();
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
fn a_changed_secret_is_named_never_shown() {
    let db = |pw: &str| {
        with(&format!(
            "database: {{url: 'postgres://u:{pw}@db:5432/x'}}\n"
        ))
    };
    let (a, b) = (
        parse(&db("first-pw-1")).unwrap(),
        parse(&db("second-pw-2")).unwrap(),
    );
    assert_eq!(a.restart_only_changes(&b), ["database"]);
    let refused = crate::reload::refuse_restart_only(&a, &b).unwrap_err();
    assert!(
        refused.starts_with("database: cannot change while running"),
        "{refused}"
    );
    let key = |k: &str| {
        let var = move |v: &str| (v == env::PSEUDONYM_KEY).then(|| k.to_owned());
        Settings::parse(MINIMAL, var).unwrap()
    };
    let (a, b) = (key("first-key-1234"), key("second-key-5678"));
    assert_eq!(a.restart_only_changes(&b), ["users"]);
    assert!(a.restart_only_changes(&key("first-key-1234")).is_empty());
    let refused = crate::reload::refuse_restart_only(&a, &b).unwrap_err();
    for secret in [
        "first-pw-1",
        "second-pw-2",
        "first-key-1234",
        "second-key-5678",
    ] {
        assert!(!refused.contains(secret), "{secret} in {refused}");
    }
}

#[test]
fn secrets_are_equal_by_value() {
    let url = |u: &str| DatabaseUrl::parse(u).unwrap();
    assert_eq!(url("postgres://u:a@db/x"), url("postgres://u:a@db/x"));
    assert_ne!(url("postgres://u:a@db/x"), url("postgres://u:b@db/x"));
    assert_ne!(url("sqlite://x"), url("sqlite:x"));
    let users = |key: &str| UserSettings {
        pseudonym_key: key.into(),
        ..UserSettings::default()
    };
    assert_eq!(users("k-0123456789"), users("k-0123456789"));
    assert_ne!(users("k-0123456789"), users("k-0123456780"));
}
