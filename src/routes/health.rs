//! `/healthz` (the process answers) and `/readyz` (the database answers).

use std::time::Duration;

use serde_json::{Value, json};

use crate::agents::MappingStore;
use crate::error::{ErrorKind, GatewayError, GatewayResult};

pub fn healthz() -> GatewayResult<(u16, Option<Value>)> {
    Ok((200, Some(json!({"status": "ok"}))))
}

pub async fn readyz(store: &dyn MappingStore) -> GatewayResult<(u16, Option<Value>)> {
    match tokio::time::timeout(Duration::from_secs(2), store.ping()).await {
        Ok(Ok(())) => Ok((200, Some(json!({"status": "ready"})))),
        _ => Err(GatewayError::new(
            ErrorKind::DatabaseUnavailable,
            "database unavailable",
        )),
    }
}
