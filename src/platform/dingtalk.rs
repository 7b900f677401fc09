//! DingTalk (钉钉) robot callbacks and encrypted event subscriptions.
//!
//! A robot callback is plain JSON signed in the `timestamp`/`sign` headers
//! with an HMAC of the app secret; the reply goes to the `sessionWebhook` URL
//! the message carries. Because that URL comes from a request body, it is
//! only ever called when it is exactly DingTalk's shape on the route's API
//! host (`<api_base>/robot/sendBySession?session=<token>`), so a forged or
//! replayed body cannot turn the gateway into a proxy to anywhere.
//!
//! DingTalk's robot `sign` covers only the timestamp, not the body, and is
//! valid for an hour either side of it. So a captured `(timestamp, sign)`
//! pair could carry any body, any `msgId` and any sender for two hours.
//! The adapter therefore accepts each signed timestamp with one body only
//! (`UsedSigns`): the same request again (a redelivery or an exact replay)
//! goes on to the dedupe stage, which answers it as a duplicate (its
//! `msgId` is remembered for [`DingtalkAdapter::dedupe_ttl`], longer than
//! the two-hour window); another body under a pair already used is refused
//! as [`Rejection::Replayed`]. The cost: two genuine callbacks signed in
//! the same millisecond, the second is refused (the rejection is counted,
//! reason `replayed_signature`). Event subscriptions sign the ciphertext,
//! so they need none of this.
//!
//! Event subscriptions use the WeCom cipher ([`super::wxcrypt`]) with the
//! owner key as receive id, and every event is answered with an encrypted
//! `success`, which is also how `check_url` is passed. Nothing is decrypted
//! before its signature and timestamp verified, and every failure to
//! authenticate answers alike ([`Rejection::is_unauthenticated`]).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::adapter::{
    check_replay_window, optional_secret, same_origin, AdapterConfigError, ApiCall, ChatType,
    Inbound, Payload, PlatformAdapter, PlatformMessage, Rejection, Resealed, WebhookRequest,
    WebhookResponse,
};
use super::wxcrypt::{self, WxCrypt};

/// Default API base URL; also the only origin a `sessionWebhook` may have.
pub const DEFAULT_API_BASE: &str = "https://oapi.dingtalk.com";
/// DingTalk documents a one-hour tolerance on the robot `timestamp`.
pub const DEFAULT_REPLAY_WINDOW: Duration = Duration::from_secs(3600);
/// The path of every `sessionWebhook`, under the API base.
pub const SESSION_WEBHOOK_PATH: &str = "/robot/sendBySession";
/// How long a robot `msgId` is remembered at least: a day (the default),
/// and always beyond the whole replay window on both sides of a timestamp.
pub const MIN_DEDUPE_TTL: Duration = Duration::from_secs(24 * 3600);

/// Event types that probe the callback URL.
const CHECK_URL_EVENTS: &[&str] = &[
    "check_url",
    "check_create_suite_url",
    "check_update_suite_url",
];

/// `base64(HMAC-SHA256(app_secret, timestamp + "\n" + app_secret))`.
pub fn robot_sign(app_secret: &str, timestamp: &str) -> String {
    // HMAC accepts keys of any length, so this never fails in practice.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(app_secret.as_bytes()) else {
        return String::new();
    };
    mac.update(timestamp.as_bytes());
    mac.update(b"\n");
    mac.update(app_secret.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Checks a robot `sign` header in constant time.
pub fn verify_robot_sign(app_secret: &str, timestamp: &str, sign: &str) -> bool {
    let expected = robot_sign(app_secret, timestamp);
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(sign.trim().as_bytes()))
}

/// Why a `sessionWebhook` from a robot callback is not called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionWebhookError {
    /// Not the scheme, host and port of the route's API base.
    #[error("sessionWebhook is not on the route's API host")]
    Host,
    /// Not `/robot/sendBySession` under the API base.
    #[error("sessionWebhook is not the sendBySession path")]
    Path,
    /// Not exactly one `session=<token>` query parameter (or a fragment).
    #[error("sessionWebhook has no single well-formed session parameter")]
    Session,
}

impl From<SessionWebhookError> for Rejection {
    fn from(e: SessionWebhookError) -> Self {
        Rejection::ReplyUrl(match e {
            SessionWebhookError::Host => "sessionWebhook is not on the route's API host",
            SessionWebhookError::Path => "sessionWebhook is not the sendBySession path",
            SessionWebhookError::Session => "sessionWebhook has no well-formed session parameter",
        })
    }
}

/// A `session` token: what DingTalk issues (letters, digits, `-`, `_`),
/// with room for URL-safe and base64 characters; never `&`, `#` or `/`.
fn is_session_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 512
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'%' | b'=' | b'+')
        })
}

/// Checks that `url` is a `sessionWebhook` as DingTalk issues it, on the
/// route's API host: `<api_base>/robot/sendBySession?session=<token>`, the
/// same origin (scheme, host, port: no userinfo, no lookalike host), the
/// exact path and one `session` parameter, nothing else.
pub fn check_session_webhook(url: &str, api_base: &str) -> Result<(), SessionWebhookError> {
    if !same_origin(url, api_base) {
        return Err(SessionWebhookError::Host);
    }
    if url.contains('#') {
        return Err(SessionWebhookError::Session);
    }
    let (Ok(uri), Ok(base)) = (url.parse::<http::Uri>(), api_base.parse::<http::Uri>()) else {
        return Err(SessionWebhookError::Host);
    };
    let expected = format!(
        "{}{SESSION_WEBHOOK_PATH}",
        base.path().trim_end_matches('/')
    );
    if uri.path() != expected {
        return Err(SessionWebhookError::Path);
    }
    match uri.query().and_then(|q| q.strip_prefix("session=")) {
        Some(token) if is_session_token(token) => Ok(()),
        _ => Err(SessionWebhookError::Session),
    }
}

/// True when `url` is a `sessionWebhook` the route may call
/// ([`check_session_webhook`]).
pub fn session_webhook_allowed(url: &str, api_base: &str) -> bool {
    check_session_webhook(url, api_base).is_ok()
}

/// Robot timestamps already used, each with the SHA-256 of the one body it
/// was accepted with. The `sign` is a function of the timestamp alone, so
/// the (trimmed) timestamp is the key. Entries leave once their timestamp
/// is out of the replay window (they could never verify again), so the map
/// holds at most the genuine callbacks of two hours; an attacker without
/// the app secret cannot add any (a refused replay is not stored).
#[derive(Debug, Default)]
struct UsedSigns {
    by_timestamp: HashMap<String, ([u8; 32], i64)>,
    purge_at: usize,
}

impl UsedSigns {
    /// Whether `body` may use the pair signed at `timestamp` (`secs`): the
    /// first body does, and the same body again (a redelivery, which the
    /// dedupe stage then answers).
    fn accept(
        &mut self,
        timestamp: &str,
        secs: i64,
        body: &[u8],
        now: i64,
        window: Duration,
    ) -> bool {
        if self.by_timestamp.len() >= self.purge_at {
            // A minute of slack for a clock that steps back.
            let horizon = i64::try_from(window.as_secs())
                .unwrap_or(i64::MAX)
                .saturating_add(60);
            self.by_timestamp
                .retain(|_, (_, t)| now.saturating_sub(*t) <= horizon);
            self.purge_at = self.by_timestamp.len().saturating_mul(2).max(1024);
        }
        let digest: [u8; 32] = Sha256::digest(body).into();
        match self.by_timestamp.entry(timestamp.to_string()) {
            Entry::Occupied(e) => e.get().0 == digest,
            Entry::Vacant(e) => {
                e.insert((digest, secs));
                true
            }
        }
    }
}

/// Ids, signatures, media codes, timestamps and enum-like fields of robot
/// callbacks and (decrypted) events. `sessionWebhook` is a credential-bearing
/// URL the reply needs intact. The text `content`, `senderNick`,
/// `conversationTitle`, file names and rich text are scanned.
pub const OPAQUE_KEYS: &[&str] = &[
    "id",
    "type",
    "msgId",
    "msgtype",
    "createAt",
    "conversationType",
    "conversationId",
    "senderId",
    "senderStaffId",
    "senderCorpId",
    "senderPlatform",
    "chatbotCorpId",
    "chatbotUserId",
    "robotCode",
    "sessionWebhook",
    "sessionWebhookExpiredTime",
    "dingtalkId",
    "staffId",
    "downloadCode",
    "pictureDownloadCode",
    "msg_signature",
    "signature",
    "timeStamp",
    "TimeStamp",
    "nonce",
    "encrypt",
    "EventType",
    "CorpId",
    "SuiteKey",
    "AuthCorpId",
];

/// Unix seconds from a DingTalk timestamp (milliseconds; seconds tolerated).
fn timestamp_secs(ts: &str) -> Result<i64, Rejection> {
    let n: i64 = ts
        .trim()
        .parse()
        .map_err(|_| Rejection::Malformed("timestamp is not a number".into()))?;
    Ok(if n.unsigned_abs() >= 100_000_000_000 {
        n.div_euclid(1000)
    } else {
        n
    })
}

fn now_millis(now: SystemTime) -> u128 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// The event-subscription half: token, cipher and owner key.
#[derive(Debug, Clone)]
struct EventCrypto {
    token: String,
    crypt: WxCrypt,
    owner_key: String,
}

/// The event-subscription secrets: all three, or none.
fn event_crypto(
    secrets: &BTreeMap<String, String>,
) -> Result<Option<EventCrypto>, AdapterConfigError> {
    const NAMES: [&str; 3] = ["token", "aes_key", "owner_key"];
    let present = NAMES.map(|n| optional_secret(secrets, n));
    match present {
        [Some(token), Some(aes_key), Some(owner_key)] => Ok(Some(EventCrypto {
            token: token.to_string(),
            crypt: WxCrypt::from_encoding_aes_key(aes_key).map_err(|e| {
                AdapterConfigError::BadSecret {
                    platform: "dingtalk",
                    name: "aes_key",
                    reason: format!("is not the aes_key from the DingTalk console: {e}"),
                }
            })?,
            owner_key: owner_key.to_string(),
        })),
        [None, None, None] => Ok(None),
        _ => {
            let name = NAMES
                .iter()
                .zip(&present)
                .find(|(_, v)| v.is_none())
                .map_or("token", |(n, _)| *n);
            Err(AdapterConfigError::IncompleteGroup {
                platform: "dingtalk",
                name,
                group: "`token`, `aes_key` and `owner_key`",
                purpose: "event subscription",
            })
        }
    }
}

/// `@`-mentioned users other than the bot: staff ids where known.
fn robot_mentions(body: &Value, bot: &str) -> Vec<String> {
    body.get("atUsers")
        .and_then(Value::as_array)
        .map(|users| {
            users
                .iter()
                .filter_map(|u| {
                    u.get("staffId")
                        .or_else(|| u.get("dingtalkId"))
                        .and_then(Value::as_str)
                })
                .filter(|id| *id != bot)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Attributes worth passing on, and the session webhook's expiry (ms).
fn robot_attributes(body: &Value) -> (BTreeMap<String, String>, i64) {
    let mut attributes = BTreeMap::new();
    if let Some(at) = body.get("isInAtList").and_then(Value::as_bool) {
        attributes.insert("is_in_at_list".to_string(), at.to_string());
    }
    let expires = body
        .get("sessionWebhookExpiredTime")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if expires > 0 {
        attributes.insert(
            "session_webhook_expires_ms".to_string(),
            expires.to_string(),
        );
    }
    (attributes, expires)
}

/// A DingTalk route: robot callbacks, event subscriptions, or both.
#[derive(Debug, Clone)]
pub struct DingtalkAdapter {
    app_secret: Option<String>,
    events: Option<EventCrypto>,
    api_base: String,
    replay_window: Duration,
    /// Shared by clones: one route, one record of used robot signatures.
    used_signs: Arc<Mutex<UsedSigns>>,
}

impl DingtalkAdapter {
    /// Builds the adapter: `app_secret` for robot callbacks and/or `token`,
    /// `aes_key` and `owner_key` (all three) for event subscriptions.
    pub fn new(
        secrets: &BTreeMap<String, String>,
        api_base: Option<&str>,
    ) -> Result<Self, AdapterConfigError> {
        let app_secret = optional_secret(secrets, "app_secret").map(str::to_string);
        let events = event_crypto(secrets)?;
        if app_secret.is_none() && events.is_none() {
            return Err(AdapterConfigError::NoCredentials {
                platform: "dingtalk",
                alternatives: "secret `app_secret` (robot callbacks) or `token`, `aes_key` and \
                               `owner_key` (event subscriptions)",
            });
        }
        Ok(Self {
            app_secret,
            events,
            api_base: api_base
                .unwrap_or(DEFAULT_API_BASE)
                .trim_end_matches('/')
                .to_string(),
            replay_window: DEFAULT_REPLAY_WINDOW,
            used_signs: Arc::default(),
        })
    }

    /// Replaces the replay window (tests use it with old vector timestamps).
    pub fn with_replay_window(mut self, window: Duration) -> Self {
        self.replay_window = window;
        self
    }

    /// The encrypted event answer `{"msg_signature","timeStamp","nonce","encrypt"}`
    /// for `plaintext`; `random` is the cipher prefix. `None` without event secrets.
    pub fn encrypt_response(
        &self,
        plaintext: &str,
        timestamp: &str,
        nonce: &str,
        random: &[u8; 16],
    ) -> Option<Value> {
        let ev = self.events.as_ref()?;
        let encrypt = ev
            .crypt
            .encrypt(plaintext.as_bytes(), &ev.owner_key, random);
        let signature = wxcrypt::msg_signature(&ev.token, timestamp, nonce, &encrypt);
        Some(
            json!({ "msg_signature": signature, "timeStamp": timestamp, "nonce": nonce, "encrypt": encrypt }),
        )
    }

    /// Checks an event's signature and decrypts it (no replay check).
    pub fn decrypt_event(
        &self,
        signature: &str,
        timestamp: &str,
        nonce: &str,
        encrypt: &str,
    ) -> Result<Vec<u8>, Rejection> {
        let ev = self.verify_event(signature, timestamp, nonce, encrypt)?;
        Ok(ev.crypt.decrypt(encrypt, &ev.owner_key)?)
    }

    /// Checks an event's signature; nothing is decrypted.
    fn verify_event(
        &self,
        signature: &str,
        timestamp: &str,
        nonce: &str,
        encrypt: &str,
    ) -> Result<&EventCrypto, Rejection> {
        let ev = self
            .events
            .as_ref()
            .ok_or(Rejection::BadSignature("event subscription not configured"))?;
        if !wxcrypt::verify_signature(&ev.token, timestamp, nonce, encrypt, signature) {
            return Err(Rejection::BadSignature("signature"));
        }
        Ok(ev)
    }

    /// Verifies the robot headers (sign, then the window, then that this
    /// signed timestamp comes with no other body); returns the parsed body.
    fn open_robot(
        &self,
        req: &WebhookRequest<'_>,
        timestamp: &str,
        sign: &str,
    ) -> Result<Value, Rejection> {
        let secs = self
            .verify_robot(req, timestamp, sign)
            .map_err(Rejection::unverified)?;
        let body: Value = serde_json::from_slice(req.body)
            .map_err(|e| Rejection::Malformed(format!("body is not JSON: {e}")))?;
        if !body.is_object() {
            return Err(Rejection::Malformed("body is not a JSON object".into()));
        }
        // Only a body that can be a callback claims the pair, so a garbled
        // body never costs a genuine one its signature.
        let accepted = self
            .used_signs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .accept(
                timestamp.trim(),
                secs,
                req.body,
                req.now_secs(),
                self.replay_window,
            );
        if !accepted {
            return Err(Rejection::Replayed("sign"));
        }
        Ok(body)
    }

    /// The robot sign and its window; the timestamp in Unix seconds.
    fn verify_robot(
        &self,
        req: &WebhookRequest<'_>,
        timestamp: &str,
        sign: &str,
    ) -> Result<i64, Rejection> {
        let secret = self
            .app_secret
            .as_deref()
            .ok_or(Rejection::BadSignature("robot signing not configured"))?;
        if !verify_robot_sign(secret, timestamp.trim(), sign) {
            return Err(Rejection::BadSignature("sign"));
        }
        let secs = timestamp_secs(timestamp)?;
        check_replay_window(secs, req.now_secs(), self.replay_window)?;
        Ok(secs)
    }

    /// Maps a verified robot callback body to an [`Inbound`].
    pub fn parse_robot(&self, body: &Value) -> Result<Inbound, Rejection> {
        let skip = |reason| Inbound::Skip {
            response: WebhookResponse::empty(),
            reason,
        };
        if !body.is_object() {
            return Err(Rejection::Malformed("body is not a JSON object".into()));
        }
        let sender = match str_field(body, "senderStaffId") {
            "" => str_field(body, "senderId"),
            s => s,
        };
        let bot = str_field(body, "chatbotUserId");
        if !bot.is_empty() && (bot == str_field(body, "senderId") || bot == sender) {
            return Ok(skip("bot_message"));
        }
        if str_field(body, "msgtype") != "text" {
            return Ok(skip("unsupported_msg_type"));
        }
        let msg_id = Some(str_field(body, "msgId"))
            .filter(|s| !s.is_empty())
            .ok_or(Rejection::Missing("msgId"))?;
        let text = body
            .pointer("/text/content")
            .and_then(Value::as_str)
            .ok_or(Rejection::Missing("text.content"))?;
        if sender.is_empty() {
            return Err(Rejection::Missing("senderId"));
        }
        let chat_type = match str_field(body, "conversationType") {
            "1" => ChatType::Private,
            _ => ChatType::Group,
        };
        let (attributes, expires) = robot_attributes(body);
        Ok(Inbound::Message(Box::new(PlatformMessage {
            message_id: msg_id.to_string(),
            tenant: str_field(body, "chatbotCorpId").to_string(),
            sender_id: sender.to_string(),
            sender_name: str_field(body, "senderNick").to_string(),
            room_id: str_field(body, "conversationId").to_string(),
            thread_id: String::new(),
            chat_type,
            // Group messages start with the space left where the bot's @-mention was.
            text: text.trim().to_string(),
            mentions: robot_mentions(body, bot),
            attributes,
            reply_to: json!({
                "session_webhook": str_field(body, "sessionWebhook"),
                "expires_ms": expires,
            }),
            command: None,
            principal: None,
        })))
    }

    /// Verifies and decrypts an event: (outer body, event, name of the
    /// signature parameter the platform used). The signature and the
    /// window are checked before a byte is decrypted, and every failure
    /// until then answers alike.
    fn open_event(
        &self,
        req: &WebhookRequest<'_>,
    ) -> Result<(Value, Value, &'static str), Rejection> {
        let (body, sig_name, ev) = self
            .verify_event_request(req)
            .map_err(Rejection::unverified)?;
        let encrypt = body
            .get("encrypt")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let plain = ev.crypt.decrypt(encrypt, &ev.owner_key)?;
        let event: Value = serde_json::from_slice(&plain)
            .map_err(|e| Rejection::Malformed(format!("event is not JSON: {e}")))?;
        Ok((body, event, sig_name))
    }

    /// The authentication half of [`DingtalkAdapter::open_event`]: query
    /// parameters, the outer body, the signature, the window.
    fn verify_event_request(
        &self,
        req: &WebhookRequest<'_>,
    ) -> Result<(Value, &'static str, &EventCrypto), Rejection> {
        let (sig_name, signature) = match req.query_param("msg_signature") {
            Some(s) => ("msg_signature", s),
            None => (
                "signature",
                req.query_param("signature")
                    .ok_or(Rejection::Missing("signature"))?,
            ),
        };
        let timestamp = req
            .query_param("timestamp")
            .ok_or(Rejection::Missing("timestamp"))?;
        let nonce = req
            .query_param("nonce")
            .ok_or(Rejection::Missing("nonce"))?;
        let body: Value = serde_json::from_slice(req.body)
            .map_err(|e| Rejection::Malformed(format!("body is not JSON: {e}")))?;
        let encrypt = body
            .get("encrypt")
            .and_then(Value::as_str)
            .ok_or(Rejection::Missing("encrypt"))?;
        let ev = self.verify_event(&signature, &timestamp, &nonce, encrypt)?;
        check_replay_window(
            timestamp_secs(&timestamp)?,
            req.now_secs(),
            self.replay_window,
        )?;
        Ok((body, sig_name, ev))
    }

    fn receive_event(&self, req: &WebhookRequest<'_>) -> Result<Inbound, Rejection> {
        let (_, event, _) = self.open_event(req)?;
        let ts = now_millis(req.now).to_string();
        let success = self
            .encrypt_response(
                "success",
                &ts,
                &wxcrypt::random_nonce(),
                &wxcrypt::random_prefix(),
            )
            .ok_or(Rejection::BadSignature("event subscription not configured"))?;
        let response = WebhookResponse::json(&success);
        if CHECK_URL_EVENTS.contains(&str_field(&event, "EventType")) {
            Ok(Inbound::Answer {
                response,
                event: "check_url",
            })
        } else {
            Ok(Inbound::Skip {
                response,
                reason: "unsupported_event",
            })
        }
    }
}

impl PlatformAdapter for DingtalkAdapter {
    fn platform(&self) -> &'static str {
        "dingtalk"
    }

    fn receive(&self, req: &WebhookRequest<'_>) -> Result<Inbound, Rejection> {
        if req.method != http::Method::POST {
            return Err(Rejection::Method);
        }
        match self.kind(req)? {
            Kind::Robot(ts, sign) => {
                let body = self.open_robot(req, ts, sign)?;
                self.parse_robot(&body)
            }
            Kind::Event => self.receive_event(req),
        }
    }

    fn reply_calls(&self, msg: &PlatformMessage, text: &str) -> Result<Vec<ApiCall>, Rejection> {
        let url = msg
            .reply_to
            .get("session_webhook")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(Rejection::Missing("sessionWebhook"))?;
        check_session_webhook(url, &self.api_base)?;
        let mut call = ApiCall::post_json(
            url.to_string(),
            &json!({ "msgtype": "text", "text": { "content": text } }),
        );
        call.success = Some(("/errcode", json!(0)));
        Ok(vec![call])
    }

    /// The robot callback's JSON, or the decrypted event.
    fn payload(&self, req: &WebhookRequest<'_>) -> Result<Payload, Rejection> {
        match self.kind(req)? {
            Kind::Robot(ts, sign) => self.open_robot(req, ts, sign).map(Payload::Json),
            Kind::Event => self
                .open_event(req)
                .map(|(_, event, _)| Payload::Json(event)),
        }
    }

    fn opaque_keys(&self) -> &'static [&'static str] {
        OPAQUE_KEYS
    }

    /// A robot `msgId` must be recognised as long as its signed timestamp
    /// verifies (an hour either side), so a replayed request is a
    /// duplicate, not a new message: a day, and never less than the whole
    /// window plus a margin.
    fn dedupe_ttl(&self) -> Duration {
        MIN_DEDUPE_TTL.max(
            self.replay_window
                .saturating_mul(2)
                .saturating_add(Duration::from_secs(600)),
        )
    }

    /// A robot callback re-signed with a fresh timestamp, or an event
    /// re-encrypted and signed again in the query.
    fn reseal_payload(&self, req: &WebhookRequest<'_>, payload: &Payload) -> Option<Resealed> {
        let Payload::Json(value) = payload else {
            return None;
        };
        match self.kind(req).ok()? {
            Kind::Robot(ts, sign) => {
                self.open_robot(req, ts, sign).ok()?;
                self.sign_robot(req, value)
            }
            Kind::Event => self.seal_event(req, value),
        }
    }
}

/// Which half of the adapter a request is for.
enum Kind<'r> {
    /// A robot callback, with its `timestamp` and `sign` headers.
    Robot(&'r str, &'r str),
    /// An encrypted event subscription.
    Event,
}

impl DingtalkAdapter {
    fn kind<'r>(&self, req: &WebhookRequest<'r>) -> Result<Kind<'r>, Rejection> {
        match (req.header("timestamp"), req.header("sign")) {
            (Some(ts), Some(sign)) => Ok(Kind::Robot(ts, sign)),
            _ if self.events.is_some() && req.query_param("nonce").is_some() => Ok(Kind::Event),
            (None, _) => Err(Rejection::Missing("timestamp").unverified()),
            (Some(_), None) => Err(Rejection::Missing("sign").unverified()),
        }
    }

    /// `body` as a robot callback signed now.
    fn sign_robot(&self, req: &WebhookRequest<'_>, body: &Value) -> Option<Resealed> {
        let secret = self.app_secret.as_deref()?;
        let ts = now_millis(req.now).to_string();
        let sign = robot_sign(secret, &ts);
        Some(Resealed {
            body: Bytes::from(body.to_string()),
            headers: vec![("timestamp".to_string(), ts), ("sign".to_string(), sign)],
            query: None,
        })
    }

    /// `event` encrypted into the original outer body, with a query signed
    /// now (the signature under the parameter name the platform used).
    fn seal_event(&self, req: &WebhookRequest<'_>, event: &Value) -> Option<Resealed> {
        let (mut outer, _, sig_name) = self.open_event(req).ok()?;
        let ev = self.events.as_ref()?;
        let encrypt = ev.crypt.encrypt(
            event.to_string().as_bytes(),
            &ev.owner_key,
            &wxcrypt::random_prefix(),
        );
        let timestamp = now_millis(req.now).to_string();
        let nonce = wxcrypt::random_nonce();
        let signature = wxcrypt::msg_signature(&ev.token, &timestamp, &nonce, &encrypt);
        *outer.get_mut("encrypt")? = Value::String(encrypt);
        Some(Resealed {
            body: Bytes::from(outer.to_string()),
            headers: Vec::new(),
            query: Some(format!(
                "{sig_name}={signature}&timestamp={timestamp}&nonce={nonce}"
            )),
        })
    }
}

#[cfg(test)]
mod tests;
