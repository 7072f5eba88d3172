//! The metrics listener: pingora-prometheus's exporter behind an optional
//! bearer token of its own.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::modules::http::compression::ResponseCompressionBuilder;
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
use pingora_prometheus::PrometheusHttpApp;

use std::sync::Arc;

use crate::reload::Live;

/// Reads its tokens from `Live`, so a reload rotates them too.
pub struct MetricsApp {
    live: Arc<Live>,
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let header = session
            .req_header()
            .headers
            .get("authorization")
            .map(|v| v.as_bytes());
        if let Err(e) = self.live.metrics_tokens().check(header) {
            let body = e.body().to_string().into_bytes();
            let len = body.len();
            let mut resp = Response::new(body);
            *resp.status_mut() = http::StatusCode::UNAUTHORIZED;
            let h = resp.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            h.insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            h.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
            return resp;
        }
        crate::saturation::refresh(&self.live);
        PrometheusHttpApp.response(session).await
    }
}

pub fn service(live: Arc<Live>) -> Service<HttpServer<MetricsApp>> {
    let mut server = HttpServer::new_app(MetricsApp { live });
    server.add_module(ResponseCompressionBuilder::enable(7));
    Service::new("metrics".to_owned(), server)
}
