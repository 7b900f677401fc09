//! Reversible tokenisation through the JWT API (`action: tokenize`,
//! `tokenize:`): the real gateway over TLS, a recording gRPC assistant that
//! echoes what it got.

mod common;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use common::fake_openai::FakeOpenAi;
use common::{Gateway, RecordingAssistant, Script, Setup, ALLOW_ALL_ABAC, SECURITY_POLICY};

const DLP: &str = "patterns:\n  cn_mobile:\n    regex: '1[3-9]\\d{9}'\n    action: tokenize\n";
const PHONE: &str = "13812345678";
const KEY: &str = "8f1c2ab9d07e4e55b61c93a07f2d3e11";

/// A gateway with `tokenize:` and `policies` (security and allow-all ABAC
/// are added first), the upstreams and routes given.
fn tokenizing(
    upstreams: String,
    routes: &str,
    mut policies: Vec<(&'static str, String)>,
) -> Gateway {
    let mut all = vec![
        ("security_policy.yaml", SECURITY_POLICY.to_string()),
        ("abac.yaml", ALLOW_ALL_ABAC.to_string()),
    ];
    all.retain(|(name, _)| !policies.iter().any(|(n, _)| n == name));
    all.append(&mut policies);
    Setup {
        upstreams,
        routes: routes.into(),
        extra: format!("tokenize: {{ key: \"{KEY}\", ttl: 1h }}\n"),
        policies: all,
    }
    .start()
}

/// The upstream `assistant` on the recording assistant's port.
fn grpc(ai: &RecordingAssistant) -> String {
    format!(
        "  assistant: {{ kind: grpc, nodes: [\"127.0.0.1:{}\"], timeout: 5s }}\n",
        ai.port
    )
}

fn gateway(ai: &RecordingAssistant) -> Gateway {
    tokenizing(
        grpc(ai),
        "  - { path: /v1/messages, platform: generic, upstream: assistant }\n  - { path: /v1/ws, platform: websocket, upstream: assistant }\n",
        vec![("dlp.yaml", DLP.into())],
    )
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

/// The OpenAI front on the AI cluster, which streams its answer three bytes
/// at a time: the token, split across reply parts, is restored in the
/// stream the user reads, and the assistant saw only the token.
#[test]
fn a_token_split_across_reply_parts_is_restored_in_the_stream() {
    let ai = RecordingAssistant::scripted(Script {
        reply: "noted: {text}".into(),
        piece: 3,
    });
    let gw = tokenizing(
        grpc(&ai),
        "  - { path: /v1/ai/chat/completions, platform: openai, upstream: assistant }\n",
        vec![("dlp.yaml", DLP.into())],
    );
    let token = gw.token("alice", &["tenant=acme"]);
    let body = common::rt().block_on(async {
        gw.client(false)
            .post(gw.url("/v1/ai/chat/completions"))
            .bearer_auth(&token)
            .json(&json!({"model": "m", "stream": true, "messages": [
                {"role": "user", "content": format!("call me at {PHONE}")},
            ]}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let deltas: Vec<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| {
            let v: Value = serde_json::from_str(d).unwrap();
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    assert!(deltas.len() > 2, "{deltas:?}");
    assert_eq!(deltas.concat(), format!("noted: call me at {PHONE}"));
    let seen = ai.envelopes()[0].content.clone().unwrap().text;
    assert!(
        seen.starts_with("call me at ⟨CN_MOBILE:") && !seen.contains(PHONE),
        "{seen}"
    );
    assert!(!gw.log_text().contains(PHONE), "the value reached the log");
}

/// A message held for confirmation was tokenised when it came; the reply
/// to its release has the value back.
#[test]
fn a_released_message_gets_its_values_back() {
    let ai = RecordingAssistant::start();
    let abac = format!(
        "{ALLOW_ALL_ABAC}  - id: reboot_needs_confirmation\n    effect: Allow\n    resources: [\"/**\"]\n    actions: [\"command:reboot\"]\n    confirm: true\n"
    );
    let gw = tokenizing(
        grpc(&ai),
        "  - { path: /v1/messages, platform: generic, upstream: assistant }\n",
        vec![
            ("abac.yaml", abac),
            ("dlp.yaml", DLP.into()),
            (
                "permissions.yaml",
                "roles:\n  admin: [\"command:*\"]\nsubjects:\n  \"generic:erin\": [admin]\n".into(),
            ),
        ],
    );
    let token = gw.token("erin", &["tenant=acme"]);
    let client = gw.client(false);
    let post = |text: String| {
        client
            .post(gw.url("/v1/messages"))
            .bearer_auth(&token)
            .json(&json!({"content": {"text": text}}))
            .send()
    };
    let released: Value = common::rt().block_on(async {
        let held: Value = post(format!("/reboot then call {PHONE}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let message = held["error"]["message"]
            .as_str()
            .or_else(|| held["message"].as_str())
            .unwrap_or_else(|| panic!("a confirmation in {held}"))
            .to_string();
        let code: String = message
            .split_once("the code ")
            .map(|(_, rest)| rest.chars().take_while(char::is_ascii_digit).collect())
            .unwrap_or_else(|| panic!("a code in {message}"));
        post(code).await.unwrap().json().await.unwrap()
    });
    assert_eq!(
        released["replies"][0]["text"],
        format!("echo: /reboot then call {PHONE} (turn 1)"),
        "{released}"
    );
    let seen = ai.envelopes()[0].content.clone().unwrap().text;
    assert!(!seen.contains(PHONE), "{seen}");
}

/// Passthrough to an OpenAI-compatible server: the model gets the token in
/// every message, and the answer, whole or streamed with the token split
/// across chunks, has the value back; a token the request did not carry
/// (another tenant's) stays a token.
#[test]
fn an_openai_compatible_server_sees_tokens_and_answers_get_values_back() {
    let model = FakeOpenAi::start();
    let gw = tokenizing(
        format!(
            "  llm: {{ kind: http, nodes: [\"127.0.0.1:{}\"], timeout: 10s }}\n",
            model.port
        ),
        "  - { path: /v1/chat/completions, platform: openai, mode: passthrough, upstream: llm }\n",
        vec![("dlp.yaml", DLP.into())],
    );
    let alice = gw.token("alice", &["tenant=acme"]);
    let mallory = gw.token("mallory", &["tenant=evil"]);
    let client = gw.client(false);
    let ask = |token: &str, stream: bool, text: &str| {
        client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(token)
            .json(&json!({"model": "m", "stream": stream, "messages": [
                {"role": "system", "content": format!("the user's phone is {PHONE}")},
                {"role": "user", "content": [{"type": "text", "text": text}]},
            ]}))
            .send()
    };
    let rt = common::rt();
    model.push_reply(&["noted"]);
    rt.block_on(async {
        ask(&alice, false, "hello")
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let seen = model.chat_requests()[0].to_string();
    assert!(!seen.contains(PHONE), "{seen}");
    let at = seen.find("⟨CN_MOBILE:").expect("a token");
    let token: String = seen[at..]
        .chars()
        .take_while(|&c| c != '⟩')
        .chain(['⟩'])
        .collect();

    // Whole answer; then streamed with the token cut in the middle.
    model.push_reply(&["I will ring ", &token]);
    let (cut, _) = token.char_indices().nth(6).unwrap();
    model.push_reply(&["Calling ", &token[..cut], &token[cut..], " now."]);
    model.push_reply(&["that is ", &token]);
    let (whole, streamed, other) = rt.block_on(async {
        let whole: Value = ask(&alice, false, "call me")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let streamed = ask(&alice, true, "call me")
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let other: Value = ask(&mallory, false, "what?")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (whole, streamed, other)
    });
    assert_eq!(
        whole["choices"][0]["message"]["content"],
        format!("I will ring {PHONE}"),
        "{whole}"
    );
    let deltas: String = streamed
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| {
            let v: Value = serde_json::from_str(d).unwrap();
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    assert_eq!(deltas, format!("Calling {PHONE} now."), "{streamed}");
    // Mallory's request carried alice's phone in its system message, but
    // tokenised for tenant evil: alice's token means nothing there.
    let shown = other["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(shown, format!("that is {token}"), "{other}");
    assert!(model
        .chat_requests()
        .iter()
        .all(|r| !r.to_string().contains(PHONE)));
    assert!(!gw.log_text().contains(PHONE), "the value reached the log");
}
