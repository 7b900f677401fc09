//! One listener's worker: takes received messages in order, calls the sink
//! (again after a backoff while it answers Retry), publishes the reply and
//! acknowledges. One message at a time, so a listener never has more than
//! one message in the message path and acknowledgements leave in the order
//! the messages came (as MQTT 3.1.1 asks).

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::{mpsc, watch};

use super::inflight::{lock, Inflight};
use super::{MqttSink, Received, TransportEvent, Verdict, MAX_REPLY};
use crate::config::mqtt::ReplyTopic;

/// The first and the longest wait before asking the sink again after Retry.
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// A received message, queued for the worker.
#[derive(Debug)]
pub(super) struct Job {
    pub received: Received,
    /// The QoS it was delivered with (QoS 0 needs no acknowledgement).
    pub qos: QoS,
    /// The session epoch it arrived in (see `session::Inflight`).
    pub epoch: u64,
    /// Refused by the transport (too large, unsubscribed topic): the sink
    /// is not called.
    pub refuse: Option<&'static str>,
}

/// What the worker needs.
pub(super) struct Worker {
    pub name: Arc<str>,
    pub client: AsyncClient,
    pub sink: Arc<dyn MqttSink>,
    pub inflight: Arc<Mutex<Inflight>>,
    pub reply_topic: Option<ReplyTopic>,
}

/// Takes jobs until shutdown (or until the session stops), then asks the
/// event loop to DISCONNECT once the last acknowledgement is queued.
pub(super) async fn run(
    worker: Worker,
    mut jobs: mpsc::Receiver<Job>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let job = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            job = jobs.recv() => match job {
                Some(job) => job,
                None => return,
            },
        };
        let pkid = job.received.pkid;
        let epoch = job.epoch;
        let qos = job.qos;
        match worker.decide(job, &mut shutdown).await {
            Some(_) => worker.settle(qos, pkid, epoch).await,
            None => {
                // Shutdown while retrying, or the sink panicked: left with
                // the broker.
                if qos != QoS::AtMostOnce {
                    lock(&worker.inflight).release(pkid, epoch);
                }
                break;
            }
        }
    }
    // After the acknowledgements already queued, so they are written first.
    let _ = worker.client.disconnect().await;
}

impl Worker {
    /// The verdict on a job: the transport's refusal, or the sink's first
    /// answer that is not Retry; `None` if shutdown came while retrying or
    /// the sink panicked (a bug: the listener stops, see `Listener::run`).
    async fn decide(&self, job: Job, shutdown: &mut watch::Receiver<bool>) -> Option<Verdict> {
        let mut received = job.received;
        if let Some(reason) = job.refuse {
            tracing::warn!(listener = %self.name, topic = %received.topic, reason, "mqtt message refused by the transport; acknowledged");
            self.sink.event(
                &self.name,
                TransportEvent::Refused {
                    topic: &received.topic,
                    reason,
                },
            );
            return Some(Verdict::Refused { reason });
        }
        let mut wait = RETRY_MIN;
        loop {
            let call = AssertUnwindSafe(self.sink.handle(received.clone()));
            let Ok(verdict) = call.catch_unwind().await else {
                tracing::error!(listener = %self.name, topic = %received.topic, "mqtt sink panicked; the listener stops, the message stays with the broker");
                return None;
            };
            match verdict {
                Verdict::Retry => {
                    tracing::debug!(listener = %self.name, topic = %received.topic, attempt = received.attempt, retry_in_ms = wait.as_millis() as u64, "mqtt message to retry");
                    tokio::select! {
                        biased;
                        _ = shutdown.wait_for(|stop| *stop) => return None,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(RETRY_MAX);
                    received.attempt = received.attempt.saturating_add(1);
                }
                verdict => {
                    if let Verdict::Refused { reason } = &verdict {
                        tracing::info!(listener = %self.name, topic = %received.topic, reason, "mqtt message refused; acknowledged");
                    }
                    if let Verdict::Accepted { reply: Some(reply) } = &verdict {
                        self.reply(&received.topic, reply.clone()).await;
                    }
                    return Some(verdict);
                }
            }
        }
    }

    /// Acknowledges a settled message (unless QoS 0, or its session is gone).
    async fn settle(&self, qos: QoS, pkid: u16, epoch: u64) {
        if qos == QoS::AtMostOnce {
            return;
        }
        if !lock(&self.inflight).settle(pkid, epoch) {
            tracing::info!(listener = %self.name, pkid, "mqtt broker lost the session since this message came; not acknowledged");
            return;
        }
        // rumqttc builds the acknowledgement from the QoS and packet id.
        let mut ack = Publish::new(String::new(), qos, Vec::new());
        ack.pkid = pkid;
        if let Err(e) = self.client.ack(&ack).await {
            // The event loop is gone (shutdown): the broker sends it again.
            tracing::debug!(listener = %self.name, pkid, error = %e, "mqtt acknowledgement not queued");
        }
    }

    /// Publishes `reply` (QoS 1) to the reply topic for `topic`.
    async fn reply(&self, topic: &str, reply: bytes::Bytes) {
        let Some(template) = &self.reply_topic else {
            tracing::debug!(listener = %self.name, "mqtt reply dropped: no reply_topic");
            return;
        };
        let dropped = |reason: &'static str| {
            self.sink
                .event(&self.name, TransportEvent::ReplyDropped { reason });
        };
        let to = match template.render(topic) {
            Ok(to) => to,
            Err(e) => {
                tracing::warn!(listener = %self.name, topic, error = %e, "mqtt reply dropped");
                return dropped("reply_topic_unusable");
            }
        };
        if reply.len() > MAX_REPLY {
            tracing::warn!(listener = %self.name, topic, bytes = reply.len(), limit = MAX_REPLY, "mqtt reply dropped: too large");
            return dropped("reply_too_large");
        }
        if let Err(e) = self
            .client
            .publish_bytes(to, QoS::AtLeastOnce, false, reply)
            .await
        {
            tracing::warn!(listener = %self.name, topic, error = %e, "mqtt reply not queued");
            dropped("client_gone");
        }
    }
}
