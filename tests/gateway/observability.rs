//! The metrics page: documented names, bounded labels, no personal data.

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_list_documented_names_and_no_phone_number() {
    let (_sim, sim_addr) = simulator(10).await;
    let db = TestDb::new(DbKind::Sqlite);
    let gw = GatewayProcess::start(GatewaySpec::new(Dialect::Eai, &db, sim_addr)).await;
    let user = "5521912345678";
    let (status, body) = gw.chat(user, "métricas").await;
    assert_eq!(status, 200, "{body}");
    let r = reqwest::get(gw.url(&format!("/eai-gateway/agent/{user}")))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let metrics = gw.metrics().await;
    let page = &metrics.page;
    for name in [
        "eai_gateway_requests_total",
        "eai_gateway_request_duration_seconds_bucket",
        "eai_gateway_agent_service_calls_total",
        "eai_gateway_agent_service_call_duration_seconds_bucket",
        "eai_gateway_agents_created_total",
        "eai_gateway_chat_polls_bucket",
        "eai_gateway_chat_overhead_seconds_bucket",
    ] {
        assert!(page.contains(name), "{name} missing from:\n{page}");
    }
    let agent_route = "/eai-gateway/agent/{user_number}";
    let chat_route = "/eai-gateway/chat";
    let requests = "eai_gateway_requests_total";
    assert_eq!(
        metrics.value(
            requests,
            &[("route", agent_route), ("method", "GET"), ("status", "200")]
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        metrics.value(
            requests,
            &[("route", chat_route), ("method", "POST"), ("status", "200")]
        ),
        Some(1.0),
        "{page}"
    );
    let calls = "eai_gateway_agent_service_calls_total";
    for operation in ["create_agent", "send"] {
        assert_eq!(
            metrics.value(calls, &[("operation", operation), ("outcome", "ok")]),
            Some(1.0),
            "{operation}: {page}"
        );
    }
    assert_eq!(
        metrics.value("eai_gateway_agents_created_total", &[]),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        metrics.value("eai_gateway_mapping_cache_total", &[("result", "miss")]),
        Some(1.0),
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
