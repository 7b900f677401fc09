//! The runtime of declarative adapters (`crate::adapters` loads and checks
//! the files): [`DeclarativeAdapter`] drives the same [`PlatformAdapter`]
//! contract as the built-in platforms, so a platform described in YAML goes
//! through the same message path (dedupe by its id field, every policy, DLP
//! on every mapped text, context, writeback).
//!
//! `receive` verifies (the scheme of `verify:`), reads the body into a
//! document (`document`), answers what `answers:` says to answer, skips
//! what `ignore:` says to ignore, and maps `fields:` into a
//! [`PlatformMessage`]. The reply templates are rendered from the
//! message's fields and the request values the templates read, which
//! `receive` keeps in the message's `reply_to`.

mod document;
mod verify;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Map, Value};

use super::adapter::{
    ApiCall, ChatType, Inbound, Payload, PlatformAdapter, PlatformMessage, Principal, Rejection,
    Resealed, WebhookRequest, WebhookResponse,
};
use crate::adapters::adapter::{Api, MAX_ATTACHMENTS};
use crate::adapters::template::{header_safe, pct, text_of, BodyFormat, Scope, Tree, UnsafeValue};
use crate::adapters::{DeclarativeAdapter, DocFormat};

/// An attachment's name or URL is cut to this many characters.
const MAX_ATTACHMENT_TEXT: usize = 512;

fn respond(format: BodyFormat, body: &Tree, scope: &Scope<'_>) -> WebhookResponse {
    let (bytes, content_type) = body.render_body(format, scope);
    WebhookResponse {
        status: StatusCode::OK,
        content_type,
        body: Bytes::from(bytes),
    }
}

/// Lower-case, without its slash or `@bot`; `None` when empty.
fn command_of(raw: &str) -> Option<String> {
    let word = raw.trim().trim_start_matches('/');
    let word = word.split(['@', ' ']).next().unwrap_or("").to_lowercase();
    (!word.is_empty()).then_some(word)
}

fn cut(s: String) -> String {
    if s.chars().count() <= MAX_ATTACHMENT_TEXT {
        s
    } else {
        s.chars().take(MAX_ATTACHMENT_TEXT).collect()
    }
}

impl DeclarativeAdapter {
    /// Maps a verified document to what the message path should do.
    fn map(&self, doc: &Value, principal: Option<Principal>) -> Result<Inbound, Rejection> {
        let scope = Scope {
            doc: Some(doc),
            ..Scope::default()
        };
        if let Some(a) = self.answers.iter().find(|a| a.when.holds(doc)) {
            return Ok(Inbound::Answer {
                response: respond(a.format, &a.body, &scope),
                event: a.event,
            });
        }
        if let Some(rule) = self.ignore.iter().find(|r| r.when.holds(doc)) {
            return Ok(skip(rule.reason));
        }
        let mut values = Map::new();
        for (name, field) in &self.fields.named {
            if let Some(v) = field.read(doc) {
                values.insert((*name).to_string(), v);
            }
        }
        if let Some(p) = &principal {
            values.insert("sender".into(), Value::from(p.id.clone()));
            values.insert("tenant".into(), Value::from(p.tenant.clone()));
        }
        let text_field = |name: &str| values.get(name).map(text_of).unwrap_or_default();
        let message_id = text_field("id");
        if message_id.is_empty() {
            return Err(Rejection::Missing("id"));
        }
        let text = text_field("text");
        if text.trim().is_empty() {
            return Ok(skip("no_text"));
        }
        let chat_type = ChatType::parse(&text_field("chat_type")).unwrap_or_default();
        let command = values
            .get("command")
            .map(text_of)
            .and_then(|c| command_of(&c));
        let attributes = self.attributes_of(doc);
        let pointers: Map<String, Value> = self
            .captured
            .iter()
            .filter_map(|p| Some((p.clone(), doc.pointer(p)?.clone())))
            .collect();
        Ok(Inbound::Message(Box::new(PlatformMessage {
            message_id,
            tenant: text_field("tenant"),
            sender_id: text_field("sender"),
            sender_name: text_field("sender_name"),
            room_id: text_field("room"),
            thread_id: text_field("thread"),
            chat_type,
            text,
            mentions: Vec::new(),
            attributes,
            reply_to: serde_json::json!({ "fields": values, "pointers": pointers }),
            command,
            principal,
        })))
    }

    fn attributes_of(&self, doc: &Value) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = self
            .attributes
            .iter()
            .filter_map(|(k, f)| Some((k.clone(), text_of(&f.read(doc)?))))
            .collect();
        let Some(a) = &self.fields.attachments else {
            return out;
        };
        let items = doc.pointer(&a.pointer).and_then(Value::as_array);
        for (i, item) in items
            .into_iter()
            .flatten()
            .take(MAX_ATTACHMENTS)
            .enumerate()
        {
            let get = |p: &str| item.pointer(p).map(text_of).map(cut).unwrap_or_default();
            out.insert(
                format!("attachment.{i}"),
                format!("{}|{}", get(&a.name), get(&a.url)),
            );
        }
        out
    }

    /// Verifies `req` and maps its body. Works without HTTP too (an MQTT
    /// payload): empty headers, no query, `verify.scheme: none`.
    fn receive_inner(&self, req: &WebhookRequest<'_>) -> Result<Inbound, Rejection> {
        let principal = self.scheme.verify(req).map_err(|e| match e {
            // The bearer API's refusal keeps its own answer and challenge.
            Rejection::Unauthorized { .. } => e,
            e => e.unverified(),
        })?;
        let doc = document::parse(self.format, req.body)?;
        self.map(&doc, principal)
    }

    /// Maps a payload that arrived without HTTP (an MQTT message): the
    /// scheme must be `none` (a listener's own authentication stands in),
    /// or its credentials must be in `headers`.
    pub fn receive_payload(&self, body: &[u8], now: SystemTime) -> Result<Inbound, Rejection> {
        let headers = http::HeaderMap::new();
        self.receive_inner(&WebhookRequest {
            method: &Method::POST,
            query: None,
            headers: &headers,
            body,
            now,
            bearer: None,
        })
    }
}

fn skip(reason: &'static str) -> Inbound {
    Inbound::Skip {
        response: WebhookResponse::empty(),
        reason,
    }
}

/// The fields and captured request values a reply renders from.
fn reply_scope<'m>(msg: &'m PlatformMessage, reply: Option<&'m str>) -> Scope<'m> {
    Scope {
        reply,
        fields: msg.reply_to.get("fields").and_then(Value::as_object),
        doc: None,
        pointers: msg.reply_to.get("pointers").and_then(Value::as_object),
    }
}

impl Api {
    fn call(&self, msg: &PlatformMessage, text: &str) -> Result<ApiCall, Rejection> {
        let scope = reply_scope(msg, Some(text));
        let unsafe_value = |e: UnsafeValue| Rejection::Malformed(e.to_string());
        let path = self
            .url
            .render_with(&scope, |v| Ok(pct(v)))
            .map_err(unsafe_value)?;
        let mut headers = Vec::with_capacity(self.headers.len() + 1);
        let (body, content_type) = self.body.render_body(self.format, &scope);
        let content_type = match self.format {
            BodyFormat::Form => content_type.to_string(),
            _ => format!("{content_type}; charset=utf-8"),
        };
        headers.push(("content-type".to_string(), content_type));
        for (name, t) in &self.headers {
            headers.push((
                name.clone(),
                t.render_with(&scope, header_safe).map_err(unsafe_value)?,
            ));
        }
        Ok(ApiCall {
            method: self.method.clone(),
            url: format!("{}{path}", self.base),
            headers,
            body: Bytes::from(body),
            auth: None,
            success: self.success.clone(),
        })
    }
}

impl PlatformAdapter for DeclarativeAdapter {
    fn platform(&self) -> &'static str {
        self.name
    }

    fn receive(&self, req: &WebhookRequest<'_>) -> Result<Inbound, Rejection> {
        if req.method != Method::POST {
            return Err(Rejection::Method);
        }
        self.receive_inner(req)
    }

    fn inline_reply(
        &self,
        msg: &PlatformMessage,
        text: &str,
        _now: SystemTime,
    ) -> Option<WebhookResponse> {
        let inline = self.reply.inline.as_ref()?;
        let units = text.encode_utf16().count();
        if text.is_empty() || inline.max_length.is_some_and(|m| units > m) {
            return None;
        }
        Some(respond(
            inline.format,
            &inline.body,
            &reply_scope(msg, Some(text)),
        ))
    }

    fn ack(&self, msg: &PlatformMessage) -> WebhookResponse {
        match &self.reply.ack {
            Some((format, body)) => respond(*format, body, &reply_scope(msg, None)),
            None => WebhookResponse::empty(),
        }
    }

    fn reply_calls(&self, msg: &PlatformMessage, text: &str) -> Result<Vec<ApiCall>, Rejection> {
        let api = self
            .reply
            .api
            .as_ref()
            .ok_or(Rejection::Missing("reply.api"))?;
        let parts = match api.max_length {
            Some(max) => crate::platform::telegram::split_utf16(text, max.max(1)),
            None => vec![text],
        };
        parts.into_iter().map(|part| api.call(msg, part)).collect()
    }

    fn payload(&self, req: &WebhookRequest<'_>) -> Result<Payload, Rejection> {
        match self.format {
            DocFormat::Json => Payload::json(req.body),
            DocFormat::Form => Payload::parse(Some("application/x-www-form-urlencoded"), req.body),
            DocFormat::Xml => Payload::parse(Some("application/xml"), req.body),
        }
    }

    /// The masked payload, re-signed where the scheme allows it (HMAC with
    /// header signature and timestamp, token, JWT, none). The original must
    /// verify: nothing unverified is signed.
    fn reseal_payload(&self, req: &WebhookRequest<'_>, payload: &Payload) -> Option<Resealed> {
        self.scheme.verify(req).ok()?;
        let body = payload.to_bytes().ok()?;
        let headers = self.scheme.reseal_headers(req, &body)?;
        Some(Resealed {
            body,
            headers,
            query: None,
        })
    }

    fn dedupe_ttl(&self) -> Duration {
        self.dedupe_ttl
    }

    fn default_deadline(&self) -> Duration {
        self.deadline
    }
}
