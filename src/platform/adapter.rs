//! The contract every chat-platform adapter implements.
//!
//! An adapter is pure: it never opens a socket. It turns a fully read webhook
//! request into a verified [`Inbound`], and it describes (as [`ApiCall`]s) how
//! a reply goes back. The message path (`crate::path`) owns everything with
//! side effects: dedupe, policies, forwarding, and `crate::writeback`, which
//! executes the calls with retries and caches access tokens. Keeping adapters
//! pure is what lets every platform be tested against its published vectors
//! without a network.
//!
//! This file depends only on external crates so that an adapter can be built
//! and tested on its own.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

pub use super::payload::{percent_decode, Payload, COMMON_OPAQUE_KEYS};
pub use super::rejection::Rejection;

/// A webhook request as an adapter sees it: routed, with the whole body read.
#[derive(Debug, Clone, Copy)]
pub struct WebhookRequest<'a> {
    /// The HTTP method.
    pub method: &'a Method,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The raw body, exactly as received (signatures cover these bytes).
    pub body: &'a [u8],
    /// The gateway's clock, injected so replay windows are testable.
    pub now: SystemTime,
    /// Verifies bearer tokens for platforms authenticated that way (the
    /// generic API). It comes from the request's policy snapshot, so a
    /// reload of `security_policy.yaml` applies to the next request.
    pub bearer: Option<&'a dyn BearerVerifier>,
}

impl std::fmt::Debug for dyn BearerVerifier + '_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerVerifier")
    }
}

/// Who a verified bearer token says the caller is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    /// `sub`.
    pub id: String,
    /// `tenant`, empty when absent.
    pub tenant: String,
    /// Roles the token grants.
    pub roles: Vec<String>,
    /// `device_type`, empty when absent.
    pub device_type: String,
    /// Every scalar claim, stringified, for ABAC `claims.<name>` conditions.
    pub claims: BTreeMap<String, String>,
}

/// Checks an `Authorization` header. Implemented over the JWT policy by the
/// message path; adapters only call it.
pub trait BearerVerifier: Send + Sync {
    /// The principal, or a [`Rejection::Unauthorized`].
    fn verify(&self, authorization: Option<&str>) -> Result<Principal, Rejection>;
}

/// How a route's answers and refusals are shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// A JSON API: every reply is collected into one JSON answer, and a
    /// refusal is an HTTP error status with a JSON body.
    Api,
    /// A chat platform's webhook: answered within the platform's deadline;
    /// a policy refusal is acknowledged (200) with a notice to the user, so
    /// the platform does not redeliver into a storm.
    Webhook,
}

/// The kind of conversation a message belongs to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ChatType {
    /// One person and the bot.
    #[default]
    Private,
    /// A group chat or a guild channel.
    Group,
    /// A broadcast channel.
    Channel,
}

impl ChatType {
    /// `private`, `group` or `channel`: the Envelope's and ABAC's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatType::Private => "private",
            ChatType::Group => "group",
            ChatType::Channel => "channel",
        }
    }

    /// Parses the spelling of [`ChatType::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "private" => Some(ChatType::Private),
            "group" => Some(ChatType::Group),
            "channel" => Some(ChatType::Channel),
            _ => None,
        }
    }
}

impl PartialEq<&str> for ChatType {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for ChatType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'a> WebhookRequest<'a> {
    /// A header's value, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A query parameter, percent-decoded (`+` is a space). First one wins.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k)? == name)
                .then(|| percent_decode(v))
                .flatten()
        })
    }

    /// Seconds since the Unix epoch, per the injected clock.
    pub fn now_secs(&self) -> i64 {
        unix_secs(self.now)
    }
}

/// Seconds since the Unix epoch (0 for a clock before it).
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Checks that `timestamp` (Unix seconds) is within `window` of `now`.
///
/// Every platform that signs a timestamp uses this, so the replay window has
/// one implementation.
pub fn check_replay_window(timestamp: i64, now: i64, window: Duration) -> Result<(), Rejection> {
    let skew = now.abs_diff(timestamp);
    if skew > window.as_secs() {
        return Err(Rejection::Stale {
            skew_secs: skew,
            window_secs: window.as_secs(),
        });
    }
    Ok(())
}

/// An HTTP answer produced by an adapter or the message path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookResponse {
    /// Status code.
    pub status: StatusCode,
    /// `Content-Type` of the body; empty when there is no body.
    pub content_type: &'static str,
    /// The body.
    pub body: Bytes,
}

impl WebhookResponse {
    /// 200 with a JSON body.
    pub fn json(value: &serde_json::Value) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: "application/json",
            body: Bytes::from(value.to_string()),
        }
    }

    /// 200 with a plain-text body.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::from(text.into()),
        }
    }

    /// 200 with an XML body.
    pub fn xml(xml: impl Into<String>) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: "application/xml",
            body: Bytes::from(xml.into()),
        }
    }

    /// 200 with an empty body.
    pub fn empty() -> Self {
        Self {
            status: StatusCode::OK,
            content_type: "",
            body: Bytes::new(),
        }
    }
}

/// A verified message in platform-neutral form. The message path turns it
/// into an `Envelope`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlatformMessage {
    /// The platform's message or event id: the dedupe key.
    pub message_id: String,
    /// Workspace, team, corp or tenant id, when the platform has one.
    pub tenant: String,
    /// The platform's user id of the sender.
    pub sender_id: String,
    /// Display name of the sender, when known.
    pub sender_name: String,
    /// Chat, channel or conversation id.
    pub room_id: String,
    /// Thread id within the room, when the message is in a thread.
    pub thread_id: String,
    /// Private, group or channel.
    pub chat_type: ChatType,
    /// The message text, with platform mention markup removed.
    pub text: String,
    /// User ids mentioned in the message.
    pub mentions: Vec<String>,
    /// Extra platform attributes worth passing on (bounded, no secrets).
    pub attributes: BTreeMap<String, String>,
    /// Opaque data the same adapter needs to reply (chat id, thread, token…).
    pub reply_to: serde_json::Value,
    /// The command, lower-case without its slash, when the platform marks
    /// one in a field of its own (a Discord interaction, a Slack slash
    /// command, a Telegram `bot_command` entity). `None` lets the message
    /// path take it from a leading `/word` of the text.
    pub command: Option<String>,
    /// Who a bearer token says the sender is (the generic API).
    pub principal: Option<Principal>,
}

/// What a verified webhook request turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// The adapter answers by itself (URL challenge, PING). Never forwarded.
    Answer {
        /// What to send back.
        response: WebhookResponse,
        /// A bounded label for the audit line, e.g. `url_verification`.
        event: &'static str,
    },
    /// Verified, but not forwarded: the bot's own message, an edit we do not
    /// handle, an unsupported event type. Acknowledged so the platform stops.
    Skip {
        /// The acknowledgement.
        response: WebhookResponse,
        /// A bounded label for metrics and audit, e.g. `bot_message`.
        reason: &'static str,
    },
    /// A message for the assistant.
    Message(Box<PlatformMessage>),
}

/// Where an access token goes on an API call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPlacement {
    /// `Authorization: Bearer <token>`.
    BearerHeader,
    /// `?<name>=<token>` appended to the URL.
    QueryParam(&'static str),
}

/// How to obtain (and cache) an access token for API calls.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenSource {
    /// Cache key; unique per app credentials (never the secret itself).
    pub cache_key: String,
    /// The call that fetches the token.
    pub fetch: ApiCall,
    /// JSON pointer to the token in the fetch response, e.g. `/tenant_access_token`.
    pub token_pointer: &'static str,
    /// JSON pointer to its lifetime in seconds, e.g. `/expire`.
    pub expires_in_pointer: &'static str,
    /// Where the token goes on the call that needs it.
    pub placement: TokenPlacement,
}

/// One HTTP call to a platform API, described rather than performed.
///
/// Its `Debug` shows only the method and the URL's origin: URLs, headers and
/// bodies carry bot tokens and app secrets.
#[derive(Clone, PartialEq)]
pub struct ApiCall {
    /// HTTP method.
    pub method: Method,
    /// Absolute URL, built from the route's `api_base`.
    pub url: String,
    /// Extra headers (for example a bot token). `Content-Type` included.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Bytes,
    /// Access token to fetch and attach first, if the API needs one.
    pub auth: Option<Box<TokenSource>>,
    /// JSON pointer and expected value that mark success in a 200 answer,
    /// for APIs that report errors in the body (`/ok` = true, `/errcode` = 0).
    pub success: Option<(&'static str, serde_json::Value)>,
}

impl std::fmt::Debug for ApiCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let origin = self
            .url
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| Some(format!("{}://{}", u.scheme_str()?, u.host()?)))
            .unwrap_or_else(|| "<unparseable url>".into());
        f.debug_struct("ApiCall")
            .field("method", &self.method)
            .field("origin", &origin)
            .field("auth", &self.auth.is_some())
            .finish_non_exhaustive()
    }
}

impl ApiCall {
    /// A JSON POST with no auth.
    pub fn post_json(url: String, body: &serde_json::Value) -> Self {
        Self {
            method: Method::POST,
            url,
            headers: vec![(
                "content-type".into(),
                "application/json; charset=utf-8".into(),
            )],
            body: Bytes::from(body.to_string()),
            auth: None,
            success: None,
        }
    }
}

/// A body rewritten for passthrough after a policy stage changed it, with
/// the headers that must replace the originals (new signature, timestamp).
#[derive(Debug, Clone, PartialEq)]
pub struct Resealed {
    /// The new raw body.
    pub body: Bytes,
    /// Headers to set on the proxied request.
    pub headers: Vec<(String, String)>,
    /// A new query string, for schemes that sign in the query (WeCom).
    pub query: Option<String>,
}

/// The per-platform behaviour the message path (`crate::path`) drives.
pub trait PlatformAdapter: Send + Sync {
    /// Platform name: `feishu`, `wecom`, `dingtalk`, `slack`, `discord`, `telegram`.
    fn platform(&self) -> &'static str;

    /// Methods this platform uses on its webhook route.
    fn methods(&self) -> &'static [Method] {
        &[Method::POST]
    }

    /// Verifies authenticity (signature, token, replay window), decrypts and
    /// parses. Must never panic, whatever the bytes.
    fn receive(&self, req: &WebhookRequest<'_>) -> Result<Inbound, Rejection>;

    /// The webhook response that carries `text` as the reply, when the
    /// platform allows inline replies. The default: it does not (the reply
    /// goes through the API).
    fn inline_reply(
        &self,
        _msg: &PlatformMessage,
        _text: &str,
        _now: SystemTime,
    ) -> Option<WebhookResponse> {
        None
    }

    /// The acknowledgement when the reply goes through the API instead (or
    /// there is nothing to say inline). The default: an empty 200.
    fn ack(&self, _msg: &PlatformMessage) -> WebhookResponse {
        WebhookResponse::empty()
    }

    /// The API calls that deliver `text` as a reply to `msg`.
    fn reply_calls(&self, msg: &PlatformMessage, text: &str) -> Result<Vec<ApiCall>, Rejection>;

    /// How answers and refusals on this route are shaped.
    fn channel(&self) -> Channel {
        Channel::Webhook
    }

    /// The request's content as the bot behind a passthrough route reads
    /// it, decrypted: what passthrough's ingress DLP scans, every string of
    /// it. Called only after [`PlatformAdapter::receive`] verified `req`.
    fn payload(&self, req: &WebhookRequest<'_>) -> Result<Payload, Rejection> {
        Payload::parse(req.header("content-type"), req.body)
    }

    /// Object keys (JSON) or element names (XML) whose values are ids,
    /// signatures, tokens or timestamps: never scanned, never rewritten.
    fn opaque_keys(&self) -> &'static [&'static str] {
        COMMON_OPAQUE_KEYS
    }

    /// Rebuilds the request around `payload` (DLP masked some of its text),
    /// re-signed or re-encrypted with the route's secrets. `None` when the
    /// scheme cannot be re-signed (Discord): the message path then refuses
    /// rather than pass unmasked content.
    fn reseal_payload(&self, _req: &WebhookRequest<'_>, _payload: &Payload) -> Option<Resealed> {
        None
    }

    /// The bot's answer to a passthrough request, opened (decrypted) for
    /// egress DLP.
    fn open_answer(&self, content_type: Option<&str>, body: &[u8]) -> Result<Payload, Rejection> {
        Payload::parse(content_type, body)
    }

    /// The bytes of an answer whose text egress DLP masked, sealed again
    /// where the platform encrypts answers (WeCom). `None`: cannot be sealed,
    /// so the answer is withheld.
    fn seal_answer(&self, answer: &Payload, _now: SystemTime) -> Option<Bytes> {
        answer.to_bytes().ok()
    }

    /// The `Authorization` a passthrough request carries to the bot:
    /// `None` forwards the client's as it came (a webhook's own scheme);
    /// `Some(None)` removes it (the client's credential is moltgate's);
    /// `Some(Some(value))` replaces it.
    fn upstream_authorization(&self) -> Option<Option<String>> {
        None
    }

    /// How long redeliveries of one message id must be recognised: at least
    /// the platform's retry window.
    fn dedupe_ttl(&self) -> Duration {
        Duration::from_secs(24 * 3600)
    }

    /// How long the platform waits for the webhook response before it treats
    /// the delivery as failed. Routes may override it.
    fn default_deadline(&self) -> Duration {
        Duration::from_secs(3)
    }
}

/// Why an adapter could not be built from a route's `secrets`. Messages name
/// the secret and what to do, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdapterConfigError {
    /// The platform is not one a route in `moltgate.yaml` can name.
    #[error("platform {platform} is declared by a file in the policies' adapters/ directory, not by a route in moltgate.yaml")]
    NotConfigurable {
        /// The platform.
        platform: &'static str,
    },
    /// A required secret is absent or empty.
    #[error("platform {platform} needs secret `{name}`: set it under the route's `secrets`")]
    MissingSecret {
        /// `feishu`, `wecom`, …
        platform: &'static str,
        /// The secret's name.
        name: &'static str,
    },
    /// A secret is set but unusable.
    #[error("platform {platform}: secret `{name}` {reason}")]
    BadSecret {
        /// `feishu`, `wecom`, …
        platform: &'static str,
        /// The secret's name.
        name: &'static str,
        /// What is wrong and what a valid value looks like (never the value).
        reason: String,
    },
    /// Some secrets of a set that only works together are missing.
    #[error("platform {platform} needs secret `{name}` too: {group} go together ({purpose})")]
    IncompleteGroup {
        /// `dingtalk`.
        platform: &'static str,
        /// The first missing secret.
        name: &'static str,
        /// The whole set, for the message.
        group: &'static str,
        /// What the set is for.
        purpose: &'static str,
    },
    /// None of the alternative ways to authenticate the platform is configured.
    #[error("platform {platform} needs {alternatives}: set them under the route's `secrets`")]
    NoCredentials {
        /// `dingtalk`.
        platform: &'static str,
        /// The alternatives, for the message.
        alternatives: &'static str,
    },
}

/// Reads one secret from a route's `secrets`, required.
pub fn required_secret<'s>(
    secrets: &'s BTreeMap<String, String>,
    platform: &'static str,
    name: &'static str,
) -> Result<&'s str, AdapterConfigError> {
    match secrets.get(name).map(String::as_str) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(AdapterConfigError::MissingSecret { platform, name }),
    }
}

/// Reads one optional secret; empty counts as absent.
pub fn optional_secret<'s>(secrets: &'s BTreeMap<String, String>, name: &str) -> Option<&'s str> {
    secrets
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// Scheme, host and effective port of an absolute http(s) URL, refusing
/// anything a lenient client might read differently (userinfo, backslashes,
/// spaces, control or non-ASCII characters).
fn origin(url: &str) -> Option<(String, String, u16)> {
    if url.is_empty()
        || url.len() > 2048
        || !url.bytes().all(|b| b.is_ascii_graphic())
        || url.contains(['\\', '@'])
    {
        return None;
    }
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let authority = uri.authority()?;
    let host = authority.host().to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    Some((scheme, host, authority.port_u16().unwrap_or(default_port)))
}

/// True when `url` has exactly the origin (scheme, host, port) of `base`.
/// Reply URLs that arrive in a request body (DingTalk's `sessionWebhook`,
/// Slack's `response_url`) are only called when this holds, so a body can
/// never point the gateway anywhere else.
pub fn same_origin(url: &str, base: &str) -> bool {
    match (origin(url), origin(base)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}
