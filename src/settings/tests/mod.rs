//! The settings' tests, by concern; the helpers every one of them uses.

mod deployed;
mod messages;
mod overrides;
mod parse;
mod renamed;
mod restart;
mod secrets;

use super::*;

const MINIMAL: &str = "agent_service:\n  dialect: eai\n  url: http://127.0.0.1:9\n";

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Result<Settings, ConfigError> {
    Settings::parse(text, no_env)
}
