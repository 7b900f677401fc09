//! WeCom (企业微信) self-built app callbacks.
//!
//! WeCom verifies the callback URL with a signed, encrypted `echostr` (GET),
//! then POSTs encrypted XML messages signed in the query string. The cipher
//! and signature live in [`super::wxcrypt`], shared with DingTalk; this module
//! owns the XML handling (which refuses DOCTYPE and entities, because the XML
//! comes from the network), the message mapping, the passive encrypted reply
//! and the `message/send` fallback.
//!
//! Nothing is decrypted before `msg_signature` and the timestamp window
//! verified, and every failure until then (a missing parameter, an outer
//! envelope that cannot be read, a bad signature, a stale timestamp) and of
//! the decryption itself (bad base64, padding, receive id) answers alike
//! ([`Rejection::is_unauthenticated`]); the audit line keeps the reason.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Method;

use super::adapter::{
    check_replay_window, optional_secret, required_secret, unix_secs, AdapterConfigError, ApiCall,
    ChatType, Inbound, Payload, PlatformAdapter, PlatformMessage, Rejection, Resealed,
    TokenPlacement, TokenSource, WebhookRequest, WebhookResponse,
};
use super::wxcrypt::{self, WxCrypt};
use crate::percent::encode as percent_encode;

/// Default API base URL.
pub const DEFAULT_API_BASE: &str = "https://qyapi.weixin.qq.com";
/// Default replay window on the signed `timestamp` query parameter.
pub const DEFAULT_REPLAY_WINDOW: Duration = Duration::from_secs(300);

pub use super::xml::{cdata, parse_xml, XmlField, XmlFields};

/// Elements of WeCom messages (decrypted) and passive replies that hold ids,
/// timestamps, media references or enum-like values. `Content`, `Title`,
/// `Description`, `Url`, `Label`, `PicUrl` and every other element are
/// scanned.
pub const OPAQUE_ELEMENTS: &[&str] = &[
    "ToUserName",
    "FromUserName",
    "CreateTime",
    "MsgType",
    "MsgId",
    "AgentID",
    "Event",
    "EventKey",
    "ChangeType",
    "MediaId",
    "ThumbMediaId",
    "Format",
    "Encrypt",
    "MsgSignature",
    "TimeStamp",
    "Nonce",
];

/// The inner plaintext of a passive text reply.
pub fn text_reply_xml(to_user: &str, from: &str, create_time: i64, content: &str) -> String {
    format!(
        "<xml><ToUserName>{}</ToUserName><FromUserName>{}</FromUserName><CreateTime>{create_time}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content>{}</Content></xml>",
        cdata(to_user),
        cdata(from),
        cdata(content)
    )
}

/// A base64 query value survives a sender that did not escape `+`.
fn b64_query_param(req: &WebhookRequest<'_>, name: &'static str) -> Result<String, Rejection> {
    Ok(req
        .query_param(name)
        .ok_or(Rejection::Missing(name))?
        .replace(' ', "+"))
}

/// Signature parameters from the query string.
struct Signed {
    signature: String,
    timestamp: String,
    nonce: String,
}

/// A WeCom app route.
#[derive(Debug, Clone)]
pub struct WecomAdapter {
    token: String,
    crypt: WxCrypt,
    corp_id: String,
    agent_id: Option<String>,
    corp_secret: Option<String>,
    api_base: String,
    replay_window: Duration,
}

impl WecomAdapter {
    /// Builds the adapter from the route's secrets (`token`, `encoding_aes_key`,
    /// `corp_id`; `agent_id` and `corp_secret` for the `message/send` fallback).
    pub fn new(
        secrets: &BTreeMap<String, String>,
        api_base: Option<&str>,
    ) -> Result<Self, AdapterConfigError> {
        let token = required_secret(secrets, "wecom", "token")?.to_string();
        let key = required_secret(secrets, "wecom", "encoding_aes_key")?;
        let crypt =
            WxCrypt::from_encoding_aes_key(key).map_err(|e| AdapterConfigError::BadSecret {
                platform: "wecom",
                name: "encoding_aes_key",
                reason: format!("is not the EncodingAESKey from the WeCom console: {e}"),
            })?;
        let corp_id = required_secret(secrets, "wecom", "corp_id")?.to_string();
        Ok(Self {
            token,
            crypt,
            corp_id,
            agent_id: optional_secret(secrets, "agent_id").map(str::to_string),
            corp_secret: optional_secret(secrets, "corp_secret").map(str::to_string),
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

    /// Checks `msg_signature` and decrypts `encrypt` (no replay check: pure,
    /// so published vectors with old timestamps can be tested).
    pub fn verify_and_decrypt(
        &self,
        signature: &str,
        timestamp: &str,
        nonce: &str,
        encrypt: &str,
    ) -> Result<Vec<u8>, Rejection> {
        self.verify(signature, timestamp, nonce, encrypt)?;
        Ok(self.crypt.decrypt(encrypt, &self.corp_id)?)
    }

    /// Checks `msg_signature` over `encrypt`; nothing is decrypted.
    fn verify(
        &self,
        signature: &str,
        timestamp: &str,
        nonce: &str,
        encrypt: &str,
    ) -> Result<(), Rejection> {
        if !wxcrypt::verify_signature(&self.token, timestamp, nonce, encrypt, signature) {
            return Err(Rejection::BadSignature("msg_signature"));
        }
        Ok(())
    }

    /// The authentication of a request whose signed ciphertext is
    /// `encrypt`: signature, then window. Any failure answers alike.
    fn authenticate(
        &self,
        req: &WebhookRequest<'_>,
        signed: &Signed,
        encrypt: &str,
    ) -> Result<(), Rejection> {
        self.verify(&signed.signature, &signed.timestamp, &signed.nonce, encrypt)
            .and_then(|()| self.check_time(req, &signed.timestamp))
            .map_err(Rejection::unverified)
    }

    /// The passive encrypted reply envelope for `reply_xml`; `random` is the
    /// 16-byte cipher prefix (random in production).
    pub fn encrypt_reply(
        &self,
        reply_xml: &str,
        timestamp: &str,
        nonce: &str,
        random: &[u8; 16],
    ) -> String {
        let encrypt = self
            .crypt
            .encrypt(reply_xml.as_bytes(), &self.corp_id, random);
        let signature = wxcrypt::msg_signature(&self.token, timestamp, nonce, &encrypt);
        format!(
            "<xml><Encrypt>{}</Encrypt><MsgSignature>{}</MsgSignature><TimeStamp>{timestamp}</TimeStamp><Nonce>{}</Nonce></xml>",
            cdata(&encrypt),
            cdata(&signature),
            cdata(nonce)
        )
    }

    fn signed(&self, req: &WebhookRequest<'_>) -> Result<Signed, Rejection> {
        let signature = req
            .query_param("msg_signature")
            .ok_or(Rejection::Missing("msg_signature"))?;
        let timestamp = req
            .query_param("timestamp")
            .ok_or(Rejection::Missing("timestamp"))?;
        let nonce = req
            .query_param("nonce")
            .ok_or(Rejection::Missing("nonce"))?;
        Ok(Signed {
            signature,
            timestamp,
            nonce,
        })
    }

    fn check_time(&self, req: &WebhookRequest<'_>, timestamp: &str) -> Result<(), Rejection> {
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| Rejection::Malformed("timestamp is not a number".into()))?;
        check_replay_window(ts, req.now_secs(), self.replay_window)
    }

    /// The signature parameters and the outer envelope of a POST: all read
    /// before authentication, so any failure answers alike.
    fn signed_post(&self, req: &WebhookRequest<'_>) -> Result<(Signed, XmlFields), Rejection> {
        let signed = self.signed(req)?;
        let body = std::str::from_utf8(req.body)
            .map_err(|_| Rejection::Malformed("body is not UTF-8".into()))?;
        let outer = parse_xml(body)?;
        if outer.get("Encrypt").is_none() {
            return Err(Rejection::Missing("Encrypt"));
        }
        Ok((signed, outer))
    }

    /// Verifies, decrypts and parses a POSTed message: (outer, inner plaintext, inner fields).
    fn open_post(
        &self,
        req: &WebhookRequest<'_>,
    ) -> Result<(XmlFields, String, XmlFields), Rejection> {
        let (signed, outer) = self.signed_post(req).map_err(Rejection::unverified)?;
        let encrypt = outer.get("Encrypt").unwrap_or_default();
        self.authenticate(req, &signed, encrypt)?;
        let plain = self.crypt.decrypt(encrypt, &self.corp_id)?;
        let plain = String::from_utf8(plain)
            .map_err(|_| Rejection::Malformed("plaintext is not UTF-8".into()))?;
        let inner = parse_xml(&plain)?;
        Ok((outer, plain, inner))
    }

    fn verify_url(&self, req: &WebhookRequest<'_>) -> Result<Inbound, Rejection> {
        let (signed, echostr) = self
            .signed(req)
            .and_then(|s| Ok((s, b64_query_param(req, "echostr")?)))
            .map_err(Rejection::unverified)?;
        self.authenticate(req, &signed, &echostr)?;
        let plain = self.crypt.decrypt(&echostr, &self.corp_id)?;
        let plain = String::from_utf8(plain)
            .map_err(|_| Rejection::Malformed("echostr is not UTF-8".into()))?;
        Ok(Inbound::Answer {
            response: WebhookResponse::text(plain),
            event: "url_verification",
        })
    }

    /// Maps a decrypted inner message to an [`Inbound`].
    pub fn parse_message(&self, inner: &XmlFields) -> Result<Inbound, Rejection> {
        let skip = |reason| Inbound::Skip {
            response: WebhookResponse::empty(),
            reason,
        };
        match inner.get("MsgType").ok_or(Rejection::Missing("MsgType"))? {
            "text" => {}
            "event" => return Ok(skip("event")),
            _ => return Ok(skip("unsupported_msg_type")),
        }
        let from = inner
            .get("FromUserName")
            .filter(|s| !s.is_empty())
            .ok_or(Rejection::Missing("FromUserName"))?;
        let msg_id = inner
            .get("MsgId")
            .filter(|s| !s.is_empty())
            .ok_or(Rejection::Missing("MsgId"))?;
        let content = inner.get("Content").ok_or(Rejection::Missing("Content"))?;
        let agent_id = inner.get("AgentID").unwrap_or_default();
        let mut attributes = BTreeMap::new();
        if !agent_id.is_empty() {
            attributes.insert("agent_id".to_string(), agent_id.to_string());
        }
        if let Some(t) = inner.get("CreateTime") {
            attributes.insert("create_time".to_string(), t.to_string());
        }
        Ok(Inbound::Message(Box::new(PlatformMessage {
            message_id: msg_id.to_string(),
            tenant: inner.get("ToUserName").unwrap_or(&self.corp_id).to_string(),
            sender_id: from.to_string(),
            sender_name: String::new(),
            // An app conversation is the one-to-one chat between the user and the app.
            room_id: from.to_string(),
            thread_id: String::new(),
            chat_type: ChatType::Private,
            text: content.trim().to_string(),
            mentions: Vec::new(),
            attributes,
            reply_to: serde_json::json!({ "user": from, "agent_id": agent_id }),
            command: None,
            principal: None,
        })))
    }

    /// The original outer body with `inner` encrypted into its `Encrypt`
    /// element, and a query signed for it with a fresh timestamp and nonce.
    fn seal_post(
        &self,
        req: &WebhookRequest<'_>,
        outer: &XmlFields,
        inner: &str,
    ) -> Option<Resealed> {
        let body = std::str::from_utf8(req.body).ok()?;
        let enc_field = outer.field("Encrypt")?;
        let encrypt =
            self.crypt
                .encrypt(inner.as_bytes(), &self.corp_id, &wxcrypt::random_prefix());
        let new_body = format!(
            "{}{}{}",
            body.get(..enc_field.span.start)?,
            cdata(&encrypt),
            body.get(enc_field.span.end..)?
        );
        let timestamp = unix_secs(req.now).to_string();
        let nonce = wxcrypt::random_nonce();
        let signature = wxcrypt::msg_signature(&self.token, &timestamp, &nonce, &encrypt);
        let query = format!("msg_signature={signature}&timestamp={timestamp}&nonce={nonce}");
        Some(Resealed {
            body: Bytes::from(new_body),
            headers: Vec::new(),
            query: Some(query),
        })
    }

    /// Opens a passive reply (`<xml><Encrypt>…<MsgSignature>…`): the
    /// signature is checked and the inner XML returned.
    fn open_reply(&self, xml: &str) -> Result<String, Rejection> {
        let outer = parse_xml(xml)?;
        let field = |name: &'static str| outer.get(name).ok_or(Rejection::Missing(name));
        let plain = self.verify_and_decrypt(
            field("MsgSignature")?,
            field("TimeStamp")?,
            field("Nonce")?,
            field("Encrypt")?,
        )?;
        String::from_utf8(plain).map_err(|_| Rejection::Malformed("reply is not UTF-8".into()))
    }

    fn token_source(&self) -> Result<TokenSource, Rejection> {
        let secret = self
            .corp_secret
            .as_deref()
            .ok_or(Rejection::Missing("corp_secret"))?;
        let url = format!(
            "{}/cgi-bin/gettoken?corpid={}&corpsecret={}",
            self.api_base,
            percent_encode(&self.corp_id),
            percent_encode(secret)
        );
        Ok(TokenSource {
            cache_key: format!(
                "wecom:{}:{}",
                self.corp_id,
                self.agent_id.as_deref().unwrap_or("")
            ),
            fetch: ApiCall {
                method: Method::GET,
                url,
                headers: Vec::new(),
                body: Bytes::new(),
                auth: None,
                success: Some(("/errcode", serde_json::json!(0))),
            },
            token_pointer: "/access_token",
            expires_in_pointer: "/expires_in",
            placement: TokenPlacement::QueryParam("access_token"),
        })
    }
}

impl PlatformAdapter for WecomAdapter {
    fn platform(&self) -> &'static str {
        "wecom"
    }

    fn methods(&self) -> &'static [Method] {
        &[Method::GET, Method::POST]
    }

    fn receive(&self, req: &WebhookRequest<'_>) -> Result<Inbound, Rejection> {
        match *req.method {
            Method::GET => self.verify_url(req),
            Method::POST => {
                let (_, _, inner) = self.open_post(req)?;
                self.parse_message(&inner)
            }
            _ => Err(Rejection::Method),
        }
    }

    fn inline_reply(
        &self,
        msg: &PlatformMessage,
        text: &str,
        now: SystemTime,
    ) -> Option<WebhookResponse> {
        let user = msg.reply_to.get("user")?.as_str()?;
        let now = unix_secs(now);
        let reply = text_reply_xml(user, &self.corp_id, now, text);
        let xml = self.encrypt_reply(
            &reply,
            &now.to_string(),
            &wxcrypt::random_nonce(),
            &wxcrypt::random_prefix(),
        );
        Some(WebhookResponse::xml(xml))
    }

    fn ack(&self, _msg: &PlatformMessage) -> WebhookResponse {
        WebhookResponse::empty()
    }

    fn reply_calls(&self, msg: &PlatformMessage, text: &str) -> Result<Vec<ApiCall>, Rejection> {
        let user = msg
            .reply_to
            .get("user")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or(Rejection::Missing("reply_to.user"))?;
        let agent_id = msg
            .reply_to
            .get("agent_id")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .or(self.agent_id.as_deref())
            .ok_or(Rejection::Missing("agent_id"))?;
        let agent: serde_json::Value = agent_id
            .parse::<u64>()
            .map(Into::into)
            .map_err(|_| Rejection::Malformed("agent_id is not a number".into()))?;
        let body = serde_json::json!({
            "touser": user,
            "msgtype": "text",
            "agentid": agent,
            "text": { "content": text },
        });
        let mut call = ApiCall::post_json(format!("{}/cgi-bin/message/send", self.api_base), &body);
        call.auth = Some(Box::new(self.token_source()?));
        call.success = Some(("/errcode", serde_json::json!(0)));
        Ok(vec![call])
    }

    /// The decrypted inner XML of a message; a GET (URL verification)
    /// carries nothing to read.
    fn payload(&self, req: &WebhookRequest<'_>) -> Result<Payload, Rejection> {
        match *req.method {
            Method::POST => Ok(Payload::Xml(self.open_post(req)?.1)),
            _ => Ok(Payload::Empty),
        }
    }

    fn opaque_keys(&self) -> &'static [&'static str] {
        OPAQUE_ELEMENTS
    }

    /// Encrypts the (masked) inner XML into the original envelope and signs
    /// the query again.
    fn reseal_payload(&self, req: &WebhookRequest<'_>, payload: &Payload) -> Option<Resealed> {
        let Payload::Xml(inner) = payload else {
            return None;
        };
        let (outer, _, _) = self.open_post(req).ok()?;
        self.seal_post(req, &outer, inner)
    }

    /// A passive reply is encrypted: an empty answer stays empty, an
    /// encrypted envelope opens to its inner XML (its signature checked),
    /// and anything else is read as plain text (WeCom ignores it).
    fn open_answer(&self, _content_type: Option<&str>, body: &[u8]) -> Result<Payload, Rejection> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Payload::Empty);
        }
        let text = std::str::from_utf8(body)
            .map_err(|_| Rejection::Malformed("answer is not UTF-8".into()))?;
        match parse_xml(text) {
            Ok(outer) if outer.field("Encrypt").is_some() => {
                Ok(Payload::Xml(self.open_reply(text)?))
            }
            _ => Ok(Payload::Text(text.to_string())),
        }
    }

    /// Encrypts an opened reply again, with a fresh nonce, timestamp and
    /// signature.
    fn seal_answer(&self, answer: &Payload, now: SystemTime) -> Option<Bytes> {
        match answer {
            Payload::Xml(inner) => {
                let xml = self.encrypt_reply(
                    inner,
                    &unix_secs(now).to_string(),
                    &wxcrypt::random_nonce(),
                    &wxcrypt::random_prefix(),
                );
                Some(Bytes::from(xml))
            }
            other => other.to_bytes().ok(),
        }
    }
}

#[cfg(test)]
mod tests;
