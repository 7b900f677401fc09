//! `identity: client`: every message of a listener is from the MQTT client
//! (the broker user name), whatever the payload says. A device cannot claim
//! to be another by writing a `sender` field.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Method;

use crate::platform::adapter::ApiCall;
use crate::platform::{
    Inbound, Payload, PlatformAdapter, PlatformMessage, Rejection, WebhookRequest, WebhookResponse,
};

/// A declarative adapter whose messages all come from one sender.
pub struct ClientIdentity {
    inner: Arc<dyn PlatformAdapter>,
    sender: String,
}

impl ClientIdentity {
    /// `inner`, with `sender` as the sender of every message.
    pub fn new(inner: Arc<dyn PlatformAdapter>, sender: String) -> Self {
        Self { inner, sender }
    }
}

impl PlatformAdapter for ClientIdentity {
    fn platform(&self) -> &'static str {
        self.inner.platform()
    }

    fn methods(&self) -> &'static [Method] {
        self.inner.methods()
    }

    fn receive(&self, req: &WebhookRequest<'_>) -> Result<Inbound, Rejection> {
        match self.inner.receive(req)? {
            Inbound::Message(mut msg) => {
                msg.sender_id.clone_from(&self.sender);
                msg.sender_name.clear();
                Ok(Inbound::Message(msg))
            }
            other => Ok(other),
        }
    }

    fn inline_reply(
        &self,
        msg: &PlatformMessage,
        text: &str,
        now: SystemTime,
    ) -> Option<WebhookResponse> {
        self.inner.inline_reply(msg, text, now)
    }

    fn ack(&self, msg: &PlatformMessage) -> WebhookResponse {
        self.inner.ack(msg)
    }

    fn reply_calls(&self, msg: &PlatformMessage, text: &str) -> Result<Vec<ApiCall>, Rejection> {
        self.inner.reply_calls(msg, text)
    }

    fn channel(&self) -> crate::platform::Channel {
        self.inner.channel()
    }

    fn payload(&self, req: &WebhookRequest<'_>) -> Result<Payload, Rejection> {
        self.inner.payload(req)
    }

    fn opaque_keys(&self) -> &'static [&'static str] {
        self.inner.opaque_keys()
    }

    fn dedupe_ttl(&self) -> Duration {
        self.inner.dedupe_ttl()
    }

    fn default_deadline(&self) -> Duration {
        self.inner.default_deadline()
    }
}
