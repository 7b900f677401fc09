//! moltgate's own WebSocket API (`platform: websocket`, `mode: translate`):
//! the JSON text frames a client sends and the frames the gateway answers.
//!
//! ```text
//! client:  {"type":"message","id":"c1","content":{"text":"…"},"context":{…}}
//! gateway: {"type":"reply","id":"c1","text":"…","final":false}   one per reply part, as it arrives
//!          {"type":"reply","id":"c1","text":"","final":true}     the answer is complete
//!          {"type":"error","id":"c1","error":"forbidden|blocked|rate_limited|…","message":"…"}
//! ```
//!
//! An answer streams: every part of the assistant's reply is a `reply`
//! frame with `final: false`, sent as soon as the part has come from the AI
//! cluster and passed egress DLP, and the answer ends with one empty `reply`
//! frame with `final: true` (the only frame when the reply had no parts).
//! The parts are, in order, the `replies` that `POST /v1/messages` answers
//! with. A message that is not answered gets one `error` frame and no
//! `reply` frame (every refusal comes before the cluster's first part). A
//! client that reads slowly slows the reply's stream from the cluster
//! (back-pressure); the gateway does not buffer the reply for it.
//!
//! A message frame carries the same `content` and `context` as a body of
//! `POST /v1/messages`, so it becomes exactly that request for the message
//! path ([`ClientFrame::into_api_body`]): one shape, one set of checks.

use serde::{Deserialize, Serialize};

/// Longest client-chosen frame id echoed back, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// A frame from the client.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFrame {
    /// Only `message` today.
    #[serde(rename = "type")]
    pub kind: String,
    /// The client's id for this message, echoed in every answer to it.
    #[serde(default)]
    pub id: String,
    /// What was said (the API's `content`).
    pub content: serde_json::Value,
    /// Where it was said (the API's `context`).
    #[serde(default)]
    pub context: Option<serde_json::Value>,
}

/// Why a text frame is not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not JSON of the frame's shape.
    #[error(
        "a frame is a JSON object: {{\"type\":\"message\",\"id\":…,\"content\":{{\"text\":…}}}}"
    )]
    Malformed,
    /// A `type` other than `message`.
    #[error("unknown frame type; the only one a client sends is \"message\"")]
    UnknownType,
    /// An id longer than [`MAX_ID_LEN`].
    #[error("the frame id is longer than {MAX_ID_LEN} bytes")]
    IdTooLong,
}

impl FrameError {
    /// The `error` field of the answer.
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::Malformed => "malformed",
            FrameError::UnknownType => "unknown_type",
            FrameError::IdTooLong => "malformed",
        }
    }
}

impl ClientFrame {
    /// Parses one text frame; the id (when readable) comes back with the
    /// error so the answer can name the frame.
    pub fn parse(text: &str) -> Result<ClientFrame, (String, FrameError)> {
        let frame: ClientFrame = serde_json::from_str(text).map_err(|_| {
            // Echo the id only if the frame is an object with a short string id.
            let id = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned))
                .filter(|id| id.len() <= MAX_ID_LEN)
                .unwrap_or_default();
            (id, FrameError::Malformed)
        })?;
        if frame.id.len() > MAX_ID_LEN {
            return Err((String::new(), FrameError::IdTooLong));
        }
        if frame.kind != "message" {
            return Err((frame.id, FrameError::UnknownType));
        }
        Ok(frame)
    }

    /// The `POST /v1/messages` body this frame stands for.
    pub fn into_api_body(self) -> Vec<u8> {
        let mut body = serde_json::Map::new();
        body.insert("content".into(), self.content);
        if let Some(context) = self.context {
            body.insert("context".into(), context);
        }
        serde_json::Value::Object(body).to_string().into_bytes()
    }
}

/// A frame from the gateway.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame {
    /// One part of the assistant's reply (through egress DLP), or with
    /// `final: true` and no text, the end of the answer.
    Reply {
        /// The client's message id.
        id: String,
        /// The text.
        text: String,
        /// Whether the answer is complete (then `text` is empty).
        #[serde(rename = "final")]
        last: bool,
    },
    /// The message was not answered; the connection stays open.
    Error {
        /// The client's message id.
        id: String,
        /// A bounded code: `forbidden`, `blocked`, `rate_limited`, `malformed`, …
        error: String,
        /// A human-readable message (never message content or a finding).
        message: String,
    },
}

impl ServerFrame {
    /// The frame as JSON text.
    pub fn to_text(&self) -> String {
        // A frame of strings and a bool always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_frame_is_an_api_body() {
        let f = ClientFrame::parse(
            r#"{"type":"message","id":"c1","content":{"text":"hi"},"context":{"room_id":"r"}}"#,
        )
        .unwrap();
        assert_eq!(f.id, "c1");
        let body: serde_json::Value = serde_json::from_slice(&f.into_api_body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"content":{"text":"hi"},"context":{"room_id":"r"}})
        );
    }

    #[test]
    fn bad_frames_say_why_and_keep_their_id() {
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping","id":"c2","content":{}}"#).unwrap_err(),
            ("c2".into(), FrameError::UnknownType)
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"message","id":"c3"}"#).unwrap_err(),
            ("c3".into(), FrameError::Malformed)
        );
        assert_eq!(
            ClientFrame::parse("not json").unwrap_err(),
            (String::new(), FrameError::Malformed)
        );
        let long = format!(
            r#"{{"type":"message","id":"{}","content":{{}}}}"#,
            "x".repeat(200)
        );
        assert_eq!(
            ClientFrame::parse(&long).unwrap_err().1,
            FrameError::IdTooLong
        );
    }

    #[test]
    fn answers_have_the_documented_shape() {
        let reply = ServerFrame::Reply {
            id: "c1".into(),
            text: "hello".into(),
            last: true,
        };
        assert_eq!(
            reply.to_text(),
            r#"{"type":"reply","id":"c1","text":"hello","final":true}"#
        );
        let err = ServerFrame::Error {
            id: "c1".into(),
            error: "blocked".into(),
            message: "blocked by policy".into(),
        };
        assert_eq!(
            err.to_text(),
            r#"{"type":"error","id":"c1","error":"blocked","message":"blocked by policy"}"#
        );
    }
}
