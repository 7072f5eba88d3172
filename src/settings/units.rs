//! How plain YAML scalars become real types: integer milliseconds and
//! fractional seconds into `Duration`, a string into a checked URL.

use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

/// `*_ms` keys: a non-negative integer of milliseconds.
pub(crate) mod millis {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// `*_seconds` keys: a non-negative integer of seconds.
pub(crate) mod seconds {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// Seconds that may be fractional (`chat.timeout_seconds: 0.5`).
pub(crate) mod fractional_seconds {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs)
            .map_err(|_| de::Error::custom(format!("{secs} is not a number of seconds")))
    }
}

/// An `http(s)://host…` URL.
pub(crate) mod http_url {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<reqwest::Url, D::Error> {
        parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }

    pub(crate) fn parse(raw: &str) -> Result<reqwest::Url, String> {
        let url = reqwest::Url::parse(raw).map_err(|e| format!("{raw:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(format!("{raw:?} must be an http(s) URL with a host"));
        }
        Ok(url)
    }
}
