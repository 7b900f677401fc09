//! Frame inspection with the shipped policies, on frames shaped like the
//! ones OpenClaw 2026.9.6 sends (see `tests/common/openclaw.rs`).

use std::path::Path;

use serde_json::{json, Value};

use super::*;
use crate::config::WebSocketSettings;

fn shipped() -> Arc<PolicySet> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    Arc::new(PolicySet::load(&dir, 1, None).unwrap())
}

fn openclaw() -> FrameInspector {
    FrameInspector::new(&WebSocketSettings {
        profile: Some(WebSocketProfile::Openclaw),
        ..Default::default()
    })
}

/// The frame as it leaves: the input or its rewrite.
fn out(input: &str, verdict: &Verdict) -> String {
    match verdict {
        Verdict::Forward => input.to_string(),
        Verdict::Rewrite(text) => text.clone(),
        Verdict::Refuse(r) => panic!("refused: {r:?}"),
    }
}

const CONNECT: &str = r#"{"id":"1","method":"connect","params":{"auth":{"token":"sk-live-4111111111111111"},"client":{"id":"cli","mode":"cli","platform":"linux","version":"1.0.0"},"device":{"id":"6f40","nonce":"207c","publicKey":"C7Pi","signature":"bmm3","signedAt":1796563201040},"maxProtocol":4,"minProtocol":4,"role":"operator","scopes":["operator.read","operator.write"]},"type":"req"}"#;

#[test]
fn the_handshake_passes_untouched() {
    let p = shipped();
    let mut i = openclaw();
    let connect = i.client_frame(&p, CONNECT);
    assert_eq!(connect.verdict, Verdict::Forward);
    assert!(connect.message.is_none() && connect.found.is_empty());
    assert_eq!(connect.id.as_deref(), Some("1"));
    let hello = r#"{"type":"res","id":"1","ok":true,"payload":{"type":"hello-ok","auth":{"deviceToken":"4111111111111111","role":"operator"}}}"#;
    let hello = i.upstream_frame(&p, hello);
    assert_eq!(hello.verdict, Verdict::Forward);
    assert!(hello.found.is_empty());
}

#[test]
fn chat_send_is_a_message_masked_in_place() {
    let p = shipped();
    let mut i = openclaw();
    let frame = r#"{"type":"req","id":"2","method":"chat.send","params":{"idempotencyKey":"k1","message":"my card is 4111 1111 1111 1111","sessionKey":"s"}}"#;
    let ins = i.client_frame(&p, frame);
    let sent: Value = serde_json::from_str(&out(frame, &ins.verdict)).unwrap();
    let text = sent["params"]["message"].as_str().unwrap();
    assert!(
        text.starts_with("my card is ") && !text.contains("4111 1111 1111 1111"),
        "{text}"
    );
    assert_eq!(sent["params"]["idempotencyKey"], "k1");
    assert_eq!(ins.message.as_deref(), Some(text));
    assert!(ins
        .found
        .iter()
        .any(|f| &*f.rule == "credit_card" && f.direction == "ingress"));
    // Other requests are not messages and pass as they are.
    let list = r#"{"type":"req","id":"3","method":"sessions.list","params":{"note":"4111 1111 1111 1111"}}"#;
    let ins = i.client_frame(&p, list);
    assert_eq!((ins.verdict, ins.message), (Verdict::Forward, None));
}

#[test]
fn a_block_rule_refuses_the_frame_and_garbage_is_refused() {
    let p = shipped();
    let mut i = openclaw();
    let frame = r#"{"type":"req","id":"4","method":"agent","params":{"message":"my id is 11010519491231002X"}}"#;
    let ins = i.client_frame(&p, frame);
    assert!(
        matches!(ins.verdict, Verdict::Refuse(Refusal::Blocked(ref r)) if &**r == "id_card"),
        "{:?}",
        ins.verdict
    );
    assert_eq!(ins.id.as_deref(), Some("4"));
    for garbage in ["not json", "{\"type\":\"req\"", "\"\\ud800\""] {
        let ins = i.client_frame(&p, garbage);
        assert!(
            matches!(ins.verdict, Verdict::Refuse(Refusal::Malformed(_))),
            "{garbage}"
        );
    }
}

fn agent(run: &str, text: &str, delta: &str) -> String {
    json!({"type":"event","event":"agent","payload":{"runId":run,"stream":"assistant","data":{"text":text,"delta":delta,"itemId":"x:1"},"seq":6},"seq":15}).to_string()
}

fn chat(run: &str, state: &str, text: &str, delta: Option<&str>) -> String {
    let mut p = json!({"runId":run,"sessionKey":"agent:main:s","state":state,"message":{"role":"assistant","content":[{"type":"text","text":text}]}});
    if let Some(d) = delta {
        p["deltaText"] = json!(d);
    }
    json!({"type":"event","event":"chat","payload":p,"seq":16}).to_string()
}

/// The order OpenClaw sent a turn whose model streamed a phone number in
/// three pieces: every frame and field shows it masked or not at all.
#[test]
fn a_phone_number_split_across_increments_is_masked_in_every_frame() {
    let p = shipped();
    let mut i = openclaw();
    let end = json!({"type":"event","event":"agent","payload":{"runId":"r","stream":"lifecycle","data":{"phase":"end","terminalReply":{"disposition":"visible","text":"call me at 13800138000"}}}}).to_string();
    let frames = [
        agent("r", "call me at 138", "call me at 138"),
        chat("r", "delta", "call me at 138", Some("call me at 138")),
        agent("r", "call me at 1380013", "0013"),
        chat("r", "delta", "call me at 1380013", Some("0013")),
        agent("r", "call me at 13800138000", "8000"),
        end,
        chat("r", "delta", "call me at 13800138000", Some("8000")),
        chat("r", "final", "call me at 13800138000", None),
    ];
    let mut chat_deltas = String::new();
    let mut last = Value::Null;
    for frame in &frames {
        let e = i.upstream_frame(&p, frame);
        let sent = out(frame, &e.verdict);
        assert!(
            !sent.contains("0013") && !sent.contains("13800138000"),
            "{sent}"
        );
        last = serde_json::from_str(&sent).unwrap();
        if last["event"] == "chat" {
            chat_deltas.push_str(last["payload"]["deltaText"].as_str().unwrap_or(""));
        }
        if last["payload"]["stream"] == "lifecycle" {
            assert_eq!(
                last["payload"]["data"]["terminalReply"]["text"],
                "call me at 138****8000"
            );
        }
    }
    let final_text = last["payload"]["message"]["content"][0]["text"]
        .as_str()
        .unwrap();
    assert_eq!(final_text, "call me at 138****8000");
    // What the deltas showed adds up to the final text, but for the part
    // still held when the last delta went (flushed by `final`).
    assert!(final_text.starts_with(&chat_deltas), "{chat_deltas:?}");
}

#[test]
fn a_replaced_text_starts_over_and_frames_without_runs_are_masked_whole() {
    let p = shipped();
    let mut i = openclaw();
    i.upstream_frame(&p, &chat("r2", "delta", "draft 1380", Some("draft 1380")));
    let e = i.upstream_frame(
        &p,
        &chat(
            "r2",
            "delta",
            "call 13800138000 now",
            Some("call 13800138000 now"),
        ),
    );
    let sent: Value = serde_json::from_str(&out("", &e.verdict)).unwrap();
    let shown = sent["payload"]["message"]["content"][0]["text"]
        .as_str()
        .unwrap();
    assert!("call 138****8000 now".starts_with(shown), "{shown}");
    assert_eq!(
        sent["payload"]["deltaText"], shown,
        "a restart shows all of it"
    );
    let last = chat("r2", "final", "call 13800138000 now", None);
    let e = i.upstream_frame(&p, &last);
    let sent: Value = serde_json::from_str(&out(&last, &e.verdict)).unwrap();
    assert_eq!(
        sent["payload"]["message"]["content"][0]["text"],
        "call 138****8000 now"
    );
    let stray = json!({"type":"event","event":"chat","payload":{"state":"error","errorMessage":"bad card 4111 1111 1111 1111"}}).to_string();
    let e = i.upstream_frame(&p, &stray);
    assert!(!out(&stray, &e.verdict).contains("4111 1111 1111 1111"));
    // Events that carry no assistant text pass as they are.
    let tick = r#"{"type":"event","event":"tick","payload":{"ts":1},"seq":3}"#;
    assert_eq!(i.upstream_frame(&p, tick).verdict, Verdict::Forward);
}

#[test]
fn chat_history_answers_are_masked() {
    let p = shipped();
    let mut i = openclaw();
    let req = r#"{"type":"req","id":"h1","method":"chat.history","params":{"sessionKey":"s"}}"#;
    assert_eq!(i.client_frame(&p, req).verdict, Verdict::Forward);
    let res = json!({"type":"res","id":"h1","ok":true,"payload":{"messages":[{"role":"user","content":[{"type":"text","text":"card 4111 1111 1111 1111"}]}]}}).to_string();
    let e = i.upstream_frame(&p, &res);
    assert!(!out(&res, &e.verdict).contains("4111 1111 1111 1111"));
    // An answer to anything else is not read.
    let other = res.replace("\"h1\"", "\"h2\"");
    assert_eq!(i.upstream_frame(&p, &other).verdict, Verdict::Forward);
}

#[test]
fn the_json_profile_reads_its_pointers() {
    let p = shipped();
    let mut i = FrameInspector::new(&WebSocketSettings {
        profile: Some(WebSocketProfile::Json),
        ingress_pointers: vec!["/text".into(), "/extra/notes".into()],
        egress_pointers: vec!["/reply/text".into()],
        ..Default::default()
    });
    let frame = r#"{"id":"m1","text":"card 4111 1111 1111 1111","extra":{"notes":["call 13800138000"]},"other":"4111 1111 1111 1111"}"#;
    let ins = i.client_frame(&p, frame);
    let sent: Value = serde_json::from_str(&out(frame, &ins.verdict)).unwrap();
    assert!(!sent["text"].as_str().unwrap().contains("4111 1111"));
    assert_eq!(sent["extra"]["notes"][0], "call 138****8000");
    assert_eq!(
        sent["other"], "4111 1111 1111 1111",
        "not pointed at: not read"
    );
    let ping = r#"{"type":"ping"}"#;
    let ins = i.client_frame(&p, ping);
    assert_eq!((ins.verdict, ins.message), (Verdict::Forward, None));
    let reply = r#"{"reply":{"text":"call 13800138000"}}"#;
    let e = i.upstream_frame(&p, reply);
    assert!(out(reply, &e.verdict).contains("138****8000"));
}
