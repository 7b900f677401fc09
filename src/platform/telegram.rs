//! Telegram Bot API webhook adapter.
//!
//! Telegram authenticates webhooks only by echoing the `secret_token` given
//! to `setWebhook` in a header; there is no signature or timestamp, so the
//! check is a constant-time comparison and dedupe on `update_id` is what
//! stops replays. A webhook response may carry one Bot API call, which is how
//! a reply within the deadline goes back inline.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use http::Method;
use serde_json::{json, Map, Value};
use subtle::ConstantTimeEq;

use super::adapter::{
    optional_secret, required_secret, AdapterConfigError, ApiCall, ChatType, Inbound, Payload,
    PlatformAdapter, PlatformMessage, Rejection, Resealed, WebhookRequest, WebhookResponse,
};

/// Telegram's API base when a route sets none.
pub const DEFAULT_API_BASE: &str = "https://api.telegram.org";
/// Header that carries the webhook's secret token.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";
/// Telegram's limit on a message's text, in UTF-16 code units.
pub const MAX_TEXT: usize = 4096;

/// Ids, file ids, timestamps and enum-like fields of updates. `text`,
/// `caption`, `quote` and replied-to texts, entity `url`s, callback `data`,
/// names, file names, contact details and button texts are scanned.
pub const OPAQUE_KEYS: &[&str] = &[
    "update_id",
    "message_id",
    "message_thread_id",
    "id",
    "type",
    "chat_id",
    "date",
    "edit_date",
    "forward_date",
    "file_id",
    "file_unique_id",
    "thumbnail_file_id",
    "media_group_id",
    "chat_instance",
    "inline_message_id",
    "business_connection_id",
    "custom_emoji_id",
    "effect_id",
    "language_code",
    "mime_type",
    "language",
];

/// A text field and the entities that index into it (UTF-16 offsets).
const ENTITY_FIELDS: &[(&str, &str)] = &[
    ("text", "entities"),
    ("caption", "caption_entities"),
    ("text", "text_entities"),
    ("question", "question_entities"),
    ("explanation", "explanation_entities"),
];

/// Verifies and parses Telegram updates and describes replies.
pub struct TelegramAdapter {
    secret_token: String,
    bot_token: Option<String>,
    api_base: String,
}

impl TelegramAdapter {
    /// Builds the adapter from a route's secrets (`secret_token`, optional `bot_token`).
    pub fn new(
        secrets: &BTreeMap<String, String>,
        api_base: Option<&str>,
    ) -> Result<Self, AdapterConfigError> {
        let secret_token = required_secret(secrets, "telegram", "secret_token")?;
        let valid = secret_token.len() <= 256
            && secret_token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(AdapterConfigError::BadSecret {
                platform: "telegram",
                name: "secret_token",
                reason: "must be 1-256 of A-Z a-z 0-9 _ - (the value given to setWebhook)".into(),
            });
        }
        Ok(Self {
            secret_token: secret_token.to_string(),
            // Optional: a passthrough route never calls the API itself.
            bot_token: optional_secret(secrets, "bot_token").map(str::to_string),
            api_base: api_base
                .unwrap_or(DEFAULT_API_BASE)
                .trim_end_matches('/')
                .to_string(),
        })
    }
}

/// Compares the presented secret token with the configured one in constant time.
pub fn verify_secret_token(expected: &str, presented: &str) -> Result<(), Rejection> {
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(presented.as_bytes())) {
        return Err(Rejection::BadSignature("telegram secret token mismatch"));
    }
    Ok(())
}

/// Splits `text` into pieces of at most `max_units` UTF-16 code units, on
/// character boundaries. Empty text gives no pieces.
pub fn split_utf16(text: &str, max_units: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut units = 0;
    for (i, c) in text.char_indices() {
        if units + c.len_utf16() > max_units && i > start {
            parts.extend(text.get(start..i));
            start = i;
            units = 0;
        }
        units += c.len_utf16();
    }
    if start < text.len() {
        parts.extend(text.get(start..));
    }
    parts
}

/// An id that Telegram sends as a number (or, defensively, a string), as text.
fn id_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::Number(n) => n.as_i64().map(|n| n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn skip(reason: &'static str) -> Inbound {
    Inbound::Skip {
        response: WebhookResponse::empty(),
        reason,
    }
}

fn display_name(user: &Value) -> String {
    let first = user.get("first_name").and_then(Value::as_str).unwrap_or("");
    let last = user.get("last_name").and_then(Value::as_str).unwrap_or("");
    let name = format!("{first} {last}");
    let name = name.trim();
    if name.is_empty() {
        user.get("username")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    } else {
        name.to_string()
    }
}

/// The field of a message that carries its text: `text`, or `caption` on media.
fn text_field(message: &Value) -> Option<(&'static str, &'static str)> {
    if message.get("text").is_some() {
        Some(("text", "entities"))
    } else if message.get("caption").is_some() {
        Some(("caption", "caption_entities"))
    } else {
        None
    }
}

/// Mentioned users: `@username` mentions by name, `text_mention` by id.
fn mentions(message: &Value, text: &str, entities_key: &str) -> Vec<String> {
    let units: Vec<u16> = text.encode_utf16().collect();
    let mut out = Vec::new();
    for entity in message
        .get(entities_key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match entity.get("type").and_then(Value::as_str) {
            Some("mention") => {
                let offset = entity.get("offset").and_then(Value::as_u64).unwrap_or(0) as usize;
                let length = entity.get("length").and_then(Value::as_u64).unwrap_or(0) as usize;
                if let Some(slice) = offset
                    .checked_add(length)
                    .and_then(|end| units.get(offset..end))
                {
                    out.push(String::from_utf16_lossy(slice));
                }
            }
            Some("text_mention") => out.extend(id_text(entity.pointer("/user/id"))),
            _ => {}
        }
    }
    out
}

/// The command of a `bot_command` entity at offset 0: lower-case, without
/// its slash or `@botname`.
fn command(message: &Value, text: &str, entities_key: &str) -> Option<String> {
    let entity = message
        .get(entities_key)
        .and_then(Value::as_array)?
        .iter()
        .find(|e| {
            e.get("type").and_then(Value::as_str) == Some("bot_command")
                && e.get("offset").and_then(Value::as_u64) == Some(0)
        })?;
    let length = usize::try_from(entity.get("length")?.as_u64()?).ok()?;
    let units: Vec<u16> = text.encode_utf16().take(length).collect();
    if units.len() != length {
        return None;
    }
    let raw = String::from_utf16(&units).ok()?;
    let name = raw.strip_prefix('/')?.split('@').next()?.to_lowercase();
    (!name.is_empty()).then_some(name)
}

/// The update's kind, the message it concerns and, for a button press, the
/// callback query. `Err(skip)` for updates that are not handled.
fn select(value: &Value) -> Result<(&'static str, &Value, Option<&Value>), Inbound> {
    if let Some(m) = value.get("message") {
        Ok(("message", m, None))
    } else if let Some(m) = value.get("edited_message") {
        Ok(("edited_message", m, None))
    } else if let Some(cb) = value.get("callback_query") {
        // Callbacks from inline-mode messages have no chat to answer in.
        match cb.get("message") {
            Some(m) => Ok(("callback_query", m, Some(cb))),
            None => Err(skip("inline_callback")),
        }
    } else {
        Err(skip("unsupported_update"))
    }
}

/// Text, mentions and command: a callback's `data`, else the message's
/// `text`, or the `caption` of a photo or document.
fn content(message: &Value, callback: Option<&Value>) -> (String, Vec<String>, Option<String>) {
    if let Some(cb) = callback {
        let data = cb.get("data").and_then(Value::as_str).unwrap_or("");
        return (data.to_string(), Vec::new(), None);
    }
    match text_field(message) {
        Some((field, entities)) => {
            let text = message.get(field).and_then(Value::as_str).unwrap_or("");
            (
                text.to_string(),
                mentions(message, text, entities),
                command(message, text, entities),
            )
        }
        None => (String::new(), Vec::new(), None),
    }
}

fn chat_type(chat: &Value) -> ChatType {
    match chat.get("type").and_then(Value::as_str) {
        Some("group") | Some("supergroup") => ChatType::Group,
        Some("channel") => ChatType::Channel,
        _ => ChatType::Private,
    }
}

/// Parses an update body into what the message path should do with it.
pub fn parse_update(body: &[u8]) -> Result<Inbound, Rejection> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Rejection::Malformed(format!("body is not JSON: {e}")))?;
    let update_id = id_text(value.get("update_id")).ok_or(Rejection::Missing("update_id"))?;
    let (kind, message, callback) = match select(&value) {
        Ok(selected) => selected,
        Err(skipped) => return Ok(skipped),
    };
    if !message.is_object() {
        return Err(Rejection::Malformed(format!("{kind} is not an object")));
    }
    let from = callback
        .and_then(|cb| cb.get("from"))
        .or_else(|| message.get("from"))
        .ok_or(Rejection::Missing("from"))?;
    if from.get("is_bot").and_then(Value::as_bool) == Some(true) {
        return Ok(skip("bot_message"));
    }
    let sender_id = id_text(from.get("id")).ok_or(Rejection::Missing("from.id"))?;
    let chat = message.get("chat").ok_or(Rejection::Missing("chat"))?;
    let chat_id = chat
        .get("id")
        .filter(|id| id_text(Some(id)).is_some())
        .ok_or(Rejection::Missing("chat.id"))?;
    let (text, mentions, command) = content(message, callback);
    if text.is_empty() {
        return Ok(skip("no_text"));
    }
    let thread = message.get("message_thread_id").and_then(Value::as_i64);
    let mut reply_to = json!({ "chat_id": chat_id });
    if let Some(thread) = thread {
        reply_to["message_thread_id"] = Value::from(thread);
    }
    if let Some(id) = callback.and_then(|cb| cb.get("id")).and_then(Value::as_str) {
        reply_to["callback_query_id"] = Value::from(id);
    }
    let mut attributes = BTreeMap::new();
    attributes.insert("update_type".to_string(), kind.to_string());
    if let Some(id) = id_text(message.get("message_id")) {
        attributes.insert("telegram_message_id".to_string(), id);
    }
    Ok(Inbound::Message(Box::new(PlatformMessage {
        message_id: update_id,
        tenant: String::new(),
        sender_id,
        sender_name: display_name(from),
        room_id: id_text(Some(chat_id)).unwrap_or_default(),
        thread_id: thread.map(|t| t.to_string()).unwrap_or_default(),
        chat_type: chat_type(chat),
        text,
        mentions,
        attributes,
        reply_to,
        command,
        principal: None,
    })))
}

/// The `sendMessage` parameters that reply with `text`.
fn send_message(msg: &PlatformMessage, text: &str) -> Result<Map<String, Value>, Rejection> {
    let chat_id = msg
        .reply_to
        .get("chat_id")
        .ok_or(Rejection::Missing("chat_id"))?;
    let mut params = Map::new();
    params.insert("chat_id".into(), chat_id.clone());
    params.insert("text".into(), Value::from(text));
    if let Some(thread) = msg.reply_to.get("message_thread_id") {
        params.insert("message_thread_id".into(), thread.clone());
    }
    Ok(params)
}

/// Walks the original and the rewritten update side by side and, wherever a
/// text field changed, keeps only the entities that still index it
/// correctly (see [`retain_entities`]).
fn fix_entities(old: &Value, new: &mut Value) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            for (text_key, entities_key) in ENTITY_FIELDS {
                let (Some(Value::String(before)), Some(Value::String(after))) =
                    (o.get(*text_key), n.get(*text_key))
                else {
                    continue;
                };
                if before != after {
                    let after = after.clone();
                    if let Some(list) = n.get_mut(*entities_key) {
                        retain_entities(list, before, &after);
                    }
                }
            }
            for (k, nv) in n.iter_mut() {
                if let Some(ov) = o.get(k) {
                    fix_entities(ov, nv);
                }
            }
        }
        (Value::Array(o), Value::Array(n)) => {
            for (ov, nv) in o.iter().zip(n.iter_mut()) {
                fix_entities(ov, nv);
            }
        }
        _ => {}
    }
}

/// Keeps only entities that still cover the same characters in the new text,
/// so a leading `/command` survives masking and nothing points past the end.
fn retain_entities(entities: &mut Value, old: &str, new: &str) {
    let old: Vec<u16> = old.encode_utf16().collect();
    let new: Vec<u16> = new.encode_utf16().collect();
    if let Some(list) = entities.as_array_mut() {
        list.retain(|e| {
            let offset = e.get("offset").and_then(Value::as_u64).unwrap_or(u64::MAX) as usize;
            let length = e.get("length").and_then(Value::as_u64).unwrap_or(0) as usize;
            let Some(end) = offset.checked_add(length) else {
                return false;
            };
            matches!((old.get(offset..end), new.get(offset..end)), (Some(a), Some(b)) if a == b)
        });
    }
}

impl PlatformAdapter for TelegramAdapter {
    fn platform(&self) -> &'static str {
        "telegram"
    }

    fn receive(&self, req: &WebhookRequest<'_>) -> Result<Inbound, Rejection> {
        if req.method != Method::POST {
            return Err(Rejection::Method);
        }
        let presented = req
            .header(SECRET_HEADER)
            .ok_or(Rejection::Missing("X-Telegram-Bot-Api-Secret-Token").unverified())?;
        verify_secret_token(&self.secret_token, presented)?;
        parse_update(req.body)
    }

    fn inline_reply(
        &self,
        msg: &PlatformMessage,
        text: &str,
        _now: SystemTime,
    ) -> Option<WebhookResponse> {
        if text.is_empty() || text.encode_utf16().count() > MAX_TEXT {
            return None;
        }
        let mut params = send_message(msg, text).ok()?;
        params.insert("method".into(), Value::from("sendMessage"));
        Some(WebhookResponse::json(&Value::Object(params)))
    }

    fn ack(&self, _msg: &PlatformMessage) -> WebhookResponse {
        WebhookResponse::empty()
    }

    fn reply_calls(&self, msg: &PlatformMessage, text: &str) -> Result<Vec<ApiCall>, Rejection> {
        let token = self
            .bot_token
            .as_deref()
            .ok_or(Rejection::Missing("bot_token"))?;
        let url = format!("{}/bot{token}/sendMessage", self.api_base);
        split_utf16(text, MAX_TEXT)
            .into_iter()
            .map(|part| {
                let params = send_message(msg, part)?;
                let mut call = ApiCall::post_json(url.clone(), &Value::Object(params));
                call.success = Some(("/ok", Value::Bool(true)));
                Ok(call)
            })
            .collect()
    }

    fn payload(&self, req: &WebhookRequest<'_>) -> Result<Payload, Rejection> {
        Payload::json(req.body)
    }

    fn opaque_keys(&self) -> &'static [&'static str] {
        OPAQUE_KEYS
    }

    /// The update re-serialised with entities that still fit the masked
    /// texts, and the secret token. The original must carry the token.
    fn reseal_payload(&self, req: &WebhookRequest<'_>, payload: &Payload) -> Option<Resealed> {
        let Payload::Json(value) = payload else {
            return None;
        };
        verify_secret_token(&self.secret_token, req.header(SECRET_HEADER)?).ok()?;
        let original: Value = serde_json::from_slice(req.body).ok()?;
        let mut value = value.clone();
        fix_entities(&original, &mut value);
        Some(Resealed {
            body: serde_json::to_vec(&value).ok()?.into(),
            headers: vec![(SECRET_HEADER.into(), self.secret_token.clone())],
            query: None,
        })
    }

    fn dedupe_ttl(&self) -> Duration {
        // Telegram keeps redelivering an unacknowledged update for up to a day.
        Duration::from_secs(24 * 3600)
    }
}

#[cfg(test)]
mod tests;
