//! `paths:` how a request path is read before routing (see `proxy/path.rs`).

use serde::Deserialize;

/// The `paths:` section: how request paths are read before routing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PathSettings {
    /// `//a///b` is read as `/a/b`, as nginx does.
    pub merge_slashes: bool,
    /// What to do with `%2F`, `%5C` and `\` in a path: `reject` (400) or
    /// `keep` them encoded (the backend decides what they mean).
    pub encoded_separators: EncodedSeparators,
}

impl Default for PathSettings {
    fn default() -> Self {
        Self {
            merge_slashes: true,
            encoded_separators: EncodedSeparators::Reject,
        }
    }
}

/// What an encoded separator in a path gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodedSeparators {
    /// 400: the gateway and the backend could disagree on the path.
    Reject,
    /// Kept encoded; the backend decides what it means.
    Keep,
}
