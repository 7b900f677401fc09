//! OpenAI-compatible chat completions (`platform: openai`) as a platform:
//! the client authenticates with a JWT bearer token (like the generic API),
//! and the body is a chat-completions request. The message the policies
//! see is the last user message's text (rate limits, ABAC, the audit
//! line); ingress DLP reads every string of the body except the keys in
//! [`OPAQUE_KEYS`] (so every message's text, in string content and in
//! text parts).
//!
//! Passthrough to an OpenAI-compatible server: the client's JWT is
//! moltgate's credential and is never forwarded; the upstream gets the
//! route's `secrets.token` as its bearer token, if set.

use serde_json::{json, Value};

use super::adapter::{
    ApiCall, Channel, Inbound, Payload, PlatformAdapter, PlatformMessage, Rejection, Resealed,
    WebhookRequest, WebhookResponse,
};
use super::generic::{bearer_principal, json_payload, reseal_json};
use crate::openai::request;

/// Keys of a chat-completions request or answer that are ids, names of
/// models and tools, roles and enum-like values: not scanned.
pub const OPAQUE_KEYS: &[&str] = &[
    "model",
    "role",
    "type",
    "id",
    "tool_call_id",
    "object",
    "finish_reason",
    "system_fingerprint",
];

/// The OpenAI-compatible API as a platform.
#[derive(Debug, Clone, Default)]
pub struct OpenAiAdapter {
    /// The upstream's bearer token (`secrets.token`).
    upstream_token: Option<String>,
}

impl OpenAiAdapter {
    /// An adapter; `secrets.token`, if set, authenticates moltgate to the upstream.
    pub fn new(upstream_token: Option<&str>) -> Self {
        Self {
            upstream_token: upstream_token.map(str::to_owned),
        }
    }
}

impl PlatformAdapter for OpenAiAdapter {
    fn platform(&self) -> &'static str {
        "openai"
    }

    fn channel(&self) -> Channel {
        Channel::Api
    }

    /// The bearer token first, then the body's shape.
    fn receive(&self, req: &WebhookRequest<'_>) -> Result<Inbound, Rejection> {
        let principal = bearer_principal(req)?;
        let mut body: Value = serde_json::from_slice(req.body)
            .map_err(|e| Rejection::MalformedJson(e.to_string()))?;
        let text = last_user_text(&mut body)?;
        let model = body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut attributes = std::collections::BTreeMap::new();
        attributes.insert("model".to_string(), model.chars().take(128).collect());
        Ok(Inbound::Message(Box::new(PlatformMessage {
            tenant: principal.tenant.clone(),
            sender_id: principal.id.clone(),
            text,
            attributes,
            principal: Some(principal),
            ..Default::default()
        })))
    }

    fn ack(&self, _msg: &PlatformMessage) -> WebhookResponse {
        WebhookResponse::json(&json!({}))
    }

    fn reply_calls(&self, _msg: &PlatformMessage, _text: &str) -> Result<Vec<ApiCall>, Rejection> {
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

    fn upstream_authorization(&self) -> Option<Option<String>> {
        Some(self.upstream_token.as_ref().map(|t| format!("Bearer {t}")))
    }
}

/// The text of the last `user` message (what the policies judge), after
/// checking the request's shape.
fn last_user_text(body: &mut Value) -> Result<String, Rejection> {
    request::texts_mut(body).map_err(|e| Rejection::Malformed(e.to_string()))?;
    let messages = body.get("messages").and_then(Value::as_array);
    let last = messages
        .into_iter()
        .flatten()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"));
    let Some(last) = last else {
        return Ok(String::new());
    };
    let mut last = last.clone();
    let wrapped = &mut json!({"messages": [last.take()]});
    let texts = request::texts_mut(wrapped).map_err(|e| Rejection::Malformed(e.to_string()))?;
    Ok(texts
        .into_iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_user_message_is_the_message() {
        let mut body = json!({"model":"m","messages":[
            {"role":"user","content":"first"},
            {"role":"assistant","content":"ok"},
            {"role":"user","content":[{"type":"text","text":"second"},{"type":"text","text":"part"}]},
        ]});
        assert_eq!(last_user_text(&mut body).unwrap(), "second\npart");
        let mut bad = json!({"model":"m"});
        assert!(last_user_text(&mut bad).is_err());
    }
}
