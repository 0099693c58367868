//! Server-Sent Events: a parser fed with the bytes of a response as they arrive (chunks may
//! split lines and characters anywhere), and what an event of the execution stream means.
//!
//! A parser of a few dozen lines, rather than an event-source crate: the stream is one
//! endpoint we own, and the reconnection policy (resume with `Last-Event-ID`) lives in
//! `follow.rs` anyway.

use noetl_contract::message::{EventView, ExecutionStatus};

/// One event as the wire carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `message` when absent.
    pub event: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
    /// The `id:` field, if the event had one.
    pub id: Option<String>,
}

/// Collects lines into events (the WHATWG `text/event-stream` rules, minus `retry:`, which
/// noetlctl does not need).
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes of a line not yet ended.
    partial: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
}

impl Parser {
    /// Takes the next bytes of the stream and returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &byte in bytes {
            if byte == b'\n' {
                let mut line = std::mem::take(&mut self.partial);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if let Some(event) = self.line(&String::from_utf8_lossy(&line)) {
                    events.push(event);
                }
            } else {
                self.partial.push(byte);
            }
        }
        events
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            // A blank line dispatches the event; one without data is dropped (spec).
            let event = self.event.take();
            let data = self.data.take()?;
            return Some(SseEvent {
                event: event
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "message".to_owned()),
                data,
                id: self.id.clone(),
            });
        }
        if line.starts_with(':') {
            return None; // a comment: the keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            // The last event id stays in force for later events until another one is sent.
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

/// What an event of `GET /executions/{id}/stream` says.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// An entry of the execution's event log.
    Event {
        event: EventView,
        raw: serde_json::Value,
    },
    /// The stream is over: the execution ended with this status.
    End(ExecutionStatus),
}

/// Reads an event of the execution stream.
pub fn interpret(event: &SseEvent) -> Result<StreamItem, String> {
    if event.event == "end" {
        // The contract says a JSON string; a bare word is accepted too.
        let text = serde_json::from_str::<String>(&event.data)
            .unwrap_or_else(|_| event.data.trim().to_owned());
        return ExecutionStatus::parse(&text)
            .map(StreamItem::End)
            .ok_or_else(|| format!("the stream ended with an unknown status `{text}`"));
    }
    let raw: serde_json::Value = serde_json::from_str(&event.data)
        .map_err(|e| format!("an event of the stream is not JSON: {e}"))?;
    let parsed = serde_json::from_value(raw.clone())
        .map_err(|e| format!("an event of the stream has an unexpected shape: {e}"))?;
    Ok(StreamItem::Event { event: parsed, raw })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "id: 1\nevent: execution_created\ndata: {\"seq\":1,\"kind\":\"execution_created\",\"payload\":{},\"created_at\":\"2026-11-23T10:00:00Z\"}\n\n\
        : keep-alive\n\n\
        event: end\ndata: succeeded\n\n";

    #[test]
    fn events_are_parsed_whole_or_split_anywhere() {
        let whole = Parser::default().feed(STREAM.as_bytes());
        assert_eq!(whole.len(), 2, "{whole:?}");
        assert_eq!(whole[0].event, "execution_created");
        assert_eq!(whole[0].id.as_deref(), Some("1"));
        assert_eq!(whole[1].event, "end");
        assert_eq!(whole[1].data, "succeeded");
        // Byte by byte, the same events come out.
        let mut parser = Parser::default();
        let split: Vec<SseEvent> = STREAM
            .as_bytes()
            .chunks(1)
            .flat_map(|chunk| parser.feed(chunk))
            .collect();
        assert_eq!(split, whole);
    }

    #[test]
    fn crlf_multi_line_data_and_defaults_follow_the_spec() {
        let events = Parser::default().feed(b"data:first\r\ndata: second\r\n\r\nevent\ndata\n\n");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event, "message");
        assert_eq!(events[0].data, "first\nsecond");
        assert_eq!(events[1].event, "message");
        assert_eq!(events[1].data, "");
        // An event without data is not dispatched; an unterminated one waits for more bytes.
        assert!(Parser::default()
            .feed(b"event: x\n\ndata: never ended")
            .is_empty());
    }

    #[test]
    fn a_multi_byte_character_split_between_chunks_survives() {
        let bytes = "data: \"é\"\n\n".as_bytes();
        let mut parser = Parser::default();
        let mut events = parser.feed(&bytes[..7]);
        events.extend(parser.feed(&bytes[7..]));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, "\"é\"");
    }

    #[test]
    fn the_end_event_gives_the_final_status_bare_or_as_json() {
        let end = |data: &str| SseEvent {
            event: "end".into(),
            data: data.into(),
            id: None,
        };
        assert_eq!(
            interpret(&end("succeeded")),
            Ok(StreamItem::End(ExecutionStatus::Succeeded))
        );
        assert_eq!(
            interpret(&end("\"cancelled\"")),
            Ok(StreamItem::End(ExecutionStatus::Cancelled))
        );
        assert!(interpret(&end("exploded")).is_err());
    }

    #[test]
    fn log_events_are_read_as_event_views() {
        let events = Parser::default().feed(STREAM.as_bytes());
        match interpret(&events[0]) {
            Ok(StreamItem::Event { event, raw }) => {
                assert_eq!(event.seq, 1);
                assert_eq!(event.kind, "execution_created");
                assert_eq!(raw["created_at"], "2026-11-23T10:00:00Z");
            }
            other => panic!("expected an event, got {other:?}"),
        }
        let garbage = SseEvent {
            event: "message".into(),
            data: "not json".into(),
            id: None,
        };
        assert!(interpret(&garbage).is_err());
    }
}
