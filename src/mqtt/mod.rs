//! MQTT ingress, the transport half (issue 16): `mqtt:` listeners subscribe
//! to topics on a broker with QoS 1 and hand each message to an
//! [`MqttSink`] (the gateway's message path, through a declarative adapter),
//! acknowledging it only once the sink has settled it. It exists so that no
//! MQTT message is lost between the broker and the AI cluster, whatever
//! fails in between: the broker keeps a message until moltgate says it is
//! done with it.
//!
//! # Delivery: at least once, acknowledged after the sink
//!
//! - **Manual acks.** rumqttc runs with `manual_acks`: a PUBLISH is
//!   acknowledged (PUBACK) only when the sink returns [`Verdict::Accepted`]
//!   (the AI cluster took it) or [`Verdict::Refused`] (a permanent refusal:
//!   policy, malformed payload; redelivery would not change it). A payload
//!   over `max_payload`, or a topic none of the listener's filters match (a
//!   subscription left in the session by an older config), is refused by
//!   the transport itself and acknowledged the same way.
//! - **A persistent session.** `clean_session = false` under a stable
//!   client id: the broker keeps the subscriptions and every
//!   unacknowledged QoS 1 message while moltgate is away (a restart, a
//!   network cut, a broker restart with persistence), and sends them again
//!   when it is back.
//! - **[`Verdict::Retry`] is retried here, not by the broker.** MQTT 3.1.1
//!   brokers redeliver an unacknowledged message only on reconnect, and a
//!   reconnect would redeliver every message in flight, so a Retry keeps the
//!   message and calls the sink again after a backoff (250 ms doubling to
//!   30 s, without limit: Retry means "not now", e.g. no AI node accepts;
//!   a message that can never succeed must be Refused). Messages are
//!   handled one at a time per listener, in order, so while one is retried
//!   the others wait at the broker: backpressure, not loss. At shutdown a
//!   message still being retried stays unacknowledged, in the session.
//! - **Redeliveries are recognised.** After a reconnect the broker resends
//!   what moltgate has not acknowledged, with the same packet id. A resent
//!   message whose packet id is still being handled is dropped (the first
//!   copy will be acknowledged); one whose PUBACK was decided but lost with
//!   the old connection (rumqttc drops queued PUBACKs on reconnect) is
//!   acknowledged again without reaching the sink. The rest, e.g. a
//!   message whose PUBACK was written but never reached the broker, arrive
//!   again with [`Received::duplicate`] set: the gateway's dedupe (by the
//!   adapter's id field) recognises them.
//! - **Reconnects.** A failed connection is retried after a backoff (250 ms
//!   doubling to 30 s, with jitter; back to 250 ms after a connection that
//!   lived a minute). The topics are subscribed on the first connection
//!   and whenever the broker has no session (`session_present = false`);
//!   a broker that lost the session cannot take acknowledgements of the
//!   old one, so those are not sent.
//! - **Bounds.** A listener holds at most [`QUEUE`] received messages
//!   waiting for the sink (mosquitto sends at most 20 unacknowledged ones by
//!   default); when full, reading stops and the broker holds the rest.
//!   rumqttc reads packets of at most [`read_limit`] bytes (so an oversized
//!   payload can be refused and acknowledged, rather than break the
//!   connection; beyond that the connection fails: cap the broker's
//!   `message_size_limit`), and replies of at most [`MAX_REPLY`] bytes are
//!   published (a larger one is dropped with a warning).
//!
//! Logs say when a listener connects, subscribes, loses its connection or
//! refuses a message, with the listener, topic and reason; never a payload
//! or a password. [`MqttSink::event`] reports the same to the gateway (for
//! metrics).

mod inflight;
pub mod ingress;
mod options;
mod session;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use crate::config::mqtt::{MqttListenerConfig, ReplyTopic};
use crate::config::Config;

pub use options::read_limit;

/// Messages received and waiting for the sink, per listener.
pub const QUEUE: usize = 32;

/// The largest reply published, in bytes.
pub const MAX_REPLY: usize = 1024 * 1024;

/// The gateway side of a listener: what happens to each message.
#[async_trait]
pub trait MqttSink: Send + Sync {
    /// Called once per received message (and again after each
    /// [`Verdict::Retry`]); the transport acknowledges it after
    /// [`Verdict::Accepted`] or [`Verdict::Refused`].
    async fn handle(&self, msg: Received) -> Verdict;

    /// What the transport did on its own: connections, subscriptions,
    /// messages it refused. For metrics; the transport logs these itself.
    fn event(&self, listener: &str, event: TransportEvent<'_>) {
        let _ = (listener, event);
    }
}

/// One message from the broker.
#[derive(Debug, Clone)]
pub struct Received {
    /// The listener's `name`.
    pub listener: Arc<str>,
    /// The topic it was published to.
    pub topic: String,
    /// The payload (at most the listener's `max_payload`).
    pub payload: Bytes,
    /// The broker's packet id (0 for QoS 0).
    pub pkid: u16,
    /// The broker says it sent this message before (MQTT's DUP flag).
    pub duplicate: bool,
    /// 1 on the first call, then 2, 3, … after each [`Verdict::Retry`].
    pub attempt: u32,
}

/// What the sink decided about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Taken (the AI cluster accepted it): acknowledge, and publish `reply`
    /// to the listener's `reply_topic` (QoS 1) if there is one.
    Accepted {
        /// The answer to publish, if any.
        reply: Option<Bytes>,
    },
    /// Refused for good (policy, malformed): acknowledge, never redeliver.
    Refused {
        /// A bounded label for logs and metrics.
        reason: &'static str,
    },
    /// Not now (no AI node accepted, a dependency failed): keep it and ask
    /// again after a backoff.
    Retry,
}

/// What the transport did without the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportEvent<'a> {
    /// Connected to the broker; `session_present`: it kept our session.
    Connected {
        /// Whether the broker kept the session (subscriptions, queued messages).
        session_present: bool,
    },
    /// The broker granted every subscription.
    Subscribed,
    /// The broker refused a subscription (its ACL, usually).
    SubscribeRefused,
    /// The connection failed or could not be made; a reconnect follows.
    Disconnected {
        /// rumqttc's error (never carries the password).
        error: &'a str,
    },
    /// The broker sent again (after a reconnect) a message the transport
    /// holds: `settled: false`, still with the sink, so dropped; `true`, its
    /// acknowledgement was lost with the old connection, so sent again.
    Redelivered {
        /// Whether the message was already settled.
        settled: bool,
    },
    /// A message refused and acknowledged by the transport.
    Refused {
        /// The topic it came on.
        topic: &'a str,
        /// `payload_too_large` or `topic_not_subscribed`.
        reason: &'static str,
    },
    /// A reply could not be published (no usable topic, too large, client gone).
    ReplyDropped {
        /// Why.
        reason: &'static str,
    },
    /// The listener stopped (shutdown).
    Stopped,
}

/// Why a listener cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The CA bundle could not be read.
    #[error("mqtt listener '{listener}': broker.ca: {message}")]
    Ca {
        /// The listener.
        listener: String,
        /// What went wrong.
        message: String,
    },
    /// TLS could not be set up.
    #[error("mqtt listener '{listener}': TLS setup failed: {message}")]
    Tls {
        /// The listener.
        listener: String,
        /// What went wrong.
        message: String,
    },
    /// A setting rumqttc would refuse (normally caught by `moltgate check`).
    #[error("mqtt listener '{listener}': {message}")]
    Setting {
        /// The listener.
        listener: String,
        /// What is wrong.
        message: String,
    },
}

/// One `mqtt:` listener, ready to run.
pub struct Listener {
    name: Arc<str>,
    options: rumqttc::MqttOptions,
    topics: Vec<String>,
    reply_topic: Option<ReplyTopic>,
    max_payload: usize,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not rumqttc's options: they hold the password.
        f.debug_struct("Listener")
            .field("name", &self.name)
            .field("topics", &self.topics)
            .field("reply_topic", &self.reply_topic)
            .field("max_payload", &self.max_payload)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Builds a listener from its config; `resolve` turns a configured path
    /// (`broker.ca`) into the one to open.
    pub fn new(
        config: &MqttListenerConfig,
        resolve: &dyn Fn(&str) -> PathBuf,
    ) -> Result<Listener, MqttError> {
        Ok(Listener {
            name: Arc::from(config.name.0.as_str()),
            options: options::build(config, resolve)?,
            topics: config.topics.iter().map(|t| t.0.clone()).collect(),
            reply_topic: config.reply_topic.clone(),
            max_payload: config.max_payload,
        })
    }

    /// Every listener of `config`, in order.
    pub fn all(config: &Config) -> Result<Vec<Listener>, MqttError> {
        let resolve = |p: &str| config.resolve(p);
        config
            .mqtt
            .iter()
            .map(|l| Listener::new(l, &resolve))
            .collect()
    }

    /// The listener's `name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs until `shutdown` is true: connects (and reconnects), subscribes,
    /// hands messages to `sink` and acknowledges them. At shutdown the
    /// message being handled is finished and acknowledged, the rest stay
    /// with the broker, and the connection is closed with DISCONNECT.
    /// Returns before shutdown only if the sink panicked (logged; the
    /// message stays with the broker).
    pub async fn run(self, sink: Arc<dyn MqttSink>, shutdown: watch::Receiver<bool>) {
        session::run(self, sink, shutdown).await
    }
}

/// Runs every listener of `config` until `shutdown` is true (see
/// [`Listener::run`]); returns when all have stopped.
pub async fn run(
    config: &Config,
    sink: Arc<dyn MqttSink>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), MqttError> {
    let listeners = Listener::all(config)?;
    let runs = listeners
        .into_iter()
        .map(|l| l.run(sink.clone(), shutdown.clone()));
    futures::future::join_all(runs).await;
    Ok(())
}
