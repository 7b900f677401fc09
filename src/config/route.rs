//! `routes:` in `moltgate.yaml`: one route per exact path, the platform it
//! speaks, its mode, upstream and secrets.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::yaml::{EnvString, HumanDuration};
use super::WebSocketSettings;

/// How a route treats traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteMode {
    /// Translate to an Envelope and forward to a gRPC cluster.
    #[default]
    Translate,
    /// Verify and apply policy, then proxy the original request to an HTTP bot.
    Passthrough,
}

/// The platforms a route can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlatformKind {
    /// The JWT-authenticated HTTP API.
    Generic,
    /// Feishu / Lark.
    Feishu,
    /// WeCom (WeChat Work).
    Wecom,
    /// DingTalk.
    Dingtalk,
    /// Slack.
    Slack,
    /// Discord.
    Discord,
    /// Telegram.
    Telegram,
    /// WebSocket: moltgate's own streaming API (translate) or an inspecting
    /// proxy for a WebSocket bot gateway (passthrough).
    Websocket,
    /// OpenAI-compatible chat completions (`POST`, streamed or not).
    Openai,
    /// A platform an adapter file declares (`<policies>/adapters/*.yaml`);
    /// never written in `moltgate.yaml`.
    #[serde(skip)]
    Declarative,
}

/// Every built-in platform's name ([`PlatformKind::as_str`], but not
/// `declarative`): what identities may name, what adapters may not be called.
pub const PLATFORM_NAMES: [&str; 9] = [
    "generic",
    "feishu",
    "wecom",
    "dingtalk",
    "slack",
    "discord",
    "telegram",
    "websocket",
    "openai",
];

impl PlatformKind {
    /// The lowercase name used in metrics, envelopes and identities.
    pub fn as_str(self) -> &'static str {
        match self {
            PlatformKind::Generic => "generic",
            PlatformKind::Feishu => "feishu",
            PlatformKind::Wecom => "wecom",
            PlatformKind::Dingtalk => "dingtalk",
            PlatformKind::Slack => "slack",
            PlatformKind::Discord => "discord",
            PlatformKind::Telegram => "telegram",
            PlatformKind::Websocket => "websocket",
            PlatformKind::Openai => "openai",
            PlatformKind::Declarative => "declarative",
        }
    }
}

/// Secret names a route may carry, per DESIGN.md. A struct (not a map) so a
/// misspelt secret is a located load error instead of a silent miss.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Secrets {
    pub verification_token: Option<EnvString>,
    pub encrypt_key: Option<EnvString>,
    pub app_id: Option<EnvString>,
    pub app_secret: Option<EnvString>,
    pub token: Option<EnvString>,
    pub encoding_aes_key: Option<EnvString>,
    pub corp_id: Option<EnvString>,
    pub agent_id: Option<EnvString>,
    pub corp_secret: Option<EnvString>,
    pub aes_key: Option<EnvString>,
    pub owner_key: Option<EnvString>,
    pub signing_secret: Option<EnvString>,
    pub bot_token: Option<EnvString>,
    pub public_key: Option<EnvString>,
    pub application_id: Option<EnvString>,
    pub secret_token: Option<EnvString>,
}

impl Secrets {
    /// The secrets that are set, by name, for the platform adapters.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let pairs = [
            ("verification_token", &self.verification_token),
            ("encrypt_key", &self.encrypt_key),
            ("app_id", &self.app_id),
            ("app_secret", &self.app_secret),
            ("token", &self.token),
            ("encoding_aes_key", &self.encoding_aes_key),
            ("corp_id", &self.corp_id),
            ("agent_id", &self.agent_id),
            ("corp_secret", &self.corp_secret),
            ("aes_key", &self.aes_key),
            ("owner_key", &self.owner_key),
            ("signing_secret", &self.signing_secret),
            ("bot_token", &self.bot_token),
            ("public_key", &self.public_key),
            ("application_id", &self.application_id),
            ("secret_token", &self.secret_token),
        ];
        pairs
            .into_iter()
            .filter_map(|(k, v)| {
                v.as_ref()
                    .filter(|v| !v.is_empty())
                    .map(|v| (k.to_string(), v.0.clone()))
            })
            .collect()
    }
}

/// One route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Exact request path.
    pub path: EnvString,
    /// The platform this route speaks.
    pub platform: PlatformKind,
    /// The upstream name.
    pub upstream: EnvString,
    /// `translate` (default) or `passthrough`.
    #[serde(default)]
    pub mode: RouteMode,
    /// Platform secrets.
    #[serde(default)]
    pub secrets: Secrets,
    /// Largest accepted body, in bytes (default `limits.body`).
    #[serde(default)]
    pub body_limit: Option<usize>,
    /// How long to wait for the assistant before answering the webhook.
    #[serde(default)]
    pub deadline: Option<HumanDuration>,
    /// Platform API base URL override (tests point it at a local fake).
    #[serde(default)]
    pub api_base: Option<EnvString>,
    /// WebSocket settings (`platform: websocket` only).
    #[serde(default)]
    pub websocket: Option<WebSocketSettings>,
}
