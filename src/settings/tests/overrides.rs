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

#[test]
fn redis_cluster_urls_come_as_a_list_a_string_or_the_variable() {
    let nodes = |s: &Settings| {
        s.limits
            .redis_cluster_urls
            .as_ref()
            .map(|urls| format!("{urls:?}"))
    };
    let want = Some("[redis://127.0.0.1:7000, redis://127.0.0.1:7001]".to_owned());
    for extra in [
        "limits: {redis_cluster_urls: ['redis://127.0.0.1:7000', 'redis://127.0.0.1:7001']}\n",
        "limits: {redis_cluster_urls: 'redis://127.0.0.1:7000, redis://127.0.0.1:7001'}\n",
    ] {
        let s = parse(&format!("{MINIMAL}{extra}")).unwrap();
        assert_eq!(nodes(&s), want, "{extra:?}");
    }
    let var = |k: &str| {
        (k == env::REDIS_CLUSTER_URLS)
            .then(|| "redis://127.0.0.1:7000,redis://127.0.0.1:7001,".to_owned())
    };
    let s = Settings::parse(MINIMAL, var).unwrap();
    assert_eq!(nodes(&s), want);
    assert!(s.limits.redis_url.is_none());
}

#[test]
fn otel_variables_set_span_export_and_errors_name_them() {
    let s = parse(MINIMAL).unwrap();
    assert!(s.tracing.otlp_endpoint.is_none(), "off by default");
    let s = Settings::parse(MINIMAL, |k| match k {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://collector:4318".into()),
        "OTEL_SERVICE_NAME" => Some("gw-eu".into()),
        "OTEL_RESOURCE_ATTRIBUTES" => Some("deployment.environment=prod,team=a%2Cb".into()),
        "OTEL_TRACES_SAMPLER" => Some("parentbased_traceidratio".into()),
        "OTEL_TRACES_SAMPLER_ARG" => Some("0.25".into()),
        _ => None,
    })
    .unwrap();
    let t = &s.tracing;
    assert_eq!(
        t.otlp_endpoint.as_ref().map(|u| u.as_str()),
        Some("http://collector:4318/")
    );
    assert_eq!(t.service_name, "gw-eu");
    assert_eq!(t.resource_attributes["deployment.environment"], "prod");
    assert_eq!(t.resource_attributes["team"], "a,b");
    assert_eq!(t.sampler, SamplerKind::ParentbasedTraceidratio);
    assert_eq!(t.sampler_arg, 0.25);
    for (var, value) in [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
        ("OTEL_RESOURCE_ATTRIBUTES", "no-equals-sign"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "half"),
    ] {
        let err = Settings::parse(MINIMAL, |k| (k == var).then(|| value.into())).unwrap_err();
        assert!(err.from_env && err.key == var, "{var}: {err}");
    }
    for (extra, key) in [
        ("tracing: {sampler_arg: 1.5}\n", "tracing.sampler_arg"),
        ("tracing: {queue_spans: 1}\n", "tracing.queue_spans"),
        ("tracing: {service_name: ''}\n", "tracing.service_name"),
        (
            "tracing: {otlp_endpoint: 'udp://x'}\n",
            "tracing.otlp_endpoint",
        ),
        ("tracing: {sampler: never}\n", "tracing.sampler"),
    ] {
        let err = parse(&format!("{MINIMAL}{extra}")).unwrap_err();
        assert_eq!(err.key, key, "{extra}: {err}");
    }
}
