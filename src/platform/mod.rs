//! Platforms: how each chat platform's webhook is verified, decrypted and
//! parsed, and how replies go back. One module per platform; all of them
//! implement [`adapter::PlatformAdapter`] and stay free of sockets.

pub mod adapter;
pub mod dingtalk;
pub mod discord;
pub mod feishu;
pub mod generic;
pub mod slack;
pub mod telegram;
pub mod wecom;
pub mod wxcrypt;

pub use adapter::{
    Inbound, PlatformAdapter, PlatformMessage, Rejection, WebhookRequest, WebhookResponse,
};
