//! The generic HTTP API (`POST /v1/messages`): the unified JSON message model,
//! for clients that are not a chat platform. Authentication is a bearer JWT
//! (see `policy::jwt`); this module only parses the body.

use serde::Deserialize;

use super::adapter::PlatformMessage;
use crate::policy::jwt::Subject;

/// The body of `POST /v1/messages`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericMessage {
    /// The client's own platform or app name (kept as an attribute).
    #[serde(default)]
    pub platform: Option<String>,
    /// The sender as the client knows it; the JWT `sub` is authoritative.
    #[serde(default)]
    pub sender: Option<GenericSender>,
    /// What was said.
    pub content: GenericContent,
    /// Client timestamp (Unix seconds or milliseconds, or RFC 3339); informational.
    #[serde(default)]
    pub timestamp: Option<serde_json::Value>,
    /// Where it was said.
    #[serde(default)]
    pub context: Option<GenericContext>,
}

/// `sender`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericSender {
    /// Client-side id (informational; the JWT `sub` is the sender id).
    #[serde(default)]
    pub id: Option<String>,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
}

/// `content`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericContent {
    /// The message text.
    pub text: String,
    /// Attachments by reference.
    #[serde(default)]
    pub attachments: Vec<GenericAttachment>,
}

/// One attachment, by reference.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericAttachment {
    /// `image`, `file`, …
    #[serde(default, alias = "type")]
    pub kind: String,
    /// Where it can be fetched.
    #[serde(default)]
    pub url: String,
    /// File name.
    #[serde(default)]
    pub name: String,
    /// MIME type.
    #[serde(default)]
    pub mime_type: String,
}

/// `context`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericContext {
    /// Room or channel id.
    #[serde(default)]
    pub room_id: Option<String>,
    /// Thread id.
    #[serde(default)]
    pub thread_id: Option<String>,
    /// `private` (default), `group` or `channel`.
    #[serde(default)]
    pub chat_type: Option<String>,
}

/// Why a body was refused; the message is safe to return to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed JSON body: {0}")]
pub struct MalformedBody(pub String);

/// Parses the body. serde_json's message names line and column, never content.
pub fn parse(body: &[u8]) -> Result<GenericMessage, MalformedBody> {
    let msg: GenericMessage =
        serde_json::from_slice(body).map_err(|e| MalformedBody(e.to_string()))?;
    if let Some(ct) = msg.context.as_ref().and_then(|c| c.chat_type.as_deref()) {
        if !matches!(ct, "private" | "group" | "channel") {
            return Err(MalformedBody(format!(
                "context.chat_type must be private, group or channel, not {:?}",
                ct.chars().take(32).collect::<String>()
            )));
        }
    }
    Ok(msg)
}

/// The platform-neutral message, with the authenticated subject as sender.
pub fn to_platform_message(msg: GenericMessage, subject: &Subject) -> PlatformMessage {
    let ctx = msg.context.unwrap_or_default();
    let mut attributes = std::collections::BTreeMap::new();
    if let Some(p) = msg.platform.filter(|p| !p.is_empty()) {
        attributes.insert("client_platform".to_string(), p);
    }
    for (i, a) in msg.content.attachments.iter().enumerate() {
        attributes.insert(
            format!("attachment.{i}"),
            format!("{}|{}|{}|{}", a.kind, a.url, a.name, a.mime_type),
        );
    }
    PlatformMessage {
        message_id: String::new(),
        tenant: subject.tenant.clone(),
        sender_id: subject.id.clone(),
        sender_name: msg.sender.and_then(|s| s.name).unwrap_or_default(),
        room_id: ctx.room_id.unwrap_or_default(),
        thread_id: ctx.thread_id.unwrap_or_default(),
        chat_type: ctx.chat_type.unwrap_or_else(|| "private".into()),
        text: msg.content.text,
        mentions: Vec::new(),
        attributes,
        reply_to: serde_json::Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_unified_model() {
        let m = parse(br#"{"platform":"web","sender":{"id":"u1","name":"Alice"},"content":{"text":"hi","attachments":[{"type":"image","url":"https://x/y.png"}]},"timestamp":1700000000,"context":{"room_id":"r1","thread_id":"t1","chat_type":"group"}}"#).unwrap();
        let s = Subject {
            id: "alice".into(),
            tenant: "acme".into(),
            ..Default::default()
        };
        let p = to_platform_message(m, &s);
        assert_eq!(
            (
                p.sender_id.as_str(),
                p.sender_name.as_str(),
                p.text.as_str()
            ),
            ("alice", "Alice", "hi")
        );
        assert_eq!(
            (
                p.room_id.as_str(),
                p.thread_id.as_str(),
                p.chat_type.as_str()
            ),
            ("r1", "t1", "group")
        );
        assert_eq!(p.tenant, "acme");
        assert_eq!(
            p.attributes.get("attachment.0").map(String::as_str),
            Some("image|https://x/y.png||")
        );
    }

    #[test]
    fn refuses_malformed_bodies() {
        for body in [
            &b"{"[..],
            b"[]",
            b"{\"content\":{}}",
            b"\xff\xfe",
            b"{\"content\":{\"text\":\"x\"},\"extra\":1}",
            b"{\"content\":{\"text\":\"x\"},\"context\":{\"chat_type\":\"weird\"}}",
        ] {
            assert!(parse(body).is_err(), "{:?}", String::from_utf8_lossy(body));
        }
        let e = parse(b"{\"content\":").unwrap_err();
        assert!(e.0.contains("line 1"), "{e}");
    }
}
