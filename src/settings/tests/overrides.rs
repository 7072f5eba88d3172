//! The environment variables that override the file.

use super::*;

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
