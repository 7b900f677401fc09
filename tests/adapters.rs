//! Declarative adapters (`<policies>/adapters/*.yaml`) in the running
//! gateway, over TLS 1.3 with a real client: a file dropped into a running
//! gateway starts serving its route, a broken file is refused while the old
//! set keeps serving, and forged, replayed, oversized and duplicate
//! requests are refused before the assistant sees them. The adapters'
//! published-vector tests are unit tests (`src/adapters/tests.rs`).

mod common;

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use common::fake_api::FakeApi;
use common::{Gateway, RecordingAssistant, Setup, ALLOW_ALL_ABAC, SECURITY_POLICY};

const SECRET: &str = "acme-signing-secret-7f3e9a";

/// A platform moltgate does not know: HMAC-SHA256 over `{ts}.{body}`,
/// hex in `X-Acme-Signature`, a 5-minute window, an inline JSON reply.
fn acme(path: &str) -> String {
    format!(
        r#"name: acme
route: {{ path: {path}, upstream: assistant, mode: translate, body_limit: 4096 }}
format: json
verify:
  scheme: hmac
  algorithm: sha256
  secret: {SECRET}
  header: X-Acme-Signature
  encoding: hex
  message: "{{timestamp}}.{{body}}"
  timestamp: {{ header: X-Acme-Timestamp, window: 5m }}
ignore:
  - {{ field: /kind, not_equals: message, reason: not_a_message }}
fields:
  id: /id
  text: /message/text
  sender: /message/from
  room: /message/room
reply:
  inline: {{ format: json, body: {{ room: "{{{{room}}}}", text: "{{{{reply}}}}" }} }}
"#
    )
}

fn gateway(ai: &RecordingAssistant) -> Gateway {
    Setup {
        upstreams: format!(
            "  assistant: {{ kind: grpc, nodes: [\"127.0.0.1:{}\"], timeout: 5s }}\n",
            ai.port
        ),
        routes: "  - { path: /v1/messages, platform: generic, upstream: assistant }\n".into(),
        policies: vec![
            ("security_policy.yaml", SECURITY_POLICY.into()),
            ("abac.yaml", ALLOW_ALL_ABAC.into()),
            ("dlp.yaml", include_str!("../policies/dlp.yaml").into()),
        ],
        ..Default::default()
    }
    .start()
}

fn sign(ts: u64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{ts}.{body}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn message(id: &str, text: &str) -> String {
    json!({"kind": "message", "id": id, "message": {"text": text, "from": "u7", "room": "r1"}})
        .to_string()
}

/// Posts `body` to `path`, signed at `ts` (or with `signature`).
async fn post(
    gw: &Gateway,
    path: &str,
    body: &str,
    ts: u64,
    signature: Option<&str>,
) -> (u16, String) {
    let sig = signature.map_or_else(|| sign(ts, body), str::to_string);
    let resp = gw
        .client(false)
        .post(gw.url(path))
        .header("content-type", "application/json")
        .header("x-acme-timestamp", ts.to_string())
        .header("x-acme-signature", sig)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[test]
fn a_dropped_in_adapter_serves_its_route_and_refuses_hostile_input() {
    let ai = RecordingAssistant::start();
    let gw = gateway(&ai);
    let rt = common::rt();
    let now = common::now_secs();
    let hello = message("m1", "hello from acme");
    assert_eq!(
        rt.block_on(post(&gw, "/hooks/acme", &hello, now, None)).0,
        404
    );

    // Dropped in: served once the watcher reloads (how soon is printed, a
    // figure for the notes, not a timed assertion: ~0.35 s here).
    let dir = gw.policies().join("adapters");
    std::fs::create_dir_all(&dir).unwrap();
    let written = Instant::now();
    std::fs::write(dir.join("acme.yaml"), acme("/hooks/acme")).unwrap();
    let (status, body) = loop {
        let got = rt.block_on(post(&gw, "/hooks/acme", &hello, now, None));
        if got.0 != 404 || written.elapsed() > Duration::from_secs(5) {
            break got;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = written.elapsed();
    eprintln!(
        "adapter served {} ms after the file was written",
        took.as_millis()
    );
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["room"], "r1");
    assert_eq!(answer["text"], "echo: hello from acme (turn 1)");
    let env = &ai.envelopes()[0];
    assert_eq!(env.platform, "acme");
    assert_eq!(env.content.as_ref().unwrap().text, "hello from acme");

    // Forged, replayed, oversized, duplicate and ignored requests.
    let forged = rt.block_on(post(
        &gw,
        "/hooks/acme",
        &message("m2", "x"),
        now,
        Some(&"0".repeat(64)),
    ));
    let stale = rt.block_on(post(
        &gw,
        "/hooks/acme",
        &message("m3", "x"),
        now - 3600,
        None,
    ));
    let big = message("m4", &"a".repeat(5000));
    let oversized = rt.block_on(post(&gw, "/hooks/acme", &big, now, None));
    let again = rt.block_on(post(&gw, "/hooks/acme", &hello, now, None));
    let ping = json!({"kind": "ping", "id": "p1"}).to_string();
    let ignored = rt.block_on(post(&gw, "/hooks/acme", &ping, now, None));
    assert_eq!(forged.0, 401, "{forged:?}");
    assert_eq!(stale.0, 401, "{stale:?}");
    assert_eq!(oversized.0, 413, "{oversized:?}");
    assert_eq!(again.0, 200, "a redelivery is acknowledged: {again:?}");
    assert_eq!(ignored.0, 200, "{ignored:?}");
    assert_eq!(
        ai.envelopes().len(),
        1,
        "only the first message reached the assistant"
    );
    gw.wait_audit(|a| a["route"] == "/hooks/acme" && a["decision"] == "duplicate");

    // A broken file is refused; the old set keeps serving.
    let broken = acme("/hooks/acme").replace("verify:", "verfy:");
    std::fs::write(dir.join("acme.yaml"), broken).unwrap();
    let refused = Instant::now();
    while !gw.log_text().contains("unknown key 'verfy'") {
        assert!(
            refused.elapsed() < Duration::from_secs(5),
            "{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gw.log_text().contains("adapters/acme.yaml:"), "located");
    let still = rt.block_on(post(
        &gw,
        "/hooks/acme",
        &message("m5", "still there?"),
        now,
        None,
    ));
    assert_eq!(still.0, 200, "{still:?}");
    assert_eq!(ai.envelopes().len(), 2);
    assert!(
        !gw.log_text().contains(SECRET),
        "the secret reached the log"
    );
}

/// `verify: none` is allowed only with `ip_allow`, which the gateway
/// enforces before reading the body.
#[test]
fn an_unsigned_adapter_answers_only_its_allowed_networks() {
    let ai = RecordingAssistant::start();
    let gw = gateway(&ai);
    let dir = gw.policies().join("adapters");
    std::fs::create_dir_all(&dir).unwrap();
    let open = |name: &str, path: &str, net: &str| {
        format!(
            "name: {name}\nroute: {{ path: {path}, upstream: assistant, ip_allow: [{net}] }}\nformat: json\nverify: {{ scheme: none }}\nfields: {{ id: /id, text: /text, sender: /from }}\n"
        )
    };
    std::fs::write(
        dir.join("lan.yaml"),
        open("lan", "/hooks/lan", "10.0.0.0/8"),
    )
    .unwrap();
    std::fs::write(
        dir.join("local.yaml"),
        open("local", "/hooks/local", "127.0.0.1/32"),
    )
    .unwrap();
    let rt = common::rt();
    let send = |path: &str, id: &str| {
        let body = json!({"id": id, "text": "alert: disk full", "from": "sensor-1"}).to_string();
        let client = gw.client(false);
        let url = gw.url(path);
        rt.block_on(async move {
            let resp = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            resp.status().as_u16()
        })
    };
    let started = Instant::now();
    while send("/hooks/local", "a0") == 404 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "adapters not loaded"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(send("/hooks/lan", "a1"), 403);
    assert_eq!(
        ai.envelopes().len(),
        1,
        "only the allowed network's message"
    );
    assert_eq!(ai.envelopes()[0].platform, "local");
    gw.wait_audit(|a| a["route"] == "/hooks/lan" && a["reason"] == "route_ip_allow");
}

/// The complete example of docs/adapters.md, a platform moltgate has no
/// code for: GitHub's ping is answered, an issue comment signed the way
/// GitHub signs reaches the assistant, and the reply is posted as a
/// comment through GitHub's API (a fake speaking its wire format).
#[test]
fn the_github_example_answers_an_issue_comment_with_a_comment() {
    let ai = RecordingAssistant::start();
    let api = FakeApi::start();
    let gw = gateway(&ai);
    let secret = "gh-webhook-secret-91c2";
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/adapters/examples/github.yaml"
    ))
    .unwrap()
    .replace("${GITHUB_WEBHOOK_SECRET}", secret)
    .replace("${GITHUB_TOKEN}", "ghs_test_token")
    .replace(
        "upstream: ai",
        &format!("upstream: assistant\n  api_base: {}", api.base()),
    );
    let dir = gw.policies().join("adapters");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("github.yaml"), text).unwrap();
    let rt = common::rt();
    let deliver = |event: &str, body: &Value| {
        let body = body.to_string();
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        let req = gw
            .client(false)
            .post(gw.url("/hooks/github"))
            .header("content-type", "application/json")
            .header("x-github-event", event)
            .header("x-hub-signature-256", sig)
            .body(body);
        rt.block_on(async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        })
    };
    let started = Instant::now();
    let ping = loop {
        let got = deliver(
            "ping",
            &json!({"zen": "Keep it logically awesome.", "hook_id": 1}),
        );
        if got.0 != 404 || started.elapsed() > Duration::from_secs(5) {
            break got;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(ping, (200, "{\"ok\":true}".to_string()));
    let comment = json!({
        "action": "created",
        "issue": {"number": 7, "title": "Build fails"},
        "comment": {"id": 9001, "body": "why does the build fail?", "user": {"login": "octocat", "type": "User"}},
        "repository": {"name": "hello", "full_name": "octo/hello", "owner": {"login": "octo"}},
        "sender": {"login": "octocat", "type": "User"},
    });
    assert_eq!(deliver("issue_comment", &comment).0, 200);
    let posted = api.wait_for("/repos/octo/hello/issues/7/comments", 1);
    assert_eq!(posted[0].method, "POST");
    assert_eq!(posted[0].headers["authorization"], "Bearer ghs_test_token");
    assert_eq!(
        posted[0].json()["body"],
        "echo: why does the build fail? (turn 1)"
    );
    let env = &ai.envelopes()[0];
    assert_eq!(
        (
            env.platform.as_str(),
            env.sender.as_ref().unwrap().id.as_str()
        ),
        ("github_issues", "octocat")
    );
    // An edit is verified and acknowledged, not forwarded.
    let mut edited = comment.clone();
    edited["action"] = json!("edited");
    assert_eq!(deliver("issue_comment", &edited).0, 200);
    gw.wait_audit(|a| a["route"] == "/hooks/github" && a["reason"] == "not_a_new_comment");
    assert_eq!(ai.envelopes().len(), 1);
}
