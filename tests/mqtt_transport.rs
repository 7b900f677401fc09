//! MQTT ingress, the transport (src/mqtt/), against a real Mosquitto per
//! test (tests/common/mosquitto.rs) with a scripted sink in place of the
//! message path: a message reaches the sink once and its reply is
//! published; Retry is not acknowledged and is asked again until accepted,
//! then acknowledged once; messages survive a broker restart and a
//! listener away; an oversized payload is refused and acknowledged.
//!
//! "Acknowledged" is asserted through the broker: a listener started again
//! under the same client id would be sent every unacknowledged message
//! first, so the next message the sink sees being a fresh sentinel proves
//! nothing was left. Every wait is on a channel with a deadline.

mod common;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::mosquitto::Mosquitto;
use moltgate::config::Config;
use moltgate::mqtt::{Listener, MqttSink, Received, TransportEvent, Verdict};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

/// Every wait for something that should happen.
const DEADLINE: Duration = Duration::from_secs(15);

/// What the sink saw or the transport reported.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Message {
        topic: String,
        payload: String,
        attempt: u32,
        duplicate: bool,
    },
    Connected(bool),
    Subscribed,
    Disconnected,
    Refused(String, &'static str),
    Redelivered {
        settled: bool,
    },
    Stopped,
}

type Decide = dyn Fn(&Received) -> Verdict + Send + Sync;

/// A sink that reports everything on a channel and answers with `decide`.
struct Scripted {
    seen: mpsc::UnboundedSender<Seen>,
    decide: Box<Decide>,
    /// If set, each call waits for a permit before answering.
    gate: Option<Arc<Semaphore>>,
}

#[async_trait::async_trait]
impl MqttSink for Scripted {
    async fn handle(&self, msg: Received) -> Verdict {
        let _ = self.seen.send(Seen::Message {
            topic: msg.topic.clone(),
            payload: String::from_utf8_lossy(&msg.payload).into_owned(),
            attempt: msg.attempt,
            duplicate: msg.duplicate,
        });
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        (self.decide)(&msg)
    }

    fn event(&self, _listener: &str, event: TransportEvent<'_>) {
        let seen = match event {
            TransportEvent::Connected { session_present } => Seen::Connected(session_present),
            TransportEvent::Subscribed => Seen::Subscribed,
            TransportEvent::Disconnected { .. } => Seen::Disconnected,
            TransportEvent::Refused { topic, reason } => Seen::Refused(topic.into(), reason),
            TransportEvent::Redelivered { settled } => Seen::Redelivered { settled },
            TransportEvent::Stopped => Seen::Stopped,
            _ => return,
        };
        let _ = self.seen.send(seen);
    }
}

/// Accepts every message, replying `re:<payload>`.
fn accept_all(msg: &Received) -> Verdict {
    let mut reply = b"re:".to_vec();
    reply.extend_from_slice(&msg.payload);
    Verdict::Accepted {
        reply: Some(Bytes::from(reply)),
    }
}

/// A config with one listener `iot` on the broker at `port`.
fn config(port: u16, extra: &str) -> Config {
    let text = format!(
        "listen:\n  public: {{ address: 127.0.0.1:8443, tls: {{ cert: c, key: k }} }}\n  admin: {{ address: 127.0.0.1:9090 }}\n\
         upstreams:\n  ai: {{ kind: grpc, nodes: [embedded] }}\n\
         mqtt:\n  - name: iot\n    broker: {{ host: 127.0.0.1, port: {port}, client_id: moltgate-test, keep_alive: 5s }}\n    topics: [\"alerts/+/events\"]\n    adapter: iot-alerts\n    upstream: ai\n    reply_topic: \"alerts/{{2}}/reply\"\n{extra}"
    );
    Config::from_str_at(Path::new("moltgate.yaml"), &text, PathBuf::new()).unwrap()
}

/// A running listener with its sink's channel.
struct Running {
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    seen: mpsc::UnboundedReceiver<Seen>,
    /// Reports received while waiting for another one, in order.
    backlog: VecDeque<Seen>,
}

impl Running {
    /// Starts the listener of `config` with a sink answering with `decide`,
    /// and waits until it is connected (and, with a new session, subscribed).
    async fn start(
        config: &Config,
        decide: impl Fn(&Received) -> Verdict + Send + Sync + 'static,
    ) -> Running {
        Self::start_gated(config, decide, None).await
    }

    /// Like [`start`](Self::start), each sink call waiting for a permit of `gate`.
    async fn start_gated(
        config: &Config,
        decide: impl Fn(&Received) -> Verdict + Send + Sync + 'static,
        gate: Option<Arc<Semaphore>>,
    ) -> Running {
        let (tx, seen) = mpsc::unbounded_channel();
        let sink = Arc::new(Scripted {
            seen: tx,
            decide: Box::new(decide),
            gate,
        });
        let listener = Listener::all(config).unwrap().remove(0);
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(listener.run(sink, rx));
        let mut running = Running {
            shutdown,
            task,
            seen,
            backlog: VecDeque::new(),
        };
        running
            .expect(|s| matches!(s, Seen::Subscribed), "subscribed")
            .await;
        running
    }

    /// Takes the first report that satisfies `want`, from those kept aside
    /// or, waiting, from those to come (the others are kept aside, in order).
    async fn expect(&mut self, want: impl Fn(&Seen) -> bool, what: &str) -> Seen {
        if let Some(i) = self.backlog.iter().position(&want) {
            return self.backlog.remove(i).unwrap();
        }
        let found = tokio::time::timeout(DEADLINE, async {
            while let Some(s) = self.seen.recv().await {
                if want(&s) {
                    return Some(s);
                }
                self.backlog.push_back(s);
            }
            None
        })
        .await;
        match found {
            Ok(Some(s)) => s,
            Ok(None) => panic!("the listener stopped before {what}"),
            Err(_) => panic!("no {what} within {DEADLINE:?}"),
        }
    }

    /// The next message the sink is handed (transport reports skipped).
    async fn next_message(&mut self) -> (String, u32, bool) {
        match self
            .expect(|s| matches!(s, Seen::Message { .. }), "message")
            .await
        {
            Seen::Message {
                payload,
                attempt,
                duplicate,
                ..
            } => (payload, attempt, duplicate),
            _ => unreachable!(),
        }
    }

    /// Shuts down gracefully and waits (bounded) for the listener to end.
    async fn stop(mut self) {
        self.shutdown.send(true).unwrap();
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("the listener did not stop")
            .unwrap();
        self.expect(|s| *s == Seen::Stopped, "stopped").await;
    }
}

static CLIENTS: AtomicUsize = AtomicUsize::new(0);

fn test_client(port: u16) -> (AsyncClient, rumqttc::EventLoop) {
    let n = CLIENTS.fetch_add(1, Ordering::Relaxed);
    let mut o = MqttOptions::new(format!("test-client-{n}"), "127.0.0.1", port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    AsyncClient::new(o, 16)
}

/// Publishes with QoS 1 and waits for the broker's PUBACK: the broker has it.
async fn publish(port: u16, topic: &str, payload: impl Into<Vec<u8>>) {
    let (client, mut el) = test_client(port);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.into())
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("publishing to {topic}: {e}"),
            }
        }
        client.disconnect().await.unwrap();
        while !matches!(
            el.poll().await,
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)
        ) {}
    })
    .await
    .expect("the broker did not acknowledge a publish");
}

/// A subscriber that forwards (topic, payload) of everything it receives.
async fn subscribe(port: u16, filter: &str) -> mpsc::UnboundedReceiver<(String, String)> {
    let (client, mut el) = test_client(port);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    tokio::time::timeout(DEADLINE, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("subscribing to {filter}: {e}"),
            }
        }
    })
    .await
    .expect("the broker did not acknowledge a subscription");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _client = client;
        while let Ok(ev) = el.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                let payload = String::from_utf8_lossy(&p.payload).into_owned();
                if tx.send((p.topic, payload)).is_err() {
                    break;
                }
            }
        }
    });
    rx
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {DEADLINE:?}"))
        .unwrap_or_else(|| panic!("channel closed before {what}"))
}

/// Restarts the listener and shows the broker holds nothing unacknowledged
/// for it: the first message the new one is handed is a fresh sentinel.
async fn assert_nothing_left(
    broker: &Mosquitto,
    config: &Config,
    running: Running,
    sentinel: &str,
) -> Running {
    running.stop().await;
    let mut again = Running::start(config, accept_all).await;
    publish(broker.port, "alerts/dev1/events", sentinel).await;
    assert_eq!(
        again.next_message().await.0,
        sentinel,
        "an earlier message was redelivered: not acknowledged"
    );
    again
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_reaches_the_sink_once_and_the_reply_is_published() {
    let broker = Mosquitto::start();
    let config = config(broker.port, "");
    let mut replies = subscribe(broker.port, "alerts/+/reply").await;
    let mut running = Running::start(&config, accept_all).await;

    publish(broker.port, "alerts/dev7/events", "hello").await;
    assert_eq!(running.next_message().await, ("hello".into(), 1, false));
    let (topic, payload) = recv(&mut replies, "reply").await;
    assert_eq!(
        (topic.as_str(), payload.as_str()),
        ("alerts/dev7/reply", "re:hello")
    );

    publish(broker.port, "alerts/dev8/events", "second").await;
    assert_eq!(
        running.next_message().await.0,
        "second",
        "hello was handed twice"
    );
    let (topic, _) = recv(&mut replies, "second reply").await;
    assert_eq!(topic, "alerts/dev8/reply");

    let running = assert_nothing_left(&broker, &config, running, "sentinel").await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_is_not_acknowledged_and_asked_again_until_accepted() {
    let broker = Mosquitto::start();
    let config = config(broker.port, "");
    // Retry twice, then accept.
    let mut running = Running::start(&config, |m: &Received| {
        if m.attempt < 3 {
            Verdict::Retry
        } else {
            accept_all(m)
        }
    })
    .await;
    publish(broker.port, "alerts/dev1/events", "busy").await;
    for attempt in 1..=3 {
        assert_eq!(
            running.next_message().await,
            ("busy".into(), attempt, false)
        );
    }
    // Accepted once: never handed again, nothing left at the broker.
    let running = assert_nothing_left(&broker, &config, running, "after-busy").await;
    running.stop().await;

    // A message still being retried at shutdown stays with the broker and is
    // handed to the next listener, which accepts it; then nothing is left.
    let mut stuck = Running::start(&config, |_: &Received| Verdict::Retry).await;
    publish(broker.port, "alerts/dev2/events", "stuck").await;
    assert_eq!(stuck.next_message().await, ("stuck".into(), 1, false));
    assert_eq!(stuck.next_message().await, ("stuck".into(), 2, false));
    stuck.stop().await;
    let mut next = Running::start(&config, accept_all).await;
    let (payload, attempt, _) = next.next_message().await;
    assert_eq!(
        (payload.as_str(), attempt),
        ("stuck", 1),
        "the broker redelivers what was not acknowledged"
    );
    let next = assert_nothing_left(&broker, &config, next, "after-stuck").await;
    next.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_survive_a_broker_restart() {
    let mut broker = Mosquitto::start();
    let config = config(broker.port, "");
    let mut replies = subscribe(broker.port, "alerts/+/reply").await;
    let mut running = Running::start(&config, accept_all).await;
    publish(broker.port, "alerts/dev1/events", "before").await;
    assert_eq!(running.next_message().await.0, "before");
    assert_eq!(recv(&mut replies, "reply").await.1, "re:before");

    // The broker restarts under the running listener: it reconnects to its
    // kept session, and a message published after the restart (maybe before
    // the listener is back: the session queues it) reaches the sink.
    broker.restart();
    running
        .expect(|s| *s == Seen::Disconnected, "disconnect")
        .await;
    publish(broker.port, "alerts/dev1/events", "after-restart").await;
    running
        .expect(
            |s| *s == Seen::Connected(true),
            "reconnect to the kept session",
        )
        .await;
    assert_eq!(running.next_message().await.0, "after-restart");
    running.stop().await;

    // Published while the listener is away, kept across a broker restart
    // (persistence), handed over when the listener is back.
    publish(broker.port, "alerts/dev1/events", "while-away").await;
    broker.restart();
    let mut back = Running::start(&config, accept_all).await;
    assert_eq!(back.next_message().await.0, "while-away");
    let back = assert_nothing_left(&broker, &config, back, "sentinel").await;
    back.stop().await;
}

/// A message being handled while the broker restarts: the broker sends it
/// again on the new connection (it was not acknowledged), the transport
/// recognises the redelivery, and the sink is handed it once; its
/// acknowledgement, decided after the restart, reaches the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_flight_across_a_broker_restart_is_handled_once() {
    let mut broker = Mosquitto::start();
    let config = config(broker.port, "");
    let gate = Arc::new(Semaphore::new(0));
    let mut running = Running::start_gated(&config, accept_all, Some(gate.clone())).await;
    publish(broker.port, "alerts/dev4/events", "slow").await;
    assert_eq!(running.next_message().await, ("slow".into(), 1, false));

    broker.restart();
    running
        .expect(
            |s| *s == Seen::Connected(true),
            "reconnect to the kept session",
        )
        .await;
    // The broker sends it again while the sink still has it: dropped.
    running
        .expect(
            |s| *s == Seen::Redelivered { settled: false },
            "the redelivery",
        )
        .await;
    // Let the first call answer, and every later one.
    gate.add_permits(1000);
    publish(broker.port, "alerts/dev4/events", "next").await;
    assert_eq!(
        running.next_message().await.0,
        "next",
        "'slow' was handed to the sink twice"
    );
    let running = assert_nothing_left(&broker, &config, running, "sentinel").await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_acknowledged() {
    let broker = Mosquitto::start();
    let config = config(broker.port, "    max_payload: 1024\n");
    let decide = |m: &Received| {
        if m.payload.as_ref() == b"bad" {
            Verdict::Refused { reason: "policy" }
        } else {
            accept_all(m)
        }
    };
    let mut running = Running::start(&config, decide).await;

    // Over max_payload: refused by the transport, the sink never sees it.
    publish(broker.port, "alerts/dev3/events", vec![b'x'; 2000]).await;
    let refused = running
        .expect(
            |s| matches!(s, Seen::Refused(..) | Seen::Message { .. }),
            "refusal",
        )
        .await;
    assert_eq!(
        refused,
        Seen::Refused("alerts/dev3/events".into(), "payload_too_large")
    );
    // Exactly at the limit: handed on.
    publish(broker.port, "alerts/dev3/events", vec![b'y'; 1024]).await;
    assert_eq!(running.next_message().await.0.len(), 1024);
    // Refused by the sink.
    publish(broker.port, "alerts/dev3/events", "bad").await;
    assert_eq!(running.next_message().await.0, "bad");

    // None of them is redelivered.
    let running = assert_nothing_left(&broker, &config, running, "sentinel").await;
    running.stop().await;
}

/// A sink that panics (a bug) stops its listener, whose run returns; the
/// message was not acknowledged, so the next listener is handed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_sink_stops_the_listener_and_loses_nothing() {
    let broker = Mosquitto::start();
    let config = config(broker.port, "");
    let mut running = Running::start(&config, |_: &Received| panic!("a sink bug")).await;
    publish(broker.port, "alerts/dev5/events", "boom").await;
    assert_eq!(running.next_message().await.0, "boom");
    running.expect(|s| *s == Seen::Stopped, "stopped").await;
    tokio::time::timeout(DEADLINE, &mut running.task)
        .await
        .expect("run did not return")
        .unwrap();
    let mut next = Running::start(&config, accept_all).await;
    assert_eq!(next.next_message().await.0, "boom");
    let next = assert_nothing_left(&broker, &config, next, "sentinel").await;
    next.stop().await;
}
