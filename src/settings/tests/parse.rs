//! What a file becomes: defaults, types, and the key named by a bad value.

use super::*;

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

#[test]
fn lean_passthrough_is_on_unless_turned_off() {
    assert!(parse(MINIMAL).unwrap().lean_passthrough);
    assert!(
        !parse(&format!("{MINIMAL}lean_passthrough: false\n"))
            .unwrap()
            .lean_passthrough
    );
    let err = parse(&format!("{MINIMAL}lean_passthrough: sometimes\n")).unwrap_err();
    assert_eq!(err.key, "lean_passthrough");
    assert!(
        err.message
            .starts_with("got the text \"sometimes\", expected true or false"),
        "{err}"
    );
}
