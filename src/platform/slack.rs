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
pub(crate) mod tests {
    use super::*;
    use http::{HeaderMap, HeaderName, HeaderValue};
    use std::time::{SystemTime, UNIX_EPOCH};

    /// The published vectors (shared by the Slack, Discord and Telegram tests).
    pub(crate) fn vectors() -> Value {
        let path = std::env::var("MOLTGATE_VECTORS").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../shared/vectors/platforms.json"
            )
            .to_string()
        });
        let text = std::fs::read_to_string(&path).expect("vectors file");
        serde_json::from_str(&text).expect("vectors JSON")
    }

    /// A header map from name/value pairs.
    pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    /// A clock reading `secs` after the epoch.
    pub(crate) fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    const SECRET: &str = "s3cr3t";
    const NOW: u64 = 1_700_000_000;

    fn adapter() -> SlackAdapter {
        let secrets = BTreeMap::from([
            ("signing_secret".to_string(), SECRET.to_string()),
            ("bot_token".to_string(), "xoxb-1".to_string()),
        ]);
        SlackAdapter::new(&secrets, Some("http://127.0.0.1:9/")).unwrap()
    }

    fn signed(body: &str, ts: u64) -> HeaderMap {
        let ts = ts.to_string();
        headers(&[
            (TIMESTAMP_HEADER, &ts),
            (SIGNATURE_HEADER, &sign(SECRET, &ts, body.as_bytes())),
        ])
    }

    fn receive_with(
        a: &SlackAdapter,
        h: &HeaderMap,
        body: &[u8],
        now: u64,
    ) -> Result<Inbound, Rejection> {
        a.receive(&WebhookRequest {
            method: &Method::POST,
            query: None,
            headers: h,
            body,
            now: at(now),
            bearer: None,
        })
    }

    fn receive(body: &str) -> Result<Inbound, Rejection> {
        receive_with(&adapter(), &signed(body, NOW), body.as_bytes(), NOW)
    }

    fn message(body: &str) -> PlatformMessage {
        match receive(body).unwrap() {
            Inbound::Message(m) => *m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    fn skip_reason(body: &str) -> &'static str {
        match receive(body).unwrap() {
            Inbound::Skip { reason, response } => {
                assert_eq!(response, WebhookResponse::empty());
                reason
            }
            other => panic!("expected a skip, got {other:?}"),
        }
    }

    fn event_body(event: Value) -> String {
        json!({"token":"x","team_id":"T1","type":"event_callback","event_id":"Ev1","event_time":1,"event":event}).to_string()
    }

    #[test]
    fn published_vector_signs_and_verifies() {
        let v = &vectors()["slack"]["signature"];
        let (secret, ts, body, sig) = (
            v["signing_secret"].as_str().unwrap(),
            v["timestamp"].as_str().unwrap(),
            v["body"].as_str().unwrap(),
            v["signature"].as_str().unwrap(),
        );
        assert_eq!(sign(secret, ts, body.as_bytes()), sig);
        verify(secret, ts, body.as_bytes(), sig).unwrap();
        // Through the adapter, at the vector's own time: verified, and the
        // slash-command form body is a message whose command is its own field.
        let secrets = BTreeMap::from([("signing_secret".to_string(), secret.to_string())]);
        let a = SlackAdapter::new(&secrets, None).unwrap();
        let h = headers(&[(TIMESTAMP_HEADER, ts), (SIGNATURE_HEADER, sig)]);
        let now: u64 = ts.parse().unwrap();
        let Inbound::Message(m) = receive_with(&a, &h, body.as_bytes(), now).unwrap() else {
            panic!("a slash command is a message")
        };
        assert_eq!(m.command.as_deref(), Some("webhook-collect"));
        assert_eq!(
            m.text, "/webhook-collect",
            "no arguments: the command stands in"
        );
        assert_eq!(
            (m.sender_id.as_str(), m.room_id.as_str(), m.tenant.as_str()),
            ("U2CERLKJA", "G8PSS9T3V", "T1DC2JH3J")
        );
        assert_eq!(m.sender_name, "roadrunner");
        assert_eq!(m.chat_type, ChatType::Group);
        assert_eq!(
            m.message_id,
            "398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
        );
        assert_eq!(
            m.reply_to["response_url"],
            "https://hooks.slack.com/commands/T1DC2JH3J/397700885554/96rGlfmibIGlgcZRskXaIFfN"
        );
        // One flipped byte of body breaks it.
        let mut forged = body.as_bytes().to_vec();
        forged[0] ^= 1;
        assert_eq!(
            receive_with(&a, &h, &forged, now).unwrap_err().kind(),
            "bad_signature"
        );
        // The same request 301 s later is stale.
        let err = receive_with(&a, &h, body.as_bytes(), now + 301).unwrap_err();
        assert_eq!(err.kind(), "stale_timestamp");
        // A wider window (for tests) accepts it.
        let wide = SlackAdapter::new(&secrets, None)
            .unwrap()
            .with_replay_window(Duration::from_secs(3600));
        assert!(receive_with(&wide, &h, body.as_bytes(), now + 301).is_ok());
    }

    #[test]
    fn forged_missing_and_malformed_headers_are_rejected() {
        let a = adapter();
        let body =
            event_body(json!({"type":"message","channel":"C1","user":"U1","ts":"1.2","text":"hi"}));
        let ts = NOW.to_string();
        let wrong = sign("other-secret", &ts, body.as_bytes());
        let cases: Vec<(HeaderMap, &str)> = vec![
            (
                headers(&[(TIMESTAMP_HEADER, &ts), (SIGNATURE_HEADER, &wrong)]),
                "bad_signature",
            ),
            (
                headers(&[(TIMESTAMP_HEADER, &ts), (SIGNATURE_HEADER, "v0=")]),
                "bad_signature",
            ),
            (
                headers(&[(TIMESTAMP_HEADER, &ts), (SIGNATURE_HEADER, "garbage")]),
                "bad_signature",
            ),
            (headers(&[(TIMESTAMP_HEADER, &ts)]), "missing_field"),
            (headers(&[(SIGNATURE_HEADER, &wrong)]), "missing_field"),
            (
                headers(&[(TIMESTAMP_HEADER, "soon"), (SIGNATURE_HEADER, &wrong)]),
                "malformed",
            ),
        ];
        for (h, kind) in cases {
            let err = receive_with(&a, &h, body.as_bytes(), NOW).unwrap_err();
            assert_eq!(err.kind(), kind, "{err}");
            // Never echo the expected signature.
            assert!(!err
                .to_string()
                .contains(&sign(SECRET, &ts, body.as_bytes())));
        }
        // Stale in both directions.
        for now in [NOW + 301, NOW - 301] {
            let err = receive_with(&a, &signed(&body, NOW), body.as_bytes(), now).unwrap_err();
            assert_eq!(err.kind(), "stale_timestamp");
        }
        // Other methods.
        let err = a
            .receive(&WebhookRequest {
                method: &Method::GET,
                query: None,
                headers: &signed(&body, NOW),
                body: body.as_bytes(),
                now: at(NOW),
                bearer: None,
            })
            .unwrap_err();
        assert_eq!(err, Rejection::Method);
    }

    #[test]
    fn malformed_bodies_are_rejected_without_panicking() {
        let junk: Vec<Vec<u8>> = vec![
            vec![],
            vec![0xff, 0xfe, 0x00],
            b"{".to_vec(),
            b"[1,2]".to_vec(),
            b"null".to_vec(),
            br#"{"type":"event_callback"}"#.to_vec(),
            br#"{"type":"event_callback","event":"x"}"#.to_vec(),
            br#"{"type":"event_callback","event":{"type":"message","text":"x"}}"#.to_vec(),
            br#"{"type":"url_verification"}"#.to_vec(),
            br#"{"type":7}"#.to_vec(),
        ];
        for body in junk {
            let ts = NOW.to_string();
            let h = headers(&[
                (TIMESTAMP_HEADER, &ts),
                (SIGNATURE_HEADER, &sign(SECRET, &ts, &body)),
            ]);
            let err = receive_with(&adapter(), &h, &body, NOW).unwrap_err();
            assert!(
                matches!(err, Rejection::Malformed(_) | Rejection::Missing(_)),
                "{err:?}"
            );
        }
        // Pseudo-random bytes never panic.
        let mut x: u32 = 7;
        for len in 0..200 {
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (x >> 16) as u8
                })
                .collect();
            let _ = parse_payload(&body);
        }
    }

    #[test]
    fn url_verification_is_answered() {
        let got = receive(r#"{"token":"x","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#).unwrap();
        match got {
            Inbound::Answer { response, event } => {
                assert_eq!(event, "url_verification");
                let v: Value = serde_json::from_slice(&response.body).unwrap();
                assert_eq!(
                    v["challenge"],
                    "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn channel_message_in_thread() {
        let m = message(&event_body(json!({
            "type":"message","channel":"C1","user":"U1","ts":"1700000000.000200",
            "thread_ts":"1700000000.000100","channel_type":"channel",
            "text":"<@UBOT> what is 1 &lt; 2 &amp;&amp; <@U2|bob> ?"
        })));
        assert_eq!(m.message_id, "Ev1");
        assert_eq!(m.tenant, "T1");
        assert_eq!(m.sender_id, "U1");
        assert_eq!(m.room_id, "C1");
        assert_eq!(m.thread_id, "1700000000.000100");
        assert_eq!(m.chat_type, "channel");
        assert_eq!(m.text, "what is 1 < 2 &&  ?");
        assert_eq!(m.mentions, vec!["UBOT", "U2"]);
        assert_eq!(m.attributes["event_type"], "message");
        assert_eq!(
            m.reply_to,
            json!({"channel":"C1","thread_ts":"1700000000.000100"})
        );
    }

    #[test]
    fn direct_message_and_app_mention() {
        let m = message(&event_body(json!({
            "type":"message","channel":"D1","user":"U1","ts":"5.1","channel_type":"im","text":"hello"
        })));
        assert_eq!(m.chat_type, "private");
        assert_eq!(m.thread_id, "");
        // Not in a thread: the reply starts one under the message.
        assert_eq!(m.reply_to["thread_ts"], "5.1");

        let m = message(&event_body(json!({
            "type":"app_mention","channel":"C9","user":"U1","ts":"6.1","text":"<@UBOT> hi"
        })));
        assert_eq!(m.attributes["event_type"], "app_mention");
        assert_eq!(m.text, "hi");
        assert_eq!(m.chat_type, "channel");

        let m = message(&event_body(json!({
            "type":"message","channel":"G1","user":"U1","ts":"6.1","channel_type":"mpim","text":"yo"
        })));
        assert_eq!(m.chat_type, "group");
    }

    #[test]
    fn bots_subtypes_and_unknown_events_are_skipped() {
        let bot =
            event_body(json!({"type":"message","channel":"C1","bot_id":"B1","ts":"1","text":"me"}));
        assert_eq!(skip_reason(&bot), "bot_message");
        let bot = event_body(
            json!({"type":"message","subtype":"bot_message","channel":"C1","ts":"1","text":"me"}),
        );
        assert_eq!(skip_reason(&bot), "bot_message");
        let edit = event_body(
            json!({"type":"message","subtype":"message_changed","channel":"C1","ts":"1"}),
        );
        assert_eq!(skip_reason(&edit), "message_subtype");
        let react = event_body(json!({"type":"reaction_added","user":"U1"}));
        assert_eq!(skip_reason(&react), "unsupported_event");
        let only_mention = event_body(
            json!({"type":"app_mention","channel":"C1","user":"U1","ts":"1","text":"<@UBOT>"}),
        );
        assert_eq!(skip_reason(&only_mention), "empty_text");
        assert_eq!(
            skip_reason(r#"{"type":"app_rate_limited","minute_rate_limited":1}"#),
            "unsupported_event"
        );
        assert_eq!(skip_reason("payload=%7B%7D"), "interactive");
    }

    #[test]
    fn reply_goes_to_chat_post_message_in_thread() {
        let a = adapter();
        let m = message(&event_body(
            json!({"type":"message","channel":"C1","user":"U1","ts":"5.1","text":"q"}),
        ));
        assert_eq!(a.inline_reply(&m, "x", at(NOW)), None);
        assert_eq!(a.ack(&m), WebhookResponse::empty());
        let calls = a.reply_calls(&m, "answer").unwrap();
        assert_eq!(calls.len(), 1);
        let c = &calls[0];
        assert_eq!(c.method, Method::POST);
        assert_eq!(c.url, "http://127.0.0.1:9/api/chat.postMessage");
        assert!(c
            .headers
            .contains(&("authorization".into(), "Bearer xoxb-1".into())));
        assert!(c
            .headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("application/json")));
        let body: Value = serde_json::from_slice(&c.body).unwrap();
        assert_eq!(
            body,
            json!({"channel":"C1","text":"answer","thread_ts":"5.1"})
        );
        assert_eq!(c.success, Some(("/ok", Value::Bool(true))));
        assert!(c.auth.is_none());

        // Default base, and no bot token configured.
        let secrets = BTreeMap::from([("signing_secret".to_string(), "s".to_string())]);
        let bare = SlackAdapter::new(&secrets, None).unwrap();
        assert_eq!(
            bare.reply_calls(&m, "a").unwrap_err(),
            Rejection::Missing("bot_token")
        );
        assert!(SlackAdapter::new(&BTreeMap::new(), None)
            .err()
            .unwrap()
            .to_string()
            .contains("signing_secret"));
    }

    /// Resealed later than it was signed: signed with the later time, at
    /// which it verifies, the mention and the message id kept.
    #[test]
    fn reseal_of_a_later_request_is_signed_fresh() {
        let a = adapter();
        let body = event_body(json!({
            "type":"message","channel":"C1","user":"U1","ts":"5.1",
            "text":"<@UBOT> card 4111 1111 1111 1111","blocks":[{"type":"rich_text"}]
        }));
        let m = message(&body);
        let later = NOW + 60;
        let h = signed(&body, NOW);
        let req = WebhookRequest {
            method: &Method::POST,
            query: None,
            headers: &h,
            body: body.as_bytes(),
            now: at(later),
            bearer: None,
        };
        let mut p = a.payload(&req).unwrap();
        p.texts_mut(a.opaque_keys(), &mut |s: &mut String| {
            *s = s.replace("4111 1111 1111 1111", "****");
        })
        .unwrap();
        let sealed = a.reseal_payload(&req, &p).unwrap();
        assert!(!String::from_utf8_lossy(&sealed.body).contains("4111"));
        let h2 = sealed_headers(&sealed);
        assert_eq!(h2[TIMESTAMP_HEADER], later.to_string().as_str());
        let got = match receive_with(&a, &h2, &sealed.body, later).unwrap() {
            Inbound::Message(m) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(got.text, "card ****");
        assert_eq!(got.mentions, vec!["UBOT"]);
        assert_eq!(got.message_id, m.message_id);
    }

    fn slash_body(text: &str, response_url: &str) -> String {
        Payload::Form(vec![
            ("token".into(), "vtok".into()),
            ("team_id".into(), "T1".into()),
            ("channel_id".into(), "C9".into()),
            ("channel_name".into(), "general".into()),
            ("user_id".into(), "U1".into()),
            ("user_name".into(), "ann".into()),
            ("command".into(), "/Deploy".into()),
            ("text".into(), text.into()),
            ("response_url".into(), response_url.into()),
            (
                "trigger_id".into(),
                "13345224609.738474920.8088930838d88f008e0".into(),
            ),
        ])
        .to_bytes()
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
        .unwrap()
    }

    #[test]
    fn slash_commands_are_messages_with_their_command() {
        let a = adapter();
        let hook = "https://hooks.slack.com/commands/T1/1/abc";
        let m = message(&slash_body("prod <@U2|bob> now", hook));
        assert_eq!(m.command.as_deref(), Some("deploy"));
        assert_eq!(m.text, "prod  now");
        assert_eq!(m.mentions, vec!["U2"]);
        assert_eq!(
            (m.sender_id.as_str(), m.room_id.as_str(), m.tenant.as_str()),
            ("U1", "C9", "T1")
        );
        assert_eq!(m.chat_type, ChatType::Channel);
        assert_eq!(m.attributes["event_type"], "slash_command");
        // The inline answer is the command's own JSON answer.
        let inline = a.inline_reply(&m, "done", at(NOW)).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&inline.body).unwrap(),
            json!({"response_type":"ephemeral","text":"done"})
        );
        assert!(a.inline_reply(&m, "", at(NOW)).is_none());
        assert_eq!(a.ack(&m), WebhookResponse::empty());
        // Deferred: the response_url, only on Slack's hooks host.
        let calls = a.reply_calls(&m, "later").unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].url, hook);
        assert!(calls[0].auth.is_none());
        assert!(!calls[0].headers.iter().any(|(k, _)| k == "authorization"));
        assert_eq!(
            serde_json::from_slice::<Value>(&calls[0].body).unwrap(),
            json!({"response_type":"ephemeral","text":"later"})
        );
        for evil in [
            "https://evil.example/commands/x",
            "https://hooks.slack.com@evil.example/x",
            "http://hooks.slack.com/commands/x",
            "",
        ] {
            let m = message(&slash_body("x", evil));
            let calls = a.reply_calls(&m, "later").unwrap();
            assert_eq!(
                calls[0].url, "http://127.0.0.1:9/api/chat.postMessage",
                "{evil}"
            );
            assert_eq!(
                serde_json::from_slice::<Value>(&calls[0].body).unwrap(),
                json!({"channel":"C9","text":"later"})
            );
        }
        // Direct messages and missing fields.
        let dm = slash_body("x", hook).replace("channel_id=C9", "channel_id=D9");
        assert_eq!(message(&dm).chat_type, ChatType::Private);
        for (from, to) in [
            ("command=%2FDeploy", "command=%2F"),
            ("user_id=U1", "user_id="),
        ] {
            let body = slash_body("x", hook).replace(from, to);
            assert_eq!(receive(&body).unwrap_err().kind(), "missing_field", "{to}");
        }
        assert_eq!(receive("a=1&b=2").unwrap_err().kind(), "malformed");
    }

    fn sealed_headers(sealed: &Resealed) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in &sealed.headers {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn mask(p: &mut Payload, opaque: &[&str]) -> Vec<String> {
        let mut seen = Vec::new();
        p.texts_mut(opaque, &mut |s: &mut String| {
            seen.push(s.clone());
            *s = s.replace("4111", "****");
        })
        .unwrap();
        seen
    }

    #[test]
    fn payload_reseal_round_trips_json_events() {
        let a = adapter();
        let body = event_body(json!({
            "type":"message","channel":"C1","user":"U1","ts":"5.1","client_msg_id":"4111-x",
            "text":"<@UBOT> card 4111",
            "blocks":[{"type":"rich_text","block_id":"b4111","elements":[{"type":"rich_text_section",
                "elements":[{"type":"text","text":"card 4111"},{"type":"link","url":"https://x/4111"}]}]}],
            "attachments":[{"fallback":"fb 4111","title":"t 4111","pretext":"p 4111","id":1}]
        }));
        let h = signed(&body, NOW);
        let req = WebhookRequest {
            method: &Method::POST,
            query: None,
            headers: &h,
            body: body.as_bytes(),
            now: at(NOW + 30),
            bearer: None,
        };
        let mut p = a.payload(&req).unwrap();
        let mut seen = mask(&mut p, a.opaque_keys());
        seen.sort();
        assert_eq!(
            seen,
            [
                "<@UBOT> card 4111",
                "card 4111",
                "fb 4111",
                "https://x/4111",
                "p 4111",
                "t 4111"
            ]
        );
        let sealed = a.reseal_payload(&req, &p).unwrap();
        let text = String::from_utf8(sealed.body.to_vec()).unwrap();
        assert_eq!(text.matches("4111").count(), 2, "only ids keep it: {text}");
        let h2 = sealed_headers(&sealed);
        let Inbound::Message(m) = receive_with(&a, &h2, &sealed.body, NOW + 30).unwrap() else {
            panic!()
        };
        assert_eq!(m.text, "card ****");
        assert_eq!(m.mentions, vec!["UBOT"]);
        // A forged original is never signed.
        let forged = headers(&[
            (TIMESTAMP_HEADER, &NOW.to_string()),
            (SIGNATURE_HEADER, "v0=00"),
        ]);
        assert!(a
            .reseal_payload(
                &WebhookRequest {
                    headers: &forged,
                    ..req
                },
                &p
            )
            .is_none());
        assert!(a.reseal_payload(&req, &Payload::Text("x".into())).is_none());
    }

    #[test]
    fn payload_reseal_round_trips_slash_command_forms() {
        let a = adapter();
        let body = slash_body("pay 4111", "https://hooks.slack.com/commands/T1/1/abc");
        let h = signed(&body, NOW);
        let req = WebhookRequest {
            method: &Method::POST,
            query: None,
            headers: &h,
            body: body.as_bytes(),
            now: at(NOW + 1),
            bearer: None,
        };
        let mut p = a.payload(&req).unwrap();
        assert!(matches!(p, Payload::Form(_)));
        let mut seen = mask(&mut p, a.opaque_keys());
        seen.sort();
        assert_eq!(seen, ["/Deploy", "ann", "general", "pay 4111"]);
        let sealed = a.reseal_payload(&req, &p).unwrap();
        let h2 = sealed_headers(&sealed);
        let Inbound::Message(m) = receive_with(&a, &h2, &sealed.body, NOW + 1).unwrap() else {
            panic!()
        };
        assert_eq!(m.text, "pay ****");
        assert_eq!(m.command.as_deref(), Some("deploy"));
        assert_eq!(
            m.reply_to["response_url"],
            "https://hooks.slack.com/commands/T1/1/abc"
        );
        // Interactivity payloads are forms too, scanned whole.
        let body = "payload=%7B%22type%22%3A%22block_actions%22%7D";
        let h = signed(body, NOW);
        let req = WebhookRequest {
            body: body.as_bytes(),
            headers: &h,
            ..req
        };
        assert_eq!(
            a.payload(&req).unwrap(),
            Payload::Form(vec![(
                "payload".into(),
                "{\"type\":\"block_actions\"}".into()
            )])
        );
    }
}
