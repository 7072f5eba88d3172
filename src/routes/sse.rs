//! Server-sent events to the client: framing, and the writer that sends
//! frames as they come with a comment line while nothing does.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use serde_json::Value;
use tokio::sync::mpsc;

/// Quiet time after which a comment line goes out, so that proxies and
/// load balancers in between do not cut an idle stream.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// A client that reads nothing for this long is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// One `event:` with a JSON `data:` line.
pub fn frame(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// The frames of one response, produced elsewhere; the stream ends when
/// the producer drops its sender.
pub struct EventStream {
    frames: mpsc::UnboundedReceiver<Bytes>,
}

impl EventStream {
    pub fn channel() -> (mpsc::UnboundedSender<Bytes>, Self) {
        let (tx, frames) = mpsc::unbounded_channel();
        (tx, Self { frames })
    }

    /// Writes the header and then every frame as it comes. A client that
    /// goes away ends the writing, not the producer.
    pub async fn write(
        mut self,
        session: &mut ServerSession,
        headers: &[(&'static str, String)],
    ) -> pingora::Result<()> {
        let mut header = ResponseHeader::build(StatusCode::OK, Some(4 + headers.len()))?;
        header.insert_header("content-type", "text/event-stream")?;
        header.insert_header("cache-control", "no-cache")?;
        // nginx and its kin would otherwise buffer the stream.
        header.insert_header("x-accel-buffering", "no")?;
        for (name, value) in headers {
            header.insert_header(*name, value.as_str())?;
        }
        session.set_write_timeout(Some(WRITE_TIMEOUT));
        session.write_response_header(Box::new(header)).await?;
        loop {
            let frame = match tokio::time::timeout(KEEPALIVE, self.frames.recv()).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => Bytes::from_static(b": keep-alive\n\n"),
            };
            session.write_response_body(frame, false).await?;
        }
        session.finish_body().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_one_event_and_one_data_line() {
        let f = frame("done", &serde_json::json!({"a": "x\ny"}));
        assert_eq!(&f[..], b"event: done\ndata: {\"a\":\"x\\ny\"}\n\n");
    }
}
