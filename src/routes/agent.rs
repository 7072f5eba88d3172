//! `GET` and `DELETE /eai-gateway/agent/{user_number}`.

use serde_json::{Value, json};

use crate::chat::ChatService;
use crate::error::{GatewayError, GatewayResult};
use crate::ids::UserNumber;

/// The path segment, percent-decoded (so `%2B5521…` works) and validated;
/// an encoded slash or any other byte outside the pattern is a 422.
pub fn user_from_path(raw: &str) -> GatewayResult<UserNumber> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| GatewayError::invalid("user_number in the path is not valid UTF-8"))?;
    UserNumber::parse(&decoded).map_err(GatewayError::invalid)
}

pub async fn get(chat: &ChatService, raw: &str) -> GatewayResult<(u16, Option<Value>)> {
    let user = user_from_path(raw)?;
    let agent = chat.agent_of(&user).await?;
    Ok((
        200,
        Some(json!({"agent_id": agent.as_ref().map(|a| a.as_str())})),
    ))
}

pub async fn delete(chat: &ChatService, raw: &str) -> GatewayResult<(u16, Option<Value>)> {
    let user = user_from_path(raw)?;
    chat.forget(&user).await?;
    Ok((204, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_users_are_decoded_then_validated() {
        assert_eq!(
            user_from_path("%2B5521999999999").unwrap().as_str(),
            "5521999999999"
        );
        for bad in [
            "5521%2F99999999",
            "..%2F..%2Fetc",
            "5521999999999%00",
            "%FF%FE",
            "1%27%20OR%201=1",
        ] {
            assert!(user_from_path(bad).is_err(), "{bad}");
        }
    }
}
