//! Test doubles for the stages: a policy set from inline files, a minimal
//! adapter whose payload is plain JSON, and a bot that answers from a script.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

use crate::platform::adapter::{ApiCall, Resealed};
use crate::platform::{
    Inbound, Payload, PlatformAdapter, PlatformMessage, Rejection, WebhookRequest, WebhookResponse,
};
use crate::policy::PolicySet;
use crate::upstream::bot::{BotAnswer, BotClient, BotError, BotRequest};

/// A card rule that masks all but the last four digits, and a secret
/// keyword that blocks, both directions.
pub const DLP: &str = r#"patterns:
  credit_card:
    regex: '\b(?:[3-6]\d{3})(?:[ -]?\d){9,15}\b'
    validate: luhn
    action: mask
    mask: { keep_suffix: 4 }
keywords:
  secret:
    words: ["TOPSECRET"]
    action: block
"#;

/// A Luhn-valid card number.
pub const CARD: &str = "4111111111111111";

/// A policy set with `files` (name, text) and nothing else.
pub fn policies(files: &[(&str, &str)]) -> Arc<PolicySet> {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write policy");
    }
    Arc::new(PolicySet::load(dir.path(), 1, None).expect("policies load"))
}

/// An adapter for plain JSON bodies; `reseal` decides whether it can re-sign.
pub struct JsonAdapter {
    /// Whether `reseal_payload` succeeds.
    pub reseal: bool,
}

impl PlatformAdapter for JsonAdapter {
    fn platform(&self) -> &'static str {
        "telegram"
    }

    fn receive(&self, _req: &WebhookRequest<'_>) -> Result<Inbound, Rejection> {
        Ok(Inbound::Message(Box::default()))
    }

    fn ack(&self, _msg: &PlatformMessage) -> WebhookResponse {
        WebhookResponse::text("ack")
    }

    fn reply_calls(&self, _msg: &PlatformMessage, _text: &str) -> Result<Vec<ApiCall>, Rejection> {
        Ok(Vec::new())
    }

    fn reseal_payload(&self, _req: &WebhookRequest<'_>, payload: &Payload) -> Option<Resealed> {
        self.reseal.then(|| Resealed {
            body: payload.to_bytes().unwrap_or_default(),
            headers: vec![("x-resealed".into(), "1".into())],
            query: None,
        })
    }
}

/// A request with a JSON body.
pub fn json_request(body: &serde_json::Value) -> super::IncomingRequest {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().expect("static"),
    );
    super::IncomingRequest {
        method: Method::POST,
        query: None,
        headers,
        body: Bytes::from(body.to_string()),
        client_ip: "127.0.0.1".parse().expect("static"),
    }
}

/// A bot that answers every call with `answer` (or fails), and records what it got.
pub struct ScriptedBot {
    /// The answer, or `None` to fail as unreachable.
    pub answer: Option<(StatusCode, &'static str, String)>,
    /// The bodies received.
    pub received: Mutex<Vec<Bytes>>,
}

impl ScriptedBot {
    /// A bot answering `status` with a JSON `body`.
    pub fn answering(status: u16, body: serde_json::Value) -> Self {
        Self {
            answer: Some((
                StatusCode::from_u16(status).expect("status"),
                "application/json",
                body.to_string(),
            )),
            received: Mutex::new(Vec::new()),
        }
    }
}

#[async_trait]
impl BotClient for ScriptedBot {
    async fn call(&self, peer: &str, req: BotRequest, _t: Duration) -> Result<BotAnswer, BotError> {
        self.received.lock().expect("lock").push(req.body);
        let Some((status, ct, body)) = &self.answer else {
            return Err(BotError::Unreachable {
                peer: peer.into(),
                detail: "refused".into(),
            });
        };
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, ct.parse().expect("static"));
        Ok(BotAnswer {
            status: *status,
            headers,
            body: Bytes::from(body.clone()),
        })
    }
}
