//! MQTT ingress end to end: a real Mosquitto on a free loopback port, the
//! real gateway with an `mqtt:` listener whose payloads a declarative
//! adapter maps, a recording gRPC assistant, and an independent MQTT client
//! (rumqttc) as the devices. A message reaches the assistant once (a
//! redelivered one is a duplicate), DLP applies, the reply is published to
//! the reply topic, and this holds across a broker restart; a message the
//! AI cluster has not accepted is not acknowledged, and reaches it once it
//! is up.

mod common;

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use common::mosquitto::Mosquitto;
use common::{Gateway, RecordingAssistant, Setup, ALLOW_ALL_ABAC, SECURITY_POLICY};

const DEADLINE: Duration = Duration::from_secs(15);

/// IoT alerts: no route (MQTT only), no signature (the broker
/// authenticates), the reply as JSON.
const ADAPTER: &str = r#"name: iot_alerts
format: json
verify: { scheme: none }
fields:
  id: /id
  text: /text
  sender: /device
reply:
  inline: { format: json, body: { id: "{{id}}", answer: "{{reply}}" } }
"#;

fn gateway(broker: &Mosquitto, assistant_port: u16) -> Gateway {
    Setup {
        upstreams: format!(
            "  assistant: {{ kind: grpc, nodes: [\"127.0.0.1:{assistant_port}\"], timeout: 5s }}\n"
        ),
        extra: format!(
            "mqtt:\n  - name: iot\n    broker: {{ host: 127.0.0.1, port: {}, client_id: moltgate-iot-test, keep_alive: 5s }}\n    topics: [\"alerts/+/events\"]\n    adapter: iot_alerts\n    upstream: assistant\n    reply_topic: \"alerts/{{2}}/reply\"\n",
            broker.port
        ),
        policies: vec![
            ("security_policy.yaml", SECURITY_POLICY.into()),
            ("abac.yaml", ALLOW_ALL_ABAC.into()),
            ("dlp.yaml", include_str!("../policies/dlp.yaml").into()),
        ],
        ..Default::default()
    }
    .start_prepared(|dir| {
        let adapters = dir.join("policies/adapters");
        std::fs::create_dir_all(&adapters).unwrap();
        std::fs::write(adapters.join("iot.yaml"), ADAPTER).unwrap();
    })
}

/// A device-side client subscribed to every reply topic; replies arrive on
/// the returned channel.
async fn device(port: u16, id: &str) -> (AsyncClient, mpsc::UnboundedReceiver<(String, Value)>) {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(opts, 16);
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let v = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    let _ = tx.send((p.topic.clone(), v));
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subscribed_tx.send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    client
        .subscribe("alerts/+/reply", QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, subscribed.recv())
        .await
        .expect("suback");
    (client, rx)
}

async fn publish(client: &AsyncClient, device: &str, body: Value) {
    let topic = format!("alerts/{device}/events");
    client
        .publish(topic, QoS::AtLeastOnce, false, body.to_string())
        .await
        .unwrap();
}

async fn reply(gw: &Gateway, rx: &mut mpsc::UnboundedReceiver<(String, Value)>) -> (String, Value) {
    match tokio::time::timeout(DEADLINE, rx.recv()).await {
        Ok(Some(got)) => got,
        _ => panic!(
            "no reply within {DEADLINE:?}; the gateway's log:\n{}",
            gw.log_text()
        ),
    }
}

/// Waits until the gateway's counter `metric{labels}` reaches `n`.
fn wait_metric(gw: &Gateway, metric: &str, labels: &[(&str, &str)], n: f64) {
    let started = Instant::now();
    while common::metric(&gw.metrics(), metric, labels) < n {
        assert!(
            started.elapsed() < DEADLINE,
            "{metric}{labels:?} < {n}:\n{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn messages_reach_the_assistant_once_and_replies_are_published_across_a_broker_restart() {
    let mut broker = Mosquitto::start();
    let ai = RecordingAssistant::start();
    let gw = gateway(&broker, ai.port);
    wait_metric(
        &gw,
        "moltgate_mqtt_events_total",
        &[("listener", "iot"), ("event", "subscribed")],
        1.0,
    );
    let rt = common::rt();
    let alert =
        json!({"id": "a1", "text": "disk 91% full, card 4111 1111 1111 1111", "device": "dev7"});
    let first = rt.block_on(async {
        let (client, mut replies) = device(broker.port, "dev7").await;
        publish(&client, "dev7", alert.clone()).await;
        let first = reply(&gw, &mut replies).await;
        // The same alert again (a device that did not see its PUBACK).
        publish(&client, "dev7", alert.clone()).await;
        first
    });
    assert_eq!(first.0, "alerts/dev7/reply");
    assert_eq!(first.1["id"], "a1");
    let answer = first.1["answer"].as_str().unwrap();
    assert!(
        answer.starts_with("echo: disk 91% full, card ") && !answer.contains("4111 1111"),
        "{answer}"
    );
    // The redelivery is acknowledged (accepted: a duplicate), not sent on.
    wait_metric(
        &gw,
        "moltgate_mqtt_messages_total",
        &[("listener", "iot"), ("verdict", "accepted")],
        2.0,
    );
    let seen = ai.envelopes();
    assert_eq!(seen.len(), 1, "the assistant got the alert once");
    assert_eq!(seen[0].platform, "iot_alerts");
    assert_eq!(seen[0].sender.as_ref().unwrap().id, "dev7");
    assert!(!seen[0].content.as_ref().unwrap().text.contains("4111 1111"));

    // The broker restarts: the listener reconnects, and messages flow again.
    broker.restart();
    wait_metric(
        &gw,
        "moltgate_mqtt_events_total",
        &[("listener", "iot"), ("event", "connected")],
        2.0,
    );
    let after = rt.block_on(async {
        let (client, mut replies) = device(broker.port, "dev8").await;
        publish(
            &client,
            "dev8",
            json!({"id": "a2", "text": "fan failure", "device": "dev8"}),
        )
        .await;
        reply(&gw, &mut replies).await
    });
    assert_eq!(after.0, "alerts/dev8/reply");
    assert_eq!(after.1["answer"], "echo: fan failure (turn 1)");
    assert_eq!(ai.envelopes().len(), 2);
    gw.wait_audit(|a| a["route"] == "/mqtt/iot" && a["decision"] == "answered");
}

#[test]
fn a_message_is_acknowledged_only_once_the_cluster_accepted_it() {
    let broker = Mosquitto::start();
    let assistant_port = common::free_port();
    let gw = gateway(&broker, assistant_port);
    wait_metric(
        &gw,
        "moltgate_mqtt_events_total",
        &[("listener", "iot"), ("event", "subscribed")],
        1.0,
    );
    let rt = common::rt();
    let (client, mut replies) = rt.block_on(device(broker.port, "dev9"));
    rt.block_on(publish(
        &client,
        "dev9",
        json!({"id": "b1", "text": "smoke detected", "device": "dev9"}),
    ));
    // No assistant yet: the message is kept, and asked for again.
    wait_metric(
        &gw,
        "moltgate_mqtt_messages_total",
        &[("listener", "iot"), ("verdict", "retry")],
        2.0,
    );
    assert_eq!(
        common::metric(
            &gw.metrics(),
            "moltgate_mqtt_messages_total",
            &[("listener", "iot"), ("verdict", "accepted")]
        ),
        0.0
    );
    let ai = RecordingAssistant::start_on(assistant_port);
    let (topic, answer) = rt.block_on(reply(&gw, &mut replies));
    assert_eq!(topic, "alerts/dev9/reply");
    assert_eq!(answer["answer"], "echo: smoke detected (turn 1)");
    assert_eq!(ai.envelopes().len(), 1);
    drop(client);
}
