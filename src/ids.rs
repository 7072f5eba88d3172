//! Validated identifiers. Each newtype can only be built by its validator, so a
//! function that takes one never has to re-check its input.

use std::fmt;

use sha2::{Digest, Sha256};

/// A WhatsApp-style phone number: an optional `+`, then 8–15 ASCII digits.
///
/// `+5521999999999` and `5521999999999` are the same user: the canonical form
/// (what is stored, hashed and sent upstream) is the digits without the `+`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UserNumber(String);

impl UserNumber {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let digits = raw.strip_prefix('+').unwrap_or(raw);
        if !(8..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err("user_number must be an optional '+' followed by 8 to 15 digits".into());
        }
        Ok(Self(digits.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Safe to log: the last four digits only.
    pub fn masked(&self) -> String {
        let tail = &self.0[self.0.len().saturating_sub(4)..];
        format!("***{tail}")
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
        assert_eq!(n.masked(), "***4321");
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
