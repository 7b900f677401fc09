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
mod tests {
    use super::super::slack::tests::{at, headers, vectors};
    use super::*;
    use http::HeaderMap;

    const SECRET: &str = "s3cr3t_token-1";

    fn adapter() -> TelegramAdapter {
        let secrets = BTreeMap::from([
            ("secret_token".to_string(), SECRET.to_string()),
            ("bot_token".to_string(), "123:ABC".to_string()),
        ]);
        TelegramAdapter::new(&secrets, Some("http://127.0.0.1:9/")).unwrap()
    }

    fn receive_with(h: &HeaderMap, body: &[u8]) -> Result<Inbound, Rejection> {
        adapter().receive(&WebhookRequest {
            method: &Method::POST,
            query: None,
            headers: h,
            body,
            now: at(0),
            bearer: None,
        })
    }

    fn receive(body: &str) -> Result<Inbound, Rejection> {
        receive_with(&headers(&[(SECRET_HEADER, SECRET)]), body.as_bytes())
    }

    fn message(body: &str) -> PlatformMessage {
        match receive(body).unwrap() {
            Inbound::Message(m) => *m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    fn skip_reason(body: &str) -> &'static str {
        match receive(body).unwrap() {
            Inbound::Skip { reason, .. } => reason,
            other => panic!("expected a skip, got {other:?}"),
        }
    }

    fn sample() -> String {
        vectors()["telegram"]["sample_update"]["body"]
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn published_sample_update_parses() {
        let m = message(&sample());
        assert_eq!(m.message_id, "10000");
        assert_eq!(m.sender_id, "1111111");
        assert_eq!(m.sender_name, "Test Test Lastname");
        assert_eq!(m.room_id, "1111111");
        assert_eq!(m.chat_type, "private");
        assert_eq!(m.thread_id, "");
        assert_eq!(m.text, "/start");
        // No bot_command entity in the sample: the message path reads the text.
        assert_eq!(m.command, None);
        assert_eq!(m.attributes["update_type"], "message");
        assert_eq!(m.attributes["telegram_message_id"], "1365");
        assert_eq!(m.reply_to, json!({"chat_id":1111111}));
    }

    #[test]
    fn secret_token_is_checked() {
        let body = sample();
        for h in [
            headers(&[(SECRET_HEADER, "s3cr3t_token-2")]),
            headers(&[(SECRET_HEADER, "s3cr3t_token-1x")]),
            headers(&[(SECRET_HEADER, "")]),
        ] {
            let err = receive_with(&h, body.as_bytes()).unwrap_err();
            assert_eq!(err.kind(), "bad_signature");
            assert!(!err.to_string().contains(SECRET));
        }
        let err = receive_with(&HeaderMap::new(), body.as_bytes()).unwrap_err();
        assert_eq!(err.kind(), "missing_field");
        let err = adapter()
            .receive(&WebhookRequest {
                method: &Method::GET,
                query: None,
                headers: &headers(&[(SECRET_HEADER, SECRET)]),
                body: body.as_bytes(),
                now: at(0),
                bearer: None,
            })
            .unwrap_err();
        assert_eq!(err, Rejection::Method);
        verify_secret_token(SECRET, SECRET).unwrap();
        assert!(verify_secret_token("", "").is_err());
    }

    #[test]
    fn config_is_validated() {
        let bad = BTreeMap::from([("secret_token".to_string(), "has space".to_string())]);
        assert!(TelegramAdapter::new(&bad, None).is_err());
        let err = TelegramAdapter::new(&BTreeMap::new(), None).err().unwrap();
        assert!(err.to_string().contains("secret_token"));
    }

    #[test]
    fn malformed_updates_are_rejected() {
        for body in [
            "",
            "{",
            "[]",
            "{}",
            r#"{"update_id":1,"message":"x"}"#,
            r#"{"update_id":1,"message":{"text":"x","chat":{"id":1}}}"#,
            r#"{"update_id":1,"message":{"text":"x","from":{"id":1}}}"#,
            r#"{"update_id":1,"message":{"text":"x","from":{"id":1},"chat":{"id":[]}}}"#,
            r#"{"update_id":{},"message":{}}"#,
        ] {
            let err = receive(body).unwrap_err();
            assert!(
                matches!(err, Rejection::Malformed(_) | Rejection::Missing(_)),
                "{body}: {err:?}"
            );
        }
        let _ = parse_update(&[0xff, 0x00, 0x7b]).unwrap_err();
    }

    #[test]
    fn groups_threads_edits_callbacks_and_mentions() {
        let m = message(
            r#"{"update_id":5,"message":{"message_id":9,"message_thread_id":77,
            "from":{"id":2,"is_bot":false,"first_name":"Bo"},
            "chat":{"id":-1001,"type":"supergroup"},
            "text":"@mybot héllo","entities":[{"type":"mention","offset":0,"length":6},
            {"type":"text_mention","offset":7,"length":5,"user":{"id":31}},
            {"type":"mention","offset":999,"length":5}]}}"#,
        );
        assert_eq!(m.chat_type, "group");
        assert_eq!(m.thread_id, "77");
        assert_eq!(m.room_id, "-1001");
        assert_eq!(m.text, "@mybot héllo");
        assert_eq!(m.mentions, vec!["@mybot", "31"]);
        assert_eq!(m.reply_to, json!({"chat_id":-1001,"message_thread_id":77}));

        let m = message(
            r#"{"update_id":6,"edited_message":{"message_id":9,"from":{"id":2},
            "chat":{"id":3,"type":"private"},"text":"fixed"}}"#,
        );
        assert_eq!(m.attributes["update_type"], "edited_message");
        assert_eq!(m.text, "fixed");

        let m = message(
            r#"{"update_id":7,"message":{"message_id":9,"from":{"id":2},
            "chat":{"id":3,"type":"channel"},"photo":[],"caption":"a cat"}}"#,
        );
        assert_eq!(m.text, "a cat");
        assert_eq!(m.chat_type, "channel");

        let m = message(
            r#"{"update_id":8,"callback_query":{"id":"cb1","from":{"id":4,"username":"zed"},
            "message":{"message_id":9,"message_thread_id":5,"chat":{"id":3,"type":"group"},"text":"pick"},
            "data":"choice_a"}}"#,
        );
        assert_eq!(m.text, "choice_a");
        assert_eq!(m.sender_id, "4");
        assert_eq!(m.sender_name, "zed");
        assert_eq!(m.thread_id, "5");
        assert_eq!(m.reply_to["callback_query_id"], "cb1");
    }

    #[test]
    fn unsupported_and_bot_updates_are_skipped() {
        assert_eq!(
            skip_reason(r#"{"update_id":1,"poll":{}}"#),
            "unsupported_update"
        );
        assert_eq!(
            skip_reason(
                r#"{"update_id":1,"callback_query":{"id":"x","from":{"id":1},"inline_message_id":"i"}}"#
            ),
            "inline_callback"
        );
        assert_eq!(
            skip_reason(
                r#"{"update_id":1,"message":{"from":{"id":1,"is_bot":true},"chat":{"id":1},"text":"me"}}"#
            ),
            "bot_message"
        );
        assert_eq!(
            skip_reason(
                r#"{"update_id":1,"message":{"from":{"id":1},"chat":{"id":1},"sticker":{}}}"#
            ),
            "no_text"
        );
    }

    #[test]
    fn inline_reply_and_send_message() {
        let a = adapter();
        let m = message(
            r#"{"update_id":5,"message":{"message_id":9,"message_thread_id":77,
            "from":{"id":2},"chat":{"id":-1001,"type":"supergroup"},"text":"hi"}}"#,
        );
        let inline = a.inline_reply(&m, "hello", at(0)).unwrap();
        assert_eq!(inline.content_type, "application/json");
        let v: Value = serde_json::from_slice(&inline.body).unwrap();
        assert_eq!(
            v,
            json!({"method":"sendMessage","chat_id":-1001,"text":"hello","message_thread_id":77})
        );
        assert!(a
            .inline_reply(&m, &"x".repeat(MAX_TEXT + 1), at(0))
            .is_none());
        assert_eq!(a.ack(&m), WebhookResponse::empty());

        let calls = a.reply_calls(&m, "hello").unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].method, Method::POST);
        assert_eq!(calls[0].url, "http://127.0.0.1:9/bot123:ABC/sendMessage");
        let v: Value = serde_json::from_slice(&calls[0].body).unwrap();
        assert_eq!(
            v,
            json!({"chat_id":-1001,"text":"hello","message_thread_id":77})
        );
        assert_eq!(calls[0].success, Some(("/ok", Value::Bool(true))));
        // Long replies are split on character boundaries.
        let calls = a.reply_calls(&m, &"😀".repeat(3000)).unwrap();
        assert_eq!(calls.len(), 2);

        let secrets = BTreeMap::from([("secret_token".to_string(), "x".to_string())]);
        let bare = TelegramAdapter::new(&secrets, None).unwrap();
        assert_eq!(
            bare.reply_calls(&m, "x").unwrap_err(),
            Rejection::Missing("bot_token")
        );
    }

    #[test]
    fn split_utf16_respects_limits() {
        assert!(split_utf16("", 10).is_empty());
        assert_eq!(split_utf16("abcde", 2), vec!["ab", "cd", "e"]);
        assert_eq!(split_utf16("😀😀", 3), vec!["😀", "😀"]);
        // A character wider than the limit still makes progress.
        assert_eq!(split_utf16("😀a", 1), vec!["😀", "a"]);
    }

    /// A message's `text` and its `entities`, callback data and an edited
    /// message's caption: masked in the payload, resealed, and read again.
    #[test]
    fn reseal_payload_of_texts_captions_and_callback_data() {
        let a = adapter();
        let body = r#"{"update_id":5,"message":{"message_id":9,"from":{"id":2},"chat":{"id":3},
            "text":"/pay 4111111111111111","entities":[{"type":"bot_command","offset":0,"length":4},
            {"type":"code","offset":5,"length":16}]}}"#;
        let h = headers(&[(SECRET_HEADER, SECRET)]);
        let req = WebhookRequest {
            method: &Method::POST,
            query: None,
            headers: &h,
            body: body.as_bytes(),
            now: at(0),
            bearer: None,
        };
        let reseal = |req: &WebhookRequest<'_>, from: &str, to: &str| {
            let mut p = a.payload(req).unwrap();
            let mut seen = Vec::new();
            p.texts_mut(a.opaque_keys(), &mut |s: &mut String| {
                seen.push(s.clone());
                *s = s.replace(from, to);
            })
            .unwrap();
            (seen, a.reseal_payload(req, &p).unwrap())
        };
        let (seen, sealed) = reseal(&req, "4111111111111111", "****");
        assert_eq!(seen, ["/pay 4111111111111111"]);
        assert_eq!(
            sealed.headers,
            vec![(SECRET_HEADER.to_string(), SECRET.to_string())]
        );
        assert!(!String::from_utf8_lossy(&sealed.body).contains("4111"));
        let got = match receive_with(&h, &sealed.body).unwrap() {
            Inbound::Message(m) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(got.text, "/pay ****");
        assert_eq!(got.command.as_deref(), Some("pay"));
        let v: Value = serde_json::from_slice(&sealed.body).unwrap();
        assert_eq!(
            v["message"]["entities"],
            json!([{"type":"bot_command","offset":0,"length":4}])
        );

        // Callback data and an edited message's caption are resealed too.
        for body in [
            r#"{"update_id":8,"callback_query":{"id":"c","from":{"id":4},"message":{"chat":{"id":3}},"data":"secret"}}"#,
            r#"{"update_id":9,"edited_message":{"from":{"id":4},"chat":{"id":3},"caption":"secret"}}"#,
        ] {
            let req = WebhookRequest {
                body: body.as_bytes(),
                ..req
            };
            let (seen, sealed) = reseal(&req, "secret", "masked");
            assert_eq!(seen, ["secret"], "{body}");
            match receive_with(&h, &sealed.body).unwrap() {
                Inbound::Message(got) => assert_eq!(got.text, "masked"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn bot_command_entities_are_the_command() {
        let m = message(
            r#"{"update_id":1,"message":{"message_id":2,"from":{"id":3},"chat":{"id":3,"type":"private"},
            "text":"/Deploy@my_bot prod","entities":[{"type":"bot_command","offset":0,"length":14}]}}"#,
        );
        assert_eq!(m.command.as_deref(), Some("deploy"));
        assert_eq!(m.text, "/Deploy@my_bot prod");
        // Not at offset 0: not the message's command.
        let m = message(
            r#"{"update_id":1,"message":{"from":{"id":3},"chat":{"id":3},
            "text":"see /help","entities":[{"type":"bot_command","offset":4,"length":5}]}}"#,
        );
        assert_eq!(m.command, None);
        // A photo's caption is the text, and its command counts.
        let m = message(
            r#"{"update_id":1,"message":{"from":{"id":3},"chat":{"id":3},"photo":[{"file_id":"f"}],
            "caption":"/scan this","caption_entities":[{"type":"bot_command","offset":0,"length":5}]}}"#,
        );
        assert_eq!(
            (m.text.as_str(), m.command.as_deref()),
            ("/scan this", Some("scan"))
        );
        // Lengths are UTF-16 units; a lying length gives no command.
        let m = message(
            r#"{"update_id":1,"message":{"from":{"id":3},"chat":{"id":3},
            "text":"/x","entities":[{"type":"bot_command","offset":0,"length":99}]}}"#,
        );
        assert_eq!(m.command, None);
        // Callback data is never a command.
        let m = message(
            r#"{"update_id":8,"callback_query":{"id":"cb1","from":{"id":4},
            "message":{"chat":{"id":3},"text":"/pick","entities":[{"type":"bot_command","offset":0,"length":5}]},"data":"/a"}}"#,
        );
        assert_eq!(m.command, None);
    }

    #[test]
    fn payload_reaches_every_text_and_reseal_keeps_entities_valid() {
        let a = adapter();
        let body = r#"{"update_id":5,"message":{"message_id":9,"from":{"id":2,"first_name":"Bo 4111"},
            "chat":{"id":3,"type":"private"},"media_group_id":"4111222233334444",
            "photo":[{"file_id":"AgAD4111","file_unique_id":"u4111","width":1,"height":1}],
            "caption":"/pay 4111 ok","caption_entities":[{"type":"bot_command","offset":0,"length":4},
              {"type":"bold","offset":10,"length":2},{"type":"text_link","offset":5,"length":4,"url":"https://x/4111"}],
            "reply_to_message":{"message_id":8,"from":{"id":7},"chat":{"id":3},"text":"old 4111",
              "entities":[{"type":"code","offset":4,"length":4}]},
            "quote":{"text":"4111 quoted","entities":[{"type":"italic","offset":5,"length":6}],"position":0}}}"#;
        let h = headers(&[(SECRET_HEADER, SECRET)]);
        let req = WebhookRequest {
            method: &Method::POST,
            query: None,
            headers: &h,
            body: body.as_bytes(),
            now: at(0),
            bearer: None,
        };
        let mut p = a.payload(&req).unwrap();
        let mut seen = Vec::new();
        p.texts_mut(a.opaque_keys(), &mut |s: &mut String| {
            seen.push(s.clone());
            *s = s.replace("4111", "*");
        })
        .unwrap();
        seen.sort();
        assert_eq!(
            seen,
            [
                "/pay 4111 ok",
                "4111 quoted",
                "Bo 4111",
                "https://x/4111",
                "old 4111",
            ]
        );
        let sealed = a.reseal_payload(&req, &p).unwrap();
        assert_eq!(
            sealed.headers,
            vec![(SECRET_HEADER.to_string(), SECRET.to_string())]
        );
        let got = match receive_with(&h, &sealed.body).unwrap() {
            Inbound::Message(m) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(got.text, "/pay * ok");
        assert_eq!(got.command.as_deref(), Some("pay"));
        let v: Value = serde_json::from_slice(&sealed.body).unwrap();
        let msg = &v["message"];
        // Entities that no longer index the same characters are dropped.
        assert_eq!(
            msg["caption_entities"],
            json!([{"type":"bot_command","offset":0,"length":4}])
        );
        assert_eq!(msg["reply_to_message"]["entities"], json!([]));
        assert_eq!(msg["quote"]["entities"], json!([]));
        assert_eq!(msg["quote"]["text"], "* quoted");
        // Ids are kept.
        assert_eq!(msg["media_group_id"], "4111222233334444");
        assert_eq!(msg["photo"][0]["file_id"], "AgAD4111");
        // Unchanged texts keep their entities.
        let same = a.reseal_payload(&req, &a.payload(&req).unwrap()).unwrap();
        let v: Value = serde_json::from_slice(&same.body).unwrap();
        assert_eq!(
            v["message"]["caption_entities"].as_array().unwrap().len(),
            3
        );
        // A request without the secret token is never resealed.
        let bad = headers(&[(SECRET_HEADER, "nope")]);
        assert!(a
            .reseal_payload(
                &WebhookRequest {
                    headers: &bad,
                    ..req
                },
                &p
            )
            .is_none());
        assert!(a.reseal_payload(&req, &Payload::Empty).is_none());
    }
}
