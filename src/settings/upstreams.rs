//! `upstreams:`, `routes:` and `default_upstream:` the pass-through table.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::secret::Redacted;
use super::{ConfigError, units};

/// `upstreams.NAME`: one pass-through upstream and its backends.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// One or more `host:port`, used round robin.
    pub backends: Vec<String>,
    /// `connect_timeout_ms`: bound on opening a connection to a backend.
    #[serde(rename = "connect_timeout_ms", with = "units::millis")]
    pub connect_timeout: Duration,
    /// Longest silence between two reads from the backend.
    #[serde(rename = "read_timeout_ms", with = "units::millis")]
    pub read_timeout: Duration,
    /// Speak TLS to the backends.
    pub tls: bool,
    /// SNI and certificate name when `tls` is on; defaults to the host.
    pub sni: Option<String>,
    /// Active health check; without one every backend stays in rotation
    /// (a failed connection is still retried once on another backend).
    pub health_check: Option<HealthCheckSettings>,
}

/// `upstreams.NAME.health_check`: probes every backend on its own clock.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckSettings {
    /// `http` (a GET of `path` must answer `expect_status`) or `tcp` (a
    /// connection must open).
    #[serde(rename = "type")]
    pub kind: HealthCheckKind,
    /// `http` probes only: the path requested.
    pub path: String,
    /// `http` probes only: the status that counts as healthy.
    pub expect_status: u16,
    /// `Host` header of the probe; defaults to the backend's host.
    pub host: Option<String>,
    /// `interval_ms`: time between two probes of one backend.
    #[serde(rename = "interval_ms", with = "units::millis")]
    pub interval: Duration,
    /// Bound on one probe (connect and response); at most the interval.
    #[serde(rename = "timeout_ms", with = "units::millis")]
    pub timeout: Duration,
    /// Consecutive passed probes that bring a backend back.
    pub healthy_after: usize,
    /// Consecutive failed probes that take a backend out of rotation.
    pub unhealthy_after: usize,
}

/// How a backend is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// A GET of `path` must answer `expect_status`.
    Http,
    /// A TCP connection must open.
    Tcp,
}

impl Default for HealthCheckSettings {
    fn default() -> Self {
        Self {
            kind: HealthCheckKind::Http,
            path: "/".into(),
            expect_status: 200,
            host: None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_after: 2,
            unhealthy_after: 1,
        }
    }
}

impl HealthCheckSettings {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.interval < Duration::from_millis(50) {
            return Err(ConfigError::out_of_range(
                format!("{key}.interval_ms"),
                self.interval.as_millis(),
                "must be at least 50",
            ));
        }
        if self.timeout.is_zero() || self.timeout > self.interval {
            return Err(ConfigError::out_of_range(
                format!("{key}.timeout_ms"),
                self.timeout.as_millis(),
                &format!(
                    "must be at least 1 and at most interval_ms ({})",
                    self.interval.as_millis()
                ),
            ));
        }
        if !self.path.starts_with('/') {
            return Err(ConfigError::new(
                format!("{key}.path"),
                format!("{:?} does not start with '/'", self.path),
            ));
        }
        if !(100..=599).contains(&self.expect_status) {
            return Err(ConfigError::out_of_range(
                format!("{key}.expect_status"),
                self.expect_status,
                "must be an HTTP status between 100 and 599",
            ));
        }
        for (name, n) in [
            ("healthy_after", self.healthy_after),
            ("unhealthy_after", self.unhealthy_after),
        ] {
            if !(1..=100).contains(&n) {
                return Err(ConfigError::out_of_range(
                    format!("{key}.{name}"),
                    n,
                    "must be between 1 and 100",
                ));
            }
        }
        Ok(())
    }
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            backends: Vec::new(),
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(60),
            tls: false,
            sni: None,
            health_check: None,
        }
    }
}

impl UpstreamSettings {
    /// The defaults, for these backends.
    pub fn with_backends<S: Into<String>>(backends: impl IntoIterator<Item = S>) -> Self {
        Self {
            backends: backends.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }
}

/// One entry of `routes:`: requests for a host and under a path prefix go to
/// an upstream, with the rules of this route.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    /// Path prefix, matched on whole segments (`/api` takes `/api/x`, not
    /// `/apix`); `/` (every path) when absent.
    #[serde(default = "root_prefix")]
    pub prefix: String,
    /// Host the request must name (its `Host` header, or the HTTP/2
    /// authority; port and case ignored): exact (`api.example.com`) or a
    /// wildcard for every name under a domain (`*.example.com`, which does
    /// not take `example.com` itself). Any host when absent. A route with a
    /// host wins over one without; an exact host over a wildcard.
    #[serde(default)]
    pub host: Option<String>,
    /// Name of the upstream (a key of `upstreams:`).
    pub upstream: String,
    /// Send the backend the request target exactly as the client wrote it
    /// instead of the normalised path. Unsafe with path rules in the
    /// backend: routing here still uses the normalised path.
    #[serde(default)]
    pub forward_raw_path: bool,
    /// Forward the path without the matched prefix: `/api/x` as `/x`,
    /// `/api` as `/`.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Headers set on (replacing what the client sent) or removed from the
    /// request to the backend.
    #[serde(default)]
    pub request_headers: HeaderRules,
    /// Headers set on or removed from the backend's response.
    #[serde(default)]
    pub response_headers: HeaderRules,
    /// Largest request body on this route: a larger declared
    /// `Content-Length` gets 413 before the body is read, a chunked body 413
    /// once it passes the bound. No bound when absent.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// How long the backend may take to start its answer, and stay silent
    /// within it; past it the client gets 504 with `{"detail"}`. The
    /// upstream's `read_timeout_ms` when absent.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl RouteSettings {
    /// A route of every request under `prefix` to `upstream`, with no rules.
    pub fn new(prefix: impl Into<String>, upstream: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            host: None,
            upstream: upstream.into(),
            forward_raw_path: false,
            strip_prefix: false,
            request_headers: HeaderRules::default(),
            response_headers: HeaderRules::default(),
            max_body_bytes: None,
            timeout_ms: None,
        }
    }
}

fn root_prefix() -> String {
    "/".to_owned()
}

/// `request_headers` / `response_headers` of a route.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeaderRules {
    /// Header name → value, replacing any value already there.
    pub set: BTreeMap<String, String>,
    /// Header names to remove.
    pub remove: Vec<String>,
}

/// Names without values: a route may set the credentials its backend
/// takes (`Authorization`, an API key).
impl fmt::Debug for HeaderRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { set, remove } = self;
        let set = fmt::from_fn(|f| {
            f.debug_map()
                .entries(set.keys().map(|k| (k, Redacted)))
                .finish()
        });
        f.debug_struct("HeaderRules")
            .field("set", &set)
            .field("remove", remove)
            .finish()
    }
}

/// Headers that frame the message or the connection: a route that set or
/// removed them would corrupt the exchange, so none may.
const FRAMING_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

impl HeaderRules {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let name_ok = |key: String, name: &str| {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::new(
                    key,
                    format!("{name:?} is not a valid header name"),
                ));
            }
            if FRAMING_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(ConfigError::new(
                    key,
                    format!("{name:?} frames the message and cannot be changed by a route"),
                ));
            }
            Ok(())
        };
        for (name, value) in &self.set {
            let key = format!("{key}.set.{name}");
            name_ok(key.clone(), name)?;
            if http::HeaderValue::from_str(value).is_err() {
                return Err(ConfigError::new(
                    key,
                    "is not a valid header value (visible ASCII, spaces and tabs only)",
                ));
            }
        }
        for (i, name) in self.remove.iter().enumerate() {
            name_ok(format!("{key}.remove[{i}]"), name)?;
        }
        Ok(())
    }
}

/// `host` of a route: a DNS name, or `*.` and one.
fn validate_host(key: &str, host: &str) -> Result<(), ConfigError> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() <= 253 && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!("{host:?} is not a host name (expected e.g. api.example.com or *.example.com)"),
        ))
    }
}

pub(crate) fn validate(
    upstreams: &BTreeMap<String, UpstreamSettings>,
    routes: &[RouteSettings],
    default: Option<&str>,
) -> Result<(), ConfigError> {
    for (name, u) in upstreams {
        let key = format!("upstreams.{name}");
        if u.backends.is_empty() {
            return Err(ConfigError::new(
                format!("{key}.backends"),
                "is empty: needs at least one host:port",
            ));
        }
        for (i, b) in u.backends.iter().enumerate() {
            host_port(&format!("{key}.backends[{i}]"), b)?;
        }
        if u.connect_timeout.is_zero() {
            return Err(ConfigError::out_of_range(
                format!("{key}.connect_timeout_ms"),
                0,
                "must be at least 1",
            ));
        }
        if u.read_timeout.is_zero() {
            return Err(ConfigError::out_of_range(
                format!("{key}.read_timeout_ms"),
                0,
                "must be at least 1",
            ));
        }
        if let Some(hc) = &u.health_check {
            hc.validate(&format!("{key}.health_check"))?;
        }
    }
    let native = crate::routes::NATIVE_PREFIX;
    for (i, r) in routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        if !r.prefix.starts_with('/') {
            return Err(ConfigError::new(
                format!("{key}.prefix"),
                format!("{:?} does not start with '/'", r.prefix),
            ));
        }
        if r.prefix.starts_with(native) {
            return Err(ConfigError::new(
                format!("{key}.prefix"),
                format!(
                    "{:?} is taken: {native} is served by the gateway itself",
                    r.prefix
                ),
            ));
        }
        if !upstreams.contains_key(&r.upstream) {
            return Err(ConfigError::new(
                format!("{key}.upstream"),
                format!("no upstream named {:?} under upstreams", r.upstream),
            ));
        }
        if let Some(host) = &r.host {
            validate_host(&format!("{key}.host"), host)?;
        }
        if r.strip_prefix && r.forward_raw_path {
            return Err(ConfigError::new(
                format!("{key}.strip_prefix"),
                "cannot go with forward_raw_path, which sends the target unchanged",
            ));
        }
        r.request_headers
            .validate(&format!("{key}.request_headers"))?;
        r.response_headers
            .validate(&format!("{key}.response_headers"))?;
        if let Some(ms) = r.timeout_ms
            && !(1..=3_600_000).contains(&ms)
        {
            return Err(ConfigError::out_of_range(
                format!("{key}.timeout_ms"),
                ms,
                "must be between 1 and 3600000",
            ));
        }
    }
    if let Some(d) = default
        && !upstreams.contains_key(d)
    {
        return Err(ConfigError::new(
            "default_upstream",
            format!("no upstream named {d:?} under upstreams"),
        ));
    }
    Ok(())
}

fn host_port(key: &str, v: &str) -> Result<(), ConfigError> {
    let ok = v
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!("{v:?} is not host:port (expected e.g. 127.0.0.1:8000)"),
        ))
    }
}
