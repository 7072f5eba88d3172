//! `auth:` bearer tokens for the native routes and the metrics listener.

use std::path::PathBuf;

use serde::Deserialize;

use crate::auth::TokenSet;

/// The `auth:` section: bearer tokens for the native routes and the metrics listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// File with one bearer token per line for the `/eai-gateway` routes;
    /// added to `EAI_GATEWAY_TOKENS`. No token at all = auth off.
    pub tokens_file: Option<PathBuf>,
    /// Require the same tokens on pass-through routes too.
    pub protect_passthrough: bool,
    /// Tokens for the metrics listener; added to `EAI_GATEWAY_METRICS_TOKENS`.
    pub metrics_tokens_file: Option<PathBuf>,
    /// The tokens themselves, read once when the settings are loaded.
    #[serde(skip)]
    pub tokens: TokenSet,
    /// The metrics listener's tokens, read once when the settings are loaded.
    #[serde(skip)]
    pub metrics_tokens: TokenSet,
}
