//! `platform: openai` in front of an OpenAI-compatible server (the fake of
//! tests/common/fake_openai.rs, real HTTP/1.1 with Server-Sent Events), with
//! a real HTTP client (reqwest) over TLS 1.3 to the real gateway: a card
//! number streamed across three chunks never reaches the client, the rest
//! does, and the first chunk arrives while the upstream is still streaming;
//! a whole answer is masked; the request's card never reaches the upstream.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::fake_openai::FakeOpenAi;
use common::{Gateway, RecordingAssistant, Script, Setup, ALLOW_ALL_ABAC, SECURITY_POLICY};

const UPSTREAM_KEY: &str = "sk-upstream-test-key-1f2e3d";

fn gateway(model: &FakeOpenAi) -> Gateway {
    Setup {
        upstreams: format!(
            "  llm: {{ kind: http, nodes: [\"127.0.0.1:{}\"], timeout: 10s }}\n",
            model.port
        ),
        routes: format!(
            "  - {{ path: /v1/chat/completions, platform: openai, mode: passthrough, upstream: llm, secrets: {{ token: {UPSTREAM_KEY} }} }}\n"
        ),
        policies: vec![
            ("security_policy.yaml", SECURITY_POLICY.into()),
            ("abac.yaml", ALLOW_ALL_ABAC.into()),
            ("dlp.yaml", include_str!("../policies/dlp.yaml").into()),
        ],
        ..Default::default()
    }
    .start()
}

/// The content deltas of an SSE body, in order, and whether it ended with [DONE].
fn deltas(body: &str) -> (Vec<String>, bool) {
    let mut out = Vec::new();
    let mut done = false;
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        if let Some(c) = v
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
        {
            out.push(c.to_string());
        }
    }
    (out, done)
}

const FIRST: &str =
    "Sure, here is what I found in the customer records for you: the card is 4111 11";

#[test]
fn a_card_streamed_across_chunks_is_masked_and_streaming_is_kept() {
    let model = FakeOpenAi::start();
    let gw = gateway(&model);
    let token = gw.token("alice", &[]);
    let client = gw.client(false);
    let rt = common::rt();
    model.push_reply(&[FIRST, "11 1111 1", "111, and it expires next year."]);
    let gate = model.hold_last_piece();
    let body = rt.block_on(async {
        let mut resp = client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&token)
            .json(&json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "my card?"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        // The first chunks arrive while the upstream still holds its last
        // piece: the answer streams, it is not buffered whole.
        let mut body = String::new();
        while !deltas(&body).0.concat().contains("customer records") {
            let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
                .await
                .expect("a chunk before the upstream finished")
                .unwrap()
                .expect("the stream is still open");
            body.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert!(!body.contains("expires"), "the last piece was not sent yet");
        gate.notify_one();
        while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), resp.chunk()).await.unwrap().unwrap() {
            body.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        body
    });
    let (pieces, done) = deltas(&body);
    assert!(done, "[DONE] passes: {body}");
    let text = pieces.concat();
    assert!(
        !body.contains("4111") && !body.contains("1111 1111"),
        "{body}"
    );
    assert!(
        text.starts_with(
            "Sure, here is what I found in the customer records for you: the card is "
        ),
        "{text}"
    );
    assert!(text.ends_with(", and it expires next year."), "{text}");
    // The upstream got moltgate's own key, never the client's JWT, and was
    // asked for an uncompressed answer.
    let call = model.requests().pop().unwrap();
    assert_eq!(
        call.headers["authorization"],
        format!("Bearer {UPSTREAM_KEY}")
    );
    assert_eq!(call.headers["accept-encoding"], "identity");
    gw.wait_audit(|a| {
        a["route"] == "/v1/chat/completions"
            && a["decision"] == "proxied"
            && a["sender_id"] == "alice"
    });
    let metrics = gw.metrics();
    assert!(metrics.contains("moltgate_dlp_findings_total{action=\"mask\",direction=\"egress\",rule=\"credit_card\"} 1"), "{metrics}");
    assert!(!gw.log_text().contains("4111"));
}

#[test]
fn requests_and_whole_answers_are_masked_and_tokens_are_required() {
    let model = FakeOpenAi::start();
    let gw = gateway(&model);
    let token = gw.token("alice", &[]);
    let client = gw.client(false);
    let rt = common::rt();
    model.push_reply(&["call me at 13800138000"]);
    let answer: Value = rt.block_on(async {
        let resp = client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&token)
            .json(&json!({"model": "m", "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "my card is 4111 1111 1111 1111"}]},
            ]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    });
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "call me at 138****8000"
    );
    assert!(
        !model.saw("4111 1111 1111 1111"),
        "the card reached the upstream"
    );
    assert!(model.saw("my card is "));
    // A long conversation is not a webhook: past passthrough's 64 KiB.
    model.push_reply(&["ok"]);
    let long = "be brief and kind. ".repeat(6_000);
    let status = rt.block_on(async {
        client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&token)
            .json(&json!({"model": "m", "messages": [{"role": "system", "content": long}, {"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200, "a {} KiB request", long.len() / 1024);
    rt.block_on(async {
        let resp = client
            .post(gw.url("/v1/chat/completions"))
            .json(&json!({"model": "m", "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        let resp = client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&token)
            .json(&json!({"model": "m"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
    });
    assert!(!gw.log_text().contains("4111 1111") && !gw.log_text().contains("13800138000"));
}

/// `mode: translate`: the same front with the AI cluster behind it (the
/// embedded demo assistant, which echoes what reached it).
#[test]
fn the_ai_cluster_answers_in_openai_shapes_streamed_or_not() {
    let gw = Setup {
        routes: "  - { path: /v1/ai/chat/completions, platform: openai, upstream: assistant }\n"
            .into(),
        policies: vec![
            ("security_policy.yaml", SECURITY_POLICY.into()),
            ("abac.yaml", ALLOW_ALL_ABAC.into()),
            ("dlp.yaml", include_str!("../policies/dlp.yaml").into()),
        ],
        ..Default::default()
    }
    .start();
    let token = gw.token("alice", &[]);
    let client = gw.client(false);
    let rt = common::rt();
    let ask = |stream: bool| {
        client
            .post(gw.url("/v1/ai/chat/completions"))
            .bearer_auth(&token)
            .json(&json!({"model": "house", "stream": stream, "messages": [
                {"role": "user", "content": "my card is 4111 1111 1111 1111"},
            ]}))
            .send()
    };
    let (whole, streamed, refused) = rt.block_on(async {
        let whole: Value = ask(false).await.unwrap().json().await.unwrap();
        let resp = ask(true).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let streamed = resp.text().await.unwrap();
        let refused = client
            .post(gw.url("/v1/ai/chat/completions"))
            .json(&json!({"model": "house", "stream": true, "messages": []}))
            .send()
            .await
            .unwrap();
        let status = refused.status();
        (
            whole,
            streamed,
            (status, refused.json::<Value>().await.unwrap()),
        )
    });
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["model"], "house");
    let text = whole["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        text.starts_with("echo: my card is ") && !text.contains("4111 1111 1111 1111"),
        "{whole}"
    );
    assert_eq!(whole["choices"][0]["finish_reason"], "stop");
    let (pieces, done) = deltas(&streamed);
    assert!(done, "{streamed}");
    let streamed_text = pieces.concat();
    assert!(
        streamed_text.starts_with("echo: my card is ") && streamed_text.contains("(turn 2)"),
        "{streamed}"
    );
    assert!(!streamed.contains("4111 1111 1111 1111"));
    assert!(
        streamed.contains("\"finish_reason\":\"stop\""),
        "{streamed}"
    );
    // A refusal is an OpenAI error object with the path's status, not a stream.
    assert_eq!(refused.0, 401);
    assert!(refused.1["error"]["code"].is_string(), "{}", refused.1);
}

/// The AI cluster streams its answer token by token: a card split across
/// its reply parts is masked as if it had come whole, in the stream (every
/// piece checked) and in the whole answer, and the rest arrives intact.
#[test]
fn a_card_split_across_the_clusters_reply_parts_is_masked() {
    let reply = "Sure. The card on file is 4111 1111 1111 1111, expiring soon.";
    let ai = RecordingAssistant::scripted(Script {
        reply: reply.into(),
        piece: 4,
    });
    let gw = Setup {
        upstreams: format!(
            "  assistant: {{ kind: grpc, nodes: [\"127.0.0.1:{}\"], timeout: 5s }}\n",
            ai.port
        ),
        routes: "  - { path: /v1/ai/chat/completions, platform: openai, upstream: assistant }\n"
            .into(),
        policies: vec![
            ("security_policy.yaml", SECURITY_POLICY.into()),
            ("abac.yaml", ALLOW_ALL_ABAC.into()),
            ("dlp.yaml", include_str!("../policies/dlp.yaml").into()),
        ],
        ..Default::default()
    }
    .start();
    let token = gw.token("alice", &[]);
    let client = gw.client(false);
    let ask = |stream: bool| {
        client
            .post(gw.url("/v1/ai/chat/completions"))
            .bearer_auth(&token)
            .json(&json!({"model": "house", "stream": stream, "messages": [
                {"role": "user", "content": "which card do you have?"},
            ]}))
            .send()
    };
    let (whole, streamed) = common::rt().block_on(async {
        let whole: Value = ask(false).await.unwrap().json().await.unwrap();
        let streamed = ask(true).await.unwrap().text().await.unwrap();
        (whole, streamed)
    });
    let expected = "Sure. The card on file is ***************1111, expiring soon.";
    assert_eq!(
        whole["choices"][0]["message"]["content"], expected,
        "{whole}"
    );
    let (pieces, done) = deltas(&streamed);
    assert!(done, "{streamed}");
    assert!(pieces.len() > 2, "the answer still streams: {pieces:?}");
    assert_eq!(pieces.concat(), expected, "{pieces:?}");
    for piece in &pieces {
        assert!(
            !piece.contains("4111") && !piece.contains(" 1111 1111"),
            "{piece:?}"
        );
    }
    assert_eq!(ai.envelopes().len(), 2);
}
