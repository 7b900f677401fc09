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
    tests::DECRYPTS.with(|n| n.set(n.get() + 1));
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
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderName, HeaderValue, Method};
    use std::time::SystemTime;
    use std::time::UNIX_EPOCH;

    fn vectors() -> Value {
        let path = std::env::var("MOLTGATE_VECTORS").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../shared/vectors/platforms.json"
            )
            .to_string()
        });
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
        v.pointer(ptr)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("vector {ptr}"))
    }

    const TOKEN: &str = "vtoken";
    const KEY: &str = "test key";

    fn adapter(encrypt_key: Option<&str>) -> FeishuAdapter {
        let mut secrets = BTreeMap::new();
        secrets.insert("verification_token".to_string(), TOKEN.to_string());
        secrets.insert("app_id".to_string(), "cli_123".to_string());
        secrets.insert("app_secret".to_string(), "shh".to_string());
        if let Some(k) = encrypt_key {
            secrets.insert("encrypt_key".to_string(), k.to_string());
        }
        FeishuAdapter::new(&secrets, Some("http://127.0.0.1:9")).unwrap()
    }

    fn at(secs: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    }

    fn signed_headers(ts: &str, nonce: &str, key: &str, body: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(H_TIMESTAMP, HeaderValue::from_str(ts).unwrap());
        h.insert(H_NONCE, HeaderValue::from_str(nonce).unwrap());
        h.insert(
            H_SIGNATURE,
            HeaderValue::from_str(&signature(ts, nonce, key, body)).unwrap(),
        );
        h
    }

    fn post<'a>(h: &'a HeaderMap, body: &'a [u8], now: SystemTime) -> WebhookRequest<'a> {
        WebhookRequest {
            method: &Method::POST,
            query: None,
            headers: h,
            body,
            now,
            bearer: None,
        }
    }

    fn v2_message(text: &str, chat_type: &str, thread_id: &str, sender_type: &str) -> Value {
        json!({
            "schema": "2.0",
            "header": {
                "event_id": "ev_1", "token": TOKEN, "create_time": "1700000000000",
                "event_type": "im.message.receive_v1", "tenant_key": "tenant_1", "app_id": "cli_123"
            },
            "event": {
                "sender": {
                    "sender_id": { "open_id": "ou_sender", "user_id": "u_1", "union_id": "on_1" },
                    "sender_type": sender_type, "tenant_key": "tenant_1"
                },
                "message": {
                    "message_id": "om_abc", "root_id": "", "parent_id": "", "thread_id": thread_id,
                    "chat_id": "oc_chat", "chat_type": chat_type, "message_type": "text",
                    "content": json!({ "text": text }).to_string(),
                    "mentions": [{ "key": "@_user_1", "id": { "open_id": "ou_bot" }, "name": "Bot" }]
                }
            }
        })
    }

    #[test]
    fn decrypt_vector_both_directions() {
        let v = vectors();
        let key = s(&v, "/feishu/decrypt/encrypt_key");
        let enc = s(&v, "/feishu/decrypt/encrypt");
        let plain = s(&v, "/feishu/decrypt/plaintext");
        assert_eq!(decrypt(key, enc).unwrap(), plain.as_bytes());
        let raw = STANDARD.decode(enc).unwrap();
        let iv: [u8; 16] = raw[..16].try_into().unwrap();
        assert_eq!(encrypt(key, plain.as_bytes(), &iv), enc);
        assert!(decrypt("other key", enc).is_err());
    }

    #[test]
    fn signature_vector() {
        let v = vectors();
        let p = "/feishu/signature";
        let (ts, nonce, key, body) = (
            s(&v, &format!("{p}/timestamp")),
            s(&v, &format!("{p}/nonce")),
            s(&v, &format!("{p}/encrypt_key")),
            s(&v, &format!("{p}/body")),
        );
        let sig = s(&v, &format!("{p}/signature"));
        assert_eq!(signature(ts, nonce, key, body.as_bytes()), sig);
        assert!(verify_signature(ts, nonce, key, body.as_bytes(), sig));
        assert!(verify_signature(
            ts,
            nonce,
            key,
            body.as_bytes(),
            &sig.to_uppercase()
        ));
        assert!(!verify_signature(ts, "n2", key, body.as_bytes(), sig));
        // The signed vector body reaches decryption through receive(); it
        // decrypts to "hello world", which is not an event object.
        let a = adapter(Some(key));
        let h = signed_headers(ts, nonce, key, body.as_bytes());
        assert_eq!(h.get(H_SIGNATURE).unwrap(), sig);
        let err = a
            .receive(&post(&h, body.as_bytes(), at(1_700_000_000)))
            .unwrap_err();
        assert_eq!(err.kind(), "malformed");
        let err = a
            .receive(&post(&h, body.as_bytes(), at(1_700_000_301)))
            .unwrap_err();
        assert_eq!(err.kind(), "stale_timestamp");
    }

    #[test]
    fn malformed_ciphertexts() {
        for bad in [
            "",
            "!!",
            "QUJD",
            "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzgh",
            &STANDARD.encode([0u8; 48]),
        ] {
            assert_eq!(
                decrypt(KEY, bad).unwrap_err().kind(),
                "decrypt_failed",
                "{bad}"
            );
        }
        for n in 1..6 {
            let junk: Vec<u8> = (0..n * 16).map(|_| rand::random()).collect();
            let _ = decrypt(KEY, &STANDARD.encode(junk));
        }
    }

    #[test]
    fn strip_mentions_cases() {
        assert_eq!(strip_mentions("@_user_1 hello"), "hello");
        assert_eq!(
            strip_mentions("hi @_user_12 and @_user_2 there"),
            "hi and there"
        );
        assert_eq!(strip_mentions("@_all ping"), "ping");
        assert_eq!(
            strip_mentions("mail a@_b.com @_user_"),
            "mail a@_b.com @_user_"
        );
        assert_eq!(strip_mentions("你好@_user_1"), "你好");
        assert_eq!(strip_mentions("@_allison @_all"), "@_allison");
        assert_eq!(strip_mentions("@_@_user_3 x"), "@_x");
    }

    #[test]
    fn url_verification_plain_and_encrypted() {
        let plain = adapter(None);
        let body =
            json!({ "challenge": "ch-1", "token": TOKEN, "type": "url_verification" }).to_string();
        let h = HeaderMap::new();
        let want = Inbound::Answer {
            response: WebhookResponse::json(&json!({ "challenge": "ch-1" })),
            event: "url_verification",
        };
        assert_eq!(
            plain
                .receive(&post(&h, body.as_bytes(), SystemTime::now()))
                .unwrap(),
            want
        );
        // Wrong token.
        let forged = body.replace(TOKEN, "nope");
        assert_eq!(
            plain
                .receive(&post(&h, forged.as_bytes(), SystemTime::now()))
                .unwrap_err(),
            Rejection::BadSignature("verification token")
        );
        // Encrypted and unsigned (as Feishu sends it).
        let enc = adapter(Some(KEY));
        let sealed = json!({ "encrypt": encrypt(KEY, body.as_bytes(), &[5; 16]) }).to_string();
        assert_eq!(
            enc.receive(&post(&h, sealed.as_bytes(), SystemTime::now()))
                .unwrap(),
            want
        );
        // A plain challenge is not accepted unsigned when an encrypt_key is set.
        assert_eq!(
            enc.receive(&post(&h, body.as_bytes(), SystemTime::now()))
                .unwrap_err(),
            Rejection::Missing("X-Lark-Signature").unverified()
        );
        // Encrypted body but no key configured.
        assert_eq!(
            plain
                .receive(&post(&h, sealed.as_bytes(), SystemTime::now()))
                .unwrap_err()
                .kind(),
            "decrypt_failed"
        );
    }

    #[test]
    fn v2_message_encrypted_and_signed() {
        let a = adapter(Some(KEY));
        let event = v2_message("@_user_1 what is up", "group", "omt_thread", "user");
        let body =
            json!({ "encrypt": encrypt(KEY, event.to_string().as_bytes(), &[1; 16]) }).to_string();
        let now = 1_700_000_000;
        let h = signed_headers(&now.to_string(), "nonce1", KEY, body.as_bytes());
        let Inbound::Message(m) = a.receive(&post(&h, body.as_bytes(), at(now + 10))).unwrap()
        else {
            panic!()
        };
        assert_eq!(m.message_id, "om_abc");
        assert_eq!(m.sender_id, "ou_sender");
        assert_eq!(m.room_id, "oc_chat");
        assert_eq!(m.thread_id, "omt_thread");
        assert_eq!(m.chat_type, "group");
        assert_eq!(m.tenant, "tenant_1");
        assert_eq!(m.text, "what is up");
        assert_eq!(m.mentions, vec!["ou_bot".to_string()]);
        assert_eq!(m.attributes.get("user_id").map(String::as_str), Some("u_1"));
        assert_eq!(
            m.attributes.get("event_id").map(String::as_str),
            Some("ev_1")
        );
        assert_eq!(
            m.reply_to,
            json!({ "message_id": "om_abc", "in_thread": true })
        );
        // Unsigned, forged, stale.
        let unsigned = HeaderMap::new();
        assert_eq!(
            a.receive(&post(&unsigned, body.as_bytes(), at(now)))
                .unwrap_err(),
            Rejection::Missing("X-Lark-Signature").unverified()
        );
        let forged = signed_headers(&now.to_string(), "nonce1", "wrong key", body.as_bytes());
        assert_eq!(
            a.receive(&post(&forged, body.as_bytes(), at(now)))
                .unwrap_err(),
            Rejection::BadSignature("X-Lark-Signature")
        );
        assert_eq!(
            a.receive(&post(&h, body.as_bytes(), at(now + 301)))
                .unwrap_err()
                .kind(),
            "stale_timestamp"
        );
        let mut no_nonce = h.clone();
        no_nonce.remove(H_NONCE);
        assert_eq!(
            a.receive(&post(&no_nonce, body.as_bytes(), at(now)))
                .unwrap_err()
                .kind(),
            "missing_field"
        );
    }

    #[test]
    fn v2_plain_private_chat_and_root_thread() {
        let a = adapter(None);
        let mut event = v2_message("hello", "p2p", "", "user");
        event["event"]["message"]["root_id"] = json!("om_root");
        let body = event.to_string();
        let h = HeaderMap::new();
        let Inbound::Message(m) = a
            .receive(&post(&h, body.as_bytes(), SystemTime::now()))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (m.chat_type.as_str(), m.thread_id.as_str(), m.text.as_str()),
            ("private", "om_root", "hello")
        );
        let mut top = v2_message("hello", "p2p", "", "user");
        top["event"]["sender"]["sender_id"] = json!({ "user_id": "u_only" });
        let body = top.to_string();
        let Inbound::Message(m) = a
            .receive(&post(&h, body.as_bytes(), SystemTime::now()))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(m.sender_id, "u_only");
        assert_eq!(
            m.reply_to,
            json!({ "message_id": "om_abc", "in_thread": false })
        );
    }

    #[test]
    fn skips_and_malformed() {
        let a = adapter(None);
        let h = HeaderMap::new();
        let now = SystemTime::now();
        let reason = |v: Value| match a.receive(&post(&h, v.to_string().as_bytes(), now)).unwrap() {
            Inbound::Skip { reason, response } => {
                assert_eq!(response, WebhookResponse::empty());
                reason
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(reason(v2_message("x", "group", "", "app")), "bot_message");
        let mut image = v2_message("x", "group", "", "user");
        image["event"]["message"]["message_type"] = json!("image");
        assert_eq!(reason(image), "unsupported_msg_type");
        let mut other = v2_message("x", "group", "", "user");
        other["header"]["event_type"] = json!("im.chat.member.bot.added_v1");
        assert_eq!(reason(other), "unsupported_event");
        assert_eq!(
            reason(json!({ "token": TOKEN, "type": "something_else" })),
            "unsupported_event"
        );
        assert_eq!(
            reason(
                json!({ "token": TOKEN, "type": "event_callback", "event": { "type": "add_bot" } })
            ),
            "unsupported_event"
        );

        let kind = |b: &[u8]| a.receive(&post(&h, b, now)).unwrap_err().kind();
        assert_eq!(kind(b"\x00\x01garbage"), "malformed");
        assert_eq!(kind(b"[]"), "malformed");
        assert_eq!(kind(b"{\"type\":\"url_verification\"}"), "missing_field");
        let mut bad_content = v2_message("x", "group", "", "user");
        bad_content["event"]["message"]["content"] = json!("{not json");
        assert_eq!(kind(bad_content.to_string().as_bytes()), "malformed");
        let mut wrong_token = v2_message("x", "group", "", "user");
        wrong_token["header"]["token"] = json!("vtoken2");
        assert_eq!(kind(wrong_token.to_string().as_bytes()), "bad_signature");
        assert_eq!(kind(b"{\"encrypt\":5}"), "malformed");
        assert_eq!(
            a.receive(&WebhookRequest {
                method: &Method::GET,
                query: None,
                headers: &h,
                body: b"",
                now,
                bearer: None,
            })
            .unwrap_err(),
            Rejection::Method
        );
    }

    #[test]
    fn v1_message() {
        let a = adapter(None);
        let body = json!({
            "uuid": "u-1", "token": TOKEN, "ts": "1700000000.1", "type": "event_callback",
            "event": {
                "type": "message", "msg_type": "text", "app_id": "cli_123", "tenant_key": "t1",
                "open_id": "ou_v1", "user_open_id": "ou_v1", "open_chat_id": "oc_v1", "chat_type": "group",
                "open_message_id": "om_v1", "root_id": "om_root", "text": "<at open_id=\"ou_bot\">@Bot</at> hi",
                "text_without_at_bot": " hi @_user_1 ", "is_mention": true
            }
        })
        .to_string();
        let h = HeaderMap::new();
        let Inbound::Message(m) = a
            .receive(&post(&h, body.as_bytes(), SystemTime::now()))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(m.message_id, "om_v1");
        assert_eq!(m.text, "hi");
        assert_eq!(m.room_id, "oc_v1");
        assert_eq!(m.thread_id, "om_root");
        assert_eq!(m.tenant, "t1");
        assert_eq!(
            m.attributes.get("event_id").map(String::as_str),
            Some("u-1")
        );
        // Passthrough: both v1 texts are scanned, and the masked event
        // (unsigned without an encrypt_key) verifies and parses again.
        let r = post(&h, body.as_bytes(), SystemTime::now());
        let mut p = a.payload(&r).unwrap();
        let mut seen = Vec::new();
        p.texts_mut(a.opaque_keys(), &mut |s: &mut String| {
            if s.contains("hi") {
                seen.push(s.clone());
                *s = s.replace("hi", "**");
            }
        })
        .unwrap();
        seen.sort();
        assert_eq!(
            seen,
            [" hi @_user_1 ", "<at open_id=\"ou_bot\">@Bot</at> hi"]
        );
        let sealed = a.reseal_payload(&r, &p).unwrap();
        assert!(sealed.headers.is_empty());
        let Inbound::Message(m2) = a
            .receive(&post(&h, &sealed.body, SystemTime::now()))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(m2.text, "**");
        assert_eq!(m2.message_id, "om_v1");
    }

    #[test]
    fn reply_calls_and_token_source() {
        let a = adapter(None);
        let msg = PlatformMessage {
            reply_to: json!({ "message_id": "om_abc", "in_thread": true }),
            ..Default::default()
        };
        let calls = a.reply_calls(&msg, "hi \"there\"").unwrap();
        assert_eq!(calls.len(), 1);
        let c = &calls[0];
        assert_eq!(c.method, Method::POST);
        assert_eq!(
            c.url,
            "http://127.0.0.1:9/open-apis/im/v1/messages/om_abc/reply"
        );
        assert!(c
            .headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("application/json")));
        let body: Value = serde_json::from_slice(&c.body).unwrap();
        assert_eq!(
            body,
            json!({ "msg_type": "text", "content": "{\"text\":\"hi \\\"there\\\"\"}", "reply_in_thread": true })
        );
        assert_eq!(c.success, Some(("/code", json!(0))));
        let auth = c.auth.as_ref().unwrap();
        assert_eq!(
            auth.fetch.url,
            "http://127.0.0.1:9/open-apis/auth/v3/tenant_access_token/internal"
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&auth.fetch.body).unwrap(),
            json!({ "app_id": "cli_123", "app_secret": "shh" })
        );
        assert_eq!(
            (auth.token_pointer, auth.expires_in_pointer),
            ("/tenant_access_token", "/expire")
        );
        assert_eq!(auth.placement, TokenPlacement::BearerHeader);
        assert!(!auth.cache_key.contains("shh"));
        // Ids from bodies never escape the URL path.
        for bad in ["../../admin", "om/x", "om?x=1", ""] {
            let m = PlatformMessage {
                reply_to: json!({ "message_id": bad }),
                ..Default::default()
            };
            assert!(a.reply_calls(&m, "x").is_err(), "{bad}");
        }
        let mut secrets = BTreeMap::new();
        secrets.insert("verification_token".to_string(), "t".to_string());
        let bare = FeishuAdapter::new(&secrets, None).unwrap();
        assert_eq!(
            bare.reply_calls(&msg, "x").unwrap_err(),
            Rejection::Missing("app_id")
        );
        assert!(FeishuAdapter::new(&BTreeMap::new(), None)
            .unwrap_err()
            .to_string()
            .contains("`verification_token`"));
        assert!(a.inline_reply(&msg, "x", SystemTime::now()).is_none());
        assert_eq!(a.ack(&msg), WebhookResponse::empty());
    }

    /// Resealed later than it was signed: encrypted again, and signed with
    /// the later time, at which it verifies.
    #[test]
    fn reseal_of_a_later_request_is_signed_fresh() {
        let a = adapter(Some(KEY));
        let event = v2_message("@_user_1 card 4111 1111 1111 1111", "group", "", "user");
        let body =
            json!({ "encrypt": encrypt(KEY, event.to_string().as_bytes(), &[1; 16]) }).to_string();
        let t0 = 1_700_000_000;
        let h = signed_headers(&t0.to_string(), "n", KEY, body.as_bytes());
        let later = at(t0 + 100);
        let r = post(&h, body.as_bytes(), later);
        let mut p = a.payload(&r).unwrap();
        p.texts_mut(a.opaque_keys(), &mut |s: &mut String| {
            *s = s.replace("4111 1111 1111 1111", "****");
        })
        .unwrap();
        let sealed = a.reseal_payload(&r, &p).unwrap();
        let mut h2 = HeaderMap::new();
        for (k, v) in &sealed.headers {
            h2.insert(
                HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        assert_eq!(h2.get(H_TIMESTAMP).unwrap(), &(t0 + 100).to_string());
        assert_ne!(h2.get(H_SIGNATURE), h.get(H_SIGNATURE));
        let sealed_body: Value = serde_json::from_slice(&sealed.body).unwrap();
        assert!(sealed_body.get("encrypt").is_some(), "stays encrypted");
        let Inbound::Message(m2) = a.receive(&post(&h2, &sealed.body, later)).unwrap() else {
            panic!()
        };
        assert_eq!(m2.text, "card ****");
        assert_eq!(m2.message_id, "om_abc");
    }

    fn mask(a: &FeishuAdapter, p: &mut Payload) -> Vec<String> {
        let mut seen = Vec::new();
        p.texts_mut(a.opaque_keys(), &mut |s: &mut String| {
            if s.contains("4111") {
                seen.push(s.clone());
                *s = s.replace("4111", "****");
            }
        })
        .unwrap();
        seen
    }

    #[test]
    fn payload_reseal_round_trip_encrypted_and_signed() {
        let a = adapter(Some(KEY));
        let mut event = v2_message("@_user_1 card 4111", "group", "", "user");
        event["event"]["message"]["mentions"][0]["name"] = json!("Bot 4111");
        event["event"]["message"]["message_id"] = json!("om_4111");
        let body =
            json!({ "encrypt": encrypt(KEY, event.to_string().as_bytes(), &[1; 16]) }).to_string();
        let t0 = 1_700_000_000;
        let h = signed_headers(&t0.to_string(), "n", KEY, body.as_bytes());
        let r = post(&h, body.as_bytes(), at(t0 + 5));
        let mut p = a.payload(&r).unwrap();
        let mut opened = event.clone();
        opened["event"]["message"]["content"] = json!({ "text": "@_user_1 card 4111" });
        assert_eq!(p, Payload::Json(opened), "decrypted, content opened");
        let mut seen = mask(&a, &mut p);
        seen.sort();
        assert_eq!(seen, ["@_user_1 card 4111", "Bot 4111"]);
        let sealed = a.reseal_payload(&r, &p).unwrap();
        let sealed_body: Value = serde_json::from_slice(&sealed.body).unwrap();
        assert!(sealed_body.get("encrypt").is_some(), "stays encrypted");
        let mut h2 = HeaderMap::new();
        for (k, v) in &sealed.headers {
            h2.insert(
                HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let Inbound::Message(m) = a.receive(&post(&h2, &sealed.body, at(t0 + 5))).unwrap() else {
            panic!()
        };
        assert_eq!(m.text, "card ****");
        assert_eq!(m.message_id, "om_4111", "ids are opaque");
        // A forged original is not resealed.
        let forged = signed_headers(&t0.to_string(), "n", "other", body.as_bytes());
        assert!(a
            .reseal_payload(&post(&forged, body.as_bytes(), at(t0)), &p)
            .is_none());
        assert!(a.reseal_payload(&r, &Payload::Empty).is_none());
    }

    #[test]
    fn payload_reseal_round_trip_plain() {
        let a = adapter(None);
        let body = v2_message("card 4111", "p2p", "", "user").to_string();
        let h = HeaderMap::new();
        let r = post(&h, body.as_bytes(), SystemTime::now());
        let mut p = a.payload(&r).unwrap();
        mask(&a, &mut p);
        let sealed = a.reseal_payload(&r, &p).unwrap();
        assert!(sealed.headers.is_empty());
        let Inbound::Message(m) = a
            .receive(&post(&h, &sealed.body, SystemTime::now()))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(m.text, "card ****");
        assert_eq!(m.command, None);
        assert!(a.payload(&post(&h, b"{}", SystemTime::now())).is_err());
    }

    /// A ciphertext that is base64 and whole blocks, but whose padding is
    /// invalid: one block of zeros (a last byte of 0 is never PKCS#7).
    fn bad_padding(key: &str) -> String {
        use cbc::cipher::block_padding::NoPadding;
        let iv = [7u8; 16];
        let enc = cbc::Encryptor::<Aes256>::new(&aes_key(key).into(), &iv.into());
        let mut raw = iv.to_vec();
        raw.extend_from_slice(&enc.encrypt_padded_vec_mut::<NoPadding>(&[0u8; 16]));
        STANDARD.encode(raw)
    }

    thread_local! {
        /// Calls of [`decrypt`] on this thread, so tests can prove that a
        /// request which fails authentication is never decrypted.
        pub(super) static DECRYPTS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    fn decrypts() -> usize {
        DECRYPTS.with(std::cell::Cell::get)
    }

    /// Bodies an attacker could send, from a valid envelope to garbage.
    fn hostile_bodies() -> Vec<(&'static str, String)> {
        let event = v2_message("hi", "p2p", "", "user").to_string();
        let challenge =
            json!({ "challenge": "c", "token": TOKEN, "type": "url_verification" }).to_string();
        let wrap = |enc: String| json!({ "encrypt": enc }).to_string();
        vec![
            (
                "valid envelope",
                wrap(encrypt(KEY, event.as_bytes(), &[1; 16])),
            ),
            (
                "valid challenge",
                wrap(encrypt(KEY, challenge.as_bytes(), &[2; 16])),
            ),
            ("not base64", wrap("%%% not base64 %%%".into())),
            ("bad length", wrap(STANDARD.encode([9u8; 40]))),
            ("bad padding", wrap(bad_padding(KEY))),
            (
                "not JSON inside",
                wrap(encrypt(KEY, b"{not json", &[3; 16])),
            ),
            ("plain event", event),
            ("not JSON", "{garbage".into()),
        ]
    }

    /// A request whose signature fails is never decrypted, nor parsed: a
    /// forged envelope, a ciphertext that is not base64 or has bad padding
    /// and garbage get exactly the rejection of a valid body with a bad
    /// signature. So do they with a correct signature that is stale.
    #[test]
    fn a_failed_signature_is_never_decrypted() {
        let a = adapter(Some(KEY));
        let t0 = 1_700_000_000;
        assert_eq!(
            decrypt(KEY, &bad_padding(KEY)),
            Err(Rejection::Decrypt("bad padding"))
        );
        for (what, body) in hostile_bodies() {
            let before = decrypts();
            let forged = signed_headers(&t0.to_string(), "n", "guessed key", body.as_bytes());
            assert_eq!(
                a.receive(&post(&forged, body.as_bytes(), at(t0)))
                    .unwrap_err(),
                Rejection::BadSignature("X-Lark-Signature"),
                "{what}"
            );
            let mut tampered = signed_headers(&t0.to_string(), "n", KEY, body.as_bytes());
            tampered.insert(H_NONCE, HeaderValue::from_static("other"));
            assert_eq!(
                a.receive(&post(&tampered, body.as_bytes(), at(t0)))
                    .unwrap_err(),
                Rejection::BadSignature("X-Lark-Signature"),
                "{what}"
            );
            let stale = signed_headers(&t0.to_string(), "n", KEY, body.as_bytes());
            assert_eq!(
                a.receive(&post(&stale, body.as_bytes(), at(t0 + 301)))
                    .unwrap_err()
                    .kind(),
                "stale_timestamp",
                "{what}"
            );
            let mut no_ts = stale.clone();
            no_ts.remove(H_TIMESTAMP);
            assert_eq!(
                a.receive(&post(&no_ts, body.as_bytes(), at(t0)))
                    .unwrap_err(),
                Rejection::Missing("X-Lark-Request-Timestamp").unverified(),
                "{what}"
            );
            assert!(a.payload(&post(&forged, body.as_bytes(), at(t0))).is_err());
            assert_eq!(decrypts(), before, "{what}: decrypted before verifying");
        }
    }

    /// Every way a request fails to authenticate answers the same status,
    /// code and message (no padding oracle, no probing one check at a
    /// time); only `kind`, for the audit line and metric, tells them apart.
    #[test]
    fn every_unauthenticated_failure_answers_alike() {
        let keyed = adapter(Some(KEY));
        let plain = adapter(None);
        let t0 = 1_700_000_000;
        let unsigned = HeaderMap::new();
        let mut failures: Vec<(String, Rejection)> = Vec::new();
        for (what, body) in hostile_bodies() {
            let forged = signed_headers(&t0.to_string(), "n", "guessed", body.as_bytes());
            let stale = signed_headers(&t0.to_string(), "n", KEY, body.as_bytes());
            for (how, h, now) in [
                ("forged", &forged, t0),
                ("stale", &stale, t0 + 3600),
                ("unsigned", &unsigned, t0),
            ] {
                match keyed.receive(&post(h, body.as_bytes(), at(now))) {
                    Err(r) => failures.push((format!("{how} {what}"), r)),
                    Ok(_) => assert_eq!((how, what), ("unsigned", "valid challenge")),
                }
            }
        }
        // Unsigned challenges that do not decrypt to a good one.
        let wrong_token = json!({ "challenge": "c", "token": "nope", "type": "url_verification" });
        let no_token = json!({ "challenge": "c", "type": "url_verification" });
        for inner in [wrong_token, no_token] {
            let body = json!({ "encrypt": encrypt(KEY, inner.to_string().as_bytes(), &[4; 16]) })
                .to_string();
            let r = keyed.receive(&post(&unsigned, body.as_bytes(), at(t0)));
            failures.push((format!("unsigned {inner}"), r.unwrap_err()));
        }
        // Signed correctly, but the envelope does not decrypt.
        let body = json!({ "encrypt": bad_padding(KEY) }).to_string();
        let h = signed_headers(&t0.to_string(), "n", KEY, body.as_bytes());
        let r = keyed.receive(&post(&h, body.as_bytes(), at(t0)));
        failures.push(("signed bad padding".into(), r.unwrap_err()));
        // Token routes: wrong or missing token, an envelope, garbage.
        let mut wrong = v2_message("hi", "p2p", "", "user");
        wrong["header"]["token"] = json!("nope");
        let mut missing = v2_message("hi", "p2p", "", "user");
        missing["header"].as_object_mut().unwrap().remove("token");
        let envelope = json!({ "encrypt": bad_padding(KEY) });
        for body in [
            wrong.to_string(),
            missing.to_string(),
            envelope.to_string(),
            "{garbage".into(),
            "[1]".into(),
        ] {
            let r = plain.receive(&post(&unsigned, body.as_bytes(), at(t0)));
            failures.push((format!("token route {body}"), r.unwrap_err()));
        }
        let mut kinds = std::collections::BTreeSet::new();
        for (what, r) in &failures {
            assert!(r.is_unauthenticated(), "{what}: {r:?}");
            assert_eq!(r.status(), http::StatusCode::UNAUTHORIZED, "{what}");
            assert_eq!(r.public_kind(), "unauthenticated", "{what}");
            assert_eq!(
                r.public_message(),
                "the request could not be authenticated",
                "{what}"
            );
            kinds.insert(r.kind());
        }
        // The audit line still tells them apart.
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            [
                "bad_signature",
                "decrypt_failed",
                "malformed",
                "missing_field",
                "stale_timestamp"
            ]
        );
        // The padding oracle: an unsigned envelope with bad padding and
        // one that decrypts (to something other than a challenge) are
        // refused identically to the client.
        let oracle = |enc: String| {
            let body = json!({ "encrypt": enc }).to_string();
            let r = keyed
                .receive(&post(&unsigned, body.as_bytes(), at(t0)))
                .unwrap_err();
            (r.status(), r.public_kind(), r.public_message())
        };
        let event = v2_message("hi", "p2p", "", "user").to_string();
        assert_eq!(
            oracle(bad_padding(KEY)),
            oracle(encrypt(KEY, event.as_bytes(), &[1; 16]))
        );
        assert_eq!(
            oracle(bad_padding(KEY)),
            oracle(encrypt(KEY, b"{not json", &[1; 16]))
        );
    }

    /// Authenticated but malformed input keeps its precise 400.
    #[test]
    fn malformed_after_authentication_stays_400() {
        let a = adapter(Some(KEY));
        let t0 = 1_700_000_000;
        for body in ["{not json", "[1,2]", "{\"encrypt\":5}"] {
            let h = signed_headers(&t0.to_string(), "n", KEY, body.as_bytes());
            let r = a.receive(&post(&h, body.as_bytes(), at(t0))).unwrap_err();
            assert_eq!(
                (r.status(), r.public_kind()),
                (http::StatusCode::BAD_REQUEST, "malformed"),
                "{body}"
            );
        }
    }
}
