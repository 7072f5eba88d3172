//! `limits:` admission control. Every limit is off at 0.

use std::fmt;

use serde::{Deserialize, Deserializer, de};

use super::ConfigError;

/// The `limits:` section: admission control per user and per process (0 = no limit).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Chats per user per minute.
    pub user_rate_per_min: u32,
    /// Chats of one user running or queued in one process.
    pub user_queue_max: usize,
    /// Chats in flight in one process.
    pub max_inflight_chats: usize,
    /// Count `user_rate_per_min` in this Redis, shared by every replica.
    pub redis_url: Option<RedisUrl>,
    /// Count `user_rate_per_min` in the Redis Cluster these seed nodes
    /// belong to, shared by every replica (instead of `redis_url`).
    pub redis_cluster_urls: Option<RedisClusterUrls>,
    /// What the per-user rate does while Redis cannot answer.
    pub redis_fallback: RedisFallback,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            user_rate_per_min: 20,
            user_queue_max: 10,
            max_inflight_chats: 512,
            redis_url: None,
            redis_cluster_urls: None,
            redis_fallback: RedisFallback::Local,
        }
    }
}

impl LimitSettings {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.redis_url.is_some() && self.redis_cluster_urls.is_some() {
            return Err(ConfigError::new(
                "limits.redis_cluster_urls",
                "is set together with limits.redis_url: count in a single Redis or in a cluster, \
                 remove one of them",
            ));
        }
        for (key, set) in [
            ("redis_url", self.redis_url.is_some()),
            ("redis_cluster_urls", self.redis_cluster_urls.is_some()),
        ] {
            if set && self.user_rate_per_min == 0 {
                return Err(ConfigError::new(
                    format!("limits.{key}"),
                    format!(
                        "shares limits.user_rate_per_min, which is 0 (off): set a rate or remove {key}"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `local`: each replica counts on its own until Redis is back (default);
/// `fail_open`: no per-user rate meanwhile; `fail_closed`: chats are 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisFallback {
    /// Each replica counts on its own until Redis is back.
    Local,
    /// No per-user rate while Redis cannot answer.
    FailOpen,
    /// Chats answer 503 while Redis cannot answer.
    FailClosed,
}

/// A checked `redis://` or `rediss://` URL.
#[derive(Clone)]
pub struct RedisUrl(redis::Client);

impl RedisUrl {
    /// Checks the scheme and the URL; the error never repeats a password.
    pub fn parse(raw: &str) -> Result<Self, String> {
        // Only the scheme is shown: the rest may hold a password.
        if !(raw.starts_with("redis://") || raw.starts_with("rediss://")) {
            let expected = "expected redis:// or rediss:// (e.g. redis://127.0.0.1:6379)";
            return Err(match raw.split_once("://") {
                Some((scheme, _)) => format!("the scheme {scheme:?} is not known: {expected}"),
                None => format!("not a Redis URL: {expected}"),
            });
        }
        redis::Client::open(raw).map(Self).map_err(|e| {
            // The crate appends its error kind, a Rust name.
            let e = e.to_string();
            let problem = e.split(" - ").next().unwrap_or_default();
            format!("not a valid Redis URL: {problem} (expected e.g. redis://127.0.0.1:6379)")
        })
    }

    /// A client for this URL (connections open on first use).
    pub fn client(&self) -> redis::Client {
        self.0.clone()
    }
}

/// Shows the address only: the URL may carry a password.
impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis://{}", self.0.get_connection_info().addr())
    }
}

impl<'de> Deserialize<'de> for RedisUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// The seed nodes of a Redis Cluster, each a checked `redis://` or
/// `rediss://` URL: the client asks them for the rest of the cluster, so a
/// few of its nodes are enough.
#[derive(Clone)]
pub struct RedisClusterUrls(Vec<RedisUrl>);

impl RedisClusterUrls {
    /// A comma-separated list (the environment variable's form).
    pub fn parse(raw: &str) -> Result<Self, String> {
        Self::from_urls(raw.split(','))
    }

    fn from_urls<'a>(urls: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let nodes = urls
            .into_iter()
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .enumerate()
            .map(|(i, url)| RedisUrl::parse(url).map_err(|e| format!("seed node {}: {e}", i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err("no seed node: expected redis:// URLs (e.g. redis://10.0.0.1:6379)".into());
        }
        let urls = Self(nodes);
        // What the client itself refuses (seed nodes that disagree on the
        // password, the user or TLS) is refused here, at start-up, rather
        // than at the first chat.
        redis::cluster::ClusterClient::new(urls.nodes()).map_err(|e| {
            let e = e.to_string();
            let problem = e.split(" - ").next().unwrap_or_default();
            format!("not a usable set of seed nodes: {problem}")
        })?;
        Ok(urls)
    }

    /// The seed nodes, for a cluster client.
    pub fn nodes(&self) -> Vec<redis::ConnectionInfo> {
        self.0
            .iter()
            .map(|url| url.0.get_connection_info().clone())
            .collect()
    }
}

/// Shows the addresses only, as `RedisUrl` does.
impl fmt::Debug for RedisClusterUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.0).finish()
    }
}

/// A YAML list of URLs, or one string of comma-separated URLs as the
/// environment variable takes them.
impl<'de> Deserialize<'de> for RedisClusterUrls {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Urls;
        impl<'de> de::Visitor<'de> for Urls {
            type Value = RedisClusterUrls;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of redis:// URLs")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                RedisClusterUrls::parse(v).map_err(E::custom)
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut urls: Vec<String> = Vec::new();
                while let Some(url) = seq.next_element()? {
                    urls.push(url);
                }
                RedisClusterUrls::from_urls(urls.iter().map(String::as_str))
                    .map_err(de::Error::custom)
            }
        }
        d.deserialize_any(Urls)
    }
}

/// A configured limit: `None` for 0 (no limit).
pub(crate) fn limit<T: PartialEq + Default>(value: T) -> Option<T> {
    (value != T::default()).then_some(value)
}
