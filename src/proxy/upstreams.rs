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

use async_trait::async_trait;
use pingora::lb::health_check::{HealthCheck, HealthObserve, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, LoadBalancer};
use pingora::prelude::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

use crate::metrics::{UPSTREAM_BACKEND_UP, UpstreamMetrics};
use crate::settings::{HealthCheckKind, HealthCheckSettings, Settings, UpstreamSettings};

pub struct Upstream {
    /// `upstream:<name>`: the route label in logs and metrics.
    pub label: Arc<str>,
    name: Arc<str>,
    lb: LoadBalancer<RoundRobin>,
    cfg: UpstreamSettings,
    /// Whether the health-check task of this upstream has been started.
    checking: AtomicBool,
    pub metrics: UpstreamMetrics,
}

impl Upstream {
    fn new(name: &str, cfg: &UpstreamSettings) -> Result<Self, String> {
        let mut lb = LoadBalancer::try_from_iter(cfg.backends.iter().map(String::as_str))
            .map_err(|e| format!("upstreams.{name}.backends: {e}"))?;
        let name: Arc<str> = Arc::from(name);
        if let Some(hc) = &cfg.health_check {
            lb.set_health_check(health_check(&name, hc, cfg));
        }
        Ok(Self {
            label: format!("upstream:{name}").into(),
            metrics: UpstreamMetrics::new(&name),
            name,
            lb,
            cfg: cfg.clone(),
            checking: AtomicBool::new(false),
        })
    }

    /// The name under `upstreams`: the metrics' `upstream` label.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A backend in rotation, other than `avoid` (one whose connection just
    /// failed); `None` when there is none.
    pub fn peer(&self, avoid: Option<&SocketAddr>) -> Option<HttpPeer> {
        let backend = self.lb.select_with(b"", 256, |b, healthy| {
            healthy && avoid.is_none_or(|a| b.addr.as_inet() != Some(a))
        })?;
        let sni = self.cfg.sni.clone().unwrap_or_else(|| {
            backend
                .addr
                .to_string()
                .rsplit_once(':')
                .map(|(h, _)| h.to_owned())
                .unwrap_or_default()
        });
        let mut peer = HttpPeer::new(backend, self.cfg.tls, sni);
        peer.options.connection_timeout = Some(self.cfg.connect_timeout);
        peer.options.read_timeout = Some(self.cfg.read_timeout);
        Some(peer)
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
    /// Longest prefix first.
    routes: Vec<Route>,
    default: Option<Route>,
    upstreams: BTreeMap<String, Arc<Upstream>>,
}

/// Where a path goes and how its target is sent.
#[derive(Clone)]
pub struct Route {
    prefix: String,
    pub upstream: Arc<Upstream>,
    /// `routes[].forward_raw_path`: the client's target, not the normalised one.
    pub forward_raw_path: bool,
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
                built.get(&r.upstream).map(|u| Route {
                    prefix: r.prefix.clone(),
                    upstream: u.clone(),
                    forward_raw_path: r.forward_raw_path,
                })
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let default = cfg
            .default_upstream
            .as_ref()
            .and_then(|d| built.get(d).cloned())
            .map(|upstream| Route {
                prefix: "/".into(),
                upstream,
                forward_raw_path: false,
            });
        Ok(Self {
            routes,
            default,
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

    /// A prefix matches whole segments: `/api` takes `/api` and `/api/x`, not `/apix`.
    pub fn lookup(&self, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| {
                path.strip_prefix(r.prefix.as_str()).is_some_and(|rest| {
                    r.prefix.ends_with('/')
                        || rest.is_empty()
                        || rest.starts_with('/')
                        || rest.starts_with('?')
                })
            })
            .or(self.default.as_ref())
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
            cfg.routes.push(RouteSettings {
                prefix: prefix.into(),
                upstream: upstream.into(),
                forward_raw_path: false,
            });
        }
        cfg.default_upstream = Some("d".into());
        cfg.validate().unwrap();
        let t = RouteTable::new(&cfg, None).unwrap();
        let label = |p: &str| t.lookup(p).map(|r| r.upstream.label.to_string());
        assert_eq!(label("/api").as_deref(), Some("upstream:a"));
        assert_eq!(label("/api/x").as_deref(), Some("upstream:a"));
        assert_eq!(label("/api/v2/x").as_deref(), Some("upstream:b"));
        assert_eq!(label("/apix").as_deref(), Some("upstream:d"));
        assert_eq!(label("/").as_deref(), Some("upstream:d"));
    }
}
