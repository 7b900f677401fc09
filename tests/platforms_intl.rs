//! Slack, Discord and Telegram routes against the real binary, in translate
//! mode with the embedded assistant and `api_base` pointing at a fake
//! platform API: replies (inline and through the API), challenges, forged,
//! stale, malformed and oversized requests, ignored events, bot messages,
//! redeliveries, and Slack requests signed by Slack's own Python SDK.

mod common;

use common::{accepted, expect_refusal, metric, now_secs, post, rt, streamed};

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fake_api::FakeApi;
use common::{Gateway, Setup};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};

const SLACK_SECRET: &str = "slack-signing-secret-for-tests";
const SLACK_BOT_TOKEN: &str = "xoxb-1111-test-bot-token";
const TG_SECRET: &str = "tg_secret-token-1";
const TG_BOT_TOKEN: &str = "123456:ABC-test_token";
const DISCORD_APP: &str = "123456";
/// Every route's body limit, small so that oversized bodies are cheap.
const BODY_LIMIT: usize = 4096;

/// The Discord application's key pair (fixed, so failures reproduce).
fn discord_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

/// A gateway with Slack, Discord and Telegram routes (each also at
/// `<path>/slow` with a zero deadline), replies going to `fake`.
fn start(fake: &FakeApi) -> Gateway {
    let public_key = hex::encode(discord_key().verifying_key().to_bytes());
    let api = fake.base();
    let mut routes = String::new();
    for (path, deadline) in [("", ""), ("/slow", ", deadline: 0s")] {
        routes.push_str(&format!(
            "  - {{ path: /hooks/slack{path}, platform: slack, upstream: assistant, api_base: \"{api}\", body_limit: {BODY_LIMIT}{deadline},\n      secrets: {{ signing_secret: \"{SLACK_SECRET}\", bot_token: \"{SLACK_BOT_TOKEN}\" }} }}\n\
             \x20 - {{ path: /hooks/discord{path}, platform: discord, upstream: assistant, api_base: \"{api}\", body_limit: {BODY_LIMIT}{deadline},\n      secrets: {{ public_key: \"{public_key}\", application_id: \"{DISCORD_APP}\" }} }}\n\
             \x20 - {{ path: /hooks/telegram{path}, platform: telegram, upstream: assistant, api_base: \"{api}\", body_limit: {BODY_LIMIT}{deadline},\n      secrets: {{ secret_token: \"{TG_SECRET}\", bot_token: \"{TG_BOT_TOKEN}\" }} }}\n"
        ));
    }
    let mut setup = Setup {
        routes,
        ..Setup::default()
    };
    // A Discord interaction is a command (`/ask`): the sender needs a role for it.
    setup.policies.push(("permissions.yaml", ASKER.into()));
    setup.start()
}

/// Grants the Discord test user the `/ask` command.
const ASKER: &str = "roles:\n  asker: [command:ask]\nsubjects:\n  \"discord:424242\": [asker]\n";

// ---------------------------------------------------------------- Slack ----

fn slack_headers(ts: u64, body: &[u8]) -> Vec<(&'static str, String)> {
    let ts = ts.to_string();
    let sig = moltgate::platform::slack::sign(SLACK_SECRET, &ts, body);
    vec![
        ("x-slack-request-timestamp", ts),
        ("x-slack-signature", sig),
    ]
}

fn slack_event(event_id: &str, event: Value) -> Vec<u8> {
    json!({
        "token": "unused", "team_id": "T0001", "api_app_id": "A0001",
        "type": "event_callback", "event_id": event_id, "event_time": 1_700_000_000,
        "event": event
    })
    .to_string()
    .into_bytes()
}

fn slack_message(event_id: &str, text: &str, thread_ts: Option<&str>) -> Vec<u8> {
    let mut event = json!({
        "type": "message", "channel": "C0123", "user": "U0456", "channel_type": "channel",
        "ts": "1700000000.000200", "text": text
    });
    if let Some(t) = thread_ts {
        event["thread_ts"] = json!(t);
    }
    slack_event(event_id, event)
}

/// A Slack message gets a fast, empty 200; the reply goes to
/// chat.postMessage in the message's thread, with the bot token.
#[test]
fn slack_message_acked_then_posted_in_thread() {
    let fake = FakeApi::start();
    let gw = start(&fake);
    rt().block_on(async {
        // In a thread: the reply joins that thread.
        let body = slack_message(
            "Ev0001",
            "<@UBOT> hello slack",
            Some("1700000000.000100"),
        );
        let started = Instant::now();
        let resp = post(&gw, "/hooks/slack", &slack_headers(now_secs(), &body), body).await;
        assert_eq!(resp.status(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "Slack retries after 3 s"
        );
        assert!(resp.bytes().await.unwrap().is_empty(), "the ack is empty");
        let posts = fake.wait_for("/api/chat.postMessage", 1);
        assert_eq!(posts[0].method, "POST");
        assert_eq!(
            posts[0].headers["authorization"],
            format!("Bearer {SLACK_BOT_TOKEN}")
        );
        assert_eq!(
            posts[0].json(),
            json!({"channel":"C0123","text":"echo: hello slack (turn 1)","thread_ts":"1700000000.000100"})
        );
        let audit = gw.wait_audit(|a| a["route"] == "/hooks/slack" && a["decision"] == "answered");
        assert_eq!(audit["reason"], "api_reply");
        assert_eq!(audit["sender_id"], "U0456");

        // Not in a thread: the reply starts one under the message.
        let body = slack_message("Ev0002", "second", None);
        let resp = post(&gw, "/hooks/slack", &slack_headers(now_secs(), &body), body).await;
        assert_eq!(resp.status(), 200);
        let posts = fake.wait_for("/api/chat.postMessage", 2);
        let reply = posts
            .iter()
            .map(|p| p.json())
            .find(|j| j["text"].as_str().unwrap().contains("second"))
            .unwrap();
        assert_eq!(reply["thread_ts"], "1700000000.000200");
        assert_eq!(accepted(&gw), 2.0);
    });
    // Neither message text nor secrets reach the logs.
    let logs = gw.log_text();
    assert!(!logs.contains("hello slack"));
    assert!(!logs.contains(SLACK_SECRET) && !logs.contains(SLACK_BOT_TOKEN));
}

/// Slack's url_verification handshake is answered with the challenge.
#[test]
fn slack_url_verification_answered() {
    let fake = FakeApi::start();
    let gw = start(&fake);
    rt().block_on(async {
        let body = br#"{"token":"x","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#.to_vec();
        let resp = post(&gw, "/hooks/slack", &slack_headers(now_secs(), &body), body.clone()).await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let v: Value = resp.json().await.unwrap();
        assert_eq!(
            v,
            json!({"challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"})
        );
        // The handshake is signed like everything else.
        let forged = slack_headers(now_secs(), b"something else");
        expect_refusal(post(&gw, "/hooks/slack", &forged, body).await, 401, "unauthenticated").await;
        gw.wait_audit(|a| a["decision"] == "answered" && a["reason"] == "url_verification");
    });
    assert_eq!(accepted(&gw), 0.0);
}

/// Forged, stale, unsigned, malformed and oversized Slack requests get a
/// clear 4xx, an audit line and a metric, and never reach the assistant.
#[test]
fn slack_bad_requests_refused() {
    let fake = FakeApi::start();
    let gw = start(&fake);
    rt().block_on(async {
        let body = slack_message("Ev0100", "hello", None);
        // Signed with another secret.
        let ts = now_secs().to_string();
        let forged = vec![
            ("x-slack-request-timestamp", ts.clone()),
            (
                "x-slack-signature",
                moltgate::platform::slack::sign("not-the-secret", &ts, &body),
            ),
        ];
        expect_refusal(
            post(&gw, "/hooks/slack", &forged, body.clone()).await,
            401,
            "unauthenticated",
        )
        .await;
        // A valid signature over a different body.
        let mut tampered = body.clone();
        tampered.extend_from_slice(b" ");
        let h = slack_headers(now_secs(), &body);
        expect_refusal(
            post(&gw, "/hooks/slack", &h, tampered).await,
            401,
            "unauthenticated",
        )
        .await;
        // Stale: correctly signed ten minutes ago (Slack's window is 5).
        let h = slack_headers(now_secs() - 600, &body);
        expect_refusal(
            post(&gw, "/hooks/slack", &h, body.clone()).await,
            401,
            "unauthenticated",
        )
        .await;
        // ... and from the future.
        let h = slack_headers(now_secs() + 600, &body);
        expect_refusal(
            post(&gw, "/hooks/slack", &h, body.clone()).await,
            401,
            "unauthenticated",
        )
        .await;
        // Unsigned: the same answer as a wrong signature (the metric and
        // audit line keep the precise reason, missing_field).
        expect_refusal(
            post(&gw, "/hooks/slack", &[], body.clone()).await,
            401,
            "unauthenticated",
        )
        .await;
        // Correctly signed, but not JSON / not an event.
        for junk in [
            &b"{\"type\":\"event_callback\",\"event\":"[..],
            b"\xff\xfe",
            b"[1,2,3]",
        ] {
            let h = slack_headers(now_secs(), junk);
            let resp = post(&gw, "/hooks/slack", &h, junk.to_vec()).await;
            assert_eq!(resp.status(), 400, "{junk:?}");
        }
        // Oversized: declared, and streamed without Content-Length.
        let big = slack_message("Ev0101", &"x".repeat(BODY_LIMIT), None);
        let h = slack_headers(now_secs(), &big);
        expect_refusal(
            post(&gw, "/hooks/slack", &h, big.clone()).await,
            413,
            "body_too_large",
        )
        .await;
        expect_refusal(
            post(&gw, "/hooks/slack", &h, streamed(big)).await,
            413,
            "body_too_large",
        )
        .await;
    });
    let m = gw.metrics();
    let rejected = |reason| {
        metric(
            &m,
            "moltgate_rejections_total",
            &[("route", "/hooks/slack"), ("reason", reason)],
        )
    };
    assert_eq!(rejected("bad_signature"), 2.0, "{m}");
    assert_eq!(rejected("stale_timestamp"), 2.0, "{m}");
    assert_eq!(rejected("missing_field"), 2.0, "{m}");
    assert_eq!(rejected("body_too_large"), 2.0, "{m}");
    assert_eq!(accepted(&gw), 0.0, "nothing reached the assistant");
    let refused = gw.wait_audits(10, |a| {
        a["route"] == "/hooks/slack" && a["decision"] == "rejected"
    });
    assert_eq!(refused.len(), 10, "one audit line per refusal: {refused:?}");
    assert!(refused
        .iter()
        .any(|a| a["reason"] == "stale_timestamp" && a["status"] == 401));
    assert!(fake.requests().is_empty());
    assert!(!gw.log_text().contains(SLACK_SECRET));
}

/// Unknown events and bot messages are acknowledged (200) but not forwarded,
/// and are counted and audited as ignored.
#[test]
fn slack_unknown_events_and_bot_messages_ignored() {
    let fake = FakeApi::start();
    let gw = start(&fake);
    rt().block_on(async {
        let cases = [
            (
                slack_event("Ev0200", json!({"type":"reaction_added","user":"U0456","reaction":"thumbsup","item":{"type":"message","channel":"C0123","ts":"1.2"}})),
                "unsupported_event",
            ),
            (
                br#"{"type":"app_rate_limited","token":"x","team_id":"T0001","minute_rate_limited":1518467820,"api_app_id":"A0001"}"#.to_vec(),
                "unsupported_event",
            ),
            (
                slack_event("Ev0201", json!({"type":"message","channel":"C0123","bot_id":"B0789","ts":"1.3","text":"echo: hi (turn 1)"})),
                "bot_message",
            ),
            (
                slack_event("Ev0202", json!({"type":"message","subtype":"bot_message","channel":"C0123","ts":"1.4","text":"from a bot"})),
                "bot_message",
            ),
        ];
        for (body, _) in &cases {
            let resp = post(&gw, "/hooks/slack", &slack_headers(now_secs(), body), body.clone()).await;
            assert_eq!(resp.status(), 200);
            assert!(resp.bytes().await.unwrap().is_empty());
        }
        for reason in ["unsupported_event", "bot_message"] {
            let a = gw.wait_audit(|a| a["route"] == "/hooks/slack" && a["decision"] == "ignored" && a["reason"] == reason);
            assert_eq!(a["status"], 200);
        }
    });
    let m = gw.metrics();
    let ignored = |reason| {
        metric(
            &m,
            "moltgate_ignored_events_total",
            &[("platform", "slack"), ("reason", reason)],
        )
    };
    assert_eq!(ignored("unsupported_event"), 2.0, "{m}");
    assert_eq!(ignored("bot_message"), 2.0, "{m}");
    assert_eq!(accepted(&gw), 0.0, "nothing reached the assistant");
    assert!(fake.requests().is_empty());
}

/// Slack's retry of the same event reaches the assistant once.
#[test]
fn slack_redelivery_reaches_assistant_once() {
    let fake = FakeApi::start();
    let gw = start(&fake);
    rt().block_on(async {
        let body = slack_message("Ev0300", "only once", None);
        let resp = post(
            &gw,
            "/hooks/slack",
            &slack_headers(now_secs(), &body),
            body.clone(),
        )
        .await;
        assert_eq!(resp.status(), 200);
        // The retry comes re-signed, with Slack's retry headers.
        let mut retry = slack_headers(now_secs(), &body);
        retry.push(("x-slack-retry-num", "1".into()));
        retry.push(("x-slack-retry-reason", "http_timeout".into()));
        let resp = post(&gw, "/hooks/slack", &retry, body.clone()).await;
        assert_eq!(resp.status(), 200);
        assert!(resp.bytes().await.unwrap().is_empty());
        gw.wait_audit(|a| a["route"] == "/hooks/slack" && a["decision"] == "duplicate");
        fake.wait_for("/api/chat.postMessage", 1);
    });
    assert_eq!(accepted(&gw), 1.0);
    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            "moltgate_duplicate_messages_total",
            &[("platform", "slack")]
        ),
        1.0,
        "{m}"
    );
}

/// Where Slack's Python SDK is, or why the third-party test cannot run.
fn slack_sdk_helper(args: &[&str], body: &[u8]) -> (bool, String) {
    use std::io::Write;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/thirdparty/slack_sign.py"
    );
    let mut child = Command::new("python3")
        .arg(script)
        .args(args)
        .env("SLACK_SIGNING_SECRET", SLACK_SECRET)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed for the third-party Slack test");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "slack_sign.py failed ({:?}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        "\n(install it with: pip install -r tests/requirements.txt)"
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// Requests signed by slack_sdk's SignatureVerifier are accepted; the same
/// signature over a tampered body is refused.
#[test]
fn slack_sdk_signed_requests_accepted() {
    let fake = FakeApi::start();
    let gw = start(&fake);
    rt().block_on(async {
        let body = slack_message("Ev0400", "signed by slack_sdk", Some("1700000000.000100"));
        let ts = now_secs().to_string();
        let (ok, sig) = slack_sdk_helper(&["sign", &ts], &body);
        assert!(ok && sig.starts_with("v0="), "{sig}");
        let headers = vec![
            ("x-slack-request-timestamp", ts.clone()),
            ("x-slack-signature", sig.clone()),
        ];
        let resp = post(&gw, "/hooks/slack", &headers, body.clone()).await;
        assert_eq!(resp.status(), 200);
        let posts = fake.wait_for("/api/chat.postMessage", 1);
        assert_eq!(
            posts[0].json()["text"],
            "echo: signed by slack_sdk (turn 1)"
        );

        // The challenge, signed by the SDK, too.
        let challenge =
            br#"{"token":"x","challenge":"sdk-challenge-1","type":"url_verification"}"#.to_vec();
        let (_, csig) = slack_sdk_helper(&["sign", &ts], &challenge);
        let h = vec![
            ("x-slack-request-timestamp", ts.clone()),
            ("x-slack-signature", csig),
        ];
        let resp = post(&gw, "/hooks/slack", &h, challenge).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.json::<Value>().await.unwrap()["challenge"],
            "sdk-challenge-1"
        );

        // One changed character of the body, same SDK signature: refused.
        let tampered = String::from_utf8(body.clone())
            .unwrap()
            .replace("signed by slack_sdk", "signed by slack_sdK")
            .into_bytes();
        let (valid, _) = slack_sdk_helper(&["verify", &ts, &sig], &tampered);
        assert!(!valid, "the SDK itself rejects the tampered body");
        expect_refusal(
            post(&gw, "/hooks/slack", &headers, tampered).await,
            401,
            "unauthenticated",
        )
        .await;
    });
    assert_eq!(accepted(&gw), 1.0);
}

// -------------------------------------------------------------- Discord ----

fn discord_headers(key: &SigningKey, ts: u64, body: &[u8]) -> Vec<(&'static str, String)> {
    let ts = ts.to_string();
    let mut msg = ts.as_bytes().to_vec();
    msg.extend_from_slice(body);
    vec![
        (
            "x-signature-ed25519",
            hex::encode(key.sign(&msg).to_bytes()),
        ),
        ("x-signature-timestamp", ts),
    ]
}

fn discord_command(id: &str, token: &str, question: &str) -> Vec<u8> {
    json!({
        "id": id, "application_id": DISCORD_APP, "type": 2, "token": token, "version": 1,
        "guild_id": "777000", "channel_id": "555000", "channel": {"id": "555000", "type": 0},
        "member": {"user": {"id": "424242", "username": "alice", "global_name": "Alice"}},
        "data": {"id": "99", "name": "ask", "type": 1,
                 "options": [{"type": 3, "name": "question", "value": question}]}
    })
    .to_string()
    .into_bytes()
}

/// Discord's PING is answered with PONG; an unsigned PING gets 401.
#[test]
fn discord_ping_answered_with_pong() {
    let fake = FakeApi::start();
    let gw = start(&fake);
    rt().block_on(async {
        let body =
            br#"{"id":"1","application_id":"123456","type":1,"token":"t","version":1}"#.to_vec();
        let resp = post(
            &gw,
            "/hooks/discord",
            &discord_headers(&discord_key(), now_secs(), &body),
            body.clone(),
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        assert_eq!(resp.json::<Value>().await.unwrap(), json!({"type": 1}));
        gw.wait_audit(|a| {
            a["route"] == "/hooks/discord" && a["decision"] == "answered" && a["reason"] == "ping"
        });
        // Discord probes endpoints with bad signatures and expects 401.
        let other = SigningKey::from_bytes(&[8u8; 32]);
        let h = discord_headers(&other, now_secs(), &body);
        expect_refusal(
            post(&gw, "/hooks/discord", &h, body).await,
            401,
            "unauthenticated",
        )
        .await;
    });
}

/// An application command is answered inline (type 4) within the deadline.
#[test]
fn discord_command_answered_inline() {
    let fake = FakeApi::start();
    let gw = start(&fake);
    rt().block_on(async {
        let body = discord_command("1100000000000000001", "tok-inline_1", "hello discord");
        let started = Instant::now();
        let resp = post(&gw, "/hooks/discord", &discord_headers(&discord_key(), now_secs(), &body), body).await;
        assert_eq!(resp.status(), 200);
        assert!(started.elapsed() < Duration::from_secs(3), "Discord waits 3 s");
        assert_eq!(
            resp.json::<Value>().await.unwrap(),
            json!({"type":4,"data":{"content":"echo: hello discord (turn 1)","allowed_mentions":{"parse":[]}}})
        );
        let audit = gw.wait_audit(|a| a["route"] == "/hooks/discord" && a["decision"] == "answered");
        assert_eq!(audit["reason"], "inline_reply");
        assert_eq!(audit["sender_id"], "424242");
    });
    assert_eq!(accepted(&gw), 1.0);
    assert!(
        fake.requests().is_empty(),
        "an inline reply needs no follow-up"
    );
}

/// With a deadline too short for an inline answer, Discord gets a deferred
/// ack (type 5) and the reply follows through the interaction webhook.
#[test]
fn discord_tiny_deadline_defers_then_follows_up() {
    let fake = FakeApi::start();
    let gw = start(&fake);
    rt().block_on(async {
        let body = discord_command("1100000000000000002", "tok-deferred_2", "take your time");
        let resp = post(
            &gw,
            "/hooks/discord/slow",
            &discord_headers(&discord_key(), now_secs(), &body),
            body,
        )
        .await;
        assert_eq!(resp.status(), 200);
        // 0.8 ms is long gone once the assistant has accepted: the answer
        // must be the deferred ack, not an inline reply.
        let answer = resp.json::<Value>().await.unwrap();
        assert_eq!(
            answer,
            json!({"type": 5}),
            "a zero deadline cannot be met inline: {answer}"
        );
        let path = format!("/api/v10/webhooks/{DISCORD_APP}/tok-deferred_2");
        let calls = fake.wait_for(&path, 1);
        assert_eq!(calls[0].method, "POST");
        assert_eq!(
            calls[0].json(),
            json!({"content":"echo: take your time (turn 1)","allowed_mentions":{"parse":[]}})
        );
        let audit =
            gw.wait_audit(|a| a["route"] == "/hooks/discord/slow" && a["decision"] == "answered");
        assert_eq!(audit["reason"], "deferred_reply");
    });
}

/// Forged, unsigned, stale, malformed and oversized interactions are refused.
#[test]
fn discord_bad_requests_refused() {
    let fake = FakeApi::start();
    let gw = start(&fake);
    let key = discord_key();
    rt().block_on(async {
        let body = discord_command("1100000000000000010", "tok-bad_1", "hello");
        // Signed by another key, unsigned, garbled, or over another body: 401.
        let other = SigningKey::from_bytes(&[9u8; 32]);
        expect_refusal(
            post(
                &gw,
                "/hooks/discord",
                &discord_headers(&other, now_secs(), &body),
                body.clone(),
            )
            .await,
            401,
            "unauthenticated",
        )
        .await;
        expect_refusal(
            post(&gw, "/hooks/discord", &[], body.clone()).await,
            401,
            "unauthenticated",
        )
        .await;
        let garbled = vec![
            ("x-signature-ed25519", "zz".repeat(64)),
            ("x-signature-timestamp", now_secs().to_string()),
        ];
        expect_refusal(
            post(&gw, "/hooks/discord", &garbled, body.clone()).await,
            401,
            "unauthenticated",
        )
        .await;
        let h = discord_headers(&key, now_secs(), b"{}");
        expect_refusal(
            post(&gw, "/hooks/discord", &h, body.clone()).await,
            401,
            "unauthenticated",
        )
        .await;
        // The signature covers the timestamp: a new timestamp breaks it.
        let mut h = discord_headers(&key, now_secs(), &body);
        h[1].1 = (now_secs() + 1).to_string();
        expect_refusal(
            post(&gw, "/hooks/discord", &h, body.clone()).await,
            401,
            "unauthenticated",
        )
        .await;
        // Stale: correctly signed ten minutes ago.
        let h = discord_headers(&key, now_secs() - 600, &body);
        expect_refusal(
            post(&gw, "/hooks/discord", &h, body.clone()).await,
            401,
            "unauthenticated",
        )
        .await;
        // Correctly signed junk.
        for junk in [&b"{\"type\":2,"[..], b"\x00\x01", b"{\"type\":2}"] {
            let h = discord_headers(&key, now_secs(), junk);
            let resp = post(&gw, "/hooks/discord", &h, junk.to_vec()).await;
            assert_eq!(resp.status(), 400, "{junk:?}");
        }
        // Oversized, declared and streamed.
        let big = discord_command("1100000000000000011", "tok-big", &"x".repeat(BODY_LIMIT));
        let h = discord_headers(&key, now_secs(), &big);
        expect_refusal(
            post(&gw, "/hooks/discord", &h, big.clone()).await,
            413,
            "body_too_large",
        )
        .await;
        expect_refusal(
            post(&gw, "/hooks/discord", &h, streamed(big)).await,
            413,
            "body_too_large",
        )
        .await;
        gw.wait_audit(|a| {
            a["route"] == "/hooks/discord" && a["reason"] == "stale_timestamp" && a["status"] == 401
        });
    });
    let m = gw.metrics();
    let rejected = |reason| {
        metric(
            &m,
            "moltgate_rejections_total",
            &[("route", "/hooks/discord"), ("reason", reason)],
        )
    };
    assert_eq!(rejected("bad_signature"), 5.0, "{m}");
    assert_eq!(rejected("stale_timestamp"), 1.0, "{m}");
    assert_eq!(rejected("body_too_large"), 2.0, "{m}");
    assert_eq!(accepted(&gw), 0.0);
    assert!(fake.requests().is_empty());
}

/// Unknown interaction types are acknowledged, not forwarded, counted and
/// audited; the same interaction delivered twice reaches the assistant once.
#[test]
fn discord_unknown_interaction_ignored_and_redelivery_once() {
    let fake = FakeApi::start();
    let gw = start(&fake);
    let key = discord_key();
    rt().block_on(async {
        // Type 4 is autocomplete; 99 is from the future.
        for kind in [4, 99] {
            let body = json!({"id":"1100000000000000020","application_id":DISCORD_APP,"type":kind,"token":"tok-x","version":1,"data":{"name":"ask"}}).to_string().into_bytes();
            let resp = post(&gw, "/hooks/discord", &discord_headers(&key, now_secs(), &body), body).await;
            assert_eq!(resp.status(), 200);
        }
        let a = gw.wait_audit(|a| a["route"] == "/hooks/discord" && a["decision"] == "ignored");
        assert_eq!(a["reason"], "unsupported_interaction");
        let m = gw.metrics();
        assert_eq!(metric(&m, "moltgate_ignored_events_total", &[("platform", "discord"), ("reason", "unsupported_interaction")]), 2.0, "{m}");
        assert_eq!(accepted(&gw), 0.0);

        let body = discord_command("1100000000000000021", "tok-twice", "once please");
        for _ in 0..2 {
            let resp = post(&gw, "/hooks/discord", &discord_headers(&key, now_secs(), &body), body.clone()).await;
            assert_eq!(resp.status(), 200);
        }
        gw.wait_audit(|a| a["route"] == "/hooks/discord" && a["decision"] == "duplicate");
    });
    assert_eq!(accepted(&gw), 1.0);
}

// ------------------------------------------------------------- Telegram ----

fn tg_headers(secret: &str) -> Vec<(&'static str, String)> {
    vec![("x-telegram-bot-api-secret-token", secret.to_string())]
}

fn tg_update(update_id: i64, text: &str) -> Vec<u8> {
    json!({
        "update_id": update_id,
        "message": {
            "message_id": 501, "message_thread_id": 77, "is_topic_message": true, "date": 1_700_000_000,
            "from": {"id": 9001, "is_bot": false, "first_name": "Ada", "username": "ada"},
            "chat": {"id": -1001234567890_i64, "title": "Team", "type": "supergroup", "is_forum": true},
            "text": text
        }
    })
    .to_string()
    .into_bytes()
}

/// Within the deadline the reply rides in the webhook response as a
/// sendMessage call, in the same forum topic.
#[test]
fn telegram_message_answered_inline_in_topic() {
    let fake = FakeApi::start();
    let gw = start(&fake);
    rt().block_on(async {
        let body = tg_update(700001, "hello telegram");
        let resp = post(&gw, "/hooks/telegram", &tg_headers(TG_SECRET), body).await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
        assert_eq!(
            resp.json::<Value>().await.unwrap(),
            json!({"method":"sendMessage","chat_id":-1001234567890_i64,"text":"echo: hello telegram (turn 1)","message_thread_id":77})
        );
        let audit = gw.wait_audit(|a| a["route"] == "/hooks/telegram" && a["decision"] == "answered");
        assert_eq!(audit["reason"], "inline_reply");
        assert_eq!(audit["thread_id"], "77");
    });
    assert_eq!(accepted(&gw), 1.0);
    assert!(
        fake.requests().is_empty(),
        "an inline reply needs no API call"
    );
}

/// With a deadline too short for an inline answer, Telegram gets an empty
/// 200 and the reply goes through the sendMessage API, in the same topic.
#[test]
fn telegram_tiny_deadline_acks_then_calls_send_message() {
    let fake = FakeApi::start();
    let gw = start(&fake);
    rt().block_on(async {
        let body = tg_update(700002, "later please");
        let resp = post(&gw, "/hooks/telegram/slow", &tg_headers(TG_SECRET), body).await;
        assert_eq!(resp.status(), 200);
        let answer = resp.bytes().await.unwrap();
        assert!(
            answer.is_empty(),
            "a zero deadline cannot be met inline; the ack must be empty, got {}",
            String::from_utf8_lossy(&answer)
        );
        let calls = fake.wait_for(&format!("/bot{TG_BOT_TOKEN}/sendMessage"), 1);
        assert_eq!(
            calls[0].json(),
            json!({"chat_id":-1001234567890_i64,"text":"echo: later please (turn 1)","message_thread_id":77})
        );
    });
    assert!(
        !gw.log_text().contains(TG_BOT_TOKEN),
        "the bot token is never logged"
    );
}

/// A wrong or missing secret token, malformed and oversized updates are refused.
#[test]
fn telegram_bad_requests_refused() {
    let fake = FakeApi::start();
    let gw = start(&fake);
    rt().block_on(async {
        let body = tg_update(700010, "hello");
        expect_refusal(
            post(
                &gw,
                "/hooks/telegram",
                &tg_headers("tg_secret-token-2"),
                body.clone(),
            )
            .await,
            401,
            "unauthenticated",
        )
        .await;
        expect_refusal(
            post(
                &gw,
                "/hooks/telegram",
                &tg_headers(&TG_SECRET[..TG_SECRET.len() - 1]),
                body.clone(),
            )
            .await,
            401,
            "unauthenticated",
        )
        .await;
        // No secret header at all: the same answer as a wrong one.
        expect_refusal(
            post(&gw, "/hooks/telegram", &[], body.clone()).await,
            401,
            "unauthenticated",
        )
        .await;
        for junk in [
            &b"{\"update_id\":"[..],
            b"\xff",
            b"{\"message\":{}}",
            b"{\"update_id\":1,\"message\":7}",
        ] {
            let resp = post(
                &gw,
                "/hooks/telegram",
                &tg_headers(TG_SECRET),
                junk.to_vec(),
            )
            .await;
            assert_eq!(resp.status(), 400, "{junk:?}");
        }
        let big = tg_update(700011, &"x".repeat(BODY_LIMIT));
        expect_refusal(
            post(&gw, "/hooks/telegram", &tg_headers(TG_SECRET), big.clone()).await,
            413,
            "body_too_large",
        )
        .await;
        expect_refusal(
            post(
                &gw,
                "/hooks/telegram",
                &tg_headers(TG_SECRET),
                streamed(big),
            )
            .await,
            413,
            "body_too_large",
        )
        .await;
        gw.wait_audit(|a| {
            a["route"] == "/hooks/telegram" && a["reason"] == "bad_signature" && a["status"] == 401
        });
    });
    let m = gw.metrics();
    let rejected = |reason| {
        metric(
            &m,
            "moltgate_rejections_total",
            &[("route", "/hooks/telegram"), ("reason", reason)],
        )
    };
    assert_eq!(rejected("bad_signature"), 2.0, "{m}");
    // The missing header, and one well-authenticated update without an id.
    assert_eq!(rejected("missing_field"), 2.0, "{m}");
    assert_eq!(rejected("body_too_large"), 2.0, "{m}");
    assert_eq!(accepted(&gw), 0.0);
    assert!(!gw.log_text().contains(TG_SECRET));
}

/// Unknown update types and bot messages are acknowledged, not forwarded,
/// counted and audited; a redelivered update reaches the assistant once.
#[test]
fn telegram_unknown_update_ignored_and_redelivery_once() {
    let fake = FakeApi::start();
    let gw = start(&fake);
    rt().block_on(async {
        let poll = json!({"update_id": 700020, "poll": {"id": "p1", "question": "?", "options": [], "total_voter_count": 0, "is_closed": false, "is_anonymous": true, "type": "regular", "allows_multiple_answers": false}});
        let bot = json!({"update_id": 700021, "message": {"message_id": 1, "date": 1, "from": {"id": 5, "is_bot": true, "first_name": "Bot"}, "chat": {"id": 5, "type": "private"}, "text": "echo"}});
        for body in [poll, bot] {
            let resp = post(&gw, "/hooks/telegram", &tg_headers(TG_SECRET), body.to_string()).await;
            assert_eq!(resp.status(), 200);
            assert!(resp.bytes().await.unwrap().is_empty());
        }
        let a = gw.wait_audit(|a| a["route"] == "/hooks/telegram" && a["decision"] == "ignored" && a["reason"] == "unsupported_update");
        assert_eq!(a["status"], 200);
        let m = gw.metrics();
        assert_eq!(metric(&m, "moltgate_ignored_events_total", &[("platform", "telegram"), ("reason", "unsupported_update")]), 1.0, "{m}");
        assert_eq!(metric(&m, "moltgate_ignored_events_total", &[("platform", "telegram"), ("reason", "bot_message")]), 1.0, "{m}");
        assert_eq!(accepted(&gw), 0.0);

        let body = tg_update(700022, "just once");
        let first = post(&gw, "/hooks/telegram", &tg_headers(TG_SECRET), body.clone()).await;
        assert_eq!(first.status(), 200);
        assert_eq!(first.json::<Value>().await.unwrap()["text"], "echo: just once (turn 1)");
        let again = post(&gw, "/hooks/telegram", &tg_headers(TG_SECRET), body).await;
        assert_eq!(again.status(), 200);
        assert!(again.bytes().await.unwrap().is_empty(), "the redelivery is only acknowledged");
        gw.wait_audit(|a| a["route"] == "/hooks/telegram" && a["decision"] == "duplicate");
    });
    assert_eq!(accepted(&gw), 1.0);
    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            "moltgate_duplicate_messages_total",
            &[("platform", "telegram")]
        ),
        1.0,
        "{m}"
    );
}
