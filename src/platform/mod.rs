//! Platforms: how each chat platform's webhook is verified, decrypted and
//! parsed, and how replies go back. One module per platform; all of them,
//! the generic HTTP API included, implement [`adapter::PlatformAdapter`] and
//! stay free of sockets.

pub mod adapter;
pub mod declarative;
pub mod dingtalk;
pub mod discord;
pub mod feishu;
pub mod generic;
pub mod openai;
pub mod payload;
pub mod rejection;
pub mod slack;
pub mod telegram;
pub mod wecom;
pub mod wxcrypt;
pub mod xml;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use adapter::{
    AdapterConfigError, BearerVerifier, Channel, ChatType, Inbound, Payload, PlatformAdapter,
    PlatformMessage, Principal, Rejection, Resealed, WebhookRequest, WebhookResponse,
};

use crate::config::PlatformKind;

/// Builds the adapter for a route's platform from its `secrets` and
/// optional `api_base` (the platform API's origin; tests point it at a
/// local server).
pub fn build(
    kind: PlatformKind,
    secrets: &BTreeMap<String, String>,
    api_base: Option<&str>,
) -> Result<Arc<dyn PlatformAdapter>, AdapterConfigError> {
    Ok(match kind {
        // A WebSocket route authenticates its upgrade and every message
        // frame with the JWT API's adapter: a frame is an API message.
        PlatformKind::Generic | PlatformKind::Websocket => Arc::new(generic::GenericAdapter),
        PlatformKind::Feishu => Arc::new(feishu::FeishuAdapter::new(secrets, api_base)?),
        PlatformKind::Wecom => Arc::new(wecom::WecomAdapter::new(secrets, api_base)?),
        PlatformKind::Dingtalk => Arc::new(dingtalk::DingtalkAdapter::new(secrets, api_base)?),
        PlatformKind::Slack => Arc::new(slack::SlackAdapter::new(secrets, api_base)?),
        PlatformKind::Discord => Arc::new(discord::DiscordAdapter::new(secrets, api_base)?),
        PlatformKind::Telegram => Arc::new(telegram::TelegramAdapter::new(secrets, api_base)?),
        PlatformKind::Openai => Arc::new(openai::OpenAiAdapter::new(adapter::optional_secret(
            secrets, "token",
        ))),
        PlatformKind::Declarative => {
            return Err(AdapterConfigError::NotConfigurable {
                platform: kind.as_str(),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_every_platform_and_name_missing_secrets() {
        let none = BTreeMap::new();
        let generic = build(PlatformKind::Generic, &none, None).unwrap();
        assert_eq!(
            (generic.platform(), generic.channel()),
            ("generic", Channel::Api)
        );
        for (kind, secret) in [
            (PlatformKind::Feishu, "verification_token"),
            (PlatformKind::Wecom, "token"),
            (PlatformKind::Dingtalk, "app_secret"),
            (PlatformKind::Slack, "signing_secret"),
            (PlatformKind::Discord, "public_key"),
            (PlatformKind::Telegram, "secret_token"),
        ] {
            let err = build(kind, &none, None).err().unwrap();
            let msg = err.to_string();
            assert!(msg.contains(&format!("`{secret}`")), "{kind:?}: {msg}");
            assert!(msg.contains("secrets"), "{kind:?}: {msg}");
        }
        let slack = BTreeMap::from([("signing_secret".to_string(), "s".to_string())]);
        let a = build(PlatformKind::Slack, &slack, None).unwrap();
        assert_eq!((a.platform(), a.channel()), ("slack", Channel::Webhook));
    }
}
