//! `users:` which user numbers are accepted and the key of their pseudonyms.

use std::fmt;

use regex::Regex;
use serde::{Deserialize, Deserializer, de};

use super::ConfigError;
use super::secret::{self, Redacted};

/// Optional `+`, then 8–15 digits: any E.164 number.
pub const DEFAULT_USER_PATTERN: &str = r"^\+?[0-9]{8,15}$";

/// The `users:` section: valid user numbers and how they are pseudonymised.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserSettings {
    /// Regular expression a `user_number` must match (anchored).
    pub pattern: UserPattern,
    /// Key of the pseudonyms: Letta agent names/tags and masked log values.
    pub pseudonym_key: String,
}

/// The same in every installation: fit for tests and the demo, refused by
/// `Settings::load`.
pub const DEFAULT_PSEUDONYM_KEY: &str = "eai-gateway";

const KEY: &str = "users.pseudonym_key";

/// Shortest key `validate` takes; a deployment needs `DEPLOYED_KEY_CHARS`.
const MIN_KEY_CHARS: usize = 8;
const DEPLOYED_KEY_CHARS: usize = 16;

impl Default for UserSettings {
    fn default() -> Self {
        Self {
            pattern: UserPattern::default(),
            pseudonym_key: DEFAULT_PSEUDONYM_KEY.into(),
        }
    }
}

/// Written out to leave the key out; naming every field makes a new one a
/// compile error here rather than a field missing from the form.
impl fmt::Debug for UserSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            pattern,
            pseudonym_key: _,
        } = self;
        f.debug_struct("UserSettings")
            .field("pattern", pattern)
            .field("pseudonym_key", &Redacted)
            .finish()
    }
}

impl PartialEq for UserSettings {
    fn eq(&self, other: &Self) -> bool {
        // Field by field: a new field is a compile error here until it is
        // compared, as `RESTART_ONLY` compares the section whole.
        let Self {
            pattern,
            pseudonym_key,
        } = self;
        *pattern == other.pattern && secret::same(pseudonym_key, &other.pseudonym_key)
    }
}

impl UserSettings {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        check_key_length(&self.pseudonym_key).map_err(|e| ConfigError::new(KEY, e))
    }
}

/// How to fix any problem with the key; the reason to keep it stable is
/// given because a changed key loses every user's Letta agent.
fn how_to_set_key() -> String {
    format!(
        "set a secret of at least {DEPLOYED_KEY_CHARS} characters in {KEY} or {} \
         (e.g. `openssl rand -hex 32`); it names the Letta agents and masks user numbers \
         in logs, so keep it stable",
        super::env::PSEUDONYM_KEY
    )
}

/// The key is a secret: a message names its length, never its value.
pub(crate) fn check_key_length(key: &str) -> Result<(), String> {
    let chars = key.chars().count();
    if chars < MIN_KEY_CHARS {
        return Err(format!(
            "a key of {chars} characters is too short: {}",
            how_to_set_key()
        ));
    }
    Ok(())
}

/// What a deployment needs beyond `check_key_length`: a key nobody else
/// has. `written` tells whether the file sets the key at all.
pub(crate) fn check_deployed_key(
    key: &str,
    from_env: bool,
    written: impl FnOnce() -> bool,
) -> Result<(), ConfigError> {
    let var = super::env::PSEUDONYM_KEY;
    let problem = if key == DEFAULT_PSEUDONYM_KEY {
        if !from_env && !written() {
            return Err(ConfigError::new(
                KEY,
                format!("missing, and {var} is not set either: {}", how_to_set_key()),
            ));
        }
        // Public (it is in the source), so safe to show.
        format!("{key:?} is the built-in default, the same in every installation")
    } else if is_placeholder(key) {
        format!("{key:?} is a placeholder")
    } else if key.chars().count() < DEPLOYED_KEY_CHARS {
        format!("a key of {} characters is too short", key.chars().count())
    } else {
        return Ok(());
    };
    let message = format!("{problem}: {}", how_to_set_key());
    Err(if from_env {
        ConfigError::env(var, message)
    } else {
        ConfigError::new(KEY, message)
    })
}

/// Keys copied from a sample file or a tutorial rather than generated.
fn is_placeholder(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["change-me", "changeme", "change_me", "change me"]
        .iter()
        .any(|p| key.contains(p))
        || ["secret", "placeholder"].contains(&key.as_str())
}

/// A compiled, anchored user-number pattern.
#[derive(Clone)]
pub struct UserPattern(Regex);

impl UserPattern {
    /// Compiles an anchored pattern (`^…$`); the error says what is wrong.
    pub fn new(pattern: &str) -> Result<Self, String> {
        if !pattern.starts_with('^') || !pattern.ends_with('$') {
            return Err(format!(
                "{pattern:?} is not anchored: must start with ^ and end with $"
            ));
        }
        Regex::new(pattern)
            .map(Self)
            .map_err(|e| format!("{pattern:?} is not a valid regular expression: {e}"))
    }

    /// Whether a raw user number matches.
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

/// Equal when written the same: a pattern rewritten to mean the same is
/// still called a change, which only errs on the side of a restart.
impl PartialEq for UserPattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
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
