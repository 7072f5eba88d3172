//! Secrets among the settings: compared without being copied anywhere, and
//! shown in `Debug` forms as a mark, so that a settings value can go into a
//! log or a test failure without what it protects.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Stands in for a secret in a `Debug` form.
pub(crate) struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Whether two secrets are equal: by SHA-256 digest in constant time, as
/// `auth::TokenSet` checks tokens, so that not even the time a comparison
/// takes tells anything about either value.
pub(crate) fn same(a: &str, b: &str) -> bool {
    let a: [u8; 32] = Sha256::digest(a.as_bytes()).into();
    let b: [u8; 32] = Sha256::digest(b.as_bytes()).into();
    a.ct_eq(&b).into()
}

/// An optional secret: whether it is set, never what it is.
pub(crate) fn presence<T>(secret: Option<&T>) -> Option<Redacted> {
    secret.map(|_| Redacted)
}

/// An http(s) URL without the password it may carry for basic auth.
pub(crate) fn url_without_password(url: &reqwest::Url) -> String {
    if url.password().is_none() {
        return url.to_string();
    }
    let mut shown = url.clone();
    // Only a URL that cannot be a base refuses, and an http(s) URL with a
    // password always can be; should that ever fail, nothing of it is shown.
    match shown.set_password(None) {
        Ok(()) => shown.to_string(),
        Err(()) => format!("{}://<redacted>", url.scheme()),
    }
}
