//! `upstreams:`, `routes:` and `default_upstream:` the pass-through table.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

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

/// One entry of `routes:`: requests under a path prefix go to an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    /// Path prefix, matched on whole segments (`/api` takes `/api/x`, not `/apix`).
    pub prefix: String,
    /// Name of the upstream (a key of `upstreams:`).
    pub upstream: String,
    /// Send the backend the request target exactly as the client wrote it
    /// instead of the normalised path. Unsafe with path rules in the
    /// backend: routing here still uses the normalised path.
    #[serde(default)]
    pub forward_raw_path: bool,
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
