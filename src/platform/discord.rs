//! Discord interactions adapter.
//!
//! Discord delivers slash commands as signed interactions: Ed25519 over the
//! timestamp header plus the raw body, with Discord's public key. Discord
//! probes the endpoint with forged signatures and expects 401, and it waits
//! 3 s for the response, which can carry the reply (type 4) or defer it
//! (type 5) to a follow-up through the interaction webhook. We only hold the
//! public key, so a modified body can never be re-signed.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use ed25519_dalek::{Signature, VerifyingKey};
use http::Method;
use serde_json::{json, Value};

use super::adapter::{
    check_replay_window, optional_secret, required_secret, AdapterConfigError, ApiCall, ChatType,
    Inbound, Payload, PlatformAdapter, PlatformMessage, Rejection, Resealed, WebhookRequest,
    WebhookResponse,
};
use super::telegram::split_utf16;

/// Discord's API base when a route sets none.
pub const DEFAULT_API_BASE: &str = "https://discord.com";
/// How far `X-Signature-Timestamp` may be from the gateway's clock.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(300);
/// Header carrying the hex Ed25519 signature.
pub const SIGNATURE_HEADER: &str = "x-signature-ed25519";
/// Header carrying the signed timestamp.
pub const TIMESTAMP_HEADER: &str = "x-signature-timestamp";
/// Discord's limit on a message's `content`. Counted in UTF-16 units, which
/// never undercounts characters.
pub const MAX_CONTENT: usize = 2000;

/// Snowflakes, tokens, permission bitfields (digit strings), hashes,
/// locales, timestamps and enum-like fields of interactions. Option
/// `value`s, names, message `content`, embeds, attachment file names and
/// URLs, channel names and topics are scanned. (A USER or CHANNEL option's
/// `value` is a snowflake, but nothing in the JSON says so by key.)
pub const OPAQUE_KEYS: &[&str] = &[
    "id",
    "type",
    "token",
    "application_id",
    "guild_id",
    "channel_id",
    "message_id",
    "user_id",
    "target_id",
    "webhook_id",
    "owner_id",
    "parent_id",
    "last_message_id",
    "identity_guild_id",
    "sku_id",
    "entitlement_sku_ids",
    "authorizing_integration_owners",
    "integration_types",
    "roles",
    "mention_roles",
    "version",
    "app_permissions",
    "permissions",
    "default_member_permissions",
    "flags",
    "public_flags",
    "context",
    "locale",
    "guild_locale",
    "avatar",
    "banner",
    "badge",
    "discriminator",
    "avatar_decoration_data",
    "nonce",
    "timestamp",
    "edited_timestamp",
    "joined_at",
    "premium_since",
    "communication_disabled_until",
    "custom_id",
    "component_type",
    "content_type",
];

/// Verifies and parses Discord interactions and describes replies.
pub struct DiscordAdapter {
    public_key: VerifyingKey,
    application_id: Option<String>,
    api_base: String,
    replay_window: Duration,
}

impl DiscordAdapter {
    /// Builds the adapter from a route's secrets (`public_key` hex, optional `application_id`).
    pub fn new(
        secrets: &BTreeMap<String, String>,
        api_base: Option<&str>,
    ) -> Result<Self, AdapterConfigError> {
        let public_key = parse_public_key(required_secret(secrets, "discord", "public_key")?)?;
        let application_id = optional_secret(secrets, "application_id").map(str::to_string);
        if let Some(id) = &application_id {
            if !is_snowflake(id) {
                return Err(AdapterConfigError::BadSecret {
                    platform: "discord",
                    name: "application_id",
                    reason: "must be the numeric application id from the Developer Portal".into(),
                });
            }
        }
        Ok(Self {
            public_key,
            application_id,
            api_base: api_base
                .unwrap_or(DEFAULT_API_BASE)
                .trim_end_matches('/')
                .to_string(),
            replay_window: REPLAY_WINDOW,
        })
    }

    /// Replaces the replay window (tests use it to accept old vectors).
    pub fn with_replay_window(mut self, window: Duration) -> Self {
        self.replay_window = window;
        self
    }
}

/// Parses the application's public key from its 64-character hex form.
pub fn parse_public_key(hex_key: &str) -> Result<VerifyingKey, AdapterConfigError> {
    let bad = |reason: &str| AdapterConfigError::BadSecret {
        platform: "discord",
        name: "public_key",
        reason: format!("{reason}: copy the Public Key from the Developer Portal"),
    };
    let bytes: [u8; 32] = hex::decode(hex_key.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("must be 64 hex characters (32 bytes)"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad("is not a valid Ed25519 key"))
}

/// Verifies `signature_hex` over `timestamp + body`. Every failure, including
/// a garbled signature, is `BadSignature` (401), as Discord requires.
pub fn verify(
    key: &VerifyingKey,
    timestamp: &str,
    body: &[u8],
    signature_hex: &str,
) -> Result<(), Rejection> {
    let bytes: [u8; 64] = hex::decode(signature_hex.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(Rejection::BadSignature(
            "discord signature is not 64 bytes of hex",
        ))?;
    let signature = Signature::from_bytes(&bytes);
    let mut message = Vec::with_capacity(timestamp.len() + body.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.extend_from_slice(body);
    // Strict: refuses small-order keys and non-canonical signatures, like libsodium.
    key.verify_strict(&message, &signature)
        .map_err(|_| Rejection::BadSignature("discord ed25519 signature mismatch"))
}

fn is_snowflake(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Interaction tokens go into a URL path: allow only URL-safe characters.
fn is_safe_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 512
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn skip(response: WebhookResponse, reason: &'static str) -> Inbound {
    Inbound::Skip { response, reason }
}

fn str_at<'v>(value: &'v Value, pointer: &str) -> Option<&'v str> {
    value.pointer(pointer).and_then(Value::as_str)
}

/// Renders an option value as text: strings as-is, numbers and booleans in JSON form.
fn option_value_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(value.to_string()),
        _ => None,
    }
}

/// Walks (sub)command options: subcommand names extend `command`, values
/// become words of the text, user and mentionable values are mentions.
fn collect_options(
    options: &Value,
    command: &mut String,
    words: &mut Vec<String>,
    mentions: &mut Vec<String>,
) {
    for option in options.as_array().into_iter().flatten() {
        let kind = option.get("type").and_then(Value::as_u64).unwrap_or(0);
        // 1 = SUB_COMMAND, 2 = SUB_COMMAND_GROUP.
        if kind == 1 || kind == 2 {
            if let Some(name) = option.get("name").and_then(Value::as_str) {
                command.push(' ');
                command.push_str(name);
            }
            if let Some(nested) = option.get("options") {
                collect_options(nested, command, words, mentions);
            }
            continue;
        }
        let Some(text) = option.get("value").and_then(option_value_text) else {
            continue;
        };
        // 6 = USER, 9 = MENTIONABLE.
        if kind == 6 || kind == 9 {
            mentions.push(text.clone());
        }
        words.push(text);
    }
}

/// Parses a verified interaction body into what the message path should do
/// with it.
pub fn parse_interaction(body: &[u8]) -> Result<Inbound, Rejection> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Rejection::Malformed(format!("body is not JSON: {e}")))?;
    let kind = value
        .get("type")
        .and_then(Value::as_u64)
        .ok_or(Rejection::Missing("type"))?;
    match kind {
        1 => Ok(Inbound::Answer {
            response: WebhookResponse::json(&json!({ "type": 1 })),
            event: "ping",
        }),
        2 => parse_command(&value),
        // Components: acknowledge without changing the message, so Discord
        // shows no error.
        3 => Ok(skip(
            WebhookResponse::json(&json!({ "type": 6 })),
            "component_interaction",
        )),
        _ => Ok(skip(WebhookResponse::empty(), "unsupported_interaction")),
    }
}

/// The sender: in a guild under `member.user`, in a DM under `user`.
/// `None` for a bot.
fn sender(value: &Value) -> Result<Option<(&str, &str)>, Rejection> {
    let user = value
        .pointer("/member/user")
        .or_else(|| value.get("user"))
        .ok_or(Rejection::Missing("user"))?;
    if user.get("bot").and_then(Value::as_bool) == Some(true) {
        return Ok(None);
    }
    let id = str_at(user, "/id").ok_or(Rejection::Missing("user.id"))?;
    let name = str_at(user, "/global_name")
        .or_else(|| str_at(user, "/username"))
        .unwrap_or("");
    Ok(Some((id, name)))
}

fn chat_type(value: &Value, guild_id: &str) -> ChatType {
    match (
        guild_id.is_empty(),
        value.get("context").and_then(Value::as_u64),
    ) {
        (false, _) => ChatType::Group,
        // Context 2 is a group DM.
        (true, Some(2)) => ChatType::Group,
        (true, _) => ChatType::Private,
    }
}

/// The command as RBAC sees it: the top-level name, lower-case, spaces (in
/// context-menu names) as `_`. A subcommand is granted with its command:
/// `/todo add` and `/todo remove` are both `todo`; the full path is in the
/// message's `command` attribute.
fn command_name(name: &str) -> String {
    name.trim()
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join("_")
}

/// The text and mentions of a command's data: option values (a message
/// context-menu command acts on the target message's text), or
/// `/<path>` when there are none. Also returns the full command path.
fn command_text(data: &Value, name: &str) -> (String, Vec<String>, String) {
    let mut path = name.to_string();
    let mut words = Vec::new();
    let mut mentions = Vec::new();
    collect_options(
        data.get("options").unwrap_or(&Value::Null),
        &mut path,
        &mut words,
        &mut mentions,
    );
    if data.get("type").and_then(Value::as_u64) == Some(3) {
        let target = str_at(data, "/target_id").unwrap_or("");
        if let Some(content) = data
            .pointer("/resolved/messages")
            .and_then(|m| m.get(target))
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str)
        {
            words.push(content.to_string());
        }
    }
    let text = if words.is_empty() {
        format!("/{path}")
    } else {
        words.join(" ")
    };
    (text, mentions, path)
}

fn parse_command(value: &Value) -> Result<Inbound, Rejection> {
    let id = str_at(value, "/id")
        .filter(|s| is_snowflake(s))
        .ok_or(Rejection::Missing("id"))?;
    let token = str_at(value, "/token")
        .filter(|s| is_safe_token(s))
        .ok_or(Rejection::Missing("token"))?;
    let application_id = str_at(value, "/application_id")
        .filter(|s| is_snowflake(s))
        .ok_or(Rejection::Missing("application_id"))?;
    let data = value
        .get("data")
        .filter(|d| d.is_object())
        .ok_or(Rejection::Missing("data"))?;
    let name = str_at(data, "/name")
        .filter(|s| !s.is_empty())
        .ok_or(Rejection::Missing("data.name"))?;
    let Some((sender_id, sender_name)) = sender(value)? else {
        return Ok(skip(WebhookResponse::empty(), "bot_message"));
    };
    let channel_id = str_at(value, "/channel_id")
        .or_else(|| str_at(value, "/channel/id"))
        .unwrap_or("");
    // Channel types 10, 11, 12 are threads.
    let in_thread = matches!(
        value.pointer("/channel/type").and_then(Value::as_u64),
        Some(10..=12)
    );
    let guild_id = str_at(value, "/guild_id").unwrap_or("");
    let (text, mentions, path) = command_text(data, name);
    let mut attributes = BTreeMap::new();
    attributes.insert("command".to_string(), path);
    Ok(Inbound::Message(Box::new(PlatformMessage {
        message_id: id.to_string(),
        tenant: guild_id.to_string(),
        sender_id: sender_id.to_string(),
        sender_name: sender_name.to_string(),
        room_id: channel_id.to_string(),
        thread_id: if in_thread {
            channel_id.to_string()
        } else {
            String::new()
        },
        chat_type: chat_type(value, guild_id),
        text,
        mentions,
        attributes,
        reply_to: json!({ "application_id": application_id, "token": token }),
        command: Some(command_name(name)),
        principal: None,
    })))
}

/// The message payload for `content`; AI output never pings anyone.
fn content_payload(content: &str) -> Value {
    json!({ "content": content, "allowed_mentions": { "parse": [] } })
}

impl PlatformAdapter for DiscordAdapter {
    fn platform(&self) -> &'static str {
        "discord"
    }

    fn receive(&self, req: &WebhookRequest<'_>) -> Result<Inbound, Rejection> {
        if req.method != Method::POST {
            return Err(Rejection::Method);
        }
        // Absent headers are failed signatures too: Discord expects 401.
        let signature = req
            .header(SIGNATURE_HEADER)
            .ok_or(Rejection::BadSignature("missing X-Signature-Ed25519"))?;
        let timestamp = req
            .header(TIMESTAMP_HEADER)
            .ok_or(Rejection::BadSignature("missing X-Signature-Timestamp"))?;
        verify(&self.public_key, timestamp, req.body, signature)?;
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| Rejection::Malformed("X-Signature-Timestamp is not a number".into()))?;
        check_replay_window(ts, req.now_secs(), self.replay_window)?;
        parse_interaction(req.body)
    }

    fn inline_reply(
        &self,
        _msg: &PlatformMessage,
        text: &str,
        _now: SystemTime,
    ) -> Option<WebhookResponse> {
        // Too long or empty for one message: defer and use follow-ups.
        if text.is_empty() || text.encode_utf16().count() > MAX_CONTENT {
            return None;
        }
        Some(WebhookResponse::json(
            &json!({ "type": 4, "data": content_payload(text) }),
        ))
    }

    fn ack(&self, _msg: &PlatformMessage) -> WebhookResponse {
        // DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE: "thinking…" until the follow-up.
        WebhookResponse::json(&json!({ "type": 5 }))
    }

    fn reply_calls(&self, msg: &PlatformMessage, text: &str) -> Result<Vec<ApiCall>, Rejection> {
        let token = str_at(&msg.reply_to, "/token")
            .filter(|s| is_safe_token(s))
            .ok_or(Rejection::Missing("token"))?;
        let application_id = self
            .application_id
            .as_deref()
            .or_else(|| str_at(&msg.reply_to, "/application_id"))
            .filter(|s| is_snowflake(s))
            .ok_or(Rejection::Missing("application_id"))?;
        let url = format!(
            "{}/api/v10/webhooks/{application_id}/{token}",
            self.api_base
        );
        Ok(split_utf16(text, MAX_CONTENT)
            .into_iter()
            .map(|part| ApiCall::post_json(url.clone(), &content_payload(part)))
            .collect())
    }

    fn payload(&self, req: &WebhookRequest<'_>) -> Result<Payload, Rejection> {
        Payload::json(req.body)
    }

    fn opaque_keys(&self) -> &'static [&'static str] {
        OPAQUE_KEYS
    }

    /// Ed25519: only Discord holds the private key, so a changed body can
    /// never be signed again. The message path refuses instead.
    fn reseal_payload(&self, _req: &WebhookRequest<'_>, _payload: &Payload) -> Option<Resealed> {
        None
    }
}

#[cfg(test)]
mod tests;
