//! DingTalk (钉钉) robot callbacks and encrypted event subscriptions.
//!
//! A robot callback is plain JSON signed in the `timestamp`/`sign` headers
//! with an HMAC of the app secret; the reply goes to the `sessionWebhook` URL
//! the message carries. Because that URL comes from a request body, it is
//! only ever called when its origin is exactly the configured API host, so a
//! forged or replayed body cannot turn the gateway into a proxy to anywhere.
//! Event subscriptions use the WeCom cipher ([`super::wxcrypt`]) with the
//! owner key as receive id, and every event is answered with an encrypted
//! `success`, which is also how `check_url` is passed.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
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

/// True when `url` has exactly the origin (scheme, host, port) of `api_base`.
pub fn session_webhook_allowed(url: &str, api_base: &str) -> bool {
    same_origin(url, api_base)
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
        let ev = self
            .events
            .as_ref()
            .ok_or(Rejection::BadSignature("event subscription not configured"))?;
        if !wxcrypt::verify_signature(&ev.token, timestamp, nonce, encrypt, signature) {
            return Err(Rejection::BadSignature("signature"));
        }
        Ok(ev.crypt.decrypt(encrypt, &ev.owner_key)?)
    }

    /// Verifies the robot headers; returns the parsed body.
    fn open_robot(
        &self,
        req: &WebhookRequest<'_>,
        timestamp: &str,
        sign: &str,
    ) -> Result<Value, Rejection> {
        let secret = self
            .app_secret
            .as_deref()
            .ok_or(Rejection::BadSignature("robot signing not configured"))?;
        let secs = timestamp_secs(timestamp)?;
        if !verify_robot_sign(secret, timestamp.trim(), sign) {
            return Err(Rejection::BadSignature("sign"));
        }
        check_replay_window(secs, req.now_secs(), self.replay_window)?;
        serde_json::from_slice(req.body)
            .map_err(|e| Rejection::Malformed(format!("body is not JSON: {e}")))
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
    /// signature parameter the platform used).
    fn open_event(
        &self,
        req: &WebhookRequest<'_>,
    ) -> Result<(Value, Value, &'static str), Rejection> {
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
        let plain = self.decrypt_event(&signature, &timestamp, &nonce, encrypt)?;
        check_replay_window(
            timestamp_secs(&timestamp)?,
            req.now_secs(),
            self.replay_window,
        )?;
        let event: Value = serde_json::from_slice(&plain)
            .map_err(|e| Rejection::Malformed(format!("event is not JSON: {e}")))?;
        Ok((body, event, sig_name))
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
        if !session_webhook_allowed(url, &self.api_base) {
            return Err(Rejection::Malformed(
                "sessionWebhook is not on the platform API host".into(),
            ));
        }
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
            (None, _) => Err(Rejection::Missing("timestamp")),
            (Some(_), None) => Err(Rejection::Missing("sign")),
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
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue, Method};

    fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
        v.pointer(ptr)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("vector {ptr}"))
    }

    fn vectors() -> Value {
        super::super::wxcrypt::vectors()
    }

    fn secrets(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn robot() -> DingtalkAdapter {
        DingtalkAdapter::new(&secrets(&[("app_secret", "test_app_secret")]), None).unwrap()
    }

    fn events(v: &Value) -> DingtalkAdapter {
        let p = "/dingtalk/event_crypto";
        DingtalkAdapter::new(
            &secrets(&[
                ("token", s(v, &format!("{p}/token"))),
                ("aes_key", s(v, &format!("{p}/aes_key"))),
                ("owner_key", s(v, &format!("{p}/owner_key"))),
            ]),
            None,
        )
        .unwrap()
    }

    fn ms(t: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(t as u64)
    }

    fn headers(ts: &str, sign: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("timestamp", HeaderValue::from_str(ts).unwrap());
        h.insert("sign", HeaderValue::from_str(sign).unwrap());
        h
    }

    fn robot_body(msgtype: &str, sender: &str) -> Value {
        json!({
            "msgId": "msgABC==",
            "msgtype": msgtype,
            "text": { "content": " hello bot " },
            "senderStaffId": sender,
            "senderId": "$:LWCP_v1:$abc",
            "senderNick": "Zhang San",
            "conversationId": "cidXYZ==",
            "conversationType": "2",
            "chatbotCorpId": "dingcorp",
            "chatbotUserId": "$:LWCP_v1:$bot",
            "sessionWebhook": "https://oapi.dingtalk.com/robot/sendBySession?session=abc",
            "sessionWebhookExpiredTime": 1577265836757i64,
            "isInAtList": true,
            "atUsers": [{ "dingtalkId": "$:LWCP_v1:$bot" }, { "dingtalkId": "$:LWCP_v1:$other", "staffId": "staff2" }],
        })
    }

    #[test]
    fn new_names_missing_secrets() {
        assert!(DingtalkAdapter::new(&BTreeMap::new(), None)
            .unwrap_err()
            .to_string()
            .contains("`app_secret`"));
        let err =
            DingtalkAdapter::new(&secrets(&[("token", "t"), ("aes_key", "x")]), None).unwrap_err();
        assert!(err.to_string().contains("`owner_key`"), "{err}");
        let err = DingtalkAdapter::new(
            &secrets(&[("token", "t"), ("aes_key", "short"), ("owner_key", "o")]),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("aes_key"), "{err}");
        assert!(matches!(
            err,
            AdapterConfigError::BadSecret {
                platform: "dingtalk",
                name: "aes_key",
                ..
            }
        ));
        // Messages never carry the secret's value.
        assert!(!err.to_string().contains("short"), "{err}");
    }

    #[test]
    fn robot_sign_vector() {
        let v = vectors();
        let p = "/dingtalk/robot_sign";
        let (secret, ts, sign) = (
            s(&v, &format!("{p}/app_secret")),
            s(&v, &format!("{p}/timestamp")),
            s(&v, &format!("{p}/sign")),
        );
        assert_eq!(robot_sign(secret, ts), sign);
        assert!(verify_robot_sign(secret, ts, sign));
        assert!(!verify_robot_sign(secret, "1577262236758", sign));
        assert!(!verify_robot_sign("other", ts, sign));
    }

    #[test]
    fn robot_message_round_trip_through_receive() {
        let v = vectors();
        let a = robot();
        let ts = s(&v, "/dingtalk/robot_sign/timestamp");
        let h = headers(ts, s(&v, "/dingtalk/robot_sign/sign"));
        let body = robot_body("text", "staff1").to_string();
        let now = ms(ts.parse::<i64>().unwrap() + 30 * 60 * 1000);
        let r = WebhookRequest {
            method: &Method::POST,
            query: None,
            headers: &h,
            body: body.as_bytes(),
            now,
            bearer: None,
        };
        let Inbound::Message(m) = a.receive(&r).unwrap() else {
            panic!("not a message")
        };
        assert_eq!(m.message_id, "msgABC==");
        assert_eq!(m.sender_id, "staff1");
        assert_eq!(m.sender_name, "Zhang San");
        assert_eq!(m.room_id, "cidXYZ==");
        assert_eq!(m.tenant, "dingcorp");
        assert_eq!(m.chat_type, "group");
        assert_eq!(m.text, "hello bot");
        assert_eq!(m.mentions, vec!["staff2".to_string()]);
        assert_eq!(
            m.attributes.get("is_in_at_list").map(String::as_str),
            Some("true")
        );

        // Private chat, and senderId when there is no staff id.
        let mut b = robot_body("text", "");
        b["conversationType"] = json!("1");
        let body = b.to_string();
        let r = WebhookRequest {
            body: body.as_bytes(),
            ..r
        };
        let Inbound::Message(m) = a.receive(&r).unwrap() else {
            panic!()
        };
        assert_eq!(
            (m.chat_type.as_str(), m.sender_id.as_str()),
            ("private", "$:LWCP_v1:$abc")
        );
    }

    #[test]
    fn robot_rejections_and_skips() {
        let v = vectors();
        let a = robot();
        let ts = s(&v, "/dingtalk/robot_sign/timestamp");
        let sign = s(&v, "/dingtalk/robot_sign/sign");
        let t0: i64 = ts.parse().unwrap();
        let body = robot_body("text", "staff1").to_string();
        let run = |h: &HeaderMap, body: &[u8], now: SystemTime| {
            a.receive(&WebhookRequest {
                method: &Method::POST,
                query: None,
                headers: h,
                body,
                now,
                bearer: None,
            })
        };
        let good = headers(ts, sign);
        // Stale: more than an hour either way.
        assert_eq!(
            run(&good, body.as_bytes(), ms(t0 + 3_601_000))
                .unwrap_err()
                .kind(),
            "stale_timestamp"
        );
        assert_eq!(
            run(&good, body.as_bytes(), ms(t0 - 3_601_000))
                .unwrap_err()
                .kind(),
            "stale_timestamp"
        );
        let now = ms(t0);
        assert_eq!(
            run(&headers(ts, "AAAA"), body.as_bytes(), now).unwrap_err(),
            Rejection::BadSignature("sign")
        );
        assert_eq!(
            run(&headers("1577262236758", sign), body.as_bytes(), now).unwrap_err(),
            Rejection::BadSignature("sign")
        );
        assert_eq!(
            run(&headers("abc", sign), body.as_bytes(), now)
                .unwrap_err()
                .kind(),
            "malformed"
        );
        let min = i64::MIN.to_string();
        let min_h = headers(&min, &robot_sign("test_app_secret", &min));
        assert_eq!(
            run(&min_h, body.as_bytes(), now).unwrap_err().kind(),
            "stale_timestamp"
        );
        assert_eq!(
            run(&HeaderMap::new(), body.as_bytes(), now).unwrap_err(),
            Rejection::Missing("timestamp")
        );
        let junk: Vec<u8> = (0..200).map(|_| rand::random()).collect();
        assert_eq!(run(&good, &junk, now).unwrap_err().kind(), "malformed");
        assert_eq!(run(&good, b"[1,2]", now).unwrap_err().kind(), "malformed");
        assert_eq!(
            run(&good, b"{\"msgtype\":\"text\",\"senderId\":\"u\"}", now).unwrap_err(),
            Rejection::Missing("msgId")
        );
        let skip = |b: Value| run(&good, b.to_string().as_bytes(), now).unwrap();
        let reason = |i: Inbound| match i {
            Inbound::Skip { reason, .. } => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            reason(skip(robot_body("picture", "staff1"))),
            "unsupported_msg_type"
        );
        let mut own = robot_body("text", "");
        own["senderId"] = json!("$:LWCP_v1:$bot");
        assert_eq!(reason(skip(own)), "bot_message");
        assert_eq!(
            a.receive(&WebhookRequest {
                method: &Method::GET,
                query: None,
                headers: &good,
                body: b"",
                now,
                bearer: None,
            })
            .unwrap_err(),
            Rejection::Method
        );
    }

    #[test]
    fn event_check_url_vector_and_encrypted_success() {
        let v = vectors();
        let p = "/dingtalk/event_crypto";
        let a = events(&v);
        let ts = s(&v, &format!("{p}/timestamp"));
        let enc = s(&v, &format!("{p}/encrypt"));
        let sig = s(&v, &format!("{p}/signature"));
        let nonce = s(&v, &format!("{p}/nonce"));
        assert_eq!(
            a.decrypt_event(sig, ts, nonce, enc).unwrap(),
            s(&v, &format!("{p}/plaintext")).as_bytes()
        );
        let q = format!("signature={sig}&timestamp={ts}&nonce={nonce}");
        let body = json!({ "encrypt": enc }).to_string();
        let h = HeaderMap::new();
        let now = ms(ts.parse().unwrap());
        let r = WebhookRequest {
            method: &Method::POST,
            query: Some(&q),
            headers: &h,
            body: body.as_bytes(),
            now,
            bearer: None,
        };
        let Inbound::Answer { response, event } = a.receive(&r).unwrap() else {
            panic!("not an answer")
        };
        assert_eq!(event, "check_url");
        assert_eq!(response.content_type, "application/json");
        let ans: Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(s(&ans, "/timeStamp"), ts);
        let plain = a
            .decrypt_event(
                s(&ans, "/msg_signature"),
                s(&ans, "/timeStamp"),
                s(&ans, "/nonce"),
                s(&ans, "/encrypt"),
            )
            .unwrap();
        assert_eq!(plain, b"success");
        // The other direction: our encryption of the vector plaintext verifies and decrypts.
        let mine = a
            .encrypt_response(s(&v, &format!("{p}/plaintext")), ts, nonce, &[9; 16])
            .unwrap();
        assert_eq!(
            a.decrypt_event(s(&mine, "/msg_signature"), ts, nonce, s(&mine, "/encrypt"))
                .unwrap(),
            s(&v, &format!("{p}/plaintext")).as_bytes()
        );

        // Stale, forged, wrong owner key, other events.
        assert_eq!(
            a.receive(&WebhookRequest {
                now: SystemTime::now(),
                ..r
            })
            .unwrap_err()
            .kind(),
            "stale_timestamp"
        );
        let forged = q.replace(sig, &"1".repeat(40));
        assert_eq!(
            a.receive(&WebhookRequest {
                query: Some(&forged),
                ..r
            })
            .unwrap_err()
            .kind(),
            "bad_signature"
        );
        let other_owner = DingtalkAdapter::new(
            &secrets(&[
                ("token", "123456"),
                ("aes_key", s(&v, &format!("{p}/aes_key"))),
                ("owner_key", "suiteOTHER"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(
            other_owner.receive(&r).unwrap_err(),
            Rejection::Decrypt("receive id does not match")
        );
        let ev = a
            .encrypt_response("{\"EventType\":\"user_add_org\"}", ts, "n2", &[1; 16])
            .unwrap();
        let q2 = format!(
            "msg_signature={}&timestamp={ts}&nonce=n2",
            s(&ev, "/msg_signature")
        );
        let b2 = json!({ "encrypt": s(&ev, "/encrypt") }).to_string();
        let Inbound::Skip { response, reason } = a
            .receive(&WebhookRequest {
                query: Some(&q2),
                body: b2.as_bytes(),
                ..r
            })
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(reason, "unsupported_event");
        assert!(!response.body.is_empty());
        assert_eq!(
            a.receive(&WebhookRequest { body: b"{}", ..r }).unwrap_err(),
            Rejection::Missing("encrypt")
        );
        assert_eq!(
            a.receive(&WebhookRequest {
                body: b"{\"encrypt\":",
                ..r
            })
            .unwrap_err()
            .kind(),
            "malformed"
        );
        // A robot-only route has no event path.
        assert_eq!(
            robot().receive(&r).unwrap_err(),
            Rejection::Missing("timestamp")
        );
    }

    #[test]
    fn session_webhook_origin_check() {
        let base = DEFAULT_API_BASE;
        for ok in [
            "https://oapi.dingtalk.com/robot/sendBySession?session=abc",
            "https://OAPI.DingTalk.com/robot/sendBySession",
            "https://oapi.dingtalk.com:443/robot/sendBySession",
            "HTTPS://oapi.dingtalk.com/x",
        ] {
            assert!(session_webhook_allowed(ok, base), "{ok}");
        }
        for bad in [
            "https://oapi.dingtalk.com@evil.com/robot",
            "https://user:pw@oapi.dingtalk.com/robot",
            "https://evil.com/https://oapi.dingtalk.com/",
            "https://oapi.dingtalk.com.evil.com/robot",
            "https://oapi.dingtalk.com\\@evil.com/robot",
            "https://evil.com\\oapi.dingtalk.com/",
            "http://oapi.dingtalk.com/robot",
            "https://oapi.dingtalk.com:8443/robot",
            "//oapi.dingtalk.com/robot",
            "/robot/sendBySession",
            "ftp://oapi.dingtalk.com/robot",
            "https://oapi.dingtalk.com /robot",
            "https://oapi.dingtalk.com\t/robot",
            "https://oapi%2edingtalk.com/robot",
            "https://oapi.dingtalk.com./robot",
            "https://ｏapi.dingtalk.com/robot",
            "",
            "https://",
        ] {
            assert!(!session_webhook_allowed(bad, base), "{bad}");
        }
        assert!(session_webhook_allowed(
            "http://127.0.0.1:9/robot",
            "http://127.0.0.1:9"
        ));
        assert!(!session_webhook_allowed(
            "http://127.0.0.1:10/robot",
            "http://127.0.0.1:9"
        ));
    }

    #[test]
    fn reply_calls_go_to_session_webhook_only() {
        let a = robot();
        let mut msg = PlatformMessage {
            reply_to: json!({ "session_webhook": "https://oapi.dingtalk.com/robot/sendBySession?session=abc" }),
            ..Default::default()
        };
        let calls = a.reply_calls(&msg, "hi").unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].method, Method::POST);
        assert_eq!(
            calls[0].url,
            "https://oapi.dingtalk.com/robot/sendBySession?session=abc"
        );
        assert!(calls[0].auth.is_none());
        assert!(calls[0]
            .headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("application/json")));
        assert_eq!(
            serde_json::from_slice::<Value>(&calls[0].body).unwrap(),
            json!({"msgtype":"text","text":{"content":"hi"}})
        );
        assert_eq!(calls[0].success, Some(("/errcode", json!(0))));
        msg.reply_to = json!({ "session_webhook": "https://oapi.dingtalk.com@evil.com/robot" });
        assert_eq!(a.reply_calls(&msg, "hi").unwrap_err().kind(), "malformed");
        assert_eq!(
            a.reply_calls(&PlatformMessage::default(), "hi")
                .unwrap_err(),
            Rejection::Missing("sessionWebhook")
        );
        // With a local api_base, the real host is refused.
        let local = DingtalkAdapter::new(
            &secrets(&[("app_secret", "x")]),
            Some("http://127.0.0.1:9/"),
        )
        .unwrap();
        msg.reply_to =
            json!({ "session_webhook": "https://oapi.dingtalk.com/robot/sendBySession" });
        assert!(local.reply_calls(&msg, "hi").is_err());
        assert!(a.inline_reply(&msg, "x", SystemTime::now()).is_none());
        assert_eq!(a.ack(&msg), WebhookResponse::empty());
    }

    #[test]
    fn robot_payload_reseal_round_trip() {
        let a = robot();
        let t0 = 1_700_000_000_000i64;
        let ts = t0.to_string();
        let h = headers(&ts, &robot_sign("test_app_secret", &ts));
        let mut b = robot_body("text", "staff1");
        b["text"]["content"] = json!("card 4111");
        b["conversationTitle"] = json!("team 4111");
        b["msgId"] = json!("msg4111");
        let body = b.to_string();
        let r = WebhookRequest {
            method: &Method::POST,
            query: None,
            headers: &h,
            body: body.as_bytes(),
            now: ms(t0 + 1_000),
            bearer: None,
        };
        let mut p = a.payload(&r).unwrap();
        let mut seen = Vec::new();
        p.texts_mut(a.opaque_keys(), &mut |s: &mut String| {
            if s.contains("4111") {
                seen.push(s.clone());
                *s = s.replace("4111", "****");
            }
        })
        .unwrap();
        seen.sort();
        assert_eq!(seen, ["card 4111", "team 4111"]);
        let sealed = a.reseal_payload(&r, &p).unwrap();
        let mut h2 = HeaderMap::new();
        for (k, v) in &sealed.headers {
            h2.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        assert_eq!(h2.get("timestamp").unwrap(), &(t0 + 1_000).to_string());
        let Inbound::Message(m) = a
            .receive(&WebhookRequest {
                headers: &h2,
                body: &sealed.body,
                ..r
            })
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(m.text, "card ****");
        assert_eq!(m.message_id, "msg4111");
        assert_eq!(
            m.reply_to["session_webhook"],
            "https://oapi.dingtalk.com/robot/sendBySession?session=abc"
        );
        let bad = headers(&ts, "AAAA");
        assert!(a
            .reseal_payload(&WebhookRequest { headers: &bad, ..r }, &p)
            .is_none());
    }

    #[test]
    fn event_payload_is_decrypted_and_reseals() {
        let v = vectors();
        let a = events(&v);
        let now = SystemTime::now();
        let ts = now_millis(now).to_string();
        let sealed = a
            .encrypt_response(
                "{\"EventType\":\"user_add_org\",\"Name\":\"n 4111\"}",
                &ts,
                "n1",
                &[1; 16],
            )
            .unwrap();
        let q = format!(
            "signature={}&timestamp={ts}&nonce=n1",
            s(&sealed, "/msg_signature")
        );
        let body = json!({ "encrypt": s(&sealed, "/encrypt") }).to_string();
        let h = HeaderMap::new();
        let r = WebhookRequest {
            method: &Method::POST,
            query: Some(&q),
            headers: &h,
            body: body.as_bytes(),
            now,
            bearer: None,
        };
        let mut p = a.payload(&r).unwrap();
        assert_eq!(
            p,
            Payload::Json(json!({"EventType":"user_add_org","Name":"n 4111"}))
        );
        p.texts_mut(a.opaque_keys(), &mut |s: &mut String| {
            *s = s.replace("4111", "****")
        })
        .unwrap();
        let resealed = a.reseal_payload(&r, &p).unwrap();
        let q2 = resealed.query.clone().unwrap();
        assert!(q2.starts_with("signature="), "{q2}");
        let r2 = WebhookRequest {
            query: Some(&q2),
            body: &resealed.body,
            ..r
        };
        assert!(matches!(a.receive(&r2).unwrap(), Inbound::Skip { .. }));
        assert_eq!(
            a.payload(&r2).unwrap(),
            Payload::Json(json!({"EventType":"user_add_org","Name":"n ****"}))
        );
        // A robot-only route cannot reseal events.
        assert!(robot().reseal_payload(&r, &p).is_none());
    }
}
