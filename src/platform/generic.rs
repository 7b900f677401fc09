//! The generic HTTP API (`POST /v1/messages`): the unified JSON message model,
//! for clients that are not a chat platform. [`GenericAdapter`] makes it a
//! platform like the others, so the message path never asks "API or
//! webhook?": authentication is the bearer token, checked through the
//! request's [`BearerVerifier`] (the JWT policy of the request's policy
//! snapshot), and answers are shaped for a JSON API ([`Channel::Api`]).

use serde::Deserialize;
use serde_json::json;

use super::adapter::{
    ApiCall, Channel, ChatType, Inbound, Payload, PlatformAdapter, PlatformMessage, Principal,
    Rejection, Resealed, WebhookRequest, WebhookResponse,
};
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

/// [`to_message`] for a caller that holds a JWT [`Subject`] rather than a
/// [`Principal`] (the `message_path` benchmark and the `generic_parse` fuzz
/// target): the subject is the sender.
pub fn to_platform_message(msg: GenericMessage, subject: &Subject) -> PlatformMessage {
    let principal = Principal {
        id: subject.id.clone(),
        tenant: subject.tenant.clone(),
        roles: subject.roles.clone(),
        device_type: subject.device_type.clone(),
        claims: subject.claims.clone(),
    };
    to_message(msg, &principal)
}

/// The platform-neutral message: the principal is the sender (its `sub`
/// and tenant, never what the body claims). No message id: the API has no
/// redeliveries, so nothing is deduplicated.
pub fn to_message(msg: GenericMessage, principal: &Principal) -> PlatformMessage {
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
        tenant: principal.tenant.clone(),
        sender_id: principal.id.clone(),
        sender_name: msg.sender.and_then(|s| s.name).unwrap_or_default(),
        room_id: ctx.room_id.unwrap_or_default(),
        thread_id: ctx.thread_id.unwrap_or_default(),
        chat_type: ctx
            .chat_type
            .as_deref()
            .and_then(ChatType::parse)
            .unwrap_or_default(),
        text: msg.content.text,
        mentions: Vec::new(),
        attributes,
        reply_to: serde_json::Value::Null,
        command: None,
        principal: Some(principal.clone()),
    }
}

/// Keys of the unified model that are ids, enum-like values or timestamps.
/// `text`, the sender's `name` and attachments' `url` and `name` are scanned.
pub const OPAQUE_KEYS: &[&str] = &[
    "id",
    "type",
    "kind",
    "platform",
    "timestamp",
    "room_id",
    "thread_id",
    "chat_type",
    "mime_type",
];

/// The generic HTTP API as a platform: bearer-token authentication, the
/// unified JSON model, answers collected into one JSON response.
#[derive(Debug, Clone, Copy, Default)]
pub struct GenericAdapter;

impl PlatformAdapter for GenericAdapter {
    fn platform(&self) -> &'static str {
        "generic"
    }

    fn channel(&self) -> Channel {
        Channel::Api
    }

    /// The bearer token first (nothing about the body is said to a caller
    /// who is not authenticated), then the body. A request without a
    /// verifier is refused (401, `missing_verifier`): failing closed is the
    /// only safe answer to a message path that forgot to pass one.
    fn receive(&self, req: &WebhookRequest<'_>) -> Result<Inbound, Rejection> {
        let principal = bearer_principal(req)?;
        let body = parse(req.body).map_err(|e| Rejection::MalformedJson(e.0))?;
        Ok(Inbound::Message(Box::new(to_message(body, &principal))))
    }

    fn ack(&self, _msg: &PlatformMessage) -> WebhookResponse {
        WebhookResponse::json(&json!({}))
    }

    fn reply_calls(&self, _msg: &PlatformMessage, _text: &str) -> Result<Vec<ApiCall>, Rejection> {
        // Replies go back in the JSON answer; there is no API to call.
        Ok(Vec::new())
    }

    fn payload(&self, req: &WebhookRequest<'_>) -> Result<Payload, Rejection> {
        json_payload(req)
    }

    fn opaque_keys(&self) -> &'static [&'static str] {
        OPAQUE_KEYS
    }

    fn reseal_payload(&self, _req: &WebhookRequest<'_>, payload: &Payload) -> Option<Resealed> {
        reseal_json(payload)
    }
}

/// A JSON API's caller: `POST` with a bearer token that the request's
/// verifier accepts. A request without a verifier is refused (401,
/// `missing_verifier`): failing closed is the only safe answer to a message
/// path that forgot to pass one.
pub fn bearer_principal(req: &WebhookRequest<'_>) -> Result<Principal, Rejection> {
    if req.method != http::Method::POST {
        return Err(Rejection::Method);
    }
    let bearer = req.bearer.ok_or_else(|| Rejection::Unauthorized {
        kind: "missing_verifier",
        message: "this route cannot verify bearer tokens".into(),
        challenge: "Bearer".into(),
    })?;
    bearer.verify(req.header("authorization"))
}

/// A JSON API's body, for DLP to walk.
pub fn json_payload(req: &WebhookRequest<'_>) -> Result<Payload, Rejection> {
    serde_json::from_slice(req.body)
        .map(Payload::Json)
        .map_err(|e| Rejection::MalformedJson(e.to_string()))
}

/// A JSON API's body after DLP masked it: re-serialised; nothing is signed,
/// so no header changes.
pub fn reseal_json(payload: &Payload) -> Option<Resealed> {
    Some(Resealed {
        body: payload.to_bytes().ok()?,
        headers: Vec::new(),
        query: None,
    })
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
        assert_eq!(p.principal.as_ref().map(|p| p.id.as_str()), Some("alice"));
        assert_eq!(p.command, None);
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

    struct Fixed(Result<Principal, Rejection>);

    impl super::super::adapter::BearerVerifier for Fixed {
        fn verify(&self, authorization: Option<&str>) -> Result<Principal, Rejection> {
            assert_eq!(authorization, Some("Bearer t"));
            self.0.clone()
        }
    }

    fn post<'a>(
        h: &'a http::HeaderMap,
        body: &'a [u8],
        bearer: Option<&'a dyn super::super::adapter::BearerVerifier>,
    ) -> WebhookRequest<'a> {
        WebhookRequest {
            method: &http::Method::POST,
            query: None,
            headers: h,
            body,
            now: std::time::SystemTime::now(),
            bearer,
        }
    }

    fn auth() -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", http::HeaderValue::from_static("Bearer t"));
        h
    }

    #[test]
    fn adapter_authenticates_then_parses() {
        let a = GenericAdapter;
        let alice = Principal {
            id: "alice".into(),
            tenant: "acme".into(),
            roles: vec!["ops".into()],
            ..Default::default()
        };
        let ok = Fixed(Ok(alice.clone()));
        let h = auth();
        let body = br#"{"sender":{"id":"mallory","name":"Al"},"content":{"text":"/deploy now"}}"#;
        let Inbound::Message(m) = a.receive(&post(&h, body, Some(&ok))).unwrap() else {
            panic!()
        };
        assert_eq!((m.sender_id.as_str(), m.tenant.as_str()), ("alice", "acme"));
        assert_eq!(m.principal, Some(alice));
        assert_eq!(m.message_id, "");
        assert_eq!(m.chat_type, ChatType::Private);
        assert_eq!(m.command, None, "derived from the text by the message path");
        // Unauthenticated: refused before the body is looked at.
        let denied = Fixed(Err(Rejection::Unauthorized {
            kind: "invalid_token",
            message: "bad".into(),
            challenge: "Bearer error=\"invalid_token\"".into(),
        }));
        let err = a.receive(&post(&h, b"{", Some(&denied))).unwrap_err();
        assert_eq!(err.kind(), "invalid_token");
        assert_eq!(err.status(), http::StatusCode::UNAUTHORIZED);
        let err = a.receive(&post(&h, body, None)).unwrap_err();
        assert_eq!(err.kind(), "missing_verifier");
        assert_eq!(err.status(), http::StatusCode::UNAUTHORIZED);
        // A body that is not the unified model: 400 `malformed_json`, with
        // serde's position and never the content.
        for body in [&b"{}"[..], b"{\"content\":", b"card 4111"] {
            let err = a.receive(&post(&h, body, Some(&ok))).unwrap_err();
            assert_eq!(err.kind(), "malformed_json");
            assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
            let msg = err.to_string();
            assert!(msg.starts_with("malformed JSON body: "), "{msg}");
            assert!(!msg.contains("4111"), "{msg}");
        }
        let get = WebhookRequest {
            method: &http::Method::GET,
            ..post(&h, body, Some(&ok))
        };
        assert_eq!(a.receive(&get).unwrap_err(), Rejection::Method);
    }

    #[test]
    fn adapter_answers_and_passthrough() {
        let a = GenericAdapter;
        let m = PlatformMessage::default();
        assert_eq!(a.channel(), Channel::Api);
        assert_eq!(a.methods(), &[http::Method::POST]);
        assert_eq!(a.ack(&m), WebhookResponse::json(&json!({})));
        assert!(a
            .inline_reply(&m, "x", std::time::SystemTime::now())
            .is_none());
        assert!(a.reply_calls(&m, "x").unwrap().is_empty());
        let h = auth();
        let body = br#"{"sender":{"id":"u","name":"Ann 4111"},"content":{"text":"card 4111","attachments":[{"type":"file","url":"https://x/4111","name":"4111.txt","mime_type":"text/plain"}]},"context":{"room_id":"4111","chat_type":"group"}}"#;
        let req = post(&h, body, None);
        let mut p = a.payload(&req).unwrap();
        let mut seen = Vec::new();
        p.texts_mut(a.opaque_keys(), &mut |s: &mut String| {
            seen.push(s.clone());
            *s = s.replace("4111", "****");
        })
        .unwrap();
        seen.sort();
        assert_eq!(
            seen,
            ["4111.txt", "Ann 4111", "card 4111", "https://x/4111"]
        );
        let sealed = a.reseal_payload(&req, &p).unwrap();
        assert!(sealed.headers.is_empty() && sealed.query.is_none());
        let ok = Fixed(Ok(Principal::default()));
        let Inbound::Message(m) = a.receive(&post(&h, &sealed.body, Some(&ok))).unwrap() else {
            panic!()
        };
        assert_eq!(m.text, "card ****");
        assert_eq!(m.room_id, "4111", "opaque ids are kept");
        assert_eq!(
            a.payload(&post(&h, b"{", None)).unwrap_err().kind(),
            "malformed_json"
        );
    }
}
