//! `/healthz` (the process answers) and `/readyz` (the database answers).

use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use super::Reply;
use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::mapping::MappingStore;

pub fn healthz() -> GatewayResult<Reply> {
    Reply::json(StatusCode::OK, &json!({"status": "ok"}))
}

pub async fn readyz(store: &dyn MappingStore) -> GatewayResult<Reply> {
    match tokio::time::timeout(Duration::from_secs(2), store.ping()).await {
        Ok(Ok(())) => Reply::json(StatusCode::OK, &json!({"status": "ready"})),
        _ => Err(GatewayError::new(
            ErrorKind::DatabaseUnavailable,
            "database unavailable",
        )),
    }
}
