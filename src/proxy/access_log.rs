//! The access line and the request metrics of every finished request, on
//! each of the three paths (native, lean pass-through, pingora-proxy).

use std::time::{Duration, Instant};

use http::StatusCode;

use crate::context::RequestId;
use crate::metrics;

/// A finished request, as every access line names it.
pub(super) struct Served<'a> {
    /// A template or `upstream:<name>`, never the raw path.
    pub route: &'a str,
    pub method: &'a http::Method,
    pub started: Instant,
    pub request_id: Option<&'a RequestId>,
    /// Served on the front's own session (native routes and the lean
    /// pass-through), not inside pingora-proxy.
    pub lean: bool,
}

/// What the access line adds for a proxied request.
pub(super) struct Proxied<'a> {
    pub upstream: &'a str,
    /// The request duration histogram of its route label.
    pub duration: &'a prometheus::Histogram,
    pub backend: Option<std::net::SocketAddr>,
    /// From choosing the backend to the end of its response.
    pub upstream_time: Option<Duration>,
}

/// The access line and request metrics of one finished request. `route` is
/// a template or `upstream:<name>`, never the raw path; no status means the
/// client went away before any response.
pub(super) fn record(
    served: Served<'_>,
    status: Option<StatusCode>,
    proxied: Option<Proxied<'_>>,
    error: Option<&'static str>,
) {
    let Served {
        route,
        method,
        started,
        request_id,
        lean,
    } = served;
    let method = metrics::method_label(method);
    let elapsed = started.elapsed();
    let status_label = status.as_ref().map_or("0", StatusCode::as_str);
    let status = status.map_or(0, |s| s.as_u16());
    let request_id_str = request_id.map(RequestId::as_str);
    metrics::REQUESTS
        .with_label_values(&[route, method, status_label])
        .inc();
    match proxied.as_ref() {
        Some(p) => p.duration.observe(elapsed.as_secs_f64()),
        None => metrics::REQUEST_DURATION
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64()),
    }
    // Field expressions run only when the line is logged: the trace id's
    // hex and the backend's address cost nothing at a quieter level.
    tracing::info!(
        request_id = request_id_str,
        trace_id = request_id.map(|id| id.trace().trace_id()),
        route,
        // Which path served it, so that an operator (and a test) can tell.
        via = if lean { "lean" } else { "pingora-proxy" },
        method,
        status,
        ms = millis(elapsed),
        upstream = proxied.as_ref().map(|p| p.upstream),
        backend = proxied
            .as_ref()
            .and_then(|p| p.backend)
            .map(|b| b.to_string()),
        upstream_ms = proxied.as_ref().and_then(|p| p.upstream_time).map(millis),
        error,
        "Request."
    );
}

/// Milliseconds to the microsecond: float noise (0.39179200000000003)
/// helps no one.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}
