//! Reading a server-sent event stream from the agent service, one event at a
//! time, with the size of an event bounded.

use crate::error::{GatewayError, GatewayResult};

/// One event: its `event:` name (empty when none) and its `data:` lines.
pub(crate) struct Event {
    pub name: String,
    pub data: String,
}

pub(crate) struct EventReader {
    response: reqwest::Response,
    buf: Vec<u8>,
    max_event_bytes: usize,
}

impl EventReader {
    pub(crate) fn new(response: reqwest::Response, max_event_bytes: usize) -> Self {
        Self {
            response,
            buf: Vec::new(),
            max_event_bytes,
        }
    }

    /// The next event; `None` when the stream has ended.
    pub(crate) async fn next(&mut self) -> GatewayResult<Option<Event>> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
                if let Some(event) = parse(&raw) {
                    return Ok(Some(event));
                }
                continue;
            }
            let chunk = self.response.chunk().await.map_err(|e| {
                tracing::warn!(error = %e, "Agent-service stream broke off.");
                GatewayError::agent_service("agent service stream broke off").transient()
            })?;
            let Some(chunk) = chunk else {
                // A last event without its blank line still counts.
                let rest = std::mem::take(&mut self.buf);
                return Ok(parse(&rest));
            };
            // CR LF and LF end lines alike.
            self.buf.extend(chunk.iter().filter(|&&b| b != b'\r'));
            if self.buf.len() > self.max_event_bytes {
                return Err(GatewayError::agent_service(
                    "agent service streamed an event over agent_service.max_response_bytes",
                ));
            }
        }
    }
}

/// An event's fields; `None` for one with no data (a comment, a bare ping).
fn parse(raw: &[u8]) -> Option<Event> {
    let text = String::from_utf8_lossy(raw);
    let mut name = String::new();
    let mut data: Option<String> = None;
    for line in text.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => value.clone_into(&mut name),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
    data.map(|data| Event { name, data })
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn reads_fields_and_skips_comments() {
        let e = parse(b"event: error\ndata: {\"a\":1}\n\n").unwrap();
        assert_eq!((e.name.as_str(), e.data.as_str()), ("error", "{\"a\":1}"));
        let e = parse(b"data: one\ndata:two\n\n").unwrap();
        assert_eq!(e.data, "one\ntwo");
        assert!(parse(b": keep-alive\n\n").is_none());
    }
}
