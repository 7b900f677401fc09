//! Reversible tokenisation through the JWT API (`action: tokenize`,
//! `tokenize:`): the real gateway over TLS, a recording gRPC assistant that
//! echoes what it got.

mod common;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use common::{Gateway, RecordingAssistant, Setup, ALLOW_ALL_ABAC, SECURITY_POLICY};

const DLP: &str = "patterns:\n  cn_mobile:\n    regex: '1[3-9]\\d{9}'\n    action: tokenize\n";
const PHONE: &str = "13812345678";

fn gateway(ai: &RecordingAssistant) -> Gateway {
    Setup {
        upstreams: format!(
            "  assistant: {{ kind: grpc, nodes: [\"127.0.0.1:{}\"], timeout: 5s }}\n",
            ai.port
        ),
        routes: "  - { path: /v1/messages, platform: generic, upstream: assistant }\n  - { path: /v1/ws, platform: websocket, upstream: assistant }\n".into(),
        extra: "tokenize: { key: \"8f1c2ab9d07e4e55b61c93a07f2d3e11\", ttl: 1h }\n".into(),
        policies: vec![
            ("security_policy.yaml", SECURITY_POLICY.into()),
            ("abac.yaml", ALLOW_ALL_ABAC.into()),
            ("dlp.yaml", DLP.into()),
        ],
    }
    .start()
}

async fn say(gw: &Gateway, token: &str, text: &str) -> Value {
    let resp = gw
        .client(false)
        .post(gw.url("/v1/messages"))
        .bearer_auth(token)
        .json(&json!({"content": {"text": text}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[test]
fn the_ai_sees_tokens_and_the_user_gets_values_back() {
    let ai = RecordingAssistant::start();
    let gw = gateway(&ai);
    let alice = gw.token("alice", &["tenant=acme"]);
    let mallory = gw.token("mallory", &["tenant=evil"]);
    let rt = common::rt();
    let (first, second) = rt.block_on(async {
        let first = say(&gw, &alice, &format!("call me at {PHONE}")).await;
        let second = say(&gw, &alice, &format!("again: {PHONE}")).await;
        (first, second)
    });
    // The user's replies have the value back.
    assert_eq!(
        first["replies"][0]["text"],
        format!("echo: call me at {PHONE} (turn 1)")
    );
    assert_eq!(
        second["replies"][0]["text"],
        format!("echo: again: {PHONE} (turn 2)")
    );
    // The assistant saw only tokens, the same one for the same value.
    let seen: Vec<String> = ai
        .envelopes()
        .iter()
        .map(|e| e.content.as_ref().unwrap().text.clone())
        .collect();
    assert!(seen.iter().all(|t| !t.contains(PHONE)), "{seen:?}");
    let token = seen[0].strip_prefix("call me at ").unwrap().to_string();
    assert!(
        token.starts_with("⟨CN_MOBILE:") && token.ends_with('⟩'),
        "{token}"
    );
    assert_eq!(seen[1], format!("again: {token}"));
    // Another tenant replaying the token gets it back as it is.
    let replayed = rt.block_on(say(&gw, &mallory, &format!("what is {token}?")));
    let text = replayed["replies"][0]["text"].as_str().unwrap();
    assert!(text.contains(&token) && !text.contains(PHONE), "{text}");
    assert!(!gw.log_text().contains(PHONE), "the value reached the log");
    gw.wait_audit(|a| {
        a["sender_id"] == "alice" && a["rules"].to_string().contains("dlp:cn_mobile:tokenize")
    });
}

/// The WebSocket API: the reply frame has the value back, the assistant got the token.
#[test]
fn websocket_replies_are_restored_too() {
    let ai = RecordingAssistant::start();
    let gw = gateway(&ai);
    let alice = gw.token("alice", &["tenant=acme"]);
    let rt = common::rt();
    let reply = rt.block_on(async {
        let mut req = format!("wss://localhost:{}/v1/ws", gw.public)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {alice}").parse().unwrap());
        let tls = common::raw_tls(&gw).await;
        let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await.unwrap();
        let frame = json!({"type":"message","id":"t1","content":{"text": format!("ring {PHONE}")}});
        ws.send(Message::text(frame.to_string())).await.unwrap();
        loop {
            let msg = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["final"] == false {
                    break v;
                }
            }
        }
    });
    assert_eq!(
        reply["text"],
        format!("echo: ring {PHONE} (turn 1)"),
        "{reply}"
    );
    let seen = ai.envelopes()[0].content.as_ref().unwrap().text.clone();
    assert!(
        seen.starts_with("ring ⟨CN_MOBILE:") && !seen.contains(PHONE),
        "{seen}"
    );
}
