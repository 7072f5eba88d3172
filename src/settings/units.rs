//! How plain YAML scalars become real types: integer milliseconds and
//! fractional seconds into `Duration`, a string into a checked URL or
//! address. Each says what it expected in words, with the unit of its key,
//! so that an error reads `got the text "5s", expected a whole number of
//! milliseconds` rather than naming a Rust type.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Unexpected, Visitor};

/// A non-negative integer, described by `expecting`.
struct Whole(&'static str);

impl Visitor<'_> for Whole {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
    }
}

/// `*_ms` keys: a non-negative integer of milliseconds.
pub(crate) mod millis {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_u64(Whole("a whole number of milliseconds (0 or more)"))
            .map(Duration::from_millis)
    }
}

/// `*_seconds` keys: a non-negative integer of seconds.
pub(crate) mod seconds {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_u64(Whole("a whole number of seconds (0 or more)"))
            .map(Duration::from_secs)
    }
}

/// Seconds that may be fractional (`chat.timeout_seconds: 0.5`).
pub(crate) mod fractional_seconds {
    use super::*;

    const EXPECTED: &str = "a number of seconds (0 or more, e.g. 2.5)";

    struct Seconds;

    impl Visitor<'_> for Seconds {
        type Value = f64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(EXPECTED)
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }

        #[expect(clippy::cast_precision_loss, reason = "any count of seconds fits")]
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }

        #[expect(clippy::cast_precision_loss, reason = "any count of seconds fits")]
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = d.deserialize_f64(Seconds)?;
        Duration::try_from_secs_f64(secs)
            .map_err(|_| de::Error::custom(format!("got {secs}, expected {EXPECTED}")))
    }
}

/// `listen`: an `ip:port` address.
pub(crate) mod addr {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }

    pub(crate) fn parse(raw: &str) -> Result<SocketAddr, String> {
        raw.trim().parse().map_err(|_| {
            format!("{raw:?} is not an ip:port address (expected e.g. 127.0.0.1:8080)")
        })
    }
}

/// `metrics_listen`: an `ip:port` address, or none.
pub(crate) mod optional_addr {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|raw| super::addr::parse(&raw).map_err(de::Error::custom))
            .transpose()
    }
}

/// An `http(s)://host…` URL.
pub(crate) mod http_url {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<reqwest::Url, D::Error> {
        parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }

    pub(crate) fn parse(raw: &str) -> Result<reqwest::Url, String> {
        let url = reqwest::Url::parse(raw)
            .map_err(|e| format!("{raw:?} {}", crate::settings::humanize::url_problem(&e)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(format!(
                "{raw:?} is not an http(s) URL with a host (expected e.g. http://host:8283)"
            ));
        }
        Ok(url)
    }
}
