//! The live-settings bundle: everything a request is served with that comes
//! from the settings, built once per (re)load and swapped whole
//! (`reload::Live`), so a request sees one configuration from its start to
//! its end.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::TokenSet;
use crate::chat::ChatService;
use crate::ids::UserRules;
use crate::limits::ChatLimits;
use crate::routes::chat::ChatRules;
use crate::settings::{PathSettings, Settings};
use crate::upstreams::RouteTable;

/// Everything a request is served with that comes from the settings: one
/// value, swapped whole on reload (`reload::Live`).
pub struct Gateway {
    pub chat: ChatService,
    pub routes: RouteTable,
    pub limits: ChatLimits,
    pub tokens: TokenSet,
    pub protect_passthrough: bool,
    pub max_body_bytes: usize,
    pub chat_rules: ChatRules,
    pub body_timeout: Duration,
    pub paths: PathSettings,
    /// Plain GET and HEAD pass through on the lean path (`proxy::forward`).
    pub lean_passthrough: bool,
}

impl Gateway {
    /// The first gateway of a process.
    pub fn new(cfg: &Settings, chat: ChatService, users: Arc<UserRules>) -> Result<Self, String> {
        let routes = RouteTable::new(cfg, None)?;
        Ok(Self::assemble(
            cfg,
            chat,
            routes,
            ChatLimits::new(&cfg.limits),
            users,
        ))
    }

    /// The gateway of `cfg` over the state of `previous`: what a reload
    /// swaps in. `cfg` must not differ from the running settings in a
    /// restart-only key.
    pub fn reconfigured(cfg: &Settings, previous: &Gateway) -> Result<Self, String> {
        let agents = crate::agent_service::build(&cfg.agent_service)
            .map_err(|e| format!("agent_service: {e}"))?;
        let routes = RouteTable::new(cfg, Some(&previous.routes))?;
        Ok(Self::assemble(
            cfg,
            previous.chat.reconfigured(cfg, agents),
            routes,
            previous.limits.reconfigured(&cfg.limits),
            previous.chat_rules.users.clone(),
        ))
    }

    fn assemble(
        cfg: &Settings,
        chat: ChatService,
        routes: RouteTable,
        limits: ChatLimits,
        users: Arc<UserRules>,
    ) -> Self {
        Self {
            chat,
            routes,
            limits,
            tokens: cfg.auth.tokens.clone(),
            protect_passthrough: cfg.auth.protect_passthrough,
            max_body_bytes: cfg.chat.max_body_bytes,
            chat_rules: ChatRules {
                users,
                max_message_chars: cfg.chat.max_message_chars,
            },
            body_timeout: cfg.chat.body_timeout,
            paths: cfg.paths.clone(),
            lean_passthrough: cfg.lean_passthrough,
        }
    }
}
