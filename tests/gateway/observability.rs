//! The metrics page: documented names, bounded labels, no personal data.

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_list_documented_names_and_no_phone_number() {
    let (_sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(DbKind::Sqlite);
    let gw = GatewayProcess::start(GatewaySpec::new(Dialect::Eai, &db, sim_addr)).await;
    let user = "5521912345678";
    let agent_route = "/eai-gateway/agent/{user_number}";
    let chat_route = "/eai-gateway/chat";
    let requests = "eai_gateway_requests_total";
    let calls = "eai_gateway_agent_service_calls_total";
    let call_seconds = "eai_gateway_agent_service_call_duration_seconds_count";
    let request_seconds = "eai_gateway_request_duration_seconds_count";
    // The samples one chat and one lookup move, each by exactly one. A
    // documented name that is merely present proves nothing: init()
    // registers most of them at 0 before any request.
    let chat_ok = [("route", chat_route), ("method", "POST"), ("status", "200")];
    let lookup_ok = [("route", agent_route), ("method", "GET"), ("status", "200")];
    let once: &[(&str, &[(&str, &str)])] = &[
        (requests, &chat_ok),
        (requests, &lookup_ok),
        (request_seconds, &[("route", chat_route)]),
        (request_seconds, &[("route", agent_route)]),
        (calls, &[("operation", "create_agent"), ("outcome", "ok")]),
        (calls, &[("operation", "send"), ("outcome", "ok")]),
        (call_seconds, &[("operation", "create_agent")]),
        (call_seconds, &[("operation", "send")]),
        ("eai_gateway_agents_created_total", &[]),
        ("eai_gateway_chat_polls_count", &[]),
        ("eai_gateway_chat_overhead_seconds_count", &[]),
        (
            "eai_gateway_chat_duration_seconds_count",
            &[("outcome", "ok")],
        ),
        ("eai_gateway_mapping_cache_total", &[("result", "miss")]),
    ];
    let before = gw.metrics().await;

    let (status, body) = gw.chat(user, "métricas").await;
    assert_eq!(status, 200, "{body}");
    let r = reqwest::get(gw.url(&format!("/eai-gateway/agent/{user}")))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let after = gw.metrics().await;
    let page = &after.page;
    let grew = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels).unwrap_or(0.0) - before.value(name, labels).unwrap_or(0.0)
    };
    for (name, labels) in once {
        assert_eq!(grew(name, labels), 1.0, "{name}{labels:?}:\n{page}");
    }
    // The poll histogram counts the polls the chat made: as many as the
    // poll calls made to the agent service, and at least one.
    let polls = grew("eai_gateway_chat_polls_sum", &[]);
    assert!(polls >= 1.0, "{page}");
    assert_eq!(
        grew(calls, &[("operation", "poll"), ("outcome", "ok")]),
        polls,
        "{page}"
    );
    assert!(
        !page.contains(user) && !page.contains("12345678"),
        "phone number leaked into metrics"
    );
    assert!(
        !page.contains("métricas"),
        "message text leaked into metrics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_reaches_the_agent_service_backends_and_the_log() {
    use axum::http::HeaderMap;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let recorder = seen.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let recorder = recorder.clone();
        async move {
            if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
                recorder.lock().unwrap().push(tp.to_owned());
            }
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(DbKind::Sqlite);
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut spec = GatewaySpec::new(Dialect::Eai, &db, sim_addr);
    spec.default_upstream = Some(backend.to_string());
    spec.log_file = Some(log.path().to_owned());
    let gw = GatewayProcess::start(spec).await;
    let client = reqwest::Client::new();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming = format!("00-{trace}-00f067aa0ba902b7-01");

    let r = client
        .post(gw.url("/eai-gateway/chat"))
        .header("traceparent", &incoming)
        .json(&serde_json::json!({"user_number": "5521988887777", "message": "trace me"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let to_agent = sim.traceparents();
    assert!(!to_agent.is_empty());
    for tp in &to_agent {
        assert!(tp.starts_with(&format!("00-{trace}-")), "{tp}");
        assert!(!tp.contains("00f067aa0ba902b7"), "a span of its own: {tp}");
    }

    let r = client
        .get(gw.url("/page"))
        .header("traceparent", &incoming)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Without one, the gateway starts a trace of its own.
    client.get(gw.url("/page")).send().await.unwrap();
    let at_backend = seen.lock().unwrap().clone();
    assert_eq!(at_backend.len(), 2, "{at_backend:?}");
    assert!(at_backend[0].starts_with(&format!("00-{trace}-")));
    assert!(!at_backend[1].contains(trace));

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(log.path())
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &serde_json::Value| l["fields"]["message"] == "Request.")
        .collect();
    let traced: Vec<_> = lines
        .iter()
        .filter(|l| l["fields"]["trace_id"] == trace)
        .collect();
    assert_eq!(traced.len(), 2, "{lines:?}");
    let proxied = traced
        .iter()
        .find(|l| l["fields"]["route"] == "upstream:default")
        .expect("proxied access line");
    assert_eq!(proxied["fields"]["backend"], backend.to_string());
    assert!(proxied["fields"]["upstream_ms"].as_f64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturation_and_pass_through_metrics_follow_the_traffic() {
    let backend = plain_backend().await;
    let dead = format!("127.0.0.1:{}", free_port());
    let (_sim, sim_addr) = simulator(1500).await;
    let db = TestDb::new(DbKind::Postgres);
    let mut spec = GatewaySpec::new(Dialect::Eai, &db, sim_addr);
    spec.extra_yaml = format!(
        "upstreams:\n  web:\n    backends: [\"{dead}\", \"{backend}\"]\nroutes:\n  - prefix: /web\n    upstream: web\n"
    );
    spec.database_extra = "  max_connections: 7\n".into();
    let gw = GatewayProcess::start(spec).await;
    let before = gw.metrics().await;
    for class in ["1xx", "2xx", "3xx", "4xx", "5xx", "error"] {
        let v = before.value(
            "eai_gateway_upstream_requests_total",
            &[("upstream", "web"), ("status_class", class)],
        );
        assert_eq!(v, Some(0.0), "{class} exported at 0");
    }

    // Three chats of one user (two wait behind the first) and one of another.
    let mut chats = Vec::new();
    for (user, n) in [("5521911110001", 3), ("5521911110002", 1)] {
        for i in 0..n {
            let client = reqwest::Client::new();
            let url = gw.url("/eai-gateway/chat");
            chats.push(tokio::spawn(async move {
                client
                    .post(url)
                    .json(&serde_json::json!({"user_number": user, "message": format!("m{i}")}))
                    .send()
                    .await
                    .unwrap()
                    .status()
            }));
        }
    }
    let busy = eventually_metrics(&gw, |m| {
        m.value("eai_gateway_chats_in_flight", &[]) == Some(4.0)
            && m.value("eai_gateway_chats_waiting", &[]) == Some(2.0)
            && m.value("eai_gateway_leases_held", &[]) == Some(2.0)
    })
    .await;
    assert!(
        busy,
        "saturation gauges did not show 4 in flight, 2 waiting, 2 leases"
    );
    let m = gw.metrics().await;
    assert_eq!(
        m.value("eai_gateway_chats_in_flight_limit", &[]),
        Some(512.0)
    );
    assert_eq!(m.value("eai_gateway_db_connections_max", &[]), Some(7.0));

    for _ in 0..4 {
        let r = reqwest::get(gw.url("/web/x")).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    for chat in chats {
        assert_eq!(chat.await.unwrap(), 200);
    }
    let m = gw.metrics().await;
    let web = [("upstream", "web")];
    assert_eq!(
        m.value(
            "eai_gateway_upstream_requests_total",
            &[("upstream", "web"), ("status_class", "2xx")]
        ),
        Some(4.0)
    );
    let failures = m
        .value("eai_gateway_upstream_connect_failures_total", &web)
        .unwrap();
    assert!(failures >= 1.0, "round robin reaches the dead backend");
    assert_eq!(
        m.value("eai_gateway_upstream_retries_total", &web),
        Some(failures)
    );
    assert_eq!(
        m.value("eai_gateway_upstream_ttfb_seconds_count", &web),
        Some(4.0)
    );
    assert_eq!(m.value("eai_gateway_chats_in_flight", &[]), Some(0.0));
    assert_eq!(m.value("eai_gateway_chats_waiting", &[]), Some(0.0));
    assert_eq!(
        m.value(
            "eai_gateway_chat_duration_seconds_count",
            &[("outcome", "ok")]
        ),
        Some(4.0)
    );
    assert!(
        m.value(
            "eai_gateway_db_statement_duration_seconds_count",
            &[("operation", "claim")]
        )
        .is_some_and(|n| n >= 2.0)
    );
    assert_eq!(
        m.value("eai_gateway_db_errors_total", &[("operation", "get")]),
        Some(0.0)
    );
}

async fn eventually_metrics(gw: &GatewayProcess, cond: impl Fn(&Metrics) -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if cond(&gw.metrics().await) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}
