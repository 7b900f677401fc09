//! One listener's connection: drives rumqttc's event loop (reconnecting with
//! backoff), subscribes, recognises redeliveries, and queues each new
//! message for the worker (`worker.rs`), which calls the sink and
//! acknowledges. The event loop runs on its own task so that pings and
//! acknowledgements flow while the sink takes its time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, ConnectionError, Event, Incoming, Outgoing, Publish, QoS};
use tokio::sync::{mpsc, watch};

use super::inflight::{lock, Arrival, Inflight};
use super::worker::{self, Job};
use super::{Listener, MqttSink, Received, TransportEvent, QUEUE};

/// Requests (acknowledgements, replies, subscriptions) waiting for the event
/// loop. The loop waits for room in the job queue only while the worker
/// finishes a job, which queues at most two requests (reply, PUBACK), and
/// the broker's in-flight window (20 messages by default in mosquitto) stops
/// its sending until PUBACKs leave: far below this, so the loop and the
/// worker never wait for each other.
const REQUESTS: usize = 256;

/// The first and the longest wait before a reconnect.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A connection that lived this long starts the backoff again from the minimum.
const STABLE: Duration = Duration::from_secs(60);

/// How long connecting (TCP, TLS, CONNACK) may take.
const CONNECT_TIMEOUT_SECS: u64 = 10;

/// What the event loop task knows besides rumqttc's own state.
struct Session {
    listener: Listener,
    client: AsyncClient,
    sink: Arc<dyn MqttSink>,
    inflight: Arc<Mutex<Inflight>>,
    jobs: mpsc::Sender<Job>,
    subscribed_once: bool,
    connected_at: Option<Instant>,
}

/// Runs a listener until shutdown (see [`Listener::run`]).
pub(super) async fn run(
    listener: Listener,
    sink: Arc<dyn MqttSink>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (client, mut eventloop) = AsyncClient::new(listener.options.clone(), REQUESTS);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_connection_timeout(CONNECT_TIMEOUT_SECS);
    eventloop.set_network_options(network);
    let inflight = Arc::new(Mutex::new(Inflight::default()));
    let (jobs_tx, jobs_rx) = mpsc::channel(QUEUE);
    let worker = tokio::spawn(worker::run(
        worker::Worker {
            name: listener.name.clone(),
            client: client.clone(),
            sink: sink.clone(),
            inflight: inflight.clone(),
            reply_topic: listener.reply_topic.clone(),
        },
        jobs_rx,
        shutdown.clone(),
    ));
    let mut session = Session {
        listener,
        client,
        sink,
        inflight,
        jobs: jobs_tx,
        subscribed_once: false,
        connected_at: None,
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(event) => session.on_event(event).await,
            Err(e) => {
                if *shutdown.borrow() {
                    break;
                }
                backoff = session.on_error(&e, backoff);
                let wait = jitter(backoff);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait_for(|stop| *stop) => break,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    // The worker has finished (it sent the DISCONNECT) or the broker cannot
    // be reached: what the worker still holds stays unacknowledged, in the
    // session. Dropping the event loop makes its requests fail, not wait.
    drop(eventloop);
    drop(session.jobs);
    if let Err(e) = worker.await {
        tracing::error!(listener = %session.listener.name, error = %e, "mqtt listener's worker failed");
    }
    tracing::info!(listener = %session.listener.name, "mqtt listener stopped");
    session
        .sink
        .event(&session.listener.name, TransportEvent::Stopped);
}

impl Session {
    /// Handles one event of a working connection.
    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Incoming(Incoming::ConnAck(ack)) => self.on_connected(ack.session_present),
            Event::Incoming(Incoming::SubAck(ack)) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                self.on_subscribed(refused);
            }
            Event::Incoming(Incoming::Publish(p)) => self.on_publish(p).await,
            Event::Outgoing(Outgoing::PubAck(pkid)) => lock(&self.inflight).acked_on_wire(pkid),
            _ => {}
        }
    }

    fn on_connected(&mut self, session_present: bool) {
        let name = &self.listener.name;
        tracing::info!(listener = %name, session_present, "mqtt connected");
        self.connected_at = Some(Instant::now());
        self.sink
            .event(name, TransportEvent::Connected { session_present });
        if !session_present {
            lock(&self.inflight).session_lost();
        }
        if session_present && self.subscribed_once {
            return;
        }
        // The first connection subscribes even to a kept session, in case
        // the topics changed since; later ones only when the broker lost it.
        let filters = self
            .listener
            .topics
            .iter()
            .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
        match self.client.try_subscribe_many(filters) {
            Ok(()) => self.subscribed_once = true,
            Err(e) => {
                tracing::error!(listener = %name, error = %e, "mqtt subscribe could not be queued; retried on the next connection");
            }
        }
    }

    fn on_subscribed(&mut self, refused: bool) {
        let name = &self.listener.name;
        if refused {
            tracing::error!(listener = %name, topics = ?self.listener.topics, "mqtt broker refused a subscription (check its ACL for this user)");
            self.sink.event(name, TransportEvent::SubscribeRefused);
        } else {
            tracing::info!(listener = %name, topics = ?self.listener.topics, "mqtt subscribed");
            self.sink.event(name, TransportEvent::Subscribed);
        }
    }

    /// A PUBLISH from the broker: queue it for the worker, unless it is a
    /// redelivery (see the module docs of `mqtt`).
    async fn on_publish(&mut self, p: Publish) {
        let needs_ack = p.qos != QoS::AtMostOnce;
        let epoch = if needs_ack {
            let arrival = lock(&self.inflight).arrive(p.pkid);
            match arrival {
                Arrival::New(epoch) => epoch,
                Arrival::Handling => {
                    tracing::debug!(listener = %self.listener.name, pkid = p.pkid, "mqtt redelivery of a message being handled; dropped");
                    let event = TransportEvent::Redelivered { settled: false };
                    self.sink.event(&self.listener.name, event);
                    return;
                }
                Arrival::Settled => {
                    self.reack(&p);
                    let event = TransportEvent::Redelivered { settled: true };
                    self.sink.event(&self.listener.name, event);
                    return;
                }
            }
        } else {
            0
        };
        let refuse = self.transport_refusal(&p);
        let payload = if refuse.is_some() {
            bytes::Bytes::new()
        } else {
            p.payload
        };
        let job = Job {
            received: Received {
                listener: self.listener.name.clone(),
                topic: p.topic,
                payload,
                pkid: p.pkid,
                duplicate: p.dup,
                attempt: 1,
            },
            qos: p.qos,
            epoch,
            refuse,
        };
        // Waits while the queue is full: the broker holds the rest.
        if self.jobs.send(job).await.is_err() {
            // The worker stopped (shutdown): the message stays with the broker.
            if needs_ack {
                lock(&self.inflight).release(p.pkid, epoch);
            }
        }
    }

    /// Why the transport refuses `p` itself, if it does.
    fn transport_refusal(&self, p: &Publish) -> Option<&'static str> {
        if p.payload.len() > self.listener.max_payload {
            Some("payload_too_large")
        } else if !self
            .listener
            .topics
            .iter()
            .any(|f| rumqttc::matches(&p.topic, f))
        {
            Some("topic_not_subscribed")
        } else {
            None
        }
    }

    /// Acknowledges again a redelivered message whose PUBACK was lost.
    fn reack(&self, p: &Publish) {
        let name = &self.listener.name;
        tracing::debug!(listener = %name, pkid = p.pkid, "mqtt redelivery of a settled message; acknowledged again");
        // Never wait here: this task is the one that empties the channel.
        if let Err(e) = self.client.try_ack(p) {
            tracing::warn!(listener = %name, error = %e, "mqtt acknowledgement could not be queued; the broker will send the message again");
        }
    }

    /// Logs a failed connection; returns the backoff to wait from.
    fn on_error(&mut self, e: &ConnectionError, backoff: Duration) -> Duration {
        let name = &self.listener.name;
        let error = e.to_string();
        let was_up = self.connected_at.take();
        let backoff = match was_up {
            Some(t) if t.elapsed() >= STABLE => BACKOFF_MIN,
            _ => backoff,
        };
        if was_up.is_some() {
            tracing::warn!(listener = %name, error = %error, "mqtt connection lost; reconnecting");
        } else {
            tracing::warn!(listener = %name, error = %error, retry_in_ms = backoff.as_millis() as u64, "mqtt cannot connect");
        }
        self.sink
            .event(name, TransportEvent::Disconnected { error: &error });
        backoff
    }
}

/// `d` ± 20 %.
fn jitter(d: Duration) -> Duration {
    use rand::Rng;
    d.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_near() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(8) && d <= Duration::from_secs(12));
        }
    }
}
