//! `users:` which user numbers are accepted and the key of their pseudonyms.

use std::fmt;

use regex::Regex;
use serde::{Deserialize, Deserializer, de};

use super::ConfigError;

/// Optional `+`, then 8–15 digits: any E.164 number.
pub const DEFAULT_USER_PATTERN: &str = r"^\+?[0-9]{8,15}$";

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserSettings {
    /// Regular expression a `user_number` must match (anchored).
    pub pattern: UserPattern,
    /// Key of the pseudonyms: Letta agent names/tags and masked log values.
    pub pseudonym_key: String,
}

impl Default for UserSettings {
    fn default() -> Self {
        Self {
            pattern: UserPattern::default(),
            pseudonym_key: "eai-gateway".into(),
        }
    }
}

impl UserSettings {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.pseudonym_key.len() < 8 {
            return Err(ConfigError::new(
                "users.pseudonym_key",
                "must be at least 8 characters",
            ));
        }
        Ok(())
    }
}

/// A compiled, anchored user-number pattern.
#[derive(Clone)]
pub struct UserPattern(Regex);

impl UserPattern {
    pub fn new(pattern: &str) -> Result<Self, String> {
        if !pattern.starts_with('^') || !pattern.ends_with('$') {
            return Err("must be anchored with ^ and $".into());
        }
        Regex::new(pattern).map(Self).map_err(|e| e.to_string())
    }

    pub fn is_match(&self, raw: &str) -> bool {
        self.0.is_match(raw)
    }
}

impl Default for UserPattern {
    fn default() -> Self {
        #[expect(clippy::expect_used, reason = "a constant pattern, covered by tests")]
        Self::new(DEFAULT_USER_PATTERN).expect("the default pattern compiles")
    }
}

impl fmt::Debug for UserPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for UserPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}
