//! The pass-through route table: path prefix → named upstream → round-robin backend.

use std::sync::Arc;

use pingora::lb::LoadBalancer;
use pingora::lb::selection::RoundRobin;
use pingora::upstreams::peer::HttpPeer;

use crate::settings::{Settings, UpstreamSettings};

pub struct Upstream {
    /// `upstream:<name>`: the route label in logs and metrics.
    pub label: Arc<str>,
    lb: LoadBalancer<RoundRobin>,
    cfg: UpstreamSettings,
}

impl Upstream {
    fn new(name: &str, cfg: &UpstreamSettings) -> Result<Self, String> {
        let lb = LoadBalancer::try_from_iter(cfg.backends.iter().map(String::as_str))
            .map_err(|e| format!("upstreams.{name}.backends: {e}"))?;
        Ok(Self {
            label: format!("upstream:{name}").into(),
            lb,
            cfg: cfg.clone(),
        })
    }

    pub fn peer(&self) -> Option<HttpPeer> {
        let backend = self.lb.select(b"", 256)?;
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
}

pub struct RouteTable {
    /// Longest prefix first.
    routes: Vec<Route>,
    default: Option<Route>,
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
    pub fn new(cfg: &Settings) -> Result<Self, String> {
        let mut built = std::collections::BTreeMap::new();
        for (name, u) in &cfg.upstreams {
            built.insert(name.clone(), Arc::new(Upstream::new(name, u)?));
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
        Ok(Self { routes, default })
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
        let t = RouteTable::new(&cfg).unwrap();
        let label = |p: &str| t.lookup(p).map(|r| r.upstream.label.to_string());
        assert_eq!(label("/api").as_deref(), Some("upstream:a"));
        assert_eq!(label("/api/x").as_deref(), Some("upstream:a"));
        assert_eq!(label("/api/v2/x").as_deref(), Some("upstream:b"));
        assert_eq!(label("/apix").as_deref(), Some("upstream:d"));
        assert_eq!(label("/").as_deref(), Some("upstream:d"));
    }
}
