//! The pass-through route table: path prefix → named upstream → round-robin
//! backend, skipping backends that their health check has taken out.
//!
//! A reload builds a new table but keeps every upstream whose settings did
//! not change, with its load balancer and its backends' health; a new or
//! changed upstream starts with every backend in rotation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora::lb::health_check::{HealthCheck, HealthObserve, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, LoadBalancer};
use pingora::prelude::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

use crate::metrics::{UPSTREAM_BACKEND_UP, UpstreamMetrics};
use crate::settings::{
    HeaderRules, HealthCheckKind, HealthCheckSettings, RouteSettings, Settings, UpstreamSettings,
};

pub struct Upstream {
    /// `upstream:<name>`: the route label in logs and metrics.
    pub label: Arc<str>,
    name: Arc<str>,
    lb: LoadBalancer<RoundRobin>,
    cfg: UpstreamSettings,
    /// Whether the health-check task of this upstream has been started.
    checking: AtomicBool,
    pub metrics: UpstreamMetrics,
    /// The peer of an upstream with one backend (the backend set is fixed
    /// at start-up and on reload): no selection to make, no peer to build.
    only: Option<(Backend, HttpPeer)>,
}

impl Upstream {
    fn new(name: &str, cfg: &UpstreamSettings) -> Result<Self, String> {
        let mut lb = LoadBalancer::try_from_iter(cfg.backends.iter().map(String::as_str))
            .map_err(|e| format!("upstreams.{name}.backends: {e}"))?;
        let name: Arc<str> = Arc::from(name);
        if let Some(hc) = &cfg.health_check {
            lb.set_health_check(health_check(&name, hc, cfg));
        }
        let backends = lb.backends().get_backend();
        let only = (backends.len() == 1)
            .then(|| backends.iter().next())
            .flatten()
            .map(|backend| (backend.clone(), make_peer(cfg, backend.clone())));
        let label: Arc<str> = format!("upstream:{name}").into();
        Ok(Self {
            metrics: UpstreamMetrics::new(&name, &label),
            label,
            name,
            lb,
            cfg: cfg.clone(),
            checking: AtomicBool::new(false),
            only,
        })
    }

    /// The name under `upstreams`: the metrics' `upstream` label.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A backend in rotation, other than `avoid` (one whose connection just
    /// failed); `None` when there is none.
    pub fn peer(&self, avoid: Option<&SocketAddr>) -> Option<HttpPeer> {
        let usable = |b: &Backend, healthy: bool| {
            healthy && avoid.is_none_or(|a| b.addr.as_inet() != Some(a))
        };
        if let Some((backend, peer)) = &self.only {
            // Health is looked up only where it is checked: every backend
            // of an unchecked upstream stays in rotation.
            let healthy = self.cfg.health_check.is_none() || self.lb.backends().ready(backend);
            return usable(backend, healthy).then(|| peer.clone());
        }
        let backend = self.lb.select_with(b"", 256, usable)?;
        Some(make_peer(&self.cfg, backend))
    }

    /// Sets the backend gauge from the current health of every backend.
    fn publish_health(&self) {
        for backend in self.lb.backends().get_backend().iter() {
            let up = self.lb.backends().ready(backend);
            UPSTREAM_BACKEND_UP
                .with_label_values(&[&*self.name, &backend.addr.to_string()])
                .set(i64::from(up));
        }
    }

    /// Starts this upstream's health checks, once; the task ends when the
    /// upstream is dropped (a reload replaced it).
    fn start_checks(self: &Arc<Self>) {
        let Some(hc) = &self.cfg.health_check else {
            return;
        };
        if self.checking.swap(true, Ordering::Relaxed) {
            return;
        }
        let interval = hc.interval;
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(upstream) = weak.upgrade() else {
                    return;
                };
                upstream.lb.backends().run_health_check(true).await;
            }
        });
    }
}

fn health_check(
    name: &Arc<str>,
    hc: &HealthCheckSettings,
    upstream: &UpstreamSettings,
) -> Box<dyn HealthCheck + Send + Sync> {
    let observer = Box::new(HealthGauge {
        upstream: name.clone(),
    });
    match hc.kind {
        HealthCheckKind::Tcp => {
            let mut check = TcpHealthCheck::new();
            check.consecutive_success = hc.healthy_after;
            check.consecutive_failure = hc.unhealthy_after;
            check.peer_template.options.connection_timeout = Some(hc.timeout);
            check.health_changed_callback = Some(observer);
            check
        }
        HealthCheckKind::Http => {
            let host = hc
                .host
                .clone()
                .or_else(|| upstream.sni.clone())
                .unwrap_or_else(|| {
                    upstream
                        .backends
                        .first()
                        .and_then(|b| b.rsplit_once(':'))
                        .map(|(h, _)| h.to_owned())
                        .unwrap_or_default()
                });
            let mut check = HttpHealthCheck::new(&host, upstream.tls);
            if let Ok(req) = RequestHeader::build("GET", hc.path.as_bytes(), None) {
                check.req = req;
                // Checked by validation: a path and a host of config.
                let _ = check.req.insert_header("host", host.as_str());
                let _ = check
                    .req
                    .insert_header("user-agent", "eai-gateway-health-check");
            }
            check.consecutive_success = hc.healthy_after;
            check.consecutive_failure = hc.unhealthy_after;
            check.peer_template.options.connection_timeout = Some(hc.timeout);
            check.peer_template.options.read_timeout = Some(hc.timeout);
            check.peer_template.options.total_connection_timeout = Some(hc.timeout);
            let expect = hc.expect_status;
            check.validator = Some(Box::new(move |resp| {
                if resp.status.as_u16() == expect {
                    Ok(())
                } else {
                    pingora::Error::e_explain(
                        pingora::ErrorType::CustomCode("unexpected status", resp.status.as_u16()),
                        "during health check",
                    )
                }
            }));
            check.health_changed_callback = Some(observer);
            Box::new(check)
        }
    }
}

/// Keeps `eai_gateway_upstream_backend_up` and the log in step with a
/// backend's health.
struct HealthGauge {
    upstream: Arc<str>,
}

#[async_trait]
impl HealthObserve for HealthGauge {
    async fn observe(&self, target: &Backend, healthy: bool) {
        let backend = target.addr.to_string();
        UPSTREAM_BACKEND_UP
            .with_label_values(&[&*self.upstream, &backend])
            .set(i64::from(healthy));
        if healthy {
            tracing::info!(upstream = %self.upstream, backend, "Backend passed its health check: back in rotation.");
        } else {
            tracing::warn!(upstream = %self.upstream, backend, "Backend failed its health check: out of rotation.");
        }
    }
}

pub struct RouteTable {
    /// In matching order: routes with an exact host, then with a wildcard
    /// host, then without; longest prefix first within each. The default
    /// upstream's route, when there is one, comes last.
    routes: Vec<Route>,
    /// How many of `routes` are matched by host and prefix.
    matching: usize,
    upstreams: BTreeMap<String, Arc<Upstream>>,
}

/// A route of one `RouteTable`: what a request keeps instead of the route
/// itself, which a shared pointer would cost two atomic updates of a count
/// that every request on every thread touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteId(usize);

/// Where a request goes and what is done to it on the way.
pub struct Route {
    prefix: String,
    host: Option<HostMatch>,
    pub upstream: Arc<Upstream>,
    /// `routes[].forward_raw_path`: the client's target, not the normalised one.
    pub forward_raw_path: bool,
    /// `routes[].strip_prefix`: the prefix is not sent to the backend.
    pub strip_prefix: bool,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    pub max_body_bytes: Option<u64>,
    /// `routes[].timeout_ms`: a late backend is the client's 504.
    pub timeout: Option<Duration>,
}

fn make_peer(cfg: &UpstreamSettings, backend: Backend) -> HttpPeer {
    // Plaintext peers have no SNI: formatting the address for one cost
    // every pass-through request about 2,000 instructions.
    let sni = match (&cfg.sni, cfg.tls) {
        (Some(sni), _) => sni.clone(),
        (None, true) => backend
            .addr
            .to_string()
            .rsplit_once(':')
            .map(|(h, _)| h.to_owned())
            .unwrap_or_default(),
        (None, false) => String::new(),
    };
    let mut peer = HttpPeer::new(backend, cfg.tls, sni);
    peer.options.connection_timeout = Some(cfg.connect_timeout);
    peer.options.read_timeout = Some(cfg.read_timeout);
    peer
}

/// `routes[].host`, lower-cased.
enum HostMatch {
    Exact(String),
    /// `*.example.com`, kept as `.example.com`.
    Suffix(String),
}

impl HostMatch {
    fn new(raw: &str) -> Self {
        let raw = raw.to_ascii_lowercase();
        match raw.strip_prefix('*') {
            Some(suffix) => Self::Suffix(suffix.to_owned()),
            None => Self::Exact(raw),
        }
    }

    /// `host` is lower-cased, without port.
    fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(name) => host == name,
            Self::Suffix(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Self::Exact(_) => 0,
            Self::Suffix(_) => 1,
        }
    }
}

/// `request_headers` / `response_headers` of a route, parsed once.
#[derive(Default)]
pub struct HeaderEdits {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderEdits {
    /// How many names `edits` may add: room to reserve before applying.
    pub fn added(edits: Option<&Self>) -> usize {
        edits.map_or(0, |e| e.set.len())
    }

    /// Removes, then sets: a name in both lists ends up set.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }

    fn new(rules: &HeaderRules) -> Self {
        // Validated with the settings: nothing is dropped here.
        Self {
            set: rules
                .set
                .iter()
                .filter_map(|(n, v)| {
                    Some((
                        HeaderName::from_bytes(n.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect(),
            remove: rules
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
        }
    }
}

impl Route {
    fn new(r: &RouteSettings, upstream: Arc<Upstream>) -> Self {
        Self {
            prefix: r.prefix.clone(),
            host: r.host.as_deref().map(HostMatch::new),
            upstream,
            forward_raw_path: r.forward_raw_path,
            strip_prefix: r.strip_prefix,
            request_headers: HeaderEdits::new(&r.request_headers),
            response_headers: HeaderEdits::new(&r.response_headers),
            max_body_bytes: r.max_body_bytes,
            timeout: r.timeout_ms.map(Duration::from_millis),
        }
    }

    fn default_for(upstream: Arc<Upstream>) -> Self {
        Self::new(&RouteSettings::new("/", ""), upstream)
    }

    /// A prefix matches whole segments: `/api` takes `/api` and `/api/x`,
    /// not `/apix`.
    fn matches(&self, host: Option<&str>, path: &str) -> bool {
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(m), Some(h)) => m.matches(h),
            (Some(_), None) => false,
        };
        host_ok
            && path.strip_prefix(self.prefix.as_str()).is_some_and(|rest| {
                self.prefix.ends_with('/')
                    || rest.is_empty()
                    || rest.starts_with('/')
                    || rest.starts_with('?')
            })
    }

    /// The path the backend gets for `path`, when this route changes it.
    pub fn strip<'a>(&self, path: &'a str) -> Option<&'a str> {
        if !self.strip_prefix || self.prefix == "/" {
            return None;
        }
        let rest = path
            .strip_prefix(self.prefix.trim_end_matches('/'))
            .unwrap_or(path);
        Some(if rest.is_empty() { "/" } else { rest })
    }
}

impl RouteTable {
    /// The table of `cfg`, keeping the upstreams of `previous` whose
    /// settings are unchanged (with their backends' health).
    pub fn new(cfg: &Settings, previous: Option<&RouteTable>) -> Result<Self, String> {
        let kept: BTreeMap<&str, &Arc<Upstream>> = previous
            .map(|p| p.upstreams.iter().map(|(n, u)| (n.as_str(), u)).collect())
            .unwrap_or_default();
        let mut built = BTreeMap::new();
        for (name, u) in &cfg.upstreams {
            let upstream = match kept.get(name.as_str()) {
                Some(old) if old.cfg == *u => Arc::clone(old),
                _ => Arc::new(Upstream::new(name, u)?),
            };
            built.insert(name.clone(), upstream);
        }
        let mut routes: Vec<Route> = cfg
            .routes
            .iter()
            .filter_map(|r| {
                let upstream = built.get(&r.upstream)?.clone();
                Some(Route::new(r, upstream))
            })
            .collect();
        routes.sort_by_key(|r| {
            (
                r.host.as_ref().map_or(2, HostMatch::rank),
                std::cmp::Reverse(r.prefix.len()),
            )
        });
        let matching = routes.len();
        routes.extend(
            cfg.default_upstream
                .as_ref()
                .and_then(|d| built.get(d).cloned())
                .map(Route::default_for),
        );
        Ok(Self {
            routes,
            matching,
            upstreams: built,
        })
    }

    /// Starts the health checks of upstreams that have one (those already
    /// running keep running) and sets the backend gauge to exactly this
    /// table's backends. Needs a Tokio runtime.
    pub fn activate(&self) {
        UPSTREAM_BACKEND_UP.reset();
        for upstream in self.upstreams.values() {
            upstream.publish_health();
            upstream.start_checks();
        }
    }

    /// The route of a request for `host` (lower-cased, without port) and
    /// `path`; the default upstream's when no route claims it.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<RouteId> {
        let matched = self.routes[..self.matching]
            .iter()
            .position(|r| r.matches(host, path));
        let default = (self.routes.len() > self.matching).then_some(self.matching);
        matched.or(default).map(RouteId)
    }

    /// A route `lookup` gave.
    pub fn route(&self, id: RouteId) -> &Route {
        &self.routes[id.0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_segment_prefix_wins_then_default() {
        use crate::settings::{AgentServiceSettings, RouteSettings};
        let mut cfg = Settings::new(AgentServiceSettings::default());
        for (name, port) in [("a", 1001), ("b", 1002), ("d", 1003)] {
            let backend = format!("127.0.0.1:{port}");
            cfg.upstreams
                .insert(name.into(), UpstreamSettings::with_backends([backend]));
        }
        for (prefix, upstream) in [("/api", "a"), ("/api/v2", "b")] {
            cfg.routes.push(RouteSettings::new(prefix, upstream));
        }
        cfg.default_upstream = Some("d".into());
        cfg.validate().unwrap();
        let t = RouteTable::new(&cfg, None).unwrap();
        let label = |p: &str| {
            t.lookup(None, p)
                .map(|id| t.route(id).upstream.label.to_string())
        };
        assert_eq!(label("/api").as_deref(), Some("upstream:a"));
        assert_eq!(label("/api/x").as_deref(), Some("upstream:a"));
        assert_eq!(label("/api/v2/x").as_deref(), Some("upstream:b"));
        assert_eq!(label("/apix").as_deref(), Some("upstream:d"));
        assert_eq!(label("/").as_deref(), Some("upstream:d"));
    }

    #[test]
    fn host_routes_win_exact_first_and_strip_their_prefix() {
        use crate::settings::{AgentServiceSettings, RouteSettings};
        let mut cfg = Settings::new(AgentServiceSettings::default());
        for (name, port) in [("exact", 1001), ("wild", 1002), ("any", 1003)] {
            let backend = format!("127.0.0.1:{port}");
            cfg.upstreams
                .insert(name.into(), UpstreamSettings::with_backends([backend]));
        }
        let route = |host: Option<&str>, prefix: &str, upstream: &str| RouteSettings {
            host: host.map(str::to_owned),
            strip_prefix: true,
            ..RouteSettings::new(prefix, upstream)
        };
        cfg.routes = vec![
            route(None, "/api/long", "any"),
            route(Some("*.example.com"), "/api", "wild"),
            route(Some("a.example.com"), "/", "exact"),
        ];
        cfg.validate().unwrap();
        let t = RouteTable::new(&cfg, None).unwrap();
        let label = |h: Option<&str>, p: &str| {
            t.lookup(h, p)
                .map(|id| t.route(id).upstream.label.to_string())
        };
        assert_eq!(
            label(Some("a.example.com"), "/api/long").as_deref(),
            Some("upstream:exact")
        );
        assert_eq!(
            label(Some("b.example.com"), "/api/long").as_deref(),
            Some("upstream:wild")
        );
        assert_eq!(
            label(Some("x.b.example.com"), "/api").as_deref(),
            Some("upstream:wild")
        );
        assert_eq!(
            label(Some("example.com"), "/api/long").as_deref(),
            Some("upstream:any")
        );
        assert_eq!(label(None, "/api/long").as_deref(), Some("upstream:any"));
        assert_eq!(label(Some("b.example.com"), "/other"), None);
        let strip = |h: &str, p: &str| {
            t.lookup(Some(h), p)
                .and_then(|id| t.route(id).strip(p).map(str::to_owned))
        };
        assert_eq!(strip("b.example.com", "/api/x/y").as_deref(), Some("/x/y"));
        assert_eq!(strip("b.example.com", "/api").as_deref(), Some("/"));
        assert_eq!(
            strip("a.example.com", "/api/x"),
            None,
            "prefix / strips nothing"
        );
    }
}
