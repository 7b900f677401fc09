//! Passthrough mode against the real binary: an existing bot (the fake
//! platform API, which records what it receives) behind `mode: passthrough`
//! routes with an `http` upstream. The original request reaches the bot
//! unchanged when policy changes nothing; masked content is re-signed where
//! the platform allows it and refused where it does not; oversized and
//! forged requests never reach the bot.

mod common;

use common::{expect_refusal, now_secs, post, rt, streamed};

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::fake_api::{FakeApi, OK_BODY};
use common::{Gateway, Setup};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::json;

const SLACK_SECRET: &str = "legacy-slack-signing-secret";
const TG_SECRET: &str = "legacy_tg-secret";
const DISCORD_APP: &str = "123456";
/// Pingora buffers at most 64 KiB of a passthrough body to re-send it.
const PASSTHROUGH_LIMIT: usize = 64 * 1024;

fn discord_key() -> SigningKey {
    SigningKey::from_bytes(&[11u8; 32])
}

/// A gateway whose Slack, Telegram and Discord routes proxy to `bot`, with
/// the shipped DLP policy (Chinese mobile numbers are masked).
fn start(bot: &FakeApi) -> Gateway {
    start_at(bot.port)
}

/// The same, with the bot on `port`.
fn start_at(port: u16) -> Gateway {
    let public_key = hex::encode(discord_key().verifying_key().to_bytes());
    let dlp =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/dlp.yaml")).unwrap();
    let mut setup = Setup {
        upstreams: format!(
            "  assistant: {{ kind: grpc, nodes: [embedded], balance: conversation, timeout: 5s }}\n  legacy-bot: {{ kind: http, nodes: [\"127.0.0.1:{}\"] }}\n",
            port
        ),
        routes: format!(
            "  - {{ path: /hooks/slack/legacy, platform: slack, mode: passthrough, upstream: legacy-bot,\n      secrets: {{ signing_secret: \"{SLACK_SECRET}\" }} }}\n\
             \x20 - {{ path: /hooks/telegram/legacy, platform: telegram, mode: passthrough, upstream: legacy-bot,\n      secrets: {{ secret_token: \"{TG_SECRET}\" }} }}\n\
             \x20 - {{ path: /hooks/discord/legacy, platform: discord, mode: passthrough, upstream: legacy-bot,\n      secrets: {{ public_key: \"{public_key}\", application_id: \"{DISCORD_APP}\" }} }}\n"
        ),
        ..Setup::default()
    };
    setup.policies.push(("dlp.yaml", dlp));
    // A Discord interaction is a command (`/ask`): the sender needs a role for it.
    setup.policies.push((
        "permissions.yaml",
        "roles:\n  asker: [command:ask]\nsubjects:\n  \"discord:424242\": [asker]\n".into(),
    ));
    setup.start()
}

/// The bot's answer comes back to the platform as it was.
async fn expect_bot_answer(resp: reqwest::Response) {
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), OK_BODY);
}

fn tg_headers(secret: &str) -> Vec<(&'static str, String)> {
    vec![("x-telegram-bot-api-secret-token", secret.to_string())]
}

fn tg_update(update_id: i64, text: &str) -> Vec<u8> {
    json!({
        "update_id": update_id,
        "message": {
            "message_id": 31, "message_thread_id": 5, "date": 1_700_000_000,
            "from": {"id": 9001, "is_bot": false, "first_name": "Ada"},
            "chat": {"id": -100777, "type": "supergroup"},
            "text": text,
            "entities": [{"type": "bold", "offset": 0, "length": 4},
                         {"type": "phone_number", "offset": 5, "length": 11}]
        }
    })
    .to_string()
    .into_bytes()
}

fn slack_headers(ts: u64, body: &[u8]) -> Vec<(&'static str, String)> {
    let ts = ts.to_string();
    let sig = moltgate::platform::slack::sign(SLACK_SECRET, &ts, body);
    vec![
        ("x-slack-request-timestamp", ts),
        ("x-slack-signature", sig),
    ]
}

fn slack_message(event_id: &str, text: &str) -> Vec<u8> {
    json!({
        "token": "unused", "team_id": "T0001", "type": "event_callback",
        "event_id": event_id, "event_time": 1_700_000_000,
        "event": {
            "type": "message", "channel": "C0123", "user": "U0456", "ts": "1700000000.000200",
            "text": text,
            "blocks": [{"type": "rich_text", "elements": [{"type": "rich_text_section",
                        "elements": [{"type": "text", "text": text}]}]}]
        }
    })
    .to_string()
    .into_bytes()
}

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

fn discord_command(id: &str, question: &str) -> Vec<u8> {
    json!({
        "id": id, "application_id": DISCORD_APP, "type": 2, "token": "tok-legacy", "version": 1,
        "guild_id": "777000", "channel_id": "555000",
        "member": {"user": {"id": "424242", "username": "alice"}},
        "data": {"id": "99", "name": "ask", "type": 1,
                 "options": [{"type": 3, "name": "question", "value": question}]}
    })
    .to_string()
    .into_bytes()
}

/// Verifies a Slack signature with Slack's own Python SDK
/// (tests/thirdparty/slack_sign.py).
fn slack_sdk_accepts(timestamp: &str, signature: &str, body: &[u8]) -> bool {
    use std::io::Write;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/thirdparty/slack_sign.py"
    );
    let mut child = Command::new("python3")
        .args([script, "verify", timestamp, signature])
        .env("SLACK_SIGNING_SECRET", SLACK_SECRET)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed for the third-party Slack check");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "slack_sign.py failed ({:?}): {}\n(install it with: pip install -r tests/requirements.txt)",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.success()
}

/// Telegram: with nothing to mask, the bot gets the original body and the
/// secret header byte for byte, and its answer goes back to Telegram.
#[test]
fn telegram_passthrough_forwards_original_unchanged() {
    let bot = FakeApi::start();
    let gw = start(&bot);
    rt().block_on(async {
        // Unusual but valid JSON formatting must survive: no re-serialising.
        let body = br#"{ "update_id" : 880001, "message" : {"message_id":31,"date":1700000000,"from":{"id":9001,"is_bot":false,"first_name":"Ada"},"chat":{"id":-100777,"type":"supergroup"},"text":"what is \u00e9?"} }"#.to_vec();
        let resp = post(&gw, "/hooks/telegram/legacy", &tg_headers(TG_SECRET), body.clone()).await;
        expect_bot_answer(resp).await;
        let got = bot.wait_for("/hooks/telegram/legacy", 1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].method, "POST");
        assert_eq!(got[0].body, body, "the body is passed on unchanged");
        assert_eq!(got[0].headers["x-telegram-bot-api-secret-token"], TG_SECRET);
        let audit = gw.wait_audit(|a| a["route"] == "/hooks/telegram/legacy" && a["decision"] == "proxied");
        assert_eq!(audit["node"], format!("127.0.0.1:{}", bot.port));
        assert_eq!(audit["sender_id"], "9001");

        // The same over HTTP/2 (the bot speaks HTTP/1.1).
        let body = tg_update(880003, "over h2");
        let resp = gw
            .client(false)
            .post(gw.url("/hooks/telegram/legacy"))
            .header("x-telegram-bot-api-secret-token", TG_SECRET)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        expect_bot_answer(resp).await;
        let got = bot.wait_for("/hooks/telegram/legacy", 2);
        assert_eq!(got[1].body, body);
        assert_eq!(got[1].headers["x-telegram-bot-api-secret-token"], TG_SECRET);
    });
    let m = gw.metrics();
    assert!(
        m.contains(r#"moltgate_requests_total{outcome="proxied",platform="telegram",route="/hooks/telegram/legacy"} 2"#),
        "{m}"
    );
    assert!(
        !m.contains("moltgate_upstream_attempts_total{"),
        "the AI cluster is not involved: {m}"
    );
}

/// Telegram: a masked phone number reaches the bot masked, with the secret
/// header and the entities that still fit.
#[test]
fn telegram_passthrough_masks_phone_numbers() {
    let bot = FakeApi::start();
    let gw = start(&bot);
    rt().block_on(async {
        // The phone_number entity covered the number; once masked it covers
        // nothing it used to, so it goes; the bold "Call" stays.
        let body = tg_update(880002, "Call 13812345678 please");
        let resp = post(&gw, "/hooks/telegram/legacy", &tg_headers(TG_SECRET), body).await;
        expect_bot_answer(resp).await;
        let got = &bot.wait_for("/hooks/telegram/legacy", 1)[0];
        let raw = String::from_utf8_lossy(&got.body);
        assert!(!raw.contains("13812345678"), "{raw}");
        let v = got.json();
        assert_eq!(v["message"]["text"], "Call 138****5678 please");
        assert_eq!(
            v["message"]["entities"],
            json!([{"type":"bold","offset":0,"length":4}])
        );
        assert_eq!(v["update_id"], 880002);
        assert_eq!(got.headers["x-telegram-bot-api-secret-token"], TG_SECRET);
        assert_eq!(got.headers["content-length"], got.body.len().to_string());
    });
    let m = gw.metrics();
    assert!(
        m.contains(
            r#"moltgate_dlp_findings_total{action="mask",direction="ingress",rule="cn_mobile"} 1"#
        ),
        "{m}"
    );
    assert!(
        !gw.log_text().contains("13812345678"),
        "DLP values never reach the logs"
    );
}

/// Slack: a phone number reaches the bot masked (text and blocks) and the
/// body is re-signed with the route's secret and a new timestamp; Slack's
/// own SDK accepts the new signature. A clean message passes unchanged.
#[test]
fn slack_passthrough_masks_and_resigns() {
    let bot = FakeApi::start();
    let gw = start(&bot);
    rt().block_on(async {
        // Signed two minutes ago (inside Slack's window): the reseal must
        // carry a fresh timestamp.
        let old_ts = now_secs() - 120;
        let body = slack_message("EvP001", "<@UBOT> call me at 13812345678");
        let resp = post(
            &gw,
            "/hooks/slack/legacy",
            &slack_headers(old_ts, &body),
            body,
        )
        .await;
        expect_bot_answer(resp).await;
        let got = bot.wait_for("/hooks/slack/legacy", 1)[0].clone();
        let raw = String::from_utf8_lossy(&got.body).to_string();
        assert!(
            !raw.contains("13812345678"),
            "never passed on unmasked: {raw}"
        );
        let v = got.json();
        assert_eq!(v["event"]["text"], "<@UBOT> call me at 138****5678");
        assert_eq!(v["event_id"], "EvP001");
        assert_eq!(v["event"]["user"], "U0456");
        let ts = got.headers["x-slack-request-timestamp"].clone();
        let sig = got.headers["x-slack-signature"].clone();
        let ts_n: u64 = ts.parse().unwrap();
        assert!(
            ts_n > old_ts && ts_n.abs_diff(now_secs()) <= 10,
            "fresh timestamp: {ts} vs {old_ts}"
        );
        moltgate::platform::slack::verify(SLACK_SECRET, &ts, &got.body, &sig)
            .expect("the bot can verify the new signature");
        assert!(
            slack_sdk_accepts(&ts, &sig, &got.body),
            "slack_sdk accepts the re-signed request"
        );
        assert_eq!(got.headers["content-length"], got.body.len().to_string());
        let audit =
            gw.wait_audit(|a| a["route"] == "/hooks/slack/legacy" && a["decision"] == "proxied");
        assert_eq!(audit["reason"], "resealed");

        // The original arriving in chunks, without Content-Length: the bot
        // still gets the whole resealed body, once, with its length.
        let body = slack_message("EvP003", &format!("{} 13912345678", "pad ".repeat(4000)));
        let resp = post(
            &gw,
            "/hooks/slack/legacy",
            &slack_headers(now_secs(), &body),
            streamed(body),
        )
        .await;
        expect_bot_answer(resp).await;
        let got = bot.wait_for("/hooks/slack/legacy", 2)[1].clone();
        let v = got.json();
        assert_eq!(v["event_id"], "EvP003");
        let text = v["event"]["text"].as_str().unwrap();
        assert!(
            text.ends_with("pad  139****5678"),
            "{}",
            &text[text.len().saturating_sub(60)..]
        );
        assert_eq!(got.headers["content-length"], got.body.len().to_string());
        assert!(
            !got.headers.contains_key("transfer-encoding"),
            "{:?}",
            got.headers
        );
        moltgate::platform::slack::verify(
            SLACK_SECRET,
            &got.headers["x-slack-request-timestamp"],
            &got.body,
            &got.headers["x-slack-signature"],
        )
        .expect("the chunked original is resealed whole");

        // Nothing to mask: body and signature headers pass unchanged.
        let body = slack_message("EvP002", "nothing sensitive here");
        let headers = slack_headers(old_ts, &body);
        let resp = post(&gw, "/hooks/slack/legacy", &headers, body.clone()).await;
        expect_bot_answer(resp).await;
        let got = bot.wait_for("/hooks/slack/legacy", 3)[2].clone();
        assert_eq!(got.body, body);
        assert_eq!(got.headers["x-slack-request-timestamp"], headers[0].1);
        assert_eq!(got.headers["x-slack-signature"], headers[1].1);
    });
}

/// Discord: only Discord holds the signing key, so a body with maskable
/// content is refused, never passed on unmasked; a clean one is proxied.
#[test]
fn discord_passthrough_refuses_maskable_content() {
    let bot = FakeApi::start();
    let gw = start(&bot);
    let key = discord_key();
    rt().block_on(async {
        let body = discord_command("1200000000000000001", "my number is 13812345678");
        let resp = post(
            &gw,
            "/hooks/discord/legacy",
            &discord_headers(&key, now_secs(), &body),
            body,
        )
        .await;
        expect_refusal(resp, 403, "cannot_reseal").await;
        let audit = gw.wait_audit(|a| {
            a["route"] == "/hooks/discord/legacy" && a["reason"] == "cannot_reseal"
        });
        assert_eq!(audit["status"], 403);

        // A clean interaction goes through, original bytes and signature.
        let body = discord_command("1200000000000000002", "nothing to hide");
        let headers = discord_headers(&key, now_secs(), &body);
        let resp = post(&gw, "/hooks/discord/legacy", &headers, body.clone()).await;
        expect_bot_answer(resp).await;
        // The bot saw only the clean one (requests are sequential).
        let got = bot.requests();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].body, body);
        assert_eq!(got[0].headers["x-signature-ed25519"], headers[0].1);
        assert_eq!(got[0].headers["x-signature-timestamp"], headers[1].1);
    });
    assert!(!gw.log_text().contains("13812345678"));
}

/// A passthrough body past 64 KiB gets 413, declared or streamed, and never
/// reaches the bot; one just under the limit is proxied whole.
#[test]
fn passthrough_body_over_64k_is_413() {
    let bot = FakeApi::start();
    let gw = start(&bot);
    rt().block_on(async {
        let big = tg_update(880010, &"x".repeat(PASSTHROUGH_LIMIT));
        assert!(big.len() > PASSTHROUGH_LIMIT);
        let resp = post(
            &gw,
            "/hooks/telegram/legacy",
            &tg_headers(TG_SECRET),
            big.clone(),
        )
        .await;
        expect_refusal(resp, 413, "body_too_large").await;
        let resp = post(
            &gw,
            "/hooks/telegram/legacy",
            &tg_headers(TG_SECRET),
            streamed(big),
        )
        .await;
        expect_refusal(resp, 413, "body_too_large").await;
        let big = slack_message("EvP010", &"y".repeat(PASSTHROUGH_LIMIT / 2));
        assert!(big.len() > PASSTHROUGH_LIMIT);
        let resp = post(
            &gw,
            "/hooks/slack/legacy",
            &slack_headers(now_secs(), &big),
            big,
        )
        .await;
        expect_refusal(resp, 413, "body_too_large").await;

        // Just under the limit: proxied, whole.
        let fits = tg_update(880011, &"z".repeat(PASSTHROUGH_LIMIT - 400));
        assert!(fits.len() <= PASSTHROUGH_LIMIT, "{}", fits.len());
        let resp = post(
            &gw,
            "/hooks/telegram/legacy",
            &tg_headers(TG_SECRET),
            fits.clone(),
        )
        .await;
        expect_bot_answer(resp).await;
        let got = bot.requests();
        assert_eq!(got.len(), 1, "only the one that fits reached the bot");
        assert_eq!(got[0].body.len(), fits.len());
        assert_eq!(got[0].body, fits);
    });
    let m = gw.metrics();
    assert!(
        m.contains(
            r#"moltgate_rejections_total{reason="body_too_large",route="/hooks/telegram/legacy"} 2"#
        ),
        "{m}"
    );
}

/// Forged, stale and unsigned requests are refused and never reach the bot.
#[test]
fn passthrough_forged_requests_never_reach_bot() {
    let bot = FakeApi::start();
    let gw = start(&bot);
    rt().block_on(async {
        let tg = tg_update(880020, "hello");
        expect_refusal(
            post(
                &gw,
                "/hooks/telegram/legacy",
                &tg_headers("legacy_tg-secreT"),
                tg.clone(),
            )
            .await,
            401,
            "unauthenticated",
        )
        .await;
        let resp = post(&gw, "/hooks/telegram/legacy", &[], tg.clone()).await;
        assert!(resp.status().is_client_error(), "{}", resp.status());

        let slack = slack_message("EvP020", "hello");
        let ts = now_secs().to_string();
        let forged = vec![
            ("x-slack-request-timestamp", ts.clone()),
            (
                "x-slack-signature",
                moltgate::platform::slack::sign("guessed", &ts, &slack),
            ),
        ];
        expect_refusal(
            post(&gw, "/hooks/slack/legacy", &forged, slack.clone()).await,
            401,
            "unauthenticated",
        )
        .await;
        let stale = slack_headers(now_secs() - 900, &slack);
        expect_refusal(
            post(&gw, "/hooks/slack/legacy", &stale, slack.clone()).await,
            401,
            "unauthenticated",
        )
        .await;

        let discord = discord_command("1200000000000000020", "hello");
        let other = SigningKey::from_bytes(&[12u8; 32]);
        expect_refusal(
            post(
                &gw,
                "/hooks/discord/legacy",
                &discord_headers(&other, now_secs(), &discord),
                discord.clone(),
            )
            .await,
            401,
            "unauthenticated",
        )
        .await;
        expect_refusal(
            post(&gw, "/hooks/discord/legacy", &[], discord).await,
            401,
            "unauthenticated",
        )
        .await;

        // A genuine one afterwards is the first and only thing the bot sees.
        let resp = post(
            &gw,
            "/hooks/telegram/legacy",
            &tg_headers(TG_SECRET),
            tg.clone(),
        )
        .await;
        expect_bot_answer(resp).await;
        let got = bot.requests();
        assert_eq!(
            got.len(),
            1,
            "{:?}",
            got.iter().map(|r| &r.path).collect::<Vec<_>>()
        );
        assert_eq!(got[0].body, tg);
    });
    let m = gw.metrics();
    for (route, n) in [
        ("/hooks/slack/legacy", 1),
        ("/hooks/discord/legacy", 2),
        ("/hooks/telegram/legacy", 1),
    ] {
        assert!(
            m.contains(&format!(
                "moltgate_rejections_total{{reason=\"bad_signature\",route=\"{route}\"}} {n}"
            )),
            "{route}: {m}"
        );
    }
    assert!(!gw.log_text().contains(SLACK_SECRET) && !gw.log_text().contains(TG_SECRET));
}

/// A bot on raw sockets that answers every request `200 ok`, counting the
/// connections it accepted; with `close_after_answer` it closes each
/// connection after its first answer without saying so (no `Connection:
/// close`), as a bot behind an aggressive load balancer does.
fn raw_bot(close_after_answer: bool) -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (connections, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (conns, reqs) = (connections.clone(), requests.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            conns.fetch_add(1, Ordering::SeqCst);
            let reqs = reqs.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request: the header, then Content-Length bytes of body.
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if buf.len() < end + 4 + length {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    }
                    buf.drain(..end + 4 + length);
                    reqs.fetch_add(1, Ordering::SeqCst);
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";
                    if stream.write_all(answer).is_err() || close_after_answer {
                        return;
                    }
                }
            });
        }
    });
    (port, connections, requests)
}

/// Bot connections are pooled and reused; a bot that closes each one after
/// answering still gets every message, none answered with an error.
#[test]
fn every_message_reaches_a_bot_whether_it_keeps_connections_or_closes_them() {
    const MESSAGES: usize = 20;
    for close_after_answer in [false, true] {
        let (port, connections, requests) = raw_bot(close_after_answer);
        let gw = start_at(port);
        rt().block_on(async {
            for i in 0..MESSAGES {
                let body = tg_update(890_000 + i as i64, &format!("message {i}"));
                let resp = post(&gw, "/hooks/telegram/legacy", &tg_headers(TG_SECRET), body).await;
                assert_eq!(
                    resp.status(),
                    200,
                    "message {i} (close_after_answer: {close_after_answer})"
                );
                assert_eq!(resp.text().await.unwrap(), "ok");
            }
        });
        assert_eq!(
            requests.load(Ordering::SeqCst),
            MESSAGES,
            "each message reached the bot once"
        );
        let opened = connections.load(Ordering::SeqCst);
        if close_after_answer {
            assert_eq!(opened, MESSAGES, "one connection per message");
        } else {
            assert!(
                opened <= 2,
                "{opened} connections for {MESSAGES} sequential messages: not pooled"
            );
        }
    }
}
