//! Validated identifiers. Each newtype can only be built by its validator, so a
//! function that takes one never has to re-check its input.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::settings::{UserPattern, UserSettings};

const MAX_USER_LEN: usize = 64;

/// The rules for user numbers (`users:`), built once from the settings.
/// Every `UserNumber` keeps a pointer to the rules it was checked by, so it
/// can mask itself in logs without a global.
pub struct UserRules {
    pattern: UserPattern,
    pseudonym_key: String,
}

impl UserRules {
    pub fn new(settings: &UserSettings) -> Arc<Self> {
        Arc::new(Self {
            pattern: settings.pattern.clone(),
            pseudonym_key: settings.pseudonym_key.clone(),
        })
    }

    /// The default rules (tests, benchmarks, fuzzing).
    #[cfg(any(test, feature = "internals"))]
    pub fn standard() -> Arc<Self> {
        Self::new(&UserSettings::default())
    }

    /// Validates a user number: whatever the pattern allows, never control
    /// characters, spaces, non-ASCII or unbounded length.
    ///
    /// `+5521999999999` and `5521999999999` are the same user: the canonical
    /// form (what is stored, hashed and sent to the agent service) drops one
    /// leading `+`.
    pub fn parse(self: &Arc<Self>, raw: &str) -> Result<UserNumber, String> {
        let plain = !raw.is_empty()
            && raw.len() <= MAX_USER_LEN
            && raw.bytes().all(|b| b.is_ascii_graphic());
        if !plain || !self.pattern.is_match(raw) {
            return Err("user_number does not match the allowed pattern (default: optional '+' then 8-15 digits)".into());
        }
        let canonical = raw.strip_prefix('+').unwrap_or(raw);
        if canonical.is_empty() {
            return Err("user_number is empty".into());
        }
        Ok(UserNumber {
            number: canonical.into(),
            rules: self.clone(),
        })
    }
}

/// A user's phone number, validated by the configured rules. Only
/// `UserRules::parse` builds one.
#[derive(Clone)]
pub struct UserNumber {
    // Shared: a chat clones its user into the lane, the lease and the
    // cache, and one allocation serves them all.
    number: Arc<str>,
    rules: Arc<UserRules>,
}

impl PartialEq for UserNumber {
    fn eq(&self, other: &Self) -> bool {
        self.number == other.number
    }
}

impl Eq for UserNumber {}

impl Hash for UserNumber {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.number.hash(state);
    }
}

impl UserNumber {
    pub fn as_str(&self) -> &str {
        &self.number
    }

    /// The other spelling a mapping of this user may be stored under: the
    /// canonical form with its `+`, when the pattern accepts it. A table
    /// adopted from an earlier service keeps numbers as its frontend sent
    /// them, so both spellings name this user.
    pub fn plus_spelling(&self) -> Option<String> {
        let plus = format!("+{}", self.number);
        self.rules.pattern.is_match(&plus).then_some(plus)
    }

    /// Safe to log: the last four characters plus a keyed hash, enough to
    /// follow one user through the logs without revealing the number.
    pub fn masked(&self) -> String {
        let tail = &self.number[self.number.len().saturating_sub(4)..];
        format!("***{tail}#{}", &self.pseudonym()[..8])
    }

    /// A stable pseudonym for naming things outside the gateway (agent
    /// names and tags) without handing out the raw number.
    pub fn pseudonym(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.rules.pseudonym_key.as_bytes());
        hasher.update([0u8]);
        hasher.update(self.number.as_bytes());
        hex::encode(&hasher.finalize()[..10])
    }
}

// Debug must not leak the number into logs through `{:?}`.
impl fmt::Debug for UserNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserNumber({})", self.masked())
    }
}

/// An agent id returned by the agent service. It ends up in URL paths, so it
/// is restricted to characters that need no escaping.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct AgentId(String);

impl AgentId {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok = !raw.is_empty()
            && raw.len() <= 128
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && raw != "."
            && raw != "..";
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(format!("agent id {raw:?} is not a safe identifier"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<UserNumber, String> {
        UserRules::standard().parse(raw)
    }

    #[test]
    fn plus_and_bare_digits_are_the_same_user() {
        let a = parse("+5521999999999").unwrap();
        let b = parse("5521999999999").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "5521999999999");
        assert_eq!(a.plus_spelling().as_deref(), Some("+5521999999999"));
        let no_plus = UserRules::new(&UserSettings {
            pattern: crate::settings::UserPattern::new("^[0-9]{8,15}$").unwrap(),
            ..UserSettings::default()
        });
        assert_eq!(
            no_plus.parse("5521999999999").unwrap().plus_spelling(),
            None
        );
    }

    #[test]
    fn rejects_bad_numbers() {
        for bad in [
            "",
            "+",
            "1234567",
            "1234567890123456",
            "55 21999999999",
            "5521-99999999",
            "++5521999999999",
            "5521999999999\n",
            "٥٥٢١٩٩٩٩٩٩٩٩٩",
            "1' OR '1'='1",
            "../../etc/passwd",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn masked_and_debug_hide_the_number() {
        let n = parse("5521987654321").unwrap();
        assert!(n.masked().starts_with("***4321#"), "{}", n.masked());
        assert!(!format!("{n:?}").contains("552198765"));
        let keyed = |key: &str| {
            let settings = UserSettings {
                pseudonym_key: key.into(),
                ..UserSettings::default()
            };
            UserRules::new(&settings).parse("5521987654321").unwrap()
        };
        assert_ne!(
            keyed("key-one-1").pseudonym(),
            keyed("key-two-2").pseudonym()
        );
        assert_eq!(n.pseudonym(), parse("+5521987654321").unwrap().pseudonym());
        assert_eq!(n.pseudonym().len(), 20);
    }

    #[test]
    fn agent_ids_must_be_path_safe() {
        assert!(AgentId::parse("agent-1f0c-aa_b.c").is_ok());
        for bad in ["", "a/b", "..", "a b", "a?b", "a%2Fb", "é"] {
            assert!(AgentId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
