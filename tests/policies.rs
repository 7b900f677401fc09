//! The policy engine through the running gateway: IP lists before the body,
//! `X-Forwarded-For` only from trusted proxies, rate limits (429 for the API,
//! 200 + one "slow down" per window for a webhook), ABAC conditions and
//! precedence, the RBAC command allowlist, DLP in both directions, decisions
//! named in audit lines and metrics, and hot reload (watcher, `POST /reload`,
//! SIGHUP, a broken file refused, and 50 reloads under load never mixing sets).

mod common;

use common::rt;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fake_api::FakeApi;
use common::{admin_get, admin_request, Gateway, Setup, SECURITY_POLICY};
use moltgate::path::answer::{DENIED, SLOW_DOWN};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TG_SECRET: &str = "tg-secret_1";

/// A generic API message in `thread` with `chat_type`.
fn message(text: &str, chat_type: &str) -> String {
    json!({"platform":"test","sender":{"id":"x","name":"Alice"},"content":{"text":text,"attachments":[]},"timestamp":1700000000,"context":{"room_id":"r1","thread_id":"t1","chat_type":chat_type}}).to_string()
}

/// POSTs a generic message; returns (status, headers, JSON body or Null).
async fn post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: String,
    xff: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .bearer_auth(token)
        .body(body);
    if let Some(x) = xff {
        req = req.header("x-forwarded-for", x);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The single reply text of a generic answer.
fn reply_text(body: &Value) -> String {
    body["replies"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no reply in {body}"))
        .to_string()
}

/// What the echo assistant says it saw: `echo: <text> (turn N)` without
/// the turn count (conversation context is another stage's business).
fn echoed(reply: &str) -> &str {
    let body = reply
        .strip_prefix("echo: ")
        .unwrap_or_else(|| panic!("not an echo: {reply:?}"));
    body.rsplit_once(" (turn ").map_or(body, |(t, _)| t)
}

/// Messages the assistant accepted (each forwarded message counts once).
fn forwarded(gw: &Gateway) -> f64 {
    metric(
        &gw.metrics(),
        "moltgate_upstream_attempts_total",
        &[("result", "accepted")],
    )
}

/// A Telegram update carrying `text`.
fn tg_update(update_id: u64, from: u64, chat: i64, chat_type: &str, text: &str) -> String {
    json!({"update_id": update_id, "message": {"message_id": update_id, "date": 1700000000,
        "from": {"id": from, "is_bot": false, "first_name": "Tess"},
        "chat": {"id": chat, "type": chat_type}, "text": text}})
    .to_string()
}

/// Delivers a Telegram update; returns (status, body bytes as text).
async fn tg_post(client: &reqwest::Client, url: &str, body: String) -> (u16, String) {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .header(moltgate::platform::telegram::SECRET_HEADER, TG_SECRET)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// The text of an inline Telegram reply (`{"method":"sendMessage",...}`), if any.
fn inline_text(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    assert_eq!(v["method"], "sendMessage", "{body}");
    v["text"].as_str().map(str::to_string)
}

/// A Telegram route pointing writeback at `fake`.
fn tg_route(fake: &FakeApi) -> String {
    format!(
        "  - {{ path: /hooks/telegram/t, platform: telegram, upstream: assistant, deadline: 5s, api_base: \"{}\", secrets: {{ secret_token: {TG_SECRET}, bot_token: \"123:abc\" }} }}\n",
        fake.base()
    )
}

/// Sum of the samples of `name` whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let have: Vec<(&str, &str)> = l
            .split("\",")
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim_matches('"')))
            .collect();
        if labels.iter().all(|want| have.contains(want)) {
            sum += value.parse::<f64>().unwrap();
        }
    }
    sum
}

/// The audit line of the request sent by `sub` (each test uses fresh subs).
fn audit_of(gw: &Gateway, sub: &str) -> Value {
    gw.wait_audit(|a| a["sender_id"] == sub)
}

fn rules_of(audit: &Value) -> String {
    audit["rules"].as_str().unwrap_or("").to_string()
}

/// `policy_version` from `/readyz`, which must answer 200.
fn policy_version(gw: &Gateway) -> u64 {
    let (status, body) = admin_get(gw.admin, "/readyz").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["policy_version"].as_u64().unwrap()
}

/// Polls `f` every 50 ms until it is true (bounded by `limit`).
fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Replaces a policy file atomically (written beside the directory, renamed in).
fn replace_policy(gw: &Gateway, name: &str, text: &str) {
    let tmp = gw.dir.path().join(format!("{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, gw.policies().join(name)).unwrap();
}

/// Sends raw request bytes over TLS (HTTP/1.1) and returns what arrives
/// until the end of the response head, within `limit`.
async fn raw_exchange(gw: &Gateway, head: &str, limit: Duration) -> String {
    let mut tls = rustls::ClientConfig::builder_with_provider(moltgate::tls::client_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(common::roots(&gw.ca()))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.public))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "no response head within {limit:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn security(extra: &str) -> String {
    format!("{SECURITY_POLICY}{extra}")
}

// ---------------------------------------------------------------------------
// IP policy

/// Blacklisted and non-whitelisted clients get 403 before the body is read
/// (a declared 1 MB body that never comes is refused at once);
/// `X-Forwarded-For` is honoured from the trusted proxy 127.0.0.1.
#[test]
fn ip_lists_refuse_before_the_body_with_xff_from_trusted_proxy() {
    let gw = Setup {
        routes: "  - { path: /v1/messages, platform: generic, upstream: assistant, body_limit: 2000000 }\n".into(),
        policies: vec![
            (
                "security_policy.yaml",
                security("ip_whitelist: [10.0.0.0/8, 127.0.0.1/32, \"fd00::/8\"]\nip_blacklist: [10.6.6.0/24]\ntrusted_proxies: [127.0.0.1/32]\n"),
            ),
            ("abac.yaml", common::ALLOW_ALL_ABAC.into()),
        ],
        ..Default::default()
    }
    .start();
    let token = gw.token("ipuser", &[]);
    rt().block_on(async {
        let c = gw.client(false);
        let url = gw.url("/v1/messages");
        // The proxy itself, and clients it names inside the whitelist.
        for xff in [None, Some("10.1.2.3"), Some("fd00::7")] {
            let (s, _, b) = post(&c, &url, &token, message("hi", "private"), xff).await;
            assert_eq!(s, 200, "{xff:?}: {b}");
        }
        // Blacklisted (inside the whitelisted 10/8: the blacklist wins) and not whitelisted.
        for (xff, reason) in [
            ("10.6.6.6", "blacklist"),
            ("192.0.2.1", "not_whitelisted"),
            // The hop the trusted proxy appended (rightmost) is the client.
            ("10.1.2.3, 192.0.2.1", "not_whitelisted"),
        ] {
            let (s, _, b) = post(&c, &url, &token, message("hi", "private"), Some(xff)).await;
            assert_eq!(s, 403, "{xff}: {b}");
            assert_eq!(b["error"], reason, "{xff}: {b}");
        }
        // Headers announcing a 1 MB body that never arrives: the 403 comes anyway.
        let head = format!(
            "POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nAuthorization: Bearer {token}\r\nContent-Length: 1000000\r\nX-Forwarded-For: 10.6.6.6\r\n\r\n"
        );
        let answer = raw_exchange(&gw, &head, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    });
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            "moltgate_policy_decisions_total",
            &[("stage", "ip"), ("rule", "blacklist")]
        ),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "moltgate_policy_decisions_total",
            &[("stage", "ip"), ("rule", "not_whitelisted")]
        ),
        2.0,
        "{metrics}"
    );
    let refused = gw
        .wait_audits(2, |a| a["reason"] == "blacklist" && a["status"] == 403)
        .len();
    assert_eq!(refused, 2);
}

/// `X-Forwarded-For` from a peer that is not a trusted proxy is ignored:
/// the socket address decides.
#[test]
fn xff_from_untrusted_peer_is_ignored() {
    let gw = Setup {
        policies: vec![
            (
                "security_policy.yaml",
                security("ip_whitelist: [10.0.0.0/8]\nip_blacklist: [192.0.2.0/24]\ntrusted_proxies: [198.51.100.0/24]\n"),
            ),
            ("abac.yaml", common::ALLOW_ALL_ABAC.into()),
        ],
        ..Default::default()
    }
    .start();
    let token = gw.token("spoofer", &[]);
    rt().block_on(async {
        let c = gw.client(true);
        let url = gw.url("/v1/messages");
        // Claiming a whitelisted address does not help: 127.0.0.1 is not whitelisted.
        let (s, _, b) = post(&c, &url, &token, message("hi", "private"), Some("10.1.2.3")).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (403, Some("not_whitelisted")),
            "{b}"
        );
        // Nor does it hurt: naming a blacklisted address is not the client's address.
        let (s, _, b) = post(
            &c,
            &url,
            &token,
            message("hi", "private"),
            Some("192.0.2.9"),
        )
        .await;
        assert_eq!(
            (s, b["error"].as_str()),
            (403, Some("not_whitelisted")),
            "{b}"
        );
    });
}

// ---------------------------------------------------------------------------
// Rate limits

/// The HTTP API answers 429 with Retry-After past the per-user limit; other
/// users keep their own budget.
#[test]
fn api_rate_limit_is_429_with_retry_after() {
    let gw = Setup {
        policies: vec![
            (
                "security_policy.yaml",
                security("rate_limiting:\n  per_user: { window: 60s, max_requests: 3 }\n"),
            ),
            ("abac.yaml", common::ALLOW_ALL_ABAC.into()),
        ],
        ..Default::default()
    }
    .start();
    let (busy, calm) = (gw.token("busy", &[]), gw.token("calm", &[]));
    rt().block_on(async {
        let c = gw.client(false);
        let url = gw.url("/v1/messages");
        for i in 1..=3 {
            let (s, _, b) = post(&c, &url, &busy, message("hi", "private"), None).await;
            assert_eq!(s, 200, "request {i}: {b}");
        }
        for _ in 0..2 {
            let (s, h, b) = post(&c, &url, &busy, message("hi", "private"), None).await;
            assert_eq!(s, 429, "{b}");
            assert_eq!(b["error"], "rate_limited");
            let after: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
            // At most the window plus one sub-bucket (60 s / 64), rounded up.
            assert!((1..=61).contains(&after), "Retry-After {after}");
        }
        let (s, _, _) = post(&c, &url, &calm, message("hi", "private"), None).await;
        assert_eq!(s, 200, "another user has their own budget");
    });
    let limited: Vec<Value> = gw.wait_audits(2, |a| a["decision"] == "rate_limited");
    assert_eq!(limited.len(), 2);
    assert!(limited
        .iter()
        .all(|a| a["rules"] == "rate:per_user" && a["status"] == 429));
    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            "moltgate_policy_decisions_total",
            &[
                ("stage", "rate"),
                ("decision", "deny"),
                ("rule", "per_user")
            ]
        ),
        2.0,
        "{m}"
    );
}

/// A rate-limited webhook gets 200, its message is not forwarded (the
/// assistant accepts only the admitted ones), and the user hears exactly one
/// "slow down" in the window.
#[test]
fn webhook_rate_limit_acks_drops_and_says_slow_down_once() {
    let fake = FakeApi::start();
    let gw = Setup {
        routes: tg_route(&fake),
        policies: vec![
            (
                "security_policy.yaml",
                security("rate_limiting:\n  per_user: { window: 60s, max_requests: 2 }\n"),
            ),
            ("abac.yaml", common::ALLOW_ALL_ABAC.into()),
        ],
        ..Default::default()
    }
    .start();
    let url = gw.url("/hooks/telegram/t");
    rt().block_on(async {
        let c = gw.client(false);
        let group = -1001;
        for i in 1..=2u64 {
            let (s, body) = tg_post(
                &c,
                &url,
                tg_update(100 + i, 7, group, "group", &format!("m{i}")),
            )
            .await;
            assert_eq!(s, 200);
            assert_eq!(
                inline_text(&body).as_deref().map(echoed),
                Some(format!("m{i}").as_str())
            );
        }
        let mut notices = 0;
        for i in 3..=6u64 {
            let (s, body) = tg_post(
                &c,
                &url,
                tg_update(100 + i, 7, group, "group", &format!("m{i}")),
            )
            .await;
            assert_eq!(s, 200, "a platform must never see 429");
            if !body.trim().is_empty() {
                assert_eq!(inline_text(&body).as_deref(), Some(SLOW_DOWN), "{body}");
                notices += 1;
            }
        }
        assert_eq!(notices, 1, "exactly one slow-down reply in the window");
        // Another member of the same group has their own budget.
        let (s, body) = tg_post(&c, &url, tg_update(200, 8, group, "group", "other")).await;
        assert_eq!(s, 200);
        assert_eq!(inline_text(&body).as_deref().map(echoed), Some("other"));
    });
    // Every reply went inline; nothing (no second notice, no echo) went through the API.
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    assert_eq!(
        forwarded(&gw),
        3.0,
        "only admitted messages reach the assistant"
    );
    let limited = gw.wait_audits(4, |a| a["decision"] == "rate_limited").len();
    assert_eq!(limited, 4);
    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            "moltgate_policy_decisions_total",
            &[("stage", "rate"), ("rule", "per_user")]
        ),
        4.0,
        "{m}"
    );
}

// ---------------------------------------------------------------------------
// ABAC + RBAC

const ABAC_CONDITIONS: &str = r#"policies:
  - id: allow_everyone
    effect: Allow
    resources: ["/v1/deny"]
    actions: [forward]
  - id: deny_contractors
    effect: Deny
    resources: ["/v1/deny"]
    actions: [forward]
    conditions: { claims.contractor: ["true"] }
  - id: allow_from_vpn
    effect: Allow
    resources: ["/v1/ip"]
    actions: [forward]
    conditions: { ipRange: ["10.0.0.0/8", "fd00::/8"] }
  - id: allow_mobile
    effect: Allow
    resources: ["/v1/device"]
    actions: [forward]
    conditions: { deviceType: [mobile] }
  - id: allow_sre
    effect: Allow
    resources: ["/v1/claims"]
    actions: [forward]
    conditions: { claims.department: [sre, engineering] }
  - id: allow_telegram_only
    effect: Allow
    resources: ["/v1/platform", "/hooks/telegram/*"]
    actions: [forward, "command:*"]
    conditions: { platform: telegram }
  - id: deny_telegram_groups
    effect: Deny
    resources: ["/hooks/telegram/*"]
    actions: [forward]
    conditions: { chat_type: [group, channel] }
  - id: allow_private_chats
    effect: Allow
    resources: ["/v1/chat"]
    actions: [forward]
    conditions: { chat_type: private }
  - id: allow_commands
    effect: Allow
    resources: ["/v1/cmd"]
    actions: [forward, "command:*"]
"#;

const PERMISSIONS: &str = "roles:\n  admin: [\"command:reboot\"]\n  user: [\"command:help\"]\nsubjects:\n  \"generic:carol\": [admin]\n";

/// Each condition through the gateway, deny overriding allow, default deny,
/// and a command needing an RBAC role; decisions named in audit and metrics.
#[test]
fn abac_conditions_precedence_and_command_roles() {
    let fake = FakeApi::start();
    let mut routes = String::new();
    for p in [
        "/v1/deny",
        "/v1/ip",
        "/v1/device",
        "/v1/claims",
        "/v1/platform",
        "/v1/chat",
        "/v1/none",
        "/v1/cmd",
    ] {
        routes.push_str(&format!(
            "  - {{ path: {p}, platform: generic, upstream: assistant }}\n"
        ));
    }
    routes.push_str(&tg_route(&fake));
    let gw = Setup {
        routes,
        policies: vec![
            (
                "security_policy.yaml",
                security("trusted_proxies: [127.0.0.1/32]\n"),
            ),
            ("abac.yaml", ABAC_CONDITIONS.into()),
            ("permissions.yaml", PERMISSIONS.into()),
        ],
        ..Default::default()
    }
    .start();
    // (sub, claims, route, text, chat_type, xff, expected status, rule that decides)
    type Case = (
        &'static str,
        &'static [&'static str],
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
        u16,
        &'static str,
    );
    let cases: &[Case] = &[
        (
            "d-plain",
            &[],
            "/v1/deny",
            "hi",
            "private",
            None,
            200,
            "allow_everyone",
        ),
        (
            "d-contractor",
            &["contractor=true"],
            "/v1/deny",
            "hi",
            "private",
            None,
            403,
            "deny_contractors",
        ),
        (
            "d-employee",
            &["contractor=false"],
            "/v1/deny",
            "hi",
            "private",
            None,
            200,
            "allow_everyone",
        ),
        (
            "ip-vpn",
            &[],
            "/v1/ip",
            "hi",
            "private",
            Some("10.9.8.7"),
            200,
            "allow_from_vpn",
        ),
        (
            "ip-vpn6",
            &[],
            "/v1/ip",
            "hi",
            "private",
            Some("fd00::1"),
            200,
            "allow_from_vpn",
        ),
        (
            "ip-local",
            &[],
            "/v1/ip",
            "hi",
            "private",
            None,
            403,
            "default_deny",
        ),
        (
            "dev-mobile",
            &["device_type=mobile"],
            "/v1/device",
            "hi",
            "private",
            None,
            200,
            "allow_mobile",
        ),
        (
            "dev-desktop",
            &["device_type=desktop"],
            "/v1/device",
            "hi",
            "private",
            None,
            403,
            "default_deny",
        ),
        (
            "dev-missing",
            &[],
            "/v1/device",
            "hi",
            "private",
            None,
            403,
            "default_deny",
        ),
        (
            "c-sre",
            &["department=sre"],
            "/v1/claims",
            "hi",
            "private",
            None,
            200,
            "allow_sre",
        ),
        (
            "c-sales",
            &["department=sales"],
            "/v1/claims",
            "hi",
            "private",
            None,
            403,
            "default_deny",
        ),
        (
            "c-missing",
            &[],
            "/v1/claims",
            "hi",
            "private",
            None,
            403,
            "default_deny",
        ),
        (
            "p-generic",
            &[],
            "/v1/platform",
            "hi",
            "private",
            None,
            403,
            "default_deny",
        ),
        (
            "chat-private",
            &[],
            "/v1/chat",
            "hi",
            "private",
            None,
            200,
            "allow_private_chats",
        ),
        (
            "chat-group",
            &[],
            "/v1/chat",
            "hi",
            "group",
            None,
            403,
            "default_deny",
        ),
        (
            "none",
            &["roles=admin"],
            "/v1/none",
            "hi",
            "private",
            None,
            403,
            "default_deny",
        ),
        (
            "cmd-none",
            &[],
            "/v1/cmd",
            "hello",
            "private",
            None,
            200,
            "allow_commands",
        ),
        (
            "cmd-none2",
            &[],
            "/v1/cmd",
            "/reboot now",
            "private",
            None,
            403,
            "rbac:no_role_grants command:reboot",
        ),
        (
            "cmd-user",
            &["roles=user"],
            "/v1/cmd",
            "/reboot now",
            "private",
            None,
            403,
            "rbac:no_role_grants command:reboot",
        ),
        (
            "cmd-admin",
            &["roles=admin"],
            "/v1/cmd",
            "/reboot now",
            "private",
            None,
            200,
            "allow_commands",
        ),
        (
            "carol",
            &[],
            "/v1/cmd",
            "/reboot now",
            "private",
            None,
            200,
            "allow_commands",
        ),
        (
            "cmd-help",
            &["roles=user"],
            "/v1/cmd",
            "/help me",
            "private",
            None,
            200,
            "allow_commands",
        ),
    ];
    let tokens: Vec<String> = cases.iter().map(|c| gw.token(c.0, c.1)).collect();
    rt().block_on(async {
        let c = gw.client(false);
        for (case, token) in cases.iter().zip(&tokens) {
            let (sub, _, route, text, chat, xff, want, rule) = *case;
            let (s, _, b) = post(&c, &gw.url(route), token, message(text, chat), xff).await;
            assert_eq!(s, want, "{sub}: {b}");
            if want == 200 {
                assert_eq!(echoed(&reply_text(&b)), text, "{sub}");
            } else {
                assert_eq!(b["error"], "forbidden", "{sub}: {b}");
            }
            let audit = audit_of(&gw, sub);
            let rules = rules_of(&audit);
            assert!(
                rules.split(',').any(|r| r == rule),
                "{sub}: rules {rules:?}, want {rule}"
            );
            if want == 403 {
                assert_eq!(audit["decision"], "denied", "{sub}");
                assert_eq!(audit["reason"], rule, "{sub}");
            }
        }

        // Telegram: platform and chat_type, with a 200 and a notice on deny.
        let url = gw.url("/hooks/telegram/t");
        let (s, body) = tg_post(&c, &url, tg_update(1, 41, 41, "private", "hello")).await;
        assert_eq!(s, 200);
        assert_eq!(inline_text(&body).as_deref().map(echoed), Some("hello"));
        let (s, body) = tg_post(&c, &url, tg_update(2, 42, -500, "supergroup", "hello")).await;
        assert_eq!(s, 200, "a denied webhook is still acknowledged");
        assert_eq!(inline_text(&body).as_deref(), Some(DENIED));
        let audit = audit_of(&gw, "42");
        assert_eq!(
            (audit["decision"].as_str(), audit["reason"].as_str()),
            (Some("denied"), Some("deny_telegram_groups"))
        );
        // The RBAC allowlist applies to webhooks too: telegram user 41 has no role.
        let (s, body) = tg_post(&c, &url, tg_update(3, 43, 43, "private", "/reboot now")).await;
        assert_eq!(s, 200);
        assert_eq!(inline_text(&body).as_deref(), Some(DENIED));
    });
    assert!(fake.requests().is_empty());
    let allowed = cases.iter().filter(|c| c.6 == 200).count() + 1;
    assert_eq!(
        forwarded(&gw),
        allowed as f64,
        "denied messages never reach the assistant"
    );
    let m = gw.metrics();
    let count = |decision: &str, rule: &str| {
        metric(
            &m,
            "moltgate_policy_decisions_total",
            &[("stage", "abac"), ("decision", decision), ("rule", rule)],
        )
    };
    assert_eq!(count("deny", "deny_contractors"), 1.0, "{m}");
    assert_eq!(count("deny", "deny_telegram_groups"), 1.0, "{m}");
    assert_eq!(count("deny", "default_deny"), 8.0, "{m}");
    assert_eq!(count("deny", "rbac:no_role_grants"), 3.0, "{m}");
    assert_eq!(count("allow", "allow_from_vpn"), 2.0, "{m}");
    assert_eq!(count("allow", "allow_everyone"), 2.0, "{m}");
    // The command name is user input: it never becomes a label.
    assert!(!m.contains("command:reboot"), "{m}");
}

// ---------------------------------------------------------------------------
// DLP

const DLP: &str = r##"patterns:
  credit_card:
    regex: '\b(?:[3-6]\d{3}|2[2-7]\d{2})(?:[ -]?\d){9,15}\b'
    validate: luhn
    action: mask
    mask: { keep_suffix: 4 }
  id_card:
    regex: '\b[1-9]\d{5}(18|19|20)\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])\d{3}[\dXx]\b'
    validate: gb11643
    action: block
  cn_mobile:
    regex: '(?:\+86[ -]?|\b)1[3-9]\d{9}\b'
    action: mask
    mask: { keep_prefix: 3, keep_suffix: 4 }
keywords:
  internal:
    words: ["confidential"]
    action: alert
    case_insensitive: true
  fruit_egress:
    words: ["pineapple"]
    action: mask
    direction: egress
    mask: { char: "#" }
"##;

/// Mask, partial mask, block (422), alert, egress-only masking, and
/// checksum-failing numbers through the generic API; the assistant sees only
/// masked text and blocked messages never reach it.
#[test]
fn dlp_through_the_api() {
    let gw = Setup {
        policies: vec![
            ("security_policy.yaml", SECURITY_POLICY.into()),
            ("abac.yaml", common::ALLOW_ALL_ABAC.into()),
            ("dlp.yaml", DLP.into()),
        ],
        ..Default::default()
    }
    .start();
    let token = gw.token("dlp-user", &[]);
    rt().block_on(async {
        let c = gw.client(false);
        let url = gw.url("/v1/messages");
        let ok = |text: &str, want: &str| (text.to_string(), want.to_string());
        let steps = [
            ok(
                "pay with 4111 1111 1111 1111 please",
                "pay with ***************1111 please",
            ),
            ok("call me on 13812341234", "call me on 138****1234"),
            ok("CONFIDENTIAL: q3 plan", "CONFIDENTIAL: q3 plan"),
            ok(
                "order 4111111111111112 at 1700000000123 ref 110105194912310021",
                "order 4111111111111112 at 1700000000123 ref 110105194912310021",
            ),
            ok("I like pineapple", "I like #########"),
        ];
        for (i, (text, want)) in steps.iter().enumerate() {
            let (s, _, b) = post(&c, &url, &token, message(text, "private"), None).await;
            assert_eq!(s, 200, "step {i}: {b}");
            assert_eq!(echoed(&reply_text(&b)), want, "step {i}");
            if i == 1 {
                // Blocked between steps: 422, and the assistant never sees it.
                let (s, _, b) = post(
                    &c,
                    &url,
                    &token,
                    message("my id is 11010519491231002X", "private"),
                    None,
                )
                .await;
                assert_eq!(s, 422, "{b}");
                assert_eq!(b["error"], "dlp_blocked");
                assert!(b["message"].as_str().unwrap().contains("id_card"), "{b}");
            }
        }
    });
    let mine = || -> Vec<Value> {
        gw.audit_lines()
            .into_iter()
            .filter(|a| a["sender_id"] == "dlp-user")
            .collect()
    };
    wait_until(Duration::from_secs(10), "six audit lines", || {
        mine().len() >= 6
    });
    let audits = mine();
    let rules: Vec<String> = audits.iter().map(rules_of).collect();
    assert_eq!(audits.len(), 6, "{rules:?}");
    assert!(rules[0].contains("dlp:credit_card:mask"), "{rules:?}");
    assert!(rules[1].contains("dlp:cn_mobile:mask"), "{rules:?}");
    assert!(rules[2].contains("dlp:id_card:block"), "{rules:?}");
    assert_eq!(audits[2]["decision"], "blocked");
    assert_eq!(audits[2]["status"], 422);
    assert!(rules[3].contains("dlp:internal:alert"), "{rules:?}");
    assert!(
        !rules[4].contains("dlp:"),
        "checksum failures are no findings: {rules:?}"
    );
    assert_eq!(
        forwarded(&gw),
        5.0,
        "the blocked message never reached the assistant"
    );
    assert!(
        !rules[5].contains("dlp:"),
        "egress-only rules do not scan ingress: {rules:?}"
    );
    let m = gw.metrics();
    let f = |rule: &str, action: &str, dir: &str| {
        metric(
            &m,
            "moltgate_dlp_findings_total",
            &[("rule", rule), ("action", action), ("direction", dir)],
        )
    };
    assert_eq!(f("internal", "alert", "ingress"), 1.0, "{m}");
    assert_eq!(f("credit_card", "mask", "ingress"), 1.0, "{m}");
    assert_eq!(f("id_card", "block", "ingress"), 1.0, "{m}");
    assert_eq!(f("fruit_egress", "mask", "egress"), 1.0, "{m}");
    assert_eq!(f("fruit_egress", "mask", "ingress"), 0.0, "{m}");
    // The values never reach the logs.
    let logs = gw.log_text();
    for secret in ["4111 1111 1111 1111", "13812341234", "11010519491231002X"] {
        assert!(!logs.contains(secret), "{secret} in logs");
    }
}

/// DLP on a webhook: a blocked message is acknowledged with 200 and a
/// notice; a masked one is answered with the masked echo.
#[test]
fn dlp_through_a_webhook() {
    let fake = FakeApi::start();
    let gw = Setup {
        routes: tg_route(&fake),
        policies: vec![
            ("security_policy.yaml", SECURITY_POLICY.into()),
            ("abac.yaml", common::ALLOW_ALL_ABAC.into()),
            ("dlp.yaml", DLP.into()),
        ],
        ..Default::default()
    }
    .start();
    let url = gw.url("/hooks/telegram/t");
    rt().block_on(async {
        let c = gw.client(false);
        let (s, body) = tg_post(
            &c,
            &url,
            tg_update(1, 9, 9, "private", "id 11010519491231002X"),
        )
        .await;
        assert_eq!(s, 200);
        let notice = inline_text(&body).unwrap();
        assert!(
            notice.starts_with("Your message was not sent") && notice.contains("id_card"),
            "{notice}"
        );
        assert!(!notice.contains("11010519491231002X"));
        let (s, body) = tg_post(
            &c,
            &url,
            tg_update(2, 9, 9, "private", "card 4111-1111-1111-1111 ok"),
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(
            inline_text(&body).as_deref().map(echoed),
            Some("card ***************1111 ok")
        );
    });
    let blocked = gw.wait_audit(|a| a["decision"] == "blocked");
    assert_eq!(forwarded(&gw), 1.0);
    assert_eq!(
        (blocked["status"].as_u64(), blocked["reason"].as_str()),
        (Some(200), Some("dlp:id_card"))
    );
}

// ---------------------------------------------------------------------------
// Hot reload

fn allow_rule(id: &str) -> String {
    format!("policies:\n  - id: {id}\n    effect: Allow\n    resources: [\"/v1/messages\"]\n    actions: [forward]\n")
}

fn deny_rule(id: &str) -> String {
    format!(
        "{}  - id: {id}\n    effect: Deny\n    resources: [\"**\"]\n    actions: [forward]\n",
        allow_rule("still_allowed")
    )
}

/// Decides one request as `sub` and returns (status, audit rules).
fn decide(
    gw: &Gateway,
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    token: &str,
    sub: &str,
) -> (u16, String) {
    let lines = |gw: &Gateway| -> Vec<Value> {
        gw.audit_lines()
            .into_iter()
            .filter(|a| a["sender_id"] == sub)
            .collect()
    };
    let before = lines(gw).len();
    let (s, _, _) = rt.block_on(post(
        client,
        &gw.url("/v1/messages"),
        token,
        message("hi", "private"),
        None,
    ));
    wait_until(Duration::from_secs(10), "the audit line", || {
        lines(gw).len() > before
    });
    (s, rules_of(lines(gw).last().unwrap()))
}

/// Editing abac.yaml while the gateway runs (a plain in-place write, as an
/// editor does) takes effect within seconds through the watcher.
#[test]
fn watcher_applies_an_abac_edit_within_seconds() {
    let gw = Setup {
        policies: vec![
            ("security_policy.yaml", SECURITY_POLICY.into()),
            ("abac.yaml", allow_rule("before_edit")),
        ],
        ..Default::default()
    }
    .start();
    let rt = rt();
    let c = gw.client(false);
    let token = gw.token("editor", &[]);
    assert_eq!(
        decide(&gw, &rt, &c, &token, "editor"),
        (200, "before_edit".into())
    );
    let v0 = policy_version(&gw);
    std::fs::write(gw.policies().join("abac.yaml"), deny_rule("after_edit")).unwrap();
    let edited = Instant::now();
    let mut seen = (0, String::new());
    wait_until(Duration::from_secs(10), "the edit to take effect", || {
        seen = decide(&gw, &rt, &c, &token, "editor");
        seen.0 == 403
    });
    assert_eq!(seen, (403, "after_edit".to_string()));
    assert!(
        edited.elapsed() < Duration::from_secs(5),
        "took {:?}",
        edited.elapsed()
    );
    assert!(policy_version(&gw) > v0);
    assert!(
        metric(
            &gw.metrics(),
            "moltgate_policy_reload_total",
            &[("result", "success")]
        ) >= 1.0
    );
}

/// `POST /reload` and SIGHUP each reload (the version moves without any
/// file change, so the watcher is not what did it); `/reload` is synchronous.
#[test]
fn post_reload_and_sighup_reload() {
    let gw = Setup {
        policies: vec![
            ("security_policy.yaml", SECURITY_POLICY.into()),
            ("abac.yaml", allow_rule("first")),
        ],
        ..Default::default()
    }
    .start();
    assert_eq!(policy_version(&gw), 1);
    let pid = gw.child.as_ref().unwrap().id().to_string();
    let st = Command::new("kill")
        .args(["-HUP", &pid])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    wait_until(Duration::from_secs(5), "SIGHUP reload", || {
        policy_version(&gw) == 2
    });
    // Written before the reload, but read from stderr by another thread.
    gw.wait_log("SIGHUP");

    let (s, body) = admin_request(gw.admin, "POST", "/reload").unwrap();
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["policy_version"].as_u64()),
        (Some("reloaded"), Some(3))
    );

    // A change plus /reload is in force when /reload answers: no polling.
    replace_policy(&gw, "abac.yaml", &deny_rule("after_reload"));
    let (s, body) = admin_request(gw.admin, "POST", "/reload").unwrap();
    assert_eq!(s, 200, "{body}");
    let rt = rt();
    let token = gw.token("reloader", &[]);
    assert_eq!(
        decide(&gw, &rt, &gw.client(false), &token, "reloader"),
        (403, "after_reload".into())
    );
    assert!(
        metric(
            &gw.metrics(),
            "moltgate_policy_reload_total",
            &[("result", "success")]
        ) >= 3.0
    );
}

/// A broken abac.yaml is refused: 422 naming file:line:col, a failure
/// counted, /readyz still ready, and the old set keeps serving.
#[test]
fn broken_file_is_refused_and_the_old_set_serves() {
    let gw = Setup {
        policies: vec![
            ("security_policy.yaml", SECURITY_POLICY.into()),
            ("abac.yaml", allow_rule("good_rule")),
        ],
        ..Default::default()
    }
    .start();
    let rt = rt();
    let c = gw.client(false);
    let token = gw.token("survivor", &[]);
    assert_eq!(
        decide(&gw, &rt, &c, &token, "survivor"),
        (200, "good_rule".into())
    );
    let failures = |gw: &Gateway| {
        metric(
            &gw.metrics(),
            "moltgate_policy_reload_total",
            &[("result", "failure")],
        )
    };
    assert_eq!(failures(&gw), 0.0);
    let broken = "policies:\n  - id: broken\n    effect: Deny\n    resources: [\"**\"]\n    actions: [forward]\n    conditions:\n      ipRnage: 10.0.0.0/8\n";
    replace_policy(&gw, "abac.yaml", broken);
    let (s, body) = admin_request(gw.admin, "POST", "/reload").unwrap();
    assert_eq!(s, 422, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "refused");
    assert_eq!(v["policy_version"], 1);
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("abac.yaml:7:7: unknown key 'ipRnage' (did you mean 'ipRange'?)"),
        "{err}"
    );
    assert!(failures(&gw) >= 1.0);
    assert_eq!(
        policy_version(&gw),
        1,
        "/readyz stays 200 on the old version"
    );
    assert_eq!(
        decide(&gw, &rt, &c, &token, "survivor"),
        (200, "good_rule".into())
    );
    // Fixing the file recovers.
    replace_policy(&gw, "abac.yaml", &deny_rule("fixed_rule"));
    let (s, _) = admin_request(gw.admin, "POST", "/reload").unwrap();
    assert_eq!(s, 200);
    assert_eq!(
        decide(&gw, &rt, &c, &token, "survivor"),
        (403, "fixed_rule".into())
    );
}

/// One complete policy set: ABAC allow rule, an ingress mask and an egress
/// mask, all named after the set; the mask characters show which set's
/// rules touched the reply.
fn policy_set(tag: &str, ingress_char: char, egress_char: char) -> Vec<(&'static str, String)> {
    vec![
        ("security_policy.yaml", SECURITY_POLICY.to_string()),
        ("abac.yaml", allow_rule(&format!("allow_{tag}"))),
        (
            "dlp.yaml",
            format!(
                "keywords:\n  mask_{tag}:\n    words: [zebra]\n    action: mask\n    direction: ingress\n    mask: {{ char: \"{ingress_char}\" }}\n  egress_{tag}:\n    words: [echo]\n    action: mask\n    direction: egress\n    mask: {{ char: \"{egress_char}\" }}\n"
            ),
        ),
    ]
}

/// Starts a gateway whose `policies/` is a symlink to `set_a/`, with a
/// complete second set in `set_b/`: swapping the link swaps every file at once.
fn start_with_two_sets() -> Gateway {
    let setup = Setup {
        policies: policy_set("a", '*', 'a'),
        ..Default::default()
    };
    let (dir, public, admin, path) = setup.write();
    // 50 reloads in a second or so: lift the admin listener's reload interval.
    let config = std::fs::read_to_string(&path).unwrap().replace(
        &format!("admin: {{ address: 127.0.0.1:{admin} }}"),
        &format!("admin: {{ address: 127.0.0.1:{admin}, reload_interval: 0s }}"),
    );
    std::fs::write(&path, config).unwrap();
    let root = dir.path();
    std::fs::rename(root.join("policies"), root.join("set_a")).unwrap();
    std::fs::create_dir(root.join("set_b")).unwrap();
    for (name, text) in policy_set("b", '#', 'b') {
        std::fs::write(root.join("set_b").join(name), text).unwrap();
    }
    std::os::unix::fs::symlink("set_a", root.join("policies")).unwrap();
    let mut child = Command::new(common::BIN)
        .arg("run")
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = logs.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push(line);
        }
    });
    let gw = Gateway {
        dir,
        public,
        admin,
        child: Some(child),
        logs,
    };
    gw.wait_admin("/healthz", 200);
    gw
}

fn point_policies_at(root: &Path, set: &str) {
    let next = root.join("policies.next");
    let _ = std::fs::remove_file(&next);
    std::os::unix::fs::symlink(set, &next).unwrap();
    std::fs::rename(&next, root.join("policies")).unwrap();
}

/// What one request under load saw: its envelope id and reply.
struct Seen {
    envelope_id: String,
    reply: String,
}

/// 50 reloads alternating complete sets A and B while two clients send
/// requests: returns every request's (audit rules, reply).
fn reloads_under_load() -> Vec<(String, String)> {
    let gw = start_with_two_sets();
    let token = gw.token("loader", &[]);
    let rt = rt();
    let done = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (client, url, token) = (gw.client(false), gw.url("/v1/messages"), token.clone());
        let (done, seen, failures) = (done.clone(), seen.clone(), failures.clone());
        clients.push(rt.spawn(async move {
            let mut n = 0;
            while !done.load(Ordering::Acquire) && n < 3000 {
                n += 1;
                let (s, _, b) =
                    post(&client, &url, &token, message("a zebra", "group"), None).await;
                if s != 200 {
                    failures.lock().unwrap().push(format!("{s}: {b}"));
                    continue;
                }
                seen.lock().unwrap().push(Seen {
                    envelope_id: b["envelope_id"].as_str().unwrap_or("").to_string(),
                    reply: b["replies"][0]["text"].as_str().unwrap_or("").to_string(),
                });
            }
        }));
    }
    let root = gw.dir.path().to_path_buf();
    for i in 0..50 {
        let set = if i % 2 == 0 { "set_b" } else { "set_a" };
        point_policies_at(&root, set);
        let (s, body) = admin_request(gw.admin, "POST", "/reload").unwrap();
        assert_eq!(s, 200, "reload {i}: {body}");
        // Let some requests through under each set.
        std::thread::sleep(Duration::from_millis(15));
    }
    done.store(true, Ordering::Release);
    for c in clients {
        rt.block_on(c).unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(policy_version(&gw), 51);
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        seen.len() >= 50,
        "only {} requests during the reloads",
        seen.len()
    );
    seen.into_iter()
        .map(|s| {
            let audit = gw.wait_audit(|a| a["envelope_id"] == s.envelope_id.as_str());
            (rules_of(&audit), s.reply)
        })
        .collect()
}

/// Which set's ids a request's audit rules name: Some("a"|"b"), or None on a mix.
fn set_of_rules(rules: &str) -> Option<&'static str> {
    let ids: Vec<&str> = rules.split(',').collect();
    if ids
        .iter()
        .all(|r| r.ends_with("_a") || r.ends_with("_a:mask"))
    {
        Some("a")
    } else if ids
        .iter()
        .all(|r| r.ends_with("_b") || r.ends_with("_b:mask"))
    {
        Some("b")
    } else {
        None
    }
}

/// 50 reloads under load: zero failed requests, and each request's ABAC rule
/// and ingress DLP finding come from one set (and the ingress mask character
/// the assistant saw matches it).
#[test]
fn reloads_under_load_never_mix_sets() {
    let results = reloads_under_load();
    let (mut a, mut b) = (0, 0);
    for (rules, reply) in &results {
        let set = set_of_rules(rules).unwrap_or_else(|| panic!("mixed rules: {rules}"));
        assert_eq!(rules.split(',').count(), 2, "{rules}");
        let (masked, n) = if set == "a" {
            ("a *****", &mut a)
        } else {
            ("a #####", &mut b)
        };
        *n += 1;
        assert!(
            reply.contains(masked),
            "set {set} ({rules}) but the assistant saw {reply:?}"
        );
    }
    assert!(a > 0 && b > 0, "both sets must have served: a={a} b={b}");
}

/// The same run, checking the reply side: egress DLP must use the set that
/// decided the request (its mask character must match the audit's set).
#[test]
fn reloads_under_load_egress_uses_the_requests_set() {
    let results = reloads_under_load();
    let mixed: Vec<&(String, String)> = results
        .iter()
        .filter(|(rules, reply)| {
            let want = if set_of_rules(rules) == Some("a") {
                "aaaa:"
            } else {
                "bbbb:"
            };
            !reply.starts_with(want)
        })
        .collect();
    assert!(
        mixed.is_empty(),
        "{} of {} requests were decided by one set and egress-scanned by the other, e.g. {:?}",
        mixed.len(),
        results.len(),
        &mixed[..mixed.len().min(3)]
    );
}
