//! Metric definitions. Labels are bounded by construction: route templates
//! and upstream names come from config, never from the request path, and no
//! label ever carries a user number or message text.
// Registration fails only on a duplicate name or a malformed definition,
// programming errors that the first test run catches.
#![allow(clippy::expect_used)]

use std::sync::LazyLock;

use prometheus::{
    Gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    exponential_buckets, register_gauge, register_histogram, register_histogram_vec,
    register_int_counter, register_int_counter_vec, register_int_gauge, register_int_gauge_vec,
};

/// Buckets of HTTP-level durations: 1 ms to 30 s.
const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of chat and agent-service durations: 25 ms to 120 s, with the
/// usual objectives (1, 2.5, 5, 10, 30 s) as bounds, so quantiles near them
/// are read, not guessed.
const CHAT_BUCKETS: &[f64] = &[
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];
/// Buckets of database statements: 0.5 ms to 5 s.
const DB_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

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
        HTTP_BUCKETS.to_vec()
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

pub static AGENT_SERVICE_RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "eai_gateway_agent_service_retries_total",
        "Calls tried again because the agent service refused them before taking them, \
         by operation and reason (connect_refused, unavailable_503, too_many_429, busy_409).",
        &["operation", "reason"]
    )
    .expect("metric definition")
});

pub static AGENT_SERVICE_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "eai_gateway_agent_service_call_duration_seconds",
        "Duration of one agent-service call, by operation.",
        &["operation"],
        CHAT_BUCKETS.to_vec()
    )
    .expect("metric definition")
});

pub static AGENTS_CREATED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "eai_gateway_agents_created_total",
        "Agents created at the agent service for users."
    )
    .expect("metric definition")
});

pub static ORPHANED_AGENTS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "eai_gateway_orphaned_agents",
        "Agents tagged as the gateway's that no mapping references, as the last periodic \
         look found them (state=found) and deleted them (state=deleted).",
        &["state"]
    )
    .expect("metric definition")
});

pub static DUPLICATE_MAPPINGS_SERVED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "eai_gateway_duplicate_mappings_served_total",
        "Mapping lookups that found a user under more than one stored spelling \
         (served by agents.duplicate_policy; resolve with `eai-gateway mappings resolve`)."
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

pub static TRACE_SPANS_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "eai_gateway_trace_spans_dropped_total",
        "Spans not exported: the queue was full (queue_full) or the collector refused or did not answer (export_failed).",
        &["reason"]
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

pub static CHAT_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "eai_gateway_chat_duration_seconds",
        "Time from a chat's arrival to its answer, by outcome (ok, error).",
        &["outcome"],
        CHAT_BUCKETS.to_vec()
    )
    .expect("metric definition")
});

pub static CHAT_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "eai_gateway_chat_requests_total",
        "Chats taken, by form (blocking, async, stream) and whether an Idempotency-Key's earlier chat answered them (replayed).",
        &["mode", "replayed"]
    )
    .expect("metric definition")
});

pub static BUILD_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "eai_gateway_build_info",
        "Always 1; the version of the running binary and its commit in the labels.",
        &["version", "commit"]
    )
    .expect("metric definition")
});

/// Gauges read when the metrics are scraped (`saturation.rs`).
pub static CHATS_IN_FLIGHT: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "eai_gateway_chats_in_flight",
        "Chats admitted and not yet answered (what limits.max_inflight_chats caps)."
    )
    .expect("metric definition")
});

pub static CHATS_IN_FLIGHT_LIMIT: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "eai_gateway_chats_in_flight_limit",
        "limits.max_inflight_chats; 0 when there is no limit."
    )
    .expect("metric definition")
});

pub static CHATS_WAITING: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "eai_gateway_chats_waiting",
        "Chats queued behind an earlier message of the same user."
    )
    .expect("metric definition")
});

pub static AGENT_CALLS_IN_FLIGHT: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "eai_gateway_agent_service_calls_in_flight",
        "Agent-service calls on the wire."
    )
    .expect("metric definition")
});

pub static AGENT_CALLS_WAITING: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "eai_gateway_agent_service_calls_waiting",
        "Agent-service calls waiting for one of agent_service.max_concurrent_calls."
    )
    .expect("metric definition")
});

pub static DB_CONNECTIONS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "eai_gateway_db_connections",
        "Database pool connections, by state (in_use, idle).",
        &["state"]
    )
    .expect("metric definition")
});

pub static DB_CONNECTIONS_MAX: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "eai_gateway_db_connections_max",
        "database.max_connections."
    )
    .expect("metric definition")
});

pub static MAPPING_CACHE_ENTRIES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "eai_gateway_mapping_cache_entries",
        "Mappings in this replica's cache: stored minus removed, at most agents.cache_capacity (evictions are not seen, so an upper bound)."
    )
    .expect("metric definition")
});

pub static LEASES_HELD: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "eai_gateway_leases_held",
        "Users' agent leases this replica holds: messages being delivered or processed."
    )
    .expect("metric definition")
});

pub static DB_STATEMENT_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "eai_gateway_db_statement_duration_seconds",
        "Duration of one database statement, by operation (waiting for a connection excluded).",
        &["operation"],
        DB_BUCKETS.to_vec()
    )
    .expect("metric definition")
});

pub static DB_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "eai_gateway_db_errors_total",
        "Database statements that failed, by operation; no connection in time counts too.",
        &["operation"]
    )
    .expect("metric definition")
});

pub static UPSTREAM_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "eai_gateway_upstream_requests_total",
        "Pass-through requests, by upstream and the backend's status class (1xx..5xx; error when no response came).",
        &["upstream", "status_class"]
    )
    .expect("metric definition")
});

pub static UPSTREAM_RESPONSE_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "eai_gateway_upstream_response_duration_seconds",
        "From choosing a backend to the end of its response, by upstream.",
        &["upstream"],
        HTTP_BUCKETS.to_vec()
    )
    .expect("metric definition")
});

pub static UPSTREAM_TTFB: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "eai_gateway_upstream_ttfb_seconds",
        "From choosing a backend to its response header, by upstream.",
        &["upstream"],
        HTTP_BUCKETS.to_vec()
    )
    .expect("metric definition")
});

pub static UPSTREAM_CONNECT_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "eai_gateway_upstream_connect_failures_total",
        "Connections to a backend that failed, by upstream.",
        &["upstream"]
    )
    .expect("metric definition")
});

pub static UPSTREAM_RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "eai_gateway_upstream_retries_total",
        "Requests sent to another backend after a failed connection, by upstream.",
        &["upstream"]
    )
    .expect("metric definition")
});

/// Label values of the counters whose label sets are known in advance,
/// exported at 0 from start-up so that rates and alerts have data before
/// the first event.
pub const DB_OPERATIONS: &[&str] = &[
    "get",
    "claim",
    "replace",
    "delete",
    "ping",
    "try_lease",
    "renew_leases",
    "release_lease",
    "begin_record",
    "read_record",
    "finish_record",
    "renew_records",
    "purge_records",
];
const AGENT_OPERATIONS: &[&str] = &[
    "create_agent",
    "delete_agent",
    "send",
    "send_sync",
    "poll",
    "fetch_messages",
    "fetch_usage",
    "send_stream",
];
const AGENT_OUTCOMES: &[&str] = &[
    "ok",
    "http_4xx",
    "http_5xx",
    "unreachable",
    "invalid_response",
    "queue_timeout",
];
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// One upstream's pass-through series, resolved once when the upstream is
/// built, so a proxied request does no label lookup; creating them exports
/// the counters at 0.
pub struct UpstreamMetrics {
    /// By `STATUS_CLASSES`.
    requests: [IntCounter; 6],
    pub ttfb: Histogram,
    pub response: Histogram,
    pub connect_failures: IntCounter,
    pub retries: IntCounter,
    /// `eai_gateway_request_duration_seconds` of the requests routed here
    /// (route label `upstream:<name>`), found once instead of per request.
    pub request_duration: Histogram,
}

impl UpstreamMetrics {
    /// `route`: the route label of requests routed to this upstream.
    pub fn new(upstream: &str, route: &str) -> Self {
        Self {
            requests: STATUS_CLASSES
                .map(|class| UPSTREAM_REQUESTS.with_label_values(&[upstream, class])),
            ttfb: UPSTREAM_TTFB.with_label_values(&[upstream]),
            response: UPSTREAM_RESPONSE_DURATION.with_label_values(&[upstream]),
            connect_failures: UPSTREAM_CONNECT_FAILURES.with_label_values(&[upstream]),
            retries: UPSTREAM_RETRIES.with_label_values(&[upstream]),
            request_duration: REQUEST_DURATION.with_label_values(&[route]),
        }
    }

    /// Counts a request by the backend's status class; `None`: no response.
    pub fn request(&self, status: Option<http::StatusCode>) {
        let class = status
            .map(|s| usize::from(s.as_u16() / 100))
            .filter(|c| (1..=5).contains(c))
            .map_or(5, |c| c - 1);
        self.requests[class].inc();
    }
}

/// Forces registration, so a scrape lists the plain metrics before the
/// first request.
pub fn init() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&REQUEST_DURATION);
    LazyLock::force(&AGENT_SERVICE_CALLS);
    LazyLock::force(&AGENT_SERVICE_DURATION);
    LazyLock::force(&AGENT_SERVICE_RETRIES);
    LazyLock::force(&AGENTS_CREATED);
    LazyLock::force(&DUPLICATE_MAPPINGS_SERVED);
    for state in ["found", "deleted"] {
        ORPHANED_AGENTS.with_label_values(&[state]);
    }
    LazyLock::force(&CHAT_POLLS);
    LazyLock::force(&CHAT_OVERHEAD);
    LazyLock::force(&MAPPING_CACHE);
    LazyLock::force(&REJECTIONS);
    LazyLock::force(&ABANDONED_MESSAGES);
    LazyLock::force(&MAPPING_INVALIDATIONS);
    LazyLock::force(&MAPPING_LISTENER_RECONNECTS);
    LazyLock::force(&REDIS_FALLBACKS);
    for reason in ["queue_full", "export_failed"] {
        TRACE_SPANS_DROPPED.with_label_values(&[reason]);
    }
    for result in ["success", "failure"] {
        CONFIG_RELOADS.with_label_values(&[result]);
    }
    LazyLock::force(&UPSTREAM_BACKEND_UP);
    for result in ["hit", "miss"] {
        MAPPING_CACHE.with_label_values(&[result]);
    }
    for kind in crate::error::ErrorKind::REJECTING {
        if let Some(reason) = kind.rejection() {
            REJECTIONS.with_label_values(&[reason]);
        }
    }
    for op in AGENT_OPERATIONS {
        for outcome in AGENT_OUTCOMES {
            AGENT_SERVICE_CALLS.with_label_values(&[op, outcome]);
        }
    }
    for op in DB_OPERATIONS {
        DB_ERRORS.with_label_values(&[op]);
    }
    for outcome in ["ok", "error"] {
        CHAT_DURATION.with_label_values(&[outcome]);
    }
    for mode in ["blocking", "async", "stream"] {
        for replayed in ["true", "false"] {
            CHAT_REQUESTS.with_label_values(&[mode, replayed]);
        }
    }
    BUILD_INFO
        .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("EAI_GATEWAY_COMMIT")])
        .set(1);
    for gauge in [
        &CHATS_IN_FLIGHT,
        &CHATS_IN_FLIGHT_LIMIT,
        &CHATS_WAITING,
        &AGENT_CALLS_IN_FLIGHT,
        &AGENT_CALLS_WAITING,
        &DB_CONNECTIONS_MAX,
        &MAPPING_CACHE_ENTRIES,
        &LEASES_HELD,
    ] {
        LazyLock::force(gauge);
    }
    for state in ["in_use", "idle"] {
        DB_CONNECTIONS.with_label_values(&[state]);
    }
    LazyLock::force(&DB_STATEMENT_DURATION);
    LazyLock::force(&UPSTREAM_RESPONSE_DURATION);
    LazyLock::force(&UPSTREAM_TTFB);
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
