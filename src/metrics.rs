//! Metric definitions. Labels are bounded by construction: route templates
//! and upstream names come from config, never from the request path, and no
//! label ever carries a user number or message text.
// Registration fails only on a duplicate name or a malformed definition,
// programming errors that the first test run catches.
#![allow(clippy::expect_used)]

use std::sync::LazyLock;

use prometheus::{
    Gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, exponential_buckets,
    register_gauge, register_histogram, register_histogram_vec, register_int_counter,
    register_int_counter_vec, register_int_gauge_vec,
};

pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "eai_gateway_requests_total",
        "Requests answered, by route template, method and status.",
        &["route", "method", "status"]
    )
    .expect("metric definition")
});

pub static REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "eai_gateway_request_duration_seconds",
        "Time from request start to the end of the response, by route template.",
        &["route"],
        exponential_buckets(0.001, 2.0, 19).expect("buckets")
    )
    .expect("metric definition")
});

pub static AGENT_SERVICE_CALLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "eai_gateway_agent_service_calls_total",
        "Calls to the agent service, by operation and outcome.",
        &["operation", "outcome"]
    )
    .expect("metric definition")
});

pub static AGENT_SERVICE_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "eai_gateway_agent_service_call_duration_seconds",
        "Duration of one agent-service call, by operation.",
        &["operation"],
        exponential_buckets(0.001, 2.0, 16).expect("buckets")
    )
    .expect("metric definition")
});

pub static AGENTS_CREATED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "eai_gateway_agents_created_total",
        "Agents created upstream for users."
    )
    .expect("metric definition")
});

pub static CHAT_POLLS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "eai_gateway_chat_polls",
        "Status polls needed per chat.",
        vec![1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 55.0, 89.0, 144.0]
    )
    .expect("metric definition")
});

pub static CHAT_OVERHEAD: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "eai_gateway_chat_overhead_seconds",
        "Chat time not spent on agent-service calls or between polls: the gateway's own cost.",
        exponential_buckets(0.0005, 2.0, 16).expect("buckets")
    )
    .expect("metric definition")
});

pub static MAPPING_CACHE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "eai_gateway_mapping_cache_total",
        "Mapping cache lookups on the chat path, by result (hit, miss).",
        &["result"]
    )
    .expect("metric definition")
});

pub static REJECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "eai_gateway_rejections_total",
        "Requests refused before any work, by reason (unauthorized, user_rate, user_queue, max_inflight, payload_too_large, bad_path, ...).",
        &["reason"]
    )
    .expect("metric definition")
});

pub static ABANDONED_MESSAGES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "eai_gateway_abandoned_messages_total",
        "Messages given up on while still processing: chat.max_processing_seconds passed after the send, or the process shut down."
    )
    .expect("metric definition")
});

pub static MAPPING_INVALIDATIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "eai_gateway_mapping_invalidations_total",
        "Mapping changes announced by other replicas (PostgreSQL NOTIFY) and dropped from this replica's cache."
    )
    .expect("metric definition")
});

pub static MAPPING_LISTENER_RECONNECTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "eai_gateway_mapping_listener_reconnects_total",
        "Times the mapping-notification connection was re-established (each clears the mapping cache)."
    )
    .expect("metric definition")
});

pub static REDIS_FALLBACKS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "eai_gateway_redis_fallbacks_total",
        "Per-user rate checks that Redis could not answer, decided by limits.redis_fallback instead."
    )
    .expect("metric definition")
});

pub static CONFIG_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "eai_gateway_config_reloads_total",
        "Configuration reloads (SIGHUP), by result (success, failure).",
        &["result"]
    )
    .expect("metric definition")
});

pub static CONFIG_LAST_RELOAD_SUCCESS: LazyLock<Gauge> = LazyLock::new(|| {
    register_gauge!(
        "eai_gateway_config_last_reload_success_timestamp_seconds",
        "Unix time of the last configuration that was taken: start-up or the last successful reload."
    )
    .expect("metric definition")
});

pub static UPSTREAM_BACKEND_UP: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "eai_gateway_upstream_backend_up",
        "1 while a pass-through backend is in rotation, 0 while its health check has taken it out; by upstream and backend address (both from config).",
        &["upstream", "backend"]
    )
    .expect("metric definition")
});

/// Forces registration, so a scrape lists the plain metrics before the
/// first request.
pub fn init() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&REQUEST_DURATION);
    LazyLock::force(&AGENT_SERVICE_CALLS);
    LazyLock::force(&AGENT_SERVICE_DURATION);
    LazyLock::force(&AGENTS_CREATED);
    LazyLock::force(&CHAT_POLLS);
    LazyLock::force(&CHAT_OVERHEAD);
    LazyLock::force(&MAPPING_CACHE);
    LazyLock::force(&REJECTIONS);
    LazyLock::force(&ABANDONED_MESSAGES);
    LazyLock::force(&MAPPING_INVALIDATIONS);
    LazyLock::force(&MAPPING_LISTENER_RECONNECTS);
    LazyLock::force(&REDIS_FALLBACKS);
    for result in ["success", "failure"] {
        CONFIG_RELOADS.with_label_values(&[result]);
    }
    LazyLock::force(&UPSTREAM_BACKEND_UP);
    config_taken();
}

/// Records that a configuration was taken, now.
pub fn config_taken() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    CONFIG_LAST_RELOAD_SUCCESS.set(now);
}

/// HTTP methods as a bounded label set.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}
