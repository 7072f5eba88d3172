//! `paths:` how a request path is read before routing (see `proxy/path.rs`).

use serde::Deserialize;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodedSeparators {
    Reject,
    Keep,
}
