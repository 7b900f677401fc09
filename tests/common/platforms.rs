//! Signed (and, where the platform encrypts, encrypted) requests for every
//! platform, as the platform itself would send them, plus the reverse: the
//! plaintext of what a bot or a platform received (decrypted, form-decoded).
//!
//! The schemes are implemented here from the platforms' documentation,
//! independently of the gateway's own code, so a test never checks the
//! gateway's crypto against itself. Each platform module has a `secrets()`
//! for the route's YAML, a builder for its payload with the text-bearing
//! fields left to the caller, and a `seal` that signs (and encrypts) it.
#![allow(dead_code)]

use aes::cipher::block_padding::{NoPadding, Pkcs7};
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::{alphabet, Engine};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// One request as the platform sends it: the query string (without `?`,
/// empty when none), the headers (content type included) and the body.
#[derive(Debug, Clone)]
pub struct Signed {
    pub query: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Signed {
    fn json(headers: Vec<(&'static str, String)>, body: Vec<u8>) -> Self {
        let mut headers = headers;
        headers.push(("content-type", "application/json".into()));
        Self {
            query: String::new(),
            headers,
            body,
        }
    }
}

/// The text a person or a bot could read in `body` as `platform` sent it:
/// decrypted (Feishu, WeCom, DingTalk event crypto), form-decoded (Slack
/// slash commands), else the body itself. Encrypted parts are appended to
/// the outer text, so nothing is lost.
pub fn plaintext(platform: &str, body: &[u8]) -> String {
    let raw = String::from_utf8_lossy(body).to_string();
    let opened = match platform {
        "feishu" => feishu::open(&raw),
        "wecom" => wecom::open(&raw),
        "dingtalk" => dingtalk::open(&raw),
        "slack" if !raw.trim_start().starts_with('{') => Some(form_decode(&raw)),
        _ => None,
    };
    match opened {
        Some(inner) => format!("{raw}\n{inner}"),
        None => raw,
    }
}

/// The route's `secrets:` flow map for `platform` (empty for `generic`).
pub fn secrets(platform: &str) -> String {
    match platform {
        "telegram" => telegram::secrets(),
        "slack" => slack::secrets(),
        "discord" => discord::secrets(),
        "feishu" => feishu::secrets(),
        "wecom" => wecom::secrets(),
        "dingtalk" => dingtalk::secrets(),
        _ => "{}".into(),
    }
}

pub fn now_secs() -> u64 {
    super::now_secs()
}

pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `application/x-www-form-urlencoded` encoding of `pairs`.
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    char::from(b).to_string()
                }
                b' ' => "+".into(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Decodes a form body (`+` and `%XX`); invalid escapes are kept as written.
pub fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

// ------------------------------------------------------------- Telegram ----

/// Telegram: the `setWebhook` secret token echoed in a header.
pub mod telegram {
    use super::*;

    pub const SECRET: &str = "mp_tg-secret-token";
    pub const BOT_TOKEN: &str = "4242:mp-test-bot-token";

    pub fn secrets() -> String {
        format!("{{ secret_token: \"{SECRET}\", bot_token: \"{BOT_TOKEN}\" }}")
    }

    /// An update whose `message` is a private chat message from `from`
    /// with the fields of `message` (text, caption, entities, ...) merged in.
    pub fn update(update_id: u64, from: &str, message: Value) -> Value {
        let from_id: i64 = from.parse().expect("Telegram user ids are numbers");
        let mut m = json!({
            "message_id": update_id % 100_000, "date": now_secs(),
            "from": {"id": from_id, "is_bot": false, "first_name": "Ada"},
            "chat": {"id": from_id, "type": "private", "first_name": "Ada"}
        });
        for (k, v) in message.as_object().expect("message fields").iter() {
            m[k] = v.clone();
        }
        json!({ "update_id": update_id, "message": m })
    }

    pub fn seal(update: &Value) -> Signed {
        Signed::json(
            vec![("x-telegram-bot-api-secret-token", SECRET.into())],
            update.to_string().into_bytes(),
        )
    }
}

// ---------------------------------------------------------------- Slack ----

/// Slack: `v0` HMAC-SHA256 over `v0:<timestamp>:<body>`.
pub mod slack {
    use super::*;

    pub const SIGNING_SECRET: &str = "mp-slack-signing-secret";
    pub const BOT_TOKEN: &str = "xoxb-mp-test-bot-token";

    pub fn secrets() -> String {
        format!("{{ signing_secret: \"{SIGNING_SECRET}\", bot_token: \"{BOT_TOKEN}\" }}")
    }

    pub fn signature(secret: &str, ts: &str, body: &[u8]) -> String {
        let mut base = format!("v0:{ts}:").into_bytes();
        base.extend_from_slice(body);
        format!("v0={}", hex::encode(hmac_sha256(secret.as_bytes(), &base)))
    }

    /// An `event_callback` carrying a direct `message` from `user`, with the
    /// fields of `event` (text, blocks, attachments, ...) merged in.
    pub fn message(event_id: &str, user: &str, event: Value) -> Value {
        let mut e = json!({
            "type": "message", "channel": "D0MP00001", "channel_type": "im", "user": user,
            "ts": format!("{}.000100", now_secs()), "team": "T0MP"
        });
        for (k, v) in event.as_object().expect("event fields").iter() {
            e[k] = v.clone();
        }
        json!({
            "token": "unused", "team_id": "T0MP", "api_app_id": "A0MP", "type": "event_callback",
            "event_id": event_id, "event_time": now_secs(), "event": e
        })
    }

    /// A slash command form body: `/command text` typed by `user`.
    pub fn slash_command(
        trigger_id: &str,
        user: &str,
        command: &str,
        text: &str,
        response_url: &str,
    ) -> Vec<u8> {
        form_encode(&[
            ("token", "unused"),
            ("team_id", "T0MP"),
            ("team_domain", "moltgate-tests"),
            ("channel_id", "D0MP00001"),
            ("channel_name", "directmessage"),
            ("user_id", user),
            ("user_name", "ada"),
            ("command", command),
            ("text", text),
            ("api_app_id", "A0MP"),
            ("is_enterprise_install", "false"),
            ("response_url", response_url),
            ("trigger_id", trigger_id),
        ])
        .into_bytes()
    }

    /// Signs a JSON event body.
    pub fn seal(event: &Value) -> Signed {
        seal_bytes(event.to_string().into_bytes(), "application/json")
    }

    /// Signs a form body (slash commands).
    pub fn seal_form(body: Vec<u8>) -> Signed {
        seal_bytes(body, "application/x-www-form-urlencoded")
    }

    fn seal_bytes(body: Vec<u8>, content_type: &str) -> Signed {
        let ts = now_secs().to_string();
        let sig = signature(SIGNING_SECRET, &ts, &body);
        Signed {
            query: String::new(),
            headers: vec![
                ("content-type", content_type.into()),
                ("x-slack-request-timestamp", ts),
                ("x-slack-signature", sig),
            ],
            body,
        }
    }
}

// -------------------------------------------------------------- Discord ----

/// Discord: Ed25519 over `<timestamp><body>`.
pub mod discord {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    pub const APPLICATION_ID: &str = "424200000000000001";

    pub fn key() -> SigningKey {
        SigningKey::from_bytes(&[23u8; 32])
    }

    pub fn secrets() -> String {
        let public_key = hex::encode(key().verifying_key().to_bytes());
        format!("{{ public_key: \"{public_key}\", application_id: \"{APPLICATION_ID}\" }}")
    }

    /// An APPLICATION_COMMAND interaction in a DM from `user` with `data`
    /// (name, type, options, resolved).
    pub fn command(id: &str, user: &str, data: Value) -> Value {
        json!({
            "id": id, "application_id": APPLICATION_ID, "type": 2,
            "token": format!("tok-{id}"), "version": 1,
            "channel_id": "555000", "channel": {"id": "555000", "type": 1},
            "user": {"id": user, "username": "ada", "global_name": "Ada"},
            "context": 1, "data": data
        })
    }

    pub fn seal(interaction: &Value) -> Signed {
        let body = interaction.to_string().into_bytes();
        let ts = now_secs().to_string();
        let mut msg = ts.as_bytes().to_vec();
        msg.extend_from_slice(&body);
        let sig = hex::encode(key().sign(&msg).to_bytes());
        Signed::json(
            vec![("x-signature-ed25519", sig), ("x-signature-timestamp", ts)],
            body,
        )
    }
}

// --------------------------------------------------------------- Feishu ----

/// Feishu / Lark: AES-256-CBC (key = SHA-256 of the encrypt key, IV
/// prefixed) and `X-Lark-Signature` = SHA-256(timestamp + nonce + key + body).
pub mod feishu {
    use super::*;

    pub const VERIFICATION_TOKEN: &str = "mp-fs-verification-token";
    pub const ENCRYPT_KEY: &str = "mp fs encrypt key";
    pub const APP_ID: &str = "cli_mp_test";
    pub const APP_SECRET: &str = "mp-fs-app-secret";

    pub fn secrets() -> String {
        format!(
            "{{ verification_token: \"{VERIFICATION_TOKEN}\", encrypt_key: \"{ENCRYPT_KEY}\", app_id: \"{APP_ID}\", app_secret: \"{APP_SECRET}\" }}"
        )
    }

    fn key() -> [u8; 32] {
        Sha256::digest(ENCRYPT_KEY.as_bytes()).into()
    }

    pub fn encrypt(plain: &[u8]) -> String {
        let iv: [u8; 16] = rand::random();
        let enc = cbc::Encryptor::<aes::Aes256>::new(&key().into(), &iv.into());
        let mut out = iv.to_vec();
        out.extend_from_slice(&enc.encrypt_padded_vec_mut::<Pkcs7>(plain));
        STANDARD.encode(out)
    }

    pub fn decrypt(encrypt: &str) -> Option<String> {
        let raw = STANDARD.decode(encrypt.trim()).ok()?;
        let (iv, ct) = raw.split_at_checked(16)?;
        let dec = cbc::Decryptor::<aes::Aes256>::new_from_slices(&key(), iv).ok()?;
        let plain = dec.decrypt_padded_vec_mut::<Pkcs7>(ct).ok()?;
        String::from_utf8(plain).ok()
    }

    /// A v2 `im.message.receive_v1` event in a p2p chat from `open_id`;
    /// `content` is the message's content object (serialised, as Feishu does).
    pub fn message(message_id: &str, open_id: &str, message_type: &str, content: &Value) -> Value {
        json!({
            "schema": "2.0",
            "header": {
                "event_id": format!("ev_{message_id}"), "token": VERIFICATION_TOKEN,
                "create_time": now_millis().to_string(), "event_type": "im.message.receive_v1",
                "tenant_key": "tenant_mp", "app_id": APP_ID
            },
            "event": {
                "sender": {
                    "sender_id": {"open_id": open_id, "user_id": format!("u_{open_id}"), "union_id": format!("on_{open_id}")},
                    "sender_type": "user", "tenant_key": "tenant_mp"
                },
                "message": {
                    "message_id": message_id, "root_id": "", "parent_id": "",
                    "create_time": now_millis().to_string(), "chat_id": "oc_mp_chat",
                    "chat_type": "p2p", "message_type": message_type, "content": content.to_string()
                }
            }
        })
    }

    /// Encrypts `event` into `{"encrypt": ..}` and signs that body.
    pub fn seal(event: &Value) -> Signed {
        let body = json!({ "encrypt": encrypt(event.to_string().as_bytes()) }).to_string();
        let ts = now_secs().to_string();
        let nonce = hex::encode(rand::random::<[u8; 8]>());
        let mut h = Sha256::new();
        for part in [
            ts.as_bytes(),
            nonce.as_bytes(),
            ENCRYPT_KEY.as_bytes(),
            body.as_bytes(),
        ] {
            h.update(part);
        }
        let sig = hex::encode(h.finalize());
        Signed::json(
            vec![
                ("x-lark-request-timestamp", ts),
                ("x-lark-request-nonce", nonce),
                ("x-lark-signature", sig),
            ],
            body.into_bytes(),
        )
    }

    /// The decrypted event of an `{"encrypt": ..}` body.
    pub fn open(body: &str) -> Option<String> {
        let v: Value = serde_json::from_str(body).ok()?;
        decrypt(v.get("encrypt")?.as_str()?)
    }

    /// `X-Lark-*` signature headers (and the JSON content type) over
    /// `body`, signed with `key` at `ts` (Unix seconds).
    pub fn sign(body: &[u8], key: &str, ts: u64) -> Vec<(&'static str, String)> {
        let ts = ts.to_string();
        let nonce = hex::encode(rand::random::<[u8; 8]>());
        let mut h = Sha256::new();
        for part in [ts.as_bytes(), nonce.as_bytes(), key.as_bytes(), body] {
            h.update(part);
        }
        vec![
            ("content-type", "application/json".into()),
            ("x-lark-request-timestamp", ts),
            ("x-lark-request-nonce", nonce),
            ("x-lark-signature", hex::encode(h.finalize())),
        ]
    }

    /// `{"encrypt": <ciphertext>}` with the ciphertext as given (which may
    /// be garbage), unsigned.
    pub fn envelope(ciphertext: &str) -> Vec<u8> {
        json!({ "encrypt": ciphertext }).to_string().into_bytes()
    }

    /// A ciphertext under [`ENCRYPT_KEY`] that is base64 and whole blocks
    /// but whose PKCS#7 padding is invalid (one block of zeros).
    pub fn bad_padding() -> String {
        let iv = [7u8; 16];
        let enc = cbc::Encryptor::<aes::Aes256>::new(&key().into(), &iv.into());
        let mut raw = iv.to_vec();
        raw.extend_from_slice(&enc.encrypt_padded_vec_mut::<NoPadding>(&[0u8; 16]));
        STANDARD.encode(raw)
    }

    /// The `url_verification` challenge as Feishu sends it to an app with
    /// an encrypt key: encrypted, unsigned, the token inside.
    pub fn challenge(challenge: &str, token: &str) -> Signed {
        let event = json!({ "challenge": challenge, "token": token, "type": "url_verification" });
        Signed::json(vec![], envelope(&encrypt(event.to_string().as_bytes())))
    }
}

// ------------------------------------------------- WeCom / DingTalk crypto ----

/// WXBizMsgCrypt, shared by WeCom and DingTalk event subscriptions:
/// AES-256-CBC (IV = first 16 key bytes) over random(16) + len(4, BE) +
/// message + receive id, padded PKCS#7-style to 32 bytes; SHA-1 signature
/// over the sorted token, timestamp, nonce and ciphertext.
pub mod wxcrypt {
    use super::*;

    const BLOCK: usize = 32;

    fn key(encoding_aes_key: &str) -> [u8; 32] {
        let lenient = GeneralPurpose::new(
            &alphabet::STANDARD,
            GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
        );
        let raw = lenient
            .decode(format!("{encoding_aes_key}="))
            .expect("EncodingAESKey");
        raw.try_into().expect("a 32-byte key")
    }

    pub fn encrypt(encoding_aes_key: &str, msg: &[u8], receive_id: &str) -> String {
        let key = key(encoding_aes_key);
        let mut plain = rand::random::<[u8; 16]>().to_vec();
        plain.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        plain.extend_from_slice(msg);
        plain.extend_from_slice(receive_id.as_bytes());
        let pad = BLOCK - plain.len() % BLOCK;
        plain.resize(plain.len() + pad, pad as u8);
        let iv: [u8; 16] = key[..16].try_into().unwrap();
        let enc = cbc::Encryptor::<aes::Aes256>::new(&key.into(), &iv.into());
        STANDARD.encode(enc.encrypt_padded_vec_mut::<NoPadding>(&plain))
    }

    /// The message inside `encrypt` (the receive id is not checked here).
    pub fn decrypt(encoding_aes_key: &str, encrypt: &str) -> Option<String> {
        let key = key(encoding_aes_key);
        let raw = STANDARD.decode(encrypt.trim()).ok()?;
        let iv: [u8; 16] = key[..16].try_into().unwrap();
        let dec = cbc::Decryptor::<aes::Aes256>::new(&key.into(), &iv.into());
        let plain = dec.decrypt_padded_vec_mut::<NoPadding>(&raw).ok()?;
        let pad = usize::from(*plain.last()?);
        let body = plain.get(..plain.len().checked_sub(pad)?)?;
        let len = u32::from_be_bytes(body.get(16..20)?.try_into().ok()?) as usize;
        String::from_utf8(body.get(20..20 + len)?.to_vec()).ok()
    }

    pub fn signature(token: &str, ts: &str, nonce: &str, encrypt: &str) -> String {
        let mut parts = [token, ts, nonce, encrypt];
        parts.sort_unstable();
        let mut h = Sha1::new();
        for p in parts {
            h.update(p.as_bytes());
        }
        hex::encode(h.finalize())
    }

    pub fn nonce() -> String {
        (rand::random::<u32>() % 900_000_000 + 100_000_000).to_string()
    }

    /// A ciphertext under `encoding_aes_key` that is base64 and whole
    /// blocks but decrypts to invalid padding (a block of zeros).
    pub fn bad_padding(encoding_aes_key: &str) -> String {
        let key = key(encoding_aes_key);
        let iv: [u8; 16] = key[..16].try_into().unwrap();
        let enc = cbc::Encryptor::<aes::Aes256>::new(&key.into(), &iv.into());
        STANDARD.encode(enc.encrypt_padded_vec_mut::<NoPadding>(&[0u8; BLOCK]))
    }
}

// ---------------------------------------------------------------- WeCom ----

/// WeCom: an encrypted XML envelope, signed in the query string.
pub mod wecom {
    use super::*;

    // WeCom's published sample app (token, key, corp id).
    pub const TOKEN: &str = "QDG6eK";
    pub const AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
    pub const CORP_ID: &str = "wx5823bf96d3bd56c7";
    pub const AGENT_ID: &str = "1000002";
    pub const CORP_SECRET: &str = "mp-wc-corp-secret";

    pub fn secrets() -> String {
        format!(
            "{{ token: {TOKEN}, encoding_aes_key: {AES_KEY}, corp_id: {CORP_ID}, agent_id: \"{AGENT_ID}\", corp_secret: {CORP_SECRET} }}"
        )
    }

    /// The inner XML of a message of `msg_type` from `from` with `fields`
    /// (`Content`, or `Title`/`Description`/`Url`, ...) as CDATA elements.
    pub fn message(msg_id: &str, from: &str, msg_type: &str, fields: &[(&str, &str)]) -> String {
        let fields: String = fields
            .iter()
            .map(|(k, v)| format!("<{k}><![CDATA[{v}]]></{k}>"))
            .collect();
        format!(
            "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[{from}]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[{msg_type}]]></MsgType>{fields}<MsgId>{msg_id}</MsgId><AgentID>{AGENT_ID}</AgentID></xml>",
            now_secs()
        )
    }

    /// Encrypts `inner` into the outer XML and signs it in the query.
    pub fn seal(inner: &str) -> Signed {
        let encrypt = wxcrypt::encrypt(AES_KEY, inner.as_bytes(), CORP_ID);
        let ts = now_secs().to_string();
        let nonce = wxcrypt::nonce();
        let sig = wxcrypt::signature(TOKEN, &ts, &nonce, &encrypt);
        let body = format!(
            "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt><AgentID><![CDATA[{AGENT_ID}]]></AgentID></xml>"
        );
        Signed {
            query: format!("msg_signature={sig}&timestamp={ts}&nonce={nonce}"),
            headers: vec![("content-type", "text/xml".into())],
            body: body.into_bytes(),
        }
    }

    /// A POST whose `<Encrypt>` is `encrypt` as given (any string), signed
    /// with `token` at `ts` (Unix seconds).
    pub fn seal_raw(encrypt: &str, ts: u64, token: &str) -> Signed {
        let ts = ts.to_string();
        let nonce = wxcrypt::nonce();
        let sig = wxcrypt::signature(token, &ts, &nonce, encrypt);
        Signed {
            query: format!("msg_signature={sig}&timestamp={ts}&nonce={nonce}"),
            headers: vec![("content-type", "text/xml".into())],
            body: format!("<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt><AgentID><![CDATA[{AGENT_ID}]]></AgentID></xml>").into_bytes(),
        }
    }

    /// `inner` encrypted for `receive_id` (the corp id, or another one).
    pub fn encrypt_for(inner: &str, receive_id: &str) -> String {
        wxcrypt::encrypt(AES_KEY, inner.as_bytes(), receive_id)
    }

    /// The decrypted inner XML of an outer XML with an `<Encrypt>` element
    /// (a request, or a passive reply).
    pub fn open(xml: &str) -> Option<String> {
        let start = xml.find("<Encrypt>")? + "<Encrypt>".len();
        let end = start + xml[start..].find("</Encrypt>")?;
        let inner = xml[start..end]
            .trim()
            .trim_start_matches("<![CDATA[")
            .trim_end_matches("]]>");
        wxcrypt::decrypt(AES_KEY, inner)
    }
}

// ------------------------------------------------------------- DingTalk ----

/// DingTalk: robot callbacks signed with `sign` = base64(HMAC-SHA256(secret,
/// timestamp + "\n" + secret)); event subscriptions use [`wxcrypt`].
pub mod dingtalk {
    use super::*;

    pub const APP_SECRET: &str = "mp-dt-robot-app-secret";
    pub const TOKEN: &str = "mp-dt-event-token";
    pub const AES_KEY: &str = "4g5j64qlyl3zvetqxz5jiocdr586fn2zvjpa8zls3ij";
    pub const OWNER_KEY: &str = "dingmpsuitekey";

    pub fn secrets() -> String {
        format!(
            "{{ app_secret: {APP_SECRET}, token: {TOKEN}, aes_key: {AES_KEY}, owner_key: {OWNER_KEY} }}"
        )
    }

    /// A robot callback in a private chat from staff `sender`, with the
    /// message fields of `fields` (`msgtype` and `text` / `content`) merged in.
    pub fn robot(msg_id: &str, sender: &str, session_webhook: &str, fields: Value) -> Value {
        let mut m = json!({
            "msgId": msg_id, "createAt": now_millis(), "conversationType": "1",
            "conversationId": format!("cid_{sender}"), "senderId": format!("$:LWCP_v1:${sender}"),
            "senderStaffId": sender, "senderNick": "Ada", "chatbotUserId": "$:LWCP_v1:$mpbot",
            "chatbotCorpId": "ding_mp", "isAdmin": false, "isInAtList": true,
            "sessionWebhook": session_webhook, "sessionWebhookExpiredTime": now_millis() + 3_600_000
        });
        for (k, v) in fields.as_object().expect("message fields").iter() {
            m[k] = v.clone();
        }
        m
    }

    pub fn seal_robot(message: &Value) -> Signed {
        let ts = now_millis().to_string();
        let sign = STANDARD.encode(hmac_sha256(
            APP_SECRET.as_bytes(),
            format!("{ts}\n{APP_SECRET}").as_bytes(),
        ));
        Signed::json(
            vec![("timestamp", ts), ("sign", sign)],
            message.to_string().into_bytes(),
        )
    }

    /// A robot callback with `body` as given (any bytes), signed for `ts_ms`
    /// (Unix milliseconds) with `secret`.
    pub fn seal_robot_at(body: &[u8], ts_ms: u64, secret: &str) -> Signed {
        let ts = ts_ms.to_string();
        let sign = STANDARD.encode(hmac_sha256(
            secret.as_bytes(),
            format!("{ts}\n{secret}").as_bytes(),
        ));
        Signed::json(vec![("timestamp", ts), ("sign", sign)], body.to_vec())
    }

    /// An event subscription delivery whose `encrypt` is as given (any
    /// string), signed with `token` at `ts_ms`.
    pub fn seal_event_raw(encrypt: &str, ts_ms: u64, token: &str) -> Signed {
        let ts = ts_ms.to_string();
        let nonce = wxcrypt::nonce();
        let sig = wxcrypt::signature(token, &ts, &nonce, encrypt);
        let mut s = Signed::json(
            vec![],
            json!({ "encrypt": encrypt }).to_string().into_bytes(),
        );
        s.query = format!("signature={sig}&timestamp={ts}&nonce={nonce}");
        s
    }

    /// An event subscription delivery: `event` encrypted, signed in the query.
    pub fn seal_event(event: &Value) -> Signed {
        let encrypt = wxcrypt::encrypt(AES_KEY, event.to_string().as_bytes(), OWNER_KEY);
        let ts = now_millis().to_string();
        let nonce = wxcrypt::nonce();
        let sig = wxcrypt::signature(TOKEN, &ts, &nonce, &encrypt);
        let mut s = Signed::json(
            vec![],
            json!({ "encrypt": encrypt }).to_string().into_bytes(),
        );
        s.query = format!("signature={sig}&timestamp={ts}&nonce={nonce}");
        s
    }

    /// The decrypted content of an `{"encrypt": ..}` body or answer.
    pub fn open(body: &str) -> Option<String> {
        let v: Value = serde_json::from_str(body).ok()?;
        wxcrypt::decrypt(AES_KEY, v.get("encrypt")?.as_str()?)
    }
}

// -------------------------------------------------------------- Generic ----

/// The generic HTTP API: an HS256 bearer token and the unified JSON model.
pub mod generic {
    use super::*;

    pub const ISSUER: &str = "auth.example.com";
    pub const AUDIENCE: &str = "moltbot.api";
    pub const SECRET: &str = "mp-jwt-test-secret-0123456789abcdef-Zq";

    /// The `jwt_validation` block of `security_policy.yaml` for [`token`].
    pub fn jwt_policy() -> String {
        format!(
            "jwt_validation:\n  issuer: {ISSUER}\n  audiences: [{AUDIENCE}]\n  leeway: 5\n  algorithms: [HS256]\n  secret: {SECRET}\n"
        )
    }

    /// A token for `sub`, valid for ten minutes.
    pub fn token(sub: &str) -> String {
        let now = now_secs();
        let claims =
            json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    /// A private message with `content` (text, attachments).
    pub fn message(content: Value) -> Value {
        json!({
            "sender": {"name": "Ada"},
            "content": content,
            "context": {"chat_type": "private"}
        })
    }

    pub fn seal(sub: &str, message: &Value) -> Signed {
        Signed::json(
            vec![("authorization", format!("Bearer {}", token(sub)))],
            message.to_string().into_bytes(),
        )
    }
}
