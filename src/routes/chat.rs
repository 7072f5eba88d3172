//! `POST /eai-gateway/chat`: decode and validate, then hand over to `ChatService`.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

use super::Reply;
use crate::chat::{ChatRequest, ChatService};
use crate::context::RequestContext;
use crate::error::{GatewayError, GatewayResult};
use crate::ids::UserRules;
use crate::limits::ChatLimits;

/// What a chat body may be, from `users:` and `chat:`.
pub struct ChatRules {
    pub users: Arc<UserRules>,
    pub max_message_chars: usize,
}

/// Validates a decoded body into a request; every failure is a 422 naming the field.
pub fn decode(body: &Value, rules: &ChatRules) -> GatewayResult<ChatRequest> {
    let max_message_chars = rules.max_message_chars;
    let obj = body
        .as_object()
        .ok_or_else(|| GatewayError::invalid("body must be a JSON object"))?;
    let user = match obj.get("user_number") {
        Some(Value::String(s)) => rules.users.parse(s).map_err(GatewayError::invalid)?,
        Some(_) => return Err(GatewayError::invalid("user_number must be a string")),
        None => return Err(GatewayError::invalid("user_number: field required")),
    };
    let message = match obj.get("message") {
        Some(Value::String(s)) if s.trim().is_empty() => {
            return Err(GatewayError::invalid("message must not be empty"));
        }
        // No agent store keeps NUL (PostgreSQL text cannot hold it).
        Some(Value::String(s)) if s.contains('\0') => {
            return Err(GatewayError::invalid(
                "message must not contain NUL characters",
            ));
        }
        Some(Value::String(s)) if s.chars().count() > max_message_chars => {
            return Err(GatewayError::invalid(format!(
                "message must be at most {max_message_chars} characters"
            )));
        }
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(GatewayError::invalid("message must be a string")),
        None => return Err(GatewayError::invalid("message: field required")),
    };
    let timeout = match obj.get("timeout") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(t) if t > 0.0 && t.is_finite() && t <= 86_400.0 => {
                Some(Duration::from_secs_f64(t))
            }
            _ => {
                return Err(GatewayError::invalid(
                    "timeout must be a positive number of seconds",
                ));
            }
        },
    };
    let metadata = match obj.get("metadata") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => return Err(GatewayError::invalid("metadata must be an object")),
    };
    Ok(ChatRequest {
        user,
        message,
        timeout,
        metadata,
    })
}

/// Decodes, validates and admits a chat: nothing reaches the database or the
/// agent service before every check here has passed.
pub async fn handle(
    chat: &ChatService,
    limits: &ChatLimits,
    rules: &ChatRules,
    body: GatewayResult<Value>,
    ctx: &RequestContext,
) -> GatewayResult<Reply> {
    let request = decode(&body?, rules)?;
    let _slot = limits.begin()?;
    // Boxed: a future is as large as its largest await, and this one (a
    // Redis call) would otherwise stay allocated, unused, for as long as
    // the chat it admitted.
    Box::pin(limits.admit(&request.user)).await?;
    let answer = chat.chat(ctx.clone(), request).await?;
    Reply::json(StatusCode::OK, &answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> ChatRules {
        ChatRules {
            users: UserRules::standard(),
            max_message_chars: MAX,
        }
    }

    const MAX: usize = 4096;

    #[test]
    fn decodes_valid_body() {
        let r = decode(
            &json!({"user_number": "+5521999999999", "message": "oi", "timeout": 5, "metadata": {"a": 1}}),
            &rules(),
        )
        .unwrap();
        assert_eq!(r.user.as_str(), "5521999999999");
        assert_eq!(r.timeout, Some(Duration::from_secs(5)));
    }

    #[test]
    fn rejects_each_bad_field() {
        let long = "x".repeat(MAX + 1);
        for body in [
            json!([]),
            json!({"message": "oi"}),
            json!({"user_number": "5521999999999"}),
            json!({"user_number": 5521999999999u64, "message": "oi"}),
            json!({"user_number": "5521999999999", "message": ""}),
            json!({"user_number": "5521999999999", "message": long}),
            json!({"user_number": "5521999999999", "message": "oi", "timeout": -1}),
            json!({"user_number": "5521999999999", "message": "oi", "metadata": "x"}),
        ] {
            let err = decode(&body, &rules())
                .err()
                .unwrap_or_else(|| panic!("accepted {body}"));
            assert_eq!(err.status(), 422, "{body}");
        }
    }
}
