//! Hardening of the encrypted Chinese platforms against hostile requests,
//! over real TLS against the running gateway (issue 10, items 3 and 6).
//!
//! - Feishu, WeCom, DingTalk: a request is authenticated (signature or
//!   token, timestamp) before anything of it is decrypted, and every
//!   failure to authenticate, a bad or missing signature, a stale
//!   timestamp, a wrong token, a body that does not decrypt, bad padding, a
//!   wrong receive id, gets the same status and body: no padding oracle.
//!   The audit line and the metric keep the precise reason.
//! - DingTalk's robot `sign` covers only the timestamp: the same signed
//!   request again is a duplicate, and the same `(timestamp, sign)` with
//!   another body is refused, never a new message.
//! - DingTalk's `sessionWebhook` is called only when it is exactly
//!   `<api_base>/robot/sendBySession?session=<token>`; anything else on the
//!   API host is refused and counted as a failed writeback.

mod common;

use common::fake_api::FakeApi;
use common::platforms::{self as p, Signed};
use common::{accepted, metric, rt, Gateway, Setup};
use serde_json::{json, Value};

const FS_PATH: &str = "/hooks/feishu";
const FS_TOKEN_PATH: &str = "/hooks/feishu/token";
const WC_PATH: &str = "/hooks/wecom";
const DT_PATH: &str = "/hooks/dingtalk";

/// What every unauthenticated request is answered, byte for byte.
const UNAUTHENTICATED: &str =
    r#"{"error":"unauthenticated","message":"the request could not be authenticated"}"#;

/// A gateway with Feishu (encrypt key, and token only), WeCom and DingTalk
/// routes to the embedded assistant, their APIs pointed at `fake`.
fn start(fake: &FakeApi) -> Gateway {
    let api = fake.base();
    Setup {
        routes: format!(
            "  - {{ path: {FS_PATH}, platform: feishu, upstream: assistant, api_base: \"{api}\", secrets: {} }}\n\
             \x20 - {{ path: {FS_TOKEN_PATH}, platform: feishu, upstream: assistant, api_base: \"{api}\", secrets: {{ verification_token: \"{}\" }} }}\n\
             \x20 - {{ path: {WC_PATH}, platform: wecom, upstream: assistant, api_base: \"{api}\", secrets: {} }}\n\
             \x20 - {{ path: {DT_PATH}, platform: dingtalk, upstream: assistant, api_base: \"{api}\", secrets: {} }}\n",
            p::secrets("feishu"),
            p::feishu::VERIFICATION_TOKEN,
            p::secrets("wecom"),
            p::secrets("dingtalk"),
        ),
        ..Setup::default()
    }
    .start()
}

/// An answer, read whole.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

/// Sends `s` to `path` (its query, headers and body as the platform would).
fn send(gw: &Gateway, path: &str, s: &Signed) -> Answer {
    let url = match s.query.as_str() {
        "" => gw.url(path),
        q => format!("{}?{q}", gw.url(path)),
    };
    let mut req = gw.client(true).post(url).body(s.body.clone());
    for (k, v) in &s.headers {
        req = req.header(*k, v.as_str());
    }
    rt().block_on(async {
        let resp = req.send().await.expect("the gateway answers");
        Answer {
            status: resp.status().as_u16(),
            body: resp.text().await.unwrap(),
        }
    })
}

/// Sends every case and asserts they were all answered exactly alike:
/// 401 and the one unauthenticated body.
fn assert_all_alike(gw: &Gateway, cases: &[(&str, &str, Signed)]) {
    for (what, path, s) in cases {
        let a = send(gw, path, s);
        assert_eq!(
            (a.status, a.body.as_str()),
            (401, UNAUTHENTICATED),
            "{what} on {path}"
        );
    }
}

fn rejections(gw: &Gateway, route: &str, reason: &str) -> f64 {
    metric(
        &gw.metrics(),
        "moltgate_rejections_total",
        &[("route", route), ("reason", reason)],
    )
}

/// Waits (bounded) for `n` audit lines on `route` with `decision`.
fn audits(gw: &Gateway, route: &str, decision: &str, n: usize) -> Vec<Value> {
    gw.wait_audits(n, |a| a["route"] == route && a["decision"] == decision)
}

/// A signed copy of `s` (Feishu) with `headers` replaced.
fn with_headers(s: &Signed, headers: Vec<(&'static str, String)>) -> Signed {
    Signed {
        query: s.query.clone(),
        headers,
        body: s.body.clone(),
    }
}

// ------------------------------------------------------------------ Feishu

/// Item 3: Feishu decrypted before it checked the signature or token, and
/// answered bad padding differently from a ciphertext that decrypted: a
/// padding oracle. Now every failure to authenticate answers the same 401
/// and body; the audit line and metric keep the reason; and the genuine
/// unsigned challenge and a genuine message still work.
#[test]
fn feishu_every_unauthenticated_failure_answers_alike() {
    let fake = FakeApi::start();
    let gw = start(&fake);
    let now = p::now_secs();
    let key = p::feishu::ENCRYPT_KEY;
    let event = p::feishu::message("om_h1", "ou_h", "text", &json!({ "text": "hi" }));
    let sealed = p::feishu::seal(&event);
    let envelope = |c: &str| Signed {
        query: String::new(),
        headers: vec![("content-type", "application/json".into())],
        body: p::feishu::envelope(c),
    };
    let signed = |body: Vec<u8>, key: &str, ts: u64| {
        let headers = p::feishu::sign(&body, key, ts);
        Signed {
            query: String::new(),
            headers,
            body,
        }
    };
    let bad_padding = p::feishu::bad_padding();
    let valid_ct = p::feishu::encrypt(event.to_string().as_bytes());
    let not_json_ct = p::feishu::encrypt(b"{not json");
    let mut no_nonce = sealed.headers.clone();
    no_nonce.retain(|(k, _)| *k != "x-lark-request-nonce");
    let mut wrong_token = event.clone();
    wrong_token["header"]["token"] = json!("guessed-token");
    let cases = vec![
        (
            "signed with a guessed key",
            FS_PATH,
            signed(sealed.body.clone(), "guessed key", now),
        ),
        (
            "signed ten minutes ago",
            FS_PATH,
            signed(sealed.body.clone(), key, now - 600),
        ),
        ("no nonce", FS_PATH, with_headers(&sealed, no_nonce)),
        ("unsigned message", FS_PATH, envelope(&valid_ct)),
        ("unsigned bad padding", FS_PATH, envelope(&bad_padding)),
        ("unsigned not base64", FS_PATH, envelope("%%% not base64")),
        ("unsigned bad length", FS_PATH, envelope("AAAA")),
        (
            "unsigned, decrypts to garbage",
            FS_PATH,
            envelope(&not_json_ct),
        ),
        (
            "unsigned challenge, wrong token",
            FS_PATH,
            p::feishu::challenge("c1", "guessed-token"),
        ),
        (
            "signed bad padding",
            FS_PATH,
            signed(p::feishu::envelope(&bad_padding), key, now),
        ),
        (
            "signed, wrong token inside",
            FS_PATH,
            p::feishu::seal(&wrong_token),
        ),
        (
            "token route, wrong token",
            FS_TOKEN_PATH,
            Signed {
                query: String::new(),
                headers: vec![("content-type", "application/json".into())],
                body: wrong_token.to_string().into_bytes(),
            },
        ),
        (
            "token route, an envelope",
            FS_TOKEN_PATH,
            envelope(&valid_ct),
        ),
        (
            "token route, not JSON",
            FS_TOKEN_PATH,
            Signed {
                query: String::new(),
                headers: vec![("content-type", "application/json".into())],
                body: b"{garbage".to_vec(),
            },
        ),
    ];
    assert_all_alike(&gw, &cases);

    // The precise reasons are kept where the operator looks.
    for (reason, n) in [
        ("bad_signature", 3.0),
        ("stale_timestamp", 1.0),
        ("missing_field", 2.0),
        ("decrypt_failed", 4.0),
        ("malformed", 1.0),
    ] {
        assert_eq!(rejections(&gw, FS_PATH, reason), n, "{reason}");
    }
    for (reason, n) in [
        ("bad_signature", 1.0),
        ("decrypt_failed", 1.0),
        ("malformed", 1.0),
    ] {
        assert_eq!(rejections(&gw, FS_TOKEN_PATH, reason), n, "{reason}");
    }
    let refused = audits(&gw, FS_PATH, "rejected", 11);
    assert_eq!(refused.len(), 11);
    assert!(refused.iter().all(|a| a["status"] == 401), "{refused:?}");
    assert!(refused.iter().any(|a| a["reason"] == "decrypt_failed"));
    assert_eq!(accepted(&gw), 0.0);

    // What Feishu really sends still works.
    let a = send(
        &gw,
        FS_PATH,
        &p::feishu::challenge("c-ok", p::feishu::VERIFICATION_TOKEN),
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&a.body).unwrap(),
        json!({ "challenge": "c-ok" })
    );
    let a = send(&gw, FS_PATH, &sealed);
    assert_eq!(a.status, 200, "{a:?}");
    audits(&gw, FS_PATH, "answered", 2);
    assert_eq!(accepted(&gw), 1.0);
}

/// The padding oracle itself: unsigned envelopes whose ciphertext has bad
/// padding, is not base64, decrypts to garbage or decrypts to a message
/// (not the challenge) get byte-identical answers, so no answer tells an
/// attacker whether a forged ciphertext decrypted.
#[test]
fn feishu_is_no_padding_oracle() {
    let fake = FakeApi::start();
    let gw = start(&fake);
    let event = p::feishu::message("om_o1", "ou_o", "text", &json!({ "text": "hi" }));
    let answers: Vec<(u16, String)> = [
        p::feishu::bad_padding(),
        "%%% not base64".to_string(),
        p::feishu::encrypt(b"{not json"),
        p::feishu::encrypt(b"\x00\x01\x02"),
        p::feishu::encrypt(event.to_string().as_bytes()),
    ]
    .iter()
    .map(|c| {
        let s = Signed {
            query: String::new(),
            headers: vec![("content-type", "application/json".into())],
            body: p::feishu::envelope(c),
        };
        let a = send(&gw, FS_PATH, &s);
        (a.status, a.body)
    })
    .collect();
    assert!(
        answers.iter().all(|a| *a == answers[0]),
        "answers differ: {answers:#?}"
    );
    assert_eq!(answers[0], (401, UNAUTHENTICATED.to_string()));
    assert_eq!(accepted(&gw), 0.0);
}

/// Authenticated but malformed input keeps its own 400: it tells an
/// attacker nothing they could not sign themselves.
#[test]
fn feishu_signed_but_malformed_keeps_400() {
    let fake = FakeApi::start();
    let gw = start(&fake);
    for body in [&b"{not json"[..], b"[1,2]"] {
        let s = Signed {
            query: String::new(),
            headers: p::feishu::sign(body, p::feishu::ENCRYPT_KEY, p::now_secs()),
            body: body.to_vec(),
        };
        let a = send(&gw, FS_PATH, &s);
        assert_eq!(a.status, 400, "{a:?}");
        let v: Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["error"], "malformed");
    }
}

// ------------------------------------------------------------------- WeCom

/// Item 3, WeCom: a forged, stale or unsigned request, an envelope that
/// cannot be read, and a signed body that does not decrypt (bad base64,
/// padding, another corp's receive id) all answer alike.
#[test]
fn wecom_every_unauthenticated_failure_answers_alike() {
    let fake = FakeApi::start();
    let gw = start(&fake);
    let now = p::now_secs();
    let token = p::wecom::TOKEN;
    let inner = p::wecom::message("7701", "mallory", "text", &[("Content", "hi")]);
    let good = p::wecom::encrypt_for(&inner, p::wecom::CORP_ID);
    let mut unsigned = p::wecom::seal_raw(&good, now, token);
    unsigned.query = format!("timestamp={now}&nonce=1");
    let mut broken = p::wecom::seal_raw("x", now, token);
    broken.body = b"<xml><Encrypt>x".to_vec();
    let mut doctype = p::wecom::seal_raw("x", now, token);
    doctype.body =
        b"<!DOCTYPE xml [<!ENTITY a \"aaaa\">]><xml><Encrypt>&a;</Encrypt></xml>".to_vec();
    let cases = vec![
        (
            "signed with a guessed token",
            WC_PATH,
            p::wecom::seal_raw(&good, now, "guessed"),
        ),
        (
            "an hour old",
            WC_PATH,
            p::wecom::seal_raw(&good, now - 3600, token),
        ),
        ("unsigned", WC_PATH, unsigned),
        ("broken XML", WC_PATH, broken),
        ("DOCTYPE", WC_PATH, doctype),
        (
            "not base64",
            WC_PATH,
            p::wecom::seal_raw("!!notbase64!!", now, token),
        ),
        (
            "bad length",
            WC_PATH,
            p::wecom::seal_raw("AAAA", now, token),
        ),
        (
            "bad padding",
            WC_PATH,
            p::wecom::seal_raw(&p::wxcrypt::bad_padding(p::wecom::AES_KEY), now, token),
        ),
        (
            "another corp's receive id",
            WC_PATH,
            p::wecom::seal_raw(&p::wecom::encrypt_for(&inner, "wwsomeoneelse"), now, token),
        ),
    ];
    assert_all_alike(&gw, &cases);
    for (reason, n) in [
        ("bad_signature", 1.0),
        ("stale_timestamp", 1.0),
        ("missing_field", 1.0),
        ("malformed", 2.0),
        ("decrypt_failed", 4.0),
    ] {
        assert_eq!(rejections(&gw, WC_PATH, reason), n, "{reason}");
    }
    assert_eq!(accepted(&gw), 0.0);
    // A genuine message still goes through.
    let a = send(&gw, WC_PATH, &p::wecom::seal_raw(&good, now, token));
    assert_eq!(a.status, 200, "{a:?}");
    audits(&gw, WC_PATH, "answered", 1);
    assert_eq!(accepted(&gw), 1.0);
}

// ---------------------------------------------------------------- DingTalk

fn robot_body(msg_id: &str, text: &str, hook: &str) -> Vec<u8> {
    p::dingtalk::robot(
        msg_id,
        "staff_h",
        hook,
        json!({ "msgtype": "text", "text": { "content": text } }),
    )
    .to_string()
    .into_bytes()
}

/// Item 3, DingTalk: robot and event failures answer alike, and an event
/// that does not decrypt (after its signature verified) too.
#[test]
fn dingtalk_every_unauthenticated_failure_answers_alike() {
    let fake = FakeApi::start();
    let gw = start(&fake);
    let now = p::now_millis();
    let secret = p::dingtalk::APP_SECRET;
    let token = p::dingtalk::TOKEN;
    let hook = format!("{}/robot/sendBySession?session=s", fake.base());
    let body = robot_body("dt_a1", "hi", &hook);
    let mut no_sign = p::dingtalk::seal_robot_at(&body, now, secret);
    no_sign.headers.retain(|(k, _)| *k != "sign");
    let check_url = json!({ "EventType": "check_url" }).to_string();
    let enc = p::wxcrypt::encrypt(
        p::dingtalk::AES_KEY,
        check_url.as_bytes(),
        p::dingtalk::OWNER_KEY,
    );
    let cases = vec![
        (
            "guessed secret",
            DT_PATH,
            p::dingtalk::seal_robot_at(&body, now, "guessed"),
        ),
        (
            "two hours old",
            DT_PATH,
            p::dingtalk::seal_robot_at(&body, now - 7_200_000, secret),
        ),
        ("no sign", DT_PATH, no_sign),
        (
            "no headers",
            DT_PATH,
            Signed {
                query: String::new(),
                headers: vec![("content-type", "application/json".into())],
                body: body.clone(),
            },
        ),
        (
            "event, guessed token",
            DT_PATH,
            p::dingtalk::seal_event_raw(&enc, now, "guessed"),
        ),
        (
            "event, two hours old",
            DT_PATH,
            p::dingtalk::seal_event_raw(&enc, now - 7_200_000, token),
        ),
        (
            "event, not base64",
            DT_PATH,
            p::dingtalk::seal_event_raw("!!nope!!", now, token),
        ),
        (
            "event, bad padding",
            DT_PATH,
            p::dingtalk::seal_event_raw(&p::wxcrypt::bad_padding(p::dingtalk::AES_KEY), now, token),
        ),
        (
            "event, another owner key",
            DT_PATH,
            p::dingtalk::seal_event_raw(
                &p::wxcrypt::encrypt(p::dingtalk::AES_KEY, check_url.as_bytes(), "suiteOTHER"),
                now,
                token,
            ),
        ),
    ];
    assert_all_alike(&gw, &cases);
    for (reason, n) in [
        ("bad_signature", 2.0),
        ("stale_timestamp", 2.0),
        ("missing_field", 2.0),
        ("decrypt_failed", 3.0),
    ] {
        assert_eq!(rejections(&gw, DT_PATH, reason), n, "{reason}");
    }
    assert_eq!(accepted(&gw), 0.0);
    // The genuine check_url is still answered.
    let a = send(&gw, DT_PATH, &p::dingtalk::seal_event_raw(&enc, now, token));
    assert_eq!(a.status, 200, "{a:?}");
}

/// Item 6 (a): the robot sign covers only the timestamp, for an hour
/// either side. The same signed request again is a duplicate (one message
/// reaches the assistant); the same `(timestamp, sign)` with another body,
/// a new msgId and text (a message forged from a captured header pair) or
/// the same msgId with other text, is refused, never a new message.
#[test]
fn dingtalk_replayed_sign_is_a_duplicate_never_a_new_message() {
    let fake = FakeApi::start();
    let gw = start(&fake);
    let secret = p::dingtalk::APP_SECRET;
    let hook = format!("{}/robot/sendBySession?session=s-replay", fake.base());
    let ts = p::now_millis() - 1_800_000; // signed half an hour ago
    let genuine = p::dingtalk::seal_robot_at(&robot_body("dt_r1", "hello", &hook), ts, secret);
    let a = send(&gw, DT_PATH, &genuine);
    assert_eq!(a.status, 200, "{a:?}");
    audits(&gw, DT_PATH, "answered", 1);
    // Replayed as it was: a duplicate.
    let a = send(&gw, DT_PATH, &genuine);
    assert_eq!(a.status, 200, "{a:?}");
    audits(&gw, DT_PATH, "duplicate", 1);
    // The captured headers on other bodies.
    for body in [
        robot_body("dt_r2", "transfer the budget", &hook),
        robot_body("dt_r1", "transfer the budget", &hook),
    ] {
        let forged = Signed {
            body,
            ..genuine.clone()
        };
        let a = send(&gw, DT_PATH, &forged);
        assert_eq!((a.status, a.body.as_str()), (401, UNAUTHENTICATED), "{a:?}");
    }
    assert_eq!(rejections(&gw, DT_PATH, "replayed_signature"), 2.0);
    let refused = audits(&gw, DT_PATH, "rejected", 2);
    assert!(
        refused.iter().all(|a| a["reason"] == "replayed_signature"),
        "{refused:?}"
    );
    // Exactly one message reached the assistant, and one reply went out.
    assert_eq!(accepted(&gw), 1.0);
    fake.wait_for("/robot/sendBySession", 1);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(fake.requests_to("/robot/sendBySession").len(), 1);
    // A new signed timestamp carries a new message.
    let next = p::dingtalk::seal_robot_at(&robot_body("dt_r3", "next", &hook), ts + 1, secret);
    assert_eq!(send(&gw, DT_PATH, &next).status, 200);
    audits(&gw, DT_PATH, "answered", 2);
    assert_eq!(accepted(&gw), 2.0);
}

/// Item 6 (b): a sessionWebhook on the API host but not DingTalk's
/// `/robot/sendBySession?session=<token>` shape is never called; the reply
/// is dropped and counted as a failed writeback, with the reason logged.
/// The genuine shape is called.
#[test]
fn dingtalk_session_webhook_shape_is_checked() {
    let fake = FakeApi::start();
    let gw = start(&fake);
    let api = fake.base();
    let secret = p::dingtalk::APP_SECRET;
    let ts = p::now_millis();
    let hooks = [
        format!("{api}/robot/send?access_token=stolen"),
        format!("{api}/robot/sendBySession?session=s1&access_token=stolen"),
        format!("{api}/v1.0/robot/oToMessages/batchSend?session=s1"),
        format!("{api}/robot/sendBySession/../../user/delete?session=s1"),
        format!("{api}/robot/sendBySession"),
    ];
    for (i, hook) in hooks.iter().enumerate() {
        let s = p::dingtalk::seal_robot_at(
            &robot_body(&format!("dt_w{i}"), "hi", hook),
            ts + i as u64,
            secret,
        );
        let a = send(&gw, DT_PATH, &s);
        assert_eq!(a.status, 200, "the message itself is genuine: {a:?}");
    }
    let good = format!("{api}/robot/sendBySession?session=s-good");
    let s = p::dingtalk::seal_robot_at(&robot_body("dt_w_ok", "hi", &good), ts + 100, secret);
    assert_eq!(send(&gw, DT_PATH, &s).status, 200);
    let sent = fake.wait_for("/robot/sendBySession", 1);
    assert_eq!(sent[0].query, "session=s-good");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let failed = loop {
        let n = metric(
            &gw.metrics(),
            "moltgate_writeback_total",
            &[("platform", "dingtalk"), ("result", "failed")],
        );
        if n >= hooks.len() as f64 || std::time::Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(failed, hooks.len() as f64);
    // Nothing but the one genuine reply reached the API host.
    let all = fake.requests();
    assert_eq!(
        all.len(),
        1,
        "{:?}",
        all.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    let logs = gw.log_text();
    assert!(
        logs.contains("sessionWebhook is not the sendBySession path"),
        "{logs}"
    );
    assert!(
        logs.contains("sessionWebhook has no well-formed session parameter"),
        "{logs}"
    );
    assert!(!logs.contains("stolen"), "the URL is not logged");
}
