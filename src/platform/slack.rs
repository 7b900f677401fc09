//! Slack Events API and slash-command adapter.
//!
//! Slack signs every webhook with `v0` HMAC-SHA256 over the timestamp and raw
//! body, so authenticity and replay protection come from one secret and one
//! header pair. Slack never reads a reply from an Events API response, and it
//! retries any delivery not acknowledged within 3 s; event replies therefore
//! go through `chat.postMessage`, in the message's thread. A slash command
//! (a form body) is a message whose command is the `command` field; its
//! reply is the command's JSON answer when ready in time, else a POST to its
//! `response_url` (only on Slack's own hooks host). Both are ephemeral: only
//! the person who typed the command sees the answer.

use std::collections::BTreeMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use http::Method;
use serde_json::{json, Value};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use std::time::SystemTime;

use super::adapter::{
    check_replay_window, optional_secret, required_secret, same_origin, AdapterConfigError,
    ApiCall, ChatType, Inbound, Payload, PlatformAdapter, PlatformMessage, Rejection, Resealed,
    WebhookRequest, WebhookResponse,
};

/// Slack's API base when a route sets none.
pub const DEFAULT_API_BASE: &str = "https://slack.com";
/// How far a request timestamp may be from the gateway's clock (Slack's documented 5 minutes).
pub const REPLAY_WINDOW: Duration = Duration::from_secs(300);
/// Header carrying the signed Unix timestamp.
pub const TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";
/// Header carrying `v0=<hex hmac>`.
pub const SIGNATURE_HEADER: &str = "x-slack-signature";
/// The only origin a slash command's `response_url` may have (besides the
/// route's own `api_base`, for tests).
pub const RESPONSE_URL_ORIGIN: &str = "https://hooks.slack.com";

/// Ids, tokens, timestamps and enum-like fields of Slack events and slash
/// commands. `text`, `blocks` text, attachments' `fallback`, `title` and
/// `pretext`, file names, link `url`s, `channel_name`, `user_name` and the
/// slash command's `command` are scanned. An interactivity `payload=` form
/// value is JSON inside a form: it is scanned whole, as one text.
pub const OPAQUE_KEYS: &[&str] = &[
    "id",
    "type",
    "subtype",
    "token",
    "ts",
    "event_ts",
    "thread_ts",
    "event_id",
    "event_context",
    "team",
    "team_id",
    "user",
    "user_id",
    "parent_user_id",
    "bot_id",
    "app_id",
    "api_app_id",
    "enterprise_id",
    "channel",
    "channel_id",
    "channel_type",
    "client_msg_id",
    "block_id",
    "action_id",
    "trigger_id",
    "response_url",
];

type HmacSha256 = Hmac<Sha256>;

/// Verifies and parses Slack Events API webhooks and describes replies.
pub struct SlackAdapter {
    signing_secret: String,
    bot_token: Option<String>,
    api_base: String,
    replay_window: Duration,
}

impl SlackAdapter {
    /// Builds the adapter from a route's secrets (`signing_secret`, optional `bot_token`).
    pub fn new(
        secrets: &BTreeMap<String, String>,
        api_base: Option<&str>,
    ) -> Result<Self, AdapterConfigError> {
        Ok(Self {
            signing_secret: required_secret(secrets, "slack", "signing_secret")?.to_string(),
            // Optional: a passthrough route never calls the API itself.
            bot_token: optional_secret(secrets, "bot_token").map(str::to_string),
            api_base: api_base
                .unwrap_or(DEFAULT_API_BASE)
                .trim_end_matches('/')
                .to_string(),
            replay_window: REPLAY_WINDOW,
        })
    }

    /// Replaces the replay window (tests use it to accept old published vectors).
    pub fn with_replay_window(mut self, window: Duration) -> Self {
        self.replay_window = window;
        self
    }
}

fn mac(signing_secret: &str, timestamp: &str, body: &[u8]) -> Option<HmacSha256> {
    // HMAC accepts keys of any length, so this never yields None in practice.
    let mut mac = HmacSha256::new_from_slice(signing_secret.as_bytes()).ok()?;
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    Some(mac)
}

/// The `X-Slack-Signature` value for `timestamp` and `body`: `v0=` + hex HMAC-SHA256.
pub fn sign(signing_secret: &str, timestamp: &str, body: &[u8]) -> String {
    mac(signing_secret, timestamp, body)
        .map(|m| format!("v0={}", hex::encode(m.finalize().into_bytes())))
        .unwrap_or_default()
}

/// Checks an `X-Slack-Signature` value in constant time.
pub fn verify(
    signing_secret: &str,
    timestamp: &str,
    body: &[u8],
    signature: &str,
) -> Result<(), Rejection> {
    let expected = sign(signing_secret, timestamp, body);
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(signature.trim().as_bytes())) {
        return Err(Rejection::BadSignature("slack v0 signature mismatch"));
    }
    Ok(())
}

/// Removes `<@U…>` / `<@U…|name>` mention markup and decodes Slack's three
/// escapes; returns the text and the mentioned user ids in order.
pub fn strip_mentions(text: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len());
    let mut mentions = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("<@") {
        let (before, tail) = rest.split_at(start);
        out.push_str(before);
        match tail.find('>') {
            Some(end) => {
                let inner = tail.get(2..end).unwrap_or("");
                let id = inner.split('|').next().unwrap_or("");
                if !id.is_empty() {
                    mentions.push(id.to_string());
                }
                rest = tail.get(end + 1..).unwrap_or("");
            }
            None => {
                out.push_str(tail);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    let text = out
        .trim()
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    (text, mentions)
}

fn skip(reason: &'static str) -> Inbound {
    Inbound::Skip {
        response: WebhookResponse::empty(),
        reason,
    }
}

fn str_field<'v>(value: &'v Value, key: &'static str) -> Result<&'v str, Rejection> {
    value
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(Rejection::Missing(key))
}

/// A form body's value for `key` (first one wins), empty when absent.
fn form_value<'p>(pairs: &'p [(String, String)], key: &str) -> &'p str {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

/// Parses a verified request body into what the message path should do with it.
pub fn parse_payload(body: &[u8]) -> Result<Inbound, Rejection> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        // Slash commands and interactivity arrive form-encoded on the same
        // signing scheme.
        Err(e) => return parse_form(body, &e),
    };
    match value.get("type").and_then(Value::as_str) {
        Some("url_verification") => {
            let challenge = str_field(&value, "challenge")?;
            Ok(Inbound::Answer {
                response: WebhookResponse::json(&json!({ "challenge": challenge })),
                event: "url_verification",
            })
        }
        Some("event_callback") => parse_event(&value),
        Some(_) => Ok(skip("unsupported_event")),
        None => Err(Rejection::Missing("type")),
    }
}

fn parse_form(body: &[u8], json_error: &serde_json::Error) -> Result<Inbound, Rejection> {
    let not_json = || Rejection::Malformed(format!("body is not JSON: {json_error}"));
    let Ok(Payload::Form(pairs)) = Payload::parse(Some("application/x-www-form-urlencoded"), body)
    else {
        return Err(not_json());
    };
    if pairs.iter().any(|(k, _)| k == "command") {
        parse_slash_command(&pairs)
    } else if pairs.iter().any(|(k, _)| k == "payload") {
        // Interactivity (buttons, modals): verified, not handled.
        Ok(skip("interactive"))
    } else {
        Err(not_json())
    }
}

/// A slash command: `command` is the platform's command field (lower-case,
/// without its slash); the text is the arguments, or `/command` when there
/// are none, so the message is never empty.
fn parse_slash_command(pairs: &[(String, String)]) -> Result<Inbound, Rejection> {
    let command = form_value(pairs, "command")
        .trim()
        .trim_start_matches('/')
        .to_lowercase();
    if command.is_empty() {
        return Err(Rejection::Missing("command"));
    }
    let nonempty = |key: &'static str| {
        Some(form_value(pairs, key))
            .filter(|v| !v.is_empty())
            .ok_or(Rejection::Missing(key))
    };
    let user = nonempty("user_id")?;
    let channel = nonempty("channel_id")?;
    let (text, mentions) = strip_mentions(form_value(pairs, "text"));
    let text = if text.is_empty() {
        format!("/{command}")
    } else {
        text
    };
    let channel_name = form_value(pairs, "channel_name");
    let chat_type = if channel_name == "directmessage" || channel.starts_with('D') {
        ChatType::Private
    } else if channel_name == "privategroup"
        || channel_name.starts_with("mpdm-")
        || channel.starts_with('G')
    {
        ChatType::Group
    } else {
        ChatType::Channel
    };
    let mut attributes = BTreeMap::new();
    attributes.insert("event_type".to_string(), "slash_command".to_string());
    Ok(Inbound::Message(Box::new(PlatformMessage {
        // Slack does not redeliver slash commands; the trigger id is unique
        // per invocation all the same.
        message_id: form_value(pairs, "trigger_id").to_string(),
        tenant: form_value(pairs, "team_id").to_string(),
        sender_id: user.to_string(),
        sender_name: form_value(pairs, "user_name").to_string(),
        room_id: channel.to_string(),
        thread_id: String::new(),
        chat_type,
        text,
        mentions,
        attributes,
        reply_to: json!({
            "channel": channel,
            "response_url": form_value(pairs, "response_url"),
            "slash_command": true,
        }),
        command: Some(command),
        principal: None,
    })))
}

fn is_slash_command(msg: &PlatformMessage) -> bool {
    msg.reply_to.get("slash_command").and_then(Value::as_bool) == Some(true)
}

/// A slash command's answer: only the person who typed it sees it.
fn slash_answer(text: &str) -> Value {
    json!({ "response_type": "ephemeral", "text": text })
}

fn parse_event(value: &Value) -> Result<Inbound, Rejection> {
    let event = value
        .get("event")
        .filter(|e| e.is_object())
        .ok_or(Rejection::Missing("event"))?;
    let event_type = event.get("type").and_then(Value::as_str).unwrap_or("");
    if event_type != "message" && event_type != "app_mention" {
        return Ok(skip("unsupported_event"));
    }
    // Anything posted by a bot (ourselves included) is never answered, or
    // the bot would talk to itself.
    let subtype = event.get("subtype").and_then(Value::as_str);
    if event.get("bot_id").is_some() || subtype == Some("bot_message") {
        return Ok(skip("bot_message"));
    }
    // Edits, deletions, joins and other subtypes are not new user messages.
    if event.get("subtype").is_some() {
        return Ok(skip("message_subtype"));
    }
    let event_id = str_field(value, "event_id")?;
    let channel = str_field(event, "channel")?;
    let user = str_field(event, "user")?;
    let ts = str_field(event, "ts")?;
    let raw_text = event.get("text").and_then(Value::as_str).unwrap_or("");
    let (text, mentions) = strip_mentions(raw_text);
    if text.is_empty() {
        return Ok(skip("empty_text"));
    }
    let thread_ts = event.get("thread_ts").and_then(Value::as_str).unwrap_or("");
    let chat_type = match event.get("channel_type").and_then(Value::as_str) {
        Some("im") => ChatType::Private,
        Some("mpim") | Some("group") => ChatType::Group,
        _ => ChatType::Channel,
    };
    let tenant = value
        .get("team_id")
        .or_else(|| event.get("team"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut attributes = BTreeMap::new();
    attributes.insert("event_type".to_string(), event_type.to_string());
    attributes.insert("ts".to_string(), ts.to_string());
    let reply_thread = if thread_ts.is_empty() { ts } else { thread_ts };
    Ok(Inbound::Message(Box::new(PlatformMessage {
        message_id: event_id.to_string(),
        tenant: tenant.to_string(),
        sender_id: user.to_string(),
        sender_name: String::new(),
        room_id: channel.to_string(),
        thread_id: thread_ts.to_string(),
        chat_type,
        text,
        mentions,
        attributes,
        reply_to: json!({ "channel": channel, "thread_ts": reply_thread }),
        command: None,
        principal: None,
    })))
}

impl SlackAdapter {
    /// Checks the signature and the replay window. Every failure, a missing
    /// or unreadable header included, is the uniform unauthenticated answer.
    fn authenticate(&self, req: &WebhookRequest<'_>) -> Result<(), Rejection> {
        self.check_signature(req).map_err(Rejection::unverified)
    }

    fn check_signature(&self, req: &WebhookRequest<'_>) -> Result<(), Rejection> {
        let timestamp = req
            .header(TIMESTAMP_HEADER)
            .ok_or(Rejection::Missing("X-Slack-Request-Timestamp"))?;
        let signature = req
            .header(SIGNATURE_HEADER)
            .ok_or(Rejection::Missing("X-Slack-Signature"))?;
        let ts: i64 = timestamp.trim().parse().map_err(|_| {
            Rejection::Malformed("X-Slack-Request-Timestamp is not a number".into())
        })?;
        check_replay_window(ts, req.now_secs(), self.replay_window)?;
        verify(&self.signing_secret, timestamp, req.body, signature)
    }

    /// `body` signed now.
    fn sign_now(&self, req: &WebhookRequest<'_>, body: Vec<u8>) -> Resealed {
        let timestamp = req.now_secs().to_string();
        let signature = sign(&self.signing_secret, &timestamp, &body);
        Resealed {
            body: body.into(),
            headers: vec![
                (TIMESTAMP_HEADER.into(), timestamp),
                (SIGNATURE_HEADER.into(), signature),
            ],
            query: None,
        }
    }

    /// The reply to a slash command: its `response_url` when that is on
    /// Slack's hooks host (or the route's `api_base`), else `chat.postMessage`.
    fn slash_reply(&self, msg: &PlatformMessage, text: &str) -> Result<Vec<ApiCall>, Rejection> {
        let url = msg
            .reply_to
            .get("response_url")
            .and_then(Value::as_str)
            .unwrap_or("");
        if same_origin(url, RESPONSE_URL_ORIGIN) || same_origin(url, &self.api_base) {
            return Ok(vec![ApiCall::post_json(
                url.to_string(),
                &slash_answer(text),
            )]);
        }
        let token = self
            .bot_token
            .as_deref()
            .ok_or(Rejection::Missing("bot_token"))?;
        let channel = str_field(&msg.reply_to, "channel")?;
        let body = json!({ "channel": channel, "text": text });
        Ok(vec![self.post_message(token, &body)])
    }

    fn post_message(&self, token: &str, body: &Value) -> ApiCall {
        let mut call = ApiCall::post_json(format!("{}/api/chat.postMessage", self.api_base), body);
        call.headers
            .push(("authorization".into(), format!("Bearer {token}")));
        call.success = Some(("/ok", Value::Bool(true)));
        call
    }
}

impl PlatformAdapter for SlackAdapter {
    fn platform(&self) -> &'static str {
        "slack"
    }

    fn receive(&self, req: &WebhookRequest<'_>) -> Result<Inbound, Rejection> {
        if req.method != Method::POST {
            return Err(Rejection::Method);
        }
        self.authenticate(req)?;
        parse_payload(req.body)
    }

    /// Only a slash command reads its answer from the response.
    fn inline_reply(
        &self,
        msg: &PlatformMessage,
        text: &str,
        _now: SystemTime,
    ) -> Option<WebhookResponse> {
        (is_slash_command(msg) && !text.is_empty())
            .then(|| WebhookResponse::json(&slash_answer(text)))
    }

    fn reply_calls(&self, msg: &PlatformMessage, text: &str) -> Result<Vec<ApiCall>, Rejection> {
        if is_slash_command(msg) {
            return self.slash_reply(msg, text);
        }
        let token = self
            .bot_token
            .as_deref()
            .ok_or(Rejection::Missing("bot_token"))?;
        let channel = str_field(&msg.reply_to, "channel")?;
        let mut body = json!({ "channel": channel, "text": text });
        if let Some(thread) = msg.reply_to.get("thread_ts").and_then(Value::as_str) {
            body["thread_ts"] = Value::from(thread);
        }
        Ok(vec![self.post_message(token, &body)])
    }

    /// JSON events, or the form of a slash command or an interaction.
    fn payload(&self, req: &WebhookRequest<'_>) -> Result<Payload, Rejection> {
        match serde_json::from_slice::<Value>(req.body) {
            Ok(v) => Ok(Payload::Json(v)),
            Err(_) => Payload::parse(Some("application/x-www-form-urlencoded"), req.body),
        }
    }

    fn opaque_keys(&self) -> &'static [&'static str] {
        OPAQUE_KEYS
    }

    /// The payload re-serialised (JSON or form) and signed with a fresh
    /// timestamp. The original must verify: nothing unverified is signed.
    fn reseal_payload(&self, req: &WebhookRequest<'_>, payload: &Payload) -> Option<Resealed> {
        if !matches!(payload, Payload::Json(_) | Payload::Form(_)) {
            return None;
        }
        self.authenticate(req).ok()?;
        Some(self.sign_now(req, payload.to_bytes().ok()?.to_vec()))
    }

    fn dedupe_ttl(&self) -> Duration {
        // Slack retries for about an hour; keep ids well past that.
        Duration::from_secs(2 * 3600)
    }
}

#[cfg(test)]
pub(crate) mod tests;
