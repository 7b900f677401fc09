//! The whole in-process message path: `Gateway::begin` → `admit` → method
//! and body-limit checks (as `server::proxy` does them) → `Gateway::handle`
//! (authenticate, dedupe, identity, rate, confirm, authorise, DLP ingress,
//! the embedded assistant, DLP egress, answer, finish).
//!
//! One gateway is built per process from a config and policies written to a
//! temporary directory (removed once loaded): the shipped `abac.yaml`,
//! `permissions.yaml`, `identities.yaml` and `dlp.yaml`, and a
//! `security_policy.yaml` with a strong HS256 secret, loopback and 10/8 (but
//! not 10.66/16) allowed, 127.0.0.1 a trusted proxy, and rate limits that
//! only bite on the passthrough route. Routes: the JWT API, a Telegram and a
//! Slack webhook, all translated to the in-process `embedded` assistant, and
//! a Telegram passthrough route whose bot is 127.0.0.1:9 (refused at once).
//! Platform API calls go to 127.0.0.1:9 too; nothing leaves the machine.
//!
//! Input: `ctl: u8 | f0 NUL f1 NUL f2 NUL | body`.
//! - `ctl & 3`: route: 0 `/v1/messages`, 1 Telegram, 2 Slack, 3 Telegram passthrough.
//! - bit 2: the harness authenticates: mints a JWT (sub = f1, or `alice`),
//!   presents the Telegram secret, or signs the Slack body (timestamp now).
//!   Otherwise f0 is the raw `Authorization` / secret token / Slack
//!   signature and f1 the raw Slack timestamp.
//! - bit 3 (with bit 2): the harness then breaks that credential on purpose
//!   (`f1.len() % 3`: a changed signature character, the wrong key, or an
//!   `alg: none` token / a neighbouring timestamp).
//! - bit 4: the body is the message text, which the harness puts into the
//!   platform's message shape (ids fresh per input, so dedupe does not eat
//!   them); otherwise the body is sent as is.
//! - bit 5: GET instead of POST.
//! - bit 6: variant: a group chat (generic, Telegram), a Slack slash command,
//!   a Telegram caption; admin roles on the JWT.
//! - bit 7: peer 10.1.2.3 (else 127.0.0.1). f2, when present, is an
//!   `X-Forwarded-For` header (honoured from 127.0.0.1 only).
//!
//! Properties: nothing panics; the status is one the path can answer;
//! a request whose credential the harness broke never gets a 2xx; a request
//! the harness signed is never refused as unauthenticated; and (in the
//! message-shape mode) no card number that the shipped DLP policy finds in
//! the message text comes back in the answer.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use moltgate::config::Config;
use moltgate::observe::Metrics;
use moltgate::path::{Gateway, IncomingRequest, Stop};
use moltgate::platform::{slack, telegram};
use moltgate::policy::dlp::{Action, Direction, DlpPolicy};
use serde_json::json;

use super::common::*;

const JWT_SECRET: &str = "fz-9Hq4wE2rT7yU1iO5pA8sD3fG6hJ0kL-message-path";
const TG_SECRET: &str = "fz-tg-secret_0123456789";
const SLACK_SECRET: &str = "fz-slack-signing-secret-0123456789abcdef";

const GENERIC: &str = "/v1/messages";
const TELEGRAM: &str = "/hooks/telegram/demo";
const SLACK: &str = "/hooks/slack/demo";
const PASSTHROUGH: &str = "/hooks/telegram/legacy";

/// Statuses the path answers with (the adapters' own answers included).
const EXPECTED: &[u16] = &[
    200, 202, 204, 400, 401, 403, 404, 405, 410, 413, 422, 429, 502, 503,
];

fn security_policy() -> String {
    format!(
        "rate_limiting:\n  global: {{ window: 1s, max_requests: 1000000 }}\n  per_ip: {{ window: 1s, max_requests: 1000000 }}\n  per_user: {{ window: 1s, max_requests: 1000000 }}\n  per_route:\n    {PASSTHROUGH}: {{ window: 1s, max_requests: 5 }}\nip_whitelist: [127.0.0.0/8, \"::1/128\", 10.0.0.0/8]\nip_blacklist: [10.66.0.0/16]\ntrusted_proxies: [127.0.0.1/32]\njwt_validation:\n  issuer: auth.example.com\n  audiences: [moltbot.api]\n  leeway: 60\n  algorithms: [HS256]\n  secret: {JWT_SECRET}\n"
    )
}

fn config(policies: &Path) -> String {
    format!(
        r#"listen:
  public: {{ address: "127.0.0.1:18443", tls: {{ cert: none.crt, key: none.key }} }}
  admin: {{ address: "127.0.0.1:19090" }}
policies: "{}"
context: {{ max_conversations: 1000, ttl: 1h, turns: 4 }}
upstreams:
  assistant: {{ kind: grpc, nodes: [embedded], timeout: 30s }}
  legacy-bot: {{ kind: http, nodes: ["127.0.0.1:9"], timeout: 1s }}
routes:
  - {{ path: {GENERIC}, platform: generic, upstream: assistant }}
  - {{ path: {TELEGRAM}, platform: telegram, upstream: assistant, deadline: 30s,
      api_base: "http://127.0.0.1:9", secrets: {{ secret_token: {TG_SECRET} }} }}
  - {{ path: {SLACK}, platform: slack, upstream: assistant, deadline: 30s,
      api_base: "http://127.0.0.1:9", secrets: {{ signing_secret: {SLACK_SECRET} }} }}
  - {{ path: {PASSTHROUGH}, platform: telegram, mode: passthrough, upstream: legacy-bot,
      api_base: "http://127.0.0.1:9", secrets: {{ secret_token: {TG_SECRET} }} }}
limits: {{ dedupe_capacity: 1000 }}
"#,
        policies.display()
    )
}

struct World {
    rt: tokio::runtime::Runtime,
    gw: Gateway,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir: PathBuf =
        std::env::temp_dir().join(format!("moltgate-fuzz-path-{}", std::process::id()));
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).expect("policies dir");
    for (name, text) in [
        (
            "abac.yaml",
            include_str!("../../policies/abac.yaml").to_string(),
        ),
        (
            "permissions.yaml",
            include_str!("../../policies/permissions.yaml").to_string(),
        ),
        (
            "identities.yaml",
            include_str!("../../policies/identities.yaml").to_string(),
        ),
        (
            "dlp.yaml",
            include_str!("../../policies/dlp.yaml").to_string(),
        ),
        ("security_policy.yaml", security_policy()),
    ] {
        std::fs::write(policies.join(name), text).expect("write policy");
    }
    let cfg = Config::from_str_at(&dir.join("moltgate.yaml"), &config(&policies), dir.clone())
        .expect("the harness config loads");
    let gw = {
        let _enter = rt.enter();
        Gateway::build(
            &cfg,
            Metrics::new(),
            Arc::new(moltgate::server::bot_client::PingoraBotClient::new()),
        )
        .expect("the gateway builds")
    };
    // Everything is loaded; the gateway never reads the directory again
    // (no watcher runs).
    let _ = std::fs::remove_dir_all(&dir);
    World { rt, gw }
});

static DLP: LazyLock<DlpPolicy> = LazyLock::new(|| {
    DlpPolicy::from_yaml(
        Path::new("policies/dlp.yaml"),
        include_str!("../../policies/dlp.yaml"),
    )
    .expect("the shipped dlp.yaml loads")
});

/// Fresh message and event ids, so that the dedupe stage lets shaped
/// messages through.
static SEQ: AtomicU64 = AtomicU64::new(1);

/// One fuzz input; panics on a broken property.
pub fn run(data: &[u8]) {
    let Some(inp) = Input::split(data, 3) else {
        return;
    };
    let world = &*WORLD;
    let route = [GENERIC, TELEGRAM, SLACK, PASSTHROUGH][usize::from(inp.ctl & 3)];
    let sign = inp.bit(2);
    let corrupt = sign && inp.bit(3);
    let shaped = inp.bit(4);
    let variant = inp.bit(6);
    let text = String::from_utf8_lossy(inp.body);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let body: Vec<u8> = if shaped {
        shape(route, &text, variant, seq).into_bytes()
    } else {
        inp.body.to_vec()
    };
    let mut headers = HeaderMap::new();
    let mut put = |name: &str, value: &[u8]| {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    };
    let breakage = inp.field(1).map_or(0, <[u8]>::len) % 3;
    match route {
        GENERIC => {
            if shaped || !body.is_empty() {
                put("content-type", b"application/json");
            }
            let auth = if sign {
                let token = mint(&world.gw, &inp.text(1), variant);
                Some(if corrupt {
                    break_jwt(&token, breakage)
                } else {
                    token
                })
                .map(|t| format!("Bearer {t}").into_bytes())
            } else {
                inp.field(0).map(<[u8]>::to_vec)
            };
            if let Some(a) = auth {
                put("authorization", &a);
            }
        }
        TELEGRAM | PASSTHROUGH => {
            let secret = if sign {
                Some(match (corrupt, breakage) {
                    (false, _) => TG_SECRET.to_string(),
                    (true, 0) => TG_SECRET.replacen('f', "g", 1),
                    (true, 1) => "fz-tg-secret_wrong".to_string(),
                    (true, _) => format!("{TG_SECRET}0"),
                })
                .map(String::into_bytes)
            } else {
                inp.field(0).map(<[u8]>::to_vec)
            };
            if let Some(s) = secret {
                put(telegram::SECRET_HEADER, &s);
            }
            if shaped || !body.is_empty() {
                put("content-type", b"application/json");
            }
        }
        _ => {
            let ts = match inp.field(1) {
                Some(t) if !sign => Some(t.to_vec()),
                _ if sign => Some(unix_now().to_string().into_bytes()),
                _ => None,
            };
            let signature = if sign {
                let ts = String::from_utf8_lossy(ts.as_deref().unwrap_or_default()).into_owned();
                Some(match (corrupt, breakage) {
                    (false, _) => slack::sign(SLACK_SECRET, &ts, &body),
                    (true, 0) => flip_hex(&slack::sign(SLACK_SECRET, &ts, &body)),
                    (true, 1) => slack::sign("fz-wrong-slack-secret", &ts, &body),
                    (true, _) => {
                        let other = ts.parse::<u64>().map_or(0, |t| t + 1).to_string();
                        slack::sign(SLACK_SECRET, &other, &body)
                    }
                })
                .map(String::into_bytes)
            } else {
                inp.field(0).map(<[u8]>::to_vec)
            };
            if let Some(t) = ts {
                put(slack::TIMESTAMP_HEADER, &t);
            }
            if let Some(s) = signature {
                put(slack::SIGNATURE_HEADER, &s);
            }
            let form = shaped && variant;
            put(
                "content-type",
                if form {
                    b"application/x-www-form-urlencoded"
                } else {
                    b"application/json"
                },
            );
        }
    }
    if let Some(xff) = inp.field(2) {
        put("x-forwarded-for", xff);
    }
    let method = if inp.bit(5) {
        Method::GET
    } else {
        Method::POST
    };
    let peer: IpAddr = if inp.bit(7) {
        [10, 1, 2, 3].into()
    } else {
        [127, 0, 0, 1].into()
    };

    let gw = &world.gw;
    let resp = world.rt.block_on(async {
        let mut ex = gw.begin(route);
        match prepare(gw, &mut ex, method, headers, body, peer) {
            Ok(req) => gw.handle(ex, req).await,
            Err(stop) => gw.refuse(ex, stop).await,
        }
    });
    let status = resp.status();
    if *DEBUG {
        eprintln!(
            "=> {route} {status} {}",
            String::from_utf8_lossy(resp.body())
        );
    }
    assert!(
        EXPECTED.contains(&status.as_u16()),
        "unexpected status {status}: {:?}",
        resp.body()
    );
    if corrupt {
        assert!(
            !status.is_success(),
            "a broken credential was accepted: {status} {:?}",
            String::from_utf8_lossy(resp.body())
        );
    } else if sign && status == StatusCode::UNAUTHORIZED {
        // Only the wrong method or an unreadable body comes before the
        // credential; neither answers 401.
        panic!(
            "a request the harness signed was refused as unauthenticated: {:?}",
            String::from_utf8_lossy(resp.body())
        );
    }
    if shaped {
        no_card_comes_back(&text, resp.body());
    }
}

static DEBUG: LazyLock<bool> = LazyLock::new(|| std::env::var_os("FUZZ_DEBUG").is_some());

/// What `server::proxy` does before the path runs: route, admit (IP),
/// method, body limit.
fn prepare(
    gw: &Gateway,
    ex: &mut moltgate::path::Exchange,
    method: Method,
    headers: HeaderMap,
    body: Vec<u8>,
    peer: IpAddr,
) -> Result<IncomingRequest, Stop> {
    let route = ex.route.clone().ok_or(Stop::UnknownPath)?;
    let client_ip = gw.admit(ex, peer, &headers)?;
    if !route.methods().contains(&method) {
        let allow = route
            .methods()
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Stop::MethodNotAllowed { allow });
    }
    if body.len() > route.body_limit {
        return Err(Stop::TooLarge {
            limit: route.body_limit,
        });
    }
    Ok(IncomingRequest {
        method,
        query: None,
        headers,
        body: body.into(),
        client_ip,
    })
}

/// The message text in the route's message shape.
fn shape(route: &str, text: &str, variant: bool, seq: u64) -> String {
    match route {
        GENERIC => json!({
            "content": {"text": text},
            "context": {"chat_type": if variant { "group" } else { "private" }, "room_id": "r1"},
        })
        .to_string(),
        SLACK if variant => format!(
            "token=x&team_id=T0DEMO&channel_id=D0DEMO&user_id=U0DEMO0001&command=%2Fask&text={}&response_url={}&trigger_id=t{seq}",
            pct(text),
            pct("http://127.0.0.1:9/commands/1"),
        ),
        SLACK => json!({
            "type": "event_callback", "team_id": "T0DEMO", "event_id": format!("Ev{seq}"),
            "event_time": 1_700_000_000,
            "event": {"type": "message", "channel": "D0DEMO", "user": "U0DEMO0001", "text": text,
                      "ts": format!("1700000000.{seq:06}"), "channel_type": "im"},
        })
        .to_string(),
        _ => {
            let (chat_id, chat_type) = if variant { (-100_123, "group") } else { (12_345_678, "private") };
            let mut message = json!({
                "message_id": seq, "date": 1_700_000_000,
                "from": {"id": 12_345_678, "is_bot": false, "first_name": "T"},
                "chat": {"id": chat_id, "type": chat_type},
            });
            if variant && seq % 2 == 0 {
                message["photo"] = json!([{"file_id": "f", "file_unique_id": "u", "width": 1, "height": 1}]);
                message["caption"] = text.into();
            } else {
                message["text"] = text.into();
            }
            json!({"update_id": seq, "message": message}).to_string()
        }
    }
}

/// An HS256 token from the gateway's own verifier: sub `f1` (or `alice`).
fn mint(gw: &Gateway, sub: &str, admin: bool) -> String {
    let sub = if sub.is_empty() { "alice" } else { sub };
    let mut extra = std::collections::BTreeMap::new();
    if admin {
        extra.insert("roles".to_string(), json!(["admin"]));
    } else {
        extra.insert("roles".to_string(), json!(["user"]));
        extra.insert("tenant".to_string(), json!("acme"));
        extra.insert("department".to_string(), json!("sre"));
        extra.insert("device_type".to_string(), json!("desktop"));
    }
    gw.snapshot()
        .jwt
        .mint(sub, &extra, 3600)
        .expect("the gateway mints")
}

/// A valid token made invalid: a signature character changed, the claims
/// re-signed with another key, or `alg: none`.
fn break_jwt(token: &str, how: usize) -> String {
    let mut parts = token.splitn(3, '.');
    let (header, claims) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let payload = b64url_decode(claims).unwrap_or_default();
    match how {
        0 => corrupt_signature(token),
        1 => hs256_token(
            &b64url_decode(header).unwrap_or_default(),
            &payload,
            b"fz-not-the-gateway-secret-0123456789abcdef",
        ),
        _ => format!("{}.{claims}.", b64url(br#"{"alg":"none","typ":"JWT"}"#)),
    }
}

/// `v0=<hex>` with its first hex digit changed.
fn flip_hex(sig: &str) -> String {
    let mut s = sig.to_string();
    if let Some(i) = s.find('=').map(|i| i + 1).filter(|&i| i < s.len()) {
        let new = if &s[i..=i] == "0" { "1" } else { "0" };
        s.replace_range(i..=i, new);
    }
    s
}

/// No card number that the shipped DLP policy masks in `text` is in the
/// answer, written as in the text or as bare digits (unless the text also
/// has those characters where no finding covers them, which DLP leaves
/// alone by design: inside a longer digit run or a hex token).
fn no_card_comes_back(text: &str, answer: &[u8]) {
    let out = DLP.scan(text, Direction::Ingress);
    if out.is_blocked() {
        return;
    }
    let masks: Vec<(usize, usize)> = out
        .findings
        .iter()
        .filter(|f| f.action == Action::Mask)
        .map(|f| (f.start, f.end))
        .collect();
    // The texts of a JSON answer, unescaped (`\u0004` + `111…` is no `4111…`).
    let answer = match serde_json::from_slice::<serde_json::Value>(answer) {
        Ok(v) => {
            let mut texts = String::new();
            strings(&v, &mut texts);
            texts
        }
        Err(_) => String::from_utf8_lossy(answer).into_owned(),
    };
    let uncovered = |needle: &str| {
        text.match_indices(needle).any(|(at, v)| {
            let end = at + v.len();
            !masks.iter().any(|&(s, e)| at < e && s < end)
        })
    };
    for f in out.findings.iter().filter(|f| &*f.rule == "credit_card") {
        let card = &text[f.start..f.end];
        let digits: String = card.chars().filter(char::is_ascii_digit).collect();
        for needle in [card, digits.as_str()] {
            if needle.len() >= 12 && answer.contains(needle) && !uncovered(needle) {
                panic!("card {needle:?} from the message comes back in the answer: {answer}");
            }
        }
    }
}

/// Every string in `v` (keys too), each followed by a NUL.
fn strings(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::String(s) => {
            out.push_str(s);
            out.push('\0');
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        serde_json::Value::Object(m) => m.iter().for_each(|(k, x)| {
            out.push_str(k);
            out.push('\0');
            strings(x, out);
        }),
        other => {
            out.push_str(&other.to_string());
            out.push('\0');
        }
    }
}
