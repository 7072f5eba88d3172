//! Bearer-token auth. Tokens are kept only as SHA-256 digests and a presented
//! token is compared against every digest in constant time, so neither memory
//! nor timing tells an attacker anything about the configured tokens.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ErrorKind, GatewayError, GatewayResult};

#[derive(Clone, Default)]
pub struct TokenSet {
    digests: Vec<[u8; 32]>,
}

/// Says how many tokens there are, never which.
impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSet({} tokens)", self.digests.len())
    }
}

impl TokenSet {
    /// Tokens from a comma-separated list (an environment variable) and a
    /// file of one token per line (`#` starts a comment).
    pub fn load(list: Option<&str>, file: Option<&Path>) -> Result<Self, String> {
        let mut tokens: Vec<String> = list
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(path) = file {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            tokens.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        if let Some(bad) = tokens
            .iter()
            .find(|t| t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(format!(
                "a token of {} characters is too short or has spaces/control characters (need 16+ printable ASCII)",
                bad.len()
            ));
        }
        Ok(Self {
            digests: tokens
                .iter()
                .map(|t| Sha256::digest(t.as_bytes()).into())
                .collect(),
        })
    }

    /// Says so at start-up and on every reload: open routes are a
    /// choice an operator should see, not discover.
    pub(crate) fn warn_if_open(&self) {
        if !self.is_enabled() {
            tracing::warn!(
                "No bearer token configured (EAI_GATEWAY_TOKENS, auth.tokens_file): the /eai-gateway routes are open."
            );
        }
    }

    pub fn is_enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    fn matches(&self, token: &[u8]) -> bool {
        let presented: [u8; 32] = Sha256::digest(token).into();
        // Check every digest without stopping early.
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |acc, d| acc | d.ct_eq(&presented))
            .into()
    }

    /// Checks an `Authorization` header value; disabled sets accept anything.
    pub fn check(&self, header: Option<&[u8]>) -> GatewayResult<()> {
        if !self.is_enabled() {
            return Ok(());
        }
        let token = header.and_then(|h| {
            let (scheme, rest) = h.split_at(h.len().min(7));
            scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
        });
        match token {
            Some(t) if self.matches(t.trim_ascii()) => Ok(()),
            // One answer for missing and wrong: no hint which.
            _ => Err(GatewayError::new(
                ErrorKind::Unauthorized,
                "missing or invalid bearer token",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "first-token-0123456789";
    const T2: &str = "second-token-0123456789";

    #[test]
    fn accepts_configured_tokens_only() {
        let set = TokenSet::load(Some(&format!("{T1}, {T2}")), None).unwrap();
        assert!(set.check(Some(format!("Bearer {T1}").as_bytes())).is_ok());
        assert!(set.check(Some(format!("bearer {T2}").as_bytes())).is_ok());
        for bad in [
            None,
            Some("Bearer".as_bytes()),
            Some(b"Bearer wrong-token-0123456789"),
            Some(T1.as_bytes()),
        ] {
            assert_eq!(set.check(bad).unwrap_err().status(), 401);
        }
    }

    #[test]
    fn empty_set_is_disabled() {
        let set = TokenSet::load(Some(" , "), None).unwrap();
        assert!(!set.is_enabled());
        assert!(set.check(None).is_ok());
    }

    #[test]
    fn rejects_weak_tokens() {
        assert!(TokenSet::load(Some("short"), None).is_err());
        assert!(TokenSet::load(Some("has a space in the token"), None).is_err());
    }
}
