//! Validated identifiers. Each newtype can only be built by its validator, so a
//! function that takes one never has to re-check its input.

use std::fmt;
use std::sync::OnceLock;

use regex::Regex;
use sha2::{Digest, Sha256};

pub const DEFAULT_USER_PATTERN: &str = r"^\+?[0-9]{8,15}$";
const MAX_USER_LEN: usize = 64;

/// Process-wide rules for user numbers, fixed at start-up from config.
pub struct UserRules {
    pattern: Regex,
    /// Key of the hash in masked log values.
    log_key: String,
}

impl UserRules {
    pub fn new(pattern: &str, log_key: &str) -> Result<Self, String> {
        let pattern = Regex::new(pattern).map_err(|e| e.to_string())?;
        Ok(Self {
            pattern,
            log_key: log_key.to_owned(),
        })
    }
}

static RULES: OnceLock<UserRules> = OnceLock::new();

/// Installs the configured rules; the first call wins.
pub fn configure(rules: UserRules) {
    let _ = RULES.set(rules);
}

fn rules() -> &'static UserRules {
    RULES.get_or_init(|| {
        UserRules::new(DEFAULT_USER_PATTERN, "eai-gateway").expect("default pattern compiles")
    })
}

/// A user's phone number, validated by the configured pattern (default: an
/// optional `+`, then 8–15 ASCII digits).
///
/// `+5521999999999` and `5521999999999` are the same user: the canonical form
/// (what is stored, hashed and sent upstream) drops one leading `+`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UserNumber(String);

impl UserNumber {
    pub fn parse(raw: &str) -> Result<Self, String> {
        // Whatever the pattern allows, never control characters, spaces,
        // non-ASCII or unbounded length.
        let plain = !raw.is_empty()
            && raw.len() <= MAX_USER_LEN
            && raw.bytes().all(|b| b.is_ascii_graphic());
        if !plain || !rules().pattern.is_match(raw) {
            return Err("user_number does not match the allowed pattern (default: optional '+' then 8-15 digits)".into());
        }
        let canonical = raw.strip_prefix('+').unwrap_or(raw);
        if canonical.is_empty() {
            return Err("user_number is empty".into());
        }
        Ok(Self(canonical.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Safe to log: the last four characters plus a keyed hash, enough to
    /// follow one user through the logs without revealing the number.
    pub fn masked(&self) -> String {
        let tail = &self.0[self.0.len().saturating_sub(4)..];
        format!("***{tail}#{}", &self.pseudonym(&rules().log_key)[..8])
    }

    /// A stable pseudonym for naming things outside the gateway (upstream agent
    /// names and tags) without handing out the raw number.
    pub fn pseudonym(&self, key: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(key.as_bytes());
        hasher.update([0u8]);
        hasher.update(self.0.as_bytes());
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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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

    #[test]
    fn plus_and_bare_digits_are_the_same_user() {
        let a = UserNumber::parse("+5521999999999").unwrap();
        let b = UserNumber::parse("5521999999999").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "5521999999999");
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
            assert!(UserNumber::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn masked_and_debug_hide_the_number() {
        let n = UserNumber::parse("5521987654321").unwrap();
        assert!(n.masked().starts_with("***4321#"), "{}", n.masked());
        assert!(!format!("{n:?}").contains("552198765"));
        assert_ne!(n.pseudonym("k1"), n.pseudonym("k2"));
        assert_eq!(n.pseudonym("k"), n.pseudonym("k"));
        assert_eq!(n.pseudonym("k").len(), 20);
    }

    #[test]
    fn agent_ids_must_be_path_safe() {
        assert!(AgentId::parse("agent-1f0c-aa_b.c").is_ok());
        for bad in ["", "a/b", "..", "a b", "a?b", "a%2Fb", "é"] {
            assert!(AgentId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
