//! Feishu, WeCom and DingTalk routes against the real binary: translate mode,
//! the embedded assistant, and each platform's API pointed at a local fake.
//! Per platform: a message answered (inline or through the API), forged and
//! stale signatures, malformed and oversized bodies, unknown events, a
//! redelivery, and the URL challenge. WeCom is also driven end to end by a
//! third party, `wechatpy` (tests/thirdparty/wecom_wechatpy.py).

mod common;

use common::rt;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::fake_api::FakeApi;
use common::{Gateway, Setup};
use moltgate::platform::wxcrypt::{self, WxCrypt};
use moltgate::platform::{dingtalk, feishu, wecom};
use serde_json::{json, Value};

// ---------------------------------------------------------------- helpers

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The clock in milliseconds, strictly increasing across calls: DingTalk's
/// robot sign covers only the timestamp, so the gateway accepts one body per
/// signed timestamp, and two test messages must never share one.
fn now_millis() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let prev = LAST.fetch_max(now, Ordering::SeqCst);
    if now > prev {
        now
    } else {
        LAST.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// One gateway with `routes` and the embedded assistant.
fn gateway(routes: String) -> Gateway {
    Setup {
        routes,
        ..Default::default()
    }
    .start()
}

/// A webhook answer, read whole.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    body: String,
    elapsed: Duration,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {:?}", self.body))
    }
}

async fn send(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, String)],
    body: String,
) -> Answer {
    let started = Instant::now();
    let mut req = c.request(method, url).body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("request to {url} failed: {e:?}"));
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = resp.text().await.unwrap();
    Answer {
        status,
        content_type,
        body,
        elapsed: started.elapsed(),
    }
}

async fn post(c: &reqwest::Client, url: &str, headers: &[(&str, String)], body: String) -> Answer {
    send(c, reqwest::Method::POST, url, headers, body).await
}

/// The value of one exact Prometheus series (labels in sorted order), 0 if absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|r| r.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Sum of every series of `name` whose labels contain all of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Upstream attempts the assistant accepted, over every node.
fn accepted_attempts(gw: &Gateway) -> f64 {
    metric_sum(
        &gw.metrics(),
        "moltgate_upstream_attempts_total",
        &["result=\"accepted\""],
    )
}

/// Polls the metrics (bounded: 10 s) until `series` reaches `want`.
fn wait_metric(gw: &Gateway, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = gw.metrics();
        if metric(&text, series) >= want {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {want}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Audit lines on `route` with `decision`.
fn audits(gw: &Gateway, route: &str, decision: &str) -> Vec<Value> {
    gw.audit_lines()
        .into_iter()
        .filter(|a| a["route"] == route && a["decision"] == decision)
        .collect()
}

/// Waits (bounded: 10 s) until at least `n` audit lines on `route` have
/// `decision` (they arrive through the gateway's stderr); returns them all.
fn wait_audits(gw: &Gateway, route: &str, decision: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = audits(gw, route, decision);
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} '{decision}' audit lines on {route}; logs:\n{}",
            found.len(),
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn requests_series(route: &str, platform: &str, outcome: &str) -> String {
    format!(
        "moltgate_requests_total{{outcome=\"{outcome}\",platform=\"{platform}\",route=\"{route}\"}}"
    )
}

fn rejections_series(route: &str, reason: &str) -> String {
    format!("moltgate_rejections_total{{reason=\"{reason}\",route=\"{route}\"}}")
}

/// RFC 3986 percent-encoding of a query value.
fn q(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------- Feishu

const FS_PATH: &str = "/hooks/feishu";
const FS_PLAIN_PATH: &str = "/hooks/feishu/plain";
const FS_TOKEN: &str = "fs-verification-token";
const FS_KEY: &str = "fs encrypt key";
const FS_APP_ID: &str = "cli_moltgate_test";
const FS_APP_SECRET: &str = "fs-app-secret";

fn feishu_gateway(fake: &FakeApi) -> Gateway {
    gateway(format!(
        "  - {{ path: {FS_PATH}, platform: feishu, upstream: assistant, deadline: 3s, body_limit: 4096, api_base: \"{}\", secrets: {{ verification_token: {FS_TOKEN}, encrypt_key: \"{FS_KEY}\", app_id: {FS_APP_ID}, app_secret: {FS_APP_SECRET} }} }}\n  - {{ path: {FS_PLAIN_PATH}, platform: feishu, upstream: assistant, api_base: \"{}\", secrets: {{ verification_token: {FS_TOKEN} }} }}\n",
        fake.base(),
        fake.base()
    ))
}

/// A v2 `im.message.receive_v1` (or another `event_type`) event.
fn feishu_event(event_type: &str, message_id: &str, text: &str, token: &str) -> Value {
    json!({
        "schema": "2.0",
        "header": {
            "event_id": format!("ev_{message_id}"), "token": token,
            "create_time": format!("{}", now_millis()),
            "event_type": event_type, "tenant_key": "tenant_1", "app_id": FS_APP_ID
        },
        "event": {
            "sender": {
                "sender_id": { "open_id": "ou_alice", "user_id": "u_alice", "union_id": "on_alice" },
                "sender_type": "user", "tenant_key": "tenant_1"
            },
            "message": {
                "message_id": message_id, "root_id": "", "parent_id": "",
                "chat_id": "oc_chat_1", "chat_type": "p2p", "message_type": "text",
                "content": json!({ "text": text }).to_string()
            }
        }
    })
}

/// Encrypts `event` into `{"encrypt": ..}`.
fn feishu_sealed(event: &Value) -> String {
    let iv: [u8; 16] = rand::random();
    json!({ "encrypt": feishu::encrypt(FS_KEY, event.to_string().as_bytes(), &iv) }).to_string()
}

/// Signature headers over `body`, signed with `key` at `ts`.
fn feishu_headers(key: &str, ts: i64, body: &str) -> Vec<(&'static str, String)> {
    let ts = ts.to_string();
    let nonce = hex::encode(rand::random::<[u8; 8]>());
    let sig = feishu::signature(&ts, &nonce, key, body.as_bytes());
    vec![
        ("content-type", "application/json".to_string()),
        ("x-lark-request-timestamp", ts),
        ("x-lark-request-nonce", nonce),
        ("x-lark-signature", sig),
    ]
}

/// An encrypted, correctly signed message delivery.
fn feishu_delivery(event: &Value) -> (Vec<(&'static str, String)>, String) {
    let body = feishu_sealed(event);
    (feishu_headers(FS_KEY, now_secs(), &body), body)
}

/// Two messages: acked with an empty 200 within the deadline, answered
/// through the reply API with one tenant_access_token fetched and reused.
#[test]
fn feishu_message_acked_and_replied_with_cached_token() {
    let fake = FakeApi::start();
    let gw = feishu_gateway(&fake);
    let c = gw.client(true);
    let url = gw.url(FS_PATH);
    rt().block_on(async {
        for (i, (id, text)) in [("om_first", "hello feishu"), ("om_second", "again")]
            .into_iter()
            .enumerate()
        {
            let (headers, body) =
                feishu_delivery(&feishu_event("im.message.receive_v1", id, text, FS_TOKEN));
            let a = post(&c, &url, &headers, body).await;
            assert_eq!(a.status, 200, "{a:?}");
            assert!(a.body.is_empty(), "Feishu gets an empty ack: {a:?}");
            assert!(
                a.elapsed < Duration::from_secs(3),
                "ack after the 3 s deadline: {a:?}"
            );

            let replies = fake.wait_for("/open-apis/im/v1/messages/", i + 1);
            let r = &replies[i];
            assert_eq!(r.method, "POST");
            assert_eq!(r.path, format!("/open-apis/im/v1/messages/{id}/reply"));
            assert_eq!(r.headers["authorization"], "Bearer t-fake-token");
            let sent = r.json();
            assert_eq!(sent["msg_type"], "text");
            let content: Value = serde_json::from_str(sent["content"].as_str().unwrap()).unwrap();
            // Each message stands alone here; turns are checked in
            // `feishu_conversation_context_counts_turns`.
            assert!(
                content["text"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("echo: {text} (turn ")),
                "{content}"
            );
        }
    });
    // One token fetch, with the app credentials, served both replies.
    let fetches = fake.requests_to("/open-apis/auth/v3/tenant_access_token/internal");
    assert_eq!(fetches.len(), 1, "token fetched once and cached");
    assert_eq!(
        fetches[0].json(),
        json!({"app_id": FS_APP_ID, "app_secret": FS_APP_SECRET})
    );
    let metrics = wait_metric(
        &gw,
        "moltgate_writeback_total{platform=\"feishu\",result=\"sent\"}",
        2.0,
    );
    assert_eq!(
        metric(&metrics, &requests_series(FS_PATH, "feishu", "answered")),
        2.0,
        "{metrics}"
    );
    // Neither the text nor the app secret reaches the logs.
    let logs = gw.log_text();
    assert!(!logs.contains("hello feishu") && !logs.contains(FS_APP_SECRET));
}

/// A forged signature, a wrong verification token and a stale timestamp
/// are refused with 401; nothing reaches the assistant.
#[test]
fn feishu_forged_and_stale_refused() {
    let fake = FakeApi::start();
    let gw = feishu_gateway(&fake);
    let c = gw.client(true);
    let url = gw.url(FS_PATH);
    rt().block_on(async {
        let event = feishu_event("im.message.receive_v1", "om_forged", "hi", FS_TOKEN);
        // Signed with a guessed key.
        let body = feishu_sealed(&event);
        let a = post(
            &c,
            &url,
            &feishu_headers("guessed key", now_secs(), &body),
            body,
        )
        .await;
        assert_eq!(a.status, 401, "{a:?}");
        assert_eq!(a.json()["error"], "unauthenticated");
        // Signature tampered after signing (first hex digit changed).
        let body = feishu_sealed(&event);
        let mut headers = feishu_headers(FS_KEY, now_secs(), &body);
        let sig = &mut headers[3].1;
        let flipped = if sig.starts_with('0') { "1" } else { "0" };
        sig.replace_range(..1, flipped);
        assert_eq!(post(&c, &url, &headers, body).await.status, 401);
        // Right key, wrong verification token inside.
        let (headers, body) = feishu_delivery(&feishu_event(
            "im.message.receive_v1",
            "om_token",
            "hi",
            "not-the-token",
        ));
        assert_eq!(post(&c, &url, &headers, body).await.status, 401);
        // Correctly signed, 10 minutes old (the window is 5 minutes).
        let body = feishu_sealed(&feishu_event(
            "im.message.receive_v1",
            "om_stale",
            "hi",
            FS_TOKEN,
        ));
        let a = post(
            &c,
            &url,
            &feishu_headers(FS_KEY, now_secs() - 600, &body),
            body,
        )
        .await;
        assert_eq!(a.status, 401, "{a:?}");
        assert_eq!(a.json()["error"], "unauthenticated");
    });
    let metrics = gw.metrics();
    assert_eq!(
        metric(&metrics, &rejections_series(FS_PATH, "bad_signature")),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, &rejections_series(FS_PATH, "stale_timestamp")),
        1.0,
        "{metrics}"
    );
    assert_eq!(accepted_attempts(&gw), 0.0, "{metrics}");
    let refused = wait_audits(&gw, FS_PATH, "rejected", 4);
    assert_eq!(refused.len(), 4, "{refused:?}");
    assert!(refused.iter().all(|a| a["status"] == 401));
    assert!(fake.requests().is_empty());
}

/// Signed but not JSON is 400; bad ciphertext and a missing signature are
/// the uniform 401; a body past the route's limit is 413.
#[test]
fn feishu_malformed_and_oversized_bodies() {
    let fake = FakeApi::start();
    let gw = feishu_gateway(&fake);
    let c = gw.client(true);
    let url = gw.url(FS_PATH);
    rt().block_on(async {
        for (body, status) in [
            ("{not json", 400),
            ("[1,2]", 400),
            (r#"{"encrypt":"%%% not base64"}"#, 401),
            (r#"{"encrypt":"AAAA"}"#, 401),
        ] {
            let a = post(
                &c,
                &url,
                &feishu_headers(FS_KEY, now_secs(), body),
                body.to_string(),
            )
            .await;
            assert_eq!(a.status, status, "{body}: {a:?}");
        }
        // Encrypted but unsigned: refused, not decrypted and forwarded.
        let body = feishu_sealed(&feishu_event(
            "im.message.receive_v1",
            "om_unsigned",
            "hi",
            FS_TOKEN,
        ));
        let a = post(
            &c,
            &url,
            &[("content-type", "application/json".into())],
            body,
        )
        .await;
        assert_eq!(a.status, 401, "{a:?}");
        assert_eq!(a.json()["error"], "unauthenticated");
        // Past the 4096-byte limit, even though correctly signed.
        let body = feishu_sealed(&feishu_event(
            "im.message.receive_v1",
            "om_big",
            &"x".repeat(5000),
            FS_TOKEN,
        ));
        let a = post(&c, &url, &feishu_headers(FS_KEY, now_secs(), &body), body).await;
        assert_eq!(a.status, 413, "{a:?}");
    });
    let metrics = gw.metrics();
    assert_eq!(
        metric(&metrics, &rejections_series(FS_PATH, "body_too_large")),
        1.0,
        "{metrics}"
    );
    assert_eq!(accepted_attempts(&gw), 0.0, "{metrics}");
    assert_eq!(wait_audits(&gw, FS_PATH, "rejected", 6).len(), 6);
    assert!(fake.requests().is_empty());
}

/// A verified event of a type moltgate does not handle: 200, not
/// forwarded, counted and audited as ignored.
#[test]
fn feishu_unknown_event_ignored() {
    let fake = FakeApi::start();
    let gw = feishu_gateway(&fake);
    let c = gw.client(true);
    rt().block_on(async {
        let (headers, body) = feishu_delivery(&feishu_event(
            "im.chat.member.bot.added_v1",
            "om_evt",
            "hi",
            FS_TOKEN,
        ));
        let a = post(&c, &gw.url(FS_PATH), &headers, body).await;
        assert_eq!(a.status, 200, "{a:?}");
    });
    let audit = gw.wait_audit(|a| a["route"] == FS_PATH && a["decision"] == "ignored");
    assert_eq!(audit["reason"], "unsupported_event");
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            "moltgate_ignored_events_total{platform=\"feishu\",reason=\"unsupported_event\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(accepted_attempts(&gw), 0.0, "{metrics}");
    assert!(audits(&gw, FS_PATH, "answered").is_empty());
    assert!(fake.requests().is_empty());
}

/// The same message delivered twice reaches the assistant once; the second
/// delivery is acknowledged 200 and counted as a duplicate.
#[test]
fn feishu_redelivery_reaches_assistant_once() {
    let fake = FakeApi::start();
    let gw = feishu_gateway(&fake);
    let c = gw.client(true);
    let event = feishu_event("im.message.receive_v1", "om_redelivered", "once", FS_TOKEN);
    rt().block_on(async {
        for _ in 0..2 {
            // Each delivery is freshly signed, as Feishu does on retry.
            let (headers, body) = feishu_delivery(&event);
            let a = post(&c, &gw.url(FS_PATH), &headers, body).await;
            assert_eq!(a.status, 200, "{a:?}");
        }
    });
    gw.wait_audit(|a| a["route"] == FS_PATH && a["decision"] == "duplicate");
    assert_eq!(audits(&gw, FS_PATH, "answered").len(), 1);
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            "moltgate_duplicate_messages_total{platform=\"feishu\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(accepted_attempts(&gw), 1.0, "{metrics}");
    fake.wait_for("/open-apis/im/v1/messages/om_redelivered/reply", 1);
}

/// Two messages in one conversation: the second reaches the assistant with
/// the first exchange as context (the demo assistant says `turn 2`), as the
/// design's message path (`context (moka)` before forwarding) requires.
#[test]
fn feishu_conversation_context_counts_turns() {
    let fake = FakeApi::start();
    let gw = feishu_gateway(&fake);
    let c = gw.client(true);
    rt().block_on(async {
        for (i, id) in ["om_ctx_1", "om_ctx_2"].into_iter().enumerate() {
            let (headers, body) = feishu_delivery(&feishu_event(
                "im.message.receive_v1",
                id,
                "remember me",
                FS_TOKEN,
            ));
            assert_eq!(post(&c, &gw.url(FS_PATH), &headers, body).await.status, 200);
            // Wait for this reply before sending the next message.
            fake.wait_for("/open-apis/im/v1/messages/", i + 1);
        }
    });
    let replies = fake.requests_to("/open-apis/im/v1/messages/");
    let texts: Vec<String> = replies
        .iter()
        .map(|r| {
            let content: Value =
                serde_json::from_str(r.json()["content"].as_str().unwrap()).unwrap();
            content["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        texts,
        ["echo: remember me (turn 1)", "echo: remember me (turn 2)"],
        "same sender, same chat: the second message must carry the first as context"
    );
}

/// `url_verification`, plain (token in the body) and encrypted (unsigned,
/// as Feishu sends it), answers the challenge; a wrong token does not.
#[test]
fn feishu_url_verification_plain_and_encrypted() {
    let fake = FakeApi::start();
    let gw = feishu_gateway(&fake);
    let c = gw.client(true);
    let json_ct = [("content-type", "application/json".to_string())];
    rt().block_on(async {
        let plain = json!({"type": "url_verification", "token": FS_TOKEN, "challenge": "plain-challenge-1"});
        let a = post(&c, &gw.url(FS_PLAIN_PATH), &json_ct, plain.to_string()).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.json(), json!({"challenge": "plain-challenge-1"}));

        let enc = json!({"type": "url_verification", "token": FS_TOKEN, "challenge": "enc-challenge-2"});
        let a = post(&c, &gw.url(FS_PATH), &json_ct, feishu_sealed(&enc)).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.json(), json!({"challenge": "enc-challenge-2"}));

        let wrong = json!({"type": "url_verification", "token": "guess", "challenge": "x"});
        let a = post(&c, &gw.url(FS_PLAIN_PATH), &json_ct, wrong.to_string()).await;
        assert_eq!(a.status, 401, "{a:?}");
        assert!(!a.body.contains("\"challenge\""));
        let a = post(&c, &gw.url(FS_PATH), &json_ct, feishu_sealed(&wrong)).await;
        assert_eq!(a.status, 401, "{a:?}");
    });
    let metrics = gw.metrics();
    assert_eq!(
        metric(&metrics, &requests_series(FS_PATH, "feishu", "challenge")),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            &requests_series(FS_PLAIN_PATH, "feishu", "challenge")
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(accepted_attempts(&gw), 0.0);
}

// ---------------------------------------------------------------- WeCom

const WC_PATH: &str = "/hooks/wecom";
const WC_SLOW_PATH: &str = "/hooks/wecom/deferred";
// WeCom's published sample app (token, key, corp id).
const WC_TOKEN: &str = "QDG6eK";
const WC_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const WC_CORP: &str = "wx5823bf96d3bd56c7";
const WC_SECRET: &str = "wc-corp-secret";
const WC_AGENT: &str = "1000002";

fn wecom_gateway(fake: &FakeApi) -> Gateway {
    let secrets = format!(
        "{{ token: {WC_TOKEN}, encoding_aes_key: {WC_KEY}, corp_id: {WC_CORP}, agent_id: \"{WC_AGENT}\", corp_secret: {WC_SECRET} }}"
    );
    gateway(format!(
        "  - {{ path: {WC_PATH}, platform: wecom, upstream: assistant, deadline: 4s, body_limit: 2048, api_base: \"{base}\", secrets: {secrets} }}\n  - {{ path: {WC_SLOW_PATH}, platform: wecom, upstream: assistant, deadline: 0s, api_base: \"{base}\", secrets: {secrets} }}\n",
        base = fake.base()
    ))
}

fn wecom_text(msg_id: &str, from: &str, content: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{WC_CORP}]]></ToUserName><FromUserName><![CDATA[{from}]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId><AgentID>{WC_AGENT}</AgentID></xml>",
        now_secs()
    )
}

/// The signed query and encrypted body of a POST carrying `plain`.
fn wecom_delivery(plain: &str, ts: i64, token: &str, receive_id: &str) -> (String, String) {
    let crypt = WxCrypt::from_encoding_aes_key(WC_KEY).unwrap();
    let encrypt = crypt.encrypt(plain.as_bytes(), receive_id, &wxcrypt::random_prefix());
    let ts = ts.to_string();
    let nonce = wxcrypt::random_nonce();
    let sig = wxcrypt::msg_signature(token, &ts, &nonce, &encrypt);
    let body = format!(
        "<xml><ToUserName><![CDATA[{WC_CORP}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt><AgentID><![CDATA[{WC_AGENT}]]></AgentID></xml>"
    );
    (
        format!("msg_signature={sig}&timestamp={ts}&nonce={nonce}"),
        body,
    )
}

async fn wecom_post(
    gw: &Gateway,
    c: &reqwest::Client,
    path: &str,
    query: &str,
    body: String,
) -> Answer {
    let url = format!("{}?{query}", gw.url(path));
    post(c, &url, &[("content-type", "text/xml".to_string())], body).await
}

/// Checks a passive reply's signature and decrypts it: the inner XML fields.
fn open_passive_reply(xml: &str) -> wecom::XmlFields {
    let outer = wecom::parse_xml(xml).unwrap();
    let encrypt = outer.get("Encrypt").expect("Encrypt");
    let sig = outer.get("MsgSignature").expect("MsgSignature");
    let ts = outer.get("TimeStamp").expect("TimeStamp");
    let nonce = outer.get("Nonce").expect("Nonce");
    assert_eq!(
        sig,
        wxcrypt::msg_signature(WC_TOKEN, ts, nonce, encrypt),
        "reply signature"
    );
    let ts: i64 = ts.parse().unwrap();
    assert!((ts - now_secs()).abs() < 60, "reply timestamp {ts}");
    let plain = WxCrypt::from_encoding_aes_key(WC_KEY)
        .unwrap()
        .decrypt(encrypt, WC_CORP)
        .unwrap();
    wecom::parse_xml(std::str::from_utf8(&plain).unwrap()).unwrap()
}

/// Within the deadline the reply is the passive encrypted XML answer: it
/// decrypts to the assistant's echo, addressed back to the sender.
#[test]
fn wecom_passive_encrypted_reply_inline() {
    let fake = FakeApi::start();
    let gw = wecom_gateway(&fake);
    let c = gw.client(true);
    rt().block_on(async {
        let (query, body) = wecom_delivery(
            &wecom_text("7001", "alice", "hello wecom"),
            now_secs(),
            WC_TOKEN,
            WC_CORP,
        );
        let a = wecom_post(&gw, &c, WC_PATH, &query, body).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert!(a.content_type.contains("xml"), "{a:?}");
        let inner = open_passive_reply(&a.body);
        assert_eq!(inner.get("MsgType"), Some("text"));
        assert_eq!(inner.get("Content"), Some("echo: hello wecom (turn 1)"));
        assert_eq!(inner.get("ToUserName"), Some("alice"));
        assert_eq!(inner.get("FromUserName"), Some(WC_CORP));
    });
    let audit = gw.wait_audit(|a| a["route"] == WC_PATH && a["decision"] == "answered");
    assert_eq!(audit["reason"], "inline_reply");
    assert_eq!(audit["sender_id"], "alice");
    // Answered inline: the send API was not used.
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    assert!(!gw.log_text().contains("hello wecom"));
}

/// Past a tiny deadline the webhook gets an empty 200 and the reply goes
/// through `message/send` with the access token from `gettoken`.
#[test]
fn wecom_tiny_deadline_replies_through_message_send() {
    let fake = FakeApi::start();
    let gw = wecom_gateway(&fake);
    let c = gw.client(true);
    rt().block_on(async {
        let (query, body) = wecom_delivery(
            &wecom_text("7101", "bob", "later please"),
            now_secs(),
            WC_TOKEN,
            WC_CORP,
        );
        let a = wecom_post(&gw, &c, WC_SLOW_PATH, &query, body).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert!(
            a.body.is_empty(),
            "answered inline after {:?} although the route's deadline is 0: {a:?}",
            a.elapsed
        );
    });
    let sent = fake.wait_for("/cgi-bin/message/send", 1);
    assert_eq!(sent[0].query, "access_token=at-fake-token");
    assert_eq!(
        sent[0].json(),
        json!({"touser": "bob", "msgtype": "text", "agentid": 1000002, "text": {"content": "echo: later please (turn 1)"}})
    );
    let tokens = fake.requests_to("/cgi-bin/gettoken");
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].method, "GET");
    assert_eq!(
        tokens[0].query,
        format!("corpid={WC_CORP}&corpsecret={WC_SECRET}")
    );
    let audit = gw.wait_audit(|a| a["route"] == WC_SLOW_PATH && a["decision"] == "answered");
    assert_eq!(audit["reason"], "deferred_reply");
    assert!(!gw.log_text().contains(WC_SECRET));
}

/// Forged signature, wrong token, wrong corp id and a stale timestamp.
#[test]
fn wecom_forged_and_stale_refused() {
    let fake = FakeApi::start();
    let gw = wecom_gateway(&fake);
    let c = gw.client(true);
    rt().block_on(async {
        let plain = wecom_text("7201", "mallory", "hi");
        // Signed with a guessed token.
        let (query, body) = wecom_delivery(&plain, now_secs(), "guessed", WC_CORP);
        let a = wecom_post(&gw, &c, WC_PATH, &query, body).await;
        assert_eq!(a.status, 401, "{a:?}");
        assert_eq!(a.json()["error"], "unauthenticated");
        // A valid signature over a different ciphertext than the body's.
        let (query, _) = wecom_delivery(&plain, now_secs(), WC_TOKEN, WC_CORP);
        let (_, body) = wecom_delivery(&plain, now_secs(), WC_TOKEN, WC_CORP);
        assert_eq!(wecom_post(&gw, &c, WC_PATH, &query, body).await.status, 401);
        // Encrypted for another corp: decrypts to the wrong receive id.
        let (query, body) = wecom_delivery(&plain, now_secs(), WC_TOKEN, "wwsomeoneelse");
        let a = wecom_post(&gw, &c, WC_PATH, &query, body).await;
        assert_eq!(a.status, 401, "{a:?}");
        assert_eq!(a.json()["error"], "unauthenticated");
        // Correctly signed, an hour old (the window is 5 minutes).
        let (query, body) = wecom_delivery(&plain, now_secs() - 3600, WC_TOKEN, WC_CORP);
        let a = wecom_post(&gw, &c, WC_PATH, &query, body).await;
        assert_eq!(a.status, 401, "{a:?}");
        assert_eq!(a.json()["error"], "unauthenticated");
        // No signature at all.
        let (_, body) = wecom_delivery(&plain, now_secs(), WC_TOKEN, WC_CORP);
        let a = post(&c, &gw.url(WC_PATH), &[], body).await;
        assert_eq!(a.status, 401, "{a:?}");
    });
    let metrics = gw.metrics();
    assert_eq!(
        metric(&metrics, &rejections_series(WC_PATH, "bad_signature")),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, &rejections_series(WC_PATH, "stale_timestamp")),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, &rejections_series(WC_PATH, "decrypt_failed")),
        1.0,
        "{metrics}"
    );
    assert_eq!(accepted_attempts(&gw), 0.0, "{metrics}");
    assert_eq!(wait_audits(&gw, WC_PATH, "rejected", 5).len(), 5);
    assert!(fake.requests().is_empty());
}

/// Broken XML, a DOCTYPE (entity expansion) and garbage ciphertext are the
/// uniform 401; a signed message whose plaintext is not XML is 400; past
/// the limit, 413.
#[test]
fn wecom_malformed_and_oversized_bodies() {
    let fake = FakeApi::start();
    let gw = wecom_gateway(&fake);
    let c = gw.client(true);
    rt().block_on(async {
        let signed_over = |encrypt: &str| {
            let ts = now_secs().to_string();
            let sig = wxcrypt::msg_signature(WC_TOKEN, &ts, "42", encrypt);
            format!("msg_signature={sig}&timestamp={ts}&nonce=42")
        };
        let bomb = "<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;\">]><xml><Encrypt>&b;</Encrypt></xml>";
        for (body, encrypt) in [
            ("<xml><Encrypt>unclosed", "unclosed"),
            (bomb, "&b;"),
            ("<xml><Encrypt><![CDATA[!!notbase64!!]]></Encrypt></xml>", "!!notbase64!!"),
            ("<xml><Encrypt><![CDATA[AAAA]]></Encrypt></xml>", "AAAA"),
            ("<xml><ToUserName>x</ToUserName></xml>", ""),
        ] {
            let a = wecom_post(&gw, &c, WC_PATH, &signed_over(encrypt), body.to_string()).await;
            assert_eq!(a.status, 401, "{body}: {a:?}");
        }
        // Signed and encrypted correctly, but the plaintext is not XML.
        let (query, body) = wecom_delivery("this is not xml <", now_secs(), WC_TOKEN, WC_CORP);
        let a = wecom_post(&gw, &c, WC_PATH, &query, body).await;
        assert_eq!(a.status, 400, "{a:?}");
        assert_eq!(a.json()["error"], "malformed");
        // Past the 2048-byte limit.
        let (query, body) = wecom_delivery(&wecom_text("7301", "alice", &"y".repeat(3000)), now_secs(), WC_TOKEN, WC_CORP);
        let a = wecom_post(&gw, &c, WC_PATH, &query, body).await;
        assert_eq!(a.status, 413, "{a:?}");
    });
    let metrics = gw.metrics();
    assert_eq!(
        metric(&metrics, &rejections_series(WC_PATH, "body_too_large")),
        1.0,
        "{metrics}"
    );
    assert_eq!(accepted_attempts(&gw), 0.0, "{metrics}");
    assert_eq!(wait_audits(&gw, WC_PATH, "rejected", 7).len(), 7);
    assert!(fake.requests().is_empty());
}

/// A verified event (not a text message): 200, not forwarded, counted.
#[test]
fn wecom_unknown_event_ignored() {
    let fake = FakeApi::start();
    let gw = wecom_gateway(&fake);
    let c = gw.client(true);
    rt().block_on(async {
        let event = format!(
            "<xml><ToUserName><![CDATA[{WC_CORP}]]></ToUserName><FromUserName><![CDATA[alice]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[enter_agent]]></Event><EventKey><![CDATA[]]></EventKey><AgentID>{WC_AGENT}</AgentID></xml>",
            now_secs()
        );
        let (query, body) = wecom_delivery(&event, now_secs(), WC_TOKEN, WC_CORP);
        let a = wecom_post(&gw, &c, WC_PATH, &query, body).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert!(a.body.is_empty(), "{a:?}");
    });
    let audit = gw.wait_audit(|a| a["route"] == WC_PATH && a["decision"] == "ignored");
    assert_eq!(audit["reason"], "event");
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            "moltgate_ignored_events_total{platform=\"wecom\",reason=\"event\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(accepted_attempts(&gw), 0.0, "{metrics}");
    assert!(fake.requests().is_empty());
}

/// WeCom retries a message (same MsgId) it thinks was lost: the assistant
/// sees it once; the retry gets an empty 200.
#[test]
fn wecom_redelivery_reaches_assistant_once() {
    let fake = FakeApi::start();
    let gw = wecom_gateway(&fake);
    let c = gw.client(true);
    let plain = wecom_text("7401", "carol", "only once");
    rt().block_on(async {
        let (query, body) = wecom_delivery(&plain, now_secs(), WC_TOKEN, WC_CORP);
        let first = wecom_post(&gw, &c, WC_PATH, &query, body).await;
        assert_eq!(first.status, 200);
        assert_eq!(
            open_passive_reply(&first.body).get("Content"),
            Some("echo: only once (turn 1)")
        );
        let (query, body) = wecom_delivery(&plain, now_secs(), WC_TOKEN, WC_CORP);
        let second = wecom_post(&gw, &c, WC_PATH, &query, body).await;
        assert_eq!(second.status, 200, "{second:?}");
        assert!(
            second.body.is_empty(),
            "the retry is only acked: {second:?}"
        );
    });
    gw.wait_audit(|a| a["route"] == WC_PATH && a["decision"] == "duplicate");
    assert_eq!(audits(&gw, WC_PATH, "answered").len(), 1);
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            "moltgate_duplicate_messages_total{platform=\"wecom\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(accepted_attempts(&gw), 1.0, "{metrics}");
}

/// The URL check: a signed GET with an encrypted `echostr` is answered
/// with the plaintext; a bad signature is not.
#[test]
fn wecom_get_echostr_challenge() {
    let fake = FakeApi::start();
    let gw = wecom_gateway(&fake);
    let c = gw.client(true);
    rt().block_on(async {
        let crypt = WxCrypt::from_encoding_aes_key(WC_KEY).unwrap();
        let echo = "1616140317555161061";
        let echostr = crypt.encrypt(echo.as_bytes(), WC_CORP, &wxcrypt::random_prefix());
        let ts = now_secs().to_string();
        let sig = wxcrypt::msg_signature(WC_TOKEN, &ts, "1597212914", &echostr);
        let url = |sig: &str| {
            format!(
                "{}?msg_signature={sig}&timestamp={ts}&nonce=1597212914&echostr={}",
                gw.url(WC_PATH),
                q(&echostr)
            )
        };
        let a = send(&c, reqwest::Method::GET, &url(&sig), &[], String::new()).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.body, echo);
        let a = send(
            &c,
            reqwest::Method::GET,
            &url(&"0".repeat(40)),
            &[],
            String::new(),
        )
        .await;
        assert_eq!(a.status, 401, "{a:?}");
        assert!(!a.body.contains(echo));
    });
    let audit = gw.wait_audit(|a| a["route"] == WC_PATH && a["reason"] == "url_verification");
    assert_eq!(audit["status"], 200);
    assert_eq!(
        metric(
            &gw.metrics(),
            &requests_series(WC_PATH, "wecom", "challenge")
        ),
        1.0
    );
}

const WECHATPY_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/thirdparty/wecom_wechatpy.py"
);

/// Runs the wechatpy helper; its stdout as JSON.
fn wechatpy(args: &[&str], stdin: &str) -> Value {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("python3")
        .arg(WECHATPY_SCRIPT)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "wechatpy helper {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wechatpy_available() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import wechatpy"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Third party: wechatpy's `WeChatCrypto` encrypts and signs the message and
/// the URL challenge; the gateway accepts both, and wechatpy verifies and
/// decrypts the gateway's passive reply.
#[test]
fn wecom_interoperates_with_wechatpy() {
    if !wechatpy_available() {
        eprintln!(
            "SKIPPED wecom_interoperates_with_wechatpy: `python3 -c \"import wechatpy\"` fails; install tests/requirements.txt (pip install -r tests/requirements.txt)"
        );
        return;
    }
    let fake = FakeApi::start();
    let gw = wecom_gateway(&fake);
    let c = gw.client(false);
    let ts = now_secs().to_string();
    let args = |mode: &'static str| vec![mode, WC_TOKEN, WC_KEY, WC_CORP];
    rt().block_on(async {
        // The URL check, with wechatpy's echostr.
        let mut a = args("echostr");
        a.extend([ts.as_str(), "240579", "wechatpy-echo-42"]);
        let ch = wechatpy(&a, "");
        let url = format!(
            "{}?msg_signature={}&timestamp={ts}&nonce=240579&echostr={}",
            gw.url(WC_PATH),
            ch["msg_signature"].as_str().unwrap(),
            q(ch["echostr"].as_str().unwrap())
        );
        let answer = send(&c, reqwest::Method::GET, &url, &[], String::new()).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.body, "wechatpy-echo-42");

        // A message encrypted by wechatpy.
        let mut a = args("encrypt");
        a.extend([ts.as_str(), "1372623149"]);
        let sealed = wechatpy(&a, &wecom_text("7501", "dave", "你好 from wechatpy"));
        let query = format!(
            "msg_signature={}&timestamp={}&nonce={}",
            sealed["msg_signature"].as_str().unwrap(),
            sealed["timestamp"].as_str().unwrap(),
            sealed["nonce"].as_str().unwrap()
        );
        let answer = wecom_post(
            &gw,
            &c,
            WC_PATH,
            &query,
            sealed["body"].as_str().unwrap().to_string(),
        )
        .await;
        assert_eq!(answer.status, 200, "{answer:?}");

        // wechatpy checks the reply's signature and decrypts it.
        let opened = wechatpy(&args("decrypt"), &answer.body);
        let fields = &opened["fields"];
        assert_eq!(
            fields["Content"], "echo: 你好 from wechatpy (turn 1)",
            "{opened}"
        );
        assert_eq!(fields["ToUserName"], "dave");
        assert_eq!(fields["FromUserName"], WC_CORP);
        assert_eq!(fields["MsgType"], "text");
    });
    assert!(fake.requests().is_empty());
}

// ---------------------------------------------------------------- DingTalk

const DT_PATH: &str = "/hooks/dingtalk";
const DT_SECRET: &str = "dt-robot-app-secret";
const DT_TOKEN: &str = "dt-event-token";
const DT_AES: &str = "4g5j64qlyl3zvetqxz5jiocdr586fn2zvjpa8zls3ij";
const DT_OWNER: &str = "dingsuitekey123";

fn dingtalk_gateway(fake: &FakeApi) -> Gateway {
    gateway(format!(
        "  - {{ path: {DT_PATH}, platform: dingtalk, upstream: assistant, body_limit: 4096, api_base: \"{}\", secrets: {{ app_secret: {DT_SECRET}, token: {DT_TOKEN}, aes_key: {DT_AES}, owner_key: {DT_OWNER} }} }}\n",
        fake.base()
    ))
}

fn robot_message(msg_id: &str, text: &str, session_webhook: &str) -> String {
    json!({
        "msgtype": "text", "text": { "content": format!(" {text}") },
        "msgId": msg_id, "createAt": now_millis(), "conversationType": "1",
        "conversationId": "cid_dt_1", "senderId": "$:LWCP_v1:$sender", "senderStaffId": "staff_erin",
        "senderNick": "Erin", "chatbotUserId": "$:LWCP_v1:$bot", "chatbotCorpId": "ding_corp",
        "isAdmin": false, "isInAtList": true,
        "sessionWebhook": session_webhook, "sessionWebhookExpiredTime": now_millis() + 3_600_000
    })
    .to_string()
}

fn robot_headers(secret: &str, ts_ms: i64) -> Vec<(&'static str, String)> {
    let ts = ts_ms.to_string();
    vec![
        ("content-type", "application/json".to_string()),
        ("sign", dingtalk::robot_sign(secret, &ts)),
        ("timestamp", ts),
    ]
}

/// An encrypted event subscription delivery: (query, body).
fn dingtalk_event(event: &Value) -> (String, String) {
    let crypt = WxCrypt::from_encoding_aes_key(DT_AES).unwrap();
    let encrypt = crypt.encrypt(
        event.to_string().as_bytes(),
        DT_OWNER,
        &wxcrypt::random_prefix(),
    );
    let ts = now_millis().to_string();
    let nonce = "nonce123";
    let sig = wxcrypt::msg_signature(DT_TOKEN, &ts, nonce, &encrypt);
    (
        format!("signature={sig}&timestamp={ts}&nonce={nonce}"),
        json!({ "encrypt": encrypt }).to_string(),
    )
}

/// Checks and decrypts an encrypted event answer.
fn open_dingtalk_answer(v: &Value) -> String {
    let encrypt = v["encrypt"].as_str().expect("encrypt");
    let ts = v["timeStamp"].as_str().expect("timeStamp");
    let nonce = v["nonce"].as_str().expect("nonce");
    assert_eq!(
        v["msg_signature"].as_str().unwrap(),
        wxcrypt::msg_signature(DT_TOKEN, ts, nonce, encrypt),
        "answer signature"
    );
    let plain = WxCrypt::from_encoding_aes_key(DT_AES)
        .unwrap()
        .decrypt(encrypt, DT_OWNER)
        .unwrap();
    String::from_utf8(plain).unwrap()
}

/// A robot message is acked and answered through its sessionWebhook on the
/// API host; a sessionWebhook on another host is never called, and that
/// writeback is counted as failed.
#[test]
fn dingtalk_session_webhook_reply_and_foreign_host_refused() {
    let fake = FakeApi::start();
    let gw = dingtalk_gateway(&fake);
    // Same port as the fake, another loopback host: only the host differs.
    let foreign = std::net::TcpListener::bind(("127.0.0.2", fake.port))
        .or_else(|_| std::net::TcpListener::bind("127.0.0.2:0"))
        .unwrap();
    let foreign_port = foreign.local_addr().unwrap().port();
    let c = gw.client(true);
    rt().block_on(async {
        let hook = format!("{}/robot/sendBySession?session=s-ok", fake.base());
        let a = post(
            &c,
            &gw.url(DT_PATH),
            &robot_headers(DT_SECRET, now_millis()),
            robot_message("msg_ok", "hello dingtalk", &hook),
        )
        .await;
        assert_eq!(a.status, 200, "{a:?}");
        let sent = fake.wait_for("/robot/sendBySession", 1);
        assert_eq!(sent[0].query, "session=s-ok");
        assert_eq!(
            sent[0].json(),
            json!({"msgtype": "text", "text": {"content": "echo: hello dingtalk (turn 1)"}})
        );

        let evil = format!("http://127.0.0.2:{foreign_port}/robot/sendBySession?session=s-evil");
        let a = post(
            &c,
            &gw.url(DT_PATH),
            &robot_headers(DT_SECRET, now_millis()),
            robot_message("msg_evil", "exfiltrate", &evil),
        )
        .await;
        assert_eq!(a.status, 200, "the message itself was accepted: {a:?}");
        // Userinfo that makes a lenient parser see the API host first.
        let tricky = format!(
            "http://127.0.0.1:{}@127.0.0.2:{foreign_port}/robot/sendBySession",
            fake.port
        );
        let a = post(
            &c,
            &gw.url(DT_PATH),
            &robot_headers(DT_SECRET, now_millis()),
            robot_message("msg_evil2", "exfiltrate", &tricky),
        )
        .await;
        assert_eq!(a.status, 200, "{a:?}");
    });
    let metrics = wait_metric(
        &gw,
        "moltgate_writeback_total{platform=\"dingtalk\",result=\"failed\"}",
        2.0,
    );
    assert_eq!(
        metric(
            &metrics,
            "moltgate_writeback_total{platform=\"dingtalk\",result=\"sent\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(wait_audits(&gw, DT_PATH, "answered", 3).len(), 3);
    // Nothing ever connected to the foreign host.
    foreign.set_nonblocking(true).unwrap();
    match foreign.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the foreign sessionWebhook host was contacted: {other:?}"),
    }
    assert_eq!(fake.requests_to("/robot/sendBySession").len(), 1);
}

/// A wrong robot secret, a tampered sign and a two-hour-old timestamp are
/// 401; nothing is forwarded.
#[test]
fn dingtalk_forged_and_stale_refused() {
    let fake = FakeApi::start();
    let gw = dingtalk_gateway(&fake);
    let c = gw.client(true);
    let hook = format!("{}/robot/sendBySession?session=s", fake.base());
    rt().block_on(async {
        let url = gw.url(DT_PATH);
        let a = post(
            &c,
            &url,
            &robot_headers("guessed-secret", now_millis()),
            robot_message("msg_f1", "hi", &hook),
        )
        .await;
        assert_eq!(a.status, 401, "{a:?}");
        assert_eq!(a.json()["error"], "unauthenticated");
        // A valid sign for another timestamp.
        let mut headers = robot_headers(DT_SECRET, now_millis());
        headers[2].1 = (now_millis() - 1000).to_string();
        assert_eq!(
            post(&c, &url, &headers, robot_message("msg_f2", "hi", &hook))
                .await
                .status,
            401
        );
        // An event subscription whose signature was tampered with.
        let (query, body) = dingtalk_event(&json!({"EventType": "check_url"}));
        let query = query.replace("signature=", "signature=0");
        let a = post(&c, &format!("{url}?{query}"), &[], body).await;
        assert_eq!(a.status, 401, "{a:?}");
        // Correctly signed two hours ago (DingTalk allows one).
        let a = post(
            &c,
            &url,
            &robot_headers(DT_SECRET, now_millis() - 7_200_000),
            robot_message("msg_f3", "hi", &hook),
        )
        .await;
        assert_eq!(a.status, 401, "{a:?}");
        assert_eq!(a.json()["error"], "unauthenticated");
        // An event subscription correctly signed two hours ago.
        let event = json!({"EventType": "check_url"});
        let crypt = WxCrypt::from_encoding_aes_key(DT_AES).unwrap();
        let encrypt = crypt.encrypt(
            event.to_string().as_bytes(),
            DT_OWNER,
            &wxcrypt::random_prefix(),
        );
        let ts = (now_millis() - 7_200_000).to_string();
        let sig = wxcrypt::msg_signature(DT_TOKEN, &ts, "n1", &encrypt);
        let a = post(
            &c,
            &format!("{url}?signature={sig}&timestamp={ts}&nonce=n1"),
            &[],
            json!({"encrypt": encrypt}).to_string(),
        )
        .await;
        assert_eq!(a.status, 401, "{a:?}");
        assert_eq!(a.json()["error"], "unauthenticated");
    });
    let metrics = gw.metrics();
    assert_eq!(
        metric(&metrics, &rejections_series(DT_PATH, "bad_signature")),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, &rejections_series(DT_PATH, "stale_timestamp")),
        2.0,
        "{metrics}"
    );
    assert_eq!(accepted_attempts(&gw), 0.0, "{metrics}");
    assert_eq!(wait_audits(&gw, DT_PATH, "rejected", 5).len(), 5);
    assert!(fake.requests().is_empty());
}

/// Signed but not JSON, a non-object body: 400; missing headers: the
/// uniform 401; past the route's limit: 413.
#[test]
fn dingtalk_malformed_and_oversized_bodies() {
    let fake = FakeApi::start();
    let gw = dingtalk_gateway(&fake);
    let c = gw.client(true);
    let hook = format!("{}/robot/sendBySession?session=s", fake.base());
    rt().block_on(async {
        let url = gw.url(DT_PATH);
        for body in [
            "{not json",
            "[1,2,3]",
            "\"text\"",
            r#"{"msgtype":"text","msgId":"m_no_text"}"#,
        ] {
            let a = post(
                &c,
                &url,
                &robot_headers(DT_SECRET, now_millis()),
                body.to_string(),
            )
            .await;
            assert_eq!(a.status, 400, "{body}: {a:?}");
        }
        // No signature headers at all.
        let a = post(&c, &url, &[], robot_message("msg_m1", "hi", &hook)).await;
        assert_eq!(a.status, 401, "{a:?}");
        // Past the 4096-byte limit.
        let a = post(
            &c,
            &url,
            &robot_headers(DT_SECRET, now_millis()),
            robot_message("msg_m2", &"z".repeat(5000), &hook),
        )
        .await;
        assert_eq!(a.status, 413, "{a:?}");
    });
    let metrics = gw.metrics();
    assert_eq!(
        metric(&metrics, &rejections_series(DT_PATH, "body_too_large")),
        1.0,
        "{metrics}"
    );
    assert_eq!(accepted_attempts(&gw), 0.0, "{metrics}");
    assert_eq!(wait_audits(&gw, DT_PATH, "rejected", 6).len(), 6);
    assert!(fake.requests().is_empty());
}

/// A verified event subscription of a type moltgate does not handle is
/// answered with the encrypted `success`, not forwarded, and counted.
#[test]
fn dingtalk_unknown_event_ignored() {
    let fake = FakeApi::start();
    let gw = dingtalk_gateway(&fake);
    let c = gw.client(true);
    rt().block_on(async {
        let (query, body) = dingtalk_event(
            &json!({"EventType": "user_add_org", "UserId": ["u1"], "CorpId": "ding_corp"}),
        );
        let a = post(
            &c,
            &format!("{}?{query}", gw.url(DT_PATH)),
            &[("content-type", "application/json".into())],
            body,
        )
        .await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(open_dingtalk_answer(&a.json()), "success");
    });
    let audit = gw.wait_audit(|a| a["route"] == DT_PATH && a["decision"] == "ignored");
    assert_eq!(audit["reason"], "unsupported_event");
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            "moltgate_ignored_events_total{platform=\"dingtalk\",reason=\"unsupported_event\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(accepted_attempts(&gw), 0.0, "{metrics}");
    assert!(fake.requests().is_empty());
}

/// The same robot message (same msgId) twice: one answer, one duplicate.
#[test]
fn dingtalk_redelivery_reaches_assistant_once() {
    let fake = FakeApi::start();
    let gw = dingtalk_gateway(&fake);
    let c = gw.client(true);
    let hook = format!("{}/robot/sendBySession?session=s-dup", fake.base());
    let body = robot_message("msg_dup", "just once", &hook);
    rt().block_on(async {
        for _ in 0..2 {
            let a = post(
                &c,
                &gw.url(DT_PATH),
                &robot_headers(DT_SECRET, now_millis()),
                body.clone(),
            )
            .await;
            assert_eq!(a.status, 200, "{a:?}");
        }
    });
    gw.wait_audit(|a| a["route"] == DT_PATH && a["decision"] == "duplicate");
    assert_eq!(audits(&gw, DT_PATH, "answered").len(), 1);
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            "moltgate_duplicate_messages_total{platform=\"dingtalk\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(accepted_attempts(&gw), 1.0, "{metrics}");
    fake.wait_for("/robot/sendBySession", 1);
}

/// `check_url` through event crypto is answered with an encrypted,
/// signed `success`.
#[test]
fn dingtalk_check_url_answered_with_encrypted_success() {
    let fake = FakeApi::start();
    let gw = dingtalk_gateway(&fake);
    let c = gw.client(true);
    rt().block_on(async {
        let (query, body) = dingtalk_event(&json!({"EventType": "check_url"}));
        let a = post(
            &c,
            &format!("{}?{query}", gw.url(DT_PATH)),
            &[("content-type", "application/json".into())],
            body,
        )
        .await;
        assert_eq!(a.status, 200, "{a:?}");
        let v = a.json();
        assert_eq!(open_dingtalk_answer(&v), "success");
        let ts: i64 = v["timeStamp"].as_str().unwrap().parse().unwrap();
        assert!((ts - now_millis()).abs() < 60_000, "timeStamp in ms: {ts}");
    });
    let audit = gw.wait_audit(|a| a["route"] == DT_PATH && a["reason"] == "check_url");
    assert_eq!(audit["decision"], "answered");
    let metrics = gw.metrics();
    assert_eq!(
        metric(&metrics, &requests_series(DT_PATH, "dingtalk", "challenge")),
        1.0,
        "{metrics}"
    );
    assert_eq!(accepted_attempts(&gw), 0.0);
    assert!(fake.requests().is_empty());
}
