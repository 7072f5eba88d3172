//! Secrets among the settings, compared without being copied anywhere.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Whether two secrets are equal. By digest and in constant time, so that
/// comparing leaves neither a copy of the bytes nor a timing behind, the
/// same way `auth::TokenSet` treats tokens.
pub(crate) fn same(a: &str, b: &str) -> bool {
    let a: [u8; 32] = Sha256::digest(a.as_bytes()).into();
    let b: [u8; 32] = Sha256::digest(b.as_bytes()).into();
    a.ct_eq(&b).into()
}
