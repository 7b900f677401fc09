//! Feishu / Lark event subscriptions (schema v1 and v2, plain or encrypted).
//!
//! Feishu authenticates a callback three ways, depending on configuration:
//! the verification token in the payload, the `X-Lark-Signature` header
//! (when an `encrypt_key` is set) and the AES envelope itself. This module
//! applies all that are configured, answers the `url_verification`
//! challenge, maps `im.message.receive_v1` (and the v1 `message` event) and
//! replies through the message API with a cached `tenant_access_token`.
//!
//! Authentication comes before decryption. With an `encrypt_key`, the
//! signature over the raw body and its timestamp window are checked before
//! a byte of the body is parsed or decrypted; only Feishu's unsigned
//! `url_verification` challenge is decrypted unauthenticated (the token
//! inside it is what authenticates it), and there every failure, a
//! ciphertext that is not base64, bad padding, a plaintext that is not
//! JSON or not a challenge, a wrong token, is the same
//! [`Rejection::is_unauthenticated`] answer. So the gateway is no padding
//! oracle: no answer tells whether a forged ciphertext decrypted. The
//! precise reason stays in [`Rejection::kind`] for the audit line.

use std::collections::BTreeMap;
use std::time::Duration;

use aes::Aes256;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use rand::Rng;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::adapter::{
    check_replay_window, optional_secret, required_secret, AdapterConfigError, ApiCall, ChatType,
    Inbound, Payload, PlatformAdapter, PlatformMessage, Rejection, Resealed, TokenPlacement,
    TokenSource, WebhookRequest, WebhookResponse,
};

/// Default API base URL.
pub const DEFAULT_API_BASE: &str = "https://open.feishu.cn";
/// Default replay window on `X-Lark-Request-Timestamp`.
pub const DEFAULT_REPLAY_WINDOW: Duration = Duration::from_secs(300);

const H_SIGNATURE: &str = "x-lark-signature";
const H_TIMESTAMP: &str = "x-lark-request-timestamp";
const H_NONCE: &str = "x-lark-request-nonce";

/// Ids, tokens, timestamps and enum-like fields of Feishu events (v1 and
/// v2, after decryption), and of the message `content` (rich-text `tag`s,
/// image and file keys). Texts, titles, mention `name`s, link `href`s and
/// everything else a person wrote are scanned.
pub const OPAQUE_KEYS: &[&str] = &[
    "tag",
    "image_key",
    "file_key",
    "media_key",
    "emoji_type",
    "id",
    "type",
    "token",
    "ts",
    "uuid",
    "schema",
    "event_id",
    "event_type",
    "create_time",
    "update_time",
    "tenant_key",
    "app_id",
    "open_id",
    "union_id",
    "user_id",
    "employee_id",
    "sender_type",
    "message_id",
    "root_id",
    "parent_id",
    "thread_id",
    "upper_message_id",
    "chat_id",
    "open_chat_id",
    "open_message_id",
    "user_open_id",
    "chat_type",
    "message_type",
    "msg_type",
];

fn aes_key(encrypt_key: &str) -> [u8; 32] {
    Sha256::digest(encrypt_key.as_bytes()).into()
}

/// Decrypts an `encrypt` field: key = SHA-256(encrypt_key), IV = first 16 bytes.
pub fn decrypt(encrypt_key: &str, encrypt: &str) -> Result<Vec<u8>, Rejection> {
    #[cfg(test)]
    tests::hostile::DECRYPTS.with(|n| n.set(n.get() + 1));
    let raw = STANDARD
        .decode(encrypt.trim())
        .map_err(|_| Rejection::Decrypt("ciphertext is not base64"))?;
    if raw.len() < 32 || raw.len() % 16 != 0 {
        return Err(Rejection::Decrypt("bad ciphertext length"));
    }
    let (iv, ct) = raw.split_at(16);
    let dec = cbc::Decryptor::<Aes256>::new_from_slices(&aes_key(encrypt_key), iv)
        .map_err(|_| Rejection::Decrypt("bad iv"))?;
    dec.decrypt_padded_vec_mut::<Pkcs7>(ct)
        .map_err(|_| Rejection::Decrypt("bad padding"))
}

/// Encrypts `plaintext` with the given IV (random in production), IV prefixed.
pub fn encrypt(encrypt_key: &str, plaintext: &[u8], iv: &[u8; 16]) -> String {
    let enc = cbc::Encryptor::<Aes256>::new(&aes_key(encrypt_key).into(), &(*iv).into());
    let mut out = iv.to_vec();
    out.extend_from_slice(&enc.encrypt_padded_vec_mut::<Pkcs7>(plaintext));
    STANDARD.encode(out)
}

/// `X-Lark-Signature`: hex SHA-256 of timestamp + nonce + encrypt_key + body.
pub fn signature(timestamp: &str, nonce: &str, encrypt_key: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(timestamp.as_bytes());
    h.update(nonce.as_bytes());
    h.update(encrypt_key.as_bytes());
    h.update(body);
    hex::encode(h.finalize())
}

/// Checks `X-Lark-Signature` in constant time (hex case ignored).
pub fn verify_signature(
    timestamp: &str,
    nonce: &str,
    encrypt_key: &str,
    body: &[u8],
    given: &str,
) -> bool {
    let expected = signature(timestamp, nonce, encrypt_key, body);
    bool::from(
        expected
            .as_bytes()
            .ct_eq(given.trim().to_ascii_lowercase().as_bytes()),
    )
}

/// Removes mention placeholders (`@_user_1`, `@_all`) and the space after each.
pub fn strip_mentions(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((before, after_at)) = rest.split_once("@_") {
        out.push_str(before);
        let remainder = if let Some(after) = after_at.strip_prefix("user_") {
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            (digits > 0).then(|| after.get(digits..)).flatten()
        } else {
            after_at
                .strip_prefix("all")
                .filter(|r| !r.starts_with(|c: char| c.is_alphanumeric() || c == '_'))
        };
        match remainder {
            Some(r) => rest = r.strip_prefix(' ').unwrap_or(r),
            None => {
                out.push_str("@_");
                rest = after_at;
            }
        }
    }
    out.push_str(rest);
    out.trim().to_string()
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

/// Feishu ids go into URL paths; anything but id characters is refused.
fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A verified, decrypted payload.
struct Opened {
    event: Value,
    encrypted: bool,
}

/// A Feishu / Lark app route.
#[derive(Debug, Clone)]
pub struct FeishuAdapter {
    verification_token: String,
    encrypt_key: Option<String>,
    app_id: Option<String>,
    app_secret: Option<String>,
    api_base: String,
    replay_window: Duration,
}

impl FeishuAdapter {
    /// Builds the adapter: `verification_token` required; `encrypt_key` for
    /// encrypted, signed delivery; `app_id`/`app_secret` for replies.
    pub fn new(
        secrets: &BTreeMap<String, String>,
        api_base: Option<&str>,
    ) -> Result<Self, AdapterConfigError> {
        Ok(Self {
            verification_token: required_secret(secrets, "feishu", "verification_token")?
                .to_string(),
            encrypt_key: optional_secret(secrets, "encrypt_key").map(str::to_string),
            app_id: optional_secret(secrets, "app_id").map(str::to_string),
            app_secret: optional_secret(secrets, "app_secret").map(str::to_string),
            api_base: api_base
                .unwrap_or(DEFAULT_API_BASE)
                .trim_end_matches('/')
                .to_string(),
            replay_window: DEFAULT_REPLAY_WINDOW,
        })
    }

    /// Replaces the replay window.
    pub fn with_replay_window(mut self, window: Duration) -> Self {
        self.replay_window = window;
        self
    }

    /// Authenticates, then decrypts. With an `encrypt_key`: a signed
    /// request is verified (signature, then window) before anything else,
    /// an unsigned one can only be the encrypted `url_verification`
    /// challenge. Without one: the verification token in the body.
    fn open(&self, req: &WebhookRequest<'_>) -> Result<Opened, Rejection> {
        match (self.encrypt_key.as_deref(), req.header(H_SIGNATURE)) {
            (Some(key), Some(sig)) => {
                self.verify_signed(req, key, sig)
                    .map_err(Rejection::unverified)?;
                self.open_signed(req, key)
            }
            (Some(key), None) => self
                .open_unsigned_challenge(req, key)
                .map_err(Rejection::unverified),
            (None, _) => self.open_with_token(req),
        }
    }

    /// `X-Lark-Signature` over timestamp, nonce, key and the raw body, then
    /// the timestamp's window. Nothing of the body is read before.
    fn verify_signed(
        &self,
        req: &WebhookRequest<'_>,
        key: &str,
        sig: &str,
    ) -> Result<(), Rejection> {
        let ts = req
            .header(H_TIMESTAMP)
            .ok_or(Rejection::Missing("X-Lark-Request-Timestamp"))?;
        let nonce = req
            .header(H_NONCE)
            .ok_or(Rejection::Missing("X-Lark-Request-Nonce"))?;
        if !verify_signature(ts, nonce, key, req.body, sig) {
            return Err(Rejection::BadSignature("X-Lark-Signature"));
        }
        let ts: i64 = ts
            .trim()
            .parse()
            .map_err(|_| Rejection::Malformed("timestamp is not a number".into()))?;
        check_replay_window(ts, req.now_secs(), self.replay_window)
    }

    /// A signed body, after [`FeishuAdapter::verify_signed`]: parsed,
    /// decrypted when it is an envelope, and its token checked.
    fn open_signed(&self, req: &WebhookRequest<'_>, key: &str) -> Result<Opened, Rejection> {
        let body: Value = serde_json::from_slice(req.body)
            .map_err(|e| Rejection::Malformed(format!("body is not JSON: {e}")))?;
        let (event, encrypted) = match body.get("encrypt") {
            Some(enc) => {
                let enc = enc
                    .as_str()
                    .ok_or(Rejection::Malformed("encrypt is not a string".into()))?;
                (decrypt_event(key, enc)?, true)
            }
            None => (body, false),
        };
        if !event.is_object() {
            return Err(Rejection::Malformed("event is not a JSON object".into()));
        }
        self.check_token(&event).map_err(Rejection::unverified)?;
        Ok(Opened { event, encrypted })
    }

    /// An unsigned request on a route with an `encrypt_key`: Feishu sends
    /// only its `url_verification` challenge so, encrypted, with the token
    /// inside. Every error here is a failure to authenticate (the caller
    /// makes them all answer alike).
    fn open_unsigned_challenge(
        &self,
        req: &WebhookRequest<'_>,
        key: &str,
    ) -> Result<Opened, Rejection> {
        let body: Value = serde_json::from_slice(req.body)
            .map_err(|e| Rejection::Malformed(format!("body is not JSON: {e}")))?;
        let enc = body
            .get("encrypt")
            .and_then(Value::as_str)
            .ok_or(Rejection::Missing("X-Lark-Signature"))?;
        let event = decrypt_event(key, enc)?;
        if event.get("type").and_then(Value::as_str) != Some("url_verification") {
            return Err(Rejection::Missing("X-Lark-Signature"));
        }
        self.check_token(&event)?;
        Ok(Opened {
            event,
            encrypted: true,
        })
    }

    /// A route without an `encrypt_key`: the verification token in the
    /// plain body authenticates it; an encrypted body cannot be opened.
    fn open_with_token(&self, req: &WebhookRequest<'_>) -> Result<Opened, Rejection> {
        let event: Value = serde_json::from_slice(req.body)
            .map_err(|e| Rejection::Malformed(format!("body is not JSON: {e}")).unverified())?;
        if let Some(enc) = event.get("encrypt") {
            return Err(match enc.is_string() {
                true => Rejection::Decrypt("no encrypt_key configured"),
                false => Rejection::Malformed("encrypt is not a string".into()).unverified(),
            });
        }
        if !event.is_object() {
            return Err(Rejection::Malformed("event is not a JSON object".into()).unverified());
        }
        self.check_token(&event).map_err(Rejection::unverified)?;
        Ok(Opened {
            event,
            encrypted: false,
        })
    }

    /// The verification token (v2 `header.token`, v1 `token`), in constant time.
    fn check_token(&self, event: &Value) -> Result<(), Rejection> {
        let token = event
            .pointer("/header/token")
            .or_else(|| event.get("token"))
            .and_then(Value::as_str)
            .ok_or(Rejection::Missing("token"))?;
        if !bool::from(token.as_bytes().ct_eq(self.verification_token.as_bytes())) {
            return Err(Rejection::BadSignature("verification token"));
        }
        Ok(())
    }

    /// Maps a verified, decrypted event (v1 or v2) to an [`Inbound`].
    pub fn parse_event(&self, event: &Value) -> Result<Inbound, Rejection> {
        if event.get("type").and_then(Value::as_str) == Some("url_verification") {
            let challenge = event
                .get("challenge")
                .and_then(Value::as_str)
                .ok_or(Rejection::Missing("challenge"))?;
            return Ok(Inbound::Answer {
                response: WebhookResponse::json(&json!({ "challenge": challenge })),
                event: "url_verification",
            });
        }
        if event.get("schema").and_then(Value::as_str) == Some("2.0") {
            parse_v2(event)
        } else if event.get("type").and_then(Value::as_str) == Some("event_callback") {
            parse_v1(event)
        } else {
            Ok(skip("unsupported_event"))
        }
    }
}

/// Decrypts an `encrypt` field into its JSON event.
fn decrypt_event(key: &str, enc: &str) -> Result<Value, Rejection> {
    let plain = decrypt(key, enc)?;
    serde_json::from_slice(&plain)
        .map_err(|e| Rejection::Malformed(format!("decrypted event is not JSON: {e}")))
}

fn skip(reason: &'static str) -> Inbound {
    Inbound::Skip {
        response: WebhookResponse::empty(),
        reason,
    }
}

fn chat_type(t: &str) -> ChatType {
    match t {
        "p2p" | "private" => ChatType::Private,
        _ => ChatType::Group,
    }
}

fn parse_v2(event: &Value) -> Result<Inbound, Rejection> {
    if str_at(event, "/header/event_type") != "im.message.receive_v1" {
        return Ok(skip("unsupported_event"));
    }
    if str_at(event, "/event/sender/sender_type") != "user" {
        return Ok(skip("bot_message"));
    }
    let m = event
        .pointer("/event/message")
        .ok_or(Rejection::Missing("event.message"))?;
    if str_at(m, "/message_type") != "text" {
        return Ok(skip("unsupported_msg_type"));
    }
    let message_id = Some(str_at(m, "/message_id"))
        .filter(|s| !s.is_empty())
        .ok_or(Rejection::Missing("message_id"))?;
    let content: Value = serde_json::from_str(str_at(m, "/content"))
        .map_err(|e| Rejection::Malformed(format!("message content is not JSON: {e}")))?;
    let text = content
        .get("text")
        .and_then(Value::as_str)
        .ok_or(Rejection::Missing("content.text"))?;
    let sender = event
        .pointer("/event/sender/sender_id")
        .cloned()
        .unwrap_or(Value::Null);
    let open_id = str_at(&sender, "/open_id");
    let user_id = str_at(&sender, "/user_id");
    let sender_id = if open_id.is_empty() { user_id } else { open_id };
    if sender_id.is_empty() {
        return Err(Rejection::Missing("sender_id"));
    }
    let thread = match str_at(m, "/thread_id") {
        "" => str_at(m, "/root_id"),
        t => t,
    };
    let mentions = m
        .get("mentions")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .filter_map(|x| x.pointer("/id/open_id").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mut attributes = BTreeMap::new();
    for (k, v) in [
        ("event_id", str_at(event, "/header/event_id")),
        ("user_id", user_id),
        ("union_id", str_at(&sender, "/union_id")),
        ("root_id", str_at(m, "/root_id")),
        ("parent_id", str_at(m, "/parent_id")),
    ] {
        if !v.is_empty() {
            attributes.insert(k.to_string(), v.to_string());
        }
    }
    Ok(Inbound::Message(Box::new(PlatformMessage {
        message_id: message_id.to_string(),
        tenant: str_at(event, "/header/tenant_key").to_string(),
        sender_id: sender_id.to_string(),
        sender_name: String::new(),
        room_id: str_at(m, "/chat_id").to_string(),
        thread_id: thread.to_string(),
        chat_type: chat_type(str_at(m, "/chat_type")),
        text: strip_mentions(text),
        mentions,
        attributes,
        reply_to: json!({ "message_id": message_id, "in_thread": !thread.is_empty() }),
        command: None,
        principal: None,
    })))
}

fn parse_v1(event: &Value) -> Result<Inbound, Rejection> {
    let e = event.get("event").ok_or(Rejection::Missing("event"))?;
    if str_at(e, "/type") != "message" {
        return Ok(skip("unsupported_event"));
    }
    if str_at(e, "/msg_type") != "text" {
        return Ok(skip("unsupported_msg_type"));
    }
    let message_id = Some(str_at(e, "/open_message_id"))
        .filter(|s| !s.is_empty())
        .ok_or(Rejection::Missing("open_message_id"))?;
    let sender = Some(str_at(e, "/open_id"))
        .filter(|s| !s.is_empty())
        .ok_or(Rejection::Missing("open_id"))?;
    let text = match e.get("text_without_at_bot").and_then(Value::as_str) {
        Some(t) => t,
        None => e
            .get("text")
            .and_then(Value::as_str)
            .ok_or(Rejection::Missing("text"))?,
    };
    let thread = str_at(e, "/root_id");
    let mut attributes = BTreeMap::new();
    for (k, v) in [
        ("event_id", str_at(event, "/uuid")),
        ("user_id", str_at(e, "/user_open_id")),
    ] {
        if !v.is_empty() {
            attributes.insert(k.to_string(), v.to_string());
        }
    }
    Ok(Inbound::Message(Box::new(PlatformMessage {
        message_id: message_id.to_string(),
        tenant: str_at(e, "/tenant_key").to_string(),
        sender_id: sender.to_string(),
        sender_name: String::new(),
        room_id: str_at(e, "/open_chat_id").to_string(),
        thread_id: thread.to_string(),
        chat_type: chat_type(str_at(e, "/chat_type")),
        text: strip_mentions(text),
        mentions: Vec::new(),
        attributes,
        reply_to: json!({ "message_id": message_id, "in_thread": !thread.is_empty() }),
        command: None,
        principal: None,
    })))
}

impl PlatformAdapter for FeishuAdapter {
    fn platform(&self) -> &'static str {
        "feishu"
    }

    fn receive(&self, req: &WebhookRequest<'_>) -> Result<Inbound, Rejection> {
        if req.method != http::Method::POST {
            return Err(Rejection::Method);
        }
        let opened = self.open(req)?;
        self.parse_event(&opened.event)
    }

    fn reply_calls(&self, msg: &PlatformMessage, text: &str) -> Result<Vec<ApiCall>, Rejection> {
        let message_id = msg
            .reply_to
            .get("message_id")
            .and_then(Value::as_str)
            .ok_or(Rejection::Missing("reply_to.message_id"))?;
        if !is_id(message_id) {
            return Err(Rejection::Malformed(
                "message_id has unexpected characters".into(),
            ));
        }
        let in_thread = msg
            .reply_to
            .get("in_thread")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let app_id = self.app_id.as_deref().ok_or(Rejection::Missing("app_id"))?;
        let app_secret = self
            .app_secret
            .as_deref()
            .ok_or(Rejection::Missing("app_secret"))?;
        let mut fetch = ApiCall::post_json(
            format!(
                "{}/open-apis/auth/v3/tenant_access_token/internal",
                self.api_base
            ),
            &json!({ "app_id": app_id, "app_secret": app_secret }),
        );
        fetch.success = Some(("/code", json!(0)));
        let body = json!({
            "msg_type": "text",
            "content": json!({ "text": text }).to_string(),
            "reply_in_thread": in_thread,
        });
        let mut call = ApiCall::post_json(
            format!(
                "{}/open-apis/im/v1/messages/{message_id}/reply",
                self.api_base
            ),
            &body,
        );
        call.auth = Some(Box::new(TokenSource {
            cache_key: format!("feishu:{app_id}:{}", self.api_base),
            fetch,
            token_pointer: "/tenant_access_token",
            expires_in_pointer: "/expire",
            placement: TokenPlacement::BearerHeader,
        }));
        call.success = Some(("/code", json!(0)));
        Ok(vec![call])
    }

    /// The decrypted event, with the message's `content` (JSON inside a
    /// string) opened into JSON, so that DLP reads and masks its values
    /// and can never break its syntax.
    fn payload(&self, req: &WebhookRequest<'_>) -> Result<Payload, Rejection> {
        let mut event = self.open(req)?.event;
        if let Some(content) = event.pointer_mut("/event/message/content") {
            let inner = content
                .as_str()
                .and_then(|s| serde_json::from_str::<Value>(s).ok());
            if let Some(inner) = inner.filter(|v| v.is_object() || v.is_array()) {
                *content = inner;
            }
        }
        Ok(Payload::Json(event))
    }

    fn opaque_keys(&self) -> &'static [&'static str] {
        OPAQUE_KEYS
    }

    /// Re-encrypts the event when the original was encrypted, and signs it
    /// with a fresh timestamp and nonce when an `encrypt_key` is set.
    fn reseal_payload(&self, req: &WebhookRequest<'_>, payload: &Payload) -> Option<Resealed> {
        let Payload::Json(event) = payload else {
            return None;
        };
        let Opened { encrypted, .. } = self.open(req).ok()?;
        let mut event = event.clone();
        if let Some(content) = event.pointer_mut("/event/message/content") {
            if content.is_object() || content.is_array() {
                *content = Value::String(content.to_string());
            }
        }
        self.seal(req, &event, encrypted)
    }
}

impl FeishuAdapter {
    /// The body for `event` (encrypted if the original was) and, with an
    /// `encrypt_key`, fresh signature headers.
    fn seal(&self, req: &WebhookRequest<'_>, event: &Value, encrypted: bool) -> Option<Resealed> {
        let body = if encrypted {
            let key = self.encrypt_key.as_deref()?;
            let iv: [u8; 16] = rand::thread_rng().gen();
            json!({ "encrypt": encrypt(key, event.to_string().as_bytes(), &iv) }).to_string()
        } else {
            event.to_string()
        };
        let mut headers = Vec::new();
        if let Some(key) = self.encrypt_key.as_deref() {
            let ts = req.now_secs().to_string();
            let nonce = hex::encode(rand::thread_rng().gen::<[u8; 8]>());
            let sig = signature(&ts, &nonce, key, body.as_bytes());
            headers.push(("X-Lark-Request-Timestamp".to_string(), ts));
            headers.push(("X-Lark-Request-Nonce".to_string(), nonce));
            headers.push(("X-Lark-Signature".to_string(), sig));
        }
        Some(Resealed {
            body: Bytes::from(body),
            headers,
            query: None,
        })
    }
}

#[cfg(test)]
mod tests;
