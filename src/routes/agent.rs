//! `GET` and `DELETE /eai-gateway/agent/{user_number}`.

use std::sync::Arc;

use http::StatusCode;
use serde_json::json;

use super::Reply;
use crate::chat::ChatService;
use crate::context::RequestContext;
use crate::error::{GatewayError, GatewayResult};
use crate::ids::{UserNumber, UserRules};

/// The path segment, percent-decoded (so `%2B5521…` works) and validated;
/// an encoded slash or any other byte outside the pattern is a 422.
pub fn user_from_path(rules: &Arc<UserRules>, raw: &str) -> GatewayResult<UserNumber> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| GatewayError::invalid("user_number in the path is not valid UTF-8"))?;
    rules.parse(&decoded).map_err(GatewayError::invalid)
}

pub async fn get(chat: &ChatService, rules: &Arc<UserRules>, raw: &str) -> GatewayResult<Reply> {
    let user = user_from_path(rules, raw)?;
    let agent = chat.agent_of(&user).await?;
    Reply::json(
        StatusCode::OK,
        &json!({"agent_id": agent.as_ref().map(|a| a.as_str())}),
    )
}

pub async fn delete(
    chat: &ChatService,
    rules: &Arc<UserRules>,
    ctx: &RequestContext,
    raw: &str,
) -> GatewayResult<Reply> {
    let user = user_from_path(rules, raw)?;
    chat.forget(ctx, &user).await?;
    Ok(Reply::empty(StatusCode::NO_CONTENT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_users_are_decoded_then_validated() {
        let rules = UserRules::standard();
        assert_eq!(
            user_from_path(&rules, "%2B5521999999999").unwrap().as_str(),
            "5521999999999"
        );
        for bad in [
            "5521%2F99999999",
            "..%2F..%2Fetc",
            "5521999999999%00",
            "%FF%FE",
            "1%27%20OR%201=1",
        ] {
            assert!(user_from_path(&rules, bad).is_err(), "{bad}");
        }
    }
}
