//! Platforms: how each chat platform's webhook is verified, decrypted and
//! parsed, and how replies go back. One module per platform; all of them
//! implement [`adapter::PlatformAdapter`] and stay free of sockets.

pub mod adapter;
pub mod generic;

pub use adapter::{Inbound, PlatformAdapter, PlatformMessage, Rejection, WebhookRequest, WebhookResponse};
